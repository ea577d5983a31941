"""Shared fixtures. Tests that need outside resources read them from the environment and skip without them:
MATCHDB_TEST_CORPUS (the photo corpus), MATCHDB_TEST_DATABASE_URL (Postgres), MATCHDB_TEST_CHROMIUM (a browser).
CI provides all three and fails if any such test is skipped."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

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


# In CI (MATCHDB_TEST_STRICT=1) every test must run: a skip means a resource CI should provide is missing.
_skipped: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped:
        _skipped.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get("MATCHDB_TEST_STRICT") and _skipped:
        print(f"\nMATCHDB_TEST_STRICT: {len(_skipped)} tests were skipped, which CI does not allow:")
        for nodeid in _skipped[:20]:
            print(f"  {nodeid}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
