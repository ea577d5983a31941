"""One ``matchdb eval`` run from folder to report: find images, hash in workers, measure each hash type."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from matchdb.errors import MatchdbError
from matchdb.evaluation import distances, geometric, metrics
from matchdb.evaluation.baselines import BASELINES
from matchdb.evaluation.groups import Groups, read_groups, singletons
from matchdb.evaluation.runner import Plan, RunResult, Source, find_images, run
from matchdb.evaluation.transforms import BY_NAME
from matchdb.hashing import NBITS


class NoImages(MatchdbError):
    """The folder holds no image that could be read; ``failures`` says why for each file tried."""

    def __init__(self, message: str, failures: list[dict[str, str]] | None = None) -> None:
        super().__init__(message)
        self.failures = failures or []


def nbits_of(name: str) -> int:
    return NBITS[name] if name in NBITS else BASELINES[name].nbits


@dataclass(frozen=True)
class Inputs:
    """The sources to evaluate and their known duplicate groups (read before any hashing, so a bad ``--groups``
    fails at once)."""

    root: Path
    sources: list[Source]
    groups: Groups
    groups_file: Path | None


def prepare(root: Path, limit: int | None = None, groups_file: Path | None = None) -> Inputs:
    """Find the images of ``root`` (the first ``limit`` in path order) and read the groups file if given."""
    sources = find_images(root)
    if limit is not None:
        sources = sources[:limit]
    if not sources:
        raise NoImages(f"no image files found in {root}")
    groups = read_groups(groups_file, root, sources) if groups_file else singletons(len(sources))
    return Inputs(root, sources, groups, groups_file)


def _excluded_pairs(sizes: np.ndarray, copy_valid: np.ndarray) -> int:
    """Pairs set aside because both sides belong to one known group (other than a source with itself)."""
    others = sizes - 1
    return int(others.sum() + (copy_valid * others[:, None]).sum())


def measure(inputs: Inputs, result: RunResult) -> metrics.EvalReport:
    """Distances and metrics for every hash type of a finished run."""
    plan = result.plan
    if not result.sources:
        failures = [{"file": f.key, "error": f.error} for f in result.failures]
        raise NoImages(f"no image in {inputs.root} could be read ({len(failures)} failed)", failures)
    index = {source.key: i for i, source in enumerate(inputs.sources)}
    kept = [index[source.key] for source in result.sources]
    groups = Groups(inputs.groups.ids[kept], inputs.groups.matched_rows)
    keys = [source.key for source in result.sources]
    described = [(name, BY_NAME[name].category, BY_NAME[name].geometric) for name in plan.transforms]
    results = []
    for name in plan.hash_names:
        matrix = distances.build_matrix(result, name, nbits_of(name))
        results.append(
            metrics.evaluate_hash_type(
                name,
                matrix.nbits,
                distances.true_distances(matrix),
                distances.distinct_distances(matrix, groups.ids),
                _excluded_pairs(groups.sizes(), matrix.copy_valid),
                keys,
                described,
            )
        )
    if plan.geometric:
        true, distinct, valid = geometric.distances(
            [s.original for s in result.sources], [s.copies for s in result.sources], plan.transforms, groups.ids
        )
        excluded = _excluded_pairs(groups.sizes(), valid)
        results.append(metrics.evaluate_hash_type(geometric.NAME, 64, true, distinct, excluded, keys, described))
    return metrics.EvalReport(
        directory=str(inputs.root),
        images_found=len(inputs.sources),
        sources=len(result.sources),
        skipped=[{"file": f.key, "error": f.error} for f in result.failures],
        copy_failures=[
            {"file": s.key, "transform": t, "error": e} for s in result.sources for t, e in s.copy_errors.items()
        ],
        transforms=[
            {"name": n, "category": BY_NAME[n].category, "description": BY_NAME[n].description} for n in plan.transforms
        ],
        dihedral=plan.dihedral,
        seed=plan.seed,
        groups_file=str(inputs.groups_file) if inputs.groups_file else None,
        grouped_images=int((groups.sizes() > 1).sum()),
        rates=list(metrics.RATES),
        hashing_seconds=round(result.seconds, 3),
        results=results,
    )


def evaluate(inputs: Inputs, plan: Plan, jobs: int, progress: bool = True) -> metrics.EvalReport:
    """Hash ``inputs`` as ``plan`` says, then measure."""
    return measure(inputs, run(inputs.sources, plan, jobs, progress))
