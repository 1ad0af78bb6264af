from __future__ import annotations

import gzip
import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_etl_provider.exceptions import StagingInputError
from llm_etl_provider.formats.records import RecordReader
from llm_etl_provider.staging.cutting import plan_ranges, plan_shards


def records_of(path, **kwargs):
    return [(r.line, r.record_id, r.error, r.fields) for r in RecordReader(path, **kwargs)]


def staged_records(tmp_path, source, fmt, **kwargs):
    """Run the worker's reader over every shard, as the pods would, with each shard's line offset."""
    out = []
    shards = list(plan_shards(source, **kwargs))
    for shard in shards:
        path = tmp_path / f"shard-{shard.index}.{fmt}.gz"
        path.write_bytes(shard.data)
        reader = RecordReader(path, input_format=fmt, line_offset=shard.line_offset,
                              max_record_bytes=kwargs.get("max_record_bytes", 1 << 20))  # fmt: skip
        out += [(r.line, r.record_id, r.error, r.fields) for r in reader]
    return out, shards


lines = st.lists(
    st.one_of(
        st.builds(
            lambda i, t: json.dumps({"id": i, "text": t}), st.integers(0, 10**6), st.text(max_size=400)
        ),
        st.sampled_from(["", "   ", "{broken", "[1, 2]", '{"text": "no id"}']),
    ),
    max_size=300,
)


@settings(max_examples=40, deadline=None)
@given(rows=lines, limit=st.sampled_from([2_000, 6_000, 50_000]))
def test_jsonl_shards_reproduce_every_record_at_its_input_line(tmp_path_factory, rows, limit):
    tmp_path = tmp_path_factory.mktemp("stage")
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(rows) + ("\n" if rows else ""))
    got, shards = staged_records(
        tmp_path, source, "jsonl", max_shard_bytes=limit, max_record_bytes=limit // 2
    )
    assert got == records_of(source, max_record_bytes=limit // 2)
    assert all(len(s.data) <= limit for s in shards)
    assert sum(s.records for s in shards) == sum(1 for r in rows if r.strip())
    assert [s.index for s in shards] == list(range(len(shards)))


def test_incompressible_input_makes_many_shards_each_under_the_limit(tmp_path):
    rng = random.Random(3)
    source = tmp_path / "in.jsonl"
    source.write_text(
        "".join(json.dumps({"id": i, "text": rng.randbytes(900).hex()}) + "\n" for i in range(400))
    )
    got, shards = staged_records(tmp_path, source, "jsonl", max_shard_bytes=40_000, max_record_bytes=8_000)
    assert len(shards) > 10
    assert all(len(s.data) <= 40_000 for s in shards)
    assert [g[1] for g in got] == list(range(400))


def test_an_oversized_record_is_cut_and_dead_lettered_by_the_worker_at_its_line(tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text(
        '{"id": 1, "text": "a"}\n'
        + json.dumps({"id": 2, "text": "x" * 50_000})
        + '\n{"id": 3, "text": "c"}\n'
    )
    got, shards = staged_records(tmp_path, source, "jsonl", max_shard_bytes=20_000, max_record_bytes=10_000)
    assert [(line, error) for line, _, error, _ in got] == [(1, None), (2, "record_too_large"), (3, None)]
    assert all(len(s.data) <= 20_000 for s in shards)


def quoted_csv(path, header="id,note", seed=5):
    """300 CSV rows under ``header``; every third has a quoted field of two lines holding a comma."""
    rng = random.Random(seed)
    rows = [header] + [
        f'{i},"{rng.randbytes(20).hex()}\nline two, with a comma"'
        if i % 3 == 0
        else f"{i},{rng.randbytes(20).hex()}"
        for i in range(300)
    ]
    path.write_text("\n".join(rows) + "\n")
    return path


def test_csv_shards_repeat_the_header_and_never_split_a_quoted_row(tmp_path):
    source = quoted_csv(tmp_path / "in.csv")
    got, shards = staged_records(tmp_path, source, "csv", max_shard_bytes=2_000, max_record_bytes=500)
    assert len(shards) > 3
    assert got == records_of(source)
    for shard in shards:
        assert gzip.decompress(shard.data).startswith(b"id,note\n")


def test_gzip_input_with_a_bom(tmp_path):
    source = tmp_path / "in.jsonl.gz"
    source.write_bytes(gzip.compress(b'\xef\xbb\xbf{"id": "a", "text": "x"}\n{"id": "b", "text": "y"}\n'))
    got, shards = staged_records(tmp_path, source, "jsonl")
    assert [g[1] for g in got] == ["a", "b"]
    assert len(shards) == 1


def test_an_empty_input_has_no_shards(tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text("")
    assert list(plan_shards(source)) == []


def test_a_truncated_gzip_input_fails_naming_the_file(tmp_path):
    data = gzip.compress(b"".join(b'{"id": %d}\n' % i for i in range(5000)))
    source = tmp_path / "cut.jsonl.gz"
    source.write_bytes(data[: len(data) // 2])
    with pytest.raises(StagingInputError, match=r"cut\.jsonl\.gz"):
        list(plan_shards(source))


def test_limits_that_cannot_hold_a_record_are_refused(tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text("{}\n")
    with pytest.raises(StagingInputError, match="half of max_shard_bytes 1000"):
        list(plan_shards(source, max_shard_bytes=1000, max_record_bytes=800))
    with pytest.raises(StagingInputError, match="over a Secret's 1048576 bytes"):
        list(plan_shards(source, max_shard_bytes=2 << 20, max_record_bytes=800))


def test_a_csv_line_over_the_record_limit_fails_the_staging_rather_than_being_cut(tmp_path):
    source = tmp_path / "in.csv"
    # each field is under the limit, the row is not: cut, its open quote would swallow the rows after it
    source.write_text(f'id,a,b\n1,{"x" * 70},"{"y" * 70}"\n2,p,q\n')
    with pytest.raises(StagingInputError, match=r"in.csv:2: a CSV line over max_record_bytes \(100 bytes\)"):
        list(plan_shards(source, max_shard_bytes=1000, max_record_bytes=100))
    assert [s.records for s in plan_shards(source, max_shard_bytes=1000, max_record_bytes=200)] == [2]


def ranged_records(tmp_path, source, fmt, pods, max_record_bytes=1 << 20):
    """Run the worker's reader over every range after its prefix, as the object transport's pods would, with
    the input's duplicate lines (what the stage stages with each shard)."""
    out = []
    data = source.read_bytes()
    repeated = [r.line for r in RecordReader(source, input_format=fmt) if r.error == "duplicate_id"]
    ranges = plan_ranges(source, input_format=fmt, pods=pods, max_record_bytes=max_record_bytes)
    for byte_range in ranges:
        path = tmp_path / f"range-{byte_range.index}.{fmt}"
        path.write_bytes(byte_range.prefix + data[byte_range.start : byte_range.end])
        reader = RecordReader(path, input_format=fmt, line_offset=byte_range.line_offset,
                              max_record_bytes=max_record_bytes, duplicate_lines=repeated)  # fmt: skip
        out += [(r.line, r.record_id, r.error, r.fields) for r in reader]
    return out, ranges


@settings(max_examples=40, deadline=None)
@given(rows=lines, pods=st.integers(1, 9))
def test_jsonl_ranges_reproduce_every_record_at_its_input_line(tmp_path_factory, rows, pods):
    tmp_path = tmp_path_factory.mktemp("ranges")
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(rows) + ("\n" if rows else ""))
    got, ranges = ranged_records(tmp_path, source, "jsonl", pods)
    assert got == records_of(source)
    assert 1 <= len(ranges) <= pods
    assert [(r.start, r.end) for r in ranges] == list(
        zip([0] + [r.end for r in ranges[:-1]], [r.end for r in ranges], strict=True)
    )  # contiguous, the whole file
    assert ranges[-1].end == source.stat().st_size


def test_jsonl_ranges_are_about_equal(tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"id": i, "text": "x" * (i % 50)}) + "\n" for i in range(10_000)))
    ranges = plan_ranges(source, input_format="jsonl", pods=8, max_record_bytes=1 << 20)
    sizes = [r.end - r.start for r in ranges]
    assert len(ranges) == 8
    assert max(sizes) - min(sizes) < 200  # at most a line apart from size / 8


def test_csv_ranges_repeat_the_header_and_never_split_a_quoted_row(tmp_path):
    source = quoted_csv(tmp_path / "in.csv", header="\ufeffid,note", seed=7)
    for pods in (1, 2, 5, 13):
        got, ranges = ranged_records(tmp_path, source, "csv", pods)
        assert got == records_of(source)
        assert len(ranges) == pods
        assert all(r.prefix == b"id,note\n" for r in ranges[1:])
        assert ranges[0].prefix == b""


def test_no_range_starts_at_a_line_that_looks_like_gzip(tmp_path):
    """A line beginning with gzip's magic bytes is one bad record in a read of the whole input; as the
    first bytes of a range it would make the worker take the range for a gzip stream and refuse it whole."""
    source = tmp_path / "in.jsonl"
    lines = [json.dumps({"id": i, "text": "x" * 40}).encode() for i in range(40)]
    lines[20] = b"\x1f\x8b not json"
    lines[21] = b"\x1f\x8b nor this"
    source.write_bytes(b"\n".join(lines) + b"\n")
    data = source.read_bytes()
    got, ranges = ranged_records(tmp_path, source, "jsonl", 2)
    assert got == records_of(source)
    assert all(data[r.start : r.start + 2] != b"\x1f\x8b" for r in ranges)
    assert len(ranges) == 2  # the cut moved past the two lines instead


def test_both_transports_refuse_a_csv_header_no_shard_could_repeat(tmp_path):
    """Secret-sized shards and the object transport's ranges repeat the CSV header by one rule."""
    source = tmp_path / "header.csv"
    source.write_bytes(b'id,"te\nxt"\n1,a\n2,b\n')
    refusals = []
    for plan in (
        lambda: list(plan_shards(source, input_format="csv", max_shard_bytes=600, max_record_bytes=100)),
        lambda: plan_ranges(source, input_format="csv", pods=2, max_record_bytes=100),
    ):
        with pytest.raises(StagingInputError) as refused:
            plan()
        refusals.append(str(refused.value))
    assert refusals == [f"{source}:1: a CSV header spanning lines cannot be repeated per shard"] * 2
