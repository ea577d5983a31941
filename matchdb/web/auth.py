"""Who is calling: ``Authorization: Token <t>`` (or ``JWT <t>``, as Ximilar's Python client sends) -> a workspace.

Open mode: while the database has never held a token, every request runs as workspace ``default`` and the header
is ignored (``matchdb serve`` only allows that on a loopback address). Once a token exists it never comes back:
tokens are revoked, not deleted, so revoking the last one does not silently open the service.

While the database is unavailable, a token this process has accepted before is accepted again (and open mode
stays open), so the methods that need no stored data (ping, visual_hash, rank_images, remove_duplicates) keep
working through an outage; no one can revoke a token meanwhile, since that too needs the database.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as SATimeoutError

from matchdb.storage.database import single_reads
from matchdb.storage.tokens import DEFAULT_WORKSPACE, any_token_ever, find_token, hash_token
from matchdb.storage.transactions import unavailable
from matchdb.web.envelope import ApiError

_SCHEMES = ("token", "jwt", "bearer")
# Where a token comes from, for a caller who has none: the CLI, on a machine that reaches the database.
_GET_ONE = " (`matchdb token create`, run where the server's database is, makes one)"


@dataclass(frozen=True)
class Principal:
    workspace: str
    read_only: bool
    token_id: int | None  # None in open mode


class Authenticator:
    """Checks tokens against the database (hashed); blocking, so call it from a worker thread."""

    MAX_REMEMBERED = 10_000

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._tokens_exist = False  # once True it stays True (tokens are never deleted)
        self._accepted: dict[str, Principal] = {}  # by hash of the header: the last answer, for database outages

    def authenticate(self, authorization: str | None) -> Principal:
        key = hash_token(authorization or "")
        try:
            principal = self._check(authorization)
        except ApiError:
            self._accepted.pop(key, None)
            raise
        except (DBAPIError, SATimeoutError) as exc:
            remembered = self._accepted.get(key)
            if remembered is None or unavailable(exc) is None:
                raise
            return remembered
        if len(self._accepted) >= self.MAX_REMEMBERED:
            self._accepted.clear()
        self._accepted[key] = principal
        return principal

    def presumed(self, authorization: str | None) -> tuple[Principal, str | None] | None:
        """The principal this process last accepted for ``authorization``, without asking the database, and what
        confirms it: the hash of its token (``None`` in open mode: that the service still has no token). For
        methods whose one statement confirms it (visualKNN, see ``records.Presumed``); ``None`` if not known."""
        principal = self._accepted.get(hash_token(authorization or ""))
        if principal is None:
            return None
        if principal.token_id is None:
            return principal, None
        return principal, hash_token(_parse_header(authorization))

    def forget(self, authorization: str | None) -> None:
        """Drop what :meth:`presumed` would answer (it did not hold)."""
        self._accepted.pop(hash_token(authorization or ""), None)

    def open_mode(self) -> bool:
        """Whether the service is open (no token was ever created): then every caller is workspace ``default``."""
        try:
            self.authenticate(None)
        except ApiError:
            return False
        return True

    def _check(self, authorization: str | None) -> Principal:
        with single_reads(self._engine) as connection:
            if not self._tokens_exist:
                self._tokens_exist = any_token_ever(connection)
                if not self._tokens_exist:
                    return Principal(DEFAULT_WORKSPACE, read_only=False, token_id=None)
            token = _parse_header(authorization)
            info = find_token(connection, token)
        if info is None:
            raise ApiError(401, "Invalid or revoked API token" + _GET_ONE)
        return Principal(info.workspace, info.read_only, info.id)


def is_metrics_operator(authorization: str | None, metrics_token: str) -> bool:
    """Whether ``authorization`` carries the operator's metrics credential (``MATCHDB_METRICS_TOKEN``; any scheme
    this module accepts, e.g. Prometheus's ``Bearer``). It is no API token: it opens nothing but ``/metrics``."""
    if not metrics_token:
        return False
    try:
        given = _parse_header(authorization)
    except ApiError:
        return False
    return hmac.compare_digest(given.encode(), metrics_token.encode())


def _parse_header(authorization: str | None) -> str:
    if not authorization or not authorization.strip():
        raise ApiError(401, "Authentication required: send the header 'Authorization: Token <your token>'" + _GET_ONE)
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() not in _SCHEMES or not token.strip():
        raise ApiError(401, "Malformed Authorization header: expected 'Token <your token>'")
    return token.strip()
