"""A JSON answer written while its parts are produced, so a large answer never exists whole in memory.

The value is plain JSON data in which two placeholders may appear: :class:`Items` (an iterator, written as an array
as it yields) and :class:`Later` (a function called when the writer reaches it, for what is only known after the
items before it were written: counts, distances of the records that were still there, the processing time).
Starlette iterates a plain iterator in a worker thread, so an iterator that reads the database is fine.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from matchdb.web.envelope import encode_json

FLUSH_BYTES = 64 * 1024  # written to the socket in pieces of about this size


class Items:
    """An array whose elements come from ``items`` while it is written."""

    def __init__(self, items: Iterable[Any]) -> None:
        self.items = items


class Later:
    """A value computed when the writer reaches it."""

    def __init__(self, compute: Callable[[], Any]) -> None:
        self.compute = compute


def stream_json(value: Any, flush_bytes: int = FLUSH_BYTES) -> Iterator[bytes]:
    """``value`` as UTF-8 JSON (as :func:`~matchdb.web.envelope.encode_json` writes it), in pieces of about
    ``flush_bytes``."""
    pending: list[bytes] = []
    size = 0
    for piece in _pieces(value):
        pending.append(piece)
        size += len(piece)
        if size >= flush_bytes:
            yield b"".join(pending)
            pending, size = [], 0
    if pending:
        yield b"".join(pending)


def _pieces(value: Any) -> Iterator[bytes]:
    if isinstance(value, Later):
        yield from _pieces(value.compute())
    elif isinstance(value, Items):
        yield b"["
        for position, item in enumerate(value.items):
            yield (b"," if position else b"") + encode_json(item)
        yield b"]"
    elif isinstance(value, dict) and _has_placeholder(value.values()):
        yield b"{"
        for position, (key, item) in enumerate(value.items()):
            yield (b"," if position else b"") + encode_json(str(key)) + b":"
            yield from _pieces(item)
        yield b"}"
    elif isinstance(value, list) and _has_placeholder(value):
        yield b"["
        for position, item in enumerate(value):
            if position:
                yield b","
            yield from _pieces(item)
        yield b"]"
    else:
        yield encode_json(value)


def _has_placeholder(values: Iterable[Any]) -> bool:
    """Whether a placeholder is anywhere below: containers without one are written by one ``json.dumps``."""
    for item in values:
        if isinstance(item, (Items, Later)):
            return True
        if isinstance(item, dict) and _has_placeholder(item.values()):
            return True
        if isinstance(item, list) and _has_placeholder(item):
            return True
    return False
