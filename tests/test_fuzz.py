"""Contract fuzzing (issue 15): schemathesis, driven by the served ``/openapi.json``, against a real
``matchdb serve --workers 2``, on every documented method: no answer may be a server error, and every answer must
match the schema the document gives for its status. Its examples, coverage, fuzzing and stateful phases run
(the stateful one chains createCollection into the collection methods).

Downloads go nowhere (the SSRF guard refuses loopback and private addresses, and generated host names do not
resolve); one short attempt each keeps the run quick: about a minute on a shared 2-core machine.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.servers import matchdb_server

MAX_EXAMPLES = 40
MAX_SECONDS = 300  # the budget for the run


def test_schemathesis_finds_no_server_error_and_no_schema_violation(tmp_path: Path) -> None:
    env = {"MATCHDB_FETCH_ATTEMPTS": "1", "MATCHDB_FETCH_CONNECT_TIMEOUT": "1", "MATCHDB_HASH_THREADS": "1"}
    with matchdb_server(env, workers=2) as server:
        result = subprocess.run(
            [str(Path(sys.executable).with_name("schemathesis")), "run", f"{server.url}/openapi.json",
             "--checks", "not_a_server_error,response_schema_conformance",
             "--max-examples", str(MAX_EXAMPLES), "--request-timeout", "30",
             "--seed", "15", "--no-color"],
            cwd=tmp_path, capture_output=True, text=True, timeout=MAX_SECONDS, check=False,
        )  # fmt: skip
        log = server.log()
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:] + "\n--- server log (errors) ---\n" + _errors(log)
    assert "Selected: 17/17" in output and "Tested: 17" in output, output[-3000:]
    assert " passed" in output and "failures" not in output.split("SUMMARY")[-1], output[-3000:]


def _errors(log: str) -> str:
    return "\n".join(line for line in log.splitlines() if "ERROR" in line or "Traceback" in line)[-4000:]
