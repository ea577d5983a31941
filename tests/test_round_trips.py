"""A visualKNN's search on a warm server costs one statement (one round trip) to the database: the records are
fetched with the change log's last number, and the catch-up query is skipped when the index had applied everything
up to it (issue 28). A write is still in the next answer (read-after-write): the number has moved, so the query
catches up and searches again. On SQLite and Postgres, through the real app.

Not yet one round trip per request: the token (or, in open mode, whether any token exists) and the collection are
still looked up by a statement each before the search; the test counts them apart. Every one of these statements
runs in autocommit: no BEGIN before it and no ROLLBACK after it (two more round trips each on Postgres)."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import event
from starlette.testclient import TestClient

from matchdb.config import Settings
from matchdb.storage import database
from matchdb.web.app import create_app
from tests.test_collections_api import Api, image_b64

LOOKUP = re.compile(r"^SELECT .* FROM (tokens|collections)\b")  # the token's and the collection's lookups
FETCH = "LEFT OUTER JOIN records"  # the records with the change log's last number


@pytest.fixture
def client(database_url: str) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(database_url=database_url, hash_threads=2))) as client:
        yield client


class Statements:
    """The SQL statements the app's request threads send (not the heartbeat's or index loads' threads)."""

    def __init__(self, client: TestClient) -> None:
        self.sent: list[str] = []
        self.in_transaction: list[str] = []  # those sent inside a BEGIN ... ROLLBACK
        event.listen(client.app.state.engine, "before_cursor_execute", self._seen)  # type: ignore[attr-defined]

    def _seen(self, conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if threading.current_thread().name.startswith("AnyIO worker thread"):
            self.sent.append(" ".join(statement.split()))
            if conn.get_execution_options().get("isolation_level") != "AUTOCOMMIT":
                self.in_transaction.append(self.sent[-1])

    def during(self, call: Any) -> tuple[Any, list[str]]:
        """``call()``'s result and the statements it sent, but for the token's and the collection's lookups."""
        self.sent.clear()
        self.in_transaction.clear()
        result = call()
        return result, [s for s in self.sent if not LOOKUP.search(s)]


def test_a_warm_visual_knn_is_one_statement_and_still_reads_its_writes(client: TestClient) -> None:
    api = Api(client)
    api.create("trips")
    api.call("insert", {"records": [{"_id": f"r{i}", "_base64": image_b64(i)} for i in range(6)]})
    query = {"query_record": {"_base64": image_b64(2)}, "k": 3, "fields_to_return": ["_id"]}
    statements = Statements(client)
    api.call("visualKNN", query)  # loads the index and catches up
    answer, sent = statements.during(lambda: api.call("visualKNN", query))
    assert answer["answer_records"][0]["_id"] == "r2"
    assert len(sent) == 1 and FETCH in sent[0], sent
    assert len(statements.sent) == 3 and not statements.in_transaction, statements.sent  # token, collection, fetch

    api.call("insert", {"records": [{"_id": "new", "_base64": image_b64(2)}]})  # a copy of the query's image
    answer, sent = statements.during(lambda: api.call("visualKNN", query))
    assert {r["_id"] for r in answer["answer_records"][:2]} == {"r2", "new"}, answer  # read-after-write
    # the fetch that saw the change, the catch-up, the fetch again
    assert FETCH in sent[0] and FETCH in sent[-1] and any("changes.seq >" in s for s in sent[1:-1]), sent


def test_a_connection_pinged_after_idling_serves_autocommit_reads(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every checkout pings (as after a second idle): the ping leaves no transaction open, so the reads that switch
    the connection to autocommit still work (psycopg refuses that inside a transaction)."""
    api = Api(client)
    api.create("pinged")
    api.call("insert", {"records": [{"_id": f"r{i}", "_base64": image_b64(i)} for i in range(3)]})
    monkeypatch.setattr(database, "PING_IDLE_SECONDS", -1.0)
    for _ in range(3):
        answer = api.call("visualKNN", {"query_record": {"_base64": image_b64(1)}, "k": 1, "fields_to_return": ["_id"]})
        assert answer["answer_records"][0]["_id"] == "r1"
