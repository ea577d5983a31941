"""``python -m matchdb`` runs the CLI."""

from matchdb.cli import run

run()
