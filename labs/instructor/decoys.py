"""Decoy tests: forgery of verdicts inside a grading child is made detectable, not just hard.

A grading child runs the student's code in the same process as the tests that judge it, so any
check made there can in the end be bypassed (a submission that reaches pytest's plugin manager can
make every report "passed"). What such code cannot do is tell which tests must fail. For every
grading run and every graded test, the plan below adds DECOYS_PER_TEST copies of the test: the
same function, fixtures, markers and parameters, run in full, whose expected value is moved by a
secret random amount, so each copy must fail whatever the code under test returns. Every test
of the run, real or decoy, gets a fresh name drawn from the words of its file's test names (no
name in the public test files is used), and the tests of a file run in a random order.

A submission for which any decoy "passes" is graded 0 and flagged `tampered`.

Detection: a module with n graded tests runs n * (1 + m) tests (m = DECOYS_PER_TEST). Code that
flips k of them to "passed" without knowing which are decoys picks only real ones with
probability C(n, k) / C(n(1 + m), k) < (1 / (1 + m))^k, and the grouping that a copy shares its
function with its original does not help: each function has exactly 1 + m tests, one of them
real. With m = 2, a blind flip of k >= 3 tests is caught with probability at least
1 - (1/3)^3 = 96.3% (k = 4: 98.8%, k = 5: 99.6%); flipping every test is always caught.
"""
from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass

DECOYS_PER_TEST = 2       # copies that must fail, per graded test and grading run
SHIFT_RANGE = 10**6       # a decoy's secret shift of its expected value: 1 .. SHIFT_RANGE, either sign


@dataclass(frozen=True)
class Planned:
    source: str            # the graded test's node id, as the trusted collection named it
    nodeid: str            # the name it runs under in this grading run
    shift: int             # 0: the real test; else a decoy, whose expected value moves by this


def split_nodeid(nodeid: str) -> tuple[str, str, str]:
    """'tests/t.py::test_a[fp16]' -> ('tests/t.py', 'test_a', '[fp16]')."""
    prefix, _, last = nodeid.rpartition("::")
    base, bracket, params = last.partition("[")
    return prefix, base, bracket + params


def plan(nodeids: list[str], rng: random.Random, decoys: int = DECOYS_PER_TEST) -> list[Planned]:
    """The tests one grading child runs for these graded tests: each real one and `decoys` copies,
    renamed, in a random order within each file (files keep their order)."""
    if decoys < 1:
        raise ValueError(f"decoys per test must be at least 1 (flipping every test must be caught), got {decoys}")
    by_file: dict[str, list[str]] = {}
    for nodeid in nodeids:
        by_file.setdefault(split_nodeid(nodeid)[0], []).append(nodeid)
    out: list[Planned] = []
    for file, ids in by_file.items():
        names = _Names(sorted({split_nodeid(n)[1] for n in ids}), rng)
        rows = []
        for nodeid in ids:
            _, _, params = split_nodeid(nodeid)
            for copy in range(decoys + 1):
                shift = 0 if copy == 0 else rng.choice((-1, 1)) * rng.randint(1, SHIFT_RANGE)
                rows.append(Planned(nodeid, f"{file}::{names.draw()}{params}", shift))
        rng.shuffle(rows)
        out += rows
    return out


class _Names:
    """Fresh test names made of the words of a file's own test names, as long as they are."""

    def __init__(self, bases: list[str], rng: random.Random):
        self.rng, self.taken = rng, set(bases)
        self.words = sorted({w for b in bases for w in re.split(r"_+", b.removeprefix("test_")) if w}) or ["case"]
        self.lengths = [max(1, len([w for w in re.split(r"_+", b.removeprefix("test_")) if w])) for b in bases]

    def draw(self) -> str:
        for attempt in range(100):
            words = self.rng.sample(self.words, min(self.rng.choice(self.lengths), len(self.words)))
            name = "test_" + "_".join(words) + (f"_{self.rng.randrange(100)}" if attempt >= 50 else "")
            if name not in self.taken:
                self.taken.add(name)
                return name
        raise RuntimeError("could not draw a fresh test name")  # 100 draws, all taken: not reached


def detection_probability(n: int, k: int, decoys: int = DECOYS_PER_TEST) -> float:
    """Chance that flipping k of a module's n * (1 + decoys) tests at random hits a decoy."""
    total = n * (1 + decoys)
    if not 0 < k <= total:
        raise ValueError(f"k must be between 1 and {total} (the tests run), got {k}")
    return 1.0 - (math.comb(n, k) / math.comb(total, k) if k <= n else 0.0)


def guaranteed(k: int, decoys: int = DECOYS_PER_TEST) -> float:
    """A lower bound over every module size: 1 - (1 / (1 + decoys))^k."""
    return 1.0 - (1.0 / (1 + decoys)) ** k
