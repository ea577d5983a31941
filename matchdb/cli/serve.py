"""``matchdb serve``: migrate once, then run the API under uvicorn."""

from __future__ import annotations

import ipaddress
import os
import sys

import click
from sqlalchemy.engine import make_url

from matchdb.cli.common import load_settings, open_engine
from matchdb.storage import tokens as token_store

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1", "[::1]")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def allowed_hosts(configured: tuple[str, ...], host: str, tokens_exist: bool) -> tuple[str, ...]:
    """The ``Host`` names to answer: ``MATCHDB_ALLOWED_HOSTS`` if set; else loopback names while the service is open
    or bound to loopback (no page can then reach it by DNS rebinding), else any (a proxy in front names it)."""
    if configured:
        return configured
    return LOOPBACK_NAMES if not tokens_exist or _is_loopback(host) else ("*",)


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=8000, show_default=True, type=int, help="Port to bind.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1), help="Worker processes.")
@click.option(
    "--insecure-open",
    is_flag=True,
    help="Allow serving a non-loopback address while no API token exists (anyone who can connect gets in).",
)
def serve(host: str, port: int, workers: int, insecure_open: bool) -> None:
    """Serve the Ximilar-compatible API with uvicorn.

    The database schema is brought up to date first, once, before any worker starts; MATCHDB_BOOTSTRAP_TOKEN is
    created if missing. Without any token the API is open, which is only allowed on a loopback address.
    """
    from matchdb.web import server

    try:  # first, before the database or any index is touched: a taken port is one line, not a wall of tracebacks
        listener = server.listen(host, port)
    except server.PortInUse:
        click.echo(
            f"matchdb serve: port {port} on {host} is already in use (another `matchdb serve`?); stop it, or choose "
            f"another port: matchdb serve --port {port + 1}",
            err=True,
        )
        sys.exit(server.STARTUP_FAILURE)
    settings = load_settings()
    if settings.bootstrap_token and len(settings.bootstrap_token) < token_store.MIN_TOKEN_LENGTH:
        raise click.UsageError(f"MATCHDB_BOOTSTRAP_TOKEN must have at least {token_store.MIN_TOKEN_LENGTH} characters")
    engine = open_engine(settings)
    with engine.begin() as connection:
        if settings.bootstrap_token:
            token_store.ensure_token(connection, settings.bootstrap_token)
        tokens_exist = token_store.any_token_ever(connection)
    engine.dispose()
    if not tokens_exist and not _is_loopback(host) and not insecure_open:
        raise click.UsageError(
            f"refusing to serve {host} with no API token: create one (matchdb token create), set "
            "MATCHDB_BOOTSTRAP_TOKEN, or pass --insecure-open"
        )
    if not tokens_exist:
        click.echo("matchdb: no API token exists, the API is open to anyone who can connect", err=True)

    # The app reads its settings from the environment in each worker: hand it the database chosen here (--database,
    # or the per-user default resolved from this folder), so every worker opens the same one.
    os.environ["MATCHDB_DATABASE_URL"] = settings.database_url
    os.environ["MATCHDB_ALLOWED_HOSTS"] = ",".join(allowed_hosts(settings.allowed_hosts, host, tokens_exist))
    click.echo(f"matchdb: database {make_url(settings.database_url).render_as_string(hide_password=True)}", err=True)
    server.run(listener, workers, settings.drain_timeout)
