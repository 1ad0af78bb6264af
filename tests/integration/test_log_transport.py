"""Worker → sealed log → extract, with the real model: what is published equals the input."""

from __future__ import annotations

import json
import subprocess

from llm_etl_provider.transport.frames import FORMAT
from tests.integration.conftest import BIN, SAMPLE


def test_worker_log_output_extracts_to_object_storage(tmp_path, llama_server):
    sample = tmp_path / "in.jsonl"
    sample.write_text("".join(SAMPLE.read_text().splitlines(keepends=True)[:12]))
    key_file = tmp_path / "run.key"
    made = subprocess.run(
        [str(BIN / "llm-etl"), "new-key", str(key_file)], capture_output=True, text=True, check=False
    )
    assert made.returncode == 0, made.stderr

    log = tmp_path / "container.log"
    command = [
        str(BIN / "llm-etl-worker"), "--task", "sentiment", "--input", str(sample), "--template", "{review}",
        "--output", "log", "--key-file", str(key_file), "--run-id", "manual__2026-11-24T01:00:00+00:00",
        "--shard", "3", "--llm-url", llama_server.url, "--model", "smollm2",
    ]  # fmt: skip
    with log.open("wb") as stdout:
        done = subprocess.run(command, stdout=stdout, stderr=subprocess.PIPE, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    raw = log.read_bytes()
    assert raw.startswith(f"{FORMAT} manual__2026-11-24T01:00:00+00:00 3 0 R ".encode())  # results first
    first_review = json.loads(sample.read_text().splitlines()[0])["review"]
    assert first_review[:40].encode() not in raw  # sealed: no record content in the log
    assert "progress" in done.stderr  # diagnostics stay on stderr

    output = tmp_path / "published"
    extracted = subprocess.run(
        [str(BIN / "llm-etl"), "extract", "--source", str(log), "--key-file", str(key_file),
         "--output", f"file://{output}", "--run-id", "manual__2026-11-24T01:00:00+00:00", "--shard", "3"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert extracted.returncode == 0, extracted.stderr
    manifest = json.loads((output / "manifest.json").read_text())
    assert manifest["records"] == 12
    assert manifest["results"] + manifest["dead_letters"] == 12
    results = [json.loads(line) for line in (output / "results.jsonl").read_text().splitlines()]
    dead = [json.loads(line) for line in (output / "dead_letter.jsonl").read_text().splitlines()]
    input_ids = [json.loads(line)["id"] for line in sample.read_text().splitlines()]
    assert sorted([r["id"] for r in results] + [d["id"] for d in dead]) == sorted(input_ids)
    assert all(r["enrichment"]["sentiment"] in ("positive", "negative", "neutral") for r in results)
    assert (output / "_SUCCESS").exists()

    wrong_key = tmp_path / "wrong.key"
    subprocess.run([str(BIN / "llm-etl"), "new-key", str(wrong_key)], check=True, capture_output=True)
    refused = subprocess.run(
        [str(BIN / "llm-etl"), "extract", "--source", str(log), "--key-file", str(wrong_key),
         "--output", str(tmp_path / "refused")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert refused.returncode == 1
    assert "nothing was published" in refused.stderr
    assert not (tmp_path / "refused" / "_SUCCESS").exists()
