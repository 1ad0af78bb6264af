"""Benchmark: extraction throughput (MB/s of frame log) and peak memory on a large generated frame stream.

Generates a sealed log of about ``--log-mb`` megabytes (the sample's drug reviews, progress lines
between frames, Kubernetes timestamps on every line), then extracts it to a local folder in a child process
and reports the log MB/s and the child's peak RSS. Run it on an otherwise idle machine.

    .venv/bin/python -m benchmarks.bench_extract [--log-mb 1024] [--workdir /tmp]
"""

from __future__ import annotations

import json
import resource
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import arguments, measure_in_child, print_table, sample_records, save
from llm_etl_provider.transport.frames import FrameWriter
from llm_etl_provider.transport.keys import new_key, write_key_file


def generate(path: Path, key: bytes, log_mb: int) -> dict[str, int]:
    """Write a frame log of about ``log_mb`` MB; return its counts."""
    pool = [record["review"] for record in sample_records(600)]
    target = log_mb * 1_000_000
    records = 0
    with path.open("wb") as handle:
        written = 0
        stamp = b"2026-11-24T01:02:03.123456789Z "

        def emit(line: bytes) -> None:
            nonlocal written
            handle.write(stamp + line)
            written += len(stamp) + len(line)

        writer = FrameWriter(key, "bench-run", 0, emit)
        while written < target:
            text = pool[records % len(pool)]
            line = json.dumps(
                {
                    "id": f"rec-{records}",
                    "line": records + 1,
                    "task": "sentiment",
                    "enrichment": {"sentiment": "positive"},
                    "meta": {
                        "model": "smollm2",
                        "latency_s": 0.31,
                        "prompt_tokens": 180,
                        "completion_tokens": 9,
                    },
                    "review": text,
                }
            ).encode()
            writer.add("result" if records % 50 else "dead_letter", line)
            records += 1
            if records % 5000 == 0:
                handle.write(stamp + f"progress records={records}\n".encode())
        writer.finish({"task": "sentiment", "model": "smollm2"})
    return {"records": records, "log_bytes": path.stat().st_size, "frames": writer.state.frames}


EXTRACT = """
from pathlib import Path
from llm_etl_provider.transport.extract import extract
from llm_etl_provider.transport.keys import load_key
from llm_etl_provider.transport.sources import file_lines

def run(log, key_file, out):
    manifest = extract(file_lines(Path(log)), load_key(Path(key_file)), out)
    return {"results": manifest["results"], "dead_letters": manifest["dead_letters"]}
"""


def main() -> int:
    parser = arguments(__doc__)
    parser.add_argument("--log-mb", type=int, default=1024, help="size of the generated frame log")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        key = new_key()
        write_key_file(work / "key", key)
        started = time.monotonic()
        generated = generate(work / "frames.log", key, args.log_mb)
        generate_s = time.monotonic() - started
        print(
            f"generated {generated['log_bytes'] / 1e6:.0f} MB of frames in {generate_s:.0f} s",
            file=sys.stderr,
        )
        child = measure_in_child(EXTRACT, str(work / "frames.log"), str(work / "key"), str(work / "out"))
        assert child["results"] + child["dead_letters"] == generated["records"]
        results_bytes = (work / "out" / "results.jsonl").stat().st_size
    report = {
        "log_mb": round(generated["log_bytes"] / 1e6, 1),
        "frames": generated["frames"],
        "records": generated["records"],
        "published_mb": round(results_bytes / 1e6, 1),
        "extract_seconds": round(child["seconds"], 2),
        "log_mb_per_s": round(generated["log_bytes"] / 1e6 / child["seconds"], 1),
        "published_mb_per_s": round(results_bytes / 1e6 / child["seconds"], 1),
        "cpu_cores": round(child["cpu_seconds"] / child["seconds"], 2),
        "peak_rss_mb": round(child["peak_rss_mb"], 1),
        "benchmark_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    print(json.dumps(report, indent=2))
    print_table(
        ["log MB", "frames", "records", "published MB", "seconds", "log MB/s", "published MB/s",
         "CPU cores busy", "peak RSS MB"],
        [[report[name] for name in ("log_mb", "frames", "records", "published_mb", "extract_seconds",
                                    "log_mb_per_s", "published_mb_per_s", "cpu_cores", "peak_rss_mb")]],
        text_columns=0,
    )  # fmt: skip
    save(args.json, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
