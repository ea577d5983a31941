"""The body shape counter (matchdb/web/jsonshape.py) agrees with the parsed JSON, however the bytes are split."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from matchdb.web.jsonshape import JsonShape, ShapeLimit

# Strings full of the characters the scanner must not take for structure: quotes, backslashes, brackets, commas.
TRICKY = st.text(alphabet=st.sampled_from(list('"\\[]{},:ab \u00e9\U0001f600')), max_size=12)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | TRICKY,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(TRICKY, children, max_size=5),
    max_leaves=40,
)


def counted(value: Any) -> int:
    """What the scanner counts: array elements and object members, an empty container as one."""
    if isinstance(value, (list, dict)):
        items = list(value.values()) if isinstance(value, dict) else value
        return max(len(items), 1) + sum(counted(item) for item in items)
    return 0


def depth(value: Any) -> int:
    if isinstance(value, (list, dict)):
        items = list(value.values()) if isinstance(value, dict) else value
        return 1 + max((depth(item) for item in items), default=0)
    return 0


def scan(data: bytes, sizes: list[int], max_values: int = 10**9, max_depth: int = 10**9) -> JsonShape:
    shape = JsonShape(max_values, max_depth)
    start = 0
    for size in sizes:
        shape.feed(data[start : start + size])
        start += size
    shape.feed(data[start:])
    return shape


@settings(max_examples=300, deadline=None)
@given(JSON, st.booleans(), st.lists(st.integers(1, 9), max_size=30))
def test_counts_match_the_parsed_value_in_any_split(value: Any, ascii_only: bool, sizes: list[int]) -> None:
    data = json.dumps(value, ensure_ascii=ascii_only).encode()
    shape = scan(data, sizes)
    assert shape.values == 1 + counted(value)
    assert shape.depth == 0
    with pytest.raises(ShapeLimit):
        scan(data, sizes, max_values=counted(value))
    if depth(value):
        with pytest.raises(ShapeLimit) as refused:
            scan(data, sizes, max_depth=depth(value) - 1)
        assert refused.value.depth


def test_a_flood_is_refused_without_reading_it_all() -> None:
    shape = JsonShape(1000, 32)
    shape.feed(b'{"records": [')
    with pytest.raises(ShapeLimit, match="more than 1000 values"):
        for _ in range(1000):
            shape.feed(b"{},")
    assert shape.values <= 1003  # stopped at the chunk that passed the limit


def test_backslash_runs_across_chunks() -> None:
    """``"\\\\"`` ends its string: a run of backslashes split between chunks keeps its parity."""
    data = b'["a\\\\\\\\", [1, 2], "\\\\\\"[", {}]'
    assert json.loads(data) == ["a\\\\", [1, 2], '\\"[', {}]
    for split in range(len(data)):
        shape = scan(data, [split])
        assert (shape.values, shape.depth) == (1 + 4 + 2 + 1, 0), split
