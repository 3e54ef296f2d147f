"""Chunk names (capmix.chunks): built by the workflow, constrained by its wildcard, parsed by
the caption and embed_images scripts, all from one module."""

import re

import pytest

from capmix.chunks import CHUNK_PATTERN, chunk_name, chunk_names, contiguous_run, parse_chunk


def test_names_round_trip_and_match_the_wildcard_constraint():
    names = chunk_names(4)
    assert names == ["chunk0of4", "chunk1of4", "chunk2of4", "chunk3of4"]
    assert chunk_name(0, 1) == "chunk0of1"
    for i, name in enumerate(names):
        assert re.fullmatch(CHUNK_PATTERN, name)
        assert parse_chunk(name) == (i, 4)
    assert parse_chunk("chunk12of8192") == (12, 8192)


@pytest.mark.parametrize("name", ["chunk1", "chunkAof2", "chunk1of2.json", "xchunk1of2",
                                  "chunk-1of2", ""])
def test_anything_else_is_refused(name):
    assert not re.fullmatch(CHUNK_PATTERN, name)
    with pytest.raises(ValueError, match="not a chunk name"):
        parse_chunk(name)


def test_contiguous_runs_cover_the_items_once_in_order():
    items = list(range(10))
    for n in (1, 3, 4, 10, 13):
        runs = [contiguous_run(items, i, n) for i in range(n)]
        assert [x for run in runs for x in run] == items
        assert max(map(len, runs)) - min(map(len, runs)) <= 1
    assert [contiguous_run(["a", "b"], i, 4) for i in range(4)] == [[], ["a"], [], ["b"]]
    with pytest.raises(ValueError, match="chunk 4 is outside 0..3"):
        contiguous_run(items, 4, 4)
