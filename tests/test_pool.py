"""The CLI's hashing pool: its workers must not outlive a killed command (SIGTERM from a supervisor, SIGKILL)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from matchdb.pool import process_pool

SCRIPT = """
import time
from matchdb.pool import process_pool
with process_pool(2) as pool:
    print(" ".join(str(process.pid) for process in pool._processes.values()), flush=True)
    time.sleep(600)
"""


def alive(pid: int) -> bool:
    """Running, not a zombie waiting to be reaped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux-only")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_workers_die_with_their_parent(sig: signal.Signals) -> None:
    parent = subprocess.Popen([sys.executable, "-c", SCRIPT], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        workers = [int(pid) for pid in parent.stdout.readline().split()]
        assert len(workers) == 2 and all(alive(pid) for pid in workers)
        os.kill(parent.pid, sig)
        parent.wait(30)
        deadline = time.monotonic() + 30
        while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(alive(pid) for pid in workers)
    finally:
        parent.kill()
        parent.wait()


def test_the_pool_runs_work_and_shuts_down() -> None:
    with process_pool(2) as pool:
        assert sorted(pool.map(abs, [-3, -1, 2])) == [1, 2, 3]
    with pytest.raises(RuntimeError):
        pool.submit(abs, 1)


def test_the_pool_works_whatever_the_default_start_method() -> None:
    """Python 3.14 makes forkserver the default on Linux; the pool must not depend on the default."""
    script = (
        "import multiprocessing\n"
        "from matchdb.pool import process_pool\n"
        "if __name__ == '__main__':\n"
        "    multiprocessing.set_start_method('forkserver' if 'forkserver' in multiprocessing.get_all_start_methods()"
        " else 'spawn')\n"
        "    with process_pool(2) as pool:\n"
        "        print(sum(pool.map(abs, [-1, -2, 3])))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "6"
