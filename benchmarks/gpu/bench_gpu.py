"""GPU benchmark: the worker against a raw llama-server on one GPU, and the original design's case.

Starts ``llama-server`` (every layer on the GPU, ``--parallel`` slots), then measures, on the sentiment task
over the drug reviews, in this order (the most important first, so that a run cut short by ``--deadline-s``
still has it):

1. the design's case: 100 records end to end through the worker (``--concurrency auto``), wall time including
   the worker's process start;
2. the raw load generator (the worker's exact request bodies, built by ``OpenAIClient``/``task_for``, each
   answer checked by the task's own parser, nothing written) at each concurrency of ``--sweep``;
3. the worker at the best raw concurrency, and at its default (``auto``), on the same records;
4. the raw load generator at the best concurrency without ``response_format`` (no grammar): what the GPU does
   when the server's CPU-side grammar sampling is out of the way.

Every slot's KV cache is erased before each measurement (``POST /slots/N?action=erase``) and the host prompt
cache is off, so replayed records are never cache hits. Answers from random weights are random, but the
JSON-schema grammar keeps them valid; the tables say how many were valid and how many tokens they took.

    python3 benchmarks/gpu/bench_gpu.py --server /tmp/llama-build/bin/llama-server \
        --model /tmp/random-llama-1b.gguf --parallel 128 --json $OUT/bench-gpu.json --out-dir $OUT
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
for entry in (REPO / "src", REPO / "dev", REPO):
    if str(entry) not in sys.path:
        sys.path.insert(0, str(entry))

import httpx  # noqa: E402
from benchmarks.bench_worker import LoadMeter, chat_requests  # noqa: E402
from benchmarks.common import print_table, save  # noqa: E402

from llm_etl_provider.contract.invocation import default_of  # noqa: E402
from llm_etl_provider.llama_cpp import llama_server_args  # noqa: E402
from llm_etl_provider.processes import stop_process  # noqa: E402
from llm_etl_provider.worker.clients import OpenAIClient  # noqa: E402
from llm_etl_provider.worker.http_lanes import HttpLanes  # noqa: E402
from llm_etl_provider.worker.tasks import TaskSpec, task_for  # noqa: E402

MODEL_NAME = "random-llama"
HIGHLIGHTS = ("CUDA", "ggml_cuda_init", "offloaded", "flash_attn", "n_ctx", "graph", "build", "error", "warn")
DEFAULT_INPUT = REPO / ".gpu" / "reviews.jsonl"
FALLBACK_INPUT = REPO / "examples" / "drug_reviews_sample.jsonl"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Server:
    """One llama-server on 127.0.0.1 with every layer offloaded."""

    def __init__(self, args: argparse.Namespace, log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.slot_dir = log_path.parent / "slots"
        self.slot_dir.mkdir(parents=True, exist_ok=True)
        self.command = [
            str(args.server),
            *llama_server_args(
                str(args.model), MODEL_NAME,
                port=self.port, slots=args.parallel, ctx_per_slot=args.ctx_per_slot,
            ),
            "--n-gpu-layers", str(args.ngl), "--cache-ram", "0",
            "--slot-save-path", str(self.slot_dir) + "/",
            *(["--threads", str(args.threads)] if args.threads else []),
            *args.server_arg,
        ]  # fmt: skip
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float) -> float:
        started = time.monotonic()
        log("starting: " + " ".join(self.command))
        with self.log_path.open("wb") as handle:
            self.process = subprocess.Popen(
                self.command, stdin=subprocess.DEVNULL, stdout=handle, stderr=subprocess.STDOUT
            )
        while time.monotonic() - started < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(f"llama-server exited with {self.process.returncode}:\n{self.tail(40)}")
            try:
                if httpx.get(self.url + "/health", timeout=2.0).status_code == 200:
                    return time.monotonic() - started
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"llama-server was not ready after {timeout:.0f} s:\n{self.tail(40)}")

    def tail(self, lines: int) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def erase_slots(self, slots: int) -> None:
        """Forget every slot's cached prompt, so that the next measurement computes every prompt."""
        with httpx.Client(timeout=30) as http:
            for slot in range(slots):
                response = http.post(f"{self.url}/slots/{slot}", params={"action": "erase"})
                if response.status_code != 200:
                    raise RuntimeError(f"erasing slot {slot}: {response.status_code} {response.text[:200]}")

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, 15)


def read_records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def raw_load(
    url: str, task: TaskSpec, records: list[dict[str, Any]], concurrency: int, *, grammar: bool = True
) -> dict[str, Any]:
    """Send the worker's request bodies, ``concurrency`` in flight; check answers with the task's parser."""
    requests = chat_requests(task, records)
    counts = {"valid": 0, "invalid": 0, "errors": 0, "truncated": 0}
    prompt_tokens = completion_tokens = 0
    latencies: list[float] = []
    predicted_ms: list[float] = []
    error_samples: list[str] = []
    async with HttpLanes(timeout=httpx.Timeout(300)) as http:  # the worker's: one connection per request
        client = OpenAIClient(http, url, MODEL_NAME, response_format=default_of("response_format"))
        pending = list(zip(requests, records, strict=True))
        pending.reverse()

        async def drain() -> None:
            nonlocal prompt_tokens, completion_tokens
            while pending:
                request, record = pending.pop()
                body = client.request_body(request)
                if not grammar:
                    body.pop("response_format", None)
                sent = time.monotonic()
                try:
                    response = await http.request("POST", url + client.chat_path, json=body)
                    response.raise_for_status()
                    data = response.json()
                    completion = client.parse_response(data)
                except Exception as exc:
                    counts["errors"] += 1
                    if len(error_samples) < 3:
                        error_samples.append(f"{type(exc).__name__}: {str(exc)[:160]}")
                    continue
                latencies.append(time.monotonic() - sent)
                prompt_tokens += completion.prompt_tokens or 0
                completion_tokens += completion.completion_tokens or 0
                predicted_ms.append(float((data.get("timings") or {}).get("predicted_ms") or 0.0))
                if completion.finish_reason == "length":
                    counts["truncated"] += 1
                try:
                    task.parse(completion.content, record)
                    counts["valid"] += 1
                except Exception:
                    counts["invalid"] += 1

        started = time.monotonic()
        await asyncio.gather(*(drain() for _ in range(concurrency)))
        elapsed = time.monotonic() - started
    answered = len(latencies)
    latencies.sort()
    return {
        "kind": "raw" if grammar else "raw, no grammar",
        "concurrency": concurrency,
        "records": len(records),
        "elapsed_s": round(elapsed, 3),
        "records_per_s": round(len(records) / elapsed, 2),
        **counts,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "mean_completion_tokens": round(completion_tokens / answered, 2) if answered else None,
        "mean_prompt_tokens": round(prompt_tokens / answered, 1) if answered else None,
        "completion_tokens_per_s": round(completion_tokens / elapsed, 1),
        "latency_p50_s": round(latencies[answered // 2], 3) if answered else None,
        "latency_p95_s": round(latencies[min(answered - 1, int(answered * 0.95))], 3) if answered else None,
        "mean_predicted_ms": round(sum(predicted_ms) / len(predicted_ms), 1) if predicted_ms else None,
        "error_samples": error_samples,
    }


def run_worker(
    url: str, records: list[dict[str, Any]], concurrency: str, workdir: Path, label: str
) -> dict[str, Any]:
    """The worker as a subprocess, end to end; wall time includes its start."""
    workdir.mkdir(parents=True, exist_ok=True)
    input_path = workdir / f"input-{label}.jsonl"
    input_path.write_text("".join(json.dumps(record) + "\n" for record in records))
    summary_path = workdir / f"summary-{label}.json"
    command = [
        sys.executable, "-m", "llm_etl_provider.worker.cli",
        "--task", "sentiment", "--input", str(input_path), "--template", "{review}", "--id-field", "id",
        "--output", str(workdir / f"results-{label}.jsonl"),
        "--dead-letter", str(workdir / f"dead-{label}.jsonl"),
        "--summary", str(summary_path),
        "--llm-url", url, "--api", "openai", "--model", MODEL_NAME, "--concurrency", concurrency,
        "--progress-interval", "3600", "--max-dead-letter-ratio", "1",
    ]  # fmt: skip
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    elapsed = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(f"the worker failed ({done.returncode}):\n{done.stderr[-3000:]}")
    summary = json.loads(summary_path.read_text())
    used = next(
        (int(part.split("=")[1]) for part in done.stderr.split() if part.startswith("concurrency=")), None
    )
    answered = summary["results"] + summary["dead_letters"]
    return {
        "kind": "worker",
        "concurrency": used,
        "concurrency_flag": concurrency,
        "records": summary["records"],
        "elapsed_s": round(elapsed, 3),
        "records_per_s": round(summary["records"] / elapsed, 2),
        "engine_elapsed_s": summary["elapsed_s"],
        "engine_records_per_s": summary["records_per_s"],
        "valid": summary["results"],
        "dead_letters": summary["dead_letters"],
        "dead_letter_reasons": summary.get("dead_letter_reasons"),
        "retries": summary.get("retries"),
        "prompt_tokens": summary["prompt_tokens"],
        "completion_tokens": summary["completion_tokens"],
        "mean_completion_tokens": round(summary["completion_tokens"] / answered, 2) if answered else None,
        "completion_tokens_per_s": round(summary["completion_tokens"] / elapsed, 1),
        "cached_prompt_tokens": summary.get("cached_prompt_tokens"),
        "latency_p50_s": summary.get("latency_p50_s"),
        "latency_p95_s": summary.get("latency_p95_s"),
    }


def gpu_info() -> dict[str, Any]:
    if not shutil.which("nvidia-smi"):
        return {}
    query = "name,memory.total,memory.used,driver_version,clocks.sm,clocks.max.sm"
    done = subprocess.run(
        ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return {"nvidia_smi": done.stdout.strip()}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--server", type=Path, default=Path("/tmp/llama-build/bin/llama-server"))
    parser.add_argument("--model", type=Path, required=True, help="the GGUF to serve")
    parser.add_argument("--parallel", type=int, default=128, help="server slots")
    parser.add_argument("--ctx-per-slot", type=int, default=1024, help="context tokens per slot")
    parser.add_argument("--ngl", type=int, default=999, help="layers on the GPU (0 for a CPU check)")
    parser.add_argument("--threads", type=int, help="llama-server CPU threads (default: its own)")
    parser.add_argument("--server-arg", action="append", default=[], help="one more llama-server argument")
    parser.add_argument("--input", type=Path, help="JSONL drug reviews (id, review)")
    parser.add_argument("--design-records", type=int, default=100, help="records of the design's case")
    parser.add_argument("--sweep", default="1,8,32,64,128", help="raw concurrencies (capped at --parallel)")
    parser.add_argument(
        "--records-per-request-slot", type=int, default=4, help="raw records = this x concurrency"
    )
    parser.add_argument("--min-records", type=int, default=48, help="fewest records of a raw run")
    parser.add_argument("--max-records", type=int, default=512, help="most records of a run")
    parser.add_argument(
        "--deadline-s", type=float, default=420, help="start no measurement that would end later"
    )
    parser.add_argument("--startup-timeout", type=float, default=300)
    parser.add_argument("--skip-worker", action="store_true", help="raw measurements only")
    parser.add_argument("--out-dir", type=Path, default=Path(os.environ.get("OUT") or "/tmp/bench-gpu"))
    parser.add_argument("--json", type=Path, help="write the report here too")
    args = parser.parse_args()

    t0 = time.monotonic()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    input_path = args.input or (DEFAULT_INPUT if DEFAULT_INPUT.exists() else FALLBACK_INPUT)
    all_records = read_records(input_path)
    task = task_for("sentiment", template="{review}")
    sweep = sorted({min(int(c), args.parallel) for c in args.sweep.split(",")})
    workdir = Path(os.environ.get("TMPDIR") or "/tmp") / f"bench-gpu-{os.getpid()}"
    server_log = workdir / "llama-server.log"
    workdir.mkdir(parents=True, exist_ok=True)
    server = Server(args, server_log)
    report: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            **gpu_info(),
        },
        "setup": {
            "model": str(args.model),
            "model_bytes": args.model.stat().st_size,
            "parallel": args.parallel,
            "ctx_per_slot": args.ctx_per_slot,
            "server_command": server.command,
            "input": str(input_path),
            "task": "sentiment",
            "max_tokens": task.max_tokens,
        },
        "measurements": [],
        "skipped": [],
    }
    measurements: list[dict[str, Any]] = report["measurements"]
    best_rate = 0.0

    def measure(
        label: str, records: int, action: Callable[[], dict[str, Any]], rate_hint: float | None = None
    ) -> dict[str, Any] | None:
        nonlocal best_rate
        left = args.deadline_s - (time.monotonic() - t0)
        rate = best_rate if rate_hint is None else rate_hint
        estimate = 5 + records / rate if rate > 0 else 30.0
        if estimate > left:
            log(f"skipped {label}: ~{estimate:.0f} s needed, {left:.0f} s left")
            report["skipped"].append(label)
            return None
        server.erase_slots(args.parallel)
        meter = LoadMeter()
        try:
            with meter:
                result = action()
        except Exception as exc:
            log(f"{label} failed: {exc}")
            report["skipped"].append(f"{label} (failed: {str(exc)[:300]})")
            return None
        result["label"] = label
        result["cpu_cores_ours"] = round(meter.own_cores, 2)
        result["cpu_cores_foreign"] = round(meter.foreign_cores, 2)
        measurements.append(result)
        best_rate = max(best_rate, result["records_per_s"])
        log(
            f"{label}: {result['records']} records in {result['elapsed_s']:.2f} s = "
            f"{result['records_per_s']:.2f} records/s, valid {result['valid']}, "
            f"mean output tokens {result['mean_completion_tokens']}, CPU {meter.own_cores:.1f} cores"
        )
        return result

    try:
        report["setup"]["server_ready_s"] = round(server.start(args.startup_timeout), 2)
        log(f"llama-server ready in {report['setup']['server_ready_s']} s at {server.url}")
        highlights = [
            line.strip()
            for line in server_log.read_text(errors="replace").splitlines()
            if any(key in line for key in HIGHLIGHTS)
        ][:24]
        report["setup"]["server_log_highlights"] = highlights
        for line in highlights:
            print("  " + line[:200], file=sys.stderr)
        props = httpx.get(server.url + "/props", timeout=10).json()
        slots = props.get("total_slots")
        report["setup"]["total_slots"] = slots
        report["setup"]["build_info"] = props.get("build_info")
        if slots != args.parallel:
            raise RuntimeError(f"/props says {slots} slots, expected {args.parallel}")

        # warm-up (CUDA graphs of the batch sizes, cuBLAS handles, pages) on records no measurement reads: the
        # input's last ones, past --max-records
        spare = all_records[args.max_records :] or all_records[-16:]
        warm = spare[: max(16, min(len(spare), args.parallel))]
        for c in (1, min(64, args.parallel)):
            asyncio.run(raw_load(server.url, task, warm[: max(4, c)], c))
        log(f"warm-up done at {time.monotonic() - t0:.0f} s ({len(warm)} spare records)")

        design = all_records[: args.design_records]
        if not args.skip_worker:
            measure(
                f"design case: worker, {len(design)} records, auto",
                len(design),
                lambda: run_worker(server.url, design, "auto", workdir, "design"),
            )

        def raw_run(records: list[dict[str, Any]], concurrency: int, grammar: bool = True) -> dict[str, Any]:
            return asyncio.run(raw_load(server.url, task, records, concurrency, grammar=grammar))

        raw: dict[int, dict[str, Any]] = {}
        previous: float | None = None
        for c in sweep:
            n = max(args.min_records, min(args.max_records, args.records_per_request_slot * c))
            records = all_records[:n]
            hint = previous or -1
            result = measure(f"raw, concurrency {c}", n, partial(raw_run, records, c), rate_hint=hint)
            if result is not None:
                raw[c] = result
                previous = result["records_per_s"]
        best_c = max(raw, key=lambda c: raw[c]["records_per_s"]) if raw else min(64, args.parallel)
        report["raw_best_concurrency"] = best_c
        big = all_records[: args.max_records]
        if not args.skip_worker:
            measure(
                f"worker, concurrency {best_c} (best raw), {len(big)} records",
                len(big),
                lambda: run_worker(server.url, big, str(best_c), workdir, f"c{best_c}"),
                rate_hint=raw[best_c]["records_per_s"] / 2 if best_c in raw else None,
            )
            measure(
                f"worker, auto, {len(big)} records",
                len(big),
                lambda: run_worker(server.url, big, "auto", workdir, "auto"),
            )
        n_best = raw[best_c]["records"] if best_c in raw else len(big)
        measure(
            f"raw, no grammar, concurrency {best_c}",
            n_best,
            partial(raw_run, all_records[:n_best], best_c, grammar=False),
        )
        if not args.skip_worker:
            measure(
                f"design case again: worker, {len(design)} records, auto",
                len(design),
                lambda: run_worker(server.url, design, "auto", workdir, "design-again"),
            )
        report["machine"]["gpu_after"] = gpu_info().get("nvidia_smi")
    except Exception as exc:  # keep what was measured: the report and the table still get written
        report["error"] = f"{type(exc).__name__}: {str(exc)[:2000]}"
        log(f"stopped: {report['error']}")
    finally:
        server.stop()
        log_text = server_log.read_text(errors="replace").splitlines() if server_log.exists() else []
        keep = log_text if len(log_text) <= 400 else [*log_text[:200], "[...]", *log_text[-200:]]
        (args.out_dir / "llama-server.log").write_text("\n".join(keep) + "\n")
    report["total_s"] = round(time.monotonic() - t0, 1)

    rows = [
        [
            m["label"],
            m["concurrency"],
            m["records"],
            f"{m['elapsed_s']:.2f}",
            f"{m['records_per_s']:.2f}",
            f"{m['valid']}/{m['records']}",
            m["mean_completion_tokens"],
            f"{m['completion_tokens_per_s']:.0f}",
            m["latency_p50_s"],
            m["cpu_cores_ours"],
        ]
        for m in measurements
    ]
    header = [
        "measurement", "in flight", "records", "wall s", "records/s", "valid", "mean out tok", "out tok/s",
        "p50 latency s", "CPU cores",
    ]  # fmt: skip
    if args.json is None:
        print(json.dumps(report, indent=2))
    gpu = report["machine"].get("nvidia_smi") or "no GPU"
    print(f"\nmachine: {gpu}; {report['machine']['cpus']} CPUs")
    print(
        f"model: {args.model.name}, {report['setup']['model_bytes'] / 1e9:.2f} GB; server ready in "
        f"{report['setup'].get('server_ready_s')} s; {args.parallel} slots x {args.ctx_per_slot} tokens"
    )
    print_table(header, rows)
    if report["skipped"]:
        print("\nskipped: " + "; ".join(report["skipped"]))
    if report.get("error"):
        print(f"\nstopped early: {report['error'][:500]}")
    lines = ["| " + " | ".join(str(c) for c in header) + " |", "|---" + "|---:" * (len(header) - 1) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    (args.out_dir / "bench-gpu.md").write_text("\n".join(lines) + "\n")
    save(args.json, report)
    return 0 if measurements else 1


if __name__ == "__main__":
    raise SystemExit(main())
