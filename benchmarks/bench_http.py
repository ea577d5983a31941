"""Throughput and latency of ``POST /v2/visual_hash`` over HTTP, next to the same service call in-process.

Run from the repository root:

    .venv/bin/python benchmarks/bench_http.py --corpus ../shared/corpus

Request bodies are built once: photos/*.jpg from the corpus, resized with Pillow to 512 px on the long side,
re-encoded as JPEG quality 90 and sent as ``_base64``, 10 records per request, 20 distinct bodies used in turn.

Every measurement is a closed loop with ``--concurrency`` calls in flight, run for ``--warmup`` seconds and then
for ``--duration`` measured seconds; a call counts in the window when it completes inside it.

* in-process: the app's own :class:`~matchdb.service.records.ImageLoader` (built as ``matchdb.web.app`` builds it,
  ``Settings()`` defaults) awaiting ``load_many`` + ``service.stateless.visual_hash`` on the already decoded
  records lists: the ceiling HTTP can reach on this machine.
* http: a real ``matchdb serve --workers N`` subprocess on 127.0.0.1 (temporary SQLite database, open mode, no
  ``MATCHDB_*`` variables inherited), driven from this one process by an asyncio ``httpx.AsyncClient``. Any
  exception, non-200 answer or malformed answer is an error.

The load generator's CPU share (``getrusage`` of this process over the window / wall time, percent of one core)
is reported because client and server share the machine's cores; the server's CPU comes from /proc/<pid>/stat
of the ``matchdb serve`` process and all its descendants.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import json
import os
import platform
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import PIL
import PIL.Image

from matchdb.config import Settings
from matchdb.fetch import Fetcher
from matchdb.service import stateless as service
from matchdb.service.records import ImageLoader, fetcher_from_settings, loader_from_settings

REPO_ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
KINDS = ("bmh1", "phash")
ENDPOINT = "/v2/visual_hash"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# One call of the loop: the body index in, (ok, the server's own "processing time" in seconds if known) out.
Call = Callable[[int], Awaitable[tuple[bool, float | None]]]


@dataclass(frozen=True)
class Workload:
    """The request bodies: raw JSON bytes (for HTTP) and their decoded records lists (for in-process)."""

    bodies: list[bytes]
    records: list[list[dict[str, Any]]]
    images_per_request: int
    distinct_images: int
    mean_image_kb: float
    mean_body_kb: float


@dataclass(frozen=True)
class RunStats:
    """Figures of one measured window; CPU shares are percent of one core."""

    label: str
    mode: str
    workers: int | None
    concurrency: int
    window_s: float
    requests: int
    errors: int
    requests_per_s: float
    images_per_s: float
    p50_ms: float
    p99_ms: float
    mean_ms: float
    client_cpu_pct: float
    server_cpu_pct: float | None
    server_processing_p50_ms: float | None


@dataclass
class Window:
    """The measured window of a closed loop and what happened in it."""

    start: float = float("inf")
    end: float = float("inf")
    latencies: list[float] = field(default_factory=list)
    server_times: list[float] = field(default_factory=list)
    errors: int = 0
    cpu_start: float = 0.0
    cpu_end: float = 0.0
    server_ticks: dict[int, int] = field(default_factory=dict)
    server_delta_ticks: int | None = None


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Read the command line; the corpus default follows the test suite's MATCHDB_TEST_CORPUS convention."""
    default_corpus = os.environ.get("MATCHDB_TEST_CORPUS") or str(REPO_ROOT.parent / "shared" / "corpus")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=Path(default_corpus), help="corpus directory (photos/)")
    parser.add_argument("--concurrency", type=int, default=4, help="calls in flight (default 4)")
    parser.add_argument("--duration", type=float, default=15.0, help="measured seconds per run (default 15)")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each run (default 2)")
    parser.add_argument("--workers", default="1,2", help="comma-separated server worker counts (default 1,2)")
    parser.add_argument("--bodies", type=int, default=20, help="distinct request bodies (default 20)")
    parser.add_argument("--images", type=int, default=10, help="records per request (default 10)")
    parser.add_argument("--size", type=int, default=512, help="long side of the images in px (default 512)")
    parser.add_argument("--json", type=Path, default=None, help="also write all figures as JSON to this path")
    args = parser.parse_args(argv)
    if args.concurrency < 1 or args.bodies < 1 or args.images < 1 or args.size < 8:
        parser.error("--concurrency, --bodies and --images must be at least 1, --size at least 8")
    if args.duration <= 0 or args.warmup < 0:
        parser.error("--duration must be positive and --warmup not negative")
    try:
        args.worker_counts = [int(part) for part in args.workers.split(",") if part.strip()]
    except ValueError:
        parser.error("--workers must be comma-separated integers")
    if not args.worker_counts or min(args.worker_counts) < 1:
        parser.error("--workers needs at least one count, each at least 1")
    return args


def encode_photo(path: Path, size: int) -> str:
    """The photo scaled to ``size`` px on its long side, as base64 of a quality-90 JPEG."""
    with PIL.Image.open(path) as opened:
        im = opened.convert("RGB")
    scale = size / max(im.size)
    im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), PIL.Image.Resampling.LANCZOS)
    out = io.BytesIO()
    im.save(out, format="JPEG", quality=90)
    return base64.b64encode(out.getvalue()).decode("ascii")


def build_workload(corpus: Path, bodies: int, per_request: int, size: int) -> Workload:
    """Distinct bodies cycling through the corpus photos; only the photos actually used are encoded."""
    paths = sorted((corpus / "photos").glob("*.jpg"))
    if not paths:
        raise SystemExit(f"no photos/*.jpg in {corpus}")
    paths = paths[: bodies * per_request]
    encoded = [encode_photo(p, size) for p in paths]
    records = [
        [{"_id": f"b{b}-r{j}", "_base64": encoded[(b * per_request + j) % len(encoded)]} for j in range(per_request)]
        for b in range(bodies)
    ]
    raw = [json.dumps({"records": recs, "hash_type": list(KINDS)}).encode() for recs in records]
    # The in-process side gets what the server's handler gets: the records list of the decoded JSON body.
    decoded = [json.loads(body)["records"] for body in raw]
    return Workload(
        bodies=raw,
        records=decoded,
        images_per_request=per_request,
        distinct_images=len(encoded),
        mean_image_kb=sum(len(e) * 3 / 4 for e in encoded) / len(encoded) / 1024,
        mean_body_kb=sum(len(b) for b in raw) / len(raw) / 1024,
    )


def own_cpu_seconds() -> float:
    """User + system CPU of this process (all its threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def proc_table() -> dict[int, tuple[int, int]]:
    """Every readable process: pid -> (parent pid, user + system clock ticks)."""
    table: dict[int, tuple[int, int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        rest = stat.rpartition(")")[2].split()  # the command name may hold spaces; fields resume after ")"
        table[int(entry.name)] = (int(rest[1]), int(rest[11]) + int(rest[12]))
    return table


def tree_ticks(root: int) -> dict[int, int]:
    """CPU clock ticks of ``root`` and each of its descendants."""
    table = proc_table()
    found: dict[int, int] = {}
    pending = [root]
    while pending:
        pid = pending.pop()
        if pid in table and pid not in found:
            found[pid] = table[pid][1]
            pending.extend(child for child, (parent, _) in table.items() if parent == pid)
    return found


async def closed_loop(
    call: Call, n_bodies: int, concurrency: int, warmup: float, duration: float, root: int | None
) -> Window:
    """Keep ``concurrency`` calls in flight for warm-up + duration; record the calls completing in the window."""
    window = Window()
    stop = asyncio.Event()
    turn = iter(range(1 << 62))

    async def worker() -> None:
        clock = time.perf_counter
        while not stop.is_set():
            index = next(turn) % n_bodies
            started = clock()
            try:
                ok, server_s = await call(index)
            except Exception:
                ok, server_s = False, None
            done = clock()
            if not ok:
                window.errors += 1  # counted over the whole run, warm-up included
            elif window.start <= done <= window.end:
                window.latencies.append(done - started)
                if server_s is not None:
                    window.server_times.append(server_s)

    async def timer() -> None:
        await asyncio.sleep(warmup)
        if root is not None:
            window.server_ticks = tree_ticks(root)
        window.cpu_start = own_cpu_seconds()
        window.start = time.perf_counter()
        await asyncio.sleep(duration)
        window.end = time.perf_counter()
        window.cpu_end = own_cpu_seconds()
        if root is not None:
            after = tree_ticks(root)
            window.server_delta_ticks = sum(t - window.server_ticks.get(pid, 0) for pid, t in after.items())
        stop.set()

    await asyncio.gather(timer(), *(worker() for _ in range(concurrency)))
    return window


def summarise(label: str, mode: str, workers: int | None, concurrency: int, per_request: int, w: Window) -> RunStats:
    """Turn one window's raw timings into the reported figures."""
    wall = w.end - w.start
    lat = np.array(w.latencies) * 1000.0 if w.latencies else np.array([float("nan")])
    server_cpu = None if w.server_delta_ticks is None else 100.0 * w.server_delta_ticks / CLOCK_TICKS / wall
    server_p50 = float(np.median(w.server_times)) * 1000.0 if w.server_times else None
    return RunStats(
        label=label,
        mode=mode,
        workers=workers,
        concurrency=concurrency,
        window_s=wall,
        requests=len(w.latencies),
        errors=w.errors,
        requests_per_s=len(w.latencies) / wall,
        images_per_s=len(w.latencies) * per_request / wall,
        p50_ms=float(np.percentile(lat, 50)),
        p99_ms=float(np.percentile(lat, 99)),
        mean_ms=float(np.mean(lat)),
        client_cpu_pct=100.0 * (w.cpu_end - w.cpu_start) / wall,
        server_cpu_pct=server_cpu,
        server_processing_p50_ms=server_p50,
    )


def make_loader(settings: Settings) -> tuple[ImageLoader, Fetcher, ThreadPoolExecutor]:
    """The loader exactly as the app's lifespan builds it (must run inside the event loop that uses it)."""
    executor = ThreadPoolExecutor(max_workers=settings.hash_workers, thread_name_prefix="matchdb-hash")
    fetcher = fetcher_from_settings(settings)
    return loader_from_settings(settings, fetcher, executor), fetcher, executor


async def run_in_process(work: Workload, args: argparse.Namespace) -> RunStats:
    """The service function with the same parallelism, no HTTP: load_many + visual_hash per call."""
    loader, fetcher, executor = make_loader(Settings())

    async def call(index: int) -> tuple[bool, float | None]:
        loaded = await loader.load_many(work.records[index], KINDS, assign_id=True)
        out = service.visual_hash(loaded, KINDS)
        ok = all(item.failure is None for item in loaded) and all(kind in r for r in out for kind in KINDS)
        return ok, None

    try:
        window = await closed_loop(call, len(work.records), args.concurrency, args.warmup, args.duration, None)
    finally:
        await fetcher.aclose()
        executor.shutdown(wait=True)
    return summarise("in-process", "in-process", None, args.concurrency, work.images_per_request, window)


def free_port() -> int:
    """A port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def server_env(database: Path) -> dict[str, str]:
    """The environment without any MATCHDB_* setting (Settings defaults, as in-process) but a temporary database."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MATCHDB_")}
    env["MATCHDB_DATABASE_URL"] = f"sqlite:///{database}"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def wait_healthy(proc: subprocess.Popen[bytes], port: int, workers: int, log: Path, timeout: float = 60.0) -> None:
    """Poll GET /healthz until it answers 200 and every worker process exists; fail early if the server dies."""
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=f"http://{HOST}:{port}", timeout=2.0, trust_env=False) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"matchdb serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                healthy = client.get("/healthz").status_code == 200
            except httpx.HTTPError:
                healthy = False
            if healthy and (workers == 1 or len(tree_ticks(proc.pid)) > workers):
                return
            time.sleep(0.2)
    raise SystemExit(f"matchdb serve did not become healthy in {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server (uvicorn stops its workers), then kill whatever of its own tree is left."""
    pids = list(tree_ticks(proc.pid))
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    for pid in pids:
        if pid != proc.pid and pid in proc_table():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def check_answer(response: httpx.Response, expected: int) -> tuple[bool, float | None]:
    """A good answer is HTTP 200 with status 200 and every record hashed with every requested kind."""
    if response.status_code != 200:
        return False, None
    body = response.json()
    records = body.get("records")
    ok = (
        body.get("status", {}).get("code") == 200
        and isinstance(records, list)
        and len(records) == expected
        and all(kind in r for r in records for kind in KINDS)
    )
    return ok, body.get("statistics", {}).get("processing time")


async def drive_http(port: int, pid: int, work: Workload, args: argparse.Namespace) -> Window:
    """The load generator: one httpx.AsyncClient, ``concurrency`` keep-alive connections."""
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
    headers = {"Content-Type": "application/json"}
    async with httpx.AsyncClient(
        base_url=f"http://{HOST}:{port}", limits=limits, timeout=60.0, trust_env=False
    ) as client:

        async def call(index: int) -> tuple[bool, float | None]:
            response = await client.post(ENDPOINT, content=work.bodies[index], headers=headers)
            return check_answer(response, work.images_per_request)

        return await closed_loop(call, len(work.bodies), args.concurrency, args.warmup, args.duration, pid)


def run_http(workers: int, work: Workload, args: argparse.Namespace) -> RunStats:
    """Start ``matchdb serve --workers N`` on a free port with a fresh SQLite database, load it, stop it."""
    with tempfile.TemporaryDirectory(prefix="matchdb-bench-http-") as tmp:
        log = Path(tmp) / "server.log"
        port = free_port()
        command = [sys.executable, "-m", "matchdb", "serve", "--host", HOST, "--port", str(port)]
        with log.open("wb") as sink:
            proc = subprocess.Popen(
                [*command, "--workers", str(workers)],
                cwd=REPO_ROOT,
                env=server_env(Path(tmp) / "matchdb.sqlite3"),
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_healthy(proc, port, workers, log)
            window = asyncio.run(drive_http(port, proc.pid, work, args))
        finally:
            stop_server(proc)
    return summarise(f"http {workers}w", "http", workers, args.concurrency, work.images_per_request, window)


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo, falling back to platform when it is unavailable."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def version_of(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine_facts() -> dict[str, Any]:
    """Facts needed to compare runs across machines and library versions."""
    return {
        "cpu": cpu_model(),
        "nproc": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "uvicorn": version_of("uvicorn"),
        "starlette": version_of("starlette"),
        "httpx": version_of("httpx"),
        "h11": version_of("h11"),
        "httptools": version_of("httptools"),
        "uvloop": version_of("uvloop"),
        "pillow": PIL.__version__,
        "numpy": np.__version__,
        "hash_workers": Settings().hash_workers,
    }


def print_facts(facts: dict[str, Any], work: Workload, args: argparse.Namespace) -> None:
    """Print the machine facts and the workload."""
    print("machine:")
    for key, value in facts.items():
        print(f"  {key:<15} {value}")
    print(
        f"workload: {len(work.bodies)} bodies x {work.images_per_request} images ({work.distinct_images} distinct,"
        f" {args.size} px, mean {work.mean_image_kb:.1f} KiB JPEG, mean body {work.mean_body_kb:.0f} KiB);"
        f" concurrency {args.concurrency}, warm-up {args.warmup:g} s, window {args.duration:g} s"
    )


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(runs: Sequence[RunStats]) -> None:
    """One row per run."""
    print(
        f"\n  {'run':<11} {'req/s':>7} {'img/s':>7} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8} {'errors':>6}"
        f" {'client cpu%':>11} {'server cpu%':>11} {'srv p50 ms':>10}"
    )
    for r in runs:
        print(
            f"  {r.label:<11} {r.requests_per_s:>7.2f} {r.images_per_s:>7.1f} {r.p50_ms:>8.1f} {r.p99_ms:>8.1f}"
            f" {r.mean_ms:>8.1f} {r.errors:>6} {r.client_cpu_pct:>11.1f} {fmt(r.server_cpu_pct, '>11.1f'):>11}"
            f" {fmt(r.server_processing_p50_ms, '>10.1f'):>10}"
        )
    print("  (in-process: 'client cpu%' is the whole process doing the work; srv p50 = server's own processing time)")


def ratios(runs: Sequence[RunStats]) -> dict[str, float]:
    """HTTP images/s over in-process images/s, per worker count."""
    base = next(r for r in runs if r.mode == "in-process")
    return {f"http_{r.workers}w_over_in_process": r.images_per_s / base.images_per_s for r in runs if r.mode == "http"}


def write_json(
    path: Path, facts: dict[str, Any], args: argparse.Namespace, work: Workload, runs: list[RunStats]
) -> None:
    """Write every printed figure as JSON for later comparison between runs."""
    payload = {
        "machine": facts,
        "corpus": str(args.corpus.resolve()),
        "settings": {
            "concurrency": args.concurrency,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "size_px": args.size,
            "bodies": len(work.bodies),
            "images_per_request": work.images_per_request,
            "distinct_images": work.distinct_images,
            "mean_image_kb": work.mean_image_kb,
            "mean_body_kb": work.mean_body_kb,
        },
        "runs": [asdict(r) for r in runs],
        "ratios": ratios(runs),
    }
    path.write_text(json.dumps(payload, indent=2) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Build the bodies, measure in-process then HTTP at each worker count, print the comparison."""
    args = parse_args(argv)
    facts = machine_facts()
    work = build_workload(args.corpus.resolve(), args.bodies, args.images, args.size)
    print_facts(facts, work, args)
    print("timing in-process...", file=sys.stderr, flush=True)
    runs = [asyncio.run(run_in_process(work, args))]
    for workers in args.worker_counts:
        print(f"timing http with {workers} worker(s)...", file=sys.stderr, flush=True)
        runs.append(run_http(workers, work, args))
    print_table(runs)
    print("\n  HTTP images/s relative to in-process (goal at 1 worker: >= 0.80):")
    for name, value in ratios(runs).items():
        print(f"    {name:<28} {value:.2f}")
    errors = sum(r.errors for r in runs)
    if errors:
        print(f"\n  ERRORS: {errors} failed calls (must be 0)")
    if args.json is not None:
        write_json(args.json, facts, args, work, runs)
        print(f"\nwrote {args.json}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
