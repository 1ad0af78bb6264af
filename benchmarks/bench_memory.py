"""Benchmark: the worker's peak memory against its input size (P4), and its own cost per record.

Runs ``llm-etl-worker --output log`` (sealed frames on stdout, checkpoints on) over inputs of increasing size
against an instant OpenAI-compatible server in this process, which answers every request at once with a
valid sentiment: the LLM costs nothing, so what is measured is the worker itself (reading, prompting,
validation, sealing, checkpoints). Reports each run's peak RSS (the worker process alone, from ``wait4``),
records/s and the frame log's size, and checks every record came back.

    .venv/bin/python benchmarks/bench_memory.py [--sizes 100,100000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from llm_etl_provider.transport.extract import extract
from llm_etl_provider.transport.keys import load_key, new_key, write_key_file
from llm_etl_provider.transport.sources import file_lines

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "examples" / "drug_reviews_sample.jsonl"
WORKER = Path(sys.executable).parent / "llm-etl-worker"


async def chat(request: Request) -> JSONResponse:
    body = await request.json()
    prompt_tokens = sum(len(m["content"]) for m in body["messages"]) // 4
    return JSONResponse(
        {
            "choices": [{"message": {"content": '{"sentiment": "positive"}'}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": 6},
        }
    )


async def models(request: Request) -> JSONResponse:
    return JSONResponse({"data": [{"id": "instant"}]})


def start_instant_server() -> str:
    """Serve the instant chat completions on a free port, from a daemon thread; return the base URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app = Starlette(
        routes=[Route("/v1/chat/completions", chat, methods=["POST"]), Route("/v1/models", models)]
    )
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}"


def write_input(path: Path, records: int) -> None:
    reviews = [json.loads(line) for line in SAMPLE.read_text().splitlines()]
    with path.open("w") as handle:
        for n in range(records):
            review = reviews[n % len(reviews)]
            handle.write(json.dumps({"id": f"rec-{n}", "review": review["review"]}) + "\n")


def run_worker(work: Path, records: int, url: str) -> dict[str, Any]:
    source = work / f"input-{records}.jsonl"
    write_input(source, records)
    key_file = work / f"key-{records}"
    write_key_file(key_file, new_key())
    log = work / f"frames-{records}.log"
    command = [
        str(WORKER), "--task", "sentiment", "--input", str(source), "--template", "{review}",
        "--output", "log", "--key-file", str(key_file), "--run-id", "bench", "--shard", "0",
        "--checkpoint", str(work / f"checkpoint-{records}.json"), "--llm-url", url, "--model", "instant",
        "--progress-interval", "60",
    ]  # fmt: skip
    started = time.monotonic()
    with log.open("wb") as stdout:
        worker = subprocess.Popen(command, stdout=stdout, stderr=subprocess.PIPE)
        assert worker.stderr is not None
        stderr = worker.stderr.read()
        _, status, usage = os.wait4(worker.pid, 0)
    elapsed = time.monotonic() - started
    worker.returncode = os.waitstatus_to_exitcode(status)
    assert worker.returncode == 0, stderr.decode()[-2000:]
    manifest = extract(file_lines(log), load_key(key_file), work / f"out-{records}")
    assert manifest["results"] == records, manifest
    return {
        "records": records,
        "input_mb": round(source.stat().st_size / 1e6, 2),
        "frame_log_mb": round(log.stat().st_size / 1e6, 2),
        "seconds": round(elapsed, 2),
        "records_per_s": round(records / elapsed, 1),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="100,100000", help="comma-separated record counts")
    parser.add_argument("--json", type=Path, help="write the results here too")
    args = parser.parse_args()
    url = start_instant_server()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in (int(s) for s in args.sizes.split(",")):
            runs.append(run_worker(Path(tmp), size, url))
            print(json.dumps(runs[-1]), file=sys.stderr)
    print("\n| records | input MB | frame log MB | seconds | records/s | worker peak RSS MB |")
    print("|---:|---:|---:|---:|---:|---:|")
    for run in runs:
        print(
            f"| {run['records']:,} | {run['input_mb']} | {run['frame_log_mb']} | {run['seconds']} "
            f"| {run['records_per_s']} | {run['peak_rss_mb']} |"
        )
    growth = runs[-1]["peak_rss_mb"] / runs[0]["peak_rss_mb"]
    print(f"\npeak RSS, largest ÷ smallest input: {growth:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "rss_growth": round(growth, 3)}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
