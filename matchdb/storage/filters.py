"""Ximilar's ``filter`` (MongoDB-style equality and ``$in`` on attributes) as SQL conditions on ``records``.

Checked by :func:`matchdb.service.filters.validate_filter` before it gets here; shared by visualKNN,
allRecords and random.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import ColumnElement, Float, Text, and_, any_, case, cast, false, func, literal, or_, select, true
from sqlalchemy.dialects.postgresql import ARRAY

from matchdb.storage.schema import records


def filter_condition(dialect: str, filter_: Mapping[str, Any] | None) -> ColumnElement[bool]:
    """Every attribute of ``filter_`` equals its value (or one of its ``{"$in": [...]}`` values)."""
    if not filter_:
        return true()
    conditions = []
    for key, wanted in filter_.items():
        values = wanted["$in"] if isinstance(wanted, dict) else [wanted]
        conditions.append(json_equals_any(dialect, key, values))
    return and_(*conditions)


def json_equals_any(dialect: str, key: str, values: Sequence[Any]) -> ColumnElement[bool]:
    """SQL for 'attribute ``key`` equals one of ``values``' with JSON's types kept apart ("5" is not 5, true is
    not 1, null matches a missing key). CASE guards every cast, so a string never reaches a numeric cast. The
    strings and the numbers are one array parameter each, so the statement is the same for any number of values."""
    column = records.c.attributes
    kind: ColumnElement[Any]
    text_value: ColumnElement[Any]
    names: dict[str, str | None]
    if dialect == "postgresql":
        element = column.op("->")(key)
        kind = func.json_typeof(element)
        text_value = column.op("->>")(key)
        names = {"string": "string", "number": "number", "true": "boolean", "false": "boolean", "null": "null"}
    else:
        path = '$."' + key.replace('"', '\\"') + '"'
        kind = func.json_type(column, path)
        text_value = func.json_extract(column, path)
        names = {"string": "text", "number": None, "true": "true", "false": "false", "null": "null"}
    strings = [value for value in values if isinstance(value, str)]
    numbers = [float(value) for value in values if isinstance(value, (int, float)) and not isinstance(value, bool)]
    options: list[ColumnElement[bool]] = []
    if any(value is None for value in values):
        options.append(or_(kind.is_(None), kind == names["null"]))
    for flag in sorted({value for value in values if isinstance(value, bool)}):
        if dialect == "postgresql":
            options.append(and_(kind == "boolean", text_value == ("true" if flag else "false")))
        else:
            options.append(kind == names["true" if flag else "false"])
    if numbers:
        is_number = kind == "number" if dialect == "postgresql" else kind.in_(("integer", "real"))
        numeric = case((is_number, cast(text_value, Float)), else_=None)
        options.append(one_of(dialect, numeric, numbers, Float()))
    if strings:
        options.append(and_(kind == names["string"], one_of(dialect, text_value, strings, Text())))
    return or_(*options) if options else false()


def one_of(
    dialect: str, expression: ColumnElement[Any], values: list[Any], kind: Float[float] | Text
) -> ColumnElement[bool]:
    """``expression`` equals one of ``values``, passed as one parameter: an array on Postgres, a JSON array read by
    ``json_each`` on SQLite (an ``IN`` list or an ``OR`` chain would be a statement, and a cache entry, per length)."""
    if dialect == "postgresql":
        return expression == any_(cast(literal(values, ARRAY(kind)), ARRAY(kind)))
    elements = func.json_each(literal(json.dumps(values), Text())).table_valued("value")
    return expression.in_(select(elements.c.value))
