"""What to ingest or dedupe: the command line's paths (folders, image files, CSV/JSONL manifests) turned into
:class:`Item` values in a deterministic order.

The order decides insertion order, hence how ties rank in visualKNN. Rows that cannot work (no ``_url`` nor
``_file``, a repeated ``_id``) become failed items instead of raising, so one bad row never stops a run.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
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


def discover(paths: Sequence[Path], unique_ids: bool = True) -> list[Item]:
    """Every item behind ``paths`` (folders, image files, ``.csv``/``.jsonl`` manifests), in argument order.

    A folder's images are sorted by their path relative to it, which is also their ``_id``; a single image file is
    identified by its name; manifest rows by ``_id``, else ``_file`` (relative to the manifest), else ``_url``.
    With ``unique_ids`` (ingest: one record per ``_id``) a repeated ``_id`` is an error; ``dedupe`` has no records.
    """
    items: list[Item] = []
    for path in paths:
        suffix = path.suffix.lower()
        if path.is_dir():
            items.extend(_folder_items(path))
        elif suffix == ".csv":
            items.extend(_csv_items(path))
        elif suffix == ".jsonl":
            items.extend(_jsonl_items(path))
        else:  # named explicitly, so taken whatever its extension
            items.append(Item(path.name, str(path), path=path))
    return _mark_repeated(items) if unique_ids else items


def folder_images(root: Path) -> list[tuple[str, Path]]:
    """(path relative to ``root``, path) of the image files under it by extension, sorted by relative path, skipping
    hidden files and folders (``.git``, macOS ``._x.jpg``). ``matchdb eval`` walks folders with it too."""
    found: list[tuple[str, Path]] = []
    for folder, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                path = Path(folder, name)
                found.append((path.relative_to(root).as_posix(), path))
    return sorted(found)


def _folder_items(root: Path) -> list[Item]:
    return [Item(ext_id, str(path), path=path) for ext_id, path in folder_images(root)]


def _csv_items(manifest: Path) -> list[Item]:
    try:
        with manifest.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            rows = [
                (reader.line_num, {k: v for k, v in row.items() if k is not None and v is not None}) for row in reader
            ]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        return [Item("", str(manifest), error=f"cannot read manifest: {exc}")]
    return [_manifest_item(row, manifest, line) for line, row in rows]


def _jsonl_items(manifest: Path) -> list[Item]:
    try:
        lines = manifest.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        return [Item("", str(manifest), error=f"cannot read manifest: {exc}")]
    items: list[Item] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            items.append(Item("", f"{manifest}:{number}", error=f"invalid JSON: {exc}"))
            continue
        if not isinstance(row, dict):
            items.append(Item("", f"{manifest}:{number}", error="a manifest line must be a JSON object"))
            continue
        items.append(_manifest_item(row, manifest, number))
    return items


def _manifest_item(row: dict[str, Any], manifest: Path, line: int) -> Item:
    """One manifest row; with both ``_file`` and ``_url`` the local file is read and the URL kept as the source."""
    attributes = {k: v for k, v in row.items() if k not in COMPUTED}
    given_id = row.get("_id")
    ext_id = "" if given_id is None or given_id == "" else str(given_id)
    file_value, url = row.get("_file"), row.get("_url")
    if url is not None and not isinstance(url, str):
        return Item(ext_id, f"{manifest}:{line}", error="_url must be a string")
    url = url or None
    if file_value not in (None, ""):
        if not isinstance(file_value, str):
            return Item(ext_id, f"{manifest}:{line}", error="_file must be a string")
        relative = Path(file_value)
        path = relative if relative.is_absolute() else manifest.parent / relative
        return Item(ext_id or relative.as_posix(), str(path), path=path, url=url, attributes=attributes)
    if url is not None:
        return Item(ext_id or url, url, url=url, attributes=attributes)
    return Item(ext_id, f"{manifest}:{line}", error="the row has neither _url nor _file")


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
