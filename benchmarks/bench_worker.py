"""Benchmark: the worker's throughput against the raw capacity of the same server, in one run.

Measures, on one server and the same prompts (the sentiment task over the drug-review sample):
- a raw load generator (the worker's exact request bodies, sent through the worker's own HTTP client, no
  validation or writing) at several concurrencies;
- the worker at its default settings (no concurrency flag), end to end as a subprocess, startup included;
- ``--server llama`` (default): llama.cpp's llama-server with the bundled SmolLM2 on this machine's CPU, and
  the worker at concurrency 1 (the seed design: one request at a time);
- ``--server batching``: ``llm-etl-dev batching-server``, a stand-in for a GPU engine (continuous batching,
  ``--max-num-seqs`` sequences, llm-d-inference-sim's latency model for an 8B model on one H100), and the
  worker at each concurrency of the sweep, with its CPU time per record.

Run it on an otherwise idle machine: it records the CPU load that is not its own and warns when there is some,
because a second busy process slows llama-server 10-30x on 2 cores. Compare ratios within one run only.

    .venv/bin/python -m benchmarks.bench_worker [--server llama|batching] [--records 100] [--parallel N]
        [--threads N] [--sweep 1,2,4,8] [--json out.json]
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import httpx

from benchmarks.common import arguments, print_table, sample_records, save, write_records
from llm_etl_dev.batching_server import BatchingModel, BatchingServer
from llm_etl_provider.backends.llama_server import LlamaServer
from llm_etl_provider.contract.invocation import REQUESTS_PER_SLOT, default_of
from llm_etl_provider.llama_cpp import CPU_PARALLEL
from llm_etl_provider.worker.clients import ChatRequest, OpenAIClient
from llm_etl_provider.worker.http_lanes import HttpLanes
from llm_etl_provider.worker.tasks import TaskSpec, task_for

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


def chat_requests(task: TaskSpec, records: Iterable[dict[str, Any]]) -> list[ChatRequest]:
    """The worker's requests for ``records``, as its engine builds them (first attempts)."""
    return [
        ChatRequest(
            system=task.system_prompt,
            user=task.template.render(record),
            schema=task.schema,
            schema_name=task.name,
            max_tokens=task.max_tokens,
            temperature=default_of("temperature"),
        )
        for record in records
    ]


def load_requests(records: int) -> list[ChatRequest]:
    """The worker's sentiment requests for the first ``records`` sample records."""
    return chat_requests(task_for("sentiment", template="{review}"), sample_records(records))


async def raw_load(url: str, model: str, requests: list[ChatRequest], concurrency: int) -> dict[str, Any]:
    """Send the worker's request bodies as fast as the concurrency allows; count answers, check nothing."""
    async with HttpLanes(timeout=httpx.Timeout(300)) as http:
        client = OpenAIClient(http, url, model, response_format=default_of("response_format"))
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
        "records": len(requests),
        "records_per_s": len(requests) / elapsed,
        "elapsed_s": elapsed,
        "failures": failures,
        "completion_tokens": completion_tokens,
    }


def run_worker(url: str, model: str, input_path: Path, concurrency: str, workdir: Path) -> dict[str, Any]:
    """The worker end to end as a subprocess; ``concurrency`` "default" passes no flag."""
    summary_path = workdir / f"summary-{concurrency}.json"
    command = [
        sys.executable, "-m", "llm_etl_provider.worker.cli",
        "--task", "sentiment", "--input", str(input_path), "--template", "{review}",
        "--output", str(workdir / f"results-{concurrency}.jsonl"),
        "--dead-letter", str(workdir / f"dead-{concurrency}.jsonl"),
        "--summary", str(summary_path), "--max-dead-letter-ratio", "1",
        "--llm-url", url, "--model", model, "--progress-interval", "3600",
        *(["--concurrency", concurrency] if concurrency != "default" else []),
    ]  # fmt: skip
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    elapsed = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(f"the worker failed ({done.returncode}):\n{done.stderr[-2000:]}")
    summary = json.loads(summary_path.read_text())
    records = summary["records"]
    return {
        "records": records,
        "records_per_s": records / elapsed,
        "engine_records_per_s": summary["records_per_s"],
        "elapsed_s": elapsed,
        "results": summary["results"],
        "dead_letters": summary["dead_letters"],
        "retries": summary["retries"],
        "concurrency": summary.get("concurrency"),
        "concurrency_source": summary.get("concurrency_source"),
        "concurrency_levels": summary.get("concurrency_levels"),
        "latency_p50_s": summary["latency_p50_s"],
        "latency_p95_s": summary["latency_p95_s"],
        "completion_tokens": summary["completion_tokens"],
        "prompt_tokens": summary["prompt_tokens"],
        "cached_prompt_tokens": summary["cached_prompt_tokens"],
    }


def client_cpu_seconds() -> float:
    """CPU time of this process and of its children that have ended (the worker's runs), not of the server,
    which runs on as a child until the end."""
    own, ended = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + ended.ru_utime + ended.ru_stime


def measure(label: str, action: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    meter = LoadMeter()
    cpu_before = client_cpu_seconds()
    with meter:
        result = action()
    result["own_cpu_cores"] = round(meter.own_cores, 2)  # the server included
    result["foreign_cpu_cores"] = round(meter.foreign_cores, 2)
    # the client's CPU per record: the raw load generator's, or the worker's
    result["client_cpu_ms_per_record"] = round(
        1000 * (client_cpu_seconds() - cpu_before) / result["records"], 3
    )
    print(
        f"  {label:<28} {result['records_per_s']:6.2f} records/s, client CPU "
        f"{result['client_cpu_ms_per_record']:.2f} ms/record (foreign CPU {meter.foreign_cores:.2f} cores)",
        file=sys.stderr,
        flush=True,
    )
    return result


def main() -> int:
    parser = arguments(__doc__)
    parser.add_argument("--server", choices=("llama", "batching"), default="llama")
    parser.add_argument(
        "--records", type=int, help="records per run (default: 100; batching: 16 per request)"
    )
    parser.add_argument(
        "--parallel",
        type=int,
        help=f"server slots (default: llama {CPU_PARALLEL}, batching {BatchingModel().max_num_seqs})",
    )
    parser.add_argument("--threads", type=int, help="llama-server threads (default: all cores)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="repeat every measurement, alternating; report each one's median",
    )
    parser.add_argument("--sweep", help="concurrencies (default: llama 1,2,4,8; batching 1,8,32,64,128,256)")
    args = parser.parse_args()
    batching = args.server == "batching"
    sweep = [int(c) for c in (args.sweep or ("1,8,32,64,128,256" if batching else "1,2,4,8")).split(",")]

    def records_for(concurrency: int) -> int:
        # batching: 15-45 s a run at any concurrency, so that the worker's start-up (0.3-0.4 s) is a small
        # part of it
        return args.records or (max(96, 96 * concurrency) if batching else 100)

    foreign_before = idle_check()
    if foreign_before > 0.1:
        print(
            f"warning: {foreign_before:.2f} cores busy with other work; numbers will be noisy",
            file=sys.stderr,
        )
    largest = max(records_for(c) for c in sweep)
    default_records = args.records or (24_000 if batching else 100)
    with tempfile.TemporaryDirectory() as tmp, _server(args) as (url, model, slots):
        workdir = Path(tmp)
        # Warm up on other records: the model's pages load and the slots hold the shared system prompt, but no
        # measured prompt is cached (the host prompt cache is off, so replays across runs do not hit it).
        warm_up = load_requests(max(largest, default_records) + 8)
        asyncio.run(raw_load(url, model, warm_up[-8:], 4))
        print(f"{args.server} server {url}: {slots} slots", file=sys.stderr)
        runs: dict[str, list[dict[str, Any]]] = {}

        def run(key: str, label: str, action: Callable[[], dict[str, Any]]) -> None:
            runs.setdefault(key, []).append(measure(label, action))

        default_input = write_records(workdir / "input-default.jsonl", default_records)
        for round_ in range(1, args.rounds + 1):
            suffix = f", round {round_}" if args.rounds > 1 else ""
            for c in sweep:
                n = records_for(c)
                run(
                    f"raw {c}",
                    f"raw load, concurrency {c}{suffix}",
                    partial(asyncio.run, raw_load(url, model, load_requests(n), c)),
                )
                if batching:
                    inputs = write_records(workdir / f"input-{n}.jsonl", n)
                    run(
                        f"worker {c}",
                        f"worker, concurrency {c}{suffix}",
                        partial(run_worker, url, model, inputs, str(c), workdir),
                    )
            run(
                "worker default",
                f"worker, defaults{suffix}",
                partial(run_worker, url, model, default_input, "default", workdir),
            )
            if batching:  # as the operator runs it in a pod: twice the server's parallelism, no probing
                run(
                    "worker pod",
                    f"worker, pod ({REQUESTS_PER_SLOT} x {slots}){suffix}",
                    partial(run_worker, url, model, default_input, str(REQUESTS_PER_SLOT * slots), workdir),
                )
            else:
                run(
                    "worker 1",
                    f"worker, concurrency 1{suffix}",
                    partial(run_worker, url, model, default_input, "1", workdir),
                )

    # each measurement's median run (of --rounds), with the rates of every round
    median = {key: _median_run(results) for key, results in runs.items()}
    raw = {c: median[f"raw {c}"] for c in sweep}
    worker = {
        int(key.split()[1]): result
        for key, result in median.items()
        if key.startswith("worker ") and key.split()[1].isdigit()
    }
    worker_default = median["worker default"]
    worker_pod = median.get("worker pod")

    best_c = max(raw, key=lambda c: raw[c]["records_per_s"])
    best = raw[best_c]["records_per_s"]
    ratios: dict[str, float | None] = {
        "worker_default / raw_best": round(worker_default["records_per_s"] / best, 3),
        **{
            f"worker / raw at {c}": round(worker[c]["records_per_s"] / raw[c]["records_per_s"], 3)
            for c in worker
            if c in raw
        },
    }
    if worker_pod is not None:
        ratios["worker_pod / raw_best"] = round(worker_pod["records_per_s"] / best, 3)
    if 1 in worker and not batching:
        ratios["worker_default / worker_concurrency_1"] = round(
            worker_default["records_per_s"] / worker[1]["records_per_s"], 3
        )
    report = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "foreign_cpu_cores_before": round(foreign_before, 2),
        },
        "setup": {
            "server": args.server,
            "slots": slots,
            "threads": args.threads,
            "task": "sentiment",
            "records": {str(c): records_for(c) for c in sweep} | {"default": default_records},
        },
        "raw": {str(c): r for c, r in raw.items()},
        "raw_best_concurrency": best_c,
        "worker": {str(c): r for c, r in worker.items()},
        "worker_default": worker_default,
        "worker_pod": worker_pod,
        "ratios": ratios,
    }
    print(json.dumps(report, indent=2))
    rows = []
    for c in sweep:
        row = [f"{c}", f"{raw[c]['records_per_s']:.2f}", f"{raw[c]['client_cpu_ms_per_record']:.2f}"]
        if c in worker:
            w = worker[c]
            row += [f"{w['records_per_s']:.2f}", f"{w['client_cpu_ms_per_record']:.2f}",
                    f"{w['records_per_s'] / raw[c]['records_per_s']:.3f}"]  # fmt: skip
        else:
            row += ["", "", ""]
        rows.append(row)
    levels = worker_default.get("concurrency_levels")
    rows.append(
        [
            f"worker defaults ({worker_default['concurrency']}, {worker_default['concurrency_source']}"
            + (f": {'/'.join(map(str, levels))}" if levels else "")
            + ")",
            "",
            "",
            f"{worker_default['records_per_s']:.2f}",
            f"{worker_default['client_cpu_ms_per_record']:.2f}",
            f"{ratios['worker_default / raw_best']:.3f} of raw best",
        ]
    )
    if worker_pod is not None:
        rows.append(
            [
                f"worker as in a pod ({worker_pod['concurrency']}: {REQUESTS_PER_SLOT} x {slots} slots)",
                "",
                "",
                f"{worker_pod['records_per_s']:.2f}",
                f"{worker_pod['client_cpu_ms_per_record']:.2f}",
                f"{ratios['worker_pod / raw_best']:.3f} of raw best",
            ]
        )
    print_table(
        ["in flight", "raw records/s", "raw CPU ms/record", "worker records/s", "worker CPU ms/record",
         "worker ÷ raw"],
        rows,
    )  # fmt: skip
    for name, value in ratios.items():
        print(f"\n{name}: {value}", end="")
    print()
    save(args.json, report)
    return 0


def _median_run(results: list[dict[str, Any]]) -> dict[str, Any]:
    ordered = sorted(results, key=lambda r: r["records_per_s"])
    return {**ordered[(len(ordered) - 1) // 2], "rounds_records_per_s": [r["records_per_s"] for r in results]}


@contextmanager
def _server(args: Any) -> Iterator[tuple[str, str, int]]:
    """The server measured: its URL, model name and slots."""
    if args.server == "batching":
        model = BatchingModel(max_num_seqs=args.parallel or BatchingModel().max_num_seqs)
        with BatchingServer(model) as server:
            yield server.url, server.model_name, model.max_num_seqs
    else:
        slots = args.parallel or CPU_PARALLEL
        with LlamaServer(parallel=slots, threads=args.threads) as llama:
            yield llama.url, llama.model_name, slots


if __name__ == "__main__":
    raise SystemExit(main())
