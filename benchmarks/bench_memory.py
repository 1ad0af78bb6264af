"""Benchmark: the worker's peak memory against its input size (P4), and its own cost per record.

Runs ``llm-etl-worker --output log`` (sealed frames on stdout, checkpoints on) over inputs of increasing size
against an instant OpenAI-compatible server in this process, which answers every request at once with a
valid sentiment: the LLM costs nothing, so what is measured is the worker itself (reading, prompting,
validation, sealing, checkpoints). Reports each run's peak RSS (the worker process alone, from ``wait4``),
records/s and the frame log's size, and checks every record came back.

    .venv/bin/python -m benchmarks.bench_memory [--sizes 100,100000] [--json out.json]
"""

from __future__ import annotations

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

from benchmarks.common import WORKER, arguments, print_table, save, write_records
from llm_etl_provider.transport.extract import extract
from llm_etl_provider.transport.keys import load_key, new_key, write_key_file
from llm_etl_provider.transport.sources import file_lines


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


def run_worker(work: Path, records: int, url: str) -> dict[str, Any]:
    source = write_records(work / f"input-{records}.jsonl", records)
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
    parser = arguments(__doc__)
    parser.add_argument("--sizes", default="100,100000", help="comma-separated record counts")
    args = parser.parse_args()
    url = start_instant_server()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in (int(s) for s in args.sizes.split(",")):
            runs.append(run_worker(Path(tmp), size, url))
            print(json.dumps(runs[-1]), file=sys.stderr)
    print_table(
        ["records", "input MB", "frame log MB", "seconds", "records/s", "worker peak RSS MB"],
        [
            [f"{run['records']:,}", run["input_mb"], run["frame_log_mb"], run["seconds"],
             run["records_per_s"], run["peak_rss_mb"]]
            for run in runs
        ],
        text_columns=0,
    )  # fmt: skip
    growth = runs[-1]["peak_rss_mb"] / runs[0]["peak_rss_mb"]
    print(f"\npeak RSS, largest ÷ smallest input: {growth:.2f}")
    save(args.json, {"runs": runs, "rss_growth": round(growth, 3)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
