"""``matchdb token``: create, list and revoke API tokens."""

from __future__ import annotations

import json
import sys

import click

from matchdb.cli.common import load_settings, open_engine
from matchdb.storage import tokens as token_store


@click.group()
def token() -> None:
    """Manage API tokens (stored hashed; a token is shown once, when created)."""


@token.command("create")
@click.option(
    "--workspace",
    default=token_store.DEFAULT_WORKSPACE,
    show_default=True,
    help="The workspace the token works in: it sees and changes only that workspace's collections.",
)
@click.option("--read-only", is_flag=True, help="The token may read but not write.")
@click.option("--note", default="", help="A note to recognise the token by in `matchdb token list`.")
@click.option("-q", "--quiet", is_flag=True, help="Print only the token, e.g. for TOKEN=$(matchdb token create -q).")
def token_create(workspace: str, read_only: bool, note: str, quiet: bool) -> None:
    """Create a token and print it (the only time it is shown) on stdout; what it is for goes to stderr.

    When stdout is captured (TOKEN=$(matchdb token create)) and stderr is a terminal, the token is shown on stderr
    too: otherwise its only copy would be a shell variable that dies with the terminal.
    """
    with open_engine(load_settings()).begin() as connection:
        value, info = token_store.create_token(connection, workspace, read_only, note)
    click.echo(value)
    if quiet:
        return
    rights = " (read-only)" if read_only else ""
    shown = f": {value}" if not sys.stdout.isatty() and sys.stderr.isatty() else ""
    click.echo(
        f"created token {info.id} for workspace {info.workspace!r}{rights}{shown}\n"
        "keep it now (a password manager, or the environment of your client): it is not shown again",
        err=True,
    )


@token.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines instead of a table.")
def token_list(as_json: bool) -> None:
    """List tokens (id, prefix, workspace, rights, state), never the tokens themselves."""
    with open_engine(load_settings()).connect() as connection:
        infos = token_store.list_tokens(connection)
    line = "{:>4}  {:<14} {:<16} {:<10} {:<31} {}"
    if infos and not as_json:
        click.echo(line.format("id", "prefix", "workspace", "rights", "state", "note"))
    elif not infos:
        click.echo("no tokens yet: the API is open on loopback (create one with `matchdb token create`)", err=True)
    for info in infos:
        state = f"revoked {info.revoked_at.isoformat(timespec='seconds')}" if info.revoked_at else "active"
        rights = "read-only" if info.read_only else "read-write"
        if as_json:
            row = {"id": info.id, "prefix": info.prefix, "workspace": info.workspace, "read_only": info.read_only}
            click.echo(json.dumps({**row, "state": state, "note": info.note}))
        else:
            click.echo(line.format(info.id, f"{info.prefix}...", info.workspace, rights, state, info.note))


@token.command("revoke")
@click.argument("key")
def token_revoke(key: str) -> None:
    """Revoke the token with id or prefix KEY."""
    with open_engine(load_settings()).begin() as connection:
        count = token_store.revoke_token(connection, key)
    if count <= 0:
        reason = "no active token matches" if count == 0 else f"{-count} active tokens match; give more of the prefix"
        raise click.ClickException(f"{reason} {key!r} (`matchdb token list` shows ids and prefixes)")
    click.echo(f"revoked {count} token")
    with open_engine(load_settings()).connect() as connection:
        active = sum(1 for info in token_store.list_tokens(connection) if info.revoked_at is None)
    if active == 0:
        click.echo(
            "no active token is left: the API now refuses every request (it does not reopen). To get back in, "
            "create a token here with `matchdb token create`: it writes to the database directly, no API call needed.",
            err=True,
        )
