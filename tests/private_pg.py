"""A throwaway Postgres server of our own, for tests that stop and start the database under load.

The Postgres at ``MATCHDB_TEST_DATABASE_URL`` is shared (other test runs use it at the same time), so it is never
stopped. This starts a private cluster instead: ``initdb`` into a temporary folder, ``pg_ctl`` on a free port on
127.0.0.1 (and a Unix socket in that folder), trust authentication. Postgres refuses to run as root, so as root
(CI) the cluster runs as the ``postgres`` system user through ``runuser``.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.servers import LOOPBACK, free_port

START_TIMEOUT = 60


class PostgresUnavailable(RuntimeError):
    """No private Postgres could be set up here (no binaries, no user to run them as, initdb or start failed)."""


def _bindir() -> Path:
    """The newest installed Postgres's binaries (Debian layout), else those on PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("pg_ctl")
    if on_path is None:
        raise PostgresUnavailable("no Postgres binaries (pg_ctl, initdb) are installed")
    return Path(on_path).parent


def _as_user() -> list[str]:
    """The command prefix that runs a Postgres binary as a user it accepts (not root)."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError as exc:
        raise PostgresUnavailable("running as root, and there is no 'postgres' user to run Postgres as") from exc
    runuser = shutil.which("runuser")
    if runuser is None:
        raise PostgresUnavailable("running as root, and runuser is missing")
    return [runuser, "-u", "postgres", "--"]


@dataclass
class PrivatePostgres:
    root: Path
    bindir: Path
    prefix: list[str]
    port: int

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def server_url(self) -> str:
        return f"postgresql://postgres@{LOOPBACK}:{self.port}/postgres"

    def _run(self, *args: str, timeout: float = START_TIMEOUT) -> None:
        done = subprocess.run(
            [*self.prefix, *args], capture_output=True, text=True, timeout=timeout, check=False, cwd=self.root
        )
        if done.returncode != 0:
            log_path = self.root / "postgres.log"
            log = log_path.read_text(errors="replace")[-2000:] if log_path.exists() else ""
            raise PostgresUnavailable(f"{Path(args[0]).name} failed: {done.stdout}{done.stderr}{log}")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses={LOOPBACK} -c max_connections=200"
        pg_ctl = str(self.bindir / "pg_ctl")
        self._run(pg_ctl, "-D", str(self.data), "-o", options, "-l", str(self.root / "postgres.log"), "-w", "start")

    def stop(self) -> None:
        """A fast shutdown: sessions are ended, transactions in progress rolled back, committed data kept."""
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def running(self) -> bool:
        status = subprocess.run(
            [*self.prefix, str(self.bindir / "pg_ctl"), "-D", str(self.data), "status"],
            capture_output=True,
            check=False,
        )
        return status.returncode == 0


@contextlib.contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    """A fresh private Postgres, running; stopped and deleted afterwards. Raises :class:`PostgresUnavailable`."""
    bindir = _bindir()
    prefix = _as_user()
    root = Path(tempfile.mkdtemp(prefix="matchdb-pg-"))
    try:
        if prefix:
            shutil.chown(root, user="postgres")
        server = PrivatePostgres(root, bindir, prefix, free_port())
        server._run(
            str(bindir / "initdb"), "-D", str(server.data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"
        )
        server.start()
        try:
            yield server
        finally:
            if server.running():
                server.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)
