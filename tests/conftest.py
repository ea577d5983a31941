"""Shared fixtures. Tests that need outside resources read them from the environment and skip without them:
MATCHDB_TEST_CORPUS (the photo corpus), MATCHDB_TEST_SPEC (Ximilar's API text), MATCHDB_TEST_DATABASE_URL
(Postgres), MATCHDB_TEST_CHROMIUM (a browser). CI provides all four and fails if any such test is skipped; the end
of any run says which groups were skipped and why (docs/development.md: how to provide each)."""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import Engine

DATA = Path(__file__).parent / "data"


@dataclass(frozen=True)
class CorpusImage:
    path: Path
    group_id: str

    @property
    def name(self) -> str:
        return self.path.name


def corpus_root() -> Path | None:
    value = os.environ.get("MATCHDB_TEST_CORPUS")
    return Path(value) if value else None


def load_corpus() -> list[CorpusImage]:
    """Every image of the corpus manifest (empty without MATCHDB_TEST_CORPUS)."""
    root = corpus_root()
    if root is None:
        return []
    with (root / "manifest.csv").open(newline="") as handle:
        return [CorpusImage(root / row["file"], row["group_id"]) for row in csv.DictReader(handle)]


@pytest.fixture(scope="session")
def corpus() -> list[CorpusImage]:
    images = load_corpus()
    if not images:
        pytest.skip("MATCHDB_TEST_CORPUS is not set (point it at the photo corpus to run this test)")
    return images


@pytest.fixture(scope="session", autouse=True)
def private_data_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The per-user default database lives under $XDG_DATA_HOME: point it at a temporary folder for the whole run
    (subprocesses inherit it), so no test reads or writes the real user's matchdb database."""
    home = tmp_path_factory.mktemp("xdg-data")
    old = os.environ.get("XDG_DATA_HOME")
    os.environ["XDG_DATA_HOME"] = str(home)
    yield home
    if old is None:
        del os.environ["XDG_DATA_HOME"]
    else:
        os.environ["XDG_DATA_HOME"] = old


# In CI (MATCHDB_TEST_STRICT=1) every test must run: a skip means a resource CI should provide is missing.
_skipped: list[str] = []
_skip_reasons: dict[str, list[str]] = {}  # reason -> node ids


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped:
        _skipped.append(report.nodeid)
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        _skip_reasons.setdefault(reason.removeprefix("Skipped: "), []).append(report.nodeid)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """One line per reason tests were skipped, with how many and from which files, so a contributor's run says
    what it did not test (a fresh clone skips about 80 tests) and docs/development.md says how to run them."""
    if not _skip_reasons:
        return
    terminalreporter.section(f"skipped: {len(_skipped)} tests, by reason")
    for reason, nodeids in sorted(_skip_reasons.items(), key=lambda item: -len(item[1])):
        files = sorted({nodeid.split("::")[0].removeprefix("tests/") for nodeid in nodeids})
        shown = ", ".join(files[:4]) + (f" and {len(files) - 4} more" if len(files) > 4 else "")
        terminalreporter.write_line(f"{len(nodeids):>4}  {reason}  [{shown}]")
    terminalreporter.write_line("How to provide what they need and run them: docs/development.md")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get("MATCHDB_TEST_STRICT") and _skipped:
        print(f"\nMATCHDB_TEST_STRICT: {len(_skipped)} tests were skipped, which CI does not allow:")
        for nodeid in _skipped[:20]:
            print(f"  {nodeid}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def postgres_server_url() -> str:
    url = os.environ.get("MATCHDB_TEST_DATABASE_URL")
    if not url:
        pytest.skip("MATCHDB_TEST_DATABASE_URL is not set (point it at a Postgres server to run this test)")
    return url


def fresh_postgres_database(server_url: str) -> tuple[str, Callable[[], None]]:
    """Create an empty database on the server of ``server_url``; returns its URL and a function that drops it."""
    import secrets

    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    base = make_url(server_url).set(drivername="postgresql+psycopg")
    name = f"matchdb_t_{secrets.token_hex(6)}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return base.set(database=name).render_as_string(hide_password=False), drop


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database brought to the current schema by the real Alembic migrations, on SQLite and Postgres."""
    from matchdb.storage.database import make_engine, upgrade

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'matchdb.sqlite3'}"
        drop: Callable[[], None] = lambda: None  # noqa: E731
    else:
        url, drop = fresh_postgres_database(request.getfixturevalue("postgres_server_url"))
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    try:
        yield url
    finally:
        drop()


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """An engine on :func:`database_url`, disposed after the test."""
    from matchdb.storage.database import make_engine

    engine = make_engine(database_url)
    yield engine
    engine.dispose()
