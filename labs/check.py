"""`labs check`: run a student's exercise tests and show, per exercise, what passes.

    labs check          every exercise
    labs check 5        the exercises of notebook 05
    labs check 5.2      one exercise

In a notebook, `check("5.2")` prints one line in place. The tests run in a fresh subprocess, so
edits to labs/<technique>.py are picked up without restarting the kernel.

For a learner a failing check only prints. Under the test suite (tests/test_notebooks.py sets
LABS_CHECK_STRICT=1) and in CI (CI=true) it also raises CheckFailed, so a notebook whose checks
fail fails its test; LABS_CHECK_STRICT=0 turns that off.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from labs.impl import current_impl

ROOT = Path(__file__).resolve().parent.parent
SELECTOR = re.compile(r"^\d+(\.\d+)?$")
STRICT_ENV = "LABS_CHECK_STRICT"  # "1": a failing check() raises; "0": it only prints; unset: CI decides


class CheckFailed(AssertionError):
    """A notebook check that did not pass, raised under the test suite and in CI."""


def strict() -> bool:
    """Whether check() raises on failure: LABS_CHECK_STRICT=1, or CI=true unless LABS_CHECK_STRICT=0."""
    setting = os.environ.get(STRICT_ENV, "").strip()
    if setting in ("0", "1"):
        return setting == "1"
    if setting:
        raise ValueError(f"{STRICT_ENV}={setting!r} is not valid; use 1 (a failing check raises) or 0 (it prints)")
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


@dataclass(frozen=True)
class ExerciseResult:
    exercise: str     # "5.2"
    passed: int       # graded tests passed
    total: int        # graded tests run
    points: float     # points earned
    max_points: float
    hint: str         # first failure, one line ("" when all pass)

    @property
    def status(self) -> str:
        if self.passed == self.total:
            return "passed"
        return "not started" if self.hint.startswith("NotImplementedError") else "failing"


def _sort_key(exercise_id: str) -> tuple[int, ...]:
    return tuple(int(part) for part in exercise_id.split("."))


def run_checks(selector: str | None = None, impl: str | None = None, timeout: float = 900) -> list[ExerciseResult]:
    """Run the graded tests (all, one notebook's, or one exercise's) in a subprocess."""
    if selector is not None and not SELECTOR.match(str(selector)):
        raise ValueError(f"exercise {selector!r} is not valid: use a notebook number like 5 or an id like 5.2")
    impl = impl or current_impl()
    tests = sorted(str(p) for p in (ROOT / "tests").glob("test_ex_*.py"))
    if not tests:
        raise FileNotFoundError(f"no exercise tests found under {ROOT / 'tests'}")
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "pytest", *tests, "-m", "exercise", "-q", "-p", "no:cacheprovider",
               "--no-header", "-rN", f"--impl={impl}", f"--exercise-report={report}"]
        if selector is not None:
            cmd.append(f"--exercise={selector}")
        env = {**os.environ, "LABS_IMPL": impl, "HF_HUB_OFFLINE": "1"}
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        if not report.exists():
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-5:]
            raise RuntimeError("the exercise tests did not run:\n" + "\n".join(tail))
        rows = json.loads(report.read_text())
    return summarize(rows)


def summarize(rows: list[dict]) -> list[ExerciseResult]:
    """Fold per-test rows (from the exercise report) into one result per exercise."""
    by_id: dict[str, list[dict]] = {}
    for row in rows:
        by_id.setdefault(row["exercise"], []).append(row)
    results = []
    for ex in sorted(by_id, key=_sort_key):
        tests = by_id[ex]
        passed = [t for t in tests if t["outcome"] == "passed"]
        failed = [t for t in tests if t["outcome"] != "passed"]
        results.append(ExerciseResult(
            ex, len(passed), len(tests), sum(t["points"] for t in passed),
            sum(t["points"] for t in tests), failed[0]["hint"] if failed else ""))
    return results


def format_table(results: list[ExerciseResult]) -> str:
    lines = [f"{'exercise':<9} {'status':<12} {'points':>8}  hint", "-" * 72]
    for r in results:
        lines.append(f"{r.exercise:<9} {r.status:<12} {r.points:>3g}/{r.max_points:<4g}  {r.hint}")
    earned, total = sum(r.points for r in results), sum(r.max_points for r in results)
    lines += ["-" * 72, f"{'total':<22} {earned:>3g}/{total:g}"]
    return "\n".join(lines)


def check(exercise: str) -> None:
    """Notebook helper: check one exercise and print one line about it (use run_checks for data).

    Under the test suite and in CI (see strict()), an exercise that does not pass also raises
    CheckFailed, so the notebook stops there and its test fails.
    """
    results = run_checks(str(exercise))
    if not results:
        line = f"Exercise {exercise}: no graded tests found"
    else:
        r = results[0]
        mark = {"passed": "PASSED", "failing": "FAILING", "not started": "NOT DONE YET"}[r.status]
        detail = f" - {r.hint}" if r.hint else ""
        line = (f"Exercise {r.exercise}: {mark} ({r.points:g}/{r.max_points:g} points, "
                f"{r.passed}/{r.total} tests, impl={current_impl()}){detail}")
    print(line)
    if (not results or results[0].status != "passed") and strict():
        raise CheckFailed(f"{line}\n({STRICT_ENV}=1 or CI=true: a check that does not pass stops the notebook)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="labs check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("exercise", nargs="?", help="notebook number (5) or exercise id (5.2); default all")
    parser.add_argument("--impl", choices=("labs", "solutions"), default=None,
                        help="implementation to check (default: $LABS_IMPL, else labs)")
    args = parser.parse_args(argv)
    try:
        results = run_checks(args.exercise, args.impl)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"labs check: {err}", file=sys.stderr)
        return 2
    if not results:
        print(f"no graded tests match {args.exercise!r}")
        return 2
    print(format_table(results))
    return 0 if all(r.status == "passed" for r in results) else 1
