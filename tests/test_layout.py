"""The package's shape stays navigable: no import cycle among matchdb's modules (lazy imports inside functions
count too), no module past 600 lines, and the CLI's root is imported by nobody but the entry points."""

from __future__ import annotations

import graphlib
from pathlib import Path

import grimp
import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "matchdb"
MAX_LINES = 600


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph("matchdb")


def test_no_import_cycle(graph: grimp.ImportGraph) -> None:
    imports = {module: graph.find_modules_directly_imported_by(module) for module in graph.modules}
    try:
        graphlib.TopologicalSorter(imports).prepare()
    except graphlib.CycleError as exc:
        # graphlib lists the cycle in dependency order (each module is imported by the next): reverse it to read
        # "A imports B imports ... A".
        pytest.fail("import cycle: " + " imports ".join(reversed(exc.args[1])))


def test_cycle_check_sees_a_cycle() -> None:
    """The check above is graphlib's: make sure it reports a cycle in a graph shaped like grimp's answer."""
    with pytest.raises(graphlib.CycleError):
        graphlib.TopologicalSorter({"a": {"b"}, "b": {"c"}, "c": {"a"}}).prepare()


def test_cli_root_is_imported_only_by_entry_points(graph: grimp.ImportGraph) -> None:
    # the entry points: ``python -m matchdb`` and the console script (``matchdb.cli:run``)
    assert graph.find_modules_that_directly_import("matchdb.cli.root") <= {"matchdb.__main__", "matchdb.cli"}
    assert not {m for m in graph.find_modules_directly_imported_by("matchdb.cli.common") if m.startswith("matchdb.cli")}


def test_no_module_is_too_long() -> None:
    lengths = {path.relative_to(PACKAGE.parent): len(path.read_text().splitlines()) for path in PACKAGE.rglob("*.py")}
    assert {str(path): n for path, n in lengths.items() if n > MAX_LINES} == {}
