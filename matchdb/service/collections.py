"""Collection use cases: insert (upsert by ``_id``), delete, update, get, allIDs, visualKNN, visualRankRecords.

Images are loaded and hashed like the stateless methods; the database is the truth (each request's writes are one
transaction, with their change-log entries); answers come from the in-memory indexes after a catch-up.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import Engine
from sqlalchemy.engine import Connection
from starlette.concurrency import run_in_threadpool

from matchdb.config import Settings
from matchdb.errors import MatchdbError
from matchdb.geometric import NBITS as GEOMETRIC_NBITS
from matchdb.geometric import Query as GeometricQuery
from matchdb.geometric import scan as geometric_scan
from matchdb.hashing import HASH_TYPES, NBITS, VisualHash
from matchdb.index import Hit
from matchdb.service.answers import ANSWER_CHUNK, Answer, ChunkedAnswers
from matchdb.service.filters import QueryError, evaluating_filter
from matchdb.service.indexes import CollectionIndex, IndexRegistry
from matchdb.service.records import ImageLoader, LoadedRecord, RecordFailure
from matchdb.service.stateless import shown_distance
from matchdb.service.views import Fields, oversized_attributes, public_record, stored_attributes
from matchdb.storage import records as store
from matchdb.storage.browse import matching_row_ids
from matchdb.storage.database import single_reads
from matchdb.storage.geometric import signatures_by_row_ids
from matchdb.storage.transactions import Writer

#: Geometric scores are bits of 64, shown as a percentage of 64 bits: exactly as a phash distance is shown.
GEOMETRIC_KIND = "phash"


def new_record(item: LoadedRecord) -> store.NewRecord:
    assert item.image is not None
    attributes = stored_attributes(item.record)
    url = item.record.get("_url")
    return store.NewRecord(
        ext_id=str(item.record["_id"]),
        attributes=attributes,
        source_url=url if isinstance(url, str) else None,
        width=item.image.width,
        height=item.image.height,
        checksum=item.checksum,
        bmh1=item.image.hashes["bmh1"].data,
        phash=item.image.hashes["phash"].data,
        thumbnail=item.image.thumbnail,
        geometric=None if item.geometric is None else item.geometric.words.astype("<u8").tobytes(),
    )


class Unconfirmed(MatchdbError):
    """A presumed token or collection (:class:`~matchdb.storage.records.Presumed`) did not hold."""


class CollectionService:
    def __init__(
        self,
        engine: Engine,
        loader: ImageLoader,
        registry: IndexRegistry,
        index_wait: float = 30.0,
        writer: Writer | None = None,
        max_attribute_bytes: int = Settings.max_attribute_bytes,
    ) -> None:
        self._engine = engine
        self._max_attribute_bytes = max_attribute_bytes
        self._loader = loader
        self._registry = registry
        self._index_wait = index_wait
        self._writer = writer or Writer(engine)  # write transactions, retried when a retry cures the failure

    async def insert(self, collection_id: str, raws: Sequence[object], geometric: bool = False) -> list[LoadedRecord]:
        """Upsert every record that loads; a repeated ``_id`` in the request fails that record. One transaction.
        ``geometric``: the collection's records keep a geometric signature, computed here."""
        loaded = await self._loader.load_many(raws, HASH_TYPES, assign_id=True, to_store=True, geometric=geometric)
        seen: set[str] = set()
        for index, item in enumerate(loaded):
            ext_id = str(item.record.get("_id"))
            repeated = ext_id in seen
            seen.add(ext_id)
            if item.failure is not None:
                continue
            reason = oversized_attributes(stored_attributes(item.record), self._max_attribute_bytes)
            if repeated:
                reason = f"_id {ext_id!r} repeated in request"
            if reason:
                loaded[index] = LoadedRecord(item.record, None, RecordFailure(400, reason))
        batch = [new_record(item) for item in loaded if item.failure is None]
        await run_in_threadpool(
            self._writer.run, lambda connection: store.upsert_records(connection, collection_id, batch)
        )
        return loaded

    async def delete(self, collection_id: str, ext_ids: Sequence[str]) -> dict[str, int]:
        return await run_in_threadpool(
            self._writer.run, lambda connection: store.delete_records(connection, collection_id, ext_ids)
        )

    async def update(
        self, collection_id: str, patches: dict[str, dict[str, Any]]
    ) -> dict[str, store.StoredRecord | str]:
        """Merge each patch; returns the updated records as stored (those that exist), or why a record was left
        as it was (its merged attributes would be past ``MATCHDB_MAX_ATTRIBUTE_BYTES``)."""
        limit = self._max_attribute_bytes

        def write(connection: Connection) -> dict[str, store.StoredRecord | str]:
            refused = store.update_attributes(
                connection, collection_id, patches, lambda a: oversized_attributes(a, limit)
            )
            written = store.get_records(connection, collection_id, [e for e, why in refused.items() if why is None])
            return {ext_id: why or written[ext_id] for ext_id, why in refused.items()}

        return await run_in_threadpool(self._writer.run, write)

    async def get(self, collection_id: str, ext_ids: Sequence[str]) -> dict[str, store.StoredRecord]:
        def read() -> dict[str, store.StoredRecord]:
            with self._engine.connect() as connection:
                return store.get_records(connection, collection_id, ext_ids)

        return await run_in_threadpool(read)

    async def all_ids(self, collection_id: str, page: int, page_size: int) -> tuple[list[str], int]:
        def read() -> tuple[list[str], int]:
            with self._engine.connect() as connection:
                return store.page_ext_ids(connection, collection_id, page, page_size)

        return await run_in_threadpool(read)

    async def stored_hash(self, collection_id: str, ext_id: str, kind: str) -> tuple[store.StoredRecord, VisualHash]:
        found = (await self.get(collection_id, [ext_id])).get(ext_id)
        if found is None:
            raise QueryError(404, f"query_record: no record with _id {ext_id!r} in this collection")
        return found, VisualHash(kind, found.bmh1 if kind == "bmh1" else found.phash)

    async def knn(
        self,
        collection_id: str,
        queries: Sequence[VisualHash],
        k: int,
        radius: float | None,
        filter_: dict[str, Any] | None,
        fields: Fields,
        exclude: int | None = None,
    ) -> Answer:
        """The exact k nearest stored records (within ``radius`` if given) among those matching ``filter_``.

        ``queries`` is one hash, or the hashes of the query's orientations (``dihedral``): a record's distance is
        then its smallest over them, and the answer stays exact (see :func:`merge_hits`).
        """
        answers = await self.knn_many(collection_id, [(queries, exclude)], k, radius, filter_, fields)
        return answers.answer(0) if answers.fits_one_chunk else await run_in_threadpool(answers.answer, 0)

    async def knn_many(
        self,
        collection_id: str,
        searches: Sequence[tuple[Sequence[VisualHash] | GeometricQuery, int | None]],
        k: int,
        radius: float | None,
        filter_: dict[str, Any] | None,
        fields: Fields,
        presumed: store.Presumed | None = None,
    ) -> ChunkedAnswers:
        """:meth:`knn` for several queries (each its hashes and the row id it excludes) in one go: the filter is
        evaluated once and the index caught up once (visualKNN's batch form, ``records`` instead of
        ``query_record``). The answers' first chunk of records is fetched here; the rest while they are read.
        ``presumed``: the caller's token and collection as an earlier request found them, confirmed by that fetch
        (:class:`Unconfirmed` if they changed: the caller looks them up again)."""

        def search(loaded: CollectionIndex, allowed: Container[int] | None) -> list[tuple[str, list[Hit]]]:
            found = []
            for queries, exclude in searches:

                def accept(key: int, exclude: int | None = exclude) -> bool:
                    return key != exclude and (allowed is None or key in allowed)

                check = accept if (allowed is not None or exclude) else None
                if isinstance(queries, GeometricQuery):
                    bound = GEOMETRIC_NBITS if radius is None else max_bits_within(radius, GEOMETRIC_KIND)
                    hits = loaded.geometric.search(queries, bound, k, check)
                    found.append((GEOMETRIC_KIND, [Hit(bits, key) for key, bits in hits]))
                    continue
                kind = queries[0].kind
                max_bits = None if radius is None else max_bits_within(radius, kind)
                index = loaded.by_kind[kind]
                found.append((kind, merge_hits([index.nearest(q.as_int(), k, max_bits, check) for q in queries], k)))
            return found

        def run() -> ChunkedAnswers:
            allowed = self._matching(collection_id, filter_) if filter_ else None
            # First without a catch-up: the records are fetched with the change log's last number, and if the index
            # had applied every change up to it, the answer is as current as a catch-up would have made it (one
            # round trip). Otherwise catch up and search again, as before.
            seen = self._registry.seq
            found = search(self._registry.current(collection_id, self._index_wait), allowed)
            stored, latest, confirmed = self._fetch(first_chunk(found), presumed)
            if not confirmed:
                raise Unconfirmed("the token or the collection changed since they were last looked up")
            if seen < 0 or latest > seen:
                found = search(self._registry.get(collection_id, self._index_wait), allowed)
                stored, _, _ = self._fetch(first_chunk(found))
            return ChunkedAnswers(found, fields, self._fetch_chunk, stored)

        return await run_in_threadpool(run)

    async def rank_records(
        self,
        collection_id: str,
        queries: Sequence[VisualHash] | GeometricQuery,
        ext_ids: Sequence[str],
        k: int | None,
        radius: float | None,
        fields: Fields = None,
    ) -> tuple[Answer, list[str]]:
        """Rank the given stored records against the query (its smallest distance over ``queries``, the query's
        orientations with ``dihedral``); also returns the ``_id`` values not found."""
        stored = await self.get(collection_id, ext_ids)
        if isinstance(queries, GeometricQuery):
            kind = GEOMETRIC_KIND
            scored = await run_in_threadpool(self._geometric_scores, queries, list(stored.values()))
        else:
            kind = queries[0].kind

            def bits_to(record: store.StoredRecord) -> int:
                value = VisualHash(kind, record.bmh1 if kind == "bmh1" else record.phash)
                return min(query.hamming(value) for query in queries)

            scored = sorted((bits_to(s), s.row_id, s) for s in stored.values())
        if radius is not None:
            scored = [entry for entry in scored if shown_distance(entry[0], kind) <= radius]
        if k is not None:
            scored = scored[:k]
        answer = Answer(
            [public_record(s, fields) for _, _, s in scored],
            [shown_distance(bits, kind) for bits, _, _ in scored],
            [bits for bits, _, _ in scored],
        )
        return answer, [e for e in ext_ids if e not in stored]

    def _geometric_scores(
        self, query: GeometricQuery, stored: list[store.StoredRecord]
    ) -> list[tuple[int, int, store.StoredRecord]]:
        """(score, row id, record) of the given records that have a signature, best first."""
        with single_reads(self._engine) as connection:
            signatures = signatures_by_row_ids(connection, [s.row_id for s in stored])
        kept = [s for s in stored if s.row_id in signatures]
        if not kept:
            return []
        words = np.stack([signatures[s.row_id] for s in kept])
        bits = geometric_scan.scores(words, np.arange(len(kept), dtype=np.int64), len(kept), query)
        return sorted((int(b), s.row_id, s) for b, s in zip(bits.tolist(), kept, strict=True))

    def _fetch(
        self, row_ids: Iterable[int], presumed: store.Presumed | None = None
    ) -> tuple[dict[int, store.StoredRecord], int, bool]:
        """The records of these row ids, the change log's last number and whether ``presumed`` holds, in one
        statement (autocommit: no BEGIN and ROLLBACK around it)."""
        with single_reads(self._engine) as connection:
            return store.get_by_row_ids_as_of(connection, list(dict.fromkeys(row_ids)), presumed)

    def _fetch_chunk(self, row_ids: Sequence[int]) -> dict[int, store.StoredRecord]:
        return self._fetch(row_ids)[0]

    def _matching(self, collection_id: str, filter_: dict[str, Any]) -> Container[int]:
        """Row ids of the records whose attributes match ``filter_`` (equality, or ``{"$in": [...]}``)."""
        with self._engine.connect() as connection, evaluating_filter():  # streamed: a transaction (a cursor)
            return MatchingIds(matching_row_ids(connection, collection_id, filter_))


class MatchingIds:
    """The row ids a filter matched, for ``key in ids`` while a search runs: a set while they are few (the fastest
    test, and a selective filter asks it about many candidates), a sorted array of 8 bytes each past
    :data:`SET_LIMIT`, where a set would cost about 60 bytes per match (600 MB for a filter matching 10 million
    records), and where most candidates match, so the search asks about few beyond its k."""

    SET_LIMIT = 65_536

    def __init__(self, ascending: npt.NDArray[np.int64]) -> None:
        self._ids = ascending
        self._set = set(ascending.tolist()) if len(ascending) <= self.SET_LIMIT else None

    def __contains__(self, key: object) -> bool:
        if self._set is not None:
            return key in self._set
        assert isinstance(key, int)
        at = int(np.searchsorted(self._ids, key))
        return at < len(self._ids) and int(self._ids[at]) == key


def first_chunk(found: Sequence[tuple[str, Sequence[Hit]]]) -> list[int]:
    """The row ids of the answers' first chunk, in answer order."""
    return [hit.key for _, hits in found for hit in hits][:ANSWER_CHUNK]


def merge_hits(answers: Sequence[Sequence[Hit]], k: int) -> list[Hit]:
    """Several exact k-nearest answers (one per query orientation) as one: each key at its smallest distance, sorted
    by (bits, key), the first ``k``.

    Exact: if a record is among the k best by its smallest distance d, reached with query q, it is among q's own k
    best, since any record ahead of it there is also ahead of it here (its smallest distance is at most its distance
    to q); k records ahead of it for q would be k records ahead of it here.
    """
    if len(answers) == 1:
        return list(answers[0][:k])
    best: dict[int, int] = {}
    for hits in answers:
        for hit in hits:
            if hit.bits < best.get(hit.key, hit.bits + 1):
                best[hit.key] = hit.bits
    return sorted((Hit(bits, key) for key, bits in best.items()))[:k]


def max_bits_within(radius: float, kind: str) -> int:
    """The largest bit count whose shown distance (one decimal) is within ``radius``."""
    nbits = NBITS[kind]
    bits = int(radius * nbits / 100) + 2
    while bits >= 0 and shown_distance(bits, kind) > radius:
        bits -= 1
    return max(bits, -1)
