"""One way of making HTML pages: Jinja2 templates shipped in ``matchdb/templates``, with autoescaping on.

Every page (the dedupe report, and the pages to come) extends ``base.html``, which holds the shared styles, so a
value is escaped by the template engine rather than by hand, and a missing value is an error, not an empty string.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape


@cache
def environment() -> Environment:
    return Environment(
        loader=PackageLoader("matchdb", "templates"),
        autoescape=select_autoescape(default=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render(template: str, **context: Any) -> str:
    """``template`` (a file name in matchdb/templates) rendered with ``context``."""
    return environment().get_template(template).render(**context)
