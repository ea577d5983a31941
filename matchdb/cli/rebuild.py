"""``matchdb rebuild-index``: ask running servers to rebuild their indexes, or build and check them offline."""

from __future__ import annotations

import sys

import click

from matchdb.cli.common import load_settings, open_engine, resolve_collection


@click.command("rebuild-index")
@click.option("--collection", "key", help="Collection name or id (default: every collection).")
@click.option("--timeout", default=300.0, show_default=True, help="Seconds to wait for the running servers.")
@click.option("--fresh", default=10.0, show_default=True, help="Servers with a heartbeat this recent count.")
def rebuild_index(key: str | None, timeout: float, fresh: float) -> None:
    """Rebuild the in-memory indexes (admin).

    Running servers are asked through the change log to rebuild in the background and swap the new indexes in
    atomically (queries are answered throughout); this waits until every server with a fresh heartbeat reports the
    new generation. With no server running, the indexes are built here, offline, checked against a brute-force
    scan, and their size, build time and memory are printed; with an index folder (``MATCHDB_INDEX_FOLDER``) the
    build is written as the collection's next segment generation, which the next server start maps.
    """
    from matchdb.service import rebuild
    from matchdb.service.segments import segment_store
    from matchdb.storage.changes import ALL_COLLECTIONS
    from matchdb.storage.collections import list_collections

    settings = load_settings()
    engine = open_engine(settings)
    if key is None:
        with engine.connect() as connection:
            targets = [info.id for info in list_collections(connection)]
    else:
        targets = [resolve_collection(engine, None, key, offer_create=False).id]
    servers = rebuild.running_servers(engine, fresh)
    if not servers:
        click.echo("no server is running: building offline", err=True)
        failed = False
        for collection_id in targets:
            offline = rebuild.offline_rebuild(
                engine, collection_id, segments=segment_store(settings.index_folder, engine)
            )
            per_record = offline.memory_bytes / offline.records if offline.records else 0
            click.echo(
                f"{collection_id}: {offline.records} records, built in {offline.build_seconds:.2f} s, "
                f"{offline.memory_bytes / 1e6:.1f} MB ({per_record:.0f} bytes/record); check: "
                f"{offline.checked_queries} k-NN queries, {offline.mismatches} differ from brute force"
            )
            if offline.segment_generation:
                click.echo(f"{collection_id}: segment generation {offline.segment_generation} written")
            failed |= offline.mismatches > 0
        if failed:
            sys.exit(1)
        return
    seq = rebuild.request_rebuild(engine, ALL_COLLECTIONS if key is None else targets[0])

    last: list[tuple[int, int]] = []

    def progress(done: int, total: int) -> None:
        if [(done, total)] != last:
            last[:] = [(done, total)]
            click.echo(f"{done}/{total} servers rebuilt", err=True)

    result = rebuild.wait_for_servers(engine, seq, fresh, timeout, progress)
    for server in result.servers:
        state = "rebuilt" if server.generation >= seq else "NOT rebuilt"
        took = f" in {server.rebuild_seconds:.2f} s" if server.rebuild_seconds is not None else ""
        click.echo(f"{server.id} ({server.host} pid {server.pid}): {state}{took}, {server.records} records")
    if not result.done:
        raise click.ClickException(f"not every server rebuilt within {timeout:g} s")
    click.echo(f"generation {seq}: {len(result.servers)} servers rebuilt in {result.waited:.2f} s")
