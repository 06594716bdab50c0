"""The exercise machinery itself: stub generation, marker hygiene, id bookkeeping, check reports."""
from __future__ import annotations

import ast
import json
import re
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import check_exercises  # noqa: E402
import make_stubs  # noqa: E402

from labs import check as labs_check  # noqa: E402
from labs.check import STRICT_ENV, ExerciseResult, format_table, summarize  # noqa: E402

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


# ---------------------------------------------------------------------------------------------
# Hints: the values a failed test compared, the regex it wanted, the cause of a common mistake
# ---------------------------------------------------------------------------------------------
def test_hint_shows_expected_and_actual_values_of_a_failed_assertion():
    got = ["norm", "head"]
    with pytest.raises(AssertionError) as info:
        assert got == ["head", "norm"], "expected the frozen names, in model order"
    hint = labs_check.hint_of(info, "2.3")
    assert hint == ("AssertionError: expected the frozen names, in model order | "
                    "assert ['norm', 'head'] == ['head', 'norm']"), hint
    with pytest.raises(AssertionError) as info:
        assert 0.5 == pytest.approx(2.0), "scaling should be alpha/sqrt(r)"
    assert "assert 0.5 == 2.0" in labs_check.hint_of(info, "5.1")
    assert "\n" not in hint and len(labs_check.failure_hint("AssertionError", "x" * 5000)) <= labs_check.HINT_LIMIT


def test_hint_names_the_regex_an_error_message_must_match():
    with pytest.raises(AssertionError) as info:
        with pytest.raises(ValueError, match="trainable"):
            raise ValueError("this model has no parameters left to train")
    hint = labs_check.hint_of(info, "2.3")
    assert "must match the regex 'trainable'" in hint and "no parameters left to train" in hint, hint
    with pytest.raises(pytest.fail.Exception) as info:
        with pytest.raises(ValueError, match="tanh"):
            pass  # a student's code that accepts the bad name silently
    hint = labs_check.hint_of(info, "4.1", Path(__file__))
    assert "DID NOT RAISE" in hint and 'match="tanh"' in hint, hint


def test_a_stub_keeps_its_plain_hint():
    hint = labs_check.failure_hint("NotImplementedError", "Exercise 5.4: LoRALinear.merge - see notebooks/05_lora.ipynb",
                                   "5.4")
    assert hint == "NotImplementedError: Exercise 5.4: LoRALinear.merge - see notebooks/05_lora.ipynb"


def test_a_test_stopped_by_an_earlier_exercise_says_which_one_it_uses():
    hint = labs_check.failure_hint("NotImplementedError", "Exercise 8.1: nf4_code_book - see notebooks/08_qlora.ipynb",
                                   "8.3")
    assert hint.startswith("NotImplementedError: Exercise 8.1: nf4_code_book"), "still reads as not started"
    assert "exercise 8.3's tests use exercise 8.1: finish 8.1 first" in hint, hint


@pytest.mark.parametrize("mistake", labs_check.COMMON_MISTAKES, ids=lambda m: f"{m.exercises}:{m.cause[:30]}")
def test_each_common_mistake_is_recognised_from_its_real_error(mistake):
    error, _, message = mistake.example.partition(": ")
    for exercise in mistake.exercises.split():
        assert exercise in check_exercises.ids_in_tests(), f"{exercise} is no exercise of the course"
        hint = labs_check.failure_hint(error, message, exercise)
        assert hint.endswith(f"likely cause: {mistake.cause}"), hint
    assert mistake.cause not in labs_check.failure_hint(error, message, "9.9"), "a cause belongs to its exercises"


def test_the_issue_s_conv1d_mistake_gets_its_cause():
    hint = labs_check.failure_hint(
        "RuntimeError", "The size of tensor a (24) must match the size of tensor b (16) at non-singleton dimension 1",
        "5.4")
    assert "Conv1D stores its weight (in, out)" in hint and "linear_weight" in hint, hint


def graded_regexes() -> list[tuple[str, str, str, bool]]:
    """(exercise, module, literal part of the regex, whether it is the test's own bad input) for every
    pytest.raises(match=...) in a graded test."""
    found = []
    for path in sorted((ROOT / "tests").glob("test_ex_*.py")):
        tree = ast.parse(path.read_text())
        for fn in (n for n in tree.body if isinstance(n, ast.FunctionDef)):
            marks = [d for d in fn.decorator_list if isinstance(d, ast.Call) and ast.unparse(d.func).endswith("exercise")]
            if not marks:
                continue
            exercise = marks[0].args[0].value
            for call in (n for n in ast.walk(fn) if isinstance(n, ast.Call) and ast.unparse(n.func) == "pytest.raises"):
                match = next((k.value for k in call.keywords if k.arg == "match"), None)
                if match is None:
                    continue
                formatted = isinstance(match, ast.JoinedStr)
                parts = [v.value for v in match.values if isinstance(v, ast.Constant)] if formatted else [match.value]
                literal = "".join(parts).removeprefix("(?i)").replace("\\", "")
                others = [n.value for n in ast.walk(fn) if isinstance(n, ast.Constant) and isinstance(n.value, str)
                          and n is not match]
                from_input = not formatted and any(literal in text for text in others)
                found.append((exercise, path.stem.removeprefix("test_ex_"), literal, from_input))
    return found


def exercise_texts(exercise: str, module: str) -> dict[str, str]:
    """The docstring above an exercise's region and its paragraph in the notebook."""
    source = (ROOT / "solutions" / f"{module}.py").read_text()
    line = next(i for i, text in enumerate(source.splitlines(), 1)
                if re.fullmatch(rf"\s*#\s*BEGIN SOLUTION {re.escape(exercise)}", text))
    functions = [n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.FunctionDef)
                 and n.lineno <= line <= n.end_lineno]
    docstring = ast.get_docstring(max(functions, key=lambda n: n.lineno)) or ""
    number = exercise.split(".")[0].zfill(2)
    notebook = next((ROOT / "notebooks").glob(f"{number}_*.ipynb"))
    cells = ["".join(c["source"]) for c in json.loads(notebook.read_text())["cells"] if c["cell_type"] == "markdown"]
    text = next(c for c in cells if f"**Exercise {exercise}.**" in c)
    paragraph = text[text.index(f"**Exercise {exercise}.**"):]
    paragraph = paragraph.split("**Exercise ", 2)[:2][1] if paragraph.count("**Exercise ") > 1 else paragraph
    return {f"solutions/{module}.py docstring": docstring, f"{notebook.name}": paragraph}


def test_exercise_texts_say_what_a_matched_error_message_must_contain():
    pairs = graded_regexes()
    assert {ex for ex, *_ in pairs} >= {"0.1", "4.1", "5.6", "7.1"}, pairs
    missing = []
    for exercise, module, literal, from_input in pairs:
        for where, text in exercise_texts(exercise, module).items():
            says = re.search(r"message\s+must\s+contain", text)
            if not says or not from_input and literal.lower() not in text.lower():
                missing.append(f"{exercise} ({where}): the test matches {literal!r}")
    assert not missing, "say in the exercise's text what the error message must contain:\n" + "\n".join(missing)


# ---------------------------------------------------------------------------------------------
# One exercise at a time (check_exercises --each)
# ---------------------------------------------------------------------------------------------
FOLLOWED = SOLUTION + '''

class Counter:
    def __init__(self, start):
        # BEGIN SOLUTION 9.3
        self.value = start
        # END SOLUTION
        self.calls = 0
'''


def test_variant_replaces_only_the_one_region(tmp_path):
    path = make_tree(tmp_path, FOLLOWED) / "solutions" / "demo.py"
    text = check_exercises.variant_source(path, "9.2", "raise")
    assert 'raise NotImplementedError("Exercise 9.2: plus_one - see notebooks/09_demo.ipynb")' in text
    assert "return a + 1" not in text and "return 2 * x" in text and "self.value = start" in text
    assert "BEGIN SOLUTION 9.1" in text and "BEGIN SOLUTION 9.2" not in text
    namespace: dict = {}
    exec(compile(check_exercises.variant_source(path, "9.1", "none"), "demo.py", "exec"), namespace)
    assert namespace["Doubler"]().forward(3) is None and namespace["plus_one"](1) == 2
    # `pass` differs from `return None` only where the function goes on after the region
    assert [check_exercises.code_follows(path, ex) for ex in ("9.1", "9.2", "9.3")] == [False, False, True]
    exec(compile(check_exercises.variant_source(path, "9.3", "pass"), "demo.py", "exec"), namespace)
    counter = namespace["Counter"](5)
    assert counter.calls == 0 and not hasattr(counter, "value")


def test_each_check_catches_a_test_that_passes_on_a_body_that_does_nothing(tmp_path):
    """End to end on a tiny course: 9.1 has a real test; 9.2's only test passes on `return None`."""
    root = make_tree(tmp_path)
    (root / "solutions" / "__init__.py").write_text("")
    make_stubs.main(["--root", str(root)])
    shutil.copyfile(ROOT / "tests" / "conftest.py", root / "tests" / "conftest.py")
    (root / "labs" / "__init__.py").write_text("")
    (root / "labs" / "impl.py").write_text((ROOT / "labs" / "impl.py").read_text())
    (root / "tests" / "test_ex_demo.py").write_text(
        "import pytest\n\n"
        '@pytest.mark.exercise("9.1", points=1)\n'
        'def test_doubles(impl):\n    assert impl("demo").Doubler().forward(3) == 6\n\n\n'
        '@pytest.mark.exercise("9.2", points=1)\n'
        'def test_never_raises(impl):\n    impl("demo").plus_one(1)  # checks nothing about the result\n')
    problems = check_exercises.check_each(root)
    assert problems == ["[9.2] PASSES when 9.2's body is just `return None`: tests/test_ex_demo.py::test_never_raises"]
    assert (root / "solutions" / "demo.py").read_text() == SOLUTION, "the reference itself is never touched"


# ---------------------------------------------------------------------------------------------
# First-party imports, notebook checks, notebook builders
# ---------------------------------------------------------------------------------------------
def test_first_party_modules_are_imported_never_skipped():
    """pytest.importorskip would hide a broken course module behind a skip; only third-party
    packages (an optional accelerator library, say) may be skipped when absent."""
    first_party = {p.name for p in ROOT.iterdir() if p.is_dir()} | {p.stem for p in (ROOT / "tools").rglob("*.py")}
    offenders = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "importorskip" and node.args
                    and isinstance(node.args[0], ast.Constant)
                    and str(node.args[0].value).split(".")[0] in first_party):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} importorskip({node.args[0].value!r})")
    assert not offenders, "import first-party modules plainly: " + ", ".join(offenders)


FAILING = ExerciseResult("5.2", 1, 3, 1, 3, "AssertionError: B must start at zero")
PASSING = ExerciseResult("5.2", 3, 3, 3, 3, "")
FAILING_5_3 = ExerciseResult("5.3", 0, 2, 0, 2, "AssertionError: merge twice")


@pytest.fixture(autouse=True)
def fresh_check_results(monkeypatch):
    """check() keeps results while the code is unchanged: every test here starts without any, and
    each replacement of run_checks below counts as new code."""
    labs_check._RESULTS.clear()
    fingerprint = iter(range(10**6))
    monkeypatch.setattr(labs_check, "code_fingerprint", lambda: str(next(fingerprint)))


def test_checks_of_one_notebook_run_its_tests_once_per_version_of_the_code(monkeypatch, capsys):
    monkeypatch.setenv(STRICT_ENV, "0")  # a learner's check: a failing exercise prints, never raises
    calls, version = [], ["v1"]
    monkeypatch.setattr(labs_check, "code_fingerprint", lambda: version[0])
    monkeypatch.setattr(labs_check, "run_checks", lambda selector, impl: calls.append(selector) or [PASSING, FAILING_5_3])
    labs_check.check("5.2")
    labs_check.check("5.3")
    assert calls == ["5"], "one run for the notebook, reused while no file changed"
    out = capsys.readouterr().out
    assert "Exercise 5.2: PASSED" in out and "Exercise 5.3: FAILING" in out
    version[0] = "v2"  # a learner saved their module
    labs_check.check("5.3")
    assert calls == ["5", "5"]


def test_thecode_fingerprint_changes_when_a_module_changes(tmp_path, monkeypatch):
    monkeypatch.undo()  # the real fingerprint, over a copy of the layout
    for folder in ("labs", "solutions", "tests"):
        (tmp_path / folder).mkdir()
    module = tmp_path / "labs" / "lora.py"
    module.write_text("x = 1\n")
    monkeypatch.setattr(labs_check, "ROOT", tmp_path)
    before = labs_check.code_fingerprint()
    assert labs_check.code_fingerprint() == before
    module.write_text("x = 2\n")
    assert labs_check.code_fingerprint() != before


@pytest.mark.parametrize("env", [{}, {"CI": "true", "LABS_CHECK_STRICT": "0"}])
def test_a_learners_failing_check_prints_and_does_not_raise(monkeypatch, capsys, env):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv(STRICT_ENV, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(labs_check, "run_checks", lambda *args: [FAILING])
    assert labs_check.check("5.2") is None
    assert "Exercise 5.2: FAILING (1/3 points, 1/3 tests" in capsys.readouterr().out


@pytest.mark.parametrize("env", [{STRICT_ENV: "1"}, {"CI": "true"}])
def test_a_failing_check_raises_under_the_tests_and_in_ci(monkeypatch, capsys, env):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv(STRICT_ENV, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(labs_check, "run_checks", lambda *args: [FAILING])
    with pytest.raises(labs_check.CheckFailed, match="Exercise 5.2: FAILING .*B must start at zero"):
        labs_check.check("5.2")
    assert "FAILING" in capsys.readouterr().out, "the line is printed before the error"
    monkeypatch.setattr(labs_check, "run_checks", lambda *args: [])
    with pytest.raises(labs_check.CheckFailed, match="no graded tests"):
        labs_check.check("5.9")
    monkeypatch.setattr(labs_check, "run_checks", lambda *args: [PASSING])
    labs_check.check("5.2")  # a passing check never raises
    monkeypatch.setenv(STRICT_ENV, "yes")
    with pytest.raises(ValueError, match="LABS_CHECK_STRICT='yes' is not valid"):
        labs_check.strict()
