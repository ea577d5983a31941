"""Filters (matchdb/storage/filters.py, matchdb/service/filters.py) on real SQLite and Postgres: JSON's types kept
apart as before, one statement whatever the length of an ``$in`` (so SQLAlchemy's statement cache and the SQL text
do not grow with it), and a database's refusal of a filter a 400 that carries neither statement nor parameters."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from sqlalchemy import Engine, select, text
from sqlalchemy.dialects import postgresql, sqlite

from matchdb.service.collections import MatchingIds
from matchdb.service.filters import FilterLimits, QueryError, evaluating_filter, validate_filter
from matchdb.storage.browse import matching_row_ids
from matchdb.storage.collections import create_collection
from matchdb.storage.database import make_engine
from matchdb.storage.filters import filter_condition
from matchdb.storage.records import NewRecord, upsert_records
from matchdb.storage.schema import records
from matchdb.web.observe import MAX_MESSAGE_CHARS, MAX_TRACEBACK_CHARS, TextFormatter

MISSING = object()
VALUES: list[Any] = [5, 5.0, 5.5, "5", True, False, 1, 0, None, MISSING, "x", "", [5], {"b": 1}, -(2**70), "é😀"]


@pytest.fixture
def stocked(database_url: str) -> Iterator[tuple[Engine, str]]:
    """A collection with one record per value of :data:`VALUES` in attribute ``a`` (row ids in that order)."""
    engine = make_engine(database_url)
    with engine.begin() as connection:
        collection = create_collection(connection, "default", "filters").id
        batch = [
            NewRecord(f"r{i}", {} if value is MISSING else {"a": value}, None, 8, 8, "c", bytes(121), bytes(8))
            for i, value in enumerate(VALUES)
        ]
        upsert_records(connection, collection, batch)
    yield engine, collection
    engine.dispose()


def equal(stored: Any, wanted: Any) -> bool:
    """JSON equality as the API defines it: numbers by value, no mixing of types, null matches a missing key."""
    if wanted is None:
        return stored is None or stored is MISSING
    if isinstance(wanted, bool) or isinstance(stored, bool):
        return isinstance(wanted, bool) and isinstance(stored, bool) and stored == wanted
    if isinstance(wanted, (int, float)):
        return isinstance(stored, (int, float)) and float(stored) == float(wanted)
    return isinstance(stored, str) and stored == wanted


@pytest.mark.parametrize(
    "wanted",
    [[5], [5.0], ["5"], [True], [False], [1], [0], [None], ["x", ""], [5, "x", None, True], [-(2**70)], ["é😀"], []],
)
def test_in_keeps_json_types_apart(stocked: tuple[Engine, str], wanted: list[Any]) -> None:
    engine, collection = stocked
    with engine.connect() as connection:
        ids = matching_row_ids(connection, collection, {"a": {"$in": wanted}})
        first = int(connection.execute(select(records.c.id).order_by(records.c.id).limit(1)).scalar_one())
    expected = [i for i, value in enumerate(VALUES) if any(equal(value, w) for w in wanted)]
    assert [int(i) - first for i in ids] == expected


@pytest.mark.parametrize("name", ["sqlite", "postgresql"])
def test_one_statement_whatever_the_length_of_in(name: str) -> None:
    dialect = (sqlite if name == "sqlite" else postgresql).dialect()

    def sql(values: list[Any]) -> str:
        condition = filter_condition(dialect.name, {"a": {"$in": values}, "b": "x"})
        return str(select(records.c.id).where(condition).compile(dialect=dialect))

    for make in (lambda n: list(range(n)), lambda n: [str(i) for i in range(n)]):
        statements = {sql(make(n)) for n in (1, 2, 3, 900, 1000)}
        assert len(statements) == 1 and len(statements.pop()) < 2000


def test_a_database_error_in_a_filter_is_a_400_without_the_statement(database_url: str) -> None:
    engine = make_engine(database_url)
    with pytest.raises(QueryError) as refused, engine.connect() as connection, evaluating_filter():
        connection.execute(text("SELECT json_extract_nonexistent(:secret)"), {"secret": "tenant data " * 1000})
    engine.dispose()
    assert refused.value.status == 400 and "filter could not be evaluated" in str(refused.value)
    assert "tenant data" not in str(refused.value) and "SELECT" not in str(refused.value)
    assert refused.value.__cause__ is None and refused.value.__suppress_context__


@pytest.mark.parametrize("value", ["\x00", "a\x00b", 10**400, [1], {"b": 1}])
def test_values_a_database_cannot_compare_are_refused_before_sql(value: Any) -> None:
    """U+0000 (psycopg refuses it: a 500 before; SQLite's JSON functions cut the string there) and numbers past a
    float's range: the caller's 400, before any SQL."""
    for filter_ in ({"a": value}, {"a": {"$in": ["ok", value]}}):
        with pytest.raises(QueryError, match=r"values must be strings|only equality"):
            validate_filter(filter_, FilterLimits())


def test_log_lines_are_bounded() -> None:
    try:
        raise ValueError("SELECT " + "x, " * 1_000_000)
    except ValueError as exc:
        failure = (ValueError, exc, None)
        record = logging.LogRecord("matchdb", logging.ERROR, __file__, 1, "%s", ("m" * 100_000,), failure)
    line = TextFormatter().format(record)
    assert len(line) < MAX_MESSAGE_CHARS + MAX_TRACEBACK_CHARS + 500 and "characters cut" in line


@pytest.mark.parametrize("count", [1000, MatchingIds.SET_LIMIT + 1000])
def test_matching_ids_answer_membership_as_a_set_would(count: int) -> None:
    """Past SET_LIMIT the ids a filter matched are a sorted array (8 bytes each), with the same answers."""
    chance = np.random.default_rng(count)
    ids = np.unique(chance.integers(1, 4 * count, count)).astype(np.int64)
    matching, expected = MatchingIds(ids), set(ids.tolist())
    for key in [0, 1, int(ids[0]), int(ids[-1]), int(ids[-1]) + 1, *chance.integers(0, 5 * count, 2000).tolist()]:
        assert (key in matching) == (key in expected), key
