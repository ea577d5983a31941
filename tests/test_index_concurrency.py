"""Readers and writers of one NumpyTreeIndex at once (issue 24): every answer a reader gets must be one the index
could have given at some moment, however the writers' changes interleave with it.

Writer threads add, remove and replace records one by one and in bulk batches (which fill the delta and trigger
rebuilds, and explicit rebuilds run too); reader threads run radius and k-nearest searches, with and without
``accept``. Every answer is checked against what was ever stored:

- each key returned was stored, with a value at exactly the returned distance, sorted by (bits, key), once each;
- the records that are never removed (some never change, some are only ever replaced) are in every full-radius
  answer: a reader that sees a replaced record's old row dead but not yet its new row loses it;
- a k-nearest answer misses no never-changed record nearer than its k-th, and respects ``accept``;
- and at quiescent points (the writers paused) whole answers equal a brute-force scan of the truth.

Before the snapshots were made immutable to readers, this failed within seconds (a torn ``flatnonzero`` read past
the delta, records missing mid-replace). ``MATCHDB_TEST_RACE_SECONDS`` sets how long each case runs.
"""

from __future__ import annotations

import os
import random
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import pytest

from matchdb.index import Hit
from matchdb.index.numpy_tree import NumpyTreeIndex
from tests.test_index import brute_force, clustered
from tests.test_numpy_index import tuned

SECONDS = float(os.environ.get("MATCHDB_TEST_RACE_SECONDS", "6"))
STABLE = 600  # keys 1..STABLE never change
REPLACED = 600  # the next REPLACED keys are only ever replaced (never absent)


def accept(key: int) -> bool:
    return key % 3 != 1


@dataclass
class Truth:
    """What was ever stored (``history``, written before the index is told) and what is stored now (``now``)."""

    nbits: int
    history: dict[int, set[int]] = field(default_factory=dict)
    now: dict[int, int] = field(default_factory=dict)
    persistent: list[int] = field(default_factory=list)  # never absent: stable and replace-only keys
    stable: dict[int, int] = field(default_factory=dict)

    def will_store(self, key: int, value: int) -> None:
        self.history.setdefault(key, set()).add(value)


class Race:
    """Writers and readers on one index, with failures collected (the first few kept whole)."""

    def __init__(self, index: NumpyTreeIndex, truth: Truth, seed: int) -> None:
        self.index = index
        self.truth = truth
        self.seed = seed
        self.stop = threading.Event()
        self.running = threading.Event()  # cleared to pause the writers at a quiescent point
        self.running.set()
        self.idle = threading.Semaphore(0)  # each writer releases it once paused
        self.failures: list[str] = []
        self.answers = 0
        self.next_key = 1 + STABLE + REPLACED + 1_000_000  # churn keys, allocated upwards
        self.key_lock = threading.Lock()

    def fail(self, text: str) -> None:
        if len(self.failures) < 20:
            self.failures.append(text)

    def new_key(self) -> int:
        with self.key_lock:
            self.next_key += 1
            return self.next_key

    # ----- writers -------------------------------------------------------------------------------------------

    def pause_point(self) -> None:
        if not self.running.is_set():
            self.idle.release()
            self.running.wait()

    def single_writer(self, parity: int) -> None:
        """Adds, removes and replaces one record at a time (replace-only keys of one parity: the bulk writer has
        the others, so the two never share a key)."""
        rng = random.Random(self.seed * 10 + parity)
        truth, index, nbits = self.truth, self.index, self.truth.nbits
        churn: list[int] = []
        replaced = [k for k in range(STABLE + 1, STABLE + REPLACED + 1) if k % 2 == parity]
        while not self.stop.is_set():
            self.pause_point()
            roll = rng.random()
            if roll < 0.35 or not churn:
                key = self.new_key()
                value = rng.getrandbits(nbits)
                truth.will_store(key, value)
                index.add(key, value)
                truth.now[key] = value
                churn.append(key)
            elif roll < 0.65:
                key = churn.pop(rng.randrange(len(churn)))
                index.remove(key)
                truth.now.pop(key, None)
            else:
                key = rng.choice(replaced) if roll < 0.9 else rng.choice(churn)
                value = truth.now[key] ^ (1 << rng.randrange(nbits)) if rng.random() < 0.5 else rng.getrandbits(nbits)
                truth.will_store(key, value)
                index.add(key, value)
                truth.now[key] = value

    def bulk_writer(self) -> None:
        """Batches through ``bulk_load_packed`` (new keys and replacements), and now and then a whole rebuild."""
        rng = random.Random(self.seed * 10 + 7)
        truth, index, nbits = self.truth, self.index, self.truth.nbits
        replaced = [k for k in range(STABLE + 1, STABLE + REPLACED + 1) if k % 2 == 1]
        round_ = 0
        while not self.stop.is_set():
            self.pause_point()
            round_ += 1
            keys = [self.new_key() for _ in range(rng.randrange(50, 400))]
            keys += rng.sample(replaced, rng.randrange(0, 60))
            values = [rng.getrandbits(nbits) for _ in keys]
            for key, value in zip(keys, values, strict=True):
                truth.will_store(key, value)
            packed = np.frombuffer(b"".join(v.to_bytes(index.packed_bytes, "little") for v in values), np.uint8)
            index.bulk_load_packed(np.array(keys, np.int64), packed.reshape(len(keys), index.packed_bytes))
            truth.now.update(zip(keys, values, strict=True))
            if round_ % 5 == 0:
                index.rebuild()
            # keep the collection from growing without end: drop some of this writer's new keys again
            for key in keys[: len(keys) // 2]:
                if key > STABLE + REPLACED:
                    index.remove(key)
                    truth.now.pop(key, None)

    # ----- readers -------------------------------------------------------------------------------------------

    def check_hits(self, what: str, query: int, hits: list[Hit], check: Callable[[int], bool] | None) -> None:
        self.answers += 1
        history = self.truth.history
        if hits != sorted(hits) or len({h.key for h in hits}) != len(hits):
            self.fail(f"{what}: not sorted by (bits, key) or a key twice: {hits[:5]}")
        for bits, key in hits:
            values = history.get(key)
            if values is None:
                self.fail(f"{what}: key {key} was never stored")
            elif not any((value ^ query).bit_count() == bits for value in list(values)):
                self.fail(f"{what}: key {key} at {bits} bits, but none of its values is that far")
            if check is not None and not check(key):
                self.fail(f"{what}: key {key} answered though accept refused it")

    def reader(self, number: int) -> None:
        try:
            self.read(number)
        except Exception as exc:  # e.g. an IndexError from a torn read: a failure of the index, not of the test
            self.fail(f"reader raised {exc!r}")
            raise

    def read(self, number: int) -> None:
        rng = random.Random(self.seed * 100 + number)
        truth, index, nbits = self.truth, self.index, self.truth.nbits
        stable_values = list(truth.stable.values())
        while not self.stop.is_set():
            value = rng.choice(stable_values)
            query = value ^ (1 << rng.randrange(nbits)) if rng.random() < 0.5 else rng.getrandbits(nbits)
            check = accept if rng.random() < 0.5 else None
            kind = rng.random()
            if kind < 0.3:  # full radius: every record, so the persistent ones must all be there
                hits = index.search(query, nbits, check)
                self.check_hits("search(all)", query, hits, check)
                found = {h.key for h in hits}
                lost = [k for k in truth.persistent if k not in found and (check is None or check(k))]
                if lost:
                    self.fail(f"search(all): {len(lost)} records that are never removed were missing, e.g. {lost[:5]}")
            elif kind < 0.5:
                radius = rng.choice([2, nbits // 20, nbits // 4])
                self.check_hits(f"search(r={radius})", query, index.search(query, radius, check), check)
            else:
                k = rng.choice([1, 10, 50])
                limit = rng.choice([None, nbits // 8, nbits // 3])
                hits = index.nearest(query, k, limit, check)
                self.check_hits(f"nearest(k={k}, limit={limit})", query, hits, check)
                self.check_nearest_misses_nothing_stable(query, k, limit, check, hits)

    def check_nearest_misses_nothing_stable(
        self, query: int, k: int, limit: int | None, check: Callable[[int], bool] | None, hits: list[Hit]
    ) -> None:
        """A never-changed record strictly nearer than the k-th answer (or within the limit, if fewer than k were
        answered) must be in the answer."""
        if len(hits) > k:
            self.fail(f"nearest: {len(hits)} answers for k={k}")
            return
        bound = hits[-1].bits - 1 if len(hits) == k else (self.truth.nbits if limit is None else limit)
        found = {h.key for h in hits}
        for key, value in self.truth.stable.items():
            if key not in found and (check is None or check(key)) and (value ^ query).bit_count() <= bound:
                self.fail(f"nearest(k={k}): stable key {key} at {(value ^ query).bit_count()} bits missed: {hits}")
                return

    # ----- quiescent checks ----------------------------------------------------------------------------------

    def quiescent_check(self, writers: int, rng: random.Random) -> None:
        """Pause the writers, compare whole answers with a brute-force scan of the truth, resume."""
        self.running.clear()
        for _ in range(writers):
            if not self.idle.acquire(timeout=60):
                self.fail("a writer did not pause")
                self.running.set()
                return
        try:
            items, nbits = dict(self.truth.now), self.truth.nbits
            if len(self.index) != len(items):
                self.fail(f"len(index) = {len(self.index)}, {len(items)} stored")
            for _ in range(3):
                query = rng.choice(list(items.values())) ^ (1 << rng.randrange(nbits))
                radius = rng.choice([nbits // 20, nbits // 3])
                if self.index.search(query, radius) != brute_force(items, query, radius):
                    self.fail(f"quiescent search(r={radius}) differs from a scan")
                if self.index.nearest(query, 10, None, accept) != brute_force(items, query, None, accept)[:10]:
                    self.fail("quiescent nearest(k=10, accept) differs from a scan")
        finally:
            self.running.set()


@contextmanager
def fast_switching() -> Iterator[None]:
    """Switch threads often, so that writers run inside readers' queries (and vice versa)."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        yield
    finally:
        sys.setswitchinterval(old)


@pytest.mark.parametrize(
    ("nbits", "tuning_name", "extra"),
    [
        (961, "default", {"DELTA_MIN": 4096}),  # a big delta: long flatnonzero reads over it
        (961, "deep", {"DELTA_MIN": 512}),  # pivot tree and block tables from a few hundred records
        (64, "default", {"DELTA_MIN": 4096}),
        (64, "never-scan", {"DELTA_MIN": 512}),
    ],
)
def test_readers_see_consistent_answers_while_writers_change_the_index(
    nbits: int, tuning_name: str, extra: dict[str, object]
) -> None:
    rng = random.Random(nbits)
    with tuned(tuning_name, **extra), fast_switching():
        truth = Truth(nbits)
        values = clustered(rng, nbits, STABLE + REPLACED + 3000)
        index = NumpyTreeIndex(nbits)
        initial = dict(enumerate(values[: STABLE + REPLACED], start=1))
        for key, value in initial.items():
            truth.will_store(key, value)
        truth.now.update(initial)
        truth.stable = {key: initial[key] for key in range(1, STABLE + 1)}
        truth.persistent = list(initial)
        index.bulk_load(initial.items())
        race = Race(index, truth, seed=nbits)
        writers = [  # even replace-only keys are the single writer's, odd ones the bulk writer's
            threading.Thread(target=race.single_writer, args=(0,)),
            threading.Thread(target=race.bulk_writer),
        ]
        readers = [threading.Thread(target=race.reader, args=(n,)) for n in range(3)]
        for thread in writers + readers:
            thread.start()
        deadline = time.monotonic() + SECONDS
        try:
            while time.monotonic() < deadline and not race.failures:
                time.sleep(min(1.5, max(0.0, deadline - time.monotonic())))
                race.quiescent_check(len(writers), rng)
        finally:
            race.stop.set()
            race.running.set()
            for thread in writers + readers:
                thread.join(timeout=60)
    assert not race.failures, "\n".join(race.failures)
    assert race.answers > 0
