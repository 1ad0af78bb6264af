"""The example DAG's trigger form in Airflow's own UI, in headless Chromium (Debian's, driven by Playwright):
every Param shows its title and description, none that the execution mode ignores is offered, and a run
triggered from the form succeeds, its publish task links the run's report (the extra link "Run report", as
the REST API serves it), and the report renders its charts in the browser."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import sync_playwright

from tests.e2e.airflow_stack import AirflowStack
from tests.e2e.conftest import llm_etl_options

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "examples" / "drug_reviews_sample.jsonl"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"  # scripts/setup.sh installs it
# Without the background-networking flags Chromium keeps dialling Google's hosts, which this network refuses.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DAG_ID = "llm_enrichment"
PUBLISH_TASK = "llm_enrichment.publish"  # in the example's task group


@pytest.fixture(scope="module")
def local_airflow(tmp_path_factory) -> Iterator[tuple[AirflowStack, Path]]:
    """The example DAG in local mode on a real Airflow deployment; the form's input default is 4 reviews."""
    root = tmp_path_factory.mktemp("trigger-form")
    source = root / "reviews.jsonl"
    source.write_text("".join(SAMPLE.read_text().splitlines(keepends=True)[:4]))
    env = llm_etl_options(
        execution_mode="local",
        local_dir=str(root / "staging"),
        default_input=str(source),
        default_output=str(root / "not-here"),
    )
    with AirflowStack(root / "airflow", REPO / "dags", env) as airflow:
        airflow.wait_for(lambda: airflow.client.get(f"/dags/{DAG_ID}").is_success, 120, f"{DAG_ID} parsed")
        airflow.api("PATCH", f"/dags/{DAG_ID}", json={"is_paused": False})
        yield airflow, root


@pytest.fixture
def page(local_airflow) -> Iterator[Any]:
    airflow, _ = local_airflow
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(30_000)
            page.goto(f"{airflow.url}/dags/{DAG_ID}")
            page.get_by_role("button", name="Trigger").first.click()
            page.get_by_text("Run Parameters").wait_for()
            yield page
        finally:
            browser.close()


def form_fields(page: Any) -> dict[str, str]:
    """Each form field's label (without the required mark) -> its helper text, as rendered."""
    fields = {}
    for group in page.locator("[data-scope=field][data-part=root]").all():
        label = group.locator("[data-part=label]")
        if not label.count():
            continue
        helper = group.locator("[data-part=helper-text]")
        text = label.first.inner_text().replace("*", "").strip()
        fields[text] = helper.first.inner_text().strip() if helper.count() else ""
    return fields


def test_every_param_shows_its_title_and_description_and_none_is_offered_in_vain(local_airflow, page):
    airflow, _ = local_airflow
    params = airflow.api("GET", f"/dags/{DAG_ID}/details")["params"]
    untitled = [
        name for name, p in params.items() if not p["schema"].get("title") or not p.get("description")
    ]
    assert not untitled, f"Params without a title or a description: {untitled}"
    shown = form_fields(page)
    for name, param in params.items():
        title = param["schema"]["title"]
        assert title in shown, f"{name}: its title {title!r} is not in the form ({sorted(shown)})"
        assert shown[title] == param["description"], f"{name}: the form shows {shown[title]!r}"
    # local execution serves the bundled model with llama.cpp's server: a choice of server would do nothing
    assert "backend" not in params
    assert "LLM server" not in shown


def test_a_run_triggered_from_the_form_succeeds_and_links_its_report(local_airflow, page, tmp_path):
    airflow, root = local_airflow
    output = root / "out"
    page.locator("#element_output_path").fill(str(output))  # what a user types
    page.locator("#element_label_field").fill("rating_label")  # the sample's own label: the agreement
    before = {run["dag_run_id"] for run in airflow.api("GET", f"/dags/{DAG_ID}/dagRuns")["dag_runs"]}
    page.get_by_role("dialog").get_by_role("button", name="Trigger").click()

    def new_run() -> dict[str, Any] | None:
        runs = airflow.api("GET", f"/dags/{DAG_ID}/dagRuns")["dag_runs"]
        return next((run for run in runs if run["dag_run_id"] not in before), None)

    run = airflow.wait_for(new_run, 60, "the run triggered from the form")
    assert run["conf"]["output_path"] == str(output)
    assert run["conf"]["label_field"] == "rating_label"
    run_id = run["dag_run_id"]
    state = airflow.wait_for(
        lambda: (s := airflow.dag_run_state(DAG_ID, run_id)) in ("success", "failed") and s, 600, "the run"
    )
    assert state == "success", f"{airflow.task_states(DAG_ID, run_id)}\n{airflow.logs()[-4000:]}"
    (published,) = [path.parent for path in output.glob("*/*/*/manifest.json")]  # <DAG>/<group>/<run>
    manifest = json.loads((published / "manifest.json").read_text())
    assert manifest["state"] == "succeeded"
    assert manifest["records"] == 4
    assert (published / "_SUCCESS").exists()
    assert manifest["report"] == "report.html"

    # the publish task's extra link, as the UI gets it: Airflow's API server reads what the task pushed
    links = airflow.api("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{PUBLISH_TASK}/links")
    report_url = links["extra_links"]["Run report"]
    assert report_url == (published / "report.html").resolve().as_uri()

    errors: list[str] = []
    assert page.context.browser is not None
    report = page.context.browser.new_page()  # the page's own context is the browser's default one
    report.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    report.on("pageerror", lambda error: errors.append(str(error)))
    report.goto(report_url)
    for heading in ("Run report", "Run summary", "Labels", "Throughput over time", "Latency", "Tokens",
                    "Agreement of sentiment with rating_label"):  # fmt: skip
        assert report.get_by_role("heading", name=heading, exact=True).is_visible(), heading
    charts = report.locator("svg.chart")
    # labels, throughput, latency, tokens, the workers' seconds and the agreement; dead letters if any
    assert charts.count() >= 6
    for k in range(charts.count()):
        box = charts.nth(k).bounding_box()
        assert box is not None, f"chart {k} is not rendered"
        assert box["width"] > 0, f"chart {k} has no width"
        assert box["height"] > 0, f"chart {k} has no height"
    assert report.locator("svg.chart rect").count() > 0  # bars drawn
    assert report.locator("svg.chart polyline").count() > 0  # throughput lines drawn
    assert "results agree" in report.locator("#agreement").inner_text()
    screenshot = tmp_path / "run-report.png"
    report.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size > 0
    assert errors == [], errors  # no script, no blocked fetch: its own Content-Security-Policy holds
