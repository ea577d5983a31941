"""A mixed HTTP load against a running matchdb server, and the checks of what the database holds afterwards.

Used by the fault suite (tests/test_faults.py, tests/test_outage.py: a few seconds) and by
benchmarks/bench_reliability.py (a minute, with figures). Everything talks to 127.0.0.1 only.

Each client is one asyncio task with its own keep-alive connection, picking operations at random from a mix:

- ``insert_race``: one record whose ``_id`` comes from a small pool (``race-N``) shared by every client, so several
  clients upsert the same ``_id`` at the same moment (with a random one of the images);
- ``insert_new``: a batch of records with ``_id`` values no one else uses (each acknowledged one must be stored);
- ``insert_del`` and ``delete``: inserts and deletes racing on another pool (``del-N``);
- ``update`` and ``get`` on the race pool, ``knn`` (visualKNN by image) and ``hash`` (visual_hash).

Every answer is recorded with its HTTP status, the envelope's code, and its timing; a request that ends without an
HTTP answer (connection reset or closed, timeout) is recorded with the error's name: a dropped request.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import random
import ssl
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
from PIL import Image
from sqlalchemy import Engine, select

from matchdb.hashing import hash_image
from matchdb.storage.database import make_engine
from matchdb.storage.schema import records as records_table
from tests.imagegen import encode, photo_like

DEFAULT_MIX: Mapping[str, int] = {
    "insert_race": 25,
    "insert_new": 10,
    "insert_del": 5,
    "delete": 5,
    "update": 10,
    "get": 5,
    "knn": 30,
    "hash": 10,
}
INSERTS = ("insert_race", "insert_new", "insert_del", "insert_old")  # insert_old: benchmarks/bench_soak.py
NEW_BATCH = 5  # records per insert_new request
REQUEST_TIMEOUT = 30.0
#: Settings for a server that :func:`check_index` checks: it asks for every record holding an image in one answer.
ANSWER_ALL = {"MATCHDB_MAX_K": "10000000", "MATCHDB_MAX_ANSWER_RECORDS": "10000000"}


@dataclass(frozen=True)
class Images:
    """Small distinct PNGs as ``_base64``, with the checksum and packed bmh1 matchdb must store for each."""

    b64: list[str]
    checksums: list[str]
    bmh1: list[bytes]

    def index_of(self, checksum: str) -> int:
        return self.checksums.index(checksum)


def make_images(count: int = 24, size: tuple[int, int] = (64, 48)) -> Images:
    datas = [encode(Image.fromarray(photo_like(*size, seed=1000 + i)), "PNG") for i in range(count)]
    bmh1 = [hash_image(data, ("bmh1",), 10**8).hashes["bmh1"].data for data in datas]
    assert len(set(bmh1)) == count, "the generated images must have distinct hashes"
    return Images([base64.b64encode(d).decode() for d in datas], [hashlib.sha256(d).hexdigest() for d in datas], bmh1)


@dataclass(frozen=True)
class Result:
    """One request: what was sent (operation, ``_id`` values, image) and what came back."""

    op: str
    started: float  # time.monotonic() when sent
    seconds: float
    http: int | None  # None: no HTTP answer at all (dropped)
    code: int | None = None  # the envelope's status.code
    error: str = ""  # the transport error's class name when dropped
    ext_ids: tuple[str, ...] = ()
    images: tuple[int, ...] = ()
    retry_after: str | None = None
    enveloped: bool = False  # the body had status.code, status.text and status.request_id

    @property
    def acknowledged(self) -> bool:
        return self.http == 200 and self.code == 200

    @property
    def ended(self) -> float:
        return self.started + self.seconds


@dataclass
class Load:
    """``clients`` concurrent clients sending the ``mix`` of operations to one collection until told to stop."""

    url: str
    collection: str
    images: Images
    clients: int = 50
    mix: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_MIX))
    pool: int = 16  # _id values per racing pool
    seed: int = 0
    results: list[Result] = field(default_factory=list)

    async def run(self, duration: float, stop: asyncio.Event | None = None) -> list[Result]:
        """Send requests for ``duration`` seconds (or until ``stop`` is set); returns every result so far."""
        halt = stop or asyncio.Event()
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        tls = ssl.create_default_context()  # built once: httpx would build one per client (~0.1 s each)
        clients = [
            httpx.AsyncClient(
                base_url=self.url,
                limits=limits,
                headers={"collection-id": self.collection},
                timeout=REQUEST_TIMEOUT,
                verify=tls,
            )
            for _ in range(self.clients)
        ]
        deadline = time.monotonic() + duration
        await asyncio.gather(*(self._client(n, c, deadline, halt) for n, c in enumerate(clients)))
        return self.results

    async def _client(self, number: int, client: httpx.AsyncClient, deadline: float, halt: asyncio.Event) -> None:
        rng = random.Random(self.seed * 1_000_003 + number)
        async with client as c:
            sent = 0
            while time.monotonic() < deadline and not halt.is_set():
                op = rng.choices(list(self.mix), list(self.mix.values()))[0]  # (the mix may change as it runs)
                path, body, ext_ids, images = self._request(op, rng, f"{number}-{sent}")
                self.results.append(await _send(c, op, path, body, ext_ids, images))
                sent += 1

    def _request(
        self, op: str, rng: random.Random, tag: str
    ) -> tuple[str, dict[str, Any], tuple[str, ...], tuple[int, ...]]:
        image = rng.randrange(len(self.images.b64))
        b64 = self.images.b64[image]
        if op == "insert_race":
            ext_id = f"race-{rng.randrange(self.pool)}"
            return "/v2/insert", {"records": [{"_id": ext_id, "_base64": b64, "tag": tag}]}, (ext_id,), (image,)
        if op == "insert_del":
            ext_id = f"del-{rng.randrange(self.pool)}"
            return "/v2/insert", {"records": [{"_id": ext_id, "_base64": b64}]}, (ext_id,), (image,)
        if op == "insert_new":
            picks = tuple(rng.randrange(len(self.images.b64)) for _ in range(NEW_BATCH))
            ids = tuple(f"new-{tag}-{j}" for j in range(NEW_BATCH))
            records = [{"_id": i, "_base64": self.images.b64[p]} for i, p in zip(ids, picks, strict=True)]
            return "/v2/insert", {"records": records}, ids, picks
        if op == "delete":
            ext_id = f"del-{rng.randrange(self.pool)}"
            return "/v2/delete", {"records": [{"_id": ext_id}]}, (ext_id,), ()
        if op == "update":
            ext_id = f"race-{rng.randrange(self.pool)}"
            return "/v2/update", {"records": [{"_id": ext_id, "note": tag}]}, (ext_id,), ()
        if op == "get":
            ext_id = f"race-{rng.randrange(self.pool)}"
            return "/v2/get", {"records": [{"_id": ext_id}]}, (ext_id,), ()
        if op == "knn":
            return "/v2/visualKNN", {"query_record": {"_base64": b64}, "k": 5}, (), (image,)
        if op == "hash":
            return "/v2/visual_hash", {"records": [{"_base64": b64}]}, (), (image,)
        raise ValueError(f"unknown operation {op!r}")


async def _send(
    client: httpx.AsyncClient,
    op: str,
    path: str,
    body: dict[str, Any],
    ext_ids: tuple[str, ...],
    images: tuple[int, ...],
) -> Result:
    started = time.monotonic()
    try:
        response = await client.post(path, json=body)
    except httpx.TransportError as exc:  # no HTTP answer: reset, closed, timed out
        seconds = time.monotonic() - started
        return Result(op, started, seconds, None, error=type(exc).__name__, ext_ids=ext_ids, images=images)
    seconds = time.monotonic() - started
    code, enveloped = None, False
    try:
        status = response.json().get("status", {})
        code = status.get("code")
        enveloped = isinstance(code, int) and "text" in status and bool(status.get("request_id"))
    except (ValueError, AttributeError):
        pass
    return Result(
        op,
        started,
        seconds,
        response.status_code,
        code,
        ext_ids=ext_ids,
        images=images,
        retry_after=response.headers.get("retry-after"),
        enveloped=enveloped,
    )


def run_load(load: Load, duration: float) -> list[Result]:
    """:meth:`Load.run` from synchronous code (its own event loop)."""
    return asyncio.run(load.run(duration))


# --- figures ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Summary:
    requests: int
    per_second: float
    by_status: dict[str, int]  # "200", "503", ... and "dropped"
    by_op: dict[str, int]
    server_errors: int  # HTTP 5xx other than 503
    unavailable: int  # HTTP 503
    dropped: int
    not_enveloped: int  # answers whose body was not the Ximilar envelope
    p50_ms: float
    p99_ms: float
    max_ms: float

    def line(self) -> str:
        statuses = ", ".join(f"{k}: {v}" for k, v in sorted(self.by_status.items()))
        return (
            f"{self.requests} requests ({self.per_second:.0f}/s; {statuses}); 5xx other than 503: "
            f"{self.server_errors}, dropped: {self.dropped}; latency p50 {self.p50_ms:.0f} ms, p99 {self.p99_ms:.0f} "
            f"ms, max {self.max_ms:.0f} ms"
        )


def summarize(results: Sequence[Result], seconds: float) -> Summary:
    latencies = np.array([r.seconds for r in results if r.http is not None] or [0.0]) * 1000
    by_status = Counter("dropped" if r.http is None else str(r.http) for r in results)
    return Summary(
        requests=len(results),
        per_second=len(results) / seconds if seconds > 0 else 0.0,
        by_status=dict(by_status),
        by_op=dict(Counter(r.op for r in results)),
        server_errors=sum(1 for r in results if r.http is not None and r.http >= 500 and r.http != 503),
        unavailable=by_status.get("503", 0),
        dropped=by_status.get("dropped", 0),
        not_enveloped=sum(1 for r in results if r.http is not None and not r.enveloped),
        p50_ms=float(np.percentile(latencies, 50)),
        p99_ms=float(np.percentile(latencies, 99)),
        max_ms=float(latencies.max()),
    )


# --- what the database holds ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredRow:
    ext_id: str
    checksum: str
    bmh1: bytes


def stored_rows(database_url: str, collection: str) -> dict[str, StoredRow]:
    """:func:`read_rows` through an engine of its own."""
    engine = make_engine(database_url)
    try:
        return read_rows(engine, collection)
    finally:
        engine.dispose()


def read_rows(engine: Engine, collection: str) -> dict[str, StoredRow]:
    with engine.connect() as connection:
        rows = connection.execute(
            select(records_table.c.ext_id, records_table.c.checksum, records_table.c.bmh1).where(
                records_table.c.collection_id == collection
            )
        ).all()
    return {str(row[0]): StoredRow(str(row[0]), str(row[1]), bytes(row[2])) for row in rows}


@dataclass
class Check:
    """What the database holds against what the clients sent: ``problems`` is empty when all is well."""

    acknowledged_records: int = 0  # records of inserts answered 200 (each must be stored)
    stored: int = 0
    acknowledged_new: int = 0  # of which with an _id no other request used (insert_new): each is stored ...
    stored_new: int = 0  # ... and found here
    problems: list[str] = field(default_factory=list)


def check_stored(rows: Mapping[str, StoredRow], results: Iterable[Result], images: Images) -> Check:
    """Every record of an acknowledged insert is stored, unless a delete of its ``_id`` was sent too; every stored
    record holds one of the images sent for its ``_id`` (one whole record: checksum and hash agree); nothing is
    stored that no one sent."""
    attempted: dict[str, set[int]] = defaultdict(set)
    acknowledged: dict[str, set[int]] = defaultdict(set)
    deletable: set[str] = set()
    for result in results:
        if result.op in INSERTS:
            for ext_id, image in zip(result.ext_ids, result.images, strict=True):
                attempted[ext_id].add(image)
                if result.acknowledged:
                    acknowledged[ext_id].add(image)
        elif result.op == "delete":
            deletable.update(result.ext_ids)
    check = Check(acknowledged_records=sum(len(v) for v in acknowledged.values()), stored=len(rows))
    new = [ext_id for ext_id in acknowledged if ext_id.startswith("new-")]
    check.acknowledged_new, check.stored_new = len(new), sum(1 for ext_id in new if ext_id in rows)
    for ext_id in sorted(acknowledged):
        if ext_id not in rows and ext_id not in deletable:
            check.problems.append(f"acknowledged record {ext_id} is not stored")
        elif ext_id.startswith("new-") and ext_id in rows and len(attempted[ext_id]) == 1:  # (else upserted again)
            (image,) = acknowledged[ext_id]
            if rows[ext_id].checksum != images.checksums[image]:
                check.problems.append(f"{ext_id} holds another image than the one acknowledged")
    for ext_id, row in rows.items():
        if ext_id not in attempted:
            check.problems.append(f"{ext_id} is stored but was never sent")
            continue
        if row.checksum not in images.checksums:
            check.problems.append(f"{ext_id} holds an unknown checksum")
            continue
        image = images.index_of(row.checksum)
        if image not in attempted[ext_id]:
            check.problems.append(f"{ext_id} holds image {image}, never sent for it")
        if row.bmh1 != images.bmh1[image]:
            check.problems.append(f"{ext_id}: the stored bmh1 is not the hash of its image (half-written record?)")
    return check


def check_index(url: str, collection: str, rows: Mapping[str, StoredRow], images: Images, rounds: int = 2) -> list[str]:
    """The in-memory index answers as the database: for each image, visualKNN with radius 0 returns exactly the
    records holding it. Each query is on a new connection, so both workers of ``--workers 2`` get asked. The server
    must allow answers that large (:data:`ANSWER_ALL`)."""
    holders: dict[str, set[str]] = defaultdict(set)
    for row in rows.values():
        holders[row.checksum].add(row.ext_id)
    problems = []
    for _ in range(rounds):
        for index, b64 in enumerate(images.b64):
            body = {"query_record": {"_base64": b64}, "k": len(rows) + 1, "radius": 0}
            response = httpx.post(
                f"{url}/v2/visualKNN",
                json=body,
                headers={"collection-id": collection, "Connection": "close"},
                timeout=REQUEST_TIMEOUT,
            )
            payload = response.json()
            got = {str(r["_id"]) for r in payload.get("answer_records", [])}
            wanted = holders.get(images.checksums[index], set())
            if response.status_code != 200 or got != wanted:
                proc = payload.get("status", {}).get("proc_id")
                problems.append(f"image {index} (worker {proc}): index has {sorted(got)}, database {sorted(wanted)}")
    return problems


def partial_batches(rows: Mapping[str, StoredRow], results: Iterable[Result]) -> list[str]:
    """The multi-record inserts stored in part (some of their records there, some not): there must be none."""
    partial = []
    for result in results:
        if result.op == "insert_new":
            present = sum(ext_id in rows for ext_id in result.ext_ids)
            if present not in (0, len(result.ext_ids)):
                partial.append(f"{result.ext_ids[0]}...: {present} of {len(result.ext_ids)} stored")
    return partial


def new_collection(url: str, name: str) -> str:
    response = httpx.post(f"{url}/v2/collections", json={"name": name}, timeout=REQUEST_TIMEOUT)
    assert response.status_code == 200, response.text
    collection_id: str = response.json()["id"]
    return collection_id


COLLECTION_OPS = ("insert_race", "insert_new", "insert_del", "delete", "update", "get", "knn")


@dataclass(frozen=True)
class Outage:
    """What clients saw around a database outage (from ``stopped_at`` to ``back_at``, monotonic seconds)."""

    during: dict[str, int]  # "op HTTP-status" -> count, for requests sent and answered inside the outage
    slowest_during_ms: float
    missing_retry_after: int  # 503 answers without a Retry-After header
    recovery_seconds: float  # from ``back_at`` to the end of the last 503 (0 when none came after it)
    first_ok_after: dict[str, float]  # op -> seconds from ``back_at`` to its first success

    def line(self) -> str:
        during = ", ".join(f"{k}: {v}" for k, v in sorted(self.during.items()))
        return (
            f"during the outage: {during}; slowest answer {self.slowest_during_ms:.0f} ms; full service "
            f"{self.recovery_seconds:.2f} s after the database was back"
        )


def summarize_outage(results: Sequence[Result], stopped_at: float, back_at: float) -> Outage:
    inside = [r for r in results if r.started >= stopped_at and r.ended <= back_at and r.http is not None]
    late_503 = [r.ended for r in results if r.http == 503 and r.ended > back_at]
    first_ok: dict[str, float] = {}
    for result in sorted(results, key=lambda r: r.ended):
        if result.http == 200 and result.started >= back_at and result.op not in first_ok:
            first_ok[result.op] = result.ended - back_at
    return Outage(
        during=dict(Counter(f"{r.op} {r.http}" for r in inside)),
        slowest_during_ms=max((r.seconds for r in inside), default=0.0) * 1000,
        missing_retry_after=sum(1 for r in results if r.http == 503 and not r.retry_after),
        recovery_seconds=max(late_503, default=back_at) - back_at,
        first_ok_after=first_ok,
    )
