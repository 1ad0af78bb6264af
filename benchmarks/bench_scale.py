"""Benchmark: a large run planned for N pods (GPUs), the log transport against the object transport.

Writes ``--records`` synthetic drug-review records (default 1,000,000), starts a real S3 server (SeaweedFS,
``scripts/build-seaweedfs.sh``) and puts the input there, then, each in a child process of its own (for its
peak RSS), stages it with the ``log`` transport (Secret-sized shards, local mode: what the Secrets would hold
is measured) and with the ``object`` transport for ``--pods`` pods (pre-signed URLs; the input read from
S3). Then it writes a shard's results as sealed part objects (``--extract-records`` records) and extracts them
from S3 back to S3. It reports the stage's time and peak memory, the bytes each transport writes to etcd, the
model loads, the extraction MB/s from parts, and the projected share of non-inference time at
``--records-per-second`` per GPU under the stated ``--model-load-seconds`` and ``--pod-start-seconds``.
Run it on an otherwise idle machine.

    .venv/bin/python -m benchmarks.bench_scale [--records 1000000] [--pods 8] [--json out.json]
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import arguments, measure_in_child, print_table, sample_records, save, write_records
from llm_etl_dev.object_store import BUCKET, running_seaweedfs

STAGE = """
import os
from llm_etl_provider.backends import LOCAL_MODE
from llm_etl_provider.operators.stage import StageInputOperator

def run(source, output, staging, transport, pods):
    stage = StageInputOperator(
        task_id="stage", input_path=source, output_path=output, execution_mode=LOCAL_MODE, local_dir=staging,
        transport=transport, pods=int(pods),
    )
    shards = stage.execute({"run_id": "bench"})
    # what a Kubernetes run writes to etcd: each shard's Secret data (shard or URLs, duplicates) and the key
    held = sum(f.stat().st_size for f in __import__("pathlib").Path(staging).rglob("*") if f.is_file())
    return {"shards": len(shards), "records": sum(s["records"] for s in shards), "secret_bytes": held}
"""

EXTRACT = """
from llm_etl_provider.transport.extract import extract
from llm_etl_provider.transport.sources import object_part_lines
from airflow.sdk import ObjectStoragePath

def run(parts, output, key_hex):
    manifest = extract(object_part_lines(ObjectStoragePath(parts)), bytes.fromhex(key_hex),
                       ObjectStoragePath(output))
    return {"records": manifest["records"], "log_bytes": manifest["extract"]["log_bytes"],
            "published_bytes": sum(f["bytes"] for f in manifest["files"].values())}
"""


def write_parts(client: Any, prefix: str, key: bytes, records: int, part_bytes: int = 8 << 20) -> int:
    """Seal ``records`` results (the sample's reviews with a sentiment) as the object transport's parts."""
    from llm_etl_provider.contract.object_transport import END_OBJECT, end_marker, part_name
    from llm_etl_provider.transport.frames import FrameWriter

    buffer = bytearray()
    parts = 0

    def put() -> None:
        nonlocal parts
        client.put_object(Bucket=BUCKET, Key=f"{prefix}/{part_name(parts)}", Body=bytes(buffer))
        parts += 1
        buffer.clear()

    writer = FrameWriter(key, "bench", 0, buffer.extend)
    for line, record in enumerate(sample_records(records), 1):
        result = {"id": record["id"], "line": line, "enrichment": {"sentiment": "positive"}, "review": record}
        writer.add("result", json.dumps(result).encode())
        if len(buffer) >= part_bytes:
            writer.flush()
            put()
    writer.finish({"task": "sentiment", "model": "bench"})
    put()
    client.put_object(Bucket=BUCKET, Key=f"{prefix}/{END_OBJECT}", Body=end_marker(parts, 1))
    return parts


def main() -> int:
    parser = arguments(__doc__)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--pods", type=int, default=8)
    parser.add_argument("--extract-records", type=int, default=250_000, help="one pod's share of 2,000,000")
    parser.add_argument("--records-per-second", type=float, default=50.0, help="per GPU (an 8B model)")
    parser.add_argument("--model-load-seconds", type=float, default=60.0, help="per pod (an assumption)")
    parser.add_argument("--pod-start-seconds", type=float, default=10.0, help="per pod (an assumption)")
    args = parser.parse_args()
    from llm_etl_provider.transport.keys import new_key

    with tempfile.TemporaryDirectory() as tmp, running_seaweedfs(Path(tmp) / "s3") as account:
        os.environ.update(account.environment())
        client = account.client()
        source = write_records(Path(tmp) / "input.jsonl", args.records)
        input_mb = source.stat().st_size / 1e6
        client.upload_file(str(source), BUCKET, "bench/input.jsonl")
        runs: dict[str, dict[str, Any]] = {}
        for transport, input_path in (("log", str(source)), ("object", f"s3://{BUCKET}/bench/input.jsonl")):
            staging = str(Path(tmp) / f"staging-{transport}")
            output = f"s3://{BUCKET}/bench/{transport}"
            runs[transport] = measure_in_child(STAGE, input_path, output, staging, transport, str(args.pods))
            assert runs[transport]["records"] == args.records, runs[transport]
        key = new_key()
        started = time.monotonic()
        parts = write_parts(client, "bench/parts", key, args.extract_records)
        written_seconds = time.monotonic() - started
        extraction = measure_in_child(
            EXTRACT, f"s3://{BUCKET}/bench/parts", f"s3://{BUCKET}/bench/out", key.hex()
        )
        assert extraction["records"] == args.extract_records, extraction

    log_mb_per_s = extraction["log_bytes"] / 1e6 / extraction["seconds"]
    published_per_record = extraction["published_bytes"] / args.extract_records
    log_per_record = extraction["log_bytes"] / args.extract_records
    inference = args.records / args.records_per_second / args.pods  # wall seconds with every GPU busy
    report: dict[str, Any] = {
        "records": args.records, "input_mb": round(input_mb, 1), "pods": args.pods,
        "parts_written": parts, "parts_write_seconds": round(written_seconds, 1),
        "extraction": {**extraction, "log_mb_per_s": round(log_mb_per_s, 1)},
        "assumptions": {
            "records_per_second_per_gpu": args.records_per_second,
            "model_load_seconds": args.model_load_seconds, "pod_start_seconds": args.pod_start_seconds,
        },
        "inference_seconds": round(inference),
    }  # fmt: skip
    rows = []
    for transport, stage in runs.items():
        shards = stage["shards"]
        waves = math.ceil(shards / args.pods)  # a GPU's pods one after another
        starts = waves * (args.pod_start_seconds + args.model_load_seconds)
        # the shards extract side by side as their pods end; the last one's extraction is on the critical path
        last_extraction = args.records / shards * log_per_record / 1e6 / log_mb_per_s
        overhead = stage["seconds"] + starts + last_extraction
        share = overhead / (overhead + inference)
        report[transport] = {
            **{k: round(v, 2) if isinstance(v, float) else v for k, v in stage.items()},
            "model_loads": shards, "pod_waves": waves, "non_inference_seconds": round(overhead),
            "non_inference_share": round(share, 4),
        }  # fmt: skip
        rows.append([
            transport, shards, round(stage["seconds"], 1), round(stage["peak_rss_mb"]),
            f"{stage['secret_bytes'] / 1e6:,.1f}", shards, round(stage["seconds"]), round(starts),
            round(last_extraction), f"{share:.1%}",
        ])  # fmt: skip
    print_table(
        ["transport", "shards", "stage s", "stage peak RSS MB", "etcd MB", "model loads", "stage s",
         "pod starts + loads s", "last extraction s", "non-inference share"],
        rows,
    )  # fmt: skip
    print(
        f"\n{args.records:,} records ({input_mb:.0f} MB), {args.pods} pods; extraction from parts "
        f"{log_mb_per_s:.1f} MB/s of frames ({published_per_record:.0f} B published per record); inference "
        f"{inference:,.0f} s at {args.records_per_second:g} records/s per GPU"
    )
    save(args.json, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
