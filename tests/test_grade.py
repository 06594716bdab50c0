"""labs grade: correct, partial, untouched, malformed and hostile submissions, each graded to what
it deserves; nothing a submission does raises its own score or sinks another module's.

The expensive part (one grading run over a whole class) happens once, in a module fixture, on a
small course built from the three fastest technique modules plus a probe test that looks around
from inside the grading child.
"""
from __future__ import annotations

import csv
import json
import re
import shutil
import zipfile
from pathlib import Path

import pytest

from labs.instructor import screen, submissions
from labs.instructor.grade import Course, Limits, grade
from labs.instructor.grade import main as grade_main

ROOT = Path(__file__).resolve().parent.parent
# One worker runs this whole file: its module fixture grades a class of submissions once.
pytestmark = pytest.mark.xdist_group("grade")
MODULES = ("scaling", "freezing", "lora")  # the fastest graded modules
LIMITS = Limits(timeout=90, test_timeout=4, memory_mb=3072)
BEGIN = re.compile(r"^\s*# BEGIN SOLUTION (?P<id>\d+\.\d+)\s*$")
END = re.compile(r"^\s*# END SOLUTION\s*$")

PROBE = '''"""Runs in the grading child beside the student's code, and checks what that code could reach."""
import importlib
import os
import resource
import sys
from pathlib import Path

import pytest


@pytest.mark.exercise("0.1", points=1)
def test_the_grading_child_is_isolated(impl):
    assert impl("scaling").bytes_of_weights(1, "fp32") == 4, "exercise 0.1 is not done"
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("solutions")
    here = Path.cwd().resolve()
    assert Path(sys.modules["labs"].__file__).resolve().is_relative_to(here), "labs must come from the tree"
    assert not [p for p in sys.path if p and Path(p).resolve() == Path(INSTRUCTOR).resolve()], sys.path
    assert not [f for f in sys.meta_path if "__editable__" in repr(f)], "an editable finder survived"
    assert not Path(__file__).exists(), "hidden test files must be gone before student code runs"
    assert Path(os.environ["HOME"]).resolve().is_relative_to(here), "HOME must be scrubbed"
    assert os.environ["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] == "1" and os.environ["LABS_IMPL"] == "labs"
    assert resource.getrlimit(resource.RLIMIT_AS)[0] == MEMORY * 2**20, "memory limit not set"
    assert 0 < resource.getrlimit(resource.RLIMIT_CPU)[0] < 10**6, "CPU limit not set"
    assert 0 < resource.getrlimit(resource.RLIMIT_FSIZE)[0] < 2**40, "file size limit not set"
'''


# ---------------------------------------------------------------------------------------------
# Writing submissions
# ---------------------------------------------------------------------------------------------
def filled(name: str, done=lambda ex: True) -> str:
    """labs/<name>.py as handed in by a student who did the exercises `done`: the generated stub
    with those bodies taken from the reference, the others still raising NotImplementedError."""
    stub_raises = [line for line in (ROOT / "labs" / f"{name}.py").read_text().splitlines(True)
                   if 'raise NotImplementedError("Exercise' in line]
    out, current, k = [], None, 0
    for line in (ROOT / "solutions" / f"{name}.py").read_text().splitlines(True):
        begin = BEGIN.match(line)
        if begin:
            current = begin["id"]
            if not done(current):
                out.append(stub_raises[k])
            k += 1
        elif current and END.match(line):
            current = None
        elif current is None or done(current):
            out.append(line)
    return "".join(out)


def edit(text: str, anchor: str, before: str) -> str:
    """Insert `before` in front of the first line containing `anchor`."""
    assert anchor in text, f"anchor {anchor!r} not found: the reference changed"
    at = text.index(anchor)
    start = text.rfind("\n", 0, at) + 1
    return text[:start] + before + text[start:]


def folder(base: Path, name: str, modules: dict[str, str], extra: dict[str, str] | None = None) -> Path:
    labs = base / name / "labs"
    labs.mkdir(parents=True)
    for module in MODULES:
        (labs / f"{module}.py").write_text(modules.get(module, (ROOT / "labs" / f"{module}.py").read_text()))
    for rel, text in (extra or {}).items():
        (base / name / rel).parent.mkdir(parents=True, exist_ok=True)
        (base / name / rel).write_text(text)
    return base / name


def zipped(base: Path, name: str, entries: dict[str, str | bytes]) -> Path:
    path = base / f"{name}.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for entry, data in entries.items():
            archive.writestr(entry, data)
    return path


LOOP = "    while True:\n        pass\n"
SWALLOW = "    while True:\n        try:\n            while True:\n                pass\n        except BaseException:\n            pass\n"


def build_class(base: Path) -> list[Path]:
    sc, fr, lo = filled("scaling"), filled("freezing"), filled("lora")
    stub = {m: (ROOT / "labs" / f"{m}.py").read_text() for m in MODULES}
    no_52 = filled("lora", lambda ex: ex != "5.2")
    hostile_conftest = ("import pytest\n\n@pytest.hookimpl(wrapper=True)\ndef pytest_runtest_makereport(item, call):\n"
                        "    report = yield\n    report.outcome = 'passed'\n    return report\n")
    return [
        folder(base, "correct", {"scaling": sc, "freezing": fr, "lora": lo}),
        folder(base, "partial", {"scaling": filled("scaling", lambda ex: ex != "0.4"),
                                 "lora": filled("lora", lambda ex: ex in ("5.1", "5.2", "5.3"))}),
        folder(base, "untouched", {}),
        folder(base, "syntax", {"scaling": sc, "lora": lo + "\ndef broken(:\n"}),
        folder(base, "nolabs", {}, {"README.md": "my work"}) and shutil.rmtree(base / "nolabs" / "labs") or base / "nolabs",
        zipped(base, "empty", {}),
        (base / "corrupt.zip").write_bytes(b"PK\x03\x04 this is not a zip file") and base / "corrupt.zip",
        zipped(base, "traversal", {"../../evil.py": "print('escaped')", "alice/labs/scaling.py": sc,
                                   "alice/labs/freezing.py": stub["freezing"]}),
        zipped(base, "bomb", {"labs/scaling.py": sc, "labs/padding.bin": b"\0" * (3 * 2**20)}),
        folder(base, "loop", {"scaling": sc, "freezing": edit(fr, "freeze_all(model)  # first", LOOP)}),
        folder(base, "membomb", {"scaling": edit(sc, "d_in, d_out = check_count", "    hog = bytearray(64 * 2**30)\n")}),
        folder(base, "osexit", {"scaling": "import os\nos._exit(0)\n" + sc, "freezing": fr}),
        folder(base, "sysexit", {"scaling": edit(sc, 'bits = {"fp32"', "    raise SystemExit(0)\n")}),
        folder(base, "forger", {"freezing": fr, "scaling": sc + "\nimport atexit\natexit.register(print, "
                                "'{\"score\": 999}')\nprint('{\"event\": \"result\", \"outcome\": \"passed\"}')\n"}),
        folder(base, "plugin", {}, {"conftest.py": hostile_conftest, "labs/conftest.py": hostile_conftest,
                                    "tests/conftest.py": hostile_conftest, "pytest.ini": "[pytest]\naddopts = -p no:terminal\n",
                                    "labs/pytest_plugin.py": hostile_conftest}),
        folder(base, "builtins", {"scaling": "import builtins\nbuiltins.isinstance = lambda *a: True\n" + sc}),
        folder(base, "patcher", {"lora": edit(no_52, "NOTEBOOK =", "torch.testing.assert_close = lambda *a, **k: None\n")}),
        folder(base, "sneaky", {"lora": edit(no_52, "NOTEBOOK =", "(torch.testing or None).assert_close = lambda *a, **k: None\n")}),
        folder(base, "reader", {"scaling": edit(sc, 'bits = {"fp32"', "    open('tests/hidden/test_hidden_scaling.py').read()\n")}),
        folder(base, "cheater", {"scaling": "import solutions.scaling\n" + sc}),
        folder(base, "peft", {"lora": edit(lo, "return (self.lora_B @ self.lora_A)", "        import peft\n        peft.LoraConfig(r=1)\n")}),
        folder(base, "interrupt", {"scaling": sc + "\nraise KeyboardInterrupt\n", "freezing": fr}),
        folder(base, "swallow", {"scaling": edit(sc, "n_tasks = check_count(n_tasks", SWALLOW), "freezing": fr}),
    ]


@pytest.fixture(scope="module")
def course_root(tmp_path_factory) -> Path:
    """A small instructor checkout: infrastructure, three technique stubs, their tests, a probe."""
    root = tmp_path_factory.mktemp("course")
    (root / "labs").mkdir()
    for src in (ROOT / "labs").glob("*.py"):
        if not src.read_text().startswith("# GENERATED") or src.stem in MODULES:
            shutil.copyfile(src, root / "labs" / src.name)
    (root / "tests" / "hidden").mkdir(parents=True)
    shutil.copyfile(ROOT / "tests" / "conftest.py", root / "tests" / "conftest.py")
    for module in MODULES:
        shutil.copyfile(ROOT / "tests" / f"test_ex_{module}.py", root / "tests" / f"test_ex_{module}.py")
        shutil.copyfile(ROOT / "tests" / "hidden" / f"test_hidden_{module}.py",
                        root / "tests" / "hidden" / f"test_hidden_{module}.py")
    probe = PROBE.replace("INSTRUCTOR", repr(str(ROOT))).replace("MEMORY", str(LIMITS.memory_mb))
    (root / "tests" / "hidden" / "test_hidden_probe.py").write_text(probe)
    shutil.copyfile(ROOT / "pyproject.toml", root / "pyproject.toml")
    return root


@pytest.fixture(scope="module")
def graded(course_root, tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("class")
    out = tmp_path_factory.mktemp("grades")
    paths = build_class(base)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(submissions, "MAX_ZIP_BYTES", 2**20)  # the bomb's 3 MB of zeros is over it
        rows = grade(paths, out, LIMITS, jobs=2, course=Course.load(course_root), progress=lambda line: None)
    table = {row["student"]: row for row in csv.DictReader((out / "grades.csv").open())}
    results = {p.parent.name: json.loads(p.read_text()) for p in out.glob("*/results.json")}
    return {"rows": rows, "csv": table, "results": results, "out": out, "base": base}


def points(graded: dict, student: str) -> dict[str, float]:
    return {k: float(v) for k, v in graded["csv"][student].items() if re.fullmatch(r"\d+\.\d+", k)}


def maxima(graded: dict) -> dict[str, float]:
    top: dict[str, float] = {}
    for test in graded["results"]["correct"]["tests"]:
        top[test["number"]] = top.get(test["number"], 0) + test["max_score"]
    return top


def of(module_number: str, scores: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in scores.items() if k.split(".")[0] == module_number}


def messages(graded: dict, student: str, exercise: str) -> str:
    return " | ".join(t["output"] for t in graded["results"][student]["tests"] if t["number"] == exercise)


def feedback(graded: dict, student: str) -> str:
    return (graded["out"] / student / "feedback.md").read_text()


# ---------------------------------------------------------------------------------------------
# Honest submissions
# ---------------------------------------------------------------------------------------------
def test_correct_submission_earns_every_point_and_the_child_is_isolated(graded):
    top, got = maxima(graded), points(graded, "correct")
    for number in ("0", "2", "5"):
        assert of(number, got) == of(number, top), f"notebook {number}: {of(number, got)} != {of(number, top)}"
    assert graded["csv"]["correct"]["status"] == "ok"
    probe = [t for t in graded["results"]["correct"]["tests"] if "isolated" in t["name"]]
    assert probe and probe[0]["score"] == 1, f"isolation probe failed inside the child: {probe}"


def test_reports_follow_the_gradescope_format(graded):
    result = graded["results"]["correct"]
    assert result["score"] == sum(t["score"] for t in result["tests"]) and result["execution_time"] > 0
    kinds = {t["visibility"] for t in result["tests"] if "hidden" in t["name"] or "isolated" in t["name"]}
    assert {t["visibility"] for t in result["tests"]} == {"visible", "after_published"} and kinds
    assert all({"name", "score", "max_score", "output", "visibility"} <= set(t) for t in result["tests"])
    assert list(graded["csv"]["correct"])[:1] == ["student"] and list(graded["csv"]["correct"])[-2:] == ["total", "status"]
    assert len(graded["rows"]) == len(graded["csv"]) == 23, "one row per submission, none lost"
    assert not list(graded["out"].rglob("*.tmp")), "reports are written atomically"


def test_partial_submission_earns_partial_credit(graded):
    top, got = maxima(graded), points(graded, "partial")
    assert [got[e] == top[e] for e in ("0.1", "0.2", "0.3", "0.4")] == [True, True, True, False]
    assert got["0.4"] == 0 and got["5.1"] == top["5.1"] and got["5.3"] == top["5.3"]
    assert 0 <= got["5.6"] < top["5.6"], "5.6 was not done"
    assert "not started" in feedback(graded, "partial")


def test_untouched_stubs_score_zero(graded):
    assert sum(points(graded, "untouched").values()) == 0
    assert graded["csv"]["untouched"]["status"] == "ok"
    assert "NotImplementedError" in messages(graded, "untouched", "5.2")


# ---------------------------------------------------------------------------------------------
# Malformed submissions: a row with the reason, zero only for what broke
# ---------------------------------------------------------------------------------------------
def test_syntax_error_zeroes_only_its_module(graded):
    got, top = points(graded, "syntax"), maxima(graded)
    assert sum(of("5", got).values()) == 0 and of("0", got) == of("0", top)
    assert "does not parse" in messages(graded, "syntax", "5.1")
    assert graded["csv"]["syntax"]["status"] == "partial"


@pytest.mark.parametrize("student, reason", [("nolabs", "no labs/ folder"), ("empty", "empty"),
                                             ("corrupt", "not a readable zip"), ("bomb", "too large")])
def test_unusable_submission_gets_a_row_with_the_reason(graded, student, reason):
    status = graded["csv"][student]["status"]
    assert status.startswith("error:") and reason in status, status
    assert float(graded["csv"][student]["total"]) == 0


def test_zip_traversal_entry_is_ignored_and_the_rest_graded(graded):
    assert of("0", points(graded, "traversal")) == of("0", maxima(graded))
    assert "ignored unsafe zip entry" in feedback(graded, "traversal")
    assert not list(graded["base"].parent.rglob("evil.py")), "a zip entry escaped onto the disk"


# ---------------------------------------------------------------------------------------------
# Hostile submissions
# ---------------------------------------------------------------------------------------------
def test_endless_loop_fails_its_exercise_only(graded):
    got, top = points(graded, "loop"), maxima(graded)
    assert got["2.4"] == 0 and all(got[e] == top[e] for e in ("2.1", "2.2", "2.3"))
    assert of("0", got) == of("0", top) and "TestTimeout" in messages(graded, "loop", "2.4")


def test_endless_loop_that_swallows_its_timeout_is_killed(graded):
    got, top = points(graded, "swallow"), maxima(graded)
    assert got["0.4"] == 0 and all(got[e] == top[e] for e in ("0.1", "0.2", "0.3"))
    assert of("2", got) == of("2", top), "another module must not pay for it"
    assert "ignored its timeout" in messages(graded, "swallow", "0.4")


def test_memory_bomb_fails_its_exercise_only(graded):
    got, top = points(graded, "membomb"), maxima(graded)
    assert got["0.3"] == 0 and "MemoryError" in messages(graded, "membomb", "0.3")
    assert all(got[e] == top[e] for e in ("0.1", "0.2", "0.4"))


@pytest.mark.parametrize("student, exercise, reason", [
    ("osexit", "0.1", "import of os"), ("forger", "0.1", "import of atexit"),
    ("builtins", "0.1", "import of builtins"), ("patcher", "5.1", "assigns into torch"),
    ("reader", "0.2", "use of open"), ("cheater", "0.3", "imports the reference solutions")])
def test_screen_refuses_the_module_and_says_why(graded, student, exercise, reason):
    assert reason in messages(graded, student, exercise)
    module = exercise.split(".")[0]
    assert sum(of(module, points(graded, student)).values()) == 0
    assert graded["csv"][student]["status"] == "partial"


def test_refused_module_leaves_the_others_graded(graded):
    for student in ("osexit", "forger"):
        assert of("2", points(graded, student)) == of("2", maxima(graded)), student


def test_exit_in_a_test_fails_that_test_only(graded):
    got, top = points(graded, "sysexit"), maxima(graded)
    assert got["0.1"] == 0 and "SystemExit" in messages(graded, "sysexit", "0.1")
    assert all(got[e] == top[e] for e in ("0.2", "0.3", "0.4"))


def test_keyboard_interrupt_at_import_zeroes_its_module_only(graded):
    got = points(graded, "interrupt")
    assert sum(of("0", got).values()) == 0 and "KeyboardInterrupt" in messages(graded, "interrupt", "0.2")
    assert of("2", got) == of("2", maxima(graded))


def test_conftest_and_plugins_in_a_submission_change_nothing(graded):
    assert points(graded, "plugin") == points(graded, "untouched")


def test_patching_a_library_past_the_screen_is_caught_and_earns_nothing(graded):
    got, top = points(graded, "sneaky"), maxima(graded)
    assert got["5.2"] == 0 and got["5.1"] == top["5.1"]
    tampered = [t for t in graded["results"]["sneaky"]["tests"] if "replaced torch.testing.assert_close" in t["output"]]
    assert tampered and all(t["score"] == 0 for t in tampered)


def test_calling_peft_zeroes_that_exercise_only(graded):
    got, top = points(graded, "peft"), maxima(graded)
    assert got["5.3"] == 0 and "from scratch" in messages(graded, "peft", "5.3")
    assert all(got[e] == top[e] for e in ("5.1", "5.2", "5.4", "5.5", "5.6")), got


def test_no_submission_outscores_its_honest_work(graded):
    """The hostile ones hold at most the reference's code: none may beat the correct submission."""
    best = float(graded["csv"]["correct"]["total"])
    assert all(float(row["total"]) <= best for row in graded["csv"].values())
    assert float(graded["csv"]["plugin"]["total"]) == 0 and float(graded["csv"]["forger"]["total"]) < best


# ---------------------------------------------------------------------------------------------
# The screen, the submission reader and the command line on their own (no processes)
# ---------------------------------------------------------------------------------------------
TECHNIQUES = frozenset(p.stem for p in (ROOT / "solutions").glob("*.py") if p.stem != "__init__")


@pytest.mark.parametrize("name", sorted(TECHNIQUES))
def test_screen_accepts_every_reference_solution_and_stub(name):
    stub = (ROOT / "labs" / f"{name}.py").read_text()
    assert screen.screen_module(filled(name), stub, TECHNIQUES) == []
    assert screen.screen_module(stub, stub, TECHNIQUES) == []


@pytest.mark.parametrize("code, refused", [
    ("import subprocess", "import of subprocess"), ("from importlib import import_module", "import of importlib"),
    ("x = eval('1')", "use of eval"), ("f = open", "use of open"), ("g = globals()", "use of globals"),
    ("x = (lambda: 0).__globals__", "dunder attribute .__globals__"), ("x = torch._C", "private attribute ._C"),
    ("x = torch.os", "attribute .os"), ("m = torch.load", "attribute .load"),
    ("x = getattr(torch, 'allc' + 'lose')", "computed attribute name"),
    ("setattr(torch, 'allclose', print)", "setattr on torch"), ("torch.allclose = print", "assigns into torch"),
    ("nn.Linear.forward = print", "assigns into nn"), ("del torch.allclose", "assigns into torch"),
    ("class T(torch.Tensor):\n    def __torch_function__(cls, *a):\n        return True", "defines __torch_function__"),
    ("class E:\n    def __eq__(self, other):\n        return True", "defines __eq__"),
    ("class M(metaclass=type):\n    pass", "metaclass"), ("C = type('C', (), {})", "type(...) with more"),
    ("k = '__class__'", "dunder names"), ("from . import os", "relative import"),
    ("from labs import impl", "import of labs.impl"), ("g = (x for x in []).gi_frame", "attribute .gi_frame"),
    ("def f(x: 'os.system(1)'):\n    pass", "annotation string")])
def test_screen_refuses_what_reaches_outside_the_module(code, refused):
    stub = (ROOT / "labs" / "lora.py").read_text()
    findings = screen.screen_module(stub + "\n" + code + "\n", stub, TECHNIQUES)
    assert any(refused in f.what and f.exercise is None for f in findings), findings


def test_screen_allows_ordinary_student_code():
    stub = (ROOT / "labs" / "lora.py").read_text()
    code = ("import math\nfrom . import scaling\nfrom labs.surgery import freeze\n\n"
            "def helper(layer, name):\n    layer.weight.requires_grad = False\n"
            "    return getattr(layer, name), getattr(layer, 'bias', None), super\n")
    assert screen.screen_module(stub + "\n" + code, stub, TECHNIQUES) == []


def test_from_scratch_policy_follows_helpers_but_not_other_exercises():
    stub = (ROOT / "labs" / "lora.py").read_text()
    source = filled("lora").replace("        return (self.lora_B @ self.lora_A) * self.scaling",
                                    "        return helper(self)")
    source += "\nimport peft\n\ndef helper(layer):\n    return peft.tuners.lora.Linear\n"
    findings = screen.screen_module(source, stub, TECHNIQUES)
    assert {f.exercise for f in findings} == {"5.3"}, findings  # merge calls delta_weight: not tainted


def test_zip_is_read_in_memory_with_caps(tmp_path):
    path = zipped(tmp_path, "z", {"../../escape.py": "x", "me/labs/lora.py": "x = 1\n", "me/labs/big.py": "y"})
    sub = submissions.read_submission(path, "me", ["lora", "scaling"])
    assert sub.error is None and sub.files == {"lora": b"x = 1\n"}
    assert sub.notes["scaling"] == "labs/scaling.py is missing" and "unsafe" in sub.warnings[0]
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["z.zip"], "nothing is extracted to disk"


def test_student_ids_are_safe_and_unique():
    taken: set[str] = set()
    ids = [submissions.student_id(Path(p), taken) for p in ("a b.zip", "a b", "../x", "", "@SUM(1).zip")]
    assert ids == ["a_b", "a_b-2", "x", "submission", "SUM_1"]


@pytest.mark.parametrize("argv, message", [(["s", "--out", "o", "--jobs", "0"], "--jobs"),
                                           (["s", "--out", "o", "--memory-mb", "64"], "memory_mb"),
                                           (["s", "--out", "o", "--timeout", "-1"], "timeout")])
def test_bad_command_line_values_are_named(argv, message):
    with pytest.raises(ValueError, match=message):
        grade_main(argv)
