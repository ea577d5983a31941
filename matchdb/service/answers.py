"""visualKNN answers whose records are read a chunk at a time, so an answer of any size holds at most one chunk.

A batch may name up to ``MATCHDB_MAX_ANSWER_RECORDS`` answers, and a stored record's attributes may be up to
``MATCHDB_MAX_ATTRIBUTE_BYTES``: built whole, the worst answer would be their product (640 MB at the defaults).
Instead the search's hits (a few bytes each) are kept, and the records are fetched :data:`ANSWER_CHUNK` at a time,
in answer order, while the response is written. An answer that fits in one chunk (the usual one: ``k`` = 10) is
fetched with the search's consistency check in one statement and answered as before.

Records deleted between the search and their chunk's fetch are left out of their answer, with their distances, as
a record deleted between the search and the single fetch always was.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from matchdb.index import Hit
from matchdb.service.stateless import shown_distance
from matchdb.service.views import Fields, public_record
from matchdb.storage.records import StoredRecord

ANSWER_CHUNK = 256  # records fetched, and held, at a time while an answer is written

Fetch = Callable[[Sequence[int]], dict[int, StoredRecord]]


@dataclass
class Answer:
    """visualKNN / visualRankRecords answer."""

    records: list[dict[str, Any]] = field(default_factory=list)
    distances: list[float] = field(default_factory=list)
    hamming: list[int] = field(default_factory=list)


class ChunkedAnswers:
    """The answers of one visualKNN call (one per query), read in order: :meth:`records` of the first query, then
    its :meth:`distances` and :meth:`hamming`, then the next query's, and so on."""

    def __init__(
        self, found: Sequence[tuple[str, Sequence[Hit]]], fields: Fields, fetch: Fetch, first: dict[int, StoredRecord]
    ) -> None:
        self._found = found
        self._fields = fields
        self._fetch = fetch
        self._order = [hit.key for _, hits in found for hit in hits]
        self._starts = [0]
        for _, hits in found:
            self._starts.append(self._starts[-1] + len(hits))
        self._chunk_start = 0
        self._chunk = first  # the records of positions [_chunk_start, _chunk_start + ANSWER_CHUNK)
        self._kept: list[list[Hit]] = [[] for _ in found]

    def __len__(self) -> int:
        return len(self._found)

    @property
    def total(self) -> int:
        """How many hits the answers hold (before any record deleted meanwhile is left out)."""
        return len(self._order)

    @property
    def fits_one_chunk(self) -> bool:
        return self.total <= ANSWER_CHUNK

    def first_ids(self) -> list[int]:
        """The row ids of the first chunk, to fetch with the search's consistency check."""
        return self._order[:ANSWER_CHUNK]

    def records(self, query: int) -> Iterator[dict[str, Any]]:
        """Query ``query``'s answer records in order, as the API shows them."""
        kept = self._kept[query] = []
        for position, hit in enumerate(self._found[query][1], start=self._starts[query]):
            if not self._chunk_start <= position < self._chunk_start + ANSWER_CHUNK:
                self._chunk_start = position - position % ANSWER_CHUNK
                self._chunk = {}  # let the last chunk go before the next one is read
                self._chunk = self._fetch(self._order[self._chunk_start : self._chunk_start + ANSWER_CHUNK])
            record = self._chunk.get(hit.key)
            if record is not None:  # else deleted since the search
                kept.append(hit)
                yield public_record(record, self._fields)

    def distances(self, query: int) -> list[float]:
        kind = self._found[query][0]
        return [shown_distance(hit.bits, kind) for hit in self._kept[query]]

    def hamming(self, query: int) -> list[int]:
        return [hit.bits for hit in self._kept[query]]

    def answer(self, query: int) -> Answer:
        """Query ``query``'s whole answer (for answers that fit in one chunk)."""
        records = list(self.records(query))
        return Answer(records, self.distances(query), self.hamming(query))
