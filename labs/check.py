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


# ---------------------------------------------------------------------------------------------
# Hints: one line per failed test, with the values that matter and, for a common mistake, its cause
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Mistake:
    exercises: str  # "5.4", or "5.4 5.5": the exercises whose tests show it
    pattern: str    # regex searched (re.S) in "<ErrorType>: <the whole error message>"
    cause: str      # what usually causes it and what to do instead, one line
    example: str    # an error that a wrong answer really produced (tests check the pattern finds it)


# Collected by trying plausible wrong answers on the exercises; a failing test whose error matches
# gets the cause added to its hint. Add a row when a mistake keeps coming back.
COMMON_MISTAKES = (
    Mistake("0.1", r"^KeyError: ",
            "check the dtype name before looking it up, and raise ValueError naming it and the accepted ones",
            "KeyError: 'float64'"),
    Mistake("2.3", r"^AssertionError: assert \(tensor\(.* is None\)",
            "a frozen parameter's stale gradient must become None (p.grad = None): zeros are still a gradient",
            "AssertionError: assert (tensor([[0., 0.],\n [0., 0.]]) is None)"),
    Mistake("4.1", r"^KeyError: ",
            "check the activation name before looking it up in ACTIVATIONS, and raise ValueError naming it",
            "KeyError: 'tanh'"),
    Mistake("4.3", r"mat1 and mat2 shapes cannot be multiplied",
            "the adapter works on the sublayer's output (width D): adapter(base_layer(x)), not the other way round",
            "RuntimeError: mat1 and mat2 shapes cannot be multiplied (6x12 and 16x4)"),
    Mistake("5.2", r"expected m1 and m2 to have the same dtype|must have the same dtype",
            "the LoRA factors are float32 even on a bf16 base layer: cast the LoRA path's input to "
            "self.lora_A.dtype, and its result back to base_layer(x)'s dtype",
            "RuntimeError: expected m1 and m2 to have the same dtype, but got: c10::BFloat16 != float"),
    Mistake("5.2", r"forward should be base\(x\) \+ \(x @ A\^T @ B\^T\) \* alpha / r",
            "multiply the low-rank path by self.scaling (alpha / r, set in 5.1)",
            "AssertionError: forward should be base(x) + (x @ A^T @ B^T) * alpha / r"),
    Mistake("5.3", r"delta_weight (should be|is) \(out, in\)",
            "B @ A is (out, r) @ (r, in) = (out, in); A^T @ B^T is its transpose, (in, out)",
            "AssertionError: delta_weight should be (out, in) = (24, 16), got (16, 24)"),
    Mistake("5.3", r"delta_weight should be \(B @ A\) \* scaling|with use_rslora the scaling is",
            "multiply B @ A by self.scaling (5.1 set it: alpha / r, or alpha / sqrt(r) with use_rslora)",
            "AssertionError: with use_rslora the scaling is alpha / sqrt(r)"),
    Mistake("5.4 5.5", r"The size of tensor a \(\d+\) must match the size of tensor b \(\d+\)",
            "Conv1D stores its weight (in, out): add into labs.surgery.linear_weight(self.base_layer), an "
            "(out, in) view of it, not into base_layer.weight (unmerge: subtract from it)",
            "RuntimeError: The size of tensor a (24) must match the size of tensor b (16) at non-singleton "
            "dimension 1"),
    Mistake("5.4", r"after merge\(\) the layer must compute the same outputs",
            "add in place (weight += ...; weight = weight + ... makes a new tensor the layer never sees), and "
            "set self.merged = True, or forward adds the update a second time",
            "AssertionError: after merge() the layer must compute the same outputs"),
    Mistake("5.6", r"Expected regex: 'already'",
            "end apply with mark_adapted(model, config, __name__): it records the adapter, so that a second "
            "apply is refused",
            "AssertionError: Regex pattern did not match.\n  Expected regex: 'already'\n  Actual message: 'no default'"),
    Mistake("7.3", r"Tensors must have same number of dimensions",
            "the prompt is (P, D) and the embeddings (B, T, D): give it a batch dimension, "
            "prompt.unsqueeze(0).expand(B, -1, -1), before torch.cat([prompt, embeds], dim=1)",
            "RuntimeError: Tensors must have same number of dimensions: got 2 and 3"),
)
HINT_LIMIT = 400  # characters in one hint, the likely cause included


def failure_hint(error: str, message: str, exercise: str | None = None, statement: str = "") -> str:
    """One line about a failed test: `error: first line`, the values pytest compared (expected and
    actual, the regex of pytest.raises(match=...)), and the likely cause for a common mistake.

    error: the exception's type name; message: str(exception); statement: the test's line that failed.
    """
    lines = [line.strip() for line in message.strip().splitlines()]
    first, rest = (lines[0], lines[1:]) if lines else ("", [])
    field = {k.strip(): v.strip() for k, _, v in (l.partition(":") for l in rest if ":" in l)}
    if first == "Regex pattern did not match." and "Expected regex" in field:
        head = (f"{error}: the error message must match the regex {field['Expected regex']}; "
                f"it was {_short(field.get('Actual message', '?'), 160)}")
        details = []
    else:
        head = f"{error}: {first}"
        if first.startswith("DID NOT RAISE") and statement:
            head += f" (the test expects it from `{_short(statement.strip().rstrip(':'), 120)}`)"
        details = [_short(line, 140) for line in _worth_showing(rest)][:3]
    other = re.match(r"Exercise (\d+\.\d+):", first) if error == "NotImplementedError" else None
    if other and exercise and other[1] != exercise:  # the test stopped in an earlier exercise it builds on
        head += f" | exercise {exercise}'s tests use exercise {other[1]}: finish {other[1]} first"
    cause = next((m.cause for m in COMMON_MISTAKES if exercise in m.exercises.split()
                  and re.search(m.pattern, f"{error}: {message}", re.S)), "")
    tail = f" | likely cause: {cause}" if cause else ""
    return _short(" | ".join([head, *details]), HINT_LIMIT - len(tail)) + tail


def hint_of(excinfo, exercise: str | None = None, test_path=None) -> str:
    """failure_hint for a pytest ExceptionInfo; `test_path` finds the test's own failing line."""
    statement = ""
    if test_path is not None:
        mine = [entry for entry in excinfo.traceback if str(entry.path) == str(test_path)]
        try:
            statement = str(mine[-1].statement) if mine else ""
        except Exception:  # no source to show (a generated test): the hint goes without it
            statement = ""
    return failure_hint(excinfo.typename, str(excinfo.value), exercise, statement)


def _worth_showing(lines: list[str]) -> list[str]:
    """The lines of pytest's assertion report that hold values: the comparison (`assert a == b`), or
    else the expected and obtained values; not bare truth values or the `+ where` call chains."""
    compared = [l for l in lines if l.startswith("assert ") and re.search(r"==|!=|<|>| in | is ", l)]
    if compared:
        return compared[:1]
    return [l for l in lines if re.match(r"Expected: |Obtained: |Left contains |Right contains ", l)
            or " != " in l and not l.startswith(("+", "-", "?", "At index"))]


def _short(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:max(limit - 3, 0)] + "..."


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
    if selector is not None:
        # Collecting every test file costs seconds per check: pass pytest only the files that mark
        # this exercise (or notebook); the --exercise option below still does the exact selection.
        tests = [t for t in tests if _marks(Path(t).read_text(encoding="utf-8"), str(selector))] or tests
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "pytest", *tests, "-m", "exercise", "-q", "-p", "no:cacheprovider",
               "--no-header", "-rN", "--tb=no", f"--impl={impl}", f"--exercise-report={report}"]  # the report holds the hints
        if selector is not None:
            cmd.append(f"--exercise={selector}")
        env = {**os.environ, "LABS_IMPL": impl, "HF_HUB_OFFLINE": "1"}
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        if not report.exists():
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-5:]
            raise RuntimeError("the exercise tests did not run:\n" + "\n".join(tail))
        rows = json.loads(report.read_text())
    return summarize(rows)


def _marks(source: str, selector: str) -> bool:
    """Whether a test file's source carries an exercise marker for `selector` ('5' or '5.2')."""
    wanted = re.escape(selector) + (r"\." if "." not in selector else r"[\"']")
    return re.search(r"exercise\(\s*[\"']" + wanted, source) is not None


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


# check() results per notebook, kept while the code they tested is unchanged (see _notebook_results)
_RESULTS: dict[tuple[str, str, str], list[ExerciseResult]] = {}


def code_fingerprint() -> str:
    """A hash of every file a graded test can depend on: change one and cached results are void."""
    import hashlib
    digest = hashlib.sha256()
    for folder, pattern in (("labs", "**/*.py"), ("solutions", "*.py"), ("tests", "conftest.py"),
                            ("tests", "test_ex_*.py")):
        for path in sorted((ROOT / folder).glob(pattern)):
            digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _notebook_results(exercise: str) -> list[ExerciseResult]:
    """The results of every exercise of `exercise`'s notebook, run once per version of the code.

    Each run starts a pytest process (torch imported again, seconds of start-up), so a notebook with
    eight check() cells runs its graded tests once and reuses them until a file changes: edit your
    module and the next check() runs again.
    """
    notebook, impl = str(exercise).split(".")[0], current_impl()
    key = (notebook, impl, code_fingerprint())
    if key not in _RESULTS:
        _RESULTS.clear()  # only the newest version of the code is worth keeping
        _RESULTS[key] = run_checks(notebook, impl)
    return _RESULTS[key]


def check(exercise: str) -> None:
    """Notebook helper: check one exercise and print one line about it (use run_checks for data).

    Under the test suite and in CI (see strict()), an exercise that does not pass also raises
    CheckFailed, so the notebook stops there and its test fails.
    """
    if not SELECTOR.match(str(exercise)):
        raise ValueError(f"exercise {exercise!r} is not valid: use a notebook number like 5 or an id like 5.2")
    results = [r for r in _notebook_results(str(exercise)) if r.exercise == str(exercise) or "." not in str(exercise)]
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
