"""Checks that the graded tests test what they claim to, and that no answer ships outside its stub.

1. The exercise ids declared in solutions/, raised in the labs/ stubs, graded in tests/ (hidden
   ones too) and checked in notebooks/ must be the same set.
2. No function of the student edition re-implements an exercise's answer
   (labs/instructor/answer_leaks.py: the same check `labs release` makes).
3. The two-way check. With --impl solutions every graded test passes; with --impl labs (the
   stubs as generated) every graded test fails with NotImplementedError. A graded test that
   passes on a stub tests nothing the student writes: that is a bug.
4. --each: one exercise at a time. For every exercise N.k, the reference with ONLY N.k's body
   replaced (every other exercise solved):
     raise   `raise NotImplementedError(...)`, as in the stub: at least one test marked N.k must
             fail with that error, so some test really reaches N.k (a test of 5.4 that stops at
             an unfinished 5.1 proves nothing about 5.4);
     none    `return None`: EVERY test marked N.k must fail, so no test passes on code that does
             nothing (an invariant such as "outputs unchanged at init" must also check that the
             thing was really done);
     pass    `pass`, only where the body is followed by more code of its function (elsewhere it
             is the same as `return None`): every test marked N.k must fail.
   Each graded test runs once per kind, with its own exercise's module swapped for the variant
   while it runs (a pytest plugin in this file; solutions/ itself is never touched).

    python tools/check_exercises.py              # 1, 2 and 3
    python tools/check_exercises.py --ids        # only 1 (fast, no tests run)
    python tools/check_exercises.py --leaks      # 1 and 2
    python tools/check_exercises.py --each       # 1 and 4 (add ids, e.g. --each 4.5 5.2, for a few)
"""
from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parent
if str(TOOLS) not in sys.path:
    sys.path.insert(0, str(TOOLS))
from make_stubs import BEGIN, END, ROOT, Exercise, all_exercises, solution_modules, stub_source  # noqa: E402

STUB_ID = re.compile(r'NotImplementedError\(\s*"Exercise (\d+\.\d+):')
CHECK_CALL = re.compile(r'\bcheck\(\s*["\'](\d+\.\d+)["\']\s*\)')


def ids_in_stubs(root: Path = ROOT) -> set[str]:
    return {m for p in (root / "labs").glob("*.py") for m in STUB_ID.findall(p.read_text())}


def test_files_by_exercise(root: Path = ROOT) -> dict[str, set[Path]]:
    """Exercise id -> the test files (tests/ and tests/hidden/) holding its graded tests."""
    found: dict[str, set[Path]] = {}
    for path in sorted((root / "tests").rglob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "exercise" and node.args
                    and isinstance(node.args[0], ast.Constant)):
                found.setdefault(str(node.args[0].value), set()).add(path)
    return found


def graded_files(root: Path = ROOT, exercises: list[str] | None = None) -> list[str]:
    """The test files (relative to root) holding the graded tests of `exercises` (default: all)."""
    found = test_files_by_exercise(root)
    return sorted({str(p.relative_to(root)) for ex in (exercises or found) for p in found[ex]})


def ids_in_tests(root: Path = ROOT) -> set[str]:
    """Ids from @pytest.mark.exercise("N.k", ...) decorators, read from the syntax tree."""
    return set(test_files_by_exercise(root))


def ids_in_notebooks(root: Path = ROOT) -> set[str]:
    found = set()
    for path in (root / "notebooks").glob("*.ipynb"):
        for cell in json.loads(path.read_text())["cells"]:
            if cell["cell_type"] == "code":
                found.update(CHECK_CALL.findall("".join(cell["source"])))
    return found


def compare_ids(root: Path = ROOT) -> list[str]:
    sets = {"solutions": {e.id for e in all_exercises(root)}, "stubs": ids_in_stubs(root),
            "tests": ids_in_tests(root), "notebooks": ids_in_notebooks(root)}
    every = set().union(*sets.values())
    problems = []
    for where, ids in sets.items():
        missing = sorted(every - ids, key=lambda s: tuple(map(int, s.split("."))))
        if missing:
            problems.append(f"exercise ids missing from {where}: {', '.join(missing)}")
    return problems


def check_answer_leaks(root: Path = ROOT) -> list[str]:
    """Build the student edition in a temporary folder and look for answers outside the stubs."""
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from labs.instructor import answer_leaks, release
    with tempfile.TemporaryDirectory() as tmp:
        release.build_student(Path(tmp) / "edition", root)
        found = answer_leaks.find(release.folder_files(Path(tmp) / "edition"), root)
    print(f"answer leaks: {len(found)} in the student edition")
    return [str(leak) for leak in found]


def run_graded(impl: str, root: Path = ROOT, workers: int = 0, extra: list[str] = (),
               files: list[str] | None = None) -> list[dict]:
    """The graded tests' outcomes on `impl`, from a pytest of the files that hold them (default: all).

    Only those files are collected, and no traceback is printed (--tb=no): the report keeps what a
    check reads, and formatting 157 failures' tracebacks cost longer than running the tests.
    """
    if files is None:
        files = graded_files(root)
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "pytest", *files, "-m", "exercise", "-q", "-p", "no:cacheprovider",
               "--tb=no", f"--impl={impl}", f"--exercise-report={report}", *extra]
        if workers:
            cmd += ["-n", str(workers)]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(TOOLS), os.environ.get("PYTHONPATH")]))}
        proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, env=env)
        if not report.exists():
            raise SystemExit(f"graded tests did not run on {impl} {' '.join(extra)}:\n"
                             f"{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
        return json.loads(report.read_text())


def check_two_way(root: Path = ROOT, workers: int = 0) -> list[str]:
    problems = []
    on_reference = run_graded("solutions", root, workers)
    for row in on_reference:
        if row["outcome"] != "passed":
            problems.append(f"[{row['exercise']}] fails on the reference: {row['nodeid']}: {row['hint']}")
    on_stubs = run_graded("labs", root, workers)
    for row in on_stubs:
        if row["outcome"] == "passed":
            problems.append(f"[{row['exercise']}] PASSES on the untouched stub: {row['nodeid']}")
        elif row["error"] != "NotImplementedError":
            problems.append(f"[{row['exercise']}] fails on the stub with {row['error']} instead of "
                            f"NotImplementedError: {row['nodeid']}: {row['hint']}")
    print(f"two-way check: {len(on_reference)} graded tests on the reference, {len(on_stubs)} on the stubs")
    if len(on_reference) != len(on_stubs):
        problems.append(f"graded test counts differ: {len(on_reference)} vs {len(on_stubs)}")
    return problems


# ---------------------------------------------------------------------------------------------
# One exercise at a time: variants of the reference with a single body replaced
# ---------------------------------------------------------------------------------------------
KINDS = ("raise", "none", "pass")


def _replacement(kind: str, ex: Exercise) -> str:
    if kind == "raise":
        return f'raise NotImplementedError("Exercise {ex.id}: {ex.qualname} - see {ex.notebook}")'
    return {"none": "return None", "pass": "pass"}[kind]


def variant_source(path: Path, exercise: str, kind: str) -> str:
    """solutions/<module>.py with exercise `exercise`'s region (markers included) replaced, all else kept."""
    ex = next(e for e in stub_source(path)[1] if e.id == exercise)
    out, inside = [], False
    for line in path.read_text().splitlines(keepends=True):
        begin = BEGIN.match(line)
        if begin and begin["id"] == exercise:
            out.append(f'{begin["indent"]}{_replacement(kind, ex)}\n')
            inside = True
        elif inside:
            inside = not END.match(line)
        else:
            out.append(line)
    return "".join(out)


def code_follows(path: Path, exercise: str) -> bool:
    """Whether the function holding the region runs more code after it (then `pass` != `return None`)."""
    lines = path.read_text().splitlines()
    start = next(i for i, line in enumerate(lines, 1) if (m := BEGIN.match(line)) and m["id"] == exercise)
    end = next(i for i, line in enumerate(lines, 1) if i > start and END.match(line))
    functions = [n for n in ast.walk(ast.parse("\n".join(lines)))
                 if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.lineno < start <= n.end_lineno]
    innermost = max(functions, key=lambda n: n.lineno)
    return any(isinstance(n, ast.stmt) and n.lineno > end for n in ast.walk(innermost))


def variants(kind: str, root: Path = ROOT) -> dict[str, tuple[str, Path]]:
    """Exercise id -> (module name, solution file) of every exercise that has a `kind` variant."""
    found = {}
    for path in solution_modules(root):
        for ex in stub_source(path)[1]:
            if kind != "pass" or code_follows(path, ex.id):
                found[ex.id] = (f"solutions.{path.stem}", path)
    return found


class UndoOne:
    """pytest plugin: while a graded test of exercise N.k runs, its module is the reference with
    only N.k's body replaced (`kind`), loaded from a temporary file; every other module and every
    other exercise stays the reference. Tests of exercises without such a variant are deselected."""

    def __init__(self, kind: str, root: Path = ROOT):
        self.kind, self.root = kind, root
        self.available = variants(kind, root)
        self.folder = Path(tempfile.mkdtemp(prefix=f"undo-{kind}-"))
        self.loaded: dict[str, object] = {}

    def module(self, exercise: str):
        if exercise not in self.loaded:
            name, path = self.available[exercise]
            file = self.folder / f"{path.stem}__{exercise.replace('.', '_')}.py"
            file.write_text(variant_source(path, exercise, self.kind))
            spec = importlib.util.spec_from_file_location(name, file)
            module = importlib.util.module_from_spec(spec)
            with _swapped(name, module):  # dataclasses and pickling look the module up by name
                spec.loader.exec_module(module)
            self.loaded[exercise] = module
        return self.loaded[exercise]

    def pytest_collection_modifyitems(self, config, items):
        keep = [i for i in items if _exercise_of(i) in self.available]
        if len(keep) < len(items):
            config.hook.pytest_deselected(items=[i for i in items if i not in keep])
            items[:] = keep

    def pytest_unconfigure(self, config):
        shutil.rmtree(self.folder, ignore_errors=True)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(self, item, nextitem):
        exercise = _exercise_of(item)
        if exercise not in self.available:
            return (yield)
        with _swapped(self.available[exercise][0], self.module(exercise)):
            return (yield)


class _swapped:
    """Make `module` the one imported as `name` (and the package's attribute) for a while."""

    def __init__(self, name: str, module):
        self.name, self.module = name, module

    def __enter__(self):
        package, _, attr = self.name.rpartition(".")
        __import__(self.name)  # the reference, so that the package and its attribute exist to restore
        self.saved = sys.modules[self.name], getattr(sys.modules[package], attr)
        sys.modules[self.name] = self.module
        setattr(sys.modules[package], attr, self.module)

    def __exit__(self, *exc):
        package, _, attr = self.name.rpartition(".")
        sys.modules[self.name] = self.saved[0]
        setattr(sys.modules[package], attr, self.saved[1])


def _exercise_of(item) -> str | None:
    marker = item.get_closest_marker("exercise")
    return str(marker.args[0]) if marker else None


def pytest_addoption(parser):
    parser.addoption("--undo", choices=KINDS, default=None,
                     help="run each graded test with only its own exercise's body replaced by this kind")
    parser.addoption("--undo-root", default=str(ROOT), help="the checkout whose solutions/ the variants come from")


def pytest_configure(config):
    kind = config.getoption("--undo", None)
    if kind:
        config.pluginmanager.register(UndoOne(kind, Path(config.getoption("--undo-root"))), "undo-one-exercise")


def check_each(root: Path = ROOT, workers: int = 0, only: list[str] | None = None) -> list[str]:
    """The one-at-a-time check (4. in the module docstring); `only` limits it to some exercise ids."""
    files = test_files_by_exercise(root)
    unknown = sorted(set(only or ()) - set(files))
    if unknown:
        raise SystemExit(f"no graded tests for exercise(s) {', '.join(unknown)}; known: {', '.join(sorted(files))}")
    wanted = only or sorted(files)
    paths = graded_files(root, wanted)
    problems = []
    for kind in KINDS:
        available = variants(kind, root)
        expected = [ex for ex in wanted if ex in available]
        if not expected:
            continue
        started = time.monotonic()
        rows = [r for r in run_graded("solutions", root, workers,
                                      ["-p", "check_exercises", f"--undo={kind}", f"--undo-root={root}"], paths)
                if r["exercise"] in wanted]
        by_exercise: dict[str, list[dict]] = {}
        for row in rows:
            by_exercise.setdefault(row["exercise"], []).append(row)
        for ex in expected:
            tests = by_exercise.get(ex, [])
            if kind == "raise":
                if not any(r["outcome"] != "passed" and r["error"] == "NotImplementedError"
                           and f"Exercise {ex}:" in r["hint"] for r in tests):
                    problems.append(f"[{ex}] no test of {ex} reaches it: with only {ex} undone (everything "
                                    "else solved), none of its tests fails with its NotImplementedError")
            else:
                body = "return None" if kind == "none" else "pass"
                problems += [f"[{ex}] PASSES when {ex}'s body is just `{body}`: {r['nodeid']}"
                             for r in tests if r["outcome"] == "passed"]
        print(f"one at a time, `{kind}`: {len(expected)} exercises, {len(rows)} graded test runs, "
              f"{time.monotonic() - started:.0f} s")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ids", action="store_true", help="only compare the exercise id sets")
    parser.add_argument("--leaks", action="store_true", help="the id sets and the answer-leak check only")
    parser.add_argument("--each", nargs="*", metavar="N.k", default=None,
                        help="the one-at-a-time check instead of the two-way check (all exercises, or these)")
    parser.add_argument("-n", "--workers", type=int, default=0, help="pytest-xdist workers")
    args = parser.parse_args(argv)
    problems = compare_ids()
    if args.each is not None:
        problems += check_each(workers=args.workers, only=args.each)
    elif not args.ids:
        problems += check_answer_leaks()
        if not args.leaks:
            problems += check_two_way(workers=args.workers)
    for problem in problems:
        print(problem, file=sys.stderr)
    what = "one-at-a-time check" if args.each is not None else "exercise checks"
    print(f"{what}: " + ("FAILED" if problems else "OK"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
