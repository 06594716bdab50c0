"""The two-way check: every graded test passes on the reference and fails on the untouched stubs.

1. The exercise ids declared in solutions/, raised in the labs/ stubs, graded in tests/ and
   checked in notebooks/ must be the same set.
2. With --impl solutions every graded test passes.
3. With --impl labs (the stubs as generated) every graded test fails with NotImplementedError.
   A graded test that passes on a stub tests nothing the student writes: that is a bug.

    python tools/check_exercises.py          # all three
    python tools/check_exercises.py --ids    # only the id sets (fast, no tests run)
"""
from __future__ import annotations

import argparse
import ast
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_stubs import ROOT, all_exercises  # noqa: E402

STUB_ID = re.compile(r'NotImplementedError\(\s*"Exercise (\d+\.\d+):')
CHECK_CALL = re.compile(r'\bcheck\(\s*["\'](\d+\.\d+)["\']\s*\)')


def ids_in_stubs(root: Path = ROOT) -> set[str]:
    return {m for p in (root / "labs").glob("*.py") for m in STUB_ID.findall(p.read_text())}


def ids_in_tests(root: Path = ROOT) -> set[str]:
    """Ids from @pytest.mark.exercise("N.k", ...) decorators, read from the syntax tree."""
    found = set()
    for path in (root / "tests").glob("test_*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "exercise" and node.args
                    and isinstance(node.args[0], ast.Constant)):
                found.add(str(node.args[0].value))
    return found


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


def run_graded(impl: str, root: Path = ROOT, workers: int = 0) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "pytest", "tests", "-m", "exercise", "-q", "-p", "no:cacheprovider",
               f"--impl={impl}", f"--exercise-report={report}"]
        if workers:
            cmd += ["-n", str(workers)]
        proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
        if not report.exists():
            raise SystemExit(f"graded tests did not run on {impl}:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ids", action="store_true", help="only compare the exercise id sets")
    parser.add_argument("-n", "--workers", type=int, default=0, help="pytest-xdist workers")
    args = parser.parse_args(argv)
    problems = compare_ids()
    if not args.ids:
        problems += check_two_way(workers=args.workers)
    for problem in problems:
        print(problem, file=sys.stderr)
    print("two-way check: " + ("FAILED" if problems else "OK"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
