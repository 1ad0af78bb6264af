"""The demo: enrich the drug-review sample with the real SmolLM2 model served by llama-server, and report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from llm_etl_provider.local.llama_server import MODEL_NAME, LlamaServer
from llm_etl_provider.report import build_report

SAMPLE = Path("examples/drug_reviews_sample.jsonl")


def run_demo(
    output: Path,
    *,
    input_path: Path = SAMPLE,
    parallel: int = 4,
    threads: int | None = None,
    limit: int | None = None,
) -> int:
    """Enrich ``input_path`` into ``output``, print and write the report, and return the exit code."""
    if not input_path.is_file():
        print(f"error: {input_path} not found: run the demo from the repository root", file=sys.stderr)
        return 2
    output.mkdir(parents=True, exist_ok=True)
    if limit is not None:
        with input_path.open(encoding="utf-8") as source:
            head = [line for _, line in zip(range(limit), source, strict=False)]
        input_path = output / "input.jsonl"
        input_path.write_text("".join(head), encoding="utf-8")
    results, dead, summary_path = (
        output / "results.jsonl",
        output / "dead_letter.jsonl",
        output / "summary.json",
    )
    with LlamaServer(parallel=parallel, threads=threads, log_path=output / "llama-server.log") as server:
        print(f"llama-server ready at {server.url} with {MODEL_NAME}, {parallel} slots", file=sys.stderr)
        done = subprocess.run(
            [
                sys.executable, "-m", "llm_etl_provider.worker.cli",
                "--task", "sentiment",
                "--input", str(input_path),
                "--template", "{review}",
                "--output", str(results),
                "--dead-letter", str(dead),
                "--summary", str(summary_path),
                "--llm-url", server.url,
                "--model", MODEL_NAME,
            ],
            check=False,
        )  # fmt: skip
    if not summary_path.exists():
        return done.returncode or 1
    reference = {}
    with input_path.open(encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            reference[record["id"]] = record["rating_label"]
    report = build_report(results, dead, json.loads(summary_path.read_text()), reference=reference)
    (output / "report.md").write_text(report)
    print(report)
    print(f"outputs in {output}/: results.jsonl, dead_letter.jsonl, summary.json, report.md", file=sys.stderr)
    return done.returncode
