"""API tokens: created once and shown once, stored as SHA-256, looked up per request, revoked by id or prefix.

Functions take an open connection and never commit: the caller owns the transaction (``engine.begin()``).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Select, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from matchdb.storage.schema import tokens, workspaces

DEFAULT_WORKSPACE = "default"
TOKEN_PREFIX = "mdb_"
MIN_TOKEN_LENGTH = 16


def shown_prefix(token: str) -> str:
    """The part of a token kept to recognise it in listings: at most a quarter of it (and 12 characters)."""
    return token[: min(12, len(token) // 4)]


@dataclass(frozen=True)
class TokenInfo:
    """What a token grants (never the token itself)."""

    id: int
    workspace: str
    prefix: str
    read_only: bool
    note: str
    created_at: datetime
    revoked_at: datetime | None


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def workspace_id(connection: Connection, name: str) -> int:
    """The id of workspace ``name``, created if missing (``ON CONFLICT DO NOTHING``: two requests creating the
    first collection of a new workspace at once both get its id)."""
    found = connection.execute(select(workspaces.c.id).where(workspaces.c.name == name)).scalar_one_or_none()
    if found is not None:
        return int(found)
    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
    connection.execute(
        dialect.insert(workspaces).values(name=name, created_at=datetime.now(UTC)).on_conflict_do_nothing()
    )
    return int(connection.execute(select(workspaces.c.id).where(workspaces.c.name == name)).scalar_one())


def create_token(
    connection: Connection,
    workspace: str = DEFAULT_WORKSPACE,
    read_only: bool = False,
    note: str = "",
    token: str | None = None,
) -> tuple[str, TokenInfo]:
    """Store a new token (random unless given) and return it in clear, the only time it is available."""
    token = token or TOKEN_PREFIX + secrets.token_urlsafe(36)
    if len(token) < MIN_TOKEN_LENGTH:
        raise ValueError(f"a token needs at least {MIN_TOKEN_LENGTH} characters")
    now = datetime.now(UTC)
    values = {
        "workspace_id": workspace_id(connection, workspace),
        "token_hash": hash_token(token),
        "prefix": shown_prefix(token),
        "read_only": read_only,
        "note": note,
        "created_at": now,
    }
    new_id = connection.execute(insert(tokens).values(**values)).inserted_primary_key[0]  # type: ignore[index]
    return token, TokenInfo(int(new_id), workspace, shown_prefix(token), read_only, note, now, None)


def _select_info() -> Select[Any]:
    return select(
        tokens.c.id,
        workspaces.c.name,
        tokens.c.prefix,
        tokens.c.read_only,
        tokens.c.note,
        tokens.c.created_at,
        tokens.c.revoked_at,
    ).join(workspaces, workspaces.c.id == tokens.c.workspace_id)


def find_token(connection: Connection, token: str) -> TokenInfo | None:
    """The live (not revoked) token matching ``token``, if any."""
    row = connection.execute(
        _select_info().where(tokens.c.token_hash == hash_token(token), tokens.c.revoked_at.is_(None))
    ).one_or_none()
    return TokenInfo(*row) if row is not None else None


def any_token_ever(connection: Connection) -> bool:
    """Whether any token was ever created. Revoking every token does not reopen open mode: that would be a surprise."""
    return bool(connection.execute(select(func.count()).select_from(tokens)).scalar_one())


def list_tokens(connection: Connection) -> list[TokenInfo]:
    return [TokenInfo(*row) for row in connection.execute(_select_info().order_by(tokens.c.id))]


def revoke_token(connection: Connection, key: str) -> int:
    """Revoke the live token whose id, prefix (naming exactly one) or whole value is ``key``; returns how many."""
    live = tokens.c.revoked_at.is_(None)
    whole = connection.execute(select(tokens.c.id).where(tokens.c.token_hash == hash_token(key), live)).first()
    if whole is not None:
        condition = tokens.c.id == whole[0]
    elif key.isdigit():
        condition = (tokens.c.id == int(key)) & live
    else:
        matches = connection.execute(select(tokens.c.id).where(tokens.c.prefix.startswith(key), live)).all()
        if len(matches) != 1:
            return 0 if not matches else -len(matches)
        condition = tokens.c.id == matches[0][0]
    return int(connection.execute(update(tokens).where(condition).values(revoked_at=datetime.now(UTC))).rowcount)


def ensure_token(connection: Connection, token: str, workspace: str = DEFAULT_WORKSPACE) -> bool:
    """Create ``token`` (the operator's bootstrap token) unless it exists already; True if created."""
    exists = connection.execute(select(tokens.c.id).where(tokens.c.token_hash == hash_token(token))).first()
    if exists is not None:
        return False
    try:
        with connection.begin_nested():
            create_token(connection, workspace, note="bootstrap (MATCHDB_BOOTSTRAP_TOKEN)", token=token)
    except IntegrityError:  # a replica starting at the same moment created it first
        return False
    return True
