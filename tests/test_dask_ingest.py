"""`matchdb ingest --dask-scheduler` (issue 19) as a real subprocess against a real Dask cluster on 127.0.0.1 (a
scheduler and two worker processes, each behind its nanny) and a fresh Postgres database: the rows equal those of a
local ingest of the same inputs, a rerun skips everything, a worker killed mid-run loses and doubles nothing, an
interrupted client resumes, manifests with files and URLs (the workers' own SSRF settings), SQLite is refused.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from matchdb.service.inputs import discover, iter_items
from matchdb.storage import collections as collection_store
from matchdb.storage.database import make_engine, upgrade
from matchdb.storage.records import page_ext_ids
from tests.conftest import corpus_root, fresh_postgres_database
from tests.test_ingest_cli import counts, stored

distributed = pytest.importorskip("distributed", reason="the dask extra is not installed (pip install -e '.[test]')")

PHOTOS = 120  # corpus photos ingested (a few in a sub-folder): enough for many chunks, quick on 2 shared cores
Row = tuple[Any, ...]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = corpus_root()
    if root is None:
        pytest.skip("MATCHDB_TEST_CORPUS is not set (point it at the photo corpus to run this test)")
    photos = sorted((root / "photos").iterdir())[:PHOTOS]
    target = tmp_path_factory.mktemp("dask-photos")
    for number, photo in enumerate(photos):
        destination = target / ("sub" if number % 6 == 0 else "") / photo.name
        destination.parent.mkdir(exist_ok=True)
        shutil.copyfile(photo, destination)
    return target


@pytest.fixture(scope="module")
def image_server(folder: Path) -> Iterator[int]:
    """Serves ``folder`` on 127.0.0.1; yields the port (the workers are allowed to fetch from it)."""

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def cluster(image_server: int) -> Iterator[Any]:
    """A scheduler and 2 single-threaded worker processes on 127.0.0.1; the workers (only) may fetch from the
    image server, as an operator configures MATCHDB_FETCH_ALLOW on the machines that download."""
    local = distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        env={"MATCHDB_FETCH_ALLOW": f"127.0.0.1:{image_server}"},
    )
    try:
        yield local
    finally:
        local.close()


@pytest.fixture(scope="module")
def database(postgres_server_url: str) -> Iterator[str]:
    url, drop = fresh_postgres_database(postgres_server_url)
    engine = make_engine(url)
    upgrade(engine)  # so a test can watch the records table while the first command is starting
    engine.dispose()
    try:
        yield url
    finally:
        drop()


@pytest.fixture(scope="module")
def local_rows(database: str, folder: Path) -> dict[str, Row]:
    """What a local ingest (`-j 2`) of the folder stores: the reference every cluster run is compared with."""
    result = run(database, "ingest", "--create", "--collection", "local", "-j", "2", str(folder))
    assert result.returncode == 0, result.stderr
    assert counts(result) == (PHOTOS, 0, 0, 0)
    return rows(database, "local")


def run(database: str, *args: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    process = start(database, *args, cwd=cwd, **env)
    out, err = process.communicate(timeout=300)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def start(database: str, *args: str, cwd: Path | None = None, **env: str) -> subprocess.Popen[str]:
    # no allow list unless given: on a cluster the client downloads nothing, only the workers' setting counts
    environment = {k: v for k, v in os.environ.items() if k != "MATCHDB_FETCH_ALLOW"}
    environment.update(MATCHDB_DATABASE_URL=database, **env)
    return subprocess.Popen(
        [sys.executable, "-m", "matchdb", *args],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
    )


def rows(database: str, collection: str) -> dict[str, Row]:
    """Every record's stored facts by ``_id`` (row ids aside): what must be identical whichever way it was stored."""
    return {
        ext_id: (r.width, r.height, r.checksum, r.bmh1, r.phash, r.attributes, r.source_url)
        for ext_id, r in stored(database, collection).items()
    }


def record_count(database: str, collection: str) -> int:
    engine = make_engine(database)
    try:
        with engine.connect() as connection:
            info = collection_store.find_collection(connection, None, collection)
            return 0 if info is None else page_ext_ids(connection, info.id, 1, 1)[1]
    finally:
        engine.dispose()


def wait_for_records(process: subprocess.Popen[str], database: str, collection: str, at_least: int) -> int:
    deadline = time.monotonic() + 120
    while (count := record_count(database, collection)) < at_least:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the cluster ingest made no progress"
        time.sleep(0.05)
    return count


def started_and_storing(
    database: str, cluster: Any, folder: Path, collection: str, at_least: int
) -> subprocess.Popen[str]:
    """A cluster ingest of ``folder`` in chunks of 4, once it has stored ``at_least`` records."""
    process = start(database, *ingest_args(collection, cluster, folder, batch=4))
    wait_for_records(process, database, collection, at_least)
    return process


def ingest_args(collection: str, cluster: Any, *paths: Path, batch: int = 8) -> list[str]:
    address = cluster.scheduler_address
    return [
        "ingest",
        "--create",
        "--collection",
        collection,
        "--dask-scheduler",
        address,
        "--batch-size",
        str(batch),
    ] + [str(path) for path in paths]


@pytest.mark.postgres
def test_cluster_ingest_stores_what_a_local_ingest_stores_and_a_rerun_skips(
    database: str, folder: Path, cluster: Any, local_rows: dict[str, Row]
) -> None:
    first = run(database, *ingest_args("x", cluster, folder))
    assert first.returncode == 0, first.stderr
    assert counts(first) == (PHOTOS, 0, 0, 0)
    assert first.stdout.startswith(f"ingested {PHOTOS} images: {PHOTOS} new")
    assert rows(database, "x") == local_rows
    assert sum(1 for ext_id in local_rows if ext_id.startswith("sub/")) == PHOTOS // 6

    again = run(database, *ingest_args("x", cluster, folder, batch=50))
    assert again.returncode == 0, again.stderr
    assert counts(again) == (0, 0, PHOTOS, 0)
    assert rows(database, "x") == local_rows


@pytest.mark.postgres
def test_a_worker_killed_mid_run_loses_and_doubles_nothing(
    database: str, folder: Path, cluster: Any, local_rows: dict[str, Row]
) -> None:
    process = started_and_storing(database, cluster, folder, "killed", 12)
    with distributed.Client(cluster.scheduler_address, set_as_default=False) as client:
        # between two chunks no worker may be running one for a moment (the client stores a chunk's results
        # before it hands out the next): wait for one that is
        busy: dict[str, Any] = {}
        deadline = time.monotonic() + 60
        while not busy and process.poll() is None and time.monotonic() < deadline:
            busy = {address: keys for address, keys in client.processing().items() if keys}
            if not busy:
                time.sleep(0.02)
        assert busy, "no worker is running a chunk"
        victim = sorted(busy)[0]
        assert any(key.startswith("matchdb-ingest-") for key in busy[victim])
        pid = client.run(os.getpid, workers=[victim])[victim]
        os.kill(pid, signal.SIGKILL)
        at_kill = record_count(database, "killed")
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    assert at_kill < PHOTOS, "the ingest finished before the worker was killed"
    new, updated, unchanged, failed = counts(subprocess.CompletedProcess([], 0, out, err))
    assert (new + unchanged, updated, failed) == (PHOTOS, 0, 0)  # a retried chunk may find its rows stored
    assert record_count(database, "killed") == PHOTOS
    assert rows(database, "killed") == local_rows


@pytest.mark.postgres
def test_an_interrupted_client_stops_cleanly_and_a_rerun_resumes(
    database: str, folder: Path, cluster: Any, local_rows: dict[str, Row]
) -> None:
    process = started_and_storing(database, cluster, folder, "stopped", 8)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, (out, err)
    assert "interrupted by SIGINT after" in out and "run the same command again to resume" in out, out
    assert "Traceback" not in err, err
    counted = sum(counts(subprocess.CompletedProcess([], 0, out, err)))
    time.sleep(1)  # a chunk that was running when the client stopped may still commit
    done = record_count(database, "stopped")
    assert counted <= done < PHOTOS

    rerun = run(database, *ingest_args("stopped", cluster, folder))
    assert rerun.returncode == 0, rerun.stderr
    new, updated, unchanged, failed = counts(rerun)
    assert (new + unchanged, updated, failed) == (PHOTOS, 0, 0) and unchanged >= done
    assert rows(database, "stopped") == local_rows


@pytest.mark.postgres
def test_an_error_that_would_fail_every_chunk_stops_the_run_with_its_summary(
    database: str, folder: Path, cluster: Any
) -> None:
    process = started_and_storing(database, cluster, folder, "deleted", 8)
    engine = make_engine(database)
    try:
        with engine.begin() as connection:  # another client deletes the collection under the ingest
            info = collection_store.find_collection(connection, None, "deleted")
            assert info is not None
            collection_store.delete_collection(connection, info.id)
    finally:
        engine.dispose()
    out, err = process.communicate(timeout=120)
    assert process.returncode == 1, (out, err)
    assert f"Error: a chunk failed on a worker: CollectionGone: collection {info.id} no longer exists" in err, err
    assert "Traceback" not in err
    new, _updated, _unchanged, failed = counts(subprocess.CompletedProcess([], 0, out, err))
    assert new >= 8 and failed == 0  # what was done before, as the summary line says


@pytest.mark.postgres
def test_manifest_of_files_and_urls_fetched_by_the_workers(
    database: str, folder: Path, cluster: Any, image_server: int, tmp_path: Path
) -> None:
    photos = sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*.jpg"))
    allowed, refused = f"http://127.0.0.1:{image_server}", "http://127.0.0.2:9"
    (tmp_path / "imgs").mkdir()
    shutil.copyfile(folder / photos[4], tmp_path / "imgs/p.jpg")
    lines: list[dict[str, Any]] = [
        {"_id": "file-1", "_file": str(folder / photos[0]), "price": 12, "tags": ["a"]},
        {"_url": f"{allowed}/{photos[1]}", "kind": "remote"},
        {"_id": "remote-2", "_url": f"{allowed}/{photos[2]}", "_file": str(folder / photos[2])},
        {"_file": "imgs/p.jpg"},  # relative to the manifest, which is given relative to the client's folder
        {"_id": "gone", "_url": f"{allowed}/missing.jpg"},
        {"_id": "guarded", "_url": f"{refused}/x.jpg"},
        {"_id": "file-1", "_file": str(folder / photos[3])},
        {"price": 1},
    ]
    (tmp_path / "manifest.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    allow = {"MATCHDB_FETCH_ALLOW": f"127.0.0.1:{image_server}"}
    report = ["--report", "failures.jsonl"]

    local = run(database, "ingest", "--create", "--collection", "m-local", *report, "manifest.jsonl", cwd=tmp_path)
    assert local.returncode == 1 and counts(local) == (3, 0, 0, 5)  # the client has no allow list: URLs refused
    with_allow = run(database, "ingest", "--collection", "m-local", *report, "manifest.jsonl", cwd=tmp_path, **allow)
    assert with_allow.returncode == 1 and counts(with_allow) == (1, 0, 3, 4), with_allow.stdout

    remote = run(database, *ingest_args("m-cluster", cluster, Path("manifest.jsonl"), batch=3), *report, cwd=tmp_path)
    assert remote.returncode == 1, remote.stderr
    assert counts(remote) == (4, 0, 0, 4)  # the workers' allow list lets them fetch from the image server
    assert rows(database, "m-cluster") == rows(database, "m-local")
    assert rows(database, "m-cluster")["file-1"][5] == {"price": 12, "tags": ["a"]}
    failures = {line["_id"]: line["error"] for line in map(json.loads, (tmp_path / "failures.jsonl").open())}
    assert set(failures) == {"gone", "guarded", "file-1", None}
    assert failures["gone"] == f"HTTP 404 from '{allowed}/missing.jpg'"
    assert "127.0.0.2" in failures["guarded"]
    assert "repeated" in failures["file-1"]


def test_sqlite_is_refused_with_a_clear_error(tmp_path: Path, folder: Path) -> None:
    database = tmp_path / "db.sqlite3"
    result = run(
        f"sqlite:///{database}",
        "ingest",
        "--create",
        "--collection",
        "x",
        "--dask-scheduler",
        "tcp://127.0.0.1:9",
        str(folder),
    )
    assert result.returncode == 2
    assert "--dask-scheduler needs a Postgres database" in result.stderr
    assert "postgresql://" in result.stderr
    assert not database.exists()
    both = run(
        f"sqlite:///{database}", "ingest", "--collection", "x", "-j", "2", "--dask-scheduler", "tcp://h:1", str(folder)
    )
    assert both.returncode == 2 and "-j does not apply with --dask-scheduler" in both.stderr


def test_lazy_listing_yields_discovers_items_in_its_order(tmp_path: Path, folder: Path) -> None:
    names = ["a.png", "a-b/x.jpg", "a/y.jpg", "a/b/z.png", "a.b/w.jpg", ".hidden/v.jpg", "b/.u.jpg", "t.txt"]
    for name in names:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    manifest = tmp_path / "m.csv"
    manifest.write_text("_id,_file,note\none,a.png,x\none,a/y.jpg,y\n,,z\n")
    paths = [tmp_path, manifest, folder]
    lazy, eager = list(iter_items(paths)), discover(paths)
    assert [(i.ext_id, i.source, i.path, i.attributes) for i in lazy] == [
        (i.ext_id, i.source, i.path, i.attributes) for i in eager
    ]
    # the same failures; the lazy listing keeps no source per _id, so it does not name the first one
    assert [i.error for i in lazy] == [
        None,
        None,
        None,
        None,
        None,
        None,
        "_id repeated (given to an earlier item)",
        "the row has neither _url nor _file (nor bmh1 and phash)",
    ] + [None] * PHOTOS
    assert [i.error is None for i in lazy] == [i.error is None for i in eager]
    assert [item.ext_id for item in iter_items([tmp_path])][:5] == [
        "a-b/x.jpg",
        "a.b/w.jpg",
        "a.png",
        "a/b/z.png",
        "a/y.jpg",
    ]
