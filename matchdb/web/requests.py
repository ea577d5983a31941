"""Request fields, validated with precise 400 messages: ``records``, ``hash_type``, numbers, counts (the body itself is
read by :mod:`matchdb.web.bodies`)."""

from __future__ import annotations

import json
import math
from typing import Any

from starlette.requests import Request

from matchdb.hashing import HASH_TYPES
from matchdb.service.views import Fields, fields_of
from matchdb.web.envelope import ApiError


def records_field(body: dict[str, Any], max_records: int, name: str = "records") -> list[Any]:
    if name not in body:
        raise ApiError(400, f"Missing field '{name}'")
    records = body[name]
    if not isinstance(records, list):
        raise ApiError(400, f"Field '{name}' must be a list of records")
    if not records:
        raise ApiError(400, f"Field '{name}' must not be empty")
    if len(records) > max_records:
        raise ApiError(400, f"Too many records: {len(records)} > limit {max_records}")
    return records


def hash_types(body: dict[str, Any], default: tuple[str, ...], allow_list: bool) -> tuple[str, ...]:
    value = body.get("hash_type")
    if value is None:
        return default
    values = value if isinstance(value, list) and allow_list else [value]
    if not values or not all(isinstance(v, str) and v in HASH_TYPES for v in values):
        expected = " or ".join(f"'{t}'" for t in HASH_TYPES) + (" (or a list of them)" if allow_list else "")
        raise ApiError(400, f"Unknown hash_type {json.dumps(value)}: expected {expected}")
    return tuple(dict.fromkeys(values))


def number_field(body: dict[str, Any], name: str, default: float | None, maximum: float = 100.0) -> float | None:
    """A distance threshold in percent: a number in [0, 100]."""
    value = body.get(name)
    if value is None:
        return default
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or (isinstance(value, float) and not math.isfinite(value))
    ):
        raise ApiError(400, f"Field '{name}' must be a number, got {json.dumps(value)[:40]}")
    if not 0 <= value <= maximum:  # exact for ints of any size: no float conversion before the check
        raise ApiError(400, f"Field '{name}' must be between 0 and {maximum:g}, got {str(value)[:40]}")
    return float(value)


def count_field(body: dict[str, Any], name: str, maximum: int | None = None, setting: str = "") -> int | None:
    """A positive integer; above ``maximum`` a 400 that names the limit (and the ``setting`` that raises it)."""
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ApiError(400, f"Field '{name}' must be a positive integer, got {json.dumps(value)[:40]}")
    if maximum is not None and value > maximum:
        named = f" ({setting})" if setting else ""
        raise ApiError(400, f"Field '{name}' must be at most {maximum}{named}, got {str(value)[:40]}")
    return value


def flag_field(body: dict[str, Any], name: str) -> bool:
    """An optional boolean (absent or null: false). Only JSON ``true``/``false``: ``"true"`` or ``1`` is a 400,
    so a typo never silently switches a matching mode on or off."""
    value = body.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ApiError(400, f"Field '{name}' must be true or false, got {json.dumps(value)[:40]}")
    return value


def fields_field(body: dict[str, Any]) -> Fields:
    """``fields_to_return``: a list of attribute names (``"*"``: all); absent or null: the method's default (all)."""
    value = body.get("fields_to_return")
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(name, str) for name in value):
        raise ApiError(400, "Field 'fields_to_return' must be a list of attribute names (\"*\" for all)")
    return fields_of(value)


def query_count(request: Request, name: str, default: int, minimum: int) -> int:
    """An integer query parameter (``allRecords?size=N&page=P``), at least ``minimum``."""
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        value = minimum - 1
    if value < minimum or len(raw) > 18:
        raise ApiError(400, f"Query parameter '{name}' must be an integer >= {minimum}, got {raw[:40]!r}")
    return value
