"""Authentication: open mode, tokens made by the CLI, revocation, storage in the database, and ``matchdb serve``'s
refusal to expose an open API beyond loopback. Real servers and real CLI subprocesses share one SQLite file each.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from starlette.testclient import TestClient

from matchdb.config import Settings
from matchdb.storage.database import make_engine, upgrade
from matchdb.storage.schema import tokens
from matchdb.web.app import create_app
from tests.servers import ServerFailedToStart, free_port, matchdb_env, run_matchdb, run_matchdb_server

PING = "/v2/ping"
UNAUTHORIZED_TEXTS = ("Authentication required", "Invalid or revoked API token", "Malformed Authorization header")


def db_url(folder: Path) -> str:
    return f"sqlite:///{folder / 'db.sqlite3'}"


def cli(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    result = run_matchdb(args, {"MATCHDB_DATABASE_URL": database_url})
    assert result.returncode == 0, f"matchdb {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


@dataclass(frozen=True)
class Token:
    value: str
    id: int


def create_token(database_url: str, *extra: str) -> Token:
    """``matchdb token create``: the token on stdout (one line), its id on stderr."""
    result = cli(database_url, "token", "create", *extra)
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout
    value = lines[0].strip()
    assert len(value) >= 32 and value not in result.stderr
    found = re.search(r"token (\d+) for workspace", result.stderr)
    assert found is not None, result.stderr
    return Token(value, int(found.group(1)))


def revoke(database_url: str, key: str) -> str:
    """Revoke by ``key``; returns what the CLI said on stderr."""
    result = cli(database_url, "token", "revoke", key)
    assert "revoked 1 token" in result.stdout
    return result.stderr


def ping(client: httpx.Client | TestClient, authorization: str | None = None) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": authorization} if authorization is not None else {}
    response = client.post(PING, headers=headers)
    body: dict[str, Any] = response.json()
    return response.status_code, body


def assert_ok(result: tuple[int, dict[str, Any]]) -> None:
    http, body = result
    assert http == 200, body
    assert body["status"]["code"] == 200 and body["_service_info"]["_name"] == "Image matching service"


def assert_unauthorized(result: tuple[int, dict[str, Any]]) -> None:
    http, body = result
    assert http == 401, body
    status = body["status"]
    assert status["code"] == 401 and {"request_id", "proc_id"} <= set(status)
    assert any(text in status["text"] for text in UNAUTHORIZED_TEXTS), status["text"]
    assert "_service_info" not in body


def visual_hash_status(client: httpx.Client | TestClient, authorization: str | None) -> int:
    """A real method (not just ping) behind the same check."""
    headers = {"Authorization": authorization} if authorization is not None else {}
    response = client.post("/v2/visual_hash", json={"records": [{"_base64": ""}]}, headers=headers)
    assert response.json()["status"]["code"] in (400, 401)
    return response.status_code


# --- open mode on a real server ---


@pytest.fixture(scope="module")
def open_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    with (
        run_matchdb_server({}) as url,
        httpx.Client(base_url=url, timeout=30.0) as client,
    ):
        yield client


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Token garbage", "JWT x.y.z", "Bearer nope", "Basic dXNlcjpwYXNz", "Token", "complete nonsense"],
)
def test_open_mode_ignores_authorization(open_server: httpx.Client, authorization: str | None) -> None:
    assert_ok(ping(open_server, authorization))
    assert visual_hash_status(open_server, authorization) == 400  # past auth: the record itself is bad


# --- a secured real server: a bootstrap token at start, then one made by `matchdb token create` ---


@dataclass(frozen=True)
class Secured:
    client: httpx.Client
    database_url: str
    bootstrap: str
    token: Token


BOOTSTRAP = "bootstrap-token-for-tests-0123456789abcdef"


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    database_url = db_url(tmp_path_factory.mktemp("auth-secured"))
    env = {"MATCHDB_DATABASE_URL": database_url, "MATCHDB_BOOTSTRAP_TOKEN": BOOTSTRAP}
    with (
        run_matchdb_server(env) as url,
        httpx.Client(base_url=url, timeout=30.0) as client,
    ):
        yield Secured(client, database_url, BOOTSTRAP, create_token(database_url, "--note", "api tests"))


def test_bootstrap_token_works_from_start(secured: Secured) -> None:
    assert_ok(ping(secured.client, f"Token {secured.bootstrap}"))


@pytest.mark.parametrize("scheme", ["Token", "JWT", "token", "jwt"])
def test_created_token_accepted(secured: Secured, scheme: str) -> None:
    assert_ok(ping(secured.client, f"{scheme} {secured.token.value}"))
    assert visual_hash_status(secured.client, f"{scheme} {secured.token.value}") == 400  # authenticated


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Token",
        "Token wrong-token",
        "JWT wrong-token",
        "Basic dXNlcjpwYXNz",
        "{token}",  # no scheme
        "Token {token}x",
        "Token {prefix}",
    ],
)
def test_missing_or_wrong_token_is_401(secured: Secured, authorization: str | None) -> None:
    if authorization is not None:
        authorization = authorization.format(token=secured.token.value, prefix=secured.token.value[:12])
    assert_unauthorized(ping(secured.client, authorization))
    assert visual_hash_status(secured.client, authorization) == 401


def test_a_refusal_says_where_tokens_come_from(secured: Secured) -> None:
    for authorization in (None, "Token wrong-token"):
        _http, body = ping(secured.client, authorization)
        assert "`matchdb token create`" in body["status"]["text"]


def test_token_shown_on_the_terminal_when_stdout_is_captured(secured: Secured) -> None:
    """``TOKEN=$(matchdb token create)`` in a terminal: stdout goes to the variable, stderr (a terminal here, a
    pseudo-terminal) shows the token once, so the user sees what they must keep. ``-q`` shows nothing more."""
    shown: dict[bool, tuple[str, str]] = {}
    for quiet in (False, True):
        leader, follower = os.openpty()
        args = [sys.executable, "-m", "matchdb", "token", "create", *(["-q"] if quiet else [])]
        env = matchdb_env({"MATCHDB_DATABASE_URL": secured.database_url})
        with subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=follower, text=True) as process:
            os.close(follower)
            stdout, _ = process.communicate(timeout=60)
        received = b""
        with contextlib.suppress(OSError):  # EIO once the child closed its end
            while chunk := os.read(leader, 4096):
                received += chunk
        os.close(leader)
        assert process.returncode == 0
        shown[quiet] = (stdout.strip(), received.decode())
    value, terminal = shown[False]
    assert value in terminal and "not shown again" in terminal
    assert shown[True][1] == ""


def test_get_ping_needs_a_token_too(secured: Secured) -> None:
    response = secured.client.get(PING)
    assert response.status_code == 401 and response.json()["status"]["code"] == 401
    assert secured.client.get(PING, headers={"Authorization": f"Token {secured.token.value}"}).status_code == 200


def test_revoked_token_is_401(secured: Secured) -> None:
    doomed = create_token(secured.database_url, "--note", "to revoke")
    assert_ok(ping(secured.client, f"Token {doomed.value}"))
    revoke(secured.database_url, str(doomed.id))
    assert_unauthorized(ping(secured.client, f"Token {doomed.value}"))
    assert_unauthorized(ping(secured.client, f"JWT {doomed.value}"))
    assert_ok(ping(secured.client, f"Token {secured.token.value}"))  # the others still work


def test_token_list_never_prints_tokens(secured: Secured) -> None:
    for args in (("token", "list"), ("token", "list", "--json")):
        result = cli(secured.database_url, *args)
        output = result.stdout + result.stderr
        assert secured.token.value not in output and secured.bootstrap not in output
        assert secured.token.value[:12] in output  # the prefix identifies it
        assert "api tests" in output


def test_tokens_stored_hashed(secured: Secured) -> None:
    engine = make_engine(secured.database_url)
    try:
        with engine.connect() as connection:
            rows = [dict(row._mapping) for row in connection.execute(select(tokens))]
    finally:
        engine.dispose()
    cells = [str(value) for row in rows for value in row.values()]
    for token in (secured.token.value, secured.bootstrap):
        assert not any(token in cell for cell in cells)
        assert hashlib.sha256(token.encode()).hexdigest() in cells
    # Nor anywhere in the database files (WAL included).
    folder = Path(secured.database_url.removeprefix("sqlite:///")).parent
    for path in folder.glob("db.sqlite3*"):
        data = path.read_bytes()
        assert secured.token.value.encode() not in data and secured.bootstrap.encode() not in data


def test_read_only_token_may_use_stateless_methods(secured: Secured) -> None:
    """The stateless methods write nothing, so a read-only token may call them (403 is for writes only)."""
    reader = create_token(secured.database_url, "--read-only")
    assert_ok(ping(secured.client, f"Token {reader.value}"))
    assert visual_hash_status(secured.client, f"Token {reader.value}") == 400  # authorised; the record is bad


def test_short_bootstrap_token_never_shown_or_stored_in_clear(tmp_path: Path) -> None:
    short = "s3cret-token"  # 12 characters, as an operator might choose
    database_url = db_url(tmp_path)
    try:
        with run_matchdb_server({"MATCHDB_DATABASE_URL": database_url, "MATCHDB_BOOTSTRAP_TOKEN": short}):
            pass
    except ServerFailedToStart:
        return  # refusing a weak bootstrap token would fix it too
    listing = cli(database_url, "token", "list", "--json")
    assert short not in listing.stdout + listing.stderr
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            cells = [str(value) for row in connection.execute(select(tokens)) for value in row]
    finally:
        engine.dispose()
    assert not any(short in cell for cell in cells)


# --- the open -> secured transition, and revocation never reopening it (in-process app, CLI on the same file) ---


def test_first_token_closes_open_mode_and_revoking_all_keeps_it_closed(tmp_path: Path) -> None:
    database_url = db_url(tmp_path)
    engine = make_engine(database_url)
    upgrade(engine)
    engine.dispose()
    settings = Settings(database_url=database_url)
    with TestClient(create_app(settings)) as client:
        assert_ok(ping(client))
        assert_ok(ping(client, "Token not-checked-in-open-mode"))
        token = create_token(database_url)
        assert_unauthorized(ping(client))
        assert_unauthorized(ping(client, "Token not-checked-in-open-mode"))
        assert_ok(ping(client, f"Token {token.value}"))
        said = revoke(database_url, token.value[:12])  # by prefix this time
        assert "no active token is left" in said and "`matchdb token create`" in said
        assert_unauthorized(ping(client))
        assert_unauthorized(ping(client, f"Token {token.value}"))
    with TestClient(create_app(settings)) as client:  # a fresh process state: still no open mode
        assert_unauthorized(ping(client))
        assert_unauthorized(ping(client, f"Token {token.value}"))
    listing = cli(database_url, "token", "list").stdout
    assert "revoked" in listing and "active" not in listing


# --- serve on a non-loopback address ---


def _wait_for_exit_or_health(process: subprocess.Popen[str], port: int, timeout: float) -> bool:
    """True if the server became healthy on 127.0.0.1:port; False if it exited first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=0.5).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    return process.poll() is None


def _serve(env: Mapping[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "matchdb", "serve", *args],
        env=matchdb_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_serve_refuses_open_api_on_all_interfaces(tmp_path: Path) -> None:
    port = free_port()
    process = _serve({"MATCHDB_DATABASE_URL": db_url(tmp_path)}, "--host", "0.0.0.0", "--port", str(port))
    try:
        started = _wait_for_exit_or_health(process, port, timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
        _, stderr = process.communicate(timeout=10)
    assert not started, "matchdb serve --host 0.0.0.0 started with no token (it was killed)"
    assert process.returncode != 0
    assert "token" in stderr.lower() and "0.0.0.0" in stderr and "--insecure-open" in stderr, stderr


def test_serve_with_a_token_may_bind_all_interfaces(secured: Secured) -> None:
    """The refusal is about open mode only: the secured database lets serve bind 0.0.0.0 (reached via 127.0.0.1)."""
    with (
        run_matchdb_server({"MATCHDB_DATABASE_URL": secured.database_url}, host="0.0.0.0") as url,
        httpx.Client(base_url=url, timeout=10.0) as client,
    ):
        assert_unauthorized(ping(client))
        assert_ok(ping(client, f"Token {secured.token.value}"))


def test_insecure_open_starts_on_all_interfaces(tmp_path: Path) -> None:
    with (
        run_matchdb_server(
            {"MATCHDB_DATABASE_URL": db_url(tmp_path)}, host="0.0.0.0", extra_args=["--insecure-open"]
        ) as url,
        httpx.Client(base_url=url, timeout=10.0) as client,
    ):
        assert_ok(ping(client))
