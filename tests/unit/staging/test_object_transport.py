from __future__ import annotations

from llm_etl_provider.staging.cutting import ByteRange
from llm_etl_provider.staging.object_transport import without_empty_ranges


def test_ranges_without_a_record_join_their_neighbour():
    ranges = [
        ByteRange(0, 0, 10, 1),
        ByteRange(1, 10, 20, 3),
        ByteRange(2, 20, 30, 5),
        ByteRange(3, 30, 40, 7),
    ]
    joined, records = without_empty_ranges(ranges, [0, 4, 0, 2])
    assert [(r.index, r.start, r.end, r.first_line) for r in joined] == [(0, 0, 30, 1), (1, 30, 40, 7)]
    assert records == [4, 2]
