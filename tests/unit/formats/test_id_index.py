from __future__ import annotations

import random

from llm_etl_provider.formats.id_index import _MIN_SLOTS, IdIndex, id_hash


def test_each_id_keeps_the_line_it_was_first_seen_at():
    index = IdIndex()
    assert index.first_line("a", 1) == 1
    assert index.first_line("b", 2) == 2
    assert index.first_line("a", 3) == 1
    assert index.first_line("b", 9) == 2
    assert len(index) == 2


def test_an_integer_id_and_its_string_are_the_same_id():
    index = IdIndex()
    index.first_line(7, 1)
    assert index.first_line("7", 2) == 1


def test_a_hundred_thousand_ids_through_many_growths_all_found_in_a_few_dozen_bytes_each():
    rng = random.Random(3)
    ids = [f"patient-{rng.getrandbits(48):012x}" for _ in range(100_000)]
    assert len(set(ids)) == len(ids)
    index = IdIndex()
    for line, record_id in enumerate(ids, 1):
        assert index.first_line(record_id, line) == line
    for line, record_id in enumerate(ids, 1):
        assert index.first_line(record_id, 10**9 + line) == line
    assert len(index) == len(ids)
    assert index.nbytes <= 48 * len(ids)


def test_ids_that_land_in_the_last_slot_are_told_apart_on_a_chain_that_wraps_around():
    index = IdIndex()
    slots = _MIN_SLOTS
    same_slot: list[str] = []
    candidate = 0
    while len(same_slot) < 5:  # five ids whose hashes share their low bits: one chain, past the end
        if id_hash(candidate) % slots == slots - 1:
            same_slot.append(str(candidate))
        candidate += 1
    for line, record_id in enumerate(same_slot, 1):
        assert index.first_line(record_id, line) == line
    for line, record_id in enumerate(same_slot, 1):
        assert index.first_line(record_id, 100 + line) == line


def test_clear_forgets_every_id():
    index = IdIndex()
    for line in range(2000):
        index.first_line(line, line + 1)
    index.clear()
    assert len(index) == 0
    assert index.first_line(5, 42) == 42


def test_lines_below_one_are_kept_as_they_are():
    index = IdIndex()
    assert index.first_line("a", -3) == -3
    assert index.first_line("a", 5) == -3
