"""One settings object, built from ``MATCHDB_*`` environment variables and passed down explicitly.

Nothing reads the environment anywhere else: the composition roots (``matchdb serve``, the CLI commands) build a
:class:`Settings` once, so tests construct their own without touching ``os.environ``. Every field is documented in
docs/configuration.md (a test keeps the two in step).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, get_type_hints

import platformdirs

from matchdb.errors import ConfigError
from matchdb.hashing.decode import DEFAULT_MAX_PIXELS

#: The file name of the embedded database, in the user's data directory (and, before 0.2, in the working directory).
DATABASE_FILE = "matchdb.sqlite3"
MIB = 1024 * 1024


@dataclass(frozen=True)
class DefaultDatabase:
    """Where the embedded database is when ``MATCHDB_DATABASE_URL`` is not set, and whether that is an old
    ``./matchdb.sqlite3`` in the working directory (used so that nobody loses data on upgrade)."""

    url: str
    path: Path
    legacy: bool


def data_dir() -> Path:
    """The user's matchdb folder (``~/.local/share/matchdb`` on Linux): the default database and reports live there."""
    return Path(platformdirs.user_data_dir("matchdb", appauthor=False))


def default_database(cwd: Path | None = None) -> DefaultDatabase:
    """One SQLite file per user, whatever folder a command runs from: ``<user data dir>/matchdb.sqlite3``
    (``~/.local/share/matchdb`` on Linux, ``$XDG_DATA_HOME`` respected). An existing ``matchdb.sqlite3`` in ``cwd``
    (the default before the data directory) wins, so an upgrade never hides a user's collections."""
    legacy = (cwd or Path.cwd()) / DATABASE_FILE
    if legacy.is_file():
        path, is_legacy = legacy.resolve(), True
    else:
        path, is_legacy = data_dir() / DATABASE_FILE, False
    return DefaultDatabase(f"sqlite:///{path}", path, is_legacy)


@dataclass(frozen=True)
class Settings:
    """Every operator setting; each field is read from ``MATCHDB_<FIELD NAME IN UPPER CASE>``."""

    database_url: str = ""  # empty: default_database()
    bootstrap_token: str = ""
    max_records: int = 100
    max_body_bytes: int = 64 * MIB
    max_json_values: int = 100_000  # values (objects, arrays, strings, numbers...) in one request body
    max_json_depth: int = 32  # nesting of arrays and objects in one request body
    parse_concurrency: int = 2  # large bodies parsed at once per server process (off the event loop)
    max_k: int = 1000  # records one query may ask for: k, random's count, allIDs' page_size
    max_answer_records: int = 10_000  # records in one answer: k x queries of a visualKNN batch
    max_attribute_bytes: int = 64 * 1024  # one record's stored attributes, as JSON (insert and update)
    max_filter_keys: int = 20
    max_filter_values: int = 1000  # values of all a filter's $in lists together
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_download_bytes: int = 20 * MIB
    fetch_connect_timeout: float = 5.0
    fetch_read_timeout: float = 15.0
    fetch_attempts: int = 3
    fetch_max_redirects: int = 5
    fetch_allow: tuple[str, ...] = ()
    fetch_concurrency: int = 16
    hash_threads: int = 0  # 0: one per CPU core
    index_wait: float = 30.0
    index_folder: str = ""  # index segments (docs/scaling.md); empty: beside the SQLite file or the data folder; off
    database_timeout: float = 10.0
    write_attempts: int = 3
    drain_timeout: float = 30.0
    thumbnails: bool = True
    log_format: str = "text"  # text or json: the access and error log lines (docs/operations.md)
    metrics: str = "open"  # open, token (GET /metrics needs an API token) or off (no /metrics)
    metrics_token: str = ""  # the operator's credential for /metrics with per-collection series (docs/security.md)
    allowed_hosts: tuple[str, ...] = ()  # Host names served; empty: matchdb serve decides (docs/security.md)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read settings from ``environ`` (default ``os.environ``); malformed values raise :class:`ConfigError`."""
        env = os.environ if environ is None else environ
        hints = get_type_hints(cls)
        values: dict[str, Any] = {}
        for field in fields(cls):
            name = f"MATCHDB_{field.name.upper()}"
            raw = env.get(name)
            if raw is None or raw.strip() == "":
                continue
            values[field.name] = _parse(name, raw.strip(), hints[field.name])
        settings = replace(cls(**values), **overrides)
        if not settings.database_url:
            settings = replace(settings, database_url=default_database().url)
        settings.validate()
        return settings

    def validate(self) -> None:
        positive = ["max_records", "max_body_bytes", "max_pixels", "max_download_bytes", "fetch_attempts"]
        positive += ["database_timeout", "write_attempts", "drain_timeout", "max_json_values", "max_json_depth"]
        positive += ["parse_concurrency", "max_k", "max_answer_records", "max_filter_keys", "max_filter_values"]
        positive += ["max_attribute_bytes"]
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"MATCHDB_{name.upper()} must be positive")
        if self.fetch_connect_timeout <= 0 or self.fetch_read_timeout <= 0:
            raise ConfigError("fetch timeouts must be positive")
        if self.index_wait < 0:
            raise ConfigError("MATCHDB_INDEX_WAIT must not be negative")
        if self.log_format not in ("text", "json"):
            raise ConfigError("MATCHDB_LOG_FORMAT must be text or json")
        if self.metrics not in ("open", "token", "off"):
            raise ConfigError("MATCHDB_METRICS must be open, token or off")
        for pattern in self.allowed_hosts:
            if "*" in pattern[1:] or (pattern.startswith("*") and pattern != "*" and not pattern.startswith("*.")):
                raise ConfigError(f"MATCHDB_ALLOWED_HOSTS: {pattern!r} is not a name, '*' or '*.domain'")
        if self.fetch_max_redirects < 0 or self.hash_threads < 0 or self.fetch_concurrency <= 0:
            raise ConfigError("MATCHDB_FETCH_MAX_REDIRECTS and MATCHDB_HASH_THREADS must not be negative")

    @property
    def hash_workers(self) -> int:
        return self.hash_threads or (os.cpu_count() or 1)


def _parse(name: str, raw: str, kind: Any) -> Any:
    try:
        if kind is int:
            return int(raw)
        if kind is float:
            return float(raw)
        if kind is bool:
            return _boolean(raw)
        if kind == tuple[str, ...]:
            return tuple(part.strip() for part in raw.split(",") if part.strip())
        return raw
    except ValueError as exc:
        raise ConfigError(f"{name}={raw!r} is not a valid {getattr(kind, '__name__', kind)}") from exc


def _boolean(raw: str) -> bool:
    value = raw.lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)
