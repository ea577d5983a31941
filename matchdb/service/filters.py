"""Ximilar's ``filter`` checked before any SQL is built, and a database's refusal of one made the caller's error.

A filter is ``{attribute: value}`` or ``{attribute: {"$in": [values]}}``, values being strings, finite numbers,
booleans or null: so it nests at most three levels by its grammar. Its size is capped (``MATCHDB_MAX_FILTER_KEYS``
attributes, ``MATCHDB_MAX_FILTER_VALUES`` values in all), and whatever its size it becomes one statement shape with
one array parameter per attribute and type (:mod:`matchdb.storage.filters`), so neither the SQL text nor
SQLAlchemy's statement cache grows with an ``$in`` list.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import DBAPIError

from matchdb.storage.transactions import unavailable

MAX_KEY_CHARS = 256  # an attribute name: far past any real one, short enough to keep SQL and logs small


class QueryError(ValueError):
    """A query the caller got wrong (bad filter, unknown stored ``_id``): a 400 or 404 for the whole request."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status


@dataclass(frozen=True)
class FilterLimits:
    max_keys: int = 20
    max_values: int = 1000


def validate_filter(filter_: object, limits: FilterLimits) -> dict[str, Any] | None:
    """``filter_`` if it is a filter within ``limits``; else :class:`QueryError` (400) saying what is wrong."""
    if filter_ is None:
        return None
    if not isinstance(filter_, dict):
        raise QueryError(400, 'filter must be an object of attribute: value or attribute: {"$in": [values]}')
    if len(filter_) > limits.max_keys:
        text = f"filter has {len(filter_)} attributes > limit {limits.max_keys} (MATCHDB_MAX_FILTER_KEYS)"
        raise QueryError(400, text)
    total = 0
    for key, wanted in filter_.items():
        if len(key) > MAX_KEY_CHARS:
            raise QueryError(400, f"filter: attribute names have at most {MAX_KEY_CHARS} characters")
        if isinstance(wanted, dict):
            if set(wanted) != {"$in"} or not isinstance(wanted["$in"], list):
                raise QueryError(400, f'filter on {key!r}: only equality and {{"$in": [...]}} are supported')
            values = wanted["$in"]
        else:
            values = [wanted]
        total += len(values)
        if total > limits.max_values:
            text = f"filter has more than {limits.max_values} values (limit MATCHDB_MAX_FILTER_VALUES)"
            raise QueryError(400, text)
        if not all(_scalar(v) for v in values):
            kinds = "strings (without U+0000), finite numbers, booleans or null"
            raise QueryError(400, f"filter on {key!r}: values must be {kinds}")
    return filter_


def _scalar(value: object) -> bool:
    """A value a filter can compare: U+0000 is refused (Postgres text cannot hold it, and SQLite's JSON functions
    end a string there), and so are numbers beyond a float's range."""
    if isinstance(value, str):
        return "\x00" not in value
    if value is None or isinstance(value, bool):
        return True
    if isinstance(value, int):
        return abs(value) < 2**1023  # a float can hold it (the comparison is numeric, as JSON's)
    return isinstance(value, float) and math.isfinite(value)


@contextlib.contextmanager
def evaluating_filter() -> Iterator[None]:
    """Run a filtered query: an error of the database's own (other than being unavailable, a 503) is the filter's
    fault, a 400 with the database's first line, never a 500 with the statement and its parameters in the log."""
    try:
        yield
    except DBAPIError as exc:
        if unavailable(exc) is not None:
            raise
        reason = str(exc.orig).split("\n", 1)[0][:200] if exc.orig is not None else type(exc).__name__
        raise QueryError(400, f"filter could not be evaluated: {reason}") from None
