"""The ``matchdb`` command line: thin wrappers that parse options, call the library and print results.

``root`` holds the click group and registers every command; ``common`` holds the helpers the commands share (it
imports no command); each other module is one command group. Nothing imports ``root`` back.
"""

from __future__ import annotations

import sys


def run() -> None:
    """The ``matchdb`` command. Importing the commands takes a moment: a Ctrl-C meanwhile exits 130 in one line, as
    one a moment later does, instead of a traceback of the import machinery."""
    try:
        from matchdb.cli.root import main
    except KeyboardInterrupt:
        print("matchdb: interrupted while starting", file=sys.stderr)
        sys.exit(130)
    main()
