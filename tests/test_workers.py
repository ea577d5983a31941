"""Several server processes on one Postgres (issue 5), with real ``matchdb serve`` subprocesses:

- read-after-write across ``--workers 2``: a write acknowledged by one worker is seen by every later query,
  whichever worker answers it (and a delete likewise);
- ``matchdb rebuild-index`` while both workers answer a client querying in a loop (no error, no changed answer),
  and the offline build when no server runs;
- writes made while the workers rebuild are in their new indexes afterwards;
- crash safety: SIGKILL in the middle of an insert stream, three times; afterwards every acknowledged record is
  there, no batch is half there, and the index answers exactly as a brute-force scan of the stored hashes.

Each test gets a fresh Postgres database (a SIGKILLed server leaves a heartbeat row that stays "fresh" for a while,
which must not leak into another test's ``rebuild-index``). Everything talks to 127.0.0.1 only.
"""

from __future__ import annotations

import base64
import contextlib
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image
from sqlalchemy import Engine, select

from matchdb.storage.collections import create_collection
from matchdb.storage.database import make_engine, upgrade
from matchdb.storage.records import NewRecord, upsert_records
from matchdb.storage.schema import records as records_table
from tests.conftest import fresh_postgres_database
from tests.imagegen import encode, photo_like
from tests.servers import matchdb_server, run_matchdb
from tests.test_index_registry import random_bmh1

pytestmark = pytest.mark.postgres

REQUEST_TIMEOUT = 30.0


@pytest.fixture
def pg_url(postgres_server_url: str) -> Iterator[str]:
    """A fresh, empty Postgres database (``matchdb serve`` and the CLI bring it to the current schema)."""
    url, drop = fresh_postgres_database(postgres_server_url)
    try:
        yield url
    finally:
        drop()


# --- HTTP helpers: a fresh connection per request, so the kernel may hand each one to another worker -------------


def post(url: str, path: str, body: dict[str, Any], collection: str | None = None) -> dict[str, Any]:
    """POST on a new connection (closed after the answer); asserts HTTP 200 and returns the JSON body."""
    headers = {"Connection": "close"}
    if collection is not None:
        headers["collection-id"] = collection
    response = httpx.post(f"{url}{path}", json=body, headers=headers, timeout=REQUEST_TIMEOUT)
    assert response.status_code == 200, response.text
    payload: dict[str, Any] = response.json()
    return payload


def call(url: str, method: str, body: dict[str, Any], collection: str) -> dict[str, Any]:
    """A collection method that must succeed as a whole (envelope status 200)."""
    payload = post(url, f"/v2/{method}", body, collection)
    assert payload["status"]["code"] == 200, payload
    return payload


def new_collection(url: str, name: str) -> str:
    created = post(url, "/v2/collections", {"name": name})
    assert created["status"]["code"] == 200, created
    collection_id: str = created["id"]
    return collection_id


def proc_id(payload: dict[str, Any]) -> str:
    value: str = payload["status"]["proc_id"]
    return value


def answer_ids(payload: dict[str, Any]) -> list[str]:
    return [str(record["_id"]) for record in payload["answer_records"]]


def image_b64(seed: int, size: tuple[int, int] = (48, 32)) -> str:
    """A small, distinct PNG per seed (lossless, so equal seeds give equal hashes)."""
    return base64.b64encode(encode(Image.fromarray(photo_like(*size, seed=seed)), "PNG")).decode()


# --- the database as the truth ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stored:
    """A collection's records as stored: row ids (insertion order), ``_id`` values and packed bmh1 hashes."""

    row_ids: npt.NDArray[np.int64]
    ext_ids: list[str]
    bmh1: npt.NDArray[np.uint8]  # one row of packed bits per record

    def position(self, ext_id: str) -> int:
        return self.ext_ids.index(ext_id)

    def knn(self, ext_id: str, k: int) -> list[tuple[str, int]]:
        """Brute force: the k nearest other records to the stored record ``ext_id`` by bmh1 Hamming distance,
        ties by insertion order, as (``_id``, bits)."""
        me = self.position(ext_id)
        bits = np.unpackbits(self.bmh1 ^ self.bmh1[me], axis=1).sum(axis=1)
        order = [int(i) for i in np.lexsort((self.row_ids, bits)) if int(i) != me][:k]
        return [(self.ext_ids[i], int(bits[i])) for i in order]


def read_stored(engine: Engine, collection_id: str) -> Stored:
    with engine.connect() as connection:
        rows = connection.execute(
            select(records_table.c.id, records_table.c.ext_id, records_table.c.bmh1)
            .where(records_table.c.collection_id == collection_id)
            .order_by(records_table.c.id)
        ).all()
    packed = np.frombuffer(b"".join(bytes(row[2]) for row in rows), dtype=np.uint8).reshape(len(rows), -1)
    return Stored(np.array([int(row[0]) for row in rows], dtype=np.int64), [str(row[1]) for row in rows], packed)


def fill(engine: Engine, name: str, count: int, seed: int = 0) -> str:
    """A collection of ``count`` fake records (random hashes) written straight into the database."""
    rng = random.Random(seed)
    batch = [NewRecord(f"r{i}", {"i": i}, None, 1, 1, "x", random_bmh1(rng), rng.randbytes(8)) for i in range(count)]
    with engine.begin() as connection:
        collection = create_collection(connection, "default", name)
    for start in range(0, len(batch), 5000):
        with engine.begin() as connection:
            upsert_records(connection, collection.id, batch[start : start + 5000])
        # A new connection for each batch: on one connection, psycopg's automatic prepared statements make each
        # batch slower than the last as the table grows (0.9, 3.7, 8.8 s for the first three of 5000 records).
        engine.dispose()
    return collection.id


# --- 1. read-after-write across two workers ------------------------------------------------------------------------


def query_many(check: Callable[[], str], at_least: int, at_most: int) -> Counter[str]:
    """Run ``check`` (one query; returns the answering proc_id) ``at_least`` times, then on until two different
    workers have answered or ``at_most`` queries were made. Returns how many each worker answered."""
    answered: Counter[str] = Counter()
    while sum(answered.values()) < at_least or (len(answered) < 2 and sum(answered.values()) < at_most):
        answered[check()] += 1
    return answered


def test_read_after_write_and_delete_across_two_workers(pg_url: str) -> None:
    with matchdb_server({"MATCHDB_DATABASE_URL": pg_url}, workers=2) as server:
        url = server.url
        collection = new_collection(url, "raw")
        others = [{"_id": f"bg{i}", "_base64": image_b64(100 + i)} for i in range(20)]
        call(url, "insert", {"records": others}, collection)
        fresh = image_b64(7)

        def knn() -> dict[str, Any]:
            return call(url, "visualKNN", {"query_record": {"_base64": fresh}, "k": 3}, collection)

        # Both workers load the collection's index first, so what follows exercises the catch-up, not a load.
        warm = query_many(lambda: proc_id(knn()), at_least=4, at_most=300)
        assert len(warm) == 2, f"only one worker answered {sum(warm.values())} queries: {warm}"

        inserted = call(url, "insert", {"records": [{"_id": "new", "_base64": fresh, "tag": "fresh"}]}, collection)
        writer = proc_id(inserted)

        def sees_new() -> str:
            answer = knn()
            assert answer_ids(answer)[0] == "new", (proc_id(answer), answer)
            assert answer["answer_hamming"][0] == 0 and answer["answer_records"][0]["tag"] == "fresh", answer
            return proc_id(answer)

        after_insert = query_many(sees_new, at_least=50, at_most=500)
        assert len(after_insert) == 2, f"only one worker answered after the insert: {after_insert}"
        assert set(after_insert) == set(warm) and writer in after_insert

        deleted = call(url, "delete", {"records": [{"_id": "new"}]}, collection)
        eraser = proc_id(deleted)

        def misses_new() -> str:
            answer = knn()
            assert "new" not in answer_ids(answer), (proc_id(answer), answer)
            assert answer["answer_count"] == 3 and answer["answer_hamming"][0] > 0, answer
            return proc_id(answer)

        after_delete = query_many(misses_new, at_least=50, at_most=500)
        assert len(after_delete) == 2, f"only one worker answered after the delete: {after_delete}"
        assert set(after_delete) == set(warm) and eraser in after_delete


# --- 2. rebuild-index while both workers answer ------------------------------------------------------------------


@dataclass
class QueryLoop:
    """A client querying visualKNN by stored ``_id`` in a loop (new connection each time), in a thread."""

    url: str
    collection: str
    queries: list[str]
    k: int
    answers: list[tuple[str, list[str], str]] = field(default_factory=list)  # (query _id, answer _ids, proc_id)
    errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        turn = random.randrange(len(self.queries))
        while not self.stop.is_set():
            ext_id = self.queries[turn % len(self.queries)]
            turn += 1
            body = {"query_record": {"_id": ext_id}, "k": self.k}
            try:
                response = httpx.post(
                    f"{self.url}/v2/visualKNN",
                    json=body,
                    headers={"collection-id": self.collection, "Connection": "close"},
                    timeout=REQUEST_TIMEOUT,
                )
                payload = response.json()
            except (httpx.HTTPError, ValueError) as exc:
                self.errors.append(f"{ext_id}: {exc!r}")
                continue
            if response.status_code != 200 or payload["status"]["code"] != 200:
                self.errors.append(f"{ext_id}: HTTP {response.status_code} {payload['status']}")
                continue
            self.answers.append((ext_id, answer_ids(payload), proc_id(payload)))

    @property
    def made(self) -> int:
        return len(self.answers) + len(self.errors)

    def wait_for(self, count: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while self.made < count:
            assert time.monotonic() < deadline, f"the query loop made only {len(self.answers)} queries"
            time.sleep(0.02)


@dataclass
class TwinWriter:
    """Another writer (as another replica would be), straight into the database: until told to stop, it stores
    twins (same bmh1, attribute ``twin``) of existing records in quick succession, one transaction each."""

    url: str
    collection: str
    stored: Stored
    twins: list[str] = field(default_factory=list)  # the _id of every twin stored (committed)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        engine = make_engine(self.url)
        rng = random.Random(3)
        try:
            while not self.stop.wait(0.005):
                original = rng.randrange(len(self.stored.ext_ids))
                twin = f"twin-{len(self.twins)}-of-{self.stored.ext_ids[original]}"
                record = NewRecord(twin, {"twin": 1}, None, 1, 1, "x", self.stored.bmh1[original].tobytes(), bytes(8))
                with engine.begin() as connection:
                    upsert_records(connection, self.collection, [record])
                self.twins.append(twin)
        finally:
            engine.dispose()


def test_rebuild_index_with_two_workers_answering_throughout(pg_url: str) -> None:
    engine = make_engine(pg_url)
    upgrade(engine)
    records = 3000
    collection = fill(engine, "bulk", records)
    stored = read_stored(engine, collection)
    engine.dispose()
    env = {"MATCHDB_DATABASE_URL": pg_url}
    sample = random.Random(1).sample(stored.ext_ids, 24)
    with matchdb_server(env, workers=2) as server:
        # The answers before the rebuild are the brute-force answers.
        expected: dict[str, list[str]] = {}
        for ext_id in sample:
            answer = call(server.url, "visualKNN", {"query_record": {"_id": ext_id}, "k": 5}, collection)
            expected[ext_id] = answer_ids(answer)
            assert list(zip(expected[ext_id], answer["answer_hamming"], strict=True)) == stored.knn(ext_id, 5)

        # Three clients in a loop, so queries keep arriving at both workers while each one rebuilds and swaps.
        loop = QueryLoop(server.url, collection, sample, k=5)
        threads = [threading.Thread(target=loop.run, name=f"query-loop-{i}", daemon=True) for i in range(3)]
        for thread in threads:
            thread.start()
        try:
            loop.wait_for(10)
            during_from = loop.made
            rebuild = run_matchdb(["rebuild-index", "--timeout", "30"], env, timeout=60)
            during = loop.made - during_from
            loop.wait_for(loop.made + 10)
        finally:
            loop.stop.set()
            for thread in threads:
                thread.join(timeout=REQUEST_TIMEOUT + 5)
        assert not any(thread.is_alive() for thread in threads)

    output = rebuild.stdout + rebuild.stderr
    assert rebuild.returncode == 0, output
    assert re.search(r"^generation \d+: 2 servers rebuilt in [\d.]+ s$", rebuild.stdout, re.MULTILINE), output
    rebuilt = re.findall(r"\(.* pid \d+\): rebuilt in [\d.]+ s, (\d+) records$", rebuild.stdout, re.MULTILINE)
    assert rebuilt == [str(records)] * 2, output
    assert "NOT rebuilt" not in output

    assert loop.errors == [], loop.errors[:5]
    assert during >= 10, f"only {during} queries ran while rebuild-index did"
    wrong = [(ext_id, got, expected[ext_id]) for ext_id, got, _ in loop.answers if got != expected[ext_id]]
    assert wrong == [], f"{len(wrong)} of {len(loop.answers)} answers changed, e.g. {wrong[:3]}"
    assert len({proc for _, _, proc in loop.answers}) == 2, "the loop was answered by one worker only"

    # No server runs now: the command builds offline and checks against brute force.
    offline = run_matchdb(["rebuild-index", "--collection", "bulk", "--timeout", "20"], env, timeout=60)
    assert offline.returncode == 0, offline.stdout + offline.stderr
    assert "no server is running: building offline" in offline.stderr
    line = rf"^{collection}: {records} records, built in [\d.]+ s, .* k-NN queries, 0 differ from brute force$"
    assert re.search(line, offline.stdout, re.MULTILINE), offline.stdout + offline.stderr


def clients_per_worker(stack: contextlib.ExitStack, url: str, collection: str, workers: int) -> dict[str, httpx.Client]:
    """One keep-alive client per worker (by proc_id): each sticks to the worker that accepted its connection."""
    found: dict[str, httpx.Client] = {}
    for _ in range(200):
        client = httpx.Client(base_url=url, headers={"collection-id": collection}, timeout=REQUEST_TIMEOUT)
        stack.callback(client.close)
        response = client.post("/v2/allIDs", json={"page_size": 1})
        assert response.status_code == 200, response.text
        worker = proc_id(response.json())
        if worker in found:
            client.close()
            continue
        found[worker] = client
        if len(found) == workers:
            return found
    raise AssertionError(f"only {len(found)} of {workers} workers accepted 200 connections")


def test_writes_during_rebuild_index_are_seen_after_it_by_every_worker(pg_url: str) -> None:
    # Guards against changes caught up while a rebuild loads going missing from the new index. Before b7bfd1f
    # (matchdb/service/indexes.py) _load replayed a rebuild's pending changes through _apply, which looked the index
    # up in self._collections (the one being replaced), and rebuild() swapped in a second hold of the lock, so a
    # catch-up in between added to the replayed list; dozens of twins per worker went missing in every run.
    engine = make_engine(pg_url)
    upgrade(engine)
    records = 20_000  # a rebuild takes a moment: writes land while it loads
    collection = fill(engine, "bulk", records, seed=1)
    stored = read_stored(engine, collection)
    # Twenty records get a duplicate: a k=1 query by one of them stops at the duplicate, so the loop below is quick
    # and every worker catches up from the change log many times while it rebuilds.
    quick = stored.ext_ids[:20]
    with engine.begin() as connection:
        duplicates = [
            NewRecord(f"dup-{ext_id}", {}, None, 1, 1, "x", stored.bmh1[stored.position(ext_id)].tobytes(), bytes(8))
            for ext_id in quick
        ]
        upsert_records(connection, collection, duplicates)
    engine.dispose()
    env = {"MATCHDB_DATABASE_URL": pg_url, "MATCHDB_MAX_K": "100000"}  # (a k that reaches every twin)
    with matchdb_server(env, workers=2) as server:
        loop = QueryLoop(server.url, collection, quick, k=1)
        writer = TwinWriter(pg_url, collection, stored)
        threads = [threading.Thread(target=loop.run, name=f"query-loop-{i}", daemon=True) for i in range(2)]
        threads.append(threading.Thread(target=writer.run, name="twin-writer", daemon=True))
        for thread in threads:
            thread.start()
        try:
            loop.wait_for(10)
            rebuild = run_matchdb(["rebuild-index", "--timeout", "30"], env, timeout=60)
        finally:
            writer.stop.set()
            loop.stop.set()
            for thread in threads:
                thread.join(timeout=REQUEST_TIMEOUT + 5)
        assert not any(thread.is_alive() for thread in threads)
        assert rebuild.returncode == 0, rebuild.stdout + rebuild.stderr
        assert loop.errors == [], loop.errors[:5]
        assert [got for _, got, _ in loop.answers] == [[f"dup-{ext_id}"] for ext_id, _, _ in loop.answers]
        assert len(writer.twins) >= 50

        # On each worker, after a catch-up: the index holds every twin (one k-NN query filtered on the twins
        # returns those the index has) and exactly the stored records.
        lost: dict[str, str] = {}
        with contextlib.ExitStack() as stack:
            for worker, client in clients_per_worker(stack, server.url, collection, 2).items():
                body = {"query_record": {"_id": quick[0]}, "k": len(writer.twins) + 10, "filter": {"twin": 1}}
                response = client.post("/v2/visualKNN", json=body)
                answer: dict[str, Any] = response.json()
                assert response.status_code == 200 and proc_id(answer) == worker, answer
                missing = sorted(set(writer.twins) - set(answer_ids(answer)))
                response = client.get("/v2/collections")
                assert response.status_code == 200 and proc_id(response.json()) == worker, response.text
                (mine,) = [c for c in response.json()["collections"] if c["id"] == collection]
                assert mine["record_count"] == records + len(quick) + len(writer.twins)
                if missing or mine["index"]["size"] != mine["record_count"]:
                    lost[worker] = (
                        f"{len(missing)} of {len(writer.twins)} twins missing (e.g. {missing[:2]}), index size "
                        f"{mine['index']['size']}, {mine['record_count']} records stored"
                    )
        assert lost == {}, lost


# --- 3. crash safety ---------------------------------------------------------------------------------------------


BATCH = 10


@dataclass
class InsertStream:
    """Clients inserting batches of BATCH small generated images (``_id`` unique), each batch one request."""

    collection: str
    attempted: dict[str, list[str]] = field(default_factory=dict)  # batch -> its _ids (sent, maybe not stored)
    acknowledged: set[str] = field(default_factory=set)  # batches answered HTTP 200 with status 200
    refused: list[str] = field(default_factory=list)  # answers other than that while the server ran
    _next: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _new_batch(self) -> tuple[str, int]:
        with self._lock:
            number = self._next
            self._next += 1
            name = f"b{number}"
            self.attempted[name] = [f"{name}-{j}" for j in range(BATCH)]
        return name, number

    def run(self, url: str, stop: threading.Event) -> None:
        """Insert until ``stop`` or until the server goes away (the request in flight then has no answer)."""
        while not stop.is_set():
            name, number = self._new_batch()
            records = [
                {"_id": ext_id, "_base64": image_b64(10_000 + number * BATCH + j), "batch": name}
                for j, ext_id in enumerate(self.attempted[name])
            ]
            try:
                response = httpx.post(
                    f"{url}/v2/insert",
                    json={"records": records},
                    headers={"collection-id": self.collection},
                    timeout=REQUEST_TIMEOUT,
                )
                payload = response.json()
            except (httpx.HTTPError, ValueError):
                return  # killed: this batch may or may not be stored, but never in part
            if response.status_code == 200 and payload["status"]["code"] == 200:
                self.acknowledged.add(name)
            else:
                self.refused.append(f"{name}: HTTP {response.status_code} {payload.get('status')}")


def all_ids(url: str, collection: str) -> list[str]:
    out: list[str] = []
    page: int | None = 1
    while page is not None:
        payload = call(url, "allIDs", {"page": page, "page_size": 1000}, collection)
        out += [str(ext_id) for ext_id in payload["ids"]]
        page = payload["next_page"]
    return out


def test_sigkill_mid_stream_loses_no_acknowledged_record_and_no_batch_in_part(pg_url: str) -> None:
    env = {"MATCHDB_DATABASE_URL": pg_url}
    rng = random.Random(5)
    stream: InsertStream | None = None
    for _round in range(3):
        with matchdb_server(env, workers=1) as server:
            if stream is None:
                stream = InsertStream(new_collection(server.url, "crash"))
            before = len(stream.acknowledged)
            stop = threading.Event()
            clients = [threading.Thread(target=stream.run, args=(server.url, stop), daemon=True) for _ in range(2)]
            for client in clients:
                client.start()
            deadline = time.monotonic() + 20
            while len(stream.acknowledged) < before + 3:  # the stream is under way
                assert time.monotonic() < deadline, f"the insert stream is stuck:\n{server.log()}"
                time.sleep(0.01)
            time.sleep(rng.uniform(0.1, 1.0))
            server.kill()
            stop.set()
            for client in clients:
                client.join(timeout=REQUEST_TIMEOUT + 5)
                assert not client.is_alive()
            assert server.process.returncode is not None
    assert stream is not None
    assert stream.refused == [], stream.refused[:5]
    unanswered = set(stream.attempted) - stream.acknowledged
    assert len(stream.acknowledged) >= 9 and unanswered  # the kills did cut requests off mid-stream

    engine = make_engine(pg_url)
    try:
        with matchdb_server(env, workers=1) as server:
            url, collection = server.url, stream.collection
            present = all_ids(url, collection)
            stored = read_stored(engine, collection)
            assert sorted(present) == sorted(stored.ext_ids) and len(set(present)) == len(present)

            # Every acknowledged record is there; every batch is all there or not at all; nothing else is.
            present_set = set(present)
            acked_ids = [ext for name in stream.acknowledged for ext in stream.attempted[name]]
            missing = sorted(ext for ext in acked_ids if ext not in present_set)
            assert missing == [], f"{len(missing)} acknowledged records lost, e.g. {missing[:10]}"
            counts = {name: sum(ext in present_set for ext in ids) for name, ids in stream.attempted.items()}
            partial = {name: count for name, count in counts.items() if count not in (0, BATCH)}
            assert partial == {}, f"half-written batches: {partial}"
            attempted_ids = {ext for ids in stream.attempted.values() for ext in ids}
            assert present_set <= attempted_ids
            sample_acked = sorted(stream.acknowledged)[:: max(1, len(stream.acknowledged) // 10)][:10]
            got = call(url, "get", {"records": [{"_id": f"{name}-0"} for name in sample_acked]}, collection)
            assert [r["batch"] for r in got["records"]] == sample_acked

            # The index equals one rebuilt from the database: brute force over the stored hashes.
            sample = random.Random(2).sample(stored.ext_ids, min(30, len(stored.ext_ids)))

            def index_matches_brute_force() -> None:
                for ext_id in sample:
                    answer = call(url, "visualKNN", {"query_record": {"_id": ext_id}, "k": 10}, collection)
                    found = list(zip(answer_ids(answer), answer["answer_hamming"], strict=True))
                    assert found == stored.knn(ext_id, 10), ext_id
                listing = httpx.get(f"{url}/v2/collections", timeout=REQUEST_TIMEOUT).json()
                (mine,) = [c for c in listing["collections"] if c["id"] == collection]
                assert mine["index"] == {"state": "ready", "size": len(stored.ext_ids)}
                assert mine["record_count"] == len(stored.ext_ids)

            index_matches_brute_force()

            # And so after an online rebuild-index: the killed servers' heartbeat rows go stale within --fresh
            # (5 s here, the heartbeat beats every 2 s), then only the live server is waited for.
            rebuild = run_matchdb(["rebuild-index", "--fresh", "5", "--timeout", "30"], env, timeout=60)
            assert rebuild.returncode == 0, rebuild.stdout + rebuild.stderr
            assert re.search(r"^generation \d+: 1 servers rebuilt in", rebuild.stdout, re.MULTILINE), rebuild.stdout
            index_matches_brute_force()
    finally:
        engine.dispose()
