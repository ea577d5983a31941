"""One settings object, built from ``MATCHDB_*`` environment variables and passed down explicitly.

Nothing reads the environment anywhere else: the composition roots (``matchdb serve``, the CLI commands) build a
:class:`Settings` once, so tests construct their own without touching ``os.environ``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields

from matchdb.errors import ConfigError
from matchdb.hashing.decode import DEFAULT_MAX_PIXELS

DEFAULT_DATABASE_URL = "sqlite:///matchdb.sqlite3"


@dataclass(frozen=True)
class Settings:
    """Every operator setting; each field is read from ``MATCHDB_<FIELD NAME IN UPPER CASE>``."""

    database_url: str = DEFAULT_DATABASE_URL
    max_pixels: int = DEFAULT_MAX_PIXELS

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read settings from ``environ`` (default ``os.environ``); malformed values raise :class:`ConfigError`."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for field in fields(cls):
            raw = env.get(f"MATCHDB_{field.name.upper()}")
            if raw is None or raw == "":
                continue
            default: object = field.default
            try:
                values[field.name] = int(raw) if isinstance(default, int) else raw
            except ValueError as exc:
                raise ConfigError(f"MATCHDB_{field.name.upper()}={raw!r}: {exc}") from exc
        settings = cls(**values)  # type: ignore[arg-type]
        if settings.max_pixels <= 0:
            raise ConfigError("MATCHDB_MAX_PIXELS must be positive")
        return settings
