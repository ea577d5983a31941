"""``python -m matchdb`` runs the CLI."""

from matchdb.cli.root import main

main()
