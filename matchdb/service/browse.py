"""allRecords and random: which records to answer, chosen from the server's in-memory list of live row ids
(:class:`~matchdb.service.rowids.RowIds`, current after the usual change-log catch-up), then fetched by primary key.

Without a filter neither needs a scan of the collection: a page is a slice of the ids, a random sample is uniform
positions in them. Under a filter, allRecords scans the matching ids (one indexed query, streamed into an array)
and random tests uniformly drawn candidates against the filter a round at a time, falling back to that scan only
when matches are too rare for candidates to find them.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from sqlalchemy import Engine

from matchdb.service.filters import evaluating_filter
from matchdb.service.indexes import IndexRegistry
from matchdb.service.rowids import Ids
from matchdb.service.views import Fields, public_record
from matchdb.storage.browse import ext_ids_by_row_ids, matching_among, matching_row_ids, shown_by_row_ids

ONLY_ID = frozenset({"_id"})
FETCH_CHUNK = 1000  # records fetched (and streamed out) at a time
MAX_PROBES = 20_000  # candidates random tests against a filter before it scans for the matches instead


class RecordBrowser:
    """Blocking (SQL): call from worker threads."""

    def __init__(
        self,
        engine: Engine,
        registry: IndexRegistry,
        index_wait: float = 30.0,
        rng: random.Random | None = None,
        max_probes: int = MAX_PROBES,
    ) -> None:
        self._engine = engine
        self._registry = registry
        self._index_wait = index_wait
        self._rng = rng or random.Random()
        self._max_probes = max_probes

    def live_ids(self, collection_id: str) -> Ids:
        """Every record's row id, ascending (insertion order); raises IndexLoading while the index loads."""
        return self._registry.get(collection_id, self._index_wait).row_ids.snapshot()

    def matching(self, collection_id: str, filter_: Mapping[str, Any] | None) -> Ids:
        """Row ids of the records matching ``filter_``, in insertion order."""
        if not filter_:
            return self.live_ids(collection_id)
        with self._engine.connect() as connection, evaluating_filter():
            return matching_row_ids(connection, collection_id, filter_)

    def records(self, row_ids: Sequence[int] | Ids, fields: Fields) -> list[dict[str, Any]]:
        """The records of ``row_ids`` as the API shows them, in that order (any deleted meanwhile left out)."""
        keys = [int(i) for i in row_ids]
        with self._engine.connect() as connection:
            if fields == ONLY_ID:
                ext_ids = ext_ids_by_row_ids(connection, keys)
                return [{"_id": ext_ids[key]} for key in keys if key in ext_ids]
            found = shown_by_row_ids(connection, keys)
        return [public_record(found[key], fields) for key in keys if key in found]

    def chunks(self, row_ids: Ids, fields: Fields) -> Iterator[list[dict[str, Any]]]:
        """:meth:`records` a chunk at a time, for streaming: memory stays bounded by the chunk."""
        for start in range(0, len(row_ids), FETCH_CHUNK):
            yield self.records(row_ids[start : start + FETCH_CHUNK], fields)

    def sample(
        self, collection_id: str, count: int, filter_: Mapping[str, Any] | None, fields: Fields
    ) -> list[dict[str, Any]]:
        """``count`` distinct records drawn uniformly among those matching ``filter_`` (all of them, in random
        order, when fewer match)."""
        ids = self.live_ids(collection_id)
        if not filter_:
            chosen = [int(ids[p]) for p in self._rng.sample(range(len(ids)), min(count, len(ids)))]
        else:
            chosen = self._sample_matching(collection_id, ids, count, filter_)
        return self.records(chosen, fields)

    def _sample_matching(self, collection_id: str, ids: Ids, count: int, filter_: Mapping[str, Any]) -> list[int]:
        """Candidates in uniformly random order, tested in rounds sized by the match rate seen so far; the first
        ``count`` matches in that order are a uniform sample of the matching records. When the first ``max_probes``
        candidates hold too few matches, the matches are scanned for and sampled instead (just as uniform)."""
        order = [int(ids[p]) for p in self._rng.sample(range(len(ids)), min(len(ids), self._max_probes))]
        found: list[int] = []
        tried = 0
        with self._engine.connect() as connection, evaluating_filter():
            while len(found) < count and tried < len(order):
                rate = max(len(found), 1) / tried if tried else 1.0
                size = max(4 * count, 64) if not tried else math.ceil(1.5 * (count - len(found)) / rate) + 16
                batch = order[tried : tried + min(size, 5000)]
                hits = matching_among(connection, collection_id, batch, filter_)
                found.extend(key for key in batch if key in hits)
                tried += len(batch)
            if len(found) >= count or len(order) == len(ids):
                return found[:count]
            everything = matching_row_ids(connection, collection_id, filter_)
        return [int(everything[p]) for p in self._rng.sample(range(len(everything)), min(count, len(everything)))]
