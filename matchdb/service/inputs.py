"""What to ingest or dedupe: the command line's paths (folders, image files, CSV/JSONL manifests) turned into
:class:`Item` values in a deterministic order.

The order decides insertion order, hence how ties rank in visualKNN. Rows that cannot work (no ``_url`` nor
``_file`` nor hashes, a repeated ``_id``) become failed items instead of raising, so one bad row never stops a run.

A manifest row may carry precomputed hashes instead of an image: ``bmh1`` and ``phash`` as the strings
``visual_hash`` returns (:mod:`matchdb.service.hash_import` stores them without any download or decode). Both are
needed, since every record holds both. The hashes win over an image source in the same row: ``_url`` is then kept as
the record's ``_url`` (shown, never fetched) and ``_file`` is not read, because the point of such a row is to store
hashes someone already computed (a catalogue moved from Ximilar lists both), not to compute them again.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from matchdb.service.views import COMPUTED

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".gif", ".bmp"})


@dataclass(frozen=True)
class Item:
    """One image to ingest: where its bytes come from (``path`` or else ``url``) and what to store with it.

    ``error`` is set for rows known to be unusable before any I/O; they flow through the pipeline like the others
    so the report and the counts stay in one place. ``source`` is what a report shows to find the item again.
    """

    ext_id: str
    source: str
    path: Path | None = None
    url: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    hashes: tuple[object, object] | None = None  # (bmh1, phash) as the manifest gave them, checked when stored


def discover(paths: Sequence[Path], unique_ids: bool = True) -> list[Item]:
    """Every item behind ``paths`` (folders, image files, ``.csv``/``.jsonl`` manifests), in argument order.

    A folder's images are sorted by their path relative to it, which is also their ``_id``; a single image file is
    identified by its name; manifest rows by ``_id``, else ``_file`` (relative to the manifest), else ``_url``.
    With ``unique_ids`` (ingest: one record per ``_id``) a repeated ``_id`` is an error; ``dedupe`` has no records.
    A manifest that cannot be read whole is one failed item (none of its rows are taken).
    """
    items: list[Item] = []
    for path in paths:
        suffix = path.suffix.lower()
        if path.is_dir():
            items.extend(Item(ext_id, str(image), path=image) for ext_id, image in iter_folder_images(path))
        elif suffix in _MANIFESTS:
            try:
                rows = list(_MANIFESTS[suffix](path))
            except (OSError, UnicodeDecodeError, csv.Error) as exc:
                rows = [Item("", str(path), error=f"cannot read manifest: {exc}")]
            items.extend(rows)
        else:  # named explicitly, so taken whatever its extension
            items.append(Item(path.name, str(path), path=path))
    items = [_image_needed(item) for item in items]
    return _mark_repeated(items) if unique_ids else items


def _image_needed(item: Item) -> Item:
    """:func:`discover` serves commands that read images (dedupe): a row of hashes alone has none to read."""
    if item.hashes is not None and item.path is None and item.url is None:
        return Item(item.ext_id, item.source, error="a row of hashes alone (no _url nor _file) has no image to read")
    return item


def iter_items(paths: Sequence[Path]) -> Iterator[Item]:
    """:func:`discover`'s items one at a time, in the same order, for inputs too big to hold (a cluster ingest of a
    10M-line manifest): only the ``_id`` values seen are kept (a 16-byte digest each), to fail repeated ones. A
    manifest that breaks part-way yields its rows up to there, then one failed item."""
    seen: set[bytes] = set()
    for path in paths:
        for item in _path_items(path):
            yield _unique(item, seen)


def _path_items(path: Path) -> Iterator[Item]:
    if path.is_dir():
        return (Item(ext_id, str(image), path=image) for ext_id, image in iter_folder_images(path))
    if path.suffix.lower() in _MANIFESTS:
        return _manifest_or_error(path)
    return iter([Item(path.name, str(path), path=path)])


def _unique(item: Item, seen: set[bytes]) -> Item:
    """``item``, or a failed one if its ``_id`` is in ``seen`` (which it joins)."""
    if item.error is None:
        digest = hashlib.blake2b(item.ext_id.encode(), digest_size=16).digest()
        if digest in seen:
            item = Item(item.ext_id, item.source, error="_id repeated (given to an earlier item)")
        seen.add(digest)
    return item


@dataclass
class HashBlock:
    """Consecutive input rows that carry hashes, column by column: what the import of precomputed hashes reads
    instead of an :class:`Item` per row, whose making (with the generic row handling behind it) was most of an
    import's time. Each row is known usable but for its hashes, which are checked (in bulk) when stored; its
    ``source`` is made only if it fails."""

    ext_ids: list[str] = field(default_factory=list)
    attributes: list[dict[str, Any]] = field(default_factory=list)
    urls: list[str | None] = field(default_factory=list)
    bmh1: list[object] = field(default_factory=list)
    phash: list[object] = field(default_factory=list)
    places: list[str] = field(default_factory=list)  # the manifest, or the item's whole source
    lines: list[int | None] = field(default_factory=list)  # the line in the manifest, if any

    def __len__(self) -> int:
        return len(self.ext_ids)

    def add_item(self, item: Item) -> None:
        assert item.hashes is not None
        self._add(item.ext_id, item.attributes, item.url, item.hashes[0], item.hashes[1], item.source, None)

    def _add(
        self,
        ext_id: str,
        attributes: dict[str, Any],
        url: str | None,
        bmh1: object,
        phash: object,
        place: str,
        line: int | None,
    ) -> None:
        self.ext_ids.append(ext_id)
        self.attributes.append(attributes)
        self.urls.append(url)
        self.bmh1.append(bmh1)
        self.phash.append(phash)
        self.places.append(place)
        self.lines.append(line)

    def extend(self, other: HashBlock) -> None:
        for mine, theirs in zip(self._columns(), other._columns(), strict=True):
            mine.extend(theirs)

    def cut(self, count: int) -> HashBlock:
        """The first ``count`` rows, removed from this block."""
        head = HashBlock(*(column[:count] for column in self._columns()))
        for column in self._columns():
            del column[:count]
        return head

    def source(self, index: int) -> str:
        line = self.lines[index]
        return self.places[index] if line is None else f"{self.places[index]}:{line}"

    def _columns(self) -> tuple[list[Any], ...]:
        return (self.ext_ids, self.attributes, self.urls, self.bmh1, self.phash, self.places, self.lines)


BLOCK = 1_000  # rows of a HashBlock: large enough that per-block costs vanish, small enough to keep order cheaply


def iter_inputs(paths: Sequence[Path], block: int = BLOCK) -> Iterator[Item | HashBlock]:
    """:func:`iter_items` for the import of precomputed hashes: the same items in the same order, except that
    manifest rows with hashes come as :class:`HashBlock` values of up to ``block`` rows. The usual such row (``_id``
    and both hashes given as strings) is read with one ``orjson`` decode and no :class:`Item`; any other goes
    through the generic row handling, so both readers fail and keep exactly the same rows."""
    seen: set[bytes] = set()
    for path in paths:
        if path.is_dir() or path.suffix.lower() not in _ROWS:
            for item in _path_items(path):
                yield _unique(item, seen)
        else:
            yield from _manifest_inputs(path, seen, block)


def _manifest_inputs(manifest: Path, seen: set[bytes], size: int) -> Iterator[Item | HashBlock]:
    place = str(manifest)
    pending = HashBlock()
    digest = hashlib.blake2b
    try:
        for line, row in _ROWS[manifest.suffix.lower()](manifest):
            if isinstance(row, dict):
                bmh1, phash, url, given = row.get("bmh1"), row.get("phash"), row.get("_url"), row.get("_id")
                if (
                    type(given) is str
                    and given
                    and type(bmh1) is str
                    and bmh1
                    and type(phash) is str
                    and phash
                    and (url is None or type(url) is str)
                ):  # the usual row with hashes: what _manifest_item and _unique make of it, without an Item
                    key = digest(given.encode(), digest_size=16).digest()
                    if key not in seen:
                        seen.add(key)
                        for name in row.keys() & _NOT_ATTRIBUTES:
                            del row[name]
                        pending._add(given, row, url or None, bmh1, phash, place, line)
                        if len(pending) >= size:
                            yield pending
                            pending = HashBlock()
                        continue
                item = _unique(_manifest_item(row, manifest, line), seen)
            else:
                item = row
            if item.hashes is not None and item.error is None:
                pending.add_item(item)
                continue
            if pending:
                yield pending
                pending = HashBlock()
            yield item
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        if pending:
            yield pending
            pending = HashBlock()
        yield Item("", place, error=f"cannot read manifest: {exc}")
    if pending:
        yield pending


_EXACT_FLOAT = 2.0**63  # orjson reads an integer past 64 bits as a float: a float this large may have been one


def _jsonl_rows(manifest: Path) -> Iterator[tuple[int, dict[str, Any] | Item]]:
    """The lines of a JSONL manifest as :func:`_jsonl_items` reads them, each decoded by ``orjson`` (bytes, no
    text decoding of the file first) unless it needs the standard library's exact reading: a line that orjson
    rejects (invalid, or JSON it does not take: NaN, lone surrogates; the error message is then json's), a float
    that may have been a large integer, nested values, or a carriage return that text mode takes as a line end."""
    loads, decode_error = orjson.loads, orjson.JSONDecodeError
    number = 0
    with manifest.open("rb") as handle:
        for raw in handle:
            if not number and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8) :]
            cr = raw.find(b"\r")
            if cr == -1 or raw[cr:] in (b"\r\n", b"\r"):
                number += 1
                try:
                    row = loads(raw)
                except decode_error:
                    row = None
                kinds = set(map(type, row.values())) if type(row) is dict else _NOT_PLAIN
                if kinds <= _PLAIN or (
                    kinds <= _PLAIN_OR_FLOAT
                    and all(abs(value) < _EXACT_FLOAT for value in row.values() if type(value) is float)
                ):
                    yield number, row
                    continue
                pieces = [raw.decode("utf-8")]
            else:  # lines that text mode splits at a lone carriage return
                pieces = list(io.StringIO(raw.decode("utf-8"), newline=None))
                number += 1
            for at, piece in enumerate(pieces):
                line = number + at
                if not piece.strip():
                    continue
                try:
                    value = json.loads(piece)
                except json.JSONDecodeError as exc:
                    yield line, Item("", f"{manifest}:{line}", error=f"invalid JSON: {exc}")
                    continue
                if not isinstance(value, dict):
                    yield line, Item("", f"{manifest}:{line}", error="a manifest line must be a JSON object")
                    continue
                yield line, value
            number += len(pieces) - 1


_PLAIN: frozenset[type] = frozenset((str, int, bool, type(None)))
_PLAIN_OR_FLOAT = _PLAIN | {float}
_NOT_PLAIN: set[type] = {object}


def _csv_rows(manifest: Path) -> Iterator[tuple[int, dict[str, Any] | Item]]:
    """The rows of a CSV manifest as :func:`_csv_items` reads them (``csv.DictReader``'s dicts) from the csv
    module's plain reader, a dict made by one ``zip`` per row."""
    with manifest.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            return
        width = len(header)
        for values in reader:
            if not values:
                continue
            if len(values) == width:
                yield reader.line_num, dict(zip(header, values, strict=True))
            else:  # DictReader's rest key (None) and rest value (None) are both dropped by _csv_items
                yield reader.line_num, dict(zip(header[: len(values)], values, strict=False))


def without_hashes(items: Iterable[Item], why: str) -> Iterator[Item]:
    """``items`` with every row of precomputed hashes failed for ``why`` (a path that only ingests images)."""
    for item in items:
        yield Item(item.ext_id, item.source, error=why) if item.hashes is not None and item.error is None else item


def folder_images(root: Path) -> list[tuple[str, Path]]:
    """(path relative to ``root``, path) of the image files under it by extension, sorted by relative path, skipping
    hidden files and folders (``.git``, macOS ``._x.jpg``). ``matchdb eval`` walks folders with it too."""
    return list(iter_folder_images(root))


def iter_folder_images(root: Path, relative: str = "") -> Iterator[tuple[str, Path]]:
    """:func:`folder_images` one at a time, one folder listing in memory at once. A folder's entries are sorted with
    a sub-folder ``d`` keyed ``"d/"``: every path under it starts so, hence the walk yields relative paths in
    exactly their sorted order. Symbolic links to folders are not followed (as ``os.walk`` does not)."""
    folder = root / relative if relative else root
    try:
        with os.scandir(folder) as listing:
            entries = [entry for entry in listing if not entry.name.startswith(".")]
    except OSError:  # an unreadable folder is passed over, as os.walk does
        return
    keyed: list[tuple[str, os.DirEntry[str], bool]] = []
    for entry in entries:
        is_dir = entry.is_dir()
        if is_dir and entry.is_symlink():
            continue
        if is_dir or Path(entry.name).suffix.lower() in IMAGE_EXTENSIONS:
            keyed.append((entry.name + "/" if is_dir else entry.name, entry, is_dir))
    for _key, entry, is_dir in sorted(keyed, key=lambda each: each[0]):
        name = f"{relative}/{entry.name}" if relative else entry.name
        if is_dir:
            yield from iter_folder_images(root, name)
        else:
            yield name, Path(entry.path)


def _manifest_or_error(manifest: Path) -> Iterator[Item]:
    try:
        yield from _MANIFESTS[manifest.suffix.lower()](manifest)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        yield Item("", str(manifest), error=f"cannot read manifest: {exc}")


def _csv_items(manifest: Path) -> Iterator[Item]:
    """The rows of a CSV manifest (header row first); raises on a file that cannot be read."""
    with manifest.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        for row in reader:
            values = {k: v for k, v in row.items() if k is not None and v is not None}
            yield _manifest_item(values, manifest, reader.line_num)


def _jsonl_items(manifest: Path) -> Iterator[Item]:
    """The lines of a JSONL manifest; a bad line is a failed item, a file that cannot be read raises."""
    with manifest.open(encoding="utf-8-sig") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                yield Item("", f"{manifest}:{number}", error=f"invalid JSON: {exc}")
                continue
            if not isinstance(row, dict):
                yield Item("", f"{manifest}:{number}", error="a manifest line must be a JSON object")
                continue
            yield _manifest_item(row, manifest, number)


_MANIFESTS: dict[str, Callable[[Path], Iterator[Item]]] = {".csv": _csv_items, ".jsonl": _jsonl_items}
_ROWS: dict[str, Callable[[Path], Iterator[tuple[int, dict[str, Any] | Item]]]] = {
    ".csv": _csv_rows,
    ".jsonl": _jsonl_rows,
}


HASHES = ("bmh1", "phash")  # manifest keys of precomputed hashes (never attributes)
_NOT_ATTRIBUTES = frozenset((*COMPUTED, *HASHES))


def _manifest_item(row: dict[str, Any], manifest: Path, line: int) -> Item:
    """One manifest row; with both ``_file`` and ``_url`` the local file is read and the URL kept as the source."""
    attributes = {k: v for k, v in row.items() if k not in _NOT_ATTRIBUTES}
    given_id = row.get("_id")
    ext_id = "" if given_id is None or given_id == "" else str(given_id)
    file_value, url = row.get("_file"), row.get("_url")
    if url is not None and not isinstance(url, str):
        return Item(ext_id, f"{manifest}:{line}", error="_url must be a string")
    url = url or None
    bmh1, phash = row.get("bmh1"), row.get("phash")
    if bmh1 not in (None, "") or phash not in (None, ""):
        source = f"{manifest}:{line}"
        if bmh1 in (None, "") or phash in (None, ""):
            missing = "bmh1" if bmh1 in (None, "") else "phash"
            return Item(ext_id, source, error=f"{missing} missing: a row with hashes needs both bmh1 and phash")
        if not (ext_id or url):
            return Item(ext_id, source, error="a row with hashes needs an _id (or an _url)")
        return Item(ext_id or str(url), source, url=url, attributes=attributes, hashes=(bmh1, phash))
    if file_value not in (None, ""):
        if not isinstance(file_value, str):
            return Item(ext_id, f"{manifest}:{line}", error="_file must be a string")
        relative = Path(file_value)
        path = relative if relative.is_absolute() else manifest.parent / relative
        return Item(ext_id or relative.as_posix(), str(path), path=path, url=url, attributes=attributes)
    if url is not None:
        return Item(ext_id or url, url, url=url, attributes=attributes)
    return Item(ext_id, f"{manifest}:{line}", error="the row has neither _url nor _file (nor bmh1 and phash)")


def _mark_repeated(items: list[Item]) -> list[Item]:
    """A second item with an ``_id`` already seen fails: storing both would silently keep only the last one."""
    first_source: dict[str, str] = {}
    out: list[Item] = []
    for item in items:
        if item.error is None and item.ext_id in first_source:
            item = Item(item.ext_id, item.source, error=f"_id repeated (first given to {first_source[item.ext_id]})")
        elif item.error is None:
            first_source[item.ext_id] = item.source
        out.append(item)
    return out
