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

import csv
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
        suffix = path.suffix.lower()
        items: Iterator[Item]
        if path.is_dir():
            items = (Item(ext_id, str(image), path=image) for ext_id, image in iter_folder_images(path))
        elif suffix in _MANIFESTS:
            items = _manifest_or_error(path)
        else:
            items = iter([Item(path.name, str(path), path=path)])
        for item in items:
            if item.error is None:
                digest = hashlib.blake2b(item.ext_id.encode(), digest_size=16).digest()
                if digest in seen:
                    item = Item(item.ext_id, item.source, error="_id repeated (given to an earlier item)")
                seen.add(digest)
            yield item


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
