"""Fault suite, HTTP side (issue 14): a real ``matchdb serve --workers 2`` on SQLite and on Postgres.

- 50 clients for a few seconds mixing visualKNN, visual_hash, get, update, delete and inserts where several
  clients upsert the same ``_id`` at once: zero 5xx, zero dropped connections, every answer in the envelope, every
  acknowledged record stored whole, and both workers' indexes equal to the database;
- SIGKILL of the server in the middle of insert batches: every acknowledged record is stored, no batch in part;
- SIGTERM under load: the server drains what is in flight, exits 0, and every insert answered 200 is stored.

The longer version with figures is benchmarks/bench_reliability.py. Everything talks to 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable, Iterator

import pytest

from tests.load import (
    ANSWER_ALL,
    INSERTS,
    Images,
    Load,
    Result,
    check_index,
    check_stored,
    make_images,
    new_collection,
    partial_batches,
    run_load,
    stored_rows,
    summarize,
)
from tests.servers import RunningServer, matchdb_server

LOAD_SECONDS = 4.0  # CI: long enough for hundreds of requests and many same-_id races on this hardware
START_TIMEOUT = 60.0  # two workers importing everything on a busy 2-core machine took more than the usual 20 s


@pytest.fixture(scope="module")
def images() -> Images:
    return make_images()


@pytest.fixture
def server(database_url: str) -> Iterator[RunningServer]:
    with matchdb_server(
        {"MATCHDB_DATABASE_URL": database_url, **ANSWER_ALL}, workers=2, timeout=START_TIMEOUT
    ) as running:
        yield running


def test_fifty_clients_with_same_id_races_get_no_5xx_and_no_dropped_connection(
    database_url: str, server: RunningServer, images: Images
) -> None:
    collection = new_collection(server.url, "load")
    load = Load(server.url, collection, images, clients=50, seed=1)
    started = time.monotonic()
    results = run_load(load, LOAD_SECONDS)
    summary = summarize(results, time.monotonic() - started)

    assert summary.requests >= 30, summary.line()  # a loaded CI machine manages fewer; the races are checked below
    assert (summary.server_errors, summary.unavailable, summary.dropped) == (0, 0, 0), summary.line()
    assert summary.not_enveloped == 0, summary.line()
    # The only refusals: get/update/delete of an _id that is not stored (each record 404, so the request 400).
    refused = {r.op for r in results if r.http != 200}
    assert refused <= {"get", "update", "delete"}, summary.line()
    raced = [r for r in results if r.op == "insert_race" and r.acknowledged]
    assert len(raced) > len({r.ext_ids for r in raced}), "no _id was upserted twice: no race happened"

    rows = stored_rows(database_url, collection)
    check = check_stored(rows, results, images)
    assert check.problems == [], check.problems[:10]
    assert check.acknowledged_records > 0
    assert check_index(server.url, collection, rows, images) == []
    assert "Traceback" not in server.log(), server.log()[-3000:]


async def _run_until(load: Load, ready: Callable[[], bool], then: Callable[[], Awaitable[None]]) -> list[Result]:
    """Run ``load``; once ``ready()`` holds, await ``then()`` (the fault), then stop the clients."""
    stop = asyncio.Event()
    task = asyncio.create_task(load.run(120.0, stop))
    deadline = time.monotonic() + 60
    while not ready():
        assert time.monotonic() < deadline and not task.done(), "the load never got under way"
        await asyncio.sleep(0.02)
    try:
        await then()
    finally:
        stop.set()
    return await task


def _acknowledged_inserts(load: Load) -> int:
    return sum(1 for r in load.results if r.op in INSERTS and r.acknowledged)


def test_sigkill_mid_insert_batches_loses_no_acknowledged_record_and_no_batch_in_part(
    database_url: str, server: RunningServer, images: Images
) -> None:
    collection = new_collection(server.url, "crash")
    load = Load(server.url, collection, images, clients=8, mix={"insert_new": 3, "insert_race": 1}, seed=2)

    async def kill() -> None:
        await asyncio.sleep(0.3)
        await asyncio.to_thread(server.kill)

    results = asyncio.run(_run_until(load, lambda: _acknowledged_inserts(load) >= 20, kill))
    cut = [r for r in results if r.http is None]
    assert cut, "the kill cut no request off"
    assert all(r.http in (200, None) for r in results), summarize(results, 1).line()

    rows = stored_rows(database_url, collection)
    check = check_stored(rows, results, images)
    assert check.problems == [], check.problems[:10]
    assert partial_batches(rows, results) == []

    # A server started afterwards serves exactly what is stored.
    with matchdb_server(
        {"MATCHDB_DATABASE_URL": database_url, **ANSWER_ALL}, workers=2, timeout=START_TIMEOUT
    ) as again:
        assert check_index(again.url, collection, rows, images) == []


def test_sigterm_under_load_drains_exits_0_and_every_acknowledged_insert_is_stored(
    database_url: str, server: RunningServer, images: Images
) -> None:
    collection = new_collection(server.url, "drain")
    mix = {"insert_new": 3, "insert_race": 3, "knn": 2, "hash": 1}
    load = Load(server.url, collection, images, clients=20, mix=mix, seed=3)
    sent_at: list[float] = []
    exit_status: list[int] = []

    async def terminate() -> None:
        await asyncio.sleep(0.5)
        sent_at.append(time.monotonic())
        os.kill(server.process.pid, signal.SIGTERM)  # the supervisor only, as docker or systemd would
        exit_status.append(await asyncio.to_thread(server.process.wait, 60))

    results = asyncio.run(_run_until(load, lambda: _acknowledged_inserts(load) >= 20, terminate))
    assert exit_status == [0], server.log()[-3000:]
    before = [r for r in results if r.started < sent_at[0]]
    assert [r for r in before if r.http is None] == [], "a request sent before SIGTERM got no answer"
    # A request still running when the drain timeout ends is cancelled by uvicorn and answered 503 by the guard
    # (seen rarely here: requests that began near the end of the 30 s drain); anything else 5xx is a failure.
    failed = [r for r in results if r.http is not None and r.http >= 500 and r.http != 503]
    assert failed == [], summarize(results, 1).line() + server.log()[-4000:]
    assert "Traceback" not in server.log(), server.log()[-3000:]

    rows = stored_rows(database_url, collection)
    check = check_stored(rows, results, images)
    assert check.problems == [], check.problems[:10]
    assert check.acknowledged_records >= 20


def test_sigterm_to_a_single_process_server_exits_0(tmp_path: object) -> None:
    with matchdb_server({}, workers=1, timeout=START_TIMEOUT) as server:
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=60) == 0, server.log()
