"""matchdb's exceptions: one base class, so callers can catch everything of ours at once.

    MatchdbError
    ├── ImageError          image bytes that cannot become pixels (corrupt, truncated, too large, not an image)
    ├── ConfigError         a setting that is missing or malformed
    └── DatabaseUnavailable the database cannot answer now (down, restarting, or busy past the retries): a 503

A record that fails inside a batch is reported as a value (its ``_status``), not raised further: the web and CLI
layers map these exceptions to responses in one place each.
"""

from __future__ import annotations


class MatchdbError(Exception):
    """Base class of every error matchdb raises on purpose."""


class ImageError(MatchdbError):
    """The bytes given are not an image we can decode (or decoding it would exceed a limit)."""


class ConfigError(MatchdbError):
    """A setting from the environment or the command line is invalid."""


class DatabaseUnavailable(MatchdbError):
    """The database is down, restarting or too busy right now. Worth retrying after ``retry_after`` seconds (the web
    layer answers 503 with that ``Retry-After``): writes are upserts and deletes by ``_id``, so a retry is safe even
    when a connection was lost during a commit and the first try's outcome is unknown."""

    def __init__(self, text: str, retry_after: int = 1) -> None:
        super().__init__(text)
        self.retry_after = retry_after
