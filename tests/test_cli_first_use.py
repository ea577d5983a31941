"""A newcomer's first commands: one default database whatever folder a command runs from, errors that name the
collections there are and a way out that exists, tables with headers, a token printed alone, and progress that
still shows where no terminal can draw a bar."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from matchdb.cli.progress import PeriodicLines

DATA = Path(__file__).parent / "data"


def matchdb(*args: str, cwd: Path, home: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """``python -m matchdb ARGS`` with no MATCHDB_DATABASE_URL: the default database under ``home``."""
    environment = {k: v for k, v in os.environ.items() if k != "MATCHDB_DATABASE_URL"}
    environment.update({"XDG_DATA_HOME": str(home), "HOME": str(home), **env})
    return subprocess.run(
        [sys.executable, "-m", "matchdb", *args], cwd=cwd, env=environment, capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path, Path]:
    home, first, second = tmp_path / "home", tmp_path / "project", tmp_path / "elsewhere"
    for folder in (home, first, second):
        folder.mkdir()
    return home, first, second


def test_every_folder_sees_the_same_default_database(folders: tuple[Path, Path, Path]) -> None:
    home, first, second = folders
    assert matchdb("collection", "create", "demo", cwd=first, home=home).returncode == 0
    listed = matchdb("collection", "list", cwd=second, home=home)
    assert listed.returncode == 0 and "demo" in listed.stdout
    ingested = matchdb("ingest", "--collection", "demo", str(DATA), cwd=second, home=home)
    assert ingested.returncode == 0, ingested.stderr
    assert re.search(r"\b[1-9]\d* new\b", ingested.stdout)
    assert list(second.iterdir()) == [] and list(first.iterdir()) == []  # no database, no report in either folder
    info = matchdb("info", cwd=second, home=home)
    assert info.returncode == 0, info.stderr
    assert str(home / "matchdb" / "matchdb.sqlite3") in info.stdout and "per-user default" in info.stdout
    assert re.search(r"collections 1 \([1-9]", info.stdout)


def test_an_old_database_in_the_folder_is_used_with_a_notice(folders: tuple[Path, Path, Path]) -> None:
    home, first, _ = folders
    old_url = f"sqlite:///{first / 'matchdb.sqlite3'}"
    made = matchdb("collection", "create", "legacy", cwd=first, home=home, MATCHDB_DATABASE_URL=old_url)
    assert made.returncode == 0, made.stderr
    listed = matchdb("collection", "list", cwd=first, home=home)
    assert "legacy" in listed.stdout
    assert "the old default" in listed.stderr and len(listed.stderr.strip().splitlines()) == 1
    assert not (home / "matchdb" / "matchdb.sqlite3").exists()


def test_database_option_overrides_the_default(folders: tuple[Path, Path, Path]) -> None:
    home, first, _ = folders
    url = f"sqlite:///{first / 'other.sqlite3'}"
    assert matchdb("--database", url, "collection", "create", "x", cwd=first, home=home).returncode == 0
    assert "x" not in matchdb("collection", "list", cwd=first, home=home).stdout.split()
    assert "--database" in matchdb("--database", url, "info", cwd=first, home=home).stdout


def test_wrong_names_list_the_collections_and_a_way_out_that_exists(folders: tuple[Path, Path, Path]) -> None:
    home, first, _ = folders
    for name in ("newcomer", "archive", "zebra"):
        assert matchdb("collection", "create", name, cwd=first, home=home).returncode == 0
    image = str(DATA / "astronaut-128.jpg")
    query = matchdb("query", "--collection", "newcomr", image, cwd=first, home=home)
    delete = matchdb("collection", "delete", "newcomr", "--yes", cwd=first, home=home)
    ingest = matchdb("ingest", "--collection", "newcomr", str(DATA), cwd=first, home=home)
    for result in (query, delete, ingest):
        assert result.returncode == 1
        assert "the collections are: newcomer, " in result.stderr  # closest first
        assert "archive" in result.stderr and "zebra" in result.stderr
    for result in (query, delete, ingest):  # a misspelling: the name meant, never "create the misspelling"
        assert "did you mean 'newcomer'?" in result.stderr and "create" not in result.stderr
    fresh = matchdb("query", "--collection", "shoes", image, cwd=first, home=home)
    assert "matchdb collection create shoes" in fresh.stderr and "--create" not in fresh.stderr
    fresh = matchdb("ingest", "--collection", "shoes", str(DATA), cwd=first, home=home)
    assert "pass --create" in fresh.stderr


def test_token_create_quiet_prints_only_the_token_and_lists_have_headers(folders: tuple[Path, Path, Path]) -> None:
    home, first, _ = folders
    created = matchdb("token", "create", "--quiet", "--note", "shop", cwd=first, home=home)
    assert created.returncode == 0 and created.stderr == ""
    assert re.fullmatch(r"\S{40,}\n", created.stdout)
    table = matchdb("token", "list", cwd=first, home=home).stdout.splitlines()
    assert table[0].split() == ["id", "prefix", "workspace", "rights", "state", "note"]
    assert table[1].split()[-1] == "shop"


def test_progress_without_a_terminal_prints_periodic_lines() -> None:
    stream = io.StringIO()
    lines = PeriodicLines(total=10, unit="img", desc="ingest", stream=stream, interval=0.0)
    for _ in range(10):
        lines.update()
    printed = stream.getvalue().splitlines()
    assert len(printed) == 10
    assert printed[-1].startswith("ingest: 100% 10/10")
    quiet = io.StringIO()
    slow = PeriodicLines(total=10, unit="img", desc="ingest", stream=quiet, interval=3600.0)
    slow.update(5)
    assert quiet.getvalue() == ""
