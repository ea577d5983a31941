"""How a stored record is shown, and which of a request's keys are stored at all.

``fields_to_return`` (every method that answers with stored records) picks the keys shown: a list of names, where
``"*"`` means all of them; ``_id`` (and a record's ``_status``) always come back. Without it a method shows every
stored key: ``_id``, the attributes, ``_url`` when the record was fetched from one, ``_width`` and ``_height``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

ALL_FIELDS = "*"
ALWAYS_SHOWN = frozenset({"_id", "_status"})

# Keys that Ximilar's Python client reads or adds itself (its ``preprocess_records``): the file it turned into
# ``_base64``, its resize switch, raw pixels and their colour space. Sent along, never meant to be stored.
CLIENT_ONLY = ("_file", "noresize", "_img_data", "_color_space", "color_space")
# Keys of a request record that are not attributes: the image, what the server computes, and CLIENT_ONLY.
COMPUTED = ("_id", "_base64", "_url", "_width", "_height", "_status", *CLIENT_ONLY)

Fields = frozenset[str] | None  # None: every key


def fields_of(names: Iterable[str] | None) -> Fields:
    """``fields_to_return`` as a set of keys (``None``, or a list holding ``"*"``: every key)."""
    if names is None:
        return None
    chosen = frozenset(names)
    return None if ALL_FIELDS in chosen else chosen


class ShownRecord(Protocol):
    """A stored record as read from the database (with its hashes or without)."""

    @property
    def ext_id(self) -> str: ...
    @property
    def attributes(self) -> Mapping[str, Any]: ...
    @property
    def source_url(self) -> str | None: ...
    @property
    def width(self) -> int: ...
    @property
    def height(self) -> int: ...


def public_record(stored: ShownRecord, fields: Fields = None) -> dict[str, Any]:
    """A stored record as the API shows it, limited to ``fields``."""
    out: dict[str, Any] = {"_id": stored.ext_id, **stored.attributes}
    if stored.source_url:
        out["_url"] = stored.source_url
    out["_width"], out["_height"] = stored.width, stored.height
    return project(out, fields)


def project(record: dict[str, Any], fields: Fields) -> dict[str, Any]:
    """``record`` with only the keys in ``fields`` (and ``_id``, ``_status``)."""
    if fields is None:
        return record
    return {key: value for key, value in record.items() if key in fields or key in ALWAYS_SHOWN}


def stored_attributes(record: Mapping[str, Any]) -> dict[str, Any]:
    """The attributes of a request record that are stored: every key but COMPUTED ones."""
    return {key: value for key, value in record.items() if key not in COMPUTED}


def oversized_attributes(attributes: Mapping[str, Any], limit: int) -> str | None:
    """Why ``attributes`` may not be stored (their JSON is past ``limit`` bytes), or ``None``. The cap keeps every
    answer's cost bounded: an answer holds at most a chunk of records at a time, each at most this large."""
    size = len(json.dumps(attributes, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass"))
    if size <= limit:
        return None
    return f"attributes are {size} bytes as JSON, more than {limit} (MATCHDB_MAX_ATTRIBUTE_BYTES)"
