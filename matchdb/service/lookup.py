"""Collections and queries for the commands that work on the database directly (``matchdb ingest``, ``query``,
``collection delete``): find a collection by name or id, and the stored records nearest to an image."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Engine

from matchdb.errors import MatchdbError
from matchdb.geometric import NBITS as GEOMETRIC_NBITS
from matchdb.geometric import Query as GeometricQuery
from matchdb.hashing import VisualHash
from matchdb.index import Hit
from matchdb.service.collections import GEOMETRIC_KIND, max_bits_within, merge_hits
from matchdb.service.indexes import IndexRegistry
from matchdb.service.stateless import shown_distance
from matchdb.service.views import public_record
from matchdb.storage import collections as collection_store
from matchdb.storage.records import get_by_row_ids
from matchdb.storage.tokens import DEFAULT_WORKSPACE


class CollectionNotFound(MatchdbError):
    """No collection (or more than one, across workspaces) answers to the name or id given. ``existing`` holds the
    names there are (in the workspace searched), closest to the one given first, so a message can offer them."""

    def __init__(self, message: str, existing: Sequence[str] = (), ambiguous: bool = False) -> None:
        super().__init__(message)
        self.existing = list(existing)
        self.ambiguous = ambiguous


def closest_first(key: str, names: Sequence[str]) -> list[str]:
    """``names`` ordered by similarity to ``key`` (difflib's ratio, case-insensitive), then alphabetically."""

    def score(name: str) -> float:
        return difflib.SequenceMatcher(None, key.lower(), name.lower()).ratio()

    return sorted(dict.fromkeys(names), key=lambda name: (-score(name), name))


def resolve_collection(
    engine: Engine, workspace: str | None, key: str, create: bool = False
) -> tuple[collection_store.CollectionInfo, bool]:
    """The collection named (or with id) ``key``, searched in ``workspace`` or in every workspace if None; created
    in ``workspace`` (default workspace if None) when missing and ``create``. Also says whether it was created."""
    with engine.begin() as connection:
        found = collection_store.find_collection(connection, workspace, key)
        if found is not None:
            return found, False
        every = collection_store.list_collections(connection, workspace)
        matches = [c for c in every if key in (c.id, c.name)]
        if len(matches) > 1:
            places = ", ".join(sorted(c.workspace for c in matches))
            raise CollectionNotFound(
                f"{len(matches)} collections are named {key!r} (workspaces {places}): give --workspace or the id",
                ambiguous=True,
            )
        if not create:
            where = f" in workspace {workspace!r}" if workspace is not None else ""
            raise CollectionNotFound(f"no collection {key!r}{where}", closest_first(key, [c.name for c in every]))
        try:
            return collection_store.create_collection(connection, workspace or DEFAULT_WORKSPACE, key), True
        except collection_store.CollectionExists:  # another ingest created it a moment ago: use that one
            created = collection_store.find_collection(connection, workspace or DEFAULT_WORKSPACE, key)
            if created is None:
                raise
            return created, False


def nearest_records(
    engine: Engine,
    registry: IndexRegistry,
    collection_id: str,
    queries: Sequence[VisualHash] | GeometricQuery,
    k: int,
    radius: float | None = None,
) -> list[dict[str, Any]]:
    """The ``k`` stored records nearest to the query (within ``radius`` percent if given), nearest first, each as
    ``{"_id", "distance", "hamming", ...attributes}``. Ties are ordered by insertion order, as in visualKNN.
    ``queries`` holds one hash, or the hashes of the query's orientations (a record keeps its smallest distance),
    or a geometric query (a geometric collection's signatures are searched)."""
    loaded = registry.get(collection_id)
    if isinstance(queries, GeometricQuery):
        kind = GEOMETRIC_KIND
        bound = GEOMETRIC_NBITS if radius is None else max_bits_within(radius, kind)
        hits = [Hit(bits, key) for key, bits in loaded.geometric.search(queries, bound, k)]
    else:
        kind = queries[0].kind
        index = loaded.by_kind[kind]
        max_bits = None if radius is None else max_bits_within(radius, kind)
        hits = merge_hits([index.nearest(q.as_int(), k, max_bits) for q in queries], k)
    with engine.connect() as connection:
        stored = get_by_row_ids(connection, [hit.key for hit in hits])
    answers: list[dict[str, Any]] = []
    for hit in hits:
        record = stored.get(hit.key)
        if record is not None:
            public = public_record(record)
            answers.append(
                {"_id": public.pop("_id"), "distance": shown_distance(hit.bits, kind), "hamming": hit.bits, **public}
            )
    return answers
