"""Benchmark: tokens per record and prompt-cache hits, per task, on the real llama.cpp server.

Runs ``llm-etl-worker`` at its default settings once per task (sentiment, tags, moderation, entities and a
custom prompt with its JSON schema) over the same drug reviews, against one llama-server with a CPU server's
slots (``llama_cpp.CPU_PARALLEL``) and its host prompt cache off, and reports from the worker's summary:
prompt tokens per record, how many of them the server took from its slot cache (the shared system prompt),
completion tokens per record and records/s. Run it on an otherwise idle machine.

    .venv/bin/python -m benchmarks.bench_tokens [--records 16] [--json out.json]
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import WORKER, arguments, print_table, save, write_records
from llm_etl_provider.backends.llama_server import MODEL_NAME, LlamaServer
from llm_etl_provider.llama_cpp import CPU_PARALLEL

CUSTOM_SCHEMA = {
    "type": "object",
    "properties": {
        "side_effect": {"type": "string", "maxLength": 60},
        "would_recommend": {"type": "boolean"},
    },
    "required": ["side_effect", "would_recommend"],
    "additionalProperties": False,
}
TASKS: dict[str, list[str]] = {
    "sentiment": [],
    # the drug reviews' categories and entity types (once the worker's defaults: the figures stay comparable)
    "tags": [
        "--categories",
        "effectiveness,side effects,dosage,cost,mental health,pain,sleep,weight,skin,other",
    ],
    "moderation": [],
    "entities": ["--entity-types", "condition,drug,symptom,dosage"],
    "custom": [
        "--system-prompt",
        "Name the main side effect the patient reports (or 'none') and whether they recommend the drug.",
        "--schema",
        json.dumps(CUSTOM_SCHEMA),
    ],
}


def run_task(task: str, extra: list[str], source: Path, url: str, work: Path) -> dict[str, Any]:
    summary_path = work / f"summary-{task}.json"
    command = [
        str(WORKER), "--task", task, *extra, "--input", str(source), "--template", "{review}",
        "--output", str(work / f"results-{task}.jsonl"), "--dead-letter", str(work / f"dead-{task}.jsonl"),
        "--summary", str(summary_path), "--llm-url", url, "--model", MODEL_NAME,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    summary: dict[str, Any] = json.loads(summary_path.read_text())
    records = summary["records"]
    return {
        "task": task,
        "records": records,
        "dead_letters": summary["dead_letters"],
        "prompt_tokens_per_record": round(summary["prompt_tokens"] / records, 1),
        "cached_prompt_tokens_per_record": round(summary["cached_prompt_tokens"] / records, 1),
        "prompt_cache_hit_share": round(
            summary["cached_prompt_tokens"] / max(summary["prompt_tokens"], 1), 3
        ),
        "completion_tokens_per_record": round(summary["completion_tokens"] / records, 1),
        "records_per_s": summary["records_per_s"],
    }


def main() -> int:
    parser = arguments(__doc__)
    parser.add_argument("--records", type=int, default=16)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp, LlamaServer(parallel=CPU_PARALLEL) as server:
        work = Path(tmp)
        source = write_records(work / "input.jsonl", args.records)
        for task, extra in TASKS.items():
            rows.append(run_task(task, extra, source, server.url, work))
            print(json.dumps(rows[-1]), file=sys.stderr)
    print_table(
        ["task", "prompt tokens/record", "from the slot cache", "hit share", "completion tokens/record",
         "records/s", "dead letters"],
        [
            [row["task"], row["prompt_tokens_per_record"], row["cached_prompt_tokens_per_record"],
             f"{row['prompt_cache_hit_share']:.0%}", row["completion_tokens_per_record"],
             row["records_per_s"], row["dead_letters"]]
            for row in rows
        ],
    )  # fmt: skip
    save(args.json, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
