"""labs grade: correct, partial, untouched, malformed and hostile submissions, each graded to what
it deserves; nothing a submission does raises its own score or sinks another module's.

The expensive part (one grading run over a whole class) happens once, in a module fixture, on a
small course built from the three fastest technique modules plus a probe test that looks around
from inside the grading child.
"""
from __future__ import annotations

import csv
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from labs.instructor import boundary, gradebook, sandbox, sandbox_child, screen, submissions
from labs.instructor.grade import Course, Limits, Runner, grade
from labs.instructor.grade import _grade_all as grade_all, named_submissions
from labs.instructor.grade import _write_ungraded as write_ungraded
from labs.instructor.grade import main as grade_main

ROOT = Path(__file__).resolve().parent.parent
# One worker runs this whole file: its module fixture grades a class of submissions once.
pytestmark = pytest.mark.xdist_group("grade")
MODULES = ("scaling", "freezing", "lora")  # the fastest graded modules
# A looping test costs its CPU limit, up to twice that in wall time on a busy machine, and has two
# decoy copies: the module's time leaves room for every test of a looping exercise to time out.
LIMITS = Limits(timeout=200, test_timeout=4, memory_mb=3072)
BEGIN = re.compile(r"^\s*# BEGIN SOLUTION (?P<id>\d+\.\d+)\s*$")
END = re.compile(r"^\s*# END SOLUTION\s*$")

PROBE = '''"""Runs in the grading child beside the student's code, and checks what that code could reach."""
import importlib
import os
import resource
import socket
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
    assert Path(os.environ["HOME"]).resolve().is_relative_to(Path(os.environ["TMPDIR"]).resolve()), "HOME must be scrubbed"
    assert os.environ["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] == "1" and os.environ["LABS_IMPL"] == "labs"
    assert resource.getrlimit(resource.RLIMIT_AS)[0] == MEMORY * 2**20, "memory limit not set"
    assert 0 < resource.getrlimit(resource.RLIMIT_CPU)[0] < 10**6, "CPU limit not set"
    assert 0 < resource.getrlimit(resource.RLIMIT_FSIZE)[0] < 2**40, "file size limit not set"
    if here == Path("/grading"):  # inside the bubblewrap sandbox
        assert not Path("/proc/self").exists() and not Path("/sys/kernel").exists(), "no /proc, no /sys"
        assert os.getpid() < 100, f"own PID namespace expected, got pid {os.getpid()}"
        assert not Path(COURSE).exists(), "the course being graded is hidden"
        assert not [p for p in ("labs", "solutions", "tests") if Path(INSTRUCTOR, p).exists()], "the checkout is hidden"
        assert os.getuid() != 0 or not GRADER_IS_ROOT, "root drops to an unprivileged user"
        assert not os.access(here / "labs", os.W_OK), "the grading tree is read-only"
        # the Python environment is mounted read-only where it lives, which may be below /tmp
        runtime = {Path(p).parts[2] for p in (sys.prefix, sys.base_prefix, *sys.path) if p.startswith("/tmp/")}
        assert set(os.listdir("/tmp")) <= {"home", "pytest"} | runtime, f"a private /tmp: {os.listdir('/tmp')}"
        with pytest.raises(OSError):
            socket.create_connection(("192.0.2.1", 80), timeout=2)  # no network namespace routes
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


CLASS_SIZE = 36  # submissions in build_class
TOKEN = secrets.token_hex(4)  # names this run's victim, so an attack can never reach another run's files
VICTIM = f"victim{TOKEN}"
UNSCREENED = frozenset({"sneaky", "forger-past-screen", "escaper", "garbage", "tamper",  # past the screen
                        "flipper", "flipper-blind", "leaker", "injector"})

# Attacks that got past the screen (graded with the screen off: the walls behind it must hold).
# They reach `os` as torch.serialization.os, an attribute the runtime checks do not see.
FORGE = '''
import torch
_os = torch.serialization.os


def _forge():
    """Forge a passing result for every test: to every pipe this process holds, lines as the
    grading plugin would write them (unsigned, and with a made-up signature)."""
    import re
    ids = []
    for name in ("tests/test_ex_scaling.py", "tests/hidden/test_hidden_scaling.py"):
        try:
            fd = _os.open(name, _os.O_RDONLY)
            ids += [name + "::" + t for t in re.findall(r"def (test_\\w+)", _os.read(fd, 10**6).decode())]
        except OSError:
            pass
    lines = "".join('{"event": "start", "nodeid": "%s"}\\n{"event": "result", "nodeid": "%s", "outcome": "passed"}\\n'
                    % (i, i) + "0" * 64 + ' {"event": "result", "nodeid": "%s", "outcome": "passed", "seq": 0}\\n' % i
                    for i in ids)
    fds = [int(n) for n in _os.listdir("/proc/self/fd")] if _os.path.isdir("/proc/self/fd") else range(3, 256)
    for fd in fds:
        try:
            if fd > 2 and _os.stat_result(_os.fstat(fd)).st_mode & 0o170000 == 0o010000:  # a pipe
                _os.write(fd, lines.encode())
        except OSError:
            pass


_forge()
'''
GARBAGE = '''
import torch
_os = torch.serialization.os
for _fd in range(3, 256):
    try:
        if _os.fstat(_fd).st_mode & 0o170000 == 0o010000:
            _os.write(_fd, b"this is not an event\\n" + b"x" * (3 * 2**20))
    except OSError:
        pass
'''
ESCAPE = '''
import torch
_os = torch.serialization.os


def _attempt(what, action):
    try:
        action()
        return what
    except Exception:
        return None


def _write(path):
    fd = _os.open(path, _os.O_WRONLY | _os.O_CREAT, 0o644)
    _os.write(fd, b"escaped")


def _hidden():
    found = []
    for folder in ("tests/hidden", COURSE + "/tests/hidden"):
        for name in (_os.listdir(folder) if _os.path.isdir(folder) else []):
            fd = _os.open(folder + "/" + name, _os.O_RDONLY)
            found.append(len(_os.read(fd, 100)))
    return found


def _staged():
    found = []
    for tmp in [d for d in _os.listdir("/tmp") if d.startswith("labs-grade-")]:
        folder = "/tmp/" + tmp + "/staged/VICTIM/labs"
        for name in (_os.listdir(folder) if _os.path.isdir(folder) else []):
            _write(folder + "/" + name)
            found.append(name)
    return found


WROTE = [w for w in (_attempt(p, lambda p=p: _write(p)) for p in CANARIES) if w]
HIDDEN = _attempt("read", _hidden) and _hidden()
STAGED = _staged() if _os.path.isdir("/tmp") else []
SEEN = {"proc": _os.path.isdir("/proc/self"), "pid": _os.getpid(), "course": _os.path.exists(COURSE)}
'''
TAMPER = "    torch.Tensor.element_size = lambda self: 4  # shadows the inherited method\n"
# Issue 22's attack class, past the screen: walk tb_frame.f_back up to pytest's plugin manager,
# find the result plugin and make every report "passed". FLIP_BLIND also silences the plugin's
# own integrity check, so only the decoy tests are left to catch it.
FLIP = '''

def _plugin():
    try:
        raise ValueError("where am I")
    except ValueError as err:
        frame = err.__traceback__.tb_frame
    while frame is not None:
        item = frame.f_locals.get("item")
        if item is not None and hasattr(item, "config"):
            for plugin in item.config.pluginmanager.get_plugins():
                if type(plugin).__name__ == "ResultPlugin":
                    return plugin
        frame = frame.f_back
    return None


def _flip():
    plugin = _plugin()
    if plugin is None:
        return
    send = plugin.send

    def passed(**event):
        if event.get("event") == "result":
            event = {**event, "outcome": "passed", "error": None, "message": ""}
        send(**event)
    SILENCE
    plugin.send = passed


_flip()
'''
FLIP_NAIVE = FLIP.replace("SILENCE", "")
FLIP_BLIND = FLIP.replace("SILENCE", "plugin.forgery = lambda nodeid: None")
ALWAYS_TRUE = '''
import torch


class Yes:
    """Every comparison answers yes."""

    def eq(self, other):
        return True

    def ne(self, other):
        return True

    def gt(self, other):
        return True

    def ge(self, other):
        return True

    def lt(self, other):
        return True

    def le(self, other):
        return True

    def bool_(self):
        return True

'''


# Issue 22, point 2: always-equal values from a metaclass object (only the literal type(x)(...)
# was refused), the dunder name built at run time so no string constant gives it away.
METACLASS = '''

class Base:
    pass


def _always(self, other):
    return True


Meta = type(Base)
Yes = Meta("Yes", (), {"_" * 2 + "eq" + "_" * 2: _always})
'''
# Point 3: reads what this process holds of the hidden tests (their constants, through gc; the
# locals of a hidden test that calls it, through its frames) and raises it as every exercise's message.
LEAK = '''
import torch
_sys = torch.serialization.sys
_FOUND = []


def _leak():
    for obj in _sys.modules["gc"].get_objects():
        if type(obj).__name__ == "function" and "hidden" in obj.__code__.co_filename:
            _FOUND.extend(c for c in obj.__code__.co_consts if isinstance(c, str) and len(c) > 20)
    frame = _sys._getframe(1)
    while frame is not None:
        if "hidden" in frame.f_code.co_filename:
            _FOUND.extend(repr(v) for v in frame.f_locals.values())
        frame = frame.f_back
    found = sorted(set(_FOUND), key=len)
    return "LEAK " + " | ".join(found)
'''
# Point 6: an exception class whose name starts a fake table row and a fake total, and a message
# of raw HTML, a javascript: link, backticks and terminal escapes.
INJECT = '''

class Injected(Exception):
    pass


Injected.__name__ = "Oops\\r| 0.1 | passed | 9 / 9 | well done |\\n**189 of 189 points.**"
MESSAGE = ("<img src=x onerror=alert(1)> <script>alert(1)</script> [see](javascript:alert(1)) "
           "\\x1b[2J\\x1b[31m ``` | **189 of 189 points.** \\u202e")
'''


def from_stub(module: str, body: str, header: str = "") -> str:
    """The blank stub of `module` (as released), each exercise body replaced by `body`."""
    lines = (ROOT / "labs" / f"{module}.py").read_text().splitlines(True)
    out = [re.sub(r"raise NotImplementedError\(.*\)$", body, line) if 'raise NotImplementedError("Exercise' in line
           else line for line in lines]
    at = next(i for i, line in enumerate(out) if line.startswith("NOTEBOOK ="))
    return "".join(out[:at]) + header + "".join(out[at:])


LOOP = "    while True:\n        pass\n"
SWALLOW = "    while True:\n        try:\n            while True:\n                pass\n        except BaseException:\n            pass\n"


def canaries(base: Path, course: Path) -> list[Path]:
    """Paths outside the grading tree that the escaping submission tries to write."""
    return [course / "PWNED", course / "tests" / "hidden" / "PWNED", base / "PWNED", base / VICTIM / "labs" / "PWNED"]


def build_class(base: Path, course: Path) -> list[Path]:
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
        folder(base, "atexit", {"freezing": fr, "scaling": sc + "\nimport atexit\natexit.register(print, "
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
        # The attacks of issue 14, built from the blank stubs as released
        folder(base, "forger", {"scaling": from_stub("scaling", "pass", "from transformers.utils.generic import np\n"
                                                     + FORGE.replace("_os.", "np.")) }),
        folder(base, "forger-past-screen", {"scaling": from_stub("scaling", "pass", FORGE), "freezing": fr}),
        folder(base, "always-true", {"scaling": from_stub("scaling", "return torch.SymInt(Yes())", ALWAYS_TRUE)}),
        folder(base, "garbage", {"scaling": from_stub("scaling", "pass", GARBAGE), "freezing": fr}),
        folder(base, "escaper", {"scaling": edit(sc, "NOTEBOOK =", ESCAPE.replace("COURSE", repr(str(course))).replace(
            "VICTIM", VICTIM).replace("CANARIES", repr([str(p) for p in canaries(base, course)]))).replace(
            '    bits = {"fp32"', '    raise RuntimeError(f"ESCAPE {WROTE} {HIDDEN} {STAGED} {SEEN}")\n    bits = {"fp32"', 1)}),
        folder(base, "tamper", {"scaling": edit(sc, "bits = {\"fp32\"", "    import torch\n" + TAMPER)}),
        folder(base, "flipper", {"scaling": from_stub("scaling", "pass") + FLIP_NAIVE, "freezing": fr}),
        folder(base, "flipper-blind", {"scaling": from_stub("scaling", "pass") + FLIP_BLIND, "freezing": fr}),
        # The attacks of issue 22, points 2, 3 and 6
        folder(base, "metaclass", {"scaling": from_stub("scaling", "return Yes()", METACLASS), "freezing": fr}),
        folder(base, "peft-nested", {"scaling": edit(sc, "d_in, d_out = check_count(d_in", "    ref.LoraConfig\n")
                                     + "\nif True:\n    import peft as ref\n"}),
        folder(base, "leaker", {"scaling": from_stub("scaling", "raise RuntimeError(_leak())", LEAK), "freezing": fr}),
        folder(base, "injector", {"scaling": from_stub("scaling", "raise Injected(MESSAGE)", INJECT), "freezing": fr}),
        folder(base, VICTIM, {"scaling": sc, "freezing": fr, "lora": lo}),  # graded last, after the attacks
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
    probe = PROBE.replace("INSTRUCTOR", repr(str(ROOT))).replace("MEMORY", str(LIMITS.memory_mb)).replace(
        "COURSE", repr(str(root))).replace("GRADER_IS_ROOT", str(os.geteuid() == 0))
    (root / "tests" / "hidden" / "test_hidden_probe.py").write_text(probe)
    shutil.copyfile(ROOT / "pyproject.toml", root / "pyproject.toml")
    return root


@pytest.fixture(scope="module")
def graded(course_root, tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("class")
    out = tmp_path_factory.mktemp("grades")
    paths = build_class(base, course_root)
    lines: list[str] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(submissions, "MAX_ZIP_BYTES", 2**20)  # the bomb's 3 MB of zeros is over it
        rows = grade(paths, out, LIMITS, jobs=2, course=Course.load(course_root), progress=lines.append,
                     unscreened=UNSCREENED)
    table = {row["student"]: row for row in csv.DictReader((out / "grades.csv").open())}
    results = {p.parent.name: json.loads(p.read_text()) for p in out.glob("students/*/results.json")}
    escaped = [p for p in canaries(base, course_root) if p.exists()]
    return {"rows": rows, "csv": table, "results": results, "out": out, "base": base, "progress": lines,
            "escaped": escaped, "sandboxed": table["correct"]["sandbox"] == "bubblewrap"}


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
    return (graded["out"] / "students" / student / "feedback.md").read_text()


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
    assert list(graded["csv"]["correct"])[:1] == ["student"]
    assert list(graded["csv"]["correct"])[-6:] == ["total", "status", "sandbox", "tampered", "id_note", "protections"]
    assert len(graded["rows"]) == len(graded["csv"]) == CLASS_SIZE, "one row per submission, none lost"
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
    ("osexit", "0.1", "import of os"), ("atexit", "0.1", "import of atexit"),
    ("builtins", "0.1", "import of builtins"), ("patcher", "5.1", "assigns into torch"),
    ("reader", "0.2", "use of open"), ("cheater", "0.3", "imports the reference solutions")])
def test_screen_refuses_the_module_and_says_why(graded, student, exercise, reason):
    assert reason in messages(graded, student, exercise)
    module = exercise.split(".")[0]
    assert sum(of(module, points(graded, student)).values()) == 0
    assert graded["csv"][student]["status"] == "partial"


def test_refused_module_leaves_the_others_graded(graded):
    for student in ("osexit", "atexit"):
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
    """The test during which the module was imported (tests run in a random order, decoys among
    them) fails with the reason; every other test of 5.1 keeps its points."""
    got, top = points(graded, "sneaky"), maxima(graded)
    tests = graded["results"]["sneaky"]["tests"]
    tampered = [t for t in tests if "replaced torch.testing.assert_close" in t["output"]]
    assert got["5.2"] == 0 and tampered and all(t["score"] == 0 for t in tampered)
    lost = [t for t in tests if t["number"] == "5.1" and t["score"] < t["max_score"]]  # 5.1 needs no 5.2
    assert all(t in tampered for t in lost) and len(lost) <= 1, lost


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
# Issue 14: what a submission that gets past the screen can do (each attack, and its layer)
# ---------------------------------------------------------------------------------------------
def require_sandbox(graded: dict) -> None:
    """The filesystem and process walls exist only where bubblewrap works; say so, or fail in CI."""
    if not graded["sandboxed"]:
        why = graded["csv"]["correct"]["sandbox"]
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must grade in the bubblewrap sandbox (make setup installs it): {why}")
        pytest.skip(f"no bubblewrap sandbox on this machine: {why}")


def test_children_run_in_the_bubblewrap_sandbox_where_it_works(graded):
    require_sandbox(graded)
    assert {row["sandbox"] for row in graded["csv"].values()} == {"bubblewrap"}
    assert any("sandbox: bubblewrap" in line for line in graded["progress"]), graded["progress"][:2]
    probe = [t for t in graded["results"]["correct"]["tests"] if "isolated" in t["name"]]
    assert probe and probe[0]["score"] == 1, f"the probe saw the sandbox leak: {probe}"


def test_forger_through_numpy_is_refused_by_the_allowlist(graded):
    """Layer 4: transformers.utils.generic.np is not on the allowlist; the module never runs."""
    assert sum(of("0", points(graded, "forger")).values()) == 0
    assert "transformers.utils is not something exercises may use" in messages(graded, "forger", "0.1")


def test_forged_result_lines_are_dropped_and_earn_nothing(graded):
    """Layer 2: past the screen, the forger writes result lines to every pipe it holds; none is
    signed, so the server drops them and fails that module's tests with the reason."""
    got = points(graded, "forger-past-screen")
    assert sum(of("0", got).values()) == 0, got
    assert "not sent by the grading harness" in messages(graded, "forger-past-screen", "0.1")
    assert of("2", got) == of("2", maxima(graded)), "its other module is graded as usual"


def test_always_true_values_are_refused_by_the_allowlist(graded):
    """Layer 4: torch.SymInt wrapping an object that answers yes to every comparison."""
    assert float(graded["csv"]["always-true"]["total"]) == 0
    assert "torch.SymInt is not something" in messages(graded, "always-true", "0.2")


def test_garbage_on_the_result_channel_fails_that_module_only_and_the_run_completes(graded):
    """Layer 3: a line that is not an event, then 3 MB without a newline: that module's tests fail
    with the reason, its other module and every later submission are graded, grades.csv is whole."""
    got = points(graded, "garbage")
    assert sum(of("0", got).values()) == 0 and of("2", got) == of("2", maxima(graded))
    assert "result channel" in messages(graded, "garbage", "0.3")
    assert graded["csv"][VICTIM]["status"] == "ok" and len(graded["csv"]) == CLASS_SIZE


def test_nothing_escapes_the_sandbox(graded):
    """Layer 1: past the screen with `os` in hand, the escaper writes nothing outside its grading
    tree, reads no hidden test, sees no staging area, no /proc, and not the course."""
    require_sandbox(graded)
    assert graded["escaped"] == [], f"written outside the grading tree: {graded['escaped']}"
    report = messages(graded, "escaper", "0.1")
    assert "ESCAPE [] [] [] {'proc': False" in report and "'course': False" in report, report
    assert of("0", points(graded, "escaper"))["0.2"] == maxima(graded)["0.2"], "it keeps what it honestly earns"


def test_victim_graded_after_the_attacks_keeps_its_full_score(graded):
    require_sandbox(graded)
    assert points(graded, VICTIM) == maxima(graded) and graded["csv"][VICTIM]["status"] == "ok"


def test_adding_an_attribute_to_a_watched_class_is_caught(graded):
    """Tamper detection: a new attribute on torch.Tensor (shadowing an inherited method) fails the
    tests it ran in, and is removed before the next."""
    got, top = points(graded, "tamper"), maxima(graded)
    assert got["0.1"] == 0 and got["0.3"] == top["0.3"], got
    assert "torch.Tensor.element_size (added)" in messages(graded, "tamper", "0.1")


@pytest.mark.parametrize("student", ["flipper", "flipper-blind"])
def test_making_every_report_passed_in_process_is_caught_and_scores_zero(graded, student):
    """Issue 22: past the screen, the blank stub reaches the plugin manager through tb_frame.f_back
    and makes every result "passed" (before, 8/8 for notebook 0). The decoys it cannot tell from
    real tests pass too: the whole submission scores 0, flagged for the instructor only."""
    row = graded["csv"][student]
    assert float(row["total"]) == 0 and row["status"] == "tampered", row
    assert "decoy test" in row["tampered"] and "must fail" in row["tampered"], row["tampered"]
    assert student in (graded["out"] / "instructor.md").read_text()
    said = feedback(graded, student) + json.dumps(graded["results"][student])
    assert "could not be trusted" in said and "see your instructor" in said
    assert "decoy" not in said and "tamper" not in said.lower(), "the student is not told how it was caught"


def test_the_naive_flip_is_also_caught_by_the_plugins_own_check(graded):
    assert "grading plugin's tables or methods were replaced" in graded["csv"]["flipper"]["tampered"]


def test_no_text_of_a_hidden_test_reaches_the_student(graded):
    """A hidden test shows its name, points and pass/fail only, whatever its assertion said."""
    for student, result in graded["results"].items():
        hidden = [t for t in result["tests"] if t["visibility"] == "after_published"]
        assert hidden and all(t["output"] == "" for t in hidden), (student, hidden[:2])


def test_honest_submissions_are_never_flagged(graded):
    """Every decoy of an honest run fails: no honest or merely broken submission is flagged."""
    flagged = {s for s, row in graded["csv"].items() if row["tampered"] or row["status"] == "tampered"}
    assert flagged == {"flipper", "flipper-blind"}, flagged


# ---------------------------------------------------------------------------------------------
# Issue 22, points 2, 3 and 6, in the class run
# ---------------------------------------------------------------------------------------------
def test_always_equal_values_from_a_metaclass_object_are_refused(graded):
    """Before: `Meta = type(Base); Meta("Yes", (), {...})` passed the screen and its values equal
    everything. Now the module is refused with the reason; its other module is graded as usual."""
    got = points(graded, "metaclass")
    assert sum(of("0", got).values()) == 0 and of("2", got) == of("2", maxima(graded)), got
    assert "type(x) used as a value" in messages(graded, "metaclass", "0.1")


def test_peft_imported_inside_an_if_zeroes_the_exercise_using_it(graded):
    got, top = points(graded, "peft-nested"), maxima(graded)
    assert got["0.3"] == 0 and "from scratch" in messages(graded, "peft-nested", "0.3")
    assert all(got[e] == top[e] for e in ("0.1", "0.2", "0.4")), got


def test_no_text_of_a_hidden_test_reaches_the_student_even_when_the_code_reads_it(graded, course_root):
    """Point 3: the leaker reads the hidden tests' constants (and a hidden test's locals) and raises
    them as its message. Its visible messages are withheld for quoting a hidden test (so it did
    read them), and feedback.md and results.json quote none of them."""
    import ast
    course = Course.load(course_root)
    tree = ast.parse((course_root / "tests" / "hidden" / "test_hidden_scaling.py").read_text())
    secrets_ = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
                and course.quotes_hidden(n.value)]  # those that no public test or course file holds
    assert secrets_, "the hidden tests hold no secret text: this tests nothing"
    student = graded["out"] / "students" / "leaker"
    result = graded["results"]["leaker"]
    said = "\n".join([(student / "feedback.md").read_text(), result["output"], *(t["output"] for t in result["tests"])])
    assert not course.quotes_hidden(said), said[:2000]
    for exercise in ("0.1", "0.2", "0.3", "0.4"):  # public tests run first: withheld for what they quote
        assert gradebook.WITHHELD_QUOTE in messages(graded, "leaker", exercise), messages(graded, "leaker", exercise)
    assert of("2", points(graded, "leaker")) == of("2", maxima(graded))


def outside_code(markdown: str) -> str:
    """The Markdown with its code spans removed (a run of n backticks opens one, the next run of
    exactly n closes it), as CommonMark reads them."""
    out, i = [], 0
    while i < len(markdown):
        if markdown[i] != "`":
            out.append(markdown[i])
            i += 1
            continue
        run = len(markdown[i:]) - len(markdown[i:].lstrip("`"))
        close = re.search(rf"(?<!`)`{{{run}}}(?!`)", markdown[i + run:])
        if close is None:
            out.append(markdown[i:i + run])
            i += run
        else:
            i += run + close.end()
    return "".join(out)


def assert_reads_as_typed(markdown: str, total_line: str) -> None:
    """No control characters; the only bold total is the real one; every table row has four
    cells; outside code no HTML, no link and no fake total."""
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f\u202a-\u202e]", markdown), repr(markdown[:300])
    assert [line for line in markdown.splitlines() if line.startswith("**")] == [total_line]
    rows = [line for line in markdown.splitlines() if line.startswith("|")]
    assert all(len(re.findall(r"(?<!\\)\|", line)) == 5 for line in rows), rows
    plain = outside_code(markdown)
    for bad in ("<img", "<script", "javascript:", "189 of 189", "Oops"):
        assert bad not in plain, (bad, plain)


def test_injected_names_and_messages_read_as_typed(graded):
    """Point 6: an exception class named "...\\r| 0.1 | passed ...\\n**189 of 189 points.**", raw
    HTML, a javascript: link and terminal escapes: feedback.md shows them as code, results.json
    as plain text, the terminal without escapes; the scores are the real ones."""
    text = feedback(graded, "injector")
    assert_reads_as_typed(text, f"**{graded['csv']['injector']['total']} of {sum(maxima(graded).values()):g} points.**")
    assert "<script>alert(1)</script>" in text and "189 of 189" in text, "the message is shown, as code"
    result = graded["results"]["injector"]
    assert result["output_format"] == "text" and {t["output_format"] for t in result["tests"]} == {"text"}
    outputs = json.dumps(result)
    assert not re.search(r"\\u001b|\\r|\\u202e", outputs), outputs[:500]
    assert sum(of("0", points(graded, "injector")).values()) == 0
    assert not [line for line in graded["progress"] if re.search(r"[\x1b\r]", line)]


# ---------------------------------------------------------------------------------------------
# The walls on their own (no grading run)
# ---------------------------------------------------------------------------------------------
def a_course() -> Course:
    """A course of one technique: two public tests and one hidden, the hidden one the real
    tests/hidden/test_hidden_scaling.py (its text is what must not come back)."""
    course = Course(ROOT, {"scaling": "# stub\n"}, {"0.1": "scaling", "0.2": "scaling"}, {})
    course.items = [{"nodeid": "tests/test_ex_scaling.py::test_a", "exercise": "0.1", "points": 1},
                    {"nodeid": "tests/test_ex_scaling.py::test_b", "exercise": "0.2", "points": 1},
                    {"nodeid": "tests/hidden/test_hidden_scaling.py::test_h", "exercise": "0.2", "points": 1}]
    return course


def graded_with(events, course: Course, student: str = "s") -> gradebook.Graded:
    """A submission whose child reported `events(planned)`: (planned test, outcome, message) in order."""
    import random
    from labs.instructor.grade import on_event, tasks_for
    graded = gradebook.Graded(submissions.Submission(student, Path(student)))
    [task] = tasks_for(graded, course, Path("/nonexistent"), Limits(), {}, random.Random(3))
    planned = [graded.planned[row[1]] for row in task["plan"]]
    by_student = {student: graded}
    for p, outcome, message in events(planned):
        on_event({"task": task["id"], "event": "result", "nodeid": p.nodeid, "outcome": outcome, "message": message},
                 by_student)
    on_event({"task": task["id"], "event": "done"}, by_student)
    return graded


def reports(graded: gradebook.Graded, course: Course) -> tuple[str, dict]:
    tests = gradebook.score_tests(graded, course)
    return (gradebook.feedback_md(gradebook.exercise_scores(tests, graded, course), graded),
            gradebook.results_json(tests, graded, course))


def test_public_tests_run_first_and_a_visible_message_after_a_hidden_test_is_withheld():
    """Point 3: the plan puts every hidden test after the public ones, so an honest run shows every
    visible message. A visible result that comes after a hidden one (a child whose order was
    changed) shows no message: its code may have seen the hidden test's locals."""
    course = a_course()
    secret = "the locals of a hidden test: n = 1_000_003"

    def honest(planned):
        return [(p, "failed" if p.shift or p.source.endswith("test_a") else "passed", f"ValueError: {p.source}")
                for p in planned]
    graded = graded_with(honest, course)
    order = [course.is_hidden(p.source) for p in graded.planned.values()]
    assert order == sorted(order), "hidden tests come last"
    assert "ValueError: tests/test_ex_scaling.py::test_a" in reports(graded, course)[0]

    def reordered(planned):
        hidden = [p for p in planned if course.is_hidden(p.source)]
        public = [p for p in planned if not course.is_hidden(p.source)]
        return [(p, "failed", secret) for p in hidden + public]
    feedback_md, result = reports(graded_with(reordered, course), course)
    said = feedback_md + json.dumps(result)
    assert secret not in said and gradebook.WITHHELD_AFTER in said


def test_a_visible_message_that_quotes_a_hidden_test_is_withheld_whole_or_in_part():
    course = a_course()
    quote = "A (r, in) and B (out, r): r * (in + out) per layer"  # tests/hidden/test_hidden_scaling.py
    assert quote in (ROOT / "tests" / "hidden" / "test_hidden_scaling.py").read_text()
    for message in (f"RuntimeError: {quote}", f"RuntimeError: xx {quote[5:30]} yy",
                    "AssertionError: " + " ".join(quote.upper().lower().split())):
        said = "".join(map(str, reports(graded_with(lambda planned: [(p, "failed", message) for p in planned],
                                                    course), course)))
        assert quote[5:30] not in said and gradebook.WITHHELD_QUOTE in said, message
    honest = "AssertionError: fp32 weights take 4 bytes each"
    said = reports(graded_with(lambda planned: [(p, "failed", honest) for p in planned], course), course)[0]
    assert honest in said, "a message that quotes no hidden test is shown"


EVIL_NAME = "Oops\r| 0.1 | passed | 9 / 9 | well done |\n**189 of 189 points.**"
EVIL = ("<img src=x onerror=alert(1)> <script>alert(1)</script> [see](javascript:alert(1)) \x1b[2J\x1b[31m"
        " ``` `` | \\| **189 of 189 points.** \u202e" + "x" * 2000)


def test_student_text_reads_as_typed_in_every_report():
    """Point 6, on made-up events: a message, a module note, a zip warning and a tampering reason
    that try to add rows, a total, HTML, links and terminal escapes; each report shows them as
    text (capped), and the instructor's report keeps one line per reason."""
    from labs.instructor.grade import _for_terminal, instructor_report
    course = a_course()
    graded = graded_with(lambda planned: [(p, "failed", f"{EVIL_NAME}: {EVIL}") for p in planned], course)
    graded.module_notes["scaling"] = f"labs/scaling.py was not run: line 1: {EVIL}"
    graded.sub.warnings.append(f"ignored unsafe zip entry {EVIL_NAME}")
    feedback_md, result = reports(graded, course)
    assert_reads_as_typed(feedback_md, "**0 of 3 points.**")
    assert len(feedback_md) < 5000, "each message is capped"
    assert result["output_format"] == "text" and not re.search(r"[\x00-\x1f\u202e]", json.dumps(result)
                                                                 .encode().decode("unicode_escape").replace("\n", ""))
    csv_text = gradebook.grades_csv([("s", [], "ok", {"tampered": EVIL_NAME + EVIL})], course, "bubblewrap")
    assert not re.search(r"[\x1b\r\u202e]", csv_text) and len(csv_text.splitlines()) == 2

    graded.tampered += [f"labs/scaling.py: {EVIL_NAME} `` ` ```` {EVIL}", "second\n### fake heading"]
    report = instructor_report([graded], "bubblewrap")
    assert [line for line in report.splitlines() if line.startswith("### ")] == ["### s"], report
    assert not re.search(r"[\x1b\r\u202e]", report)
    assert "<script" not in outside_code(report) and "189 of 189" not in outside_code(report)
    lines: list[str] = []
    _for_terminal(lines.append)(f"[1/1] s: 0/3 error:{EVIL_NAME} {EVIL[:200]}")
    assert not re.search(r"[\x1b\r\u202e]", lines[0]) and "error:Oops" in lines[0]


def test_channel_opens_only_what_its_own_key_sealed():
    key = secrets.token_bytes(sandbox_child.KEY_BYTES)
    child, server = sandbox_child.Channel(key), sandbox_child.Channel(key)
    lines = [child.seal({"event": "start", "nodeid": "t"}), child.seal({"event": "result", "nodeid": "t"})]
    assert [server.open(line.rstrip(b"\n"))["event"] for line in lines] == ["start", "result"]
    forged = sandbox_child.Channel(secrets.token_bytes(sandbox_child.KEY_BYTES)).seal({"event": "result"})
    with pytest.raises(ValueError, match="not signed"):
        server.open(b'{"event": "result", "seq": 2}')
    with pytest.raises(ValueError, match="signature is wrong"):
        server.open(forged.rstrip(b"\n"))
    with pytest.raises(ValueError, match="out of sequence"):  # a replay: its number is spent
        server.open(lines[0].rstrip(b"\n"))
    with pytest.raises(ValueError, match="32 bytes"):
        sandbox_child.Channel(b"short")


class _Server:
    """A fork server with a real (sleeping) child to kill, fed lines by hand."""

    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
        read, write = os.pipe()
        self.events = os.fdopen(read, "rb")
        self.server = sandbox.Server(write, 1, Path("/nonexistent"))
        self.key = secrets.token_bytes(sandbox_child.KEY_BYTES)
        self.child = sandbox_child.Channel(self.key)
        task = {"id": "s/scaling", "limits": {"timeout": 60, "test_timeout": 5}}
        self.attempt = sandbox.Attempt(task, self.proc.pid, Path("/nonexistent"), -1, -1,
                                       sandbox_child.Channel(self.key), 1e12, 0.0)

    def feed(self, *chunks: bytes) -> None:
        for chunk in chunks:
            self.server.on_results(self.attempt, chunk)

    def sealed(self, **event) -> bytes:
        return self.child.seal(event)

    def finish(self) -> list[dict]:
        assert self.attempt.violation, "the attack was not noticed"
        self.attempt.status = self.proc.wait(timeout=10)
        self.server.finish(self.attempt)
        os.close(self.server.events_fd)
        return [json.loads(line) for line in self.events]


@pytest.mark.parametrize("attack, reason", [
    (lambda s: [b'{"event": "result", "nodeid": "t2", "outcome": "passed"}\n'], "not sent by the grading harness"),
    (lambda s: [b"\xff\xfe not even text\n"], "not sent by the grading harness"),
    (lambda s: [b"x" * (2**20 + 10)], "over 1,048,576 bytes"),
    (lambda s: [s.sealed(event="result", nodeid="t2", outcome="passed")], "which had not started"),
    (lambda s: [s.sealed(event="start", nodeid="t3")], "out of order"),
    (lambda s: [s.sealed(event="collected", nodeids=["t9"])], "'collected' again"),
    (lambda s: [s.sealed(event="nonsense")], "unknown event")])
def test_server_fails_the_child_on_any_line_it_did_not_expect_and_carries_on(attack, reason):
    """Layers 2 and 3: genuine events count in protocol order; anything else ends that child and
    voids its results (t1 passed before the attack: it fails too), with the reason; nothing raises."""
    s = _Server()
    s.feed(s.sealed(event="collected", nodeids=["t1", "t2", "t3"]), s.sealed(event="start", nodeid="t1"),
           s.sealed(event="result", nodeid="t1", outcome="passed"), *attack(s),
           s.sealed(event="start", nodeid="t2"), s.sealed(event="result", nodeid="t2", outcome="passed"))
    events = s.finish()
    results = {e["nodeid"]: e for e in events if e["event"] == "result"}
    assert {r["outcome"] for r in results.values()} == {"failed"} and set(results) == {"t1", "t2", "t3"}
    assert all(reason in r["message"] for r in results.values()), results
    assert events[-1]["event"] == "done" and reason in events[-1]["reason"]


def test_server_forwards_results_in_order_once_the_child_is_gone():
    s = _Server()
    s.feed(s.sealed(event="collected", nodeids=["t1", "t2"]), s.sealed(event="start", nodeid="t1"),
           s.sealed(event="result", nodeid="t1", outcome="passed"), s.sealed(event="start", nodeid="t2"))
    assert s.attempt.violation is None and [r["nodeid"] for r in s.attempt.accepted] == ["t1"]
    s.proc.kill()  # the child crashes in t2
    s.attempt.status = os.waitpid(s.proc.pid, 0)[1]
    s.server.finish(s.attempt)
    os.close(s.server.events_fd)
    events = [json.loads(line) for line in s.events]
    results = [e for e in events if e["event"] == "result"]
    assert [(e["nodeid"], e["outcome"]) for e in results] == [("t1", "passed"), ("t2", "failed")]
    assert "this test's process was killed" in results[1]["message"] and events[-1]["event"] == "done"


def test_runner_skips_lines_that_are_not_events():
    runner = object.__new__(Runner)
    read, write = os.pipe()
    os.write(write, b'not json\n[1, 2]\n{"event": "ready", "sandbox": true, "said": "bwrap"}\n{"event": "done"}\n')
    os.close(write)
    runner.events, runner.dropped, runner.sandboxed = os.fdopen(read, "rb"), [], False
    assert runner.next_event() == {"event": "done"} and runner.next_event() is None
    assert len(runner.dropped) == 2 and runner.sandbox_column() == "bubblewrap"


class _DeadRunner:
    """The test runner gone before any result: enough to see the intake and the rows."""
    dropped: list = []

    def send(self, tasks, close=False):
        pass

    def next_event(self):
        return None

    def sandbox_column(self):
        return "NONE: test"


def test_every_submission_gets_a_row_when_the_runner_dies(course_root, tmp_path):
    """Layer 3: the test runner gone before any result: every submission still gets a row with
    the reason, and grades.csv is written."""
    course = Course.load(course_root)
    course.items = [{"nodeid": "tests/test_ex_scaling.py::t", "exercise": "0.1", "points": 1}]
    subs = [folder(tmp_path, "a", {"scaling": filled("scaling")}), folder(tmp_path, "b", {}),
            zipped(tmp_path, "c", {})]
    rows = grade_all(named_submissions(subs), tmp_path / "out", LIMITS, course, course.policy(), _DeadRunner(),
                     tmp_path / "work", False, lambda line: None, frozenset())
    table = {r["student"]: r for r in csv.DictReader((tmp_path / "out" / "grades.csv").open())}
    assert [r[0] for r in rows] == ["a", "b", "c"] and set(table) == {"a", "b", "c"}
    assert table["a"]["status"] == "partial" and table["c"]["status"].startswith("error:")
    assert {r["sandbox"] for r in table.values()} == {"NONE: test"}
    assert "test runner stopped" in (tmp_path / "out" / "students" / "a" / "feedback.md").read_text()
    write_ungraded(named_submissions(subs), tmp_path / "none", course, _DeadRunner(), "not graded: the course's tests did not collect")
    table = {r["student"]: r for r in csv.DictReader((tmp_path / "none" / "grades.csv").open())}
    assert set(table) == {"a", "b", "c"} and {r["status"] for r in table.values()} == {
        "error:not graded: the course's tests did not collect"}


def corrupt_deflate(path: Path) -> Path:
    """A zip whose labs/scaling.py member has its deflate stream scrambled (zlib.error on read)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("labs/scaling.py", "".join(f"x{i} = {i * 7919 % 10007}\n" for i in range(3000)))
    data = bytearray(path.read_bytes())
    start = 30 + len("labs/scaling.py") + 100
    data[start:start + 40] = bytes(range(200, 240))
    path.write_bytes(bytes(data))
    return path


def test_every_student_keeps_a_row_whatever_the_class_folder_holds(course_root, tmp_path):
    """Issue 22's intake faults in one class folder: stray files, a corrupt deflate member, a student
    folder named like a report, and `-victim.zip` cleaning to the name of the real `victim`."""
    klass = tmp_path / "class"
    for name in ("alice", "grades.csv", "victim", "students"):
        folder(klass, name, {"scaling": filled("scaling")})
    (klass / "notes.txt").write_text("remember to grade")
    (klass / "late.rar").write_bytes(b"Rar!\x1a\x07\x00")
    corrupt_deflate(klass / "broken.zip")
    zipped(klass, "-victim", {"labs/scaling.py": "x = 1\n"})
    course = Course.load(course_root)
    course.items = [{"nodeid": "tests/test_ex_scaling.py::t", "exercise": "0.1", "points": 1}]
    notes: dict[str, str] = {}
    named = named_submissions([klass], notes=notes)
    out = tmp_path / "out"
    grade_all(named, out, LIMITS, course, course.policy(), _DeadRunner(), tmp_path / "work", False,
              lambda line: None, frozenset(), notes)
    table = {r["student"]: r for r in csv.DictReader((out / "grades.csv").open())}
    assert set(table) == {"alice", "grades.csv", "victim", "students", "notes.txt", "late.rar", "broken",
                          "victim-2"}, sorted(table)
    assert table["notes.txt"]["status"].startswith("error:not a folder or a .zip")
    said = (out / "students" / "broken" / "feedback.md").read_text()
    assert "could not be read from the zip" in said and "labs/scaling.py" in said, said
    assert (klass / "victim") == dict((s, p) for p, s in named)["victim"], "the exact name keeps its id"
    assert "'-victim.zip' is filed as victim-2" in table["victim-2"]["id_note"] and not table["victim"]["id_note"]
    assert (out / "students" / "grades.csv" / "feedback.md").is_file() and (out / "grades.csv").is_file()


def test_a_submission_that_cannot_be_read_gets_an_error_row(tmp_path, monkeypatch):
    path = folder(tmp_path, "carol", {"scaling": "x = 1\n"})
    monkeypatch.setattr(submissions, "_read_folder", lambda *a: (_ for _ in ()).throw(PermissionError("denied")))
    sub = submissions.read_submission(path, "carol", ["scaling"])
    assert sub.error == "could not be read (PermissionError: denied)"


def test_tamper_check_catches_a_new_attribute_on_a_watched_class_and_removes_it():
    import torch
    baseline = sandbox_child._snapshot()
    torch.Tensor.element_size = lambda self: 4
    try:
        assert "torch.Tensor.element_size (added)" in sandbox_child._restore(baseline)
    finally:
        if "element_size" in vars(torch.Tensor):
            del torch.Tensor.element_size
    assert "element_size" not in vars(torch.Tensor) and torch.zeros(1).element_size() == 4
    assert sandbox_child._restore(baseline) == []


def test_sandbox_probe_says_why_when_bubblewrap_is_missing(tmp_path):
    sb = boundary.Sandbox.for_this_machine([], ROOT, bwrap=str(tmp_path / "no-bwrap"))
    assert "bubblewrap is not installed" in boundary.probe(sb, tmp_path, ROOT / "labs")


@pytest.mark.parametrize("flavour", ["root", "user"])
def test_sandbox_probe_holds_where_bubblewrap_works(flavour, tmp_path):
    """Both ways in: as root (the child becomes `nobody`) and through a user namespace (the only
    way for other users); run here as root, the second keeps uid 0 inside but no capability."""
    if shutil.which("bwrap") is None or (flavour == "root" and os.geteuid() != 0):
        if os.environ.get("CI") == "true" and shutil.which("bwrap") is None:
            pytest.fail("CI must have bubblewrap (make setup installs it)")
        pytest.skip("needs bubblewrap" + (" and root" if flavour == "root" else ""))
    sb = boundary.Sandbox.for_this_machine(sys.path, ROOT, flavour=flavour)
    assert str(ROOT) not in sb.runtime and not any(p.startswith(str(ROOT / "labs")) for p in sb.runtime)
    assert boundary.probe(sb, tmp_path, ROOT / "labs") is None


# ---------------------------------------------------------------------------------------------
# The screen, the submission reader and the command line on their own (no processes)
# ---------------------------------------------------------------------------------------------
TECHNIQUES = frozenset(p.stem for p in (ROOT / "solutions").glob("*.py") if p.stem != "__init__")
API = Course.load(ROOT).api  # the allowlist as grading builds it, from the current files


def screened(code: str, module: str = "lora") -> list[screen.Finding]:
    stub = (ROOT / "labs" / f"{module}.py").read_text()
    return screen.screen_module(stub + "\n" + code + "\n", stub, TECHNIQUES, API)


@pytest.mark.parametrize("name", sorted(TECHNIQUES))
def test_screen_accepts_every_reference_solution_and_stub(name):
    """Read from the current files: a solution that needs more of torch than the allowlist holds
    fails here, naming the chain to add to screen.MODULE_API."""
    stub = (ROOT / "labs" / f"{name}.py").read_text()
    assert [str(f) for f in screen.screen_module(filled(name), stub, TECHNIQUES, API)] == []
    assert screen.screen_module(stub, stub, TECHNIQUES, API) == []


@pytest.mark.parametrize("code, refused", [
    ("import subprocess", "import of subprocess"), ("from importlib import import_module", "import of importlib"),
    ("x = eval('1')", "use of eval"), ("f = open", "use of open"), ("g = globals()", "use of globals"),
    ("x = (lambda: 0).__globals__", "dunder attribute .__globals__"), ("x = torch._C", "torch._C is not"),
    ("x = torch.os", "torch.os is not"), ("m = torch.load", "torch.load is not"),
    ("x = self.lora_A.weight.numpy()", "attribute .numpy"),
    ("x = getattr(torch, 'allc' + 'lose')", "computed attribute name"),
    ("setattr(torch, 'allclose', print)", "setattr on torch"), ("torch.allclose = print", "assigns into torch"),
    ("nn.Linear.forward = print", "assigns into nn"), ("del torch.allclose", "assigns into torch"),
    ("class T(torch.Tensor):\n    def __torch_function__(cls, *a):\n        return True", "defines __torch_function__"),
    ("class E:\n    def __eq__(self, other):\n        return True", "defines __eq__"),
    ("class M(metaclass=type):\n    pass", "metaclass"), ("C = type('C', (), {})", "type(...) with more"),
    ("k = '__class__'", "dunder names"), ("from . import os", "relative import"),
    ("from labs import impl", "labs.impl is not"), ("g = (x for x in []).gi_frame", "attribute .gi_frame"),
    ("def f(x: 'os.system(1)'):\n    pass", "annotation string"),
    # issue 22: helpers that read attributes or items for the caller
    ("def f(err):\n    return '{0.tb_frame.f_back}'.format(err)", "reads an attribute or item"),
    ("def f(d):\n    return '{0[k]}'.format(d)", "reads an attribute or item"),
    ("def f(a, b):\n    return '{0:{1.x}}'.format(a, b)", "reads an attribute or item"),
    ("def f(t, e):\n    return t.format(e)", "not a string literal"),
    ("def f(e):\n    return '{e.x}'.format_map({'e': e})", "attribute .format_map"),
    ("g = '{0.x}'.format", ".format taken without calling it"),
    ("import functools\nu = functools.wraps(print).func", "attribute .func"),
    ("import functools\nk = functools.partial(print, sep='').keywords", "attribute .keywords"),
    ("import operator\ng = operator.attrgetter('x')", "import of operator"),
    ("import string\nF = string.Formatter()", "import of string"),
    ("x = license", "use of license"), ("x = credits", "use of credits")])
def test_screen_refuses_what_reaches_outside_the_module(code, refused):
    findings = screened(code)
    assert any(refused in f.what and f.exercise is None for f in findings), findings


@pytest.mark.parametrize("code, refused", [
    ("from transformers.utils.generic import np", "transformers.utils is not something"),
    ("import transformers\nx = transformers.utils.generic.np", "transformers.utils is not something"),
    ("import torch.utils.data.datapipes", "torch.utils is not something"),
    ("x = torch.SymInt(1)", "torch.SymInt is not something"), ("x = getattr(torch, 'SymInt')", "torch.SymInt"),
    ("F = torch.nn.functional\nx = F.torch", "torch.nn.functional.torch"), ("from torch import *", "torch.*"),
    ("import numpy", "import of numpy"), ("from .scaling import torch", "labs.scaling.torch"),
    ("def f(name):\n    return getattr(torch, name)", "computed attribute name on the module torch"),
    ("m = [torch]", "uses the module torch as a value"), ("def f():\n    return nn", "uses the module nn"),
    ("x = torch.zeros(1).numpy()", "attribute .numpy")])
def test_screen_allows_only_the_listed_chains_from_modules(code, refused):
    findings = screened(code)
    assert any(refused in f.what and f.exercise is None for f in findings), [str(f) for f in findings]


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")
def test_allowlist_names_exist_and_every_module_in_it_is_listed_as_one():
    """A name that is a module when the code runs must be a key of the allowlist (with its own
    names), or the screen would take it for an object and let any chain through it."""
    import importlib
    import types
    for module, names in API.items():
        if module.startswith("labs") or module == "__future__":
            continue
        loaded = importlib.import_module(module)
        missing = [n for n in names if not hasattr(loaded, n)]
        unlisted = [n for n in names if isinstance(getattr(loaded, n, None), types.ModuleType)
                    and f"{module}.{n}" not in API]
        assert not missing and not unlisted, f"{module}: missing {missing}, modules not listed {unlisted}"
    assert all(f"labs.{name}" in API for name in API["labs"]), "every labs module named is listed"


def test_screen_allows_ordinary_student_code():
    code = ("import math\nimport re\nfrom . import scaling\nfrom labs.surgery import freeze\n"
            "from torch.nn import functional as F\nG = torch.nn.functional\n\n"
            "def helper(layer, name):\n    layer.weight.requires_grad = False\n"
            "    x = F.linear(torch.zeros(2), layer.weight) + G.relu(torch.ones(2)) * math.sqrt(2)\n"
            "    pattern = re.compile('a+')\n    b = scaling.bytes_of_weights(1, 'fp32')\n"
            "    said = '{} has {:,} ({n:.2f})'.format(name, 3, n=2.0)\n"
            "    return getattr(layer, name), getattr(layer, 'bias', None), super, x, pattern, b\n")
    assert [str(f) for f in screened(code)] == []


def test_from_scratch_policy_follows_helpers_but_not_other_exercises():
    stub = (ROOT / "labs" / "lora.py").read_text()
    source = filled("lora").replace("        return (self.lora_B @ self.lora_A) * self.scaling",
                                    "        return helper(self)")
    source += "\nimport peft\n\ndef helper(layer):\n    return peft.LoraConfig\n"
    findings = screen.screen_module(source, stub, TECHNIQUES, API)
    assert {f.exercise for f in findings} == {"5.3"}, findings  # merge calls delta_weight: not tainted


# Issue 22, point 2: each class the screen let through, refused (the honest forms stay allowed)
@pytest.mark.parametrize("code, refused", [
    # dataclasses helpers that read and write attributes by a Field's (changeable) name
    ("def f(config):\n    return replace(config, r=1)", "dataclasses.replace in your own code"),
    ("import dataclasses\nx = dataclasses.fields", "dataclasses.fields in your own code"),
    ("from dataclasses import asdict as a\ng = a", "dataclasses.asdict in your own code"),
    ("import dataclasses\nF = dataclasses.Field", "dataclasses.Field in your own code"),
    ("from dataclasses import field\nf = field(default=1)", "dataclasses.field other than"),
    # metaclass objects: type(C) builds classes, whatever name it goes by
    ("class C:\n    pass\n\n\nM = type(C)\nV = M('V', (), {})", "type(x) used as a value"),
    ("def meta(c):\n    return type(c)", "type(x) used as a value"),
    ("t = type", "type used as a value"), ("ms = [type]", "type used as a value"),
    ("def f(c, a):\n    return type(c)(*a)", "type(x) used as a value"),
    ("def f(c):\n    return type(c)('V', (), {})", "type(x) used as a value"),
    ("import enum", "import of enum"),
    # private attributes: only self / cls of a method of a class this module defines
    ("def f(self):\n    return self._Printer__setup", "private attribute ._Printer__setup"),
    ("g = lambda self: self._x", "private attribute ._x"),
    ("class A:\n    def m(self):\n        return (lambda self: self._x)(1)", "private attribute ._x"),
    ("class A:\n    @staticmethod\n    def m(self):\n        return self._x", "private attribute ._x"),
    ("class A:\n    def m(self, other):\n        return super(A, other)._x", "private attribute ._x"),
    ("class A:\n    def m(self):\n        self = nn\n        return self", "assigns to self"),
    ("class A:\n    def m(self):\n        for self in [1]:\n            pass", "assigns to self"),
    ("class A:\n    def m(self):\n        try:\n            pass\n        except Exception as self:\n            pass",
     "binds the name self"),
    ("class A:\n    def m(self):\n        return self._x\n\n\ndef peek(obj):\n    return A.m(obj)",
     "A.m taken through the class"),
    ("class A:\n    def m(self):\n        return self._x\n\n\nclass B(A):\n    pass\n\n\ndef peek(obj):\n    return B.m(obj)",
     "B.m taken through the class"),
    ("class A:\n    def m(self):\n        return self._x\n\n\ndef peek(obj):\n    return getattr(A, 'm')(obj)",
     "A.m taken through the class"),
    ("class A:\n    def m(self):\n        return self._x\n\n\ndef peek(obj):\n    return type(A()).m(obj)",
     "type(...).m taken through the class"),
    ("x = copyright", "use of copyright")])
def test_screen_refuses_each_class_issue_22_found(code, refused):
    findings = screened(code)
    assert any(refused in f.what and f.exercise is None for f in findings), [str(f) for f in findings]


def test_screen_still_allows_the_honest_forms_of_those():
    code = ("@dataclass\nclass Settings:\n    sizes: list = field(default_factory=list)\n\n\n"
            "class Base(nn.Module):\n    def __init__(self):\n        super().__init__()\n        self._cache = None\n\n"
            "    def step(self, x: type | None = None):\n        return self._cache, (lambda: self._cache)(), super()._apply\n\n\n"
            "class Child(Base):\n    def step(self, x=None):\n        same = type(x) is type(self) and isinstance(x, type)\n"
            "        return Base.step(self, x), type(self).__name__, same, type(self)(), super(Child, self)._cache\n\n"
            "    @classmethod\n    def make(cls):\n        return cls._build()\n")
    assert [str(f) for f in screened(code)] == []


@pytest.mark.parametrize("where", [
    "if True:\n    import peft as ref\n",
    "try:\n    from peft import get_peft_model as ref\nexcept ImportError:\n    ref = None\n",
    "for _ in range(1):\n    import peft as ref\n",
    "with torch.no_grad():\n    import peft as ref\n",
    "def load():\n    global ref\n    import peft as ref\n\n\nload()\n",
    "class Holder:\n    import peft as ref\n\n\nref = Holder.ref\n",
    "class Holder:\n    def __init__(self):\n        import peft\n        self.ref = peft.LoraConfig\n\n\nref = Holder()\n"])
def test_peft_imported_anywhere_zeroes_the_exercise_that_uses_it(where):
    """Issue 22: `import peft` inside if / try / with / loops / class bodies / functions was not seen
    (exercise 0.3 scored 4/4 through peft.get_peft_model); now the exercise using it scores zero."""
    stub = (ROOT / "labs" / "lora.py").read_text()
    source = filled("lora").replace("        return (self.lora_B @ self.lora_A) * self.scaling",
                                    "        return ref.LoraConfig")
    findings = screen.screen_module(source + "\n" + where, stub, TECHNIQUES, API)
    assert {f.exercise for f in findings} == {"5.3"}, [str(f) for f in findings]
    assert "from scratch" in next(f.what for f in findings if f.exercise == "5.3")


def test_license_credits_and_copyright_are_not_in_a_student_modules_builtins():
    seen = sandbox_child.checked_builtins(Course.load(ROOT).policy())
    assert not {"license", "credits", "copyright", "open", "eval"} & set(seen) and "print" in seen


def test_course_helpers_that_set_attributes_by_name_check_their_arguments():
    """labs.virtual_tokens.hook_in and labs.surgery's helpers set an attribute named by the caller on
    an object the caller hands in: hook_in(SomeClass, "__eq__", m) made always-equal values. Each
    now takes only an nn.Module and a plain name, and says what it accepts."""
    from torch import nn

    from labs import surgery, virtual_tokens

    class Hooked(nn.Module):
        def before_forward(self, module, args, kwargs):
            return args, kwargs

        def after_forward(self, module, args, kwargs, output):
            return output

    dunder = "_" * 2 + "eq" + "_" * 2  # built at run time, as an attack past the screen would
    with pytest.raises(TypeError, match="model must be an nn.Module, got type"):
        virtual_tokens.hook_in(nn.Linear, "soft_prompt", Hooked())
    for name in (dunder, "_modules", "class", "a.b", 3):
        with pytest.raises(ValueError, match="not a plain attribute name"):
            virtual_tokens.hook_in(nn.Linear(2, 2), name, Hooked())
    with pytest.raises(TypeError, match="module must be an nn.Module, got function"):
        virtual_tokens.hook_in(nn.Linear(2, 2), "soft_prompt", lambda *a: None)
    model = virtual_tokens.hook_in(nn.Sequential(nn.Linear(2, 2)), "soft_prompt", Hooked())
    assert isinstance(model.soft_prompt, Hooked) and "__eq__" not in vars(nn.Linear)

    model = nn.Sequential(nn.Linear(2, 2))
    for path in (dunder, "0." + dunder, "_Printer__setup", "0.weight\x00"):
        with pytest.raises(ValueError, match="not a submodule path"):
            surgery.get_submodule_parent(model, path)
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        surgery.get_submodule_parent(object(), "x")
    assert surgery.get_submodule_parent(model, "0") == (model, "0")
    with pytest.raises(TypeError, match="replacement for '0' must be an nn.Module, got function"):
        surgery.replace_modules(model, lambda n, m: True, lambda n, m: (lambda: 0))


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


def test_a_class_folder_of_student_folders_expands_to_one_submission_each(tmp_path):
    from labs.instructor.submissions import expand

    def student(folder: Path) -> Path:
        (folder / "labs").mkdir(parents=True)
        (folder / "labs" / "lora.py").write_text("# work\n")
        return folder

    course = tmp_path / "class"
    alice, bob = student(course / "alice"), student(course / "bob" / "peft-lab-student").parent
    (course / "carol.zip").write_bytes(b"PK\x05\x06" + bytes(18))  # an empty zip
    assert expand([course]) == [alice, bob, course / "carol.zip"]
    wrapped = student(tmp_path / "dave" / "peft-lab-student").parent   # one student, labs/ in a top folder
    assert expand([wrapped]) == [wrapped]
    assert expand([alice]) == [alice]
