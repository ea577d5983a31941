"""Ximilar's ``filter`` (MongoDB-style equality and ``$in`` on attributes) as SQL conditions on ``records``.

Checked by :func:`matchdb.service.collections.validate_filter` before it gets here; shared by visualKNN,
allRecords and random.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import ColumnElement, Float, and_, case, cast, false, func, or_, true

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
    not 1, null matches a missing key). CASE guards every cast, so a string never reaches a numeric cast."""
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
    options: list[ColumnElement[bool]] = []
    for value in values:
        if value is None:
            options.append(or_(kind.is_(None), kind == names["null"]))
        elif isinstance(value, bool):
            if dialect == "postgresql":
                options.append(and_(kind == "boolean", text_value == ("true" if value else "false")))
            else:
                options.append(kind == names["true" if value else "false"])
        elif isinstance(value, (int, float)):
            is_number = kind == "number" if dialect == "postgresql" else kind.in_(("integer", "real"))
            numeric = case((is_number, cast(text_value, Float)), else_=None)
            options.append(numeric == float(value))
        else:
            options.append(and_(kind == names["string"], text_value == value))
    return or_(*options) if options else false()
