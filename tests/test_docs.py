"""Documentation stays in step with the code: every setting and every CLI command is documented."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import click

from matchdb.cli.root import main
from matchdb.config import Settings

ROOT = Path(__file__).resolve().parents[1]


def test_every_setting_is_documented() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text()
    missing = [f.name for f in fields(Settings) if f"`MATCHDB_{f.name.upper()}`" not in text]
    assert missing == []


def _commands(group: click.Group, prefix: str = "") -> list[str]:
    names = []
    for name, command in group.commands.items():
        full = f"{prefix}{name}"
        names.append(full)
        if isinstance(command, click.Group):
            names.extend(_commands(command, full + " "))
    return names


def test_every_cli_command_is_documented() -> None:
    text = (ROOT / "README.md").read_text() + (ROOT / "docs" / "cli.md").read_text()
    missing = [name for name in _commands(main) if f"matchdb {name}" not in text]
    assert missing == []


def test_readme_links_resolve() -> None:
    import re

    readme = (ROOT / "README.md").read_text()
    for link in re.findall(r"\]\(([^)#]+)\)", readme):
        if not link.startswith("http"):
            assert (ROOT / link).exists(), link
