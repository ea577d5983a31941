"""A visualKNN on a warm server costs one statement (one round trip) to the database (issue 28): the records are
fetched with the change log's last number, which skips the catch-up query when the index had applied everything up
to it, and with whether the token (in open mode: that no token exists) and the collection this process found before
still hold, which skips their lookups. The statement runs in autocommit (no BEGIN before it and no ROLLBACK after:
two more round trips on Postgres). A write is still in the next answer (read-after-write): the number has moved, so
the query catches up and searches again; a revoked token, a deleted collection or a first token are seen at once:
the request runs again with both looked up. On SQLite and Postgres, through the real app."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, event
from starlette.testclient import TestClient

from matchdb.config import Settings
from matchdb.storage import database
from matchdb.storage.collections import create_collection, delete_collection
from matchdb.storage.tokens import create_token, revoke_token
from matchdb.web.app import create_app
from tests.test_collections_api import Api, image_b64

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
        """``call()``'s result and the statements it sent."""
        self.sent.clear()
        self.in_transaction.clear()
        result = call()
        return result, list(self.sent)


def test_a_warm_visual_knn_is_one_statement_and_still_reads_its_writes(client: TestClient) -> None:
    api = Api(client)
    api.create("trips")
    api.call("insert", {"records": [{"_id": f"r{i}", "_base64": image_b64(i)} for i in range(6)]})
    query = {"query_record": {"_base64": image_b64(2)}, "k": 3, "fields_to_return": ["_id"]}
    statements = Statements(client)
    api.call("visualKNN", query)  # loads the index and catches up
    answer, sent = statements.during(lambda: api.call("visualKNN", query))
    assert answer["answer_records"][0]["_id"] == "r2"
    assert len(sent) == 1 and FETCH in sent[0], sent  # no token or collection lookup, no catch-up
    assert not statements.in_transaction, statements.in_transaction

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


def knn_status(client: TestClient, headers: dict[str, str], collection: str) -> tuple[int, list[str]]:
    query = {"query_record": {"_base64": image_b64(1)}, "k": 2, "fields_to_return": ["_id"]}
    response = client.post("/v2/visualKNN", json=query, headers={**headers, "collection-id": collection})
    body = response.json()
    return body["status"]["code"], [r["_id"] for r in body.get("answer_records", [])]


def test_a_revoked_token_a_deleted_collection_and_a_first_token_are_seen_at_once(
    client: TestClient, engine: Engine
) -> None:
    open_api = Api(client)
    open_api.create("shop")
    open_api.call("insert", {"records": [{"_id": f"r{i}", "_base64": image_b64(i)} for i in range(3)]})
    expected = knn_status(client, {}, "shop")  # open mode, now remembered
    assert expected[0] == 200 and expected[1][0] == "r1"
    with engine.begin() as connection:
        secret, _ = create_token(connection, "default")  # the first token (the CLI): open mode is over
    assert knn_status(client, {}, "shop")[0] == 401
    auth = {"Authorization": f"Token {secret}"}
    assert knn_status(client, auth, "shop") == expected  # remembered from here
    with engine.begin() as connection:
        assert revoke_token(connection, secret) == 1
    assert knn_status(client, auth, "shop") == (401, [])
    with engine.begin() as connection:
        other, _ = create_token(connection, "default")
    auth = {"Authorization": f"Token {other}"}
    assert knn_status(client, auth, "shop") == expected
    with engine.begin() as connection:  # deleted, and another made under the same name by someone else
        assert delete_collection(connection, open_api.collection)
        create_collection(connection, "default", "shop")
    assert knn_status(client, auth, "shop") == (200, [])  # the new, empty one: not the remembered one
    stored = {"query_record": {"_id": "r1"}, "k": 2}
    response = client.post("/v2/visualKNN", json=stored, headers={**auth, "collection-id": open_api.collection})
    assert response.status_code == 404 and "Unknown collection" in response.json()["status"]["text"]
