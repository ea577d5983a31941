"""matchdb's exceptions: one base class, so callers can catch everything of ours at once.

    MatchdbError
    ├── ImageError          image bytes that cannot become pixels (corrupt, truncated, too large, not an image)
    └── ConfigError         a setting that is missing or malformed

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
