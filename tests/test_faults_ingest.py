"""Fault suite, ``matchdb ingest`` (issue 14), as a real subprocess on SQLite and Postgres:

- SIGKILL twice in the middle of an ingest, then a rerun: every image stored exactly once, with the checksum of its
  file and the hashes of its image;
- Ctrl-C (SIGINT to the process group, as a terminal sends it), SIGTERM to the process, and SIGTERM to the whole
  process group (as systemd sends it): the ingest writes what it has done, says how far it got, exits 128 + the
  signal, and a rerun resumes from there (on SQLite: the signal handling does not depend on the database).
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from matchdb.hashing import hash_image
from matchdb.storage import collections as collection_store
from matchdb.storage.database import make_engine, upgrade
from matchdb.storage.records import ids_by_ext_id
from tests.imagegen import encode, photo_like
from tests.test_ingest_cli import counts, stored

IMAGES = 160


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ingest-faults")
    for number in range(IMAGES):
        (root / f"{number:04d}.png").write_bytes(encode(Image.fromarray(photo_like(160, 120, seed=number)), "PNG"))
    return root


def _start(database_url: str, folder: Path) -> subprocess.Popen[str]:
    """``matchdb ingest`` in its own process group (its hashing workers included), small batches, one worker."""
    command = [sys.executable, "-m", "matchdb", "ingest", "--create", "--collection", "k", "--batch-size", "5"]
    return subprocess.Popen(
        [*command, "-j", "1", str(folder)],
        env={**os.environ, "MATCHDB_DATABASE_URL": database_url},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _stored_count(database_url: str) -> int:
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            info = collection_store.find_collection(connection, None, "k")
            if info is None:
                return 0
            names = [f"{n:04d}.png" for n in range(IMAGES)]
            return len(ids_by_ext_id(connection, info.id, names))
    finally:
        engine.dispose()


def _wait_for_progress(process: subprocess.Popen[str], database_url: str, at_least: int) -> int:
    """Wait until ``at_least`` records are stored (the ingest is under way); returns how many there are."""
    deadline = time.monotonic() + 120
    while (count := _stored_count(database_url)) < at_least:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the ingest made no progress"
        time.sleep(0.05)
    return count


def _rerun(database_url: str, folder: Path) -> subprocess.CompletedProcess[str]:
    process = _start(database_url, folder)
    out, err = process.communicate(timeout=300)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def _assert_every_image_stored_once(database_url: str, folder: Path) -> None:
    records = stored(database_url, "k")
    assert sorted(records) == [f"{n:04d}.png" for n in range(IMAGES)]
    for name, record in records.items():
        data = (folder / name).read_bytes()
        assert record.checksum == hashlib.sha256(data).hexdigest(), name
        hashes = hash_image(data, ("bmh1", "phash"), 10**8).hashes
        assert (record.bmh1, record.phash) == (hashes["bmh1"].data, hashes["phash"].data), name


def test_sigkill_twice_then_rerun_stores_every_image_once(database_url: str, folder: Path) -> None:
    killed_at = []
    for _round in range(2):
        process = _start(database_url, folder)
        before = _stored_count(database_url)
        _wait_for_progress(process, database_url, before + 5)
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate(timeout=30)
        killed_at.append(_stored_count(database_url))
    assert killed_at[-1] < IMAGES, "the ingest finished before it was killed"

    result = _rerun(database_url, folder)
    assert result.returncode == 0, result.stderr
    new, updated, unchanged, failed = counts(result)
    assert (new, updated, unchanged, failed) == (IMAGES - killed_at[-1], 0, killed_at[-1], 0)
    _assert_every_image_stored_once(database_url, folder)


@pytest.mark.parametrize(
    ("signum", "whole_group"),
    [(signal.SIGINT, True), (signal.SIGTERM, False), (signal.SIGTERM, True)],
    ids=["ctrl-c", "sigterm", "sigterm-group"],
)
def test_a_stopped_ingest_stores_what_it_did_says_how_far_and_resumes(
    tmp_path: Path, folder: Path, signum: int, whole_group: bool
) -> None:
    # SQLite only: what is stored on a stop is one transaction per batch on both databases (SIGKILL test above).
    database_url = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    engine = make_engine(database_url)
    upgrade(engine)
    engine.dispose()
    process = _start(database_url, folder)
    _wait_for_progress(process, database_url, 5)
    if whole_group:
        os.killpg(process.pid, signum)
    else:
        process.send_signal(signum)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signum, (out, err)
    name = signal.Signals(signum).name
    found = re.search(rf"^interrupted by {name} after (\d+) of {IMAGES} images, all of them stored", out, re.M)
    assert found, (out, err)
    done = int(found.group(1))
    assert done < IMAGES and _stored_count(database_url) == done  # no failures here: done = stored
    assert "Traceback" not in err, err

    result = _rerun(database_url, folder)
    assert result.returncode == 0, result.stderr
    assert counts(result) == (IMAGES - done, 0, done, 0)
    _assert_every_image_stored_once(database_url, folder)


def test_ctrl_c_before_the_run_starts_exits_130_in_words(tmp_path: Path) -> None:
    """Issue 26: Ctrl-C in the first half second (while the inputs are listed) printed click's "Aborted!" and
    exited 1. The manifest here is a named pipe: reading it blocks until the test writes, so the signal lands,
    for certain, while ``ingest`` is still listing its inputs."""
    manifest = tmp_path / "manifest.csv"
    os.mkfifo(manifest)
    process = subprocess.Popen(
        [sys.executable, "-m", "matchdb", "ingest", "--create", "--collection", "k", str(manifest)],
        env={**os.environ, "MATCHDB_DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    with open(manifest, "w"):  # returns once ingest has opened the pipe to read it
        process.send_signal(signal.SIGINT)
        _out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    # (`--create` made the collection first: a streamed ingest needs it before it reads the inputs)
    assert err.strip().splitlines()[-1] == "matchdb ingest: interrupted by SIGINT before any image was stored", err
    assert "Traceback" not in err and "Aborted" not in err, err


CTRL_C_WHILE_IMPORTING = """
import os, signal, sys

class CtrlC:  # a real SIGINT, delivered as the commands start being imported
    def find_spec(self, name, path=None, target=None):
        if name == "matchdb.cli.root":
            os.kill(os.getpid(), signal.SIGINT)
        return None

sys.meta_path.insert(0, CtrlC())
sys.argv = ["matchdb", "ingest", "--collection", "k", "."]
from matchdb.cli import run
run()
"""


def test_ctrl_c_while_the_command_starts_is_one_line_and_130() -> None:
    """Earlier still (the first 0.3 s): Ctrl-C while Python imports the commands printed the import machinery's
    traceback. The console script (``matchdb.cli:run``) and ``python -m matchdb`` catch it."""
    result = subprocess.run(
        [sys.executable, "-c", CTRL_C_WHILE_IMPORTING], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 130, result.stderr
    assert result.stderr == "matchdb: interrupted while starting\n"
