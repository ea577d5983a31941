"""Records in, hashed images out: validation of one record, ``_base64`` decoding, ``_url`` fetching, hashing.

A failed record is a value (:class:`RecordFailure`), never an exception that spoils its batch. Hashing runs in a
thread pool (Pillow and numpy release the GIL for the heavy parts), so the event loop stays free and several
requests hash in parallel.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import re
import uuid
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from matchdb import metrics
from matchdb.config import Settings
from matchdb.errors import ImageError
from matchdb.fetch import Fetcher, FetchError
from matchdb.geometric import Prepared, prepare
from matchdb.hashing import HashedImage, VisualHash, decode_image, hash_image, hash_pixels
from matchdb.hashing.dihedral import hash_dihedral
from matchdb.hashing.thumbnail import thumbnail_bytes

_DATA_URI = re.compile(r"^data:[\w.+/-]*(;[\w=.+-]+)*;base64,", re.IGNORECASE)
_WHITESPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class RecordFailure:
    """Why one record could not be used: its ``_status`` code and text."""

    code: int
    text: str


@dataclass(frozen=True)
class LoadedRecord:
    """One record of a request after loading: the record to echo back and either its hashes or its failure."""

    record: dict[str, Any]
    image: HashedImage | None
    failure: RecordFailure | None = None
    checksum: str = ""  # SHA-256 of the image bytes
    variants: tuple[dict[str, VisualHash], ...] = ()  # the 8 orientations' hashes, when loaded with ``dihedral``
    geometric: Prepared | None = None  # signature and query, when loaded with ``geometric``

    def query_hashes(self, kind: str) -> list[VisualHash]:
        """The hashes to search with: the plain one first, then every distinct other orientation's (dihedral)."""
        assert self.image is not None
        plain = self.image.hashes[kind]
        distinct = {plain.data: plain}
        for hashes in self.variants:
            distinct.setdefault(hashes[kind].data, hashes[kind])
        return list(distinct.values())


def echo_record(raw: object, assign_id: bool) -> dict[str, Any]:
    """The record as it is echoed back: every attribute but ``_base64``; ``_id`` as a string, assigned if asked."""
    record = {k: v for k, v in raw.items() if k != "_base64"} if isinstance(raw, dict) else {}
    identifier = record.get("_id")
    if identifier is None:
        if assign_id:
            record["_id"] = str(uuid.uuid4())
        else:
            record.pop("_id", None)
    elif isinstance(identifier, (int, float)) and not isinstance(identifier, bool):
        record["_id"] = str(identifier)
    return record


def image_failure(message: str) -> RecordFailure:
    return RecordFailure(400, f"Error Loading Image: {message}")


def decode_base64(value: object, max_bytes: int) -> bytes:
    """The bytes of a ``_base64`` field (plain base64 or a ``data:image/...;base64,`` URI)."""
    if not isinstance(value, str):
        raise ImageError("_base64 must be a string")
    text = _DATA_URI.sub("", value.strip(), count=1)
    text = _WHITESPACE.sub("", text)
    if not text:
        raise ImageError("_base64 is empty")
    if len(text) * 3 // 4 > max_bytes + 3:
        raise ImageError(f"image too large: more than {max_bytes} bytes")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageError("_base64 is not valid base64") from exc


class ImageLoader:
    """Turns request records into hashed images, fetching ``_url`` records concurrently."""

    def __init__(
        self,
        fetcher: Fetcher,
        executor: Executor,
        max_pixels: int,
        max_bytes: int,
        concurrency: int,
        thumbnails: bool = False,
    ):
        self._fetcher = fetcher
        self._thumbnails = thumbnails  # the operator's MATCHDB_THUMBNAILS: make them for records to store
        self._executor = executor
        self._max_pixels = max_pixels
        self._max_bytes = max_bytes
        self._limit = asyncio.Semaphore(concurrency)

    async def load_many(
        self,
        raws: Sequence[object],
        kinds: Sequence[str],
        assign_id: bool,
        to_store: bool = False,
        geometric: bool = False,
    ) -> list[LoadedRecord]:
        """Load every record concurrently; the result keeps request order. ``to_store``: the records will be stored,
        so each gets its thumbnail too (unless thumbnails are off)."""
        thumbnail = to_store and self._thumbnails
        return list(
            await asyncio.gather(
                *(self.load(raw, kinds, assign_id, thumbnail=thumbnail, geometric=geometric) for raw in raws)
            )
        )

    async def load(
        self,
        raw: object,
        kinds: Sequence[str],
        assign_id: bool,
        dihedral: bool = False,
        thumbnail: bool = False,
        geometric: bool = False,
    ) -> LoadedRecord:
        """One record; with ``dihedral`` its 8 orientations are hashed too (a query image only: 8 times the work),
        with ``thumbnail`` its thumbnail is made from the same decoded pixels, with ``geometric`` its geometric
        signature and query too."""
        record = echo_record(raw, assign_id)
        if not isinstance(raw, dict):
            return LoadedRecord(record, None, RecordFailure(400, "record must be a JSON object"))
        identifier = record.get("_id")
        if identifier is not None and not isinstance(identifier, str):
            return LoadedRecord(record, None, RecordFailure(400, "_id must be a string or a number"))
        try:
            source = await self._source_of(raw)
        except FetchError as exc:
            metrics.IMAGE_FAILURES.labels("download").inc()
            metrics.DOWNLOAD_FAILURES.labels(exc.cause).inc()
            return LoadedRecord(record, None, image_failure(str(exc)))
        except ImageError as exc:  # no usable _url or _base64
            metrics.IMAGE_FAILURES.labels("input").inc()
            return LoadedRecord(record, None, image_failure(str(exc)))
        try:
            async with self._limit:
                loop = asyncio.get_running_loop()
                image, checksum, variants, prepared = await loop.run_in_executor(
                    self._executor, self._decode, source, tuple(kinds), dihedral, thumbnail, geometric
                )
        except ImageError as exc:
            metrics.IMAGE_FAILURES.labels("decode").inc()
            return LoadedRecord(record, None, image_failure(str(exc)))
        metrics.IMAGES_HASHED.labels("base64" if isinstance(source, str) else "url").inc()
        record["_width"], record["_height"] = image.width, image.height
        return LoadedRecord(record, image, checksum=checksum, variants=variants, geometric=prepared)

    def _decode(
        self, source: bytes | str, kinds: tuple[str, ...], dihedral: bool, thumbnail: bool, geometric: bool
    ) -> tuple[HashedImage, str, tuple[dict[str, VisualHash], ...], Prepared | None]:
        """Runs in the pool: base64 text is decoded here too, as it is CPU work that would stall the event loop."""
        data = decode_base64(source, self._max_bytes) if isinstance(source, str) else source
        checksum = hashlib.sha256(data).hexdigest()
        if geometric:
            pixels = decode_image(data, self._max_pixels)
            picture = thumbnail_bytes(pixels) if thumbnail else None
            image = HashedImage(pixels.width, pixels.height, hash_pixels(pixels, kinds), picture)
            return image, checksum, (), prepare(pixels)
        if not dihedral:
            return hash_image(data, kinds, self._max_pixels, thumbnail), checksum, (), None
        pixels = decode_image(data, self._max_pixels)
        variants = tuple(hash_dihedral(pixels, kinds))
        return HashedImage(pixels.width, pixels.height, variants[0]), checksum, variants, None

    async def _source_of(self, raw: dict[str, Any]) -> bytes | str:
        """The image bytes (downloaded) or the base64 text to decode."""
        if "_base64" in raw and raw["_base64"] is not None:
            if not isinstance(raw["_base64"], str):
                raise ImageError("_base64 must be a string")
            return raw["_base64"]
        if raw.get("_url"):
            url = raw["_url"]
            if not isinstance(url, str):
                raise ImageError("_url must be a string")
            async with self._limit:
                return await self._fetcher.fetch(url)
        if "_file" in raw:
            raise ImageError("_file is read by Ximilar's client, not by the server: send the image bytes as _base64")
        raise ImageError("the record has no _url or _base64")


def fetcher_from_settings(settings: Settings) -> Fetcher:
    """The guarded ``_url`` downloader with the operator's limits and SSRF allow list (server and CLI alike)."""
    return Fetcher(
        connect_timeout=settings.fetch_connect_timeout,
        read_timeout=settings.fetch_read_timeout,
        max_bytes=settings.max_download_bytes,
        max_redirects=settings.fetch_max_redirects,
        attempts=settings.fetch_attempts,
        allow=settings.fetch_allow,
    )


def loader_from_settings(settings: Settings, fetcher: Fetcher, executor: Executor) -> ImageLoader:
    return ImageLoader(
        fetcher,
        executor,
        settings.max_pixels,
        settings.max_download_bytes,
        settings.fetch_concurrency,
        thumbnails=settings.thumbnails,
    )
