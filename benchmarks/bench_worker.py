"""Benchmark: the worker's throughput against the raw capacity of the same llama-server, in one run.

Measures, on one server and the same prompts (the sentiment task over the drug-review sample):
- a raw load generator (the worker's exact request bodies, no validation or writing) at several concurrencies;
- the worker at its default settings (``--concurrency auto``), end to end as a subprocess;
- the worker at concurrency 1 (the seed design: one request at a time).

Run it on an otherwise idle machine: it records the CPU load that is not its own and warns when there is some,
because a second busy process slows llama-server 10-30x on 2 cores. Compare ratios within one run only.

    .venv/bin/python -m benchmarks.bench_worker [--records 100] [--parallel 4] [--threads N] [--json out.json]
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import httpx

from benchmarks.common import arguments, print_table, sample_records, save, write_records
from llm_etl_provider.dev.llama_server import MODEL_NAME, LlamaServer
from llm_etl_provider.worker.clients import ChatRequest, OpenAIClient
from llm_etl_provider.worker.tasks import build_task

TICKS = os.sysconf("SC_CLK_TCK")


def machine_busy_ticks() -> int:
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return user + nice + system + irq + softirq + steal


def process_tree_ticks(pid: int) -> int:
    """CPU ticks used so far by a process and its live descendants."""
    total = 0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            stat = Path(f"/proc/{current}/stat").read_text()
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        total += (
            int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
        )  # utime stime cutime cstime
        pending += [int(c) for c in children]
    return total


class LoadMeter:
    """The machine's CPU use during a measurement, split into ours (this process tree) and foreign."""

    def __init__(self) -> None:
        self.own_pids = [os.getpid()]

    def __enter__(self) -> LoadMeter:
        self.started = time.monotonic()
        self.busy0 = machine_busy_ticks()
        self.own0 = sum(process_tree_ticks(p) for p in self.own_pids)
        return self

    def __exit__(self, *exc_info: object) -> None:
        elapsed = time.monotonic() - self.started
        busy = (machine_busy_ticks() - self.busy0) / TICKS
        own = (sum(process_tree_ticks(p) for p in self.own_pids) - self.own0) / TICKS
        cores = os.cpu_count() or 1
        self.own_cores = own / elapsed
        self.foreign_cores = max(busy - own, 0.0) / elapsed
        self.foreign_share = self.foreign_cores / cores


def idle_check(seconds: float = 3.0) -> float:
    """Return the foreign CPU load (in cores) over a short quiet period before the benchmark."""
    meter = LoadMeter()
    with meter:
        time.sleep(seconds)
    return meter.foreign_cores


def load_requests(records: int) -> list[ChatRequest]:
    """The worker's sentiment requests for the first ``records`` sample records."""
    task = build_task("sentiment", template="{review}")
    return [
        ChatRequest(
            system=task.system_prompt,
            user=task.template.render(record),
            schema=task.schema,
            schema_name=task.name,
            max_tokens=task.max_tokens,
        )
        for record in sample_records(records)
    ]


async def raw_load(url: str, requests: list[ChatRequest], concurrency: int) -> dict[str, Any]:
    """Send the worker's request bodies as fast as the concurrency allows; count answers, check nothing."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=300) as http:
        client = OpenAIClient(http, url, MODEL_NAME)
        queue: asyncio.Queue[ChatRequest] = asyncio.Queue()
        for request in requests:
            queue.put_nowait(request)
        failures = 0
        completion_tokens = 0

        async def drain() -> None:
            nonlocal failures, completion_tokens
            while not queue.empty():
                request = queue.get_nowait()
                try:
                    completion = await client.complete(request)
                    completion_tokens += completion.completion_tokens or 0
                except Exception:
                    failures += 1

        started = time.monotonic()
        await asyncio.gather(*(drain() for _ in range(concurrency)))
        elapsed = time.monotonic() - started
    return {
        "records_per_s": len(requests) / elapsed,
        "elapsed_s": elapsed,
        "failures": failures,
        "completion_tokens": completion_tokens,
    }


def run_worker(url: str, input_path: Path, concurrency: str, workdir: Path) -> dict[str, Any]:
    summary_path = workdir / f"summary-{concurrency}.json"
    command = [
        sys.executable, "-m", "llm_etl_provider.worker.cli",
        "--task", "sentiment", "--input", str(input_path), "--template", "{review}",
        "--output", str(workdir / f"results-{concurrency}.jsonl"),
        "--dead-letter", str(workdir / f"dead-{concurrency}.jsonl"),
        "--summary", str(summary_path),
        "--llm-url", url, "--model", MODEL_NAME, "--concurrency", concurrency,
        "--progress-interval", "3600",
    ]  # fmt: skip
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    elapsed = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(f"the worker failed ({done.returncode}):\n{done.stderr[-2000:]}")
    summary = json.loads(summary_path.read_text())
    records = summary["records"]
    concurrency_used = next(
        (int(part.split("=")[1]) for part in done.stderr.split() if part.startswith("concurrency=")), None
    )
    return {
        "records_per_s": records / elapsed,
        "engine_records_per_s": summary["records_per_s"],
        "elapsed_s": elapsed,
        "results": summary["results"],
        "dead_letters": summary["dead_letters"],
        "concurrency": concurrency_used,
        "latency_p50_s": summary["latency_p50_s"],
        "latency_p95_s": summary["latency_p95_s"],
        "completion_tokens": summary["completion_tokens"],
        "prompt_tokens": summary["prompt_tokens"],
        "cached_prompt_tokens": summary["cached_prompt_tokens"],
    }


def measure(label: str, action: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    meter = LoadMeter()
    with meter:
        result = action()
    result["own_cpu_cores"] = round(meter.own_cores, 2)
    result["foreign_cpu_cores"] = round(meter.foreign_cores, 2)
    print(
        f"  {label:<28} {result['records_per_s']:6.2f} records/s "
        f"(foreign CPU {meter.foreign_cores:.2f} cores)",
        file=sys.stderr,
        flush=True,
    )
    return result


def main() -> int:
    parser = arguments(__doc__)
    parser.add_argument("--records", type=int, default=100)
    parser.add_argument("--parallel", type=int, default=4, help="llama-server slots")
    parser.add_argument("--threads", type=int, help="llama-server threads (default: all cores)")
    parser.add_argument("--sweep", default="1,2,4,8", help="raw load-generator concurrencies")
    args = parser.parse_args()

    foreign_before = idle_check()
    if foreign_before > 0.1:
        print(
            f"warning: {foreign_before:.2f} cores busy with other work; numbers will be noisy",
            file=sys.stderr,
        )
    requests = load_requests(args.records)
    with (
        tempfile.TemporaryDirectory() as tmp,
        LlamaServer(parallel=args.parallel, threads=args.threads, cache_ram_mib=0) as server,
    ):
        workdir = Path(tmp)
        input_path = write_records(workdir / "input.jsonl", args.records)
        # Warm up on other records: the model's pages load and the slots hold the shared system prompt, but no
        # measured prompt is cached (the host prompt cache is off, so replays across runs do not hit it).
        warm_up = load_requests(args.records + 8)
        asyncio.run(raw_load(server.url, warm_up[-8:], 4))
        print(
            f"llama-server {server.url}: {args.parallel} slots, {len(requests)} records per run",
            file=sys.stderr,
        )
        raw: dict[int, dict[str, Any]] = {}
        for c in (int(x) for x in args.sweep.split(",")):
            raw[c] = measure(
                f"raw load, concurrency {c}", partial(asyncio.run, raw_load(server.url, requests, c))
            )
        worker_default = measure(
            "worker, default (auto)", lambda: run_worker(server.url, input_path, "auto", workdir)
        )
        worker_serial = measure(
            "worker, concurrency 1", lambda: run_worker(server.url, input_path, "1", workdir)
        )

    best_c = max(raw, key=lambda c: raw[c]["records_per_s"])
    best = raw[best_c]["records_per_s"]
    serial_raw = raw.get(1, {}).get("records_per_s")
    ratios = {
        "worker_default / raw_best": round(worker_default["records_per_s"] / best, 3),
        "worker_default / worker_concurrency_1": round(
            worker_default["records_per_s"] / worker_serial["records_per_s"], 3
        ),
        "raw_best / raw_concurrency_1": round(best / serial_raw, 3) if serial_raw else None,
    }
    report = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "foreign_cpu_cores_before": round(foreign_before, 2),
        },
        "setup": {
            "records": len(requests),
            "parallel": args.parallel,
            "threads": args.threads,
            "task": "sentiment",
        },
        "raw": {str(c): r for c, r in raw.items()},
        "raw_best_concurrency": best_c,
        "worker_default": worker_default,
        "worker_concurrency_1": worker_serial,
        "ratios": ratios,
    }
    print(json.dumps(report, indent=2))
    print_table(
        ["measurement", "records/s"],
        [[f"raw load generator, concurrency {c}", f"{r['records_per_s']:.2f}"] for c, r in raw.items()]
        + [
            [f"worker, default (concurrency {worker_default['concurrency']})",
             f"{worker_default['records_per_s']:.2f}"],
            ["worker, concurrency 1", f"{worker_serial['records_per_s']:.2f}"],
        ],
    )  # fmt: skip
    for name, value in ratios.items():
        print(f"\n{name}: {value}", end="")
    print()
    save(args.json, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
