"""The exercise machinery itself: stub generation, marker hygiene, id bookkeeping, check reports."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import check_exercises  # noqa: E402
import make_stubs  # noqa: E402

from labs.check import format_table, summarize  # noqa: E402

SOLUTION = '''"""A tiny technique."""
NOTEBOOK = "notebooks/09_demo.ipynb"


class Doubler:
    def forward(self, x):
        """Return 2 x."""
        # BEGIN SOLUTION 9.1
        return 2 * x
        # END SOLUTION


def plus_one(a):
    # BEGIN SOLUTION 9.2
    return a + 1
    # END SOLUTION
'''


def make_tree(tmp_path: Path, solution: str = SOLUTION) -> Path:
    for folder in ("solutions", "labs", "tests", "notebooks"):
        (tmp_path / folder).mkdir()
    (tmp_path / "solutions" / "demo.py").write_text(solution)
    return tmp_path


def test_stub_replaces_each_body_and_keeps_the_rest(tmp_path):
    root = make_tree(tmp_path)
    assert make_stubs.main(["--root", str(root)]) == 0
    stub = (root / "labs" / "demo.py").read_text()
    assert stub.startswith("# GENERATED from solutions/demo.py")
    assert 'raise NotImplementedError("Exercise 9.1: Doubler.forward - see notebooks/09_demo.ipynb")' in stub
    assert 'raise NotImplementedError("Exercise 9.2: plus_one - see notebooks/09_demo.ipynb")' in stub
    assert "return 2 * x" not in stub and "SOLUTION" not in stub
    assert '"""Return 2 x."""' in stub  # the docstring stays for the student
    namespace: dict = {}
    exec(compile(stub, "demo.py", "exec"), namespace)
    with pytest.raises(NotImplementedError, match="Exercise 9.1"):
        namespace["Doubler"]().forward(3)


def test_check_mode_catches_stale_stub_and_leaked_marker(tmp_path):
    root = make_tree(tmp_path)
    assert make_stubs.main(["--root", str(root), "--check"]) == 1  # stub missing
    make_stubs.main(["--root", str(root)])
    assert make_stubs.main(["--root", str(root), "--check"]) == 0
    (root / "labs" / "other.py").write_text("# BEGIN SOLUTION 1.1\n")
    assert make_stubs.main(["--root", str(root), "--check"]) == 1


@pytest.mark.parametrize("broken, message", [
    (SOLUTION.rsplit("    # END SOLUTION\n", 1)[0], "no END SOLUTION"),
    (SOLUTION.replace("        # END SOLUTION\n", "", 1), "BEGIN SOLUTION inside exercise 9.1"),
    (SOLUTION.replace("NOTEBOOK = ", "BOOK = "), "NOTEBOOK"),
    (SOLUTION + "# BEGIN SOLUTION 9.3\nx = 1\n# END SOLUTION\n", "not inside a function"),
])
def test_malformed_solutions_are_refused_with_a_reason(tmp_path, broken, message):
    root = make_tree(tmp_path, broken)
    with pytest.raises(SystemExit, match=message):
        make_stubs.main(["--root", str(root)])


def test_id_sets_must_agree(tmp_path):
    root = make_tree(tmp_path)
    make_stubs.main(["--root", str(root)])
    (root / "tests" / "test_ex_demo.py").write_text(
        'import pytest\n@pytest.mark.exercise("9.1", points=1)\ndef test_a(impl):\n    pass\n')
    problems = check_exercises.compare_ids(root)
    assert any("missing from tests: 9.2" in p for p in problems)
    assert any("missing from notebooks: 9.1, 9.2" in p for p in problems)


def test_repository_stubs_are_in_sync_and_ids_agree():
    assert make_stubs.main(["--check"]) == 0
    assert check_exercises.compare_ids() == []


def test_summary_folds_tests_into_exercises():
    rows = [
        {"exercise": "5.2", "points": 1, "outcome": "passed", "hint": ""},
        {"exercise": "5.2", "points": 2, "outcome": "failed", "hint": "AssertionError: B must start at zero"},
        {"exercise": "5.10", "points": 1, "outcome": "failed", "hint": "NotImplementedError: Exercise 5.10"},
    ]
    first, second = summarize(rows)
    assert (first.exercise, first.points, first.max_points, first.status) == ("5.2", 1, 3, "failing")
    assert second.exercise == "5.10" and second.status == "not started"
    table = format_table([first, second])
    assert "B must start at zero" in table and "1/4" in table


def test_check_rejects_a_malformed_selector():
    from labs.check import run_checks
    with pytest.raises(ValueError, match="5.2"):
        run_checks("lora")
