"""SIGTERM under steady keep-alive load (issue 25): how long ``matchdb serve`` takes to exit, and what the clients saw.

    .venv/bin/python benchmarks/bench_shutdown.py --workers 2 --clients 16 --load 5 --trials 3

A real ``matchdb serve`` on 127.0.0.1 over a fresh SQLite file. ``--clients`` clients, each with one keep-alive
connection, send cheap requests back to back (``POST /v2/ping``, or ``visualKNN`` on a small collection with
``--op knn``); after ``--load`` seconds the server's supervisor gets SIGTERM and the clients keep sending (a refused
connection is retried after 20 ms) until the server has exited. Per trial it prints the time from SIGTERM to exit,
the answers by status to requests sent after the SIGTERM, the 503s, the last answer's time after SIGTERM, and the
transport errors (a refused or reset connection: the request was not processed).

    .venv/bin/python benchmarks/bench_shutdown.py --scenario late --server uvicorn
    .venv/bin/python benchmarks/bench_shutdown.py --scenario late --server draining

``late``: the cause, made to happen every time (tests/late_connection.py): the real app in a real uvicorn server of
this process (uvicorn's own, or matchdb's ``DrainingServer``) is stopped while its event loop is busy and a new
client connects; that client then sends ``POST /v2/ping`` back to back on its keep-alive connection. Prints the
time from the stop to the server's exit and the late client's answers by status.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import uvicorn  # noqa: E402
from PIL import Image  # noqa: E402

from matchdb.config import Settings  # noqa: E402
from matchdb.storage.database import make_engine, upgrade  # noqa: E402
from matchdb.web.app import create_app  # noqa: E402
from matchdb.web.server import DrainingServer  # noqa: E402
from tests.imagegen import encode, photo_like  # noqa: E402
from tests.late_connection import late_client_run, server_config  # noqa: E402
from tests.servers import matchdb_server  # noqa: E402


@dataclass
class Trial:
    exit_status: int
    exit_seconds: float
    answered_after: dict[str, int]  # status of requests sent after SIGTERM
    errors_after: dict[str, int]  # transport errors of requests sent after SIGTERM
    status_503: int  # any request, before or after
    last_answer_after: float  # seconds from SIGTERM to the end of the last answer


async def client_loop(url: str, body: dict[str, Any], path: str, headers: dict[str, str], stop: asyncio.Event,
                      log: list[tuple[float, float, str]]) -> None:  # fmt: skip
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with httpx.AsyncClient(base_url=url, limits=limits, headers=headers, timeout=60.0) as client:
        while not stop.is_set():
            started = time.monotonic()
            try:
                response = await client.post(path, json=body)
                log.append((started, time.monotonic(), str(response.status_code)))
            except httpx.TransportError as exc:
                log.append((started, time.monotonic(), type(exc).__name__))
                await asyncio.sleep(0.02)


def trial(args: argparse.Namespace) -> Trial:
    env = {"MATCHDB_DRAIN_TIMEOUT": str(args.drain_timeout)}
    with matchdb_server(env, args.workers) as server:
        headers: dict[str, str] = {}
        path, body = "/v2/ping", {}
        if args.op == "knn":
            created = httpx.post(f"{server.url}/v2/collections", json={"name": "bench"}).json()
            headers = {"collection-id": created["id"]}
            pngs = [encode(Image.fromarray(photo_like(64, 48, seed)), "PNG") for seed in range(20)]
            images = [{"_id": str(i), "_base64": base64.b64encode(png).decode()} for i, png in enumerate(pngs)]
            httpx.post(f"{server.url}/v2/insert", json={"records": images}, headers=headers, timeout=60)
            path, body = "/v2/visualKNN", {"query_record": {"_id": "3"}, "k": 5}

        async def scenario() -> tuple[list[tuple[float, float, str]], float, float, int]:
            stop = asyncio.Event()
            log: list[tuple[float, float, str]] = []
            tasks = [asyncio.create_task(client_loop(server.url, body, path, headers, stop, log))
                     for _ in range(args.clients)]  # fmt: skip
            await asyncio.sleep(args.load)
            sent_at = time.monotonic()
            os.kill(server.process.pid, signal.SIGTERM)
            status = await asyncio.to_thread(server.process.wait, args.drain_timeout + 60)
            exited_at = time.monotonic()
            stop.set()
            await asyncio.gather(*tasks)
            return log, sent_at, exited_at, status

        log, sent_at, exited_at, status = asyncio.run(scenario())
    after = [entry for entry in log if entry[0] >= sent_at]
    answers = [entry for entry in log if entry[2].isdigit()]
    return Trial(
        exit_status=status,
        exit_seconds=round(exited_at - sent_at, 2),
        answered_after=dict(Counter(e[2] for e in after if e[2].isdigit())),
        errors_after=dict(Counter(e[2] for e in after if not e[2].isdigit())),
        status_503=sum(e[2] == "503" for e in log),
        last_answer_after=round(max((e[1] for e in answers), default=sent_at) - sent_at, 2),
    )


def late(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-shutdown-") as tmp:
        url = f"sqlite:///{Path(tmp) / 'db.sqlite3'}"
        engine = make_engine(url)
        upgrade(engine)
        engine.dispose()
        config, port = server_config(create_app(Settings(database_url=url)), int(args.drain_timeout))
        server = uvicorn.Server(config) if args.server == "uvicorn" else DrainingServer(config)
        seen = late_client_run(server, port, max_requests=10**6)
    return {
        "server": args.server,
        "exit_seconds": round(seen.exit_seconds, 2),
        "late_client_answers": dict(Counter(str(status) for status in seen.statuses)),
        "closed_by_server": seen.closed_by_server,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--load", type=float, default=5.0, help="seconds of load before SIGTERM")
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--op", choices=("ping", "knn"), default="ping")
    parser.add_argument("--drain-timeout", type=float, default=30.0, help="MATCHDB_DRAIN_TIMEOUT")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures as JSON to this path")
    parser.add_argument("--scenario", choices=("load", "late"), default="load")
    parser.add_argument("--server", choices=("uvicorn", "draining"), default="draining", help="late: which server")
    args = parser.parse_args()
    print(f"# {platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    if args.scenario == "late":
        figures = late(args)
        print(json.dumps(figures))
        if args.json is not None:
            args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, **figures}, indent=2))
        return
    print(f"# --workers {args.workers}, {args.clients} keep-alive clients of {args.op}, SIGTERM after {args.load:g} s")
    trials = []
    for number in range(args.trials):
        result = trial(args)
        trials.append(asdict(result))
        print(f"trial {number + 1}: {json.dumps(asdict(result))}")
    if args.json is not None:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "trials": trials}, indent=2))


if __name__ == "__main__":
    main()
