"""labs grade at bounded cost: the screen's analysis is linear and capped, a submission and a
module have time budgets, a fork bomb is contained, and a root grader runs every child under a
uid of its own, with or without bubblewrap, that can reach neither the answers nor other files.

The screen and the fork server's bookkeeping are tested on their own (no processes); one small
grading run per isolation mode (bubblewrap where it works, and none) covers the rest.
"""
from __future__ import annotations

import ast
import csv
import json
import os
import re
import secrets
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from labs.instructor import sandbox, sandbox_child, screen
from labs.instructor.grade import Course, Limits, grade, prepare
from labs.instructor.submissions import Submission

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.xdist_group("grade")
MODULES = ("scaling", "freezing")
BEGIN = re.compile(r"^\s*# BEGIN SOLUTION (?P<id>\d+\.\d+)\s*$")
END = re.compile(r"^\s*# END SOLUTION\s*$")
TECHNIQUES = frozenset(p.stem for p in (ROOT / "solutions").glob("*.py") if p.stem != "__init__")
API = Course.load(ROOT).api


def filled(name: str) -> str:
    """labs/<name>.py with every exercise done from the reference (the stub's other lines kept)."""
    return "".join(line for line in (ROOT / "solutions" / f"{name}.py").read_text().splitlines(True)
                   if not BEGIN.match(line) and not END.match(line))


def from_stub(module: str, body: str, header: str = "") -> str:
    """The blank stub of `module` (as released), each exercise body replaced by the one line `body`."""
    lines = (ROOT / "labs" / f"{module}.py").read_text().splitlines(True)
    out = [re.sub(r"raise NotImplementedError\(.*\)$", body, line) if 'raise NotImplementedError("Exercise' in line
           else line for line in lines]
    at = next(i for i, line in enumerate(out) if line.startswith("NOTEBOOK ="))
    return "".join(out[:at]) + header + "".join(out[at:])


def folder(base: Path, name: str, modules: dict[str, str]) -> Path:
    (base / name / "labs").mkdir(parents=True)
    for module in MODULES:
        (base / name / "labs" / f"{module}.py").write_text(modules.get(module, (ROOT / "labs" / f"{module}.py").read_text()))
    return base / name


# ---------------------------------------------------------------------------------------------
# The screen: linear, capped, timed
# ---------------------------------------------------------------------------------------------
def chain(n: int) -> tuple[str, str]:
    """(module, stub): lora's reference whose exercise 5.3 calls the last of n one-line helpers,
    each calling the one before, the first of which uses peft."""
    stub = (ROOT / "labs" / "lora.py").read_text()
    source = filled("lora").replace("        return (self.lora_B @ self.lora_A) * self.scaling",
                                    f"        return h{n - 1}(self)")
    source += "\nimport peft\n\ndef h0(x):\n    return peft.LoraConfig\n"
    source += "".join(f"\ndef h{i}(x):\n    return h{i - 1}(x)\n" for i in range(1, n))
    return source, stub


@pytest.fixture
def walked(monkeypatch) -> list[int]:
    """Counts the nodes every ast.walk yields while the test runs (the analysis's work)."""
    count = [0]
    original = ast.walk

    def counting(node):
        for child in original(node):
            count[0] += 1
            yield child
    monkeypatch.setattr(ast, "walk", counting)
    return count


def test_from_scratch_analysis_is_linear_in_the_number_of_helpers(walked):
    """Thousands of one-line helpers: the work is a few walks of the tree, not one per helper. Work per
    node stays the same when the helpers grow 4x (quadratic work would grow it 4x)."""
    per_node = {}
    for n in (1000, 4000):
        source, stub = chain(n)
        tree = ast.parse(source)
        size = sum(1 for _ in _nodes(tree))
        exercises = screen.stub_exercises(stub)
        walked[0] = 0
        findings = screen._from_scratch(tree, exercises)
        assert {f.exercise for f in findings} == {"5.3"}, findings
        assert f"h{n - 1}, which uses peft" in findings[0].what, findings[0].what
        per_node[n] = walked[0] / size
        assert per_node[n] <= 6, f"{n} helpers: {walked[0]:,} nodes walked for a tree of {size:,}"
    assert per_node[4000] <= 1.1 * per_node[1000], per_node


def _nodes(tree):
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(ast.iter_child_nodes(node))


def test_a_class_that_uses_peft_taints_who_names_it_and_an_exercise_answers_for_itself():
    stub = (ROOT / "labs" / "lora.py").read_text()
    source = filled("lora").replace("        return (self.lora_B @ self.lora_A) * self.scaling",
                                    "        return Helper.make(self)")
    source += ("\nimport peft\n\nclass Helper:\n    def make(self):\n        return self.inner()\n\n"
               "    def inner(self):\n        return peft.LoraConfig\n")
    findings = screen.screen_module(source, stub, TECHNIQUES, API)
    assert {f.exercise for f in findings} == {"5.3"}, findings  # merge calls delta_weight (5.3): not tainted
    assert "Helper" in findings[0].what


def test_a_module_over_the_caps_is_refused_unread_with_the_reason():
    source, stub = chain(screen.MAX_FUNCTIONS + 10)
    [finding] = screen.screen_module(source, stub, TECHNIQUES, API)
    assert finding.exercise is None and f"the limit is {screen.MAX_FUNCTIONS:,}" in finding.what, finding
    big = stub + "\n" + "x = 1\n" * (screen.MAX_SOURCE_BYTES // 6 + 1)
    [finding] = screen.screen_module(big, stub, TECHNIQUES, API)
    assert finding.exercise is None and "bytes; the limit is" in finding.what


def test_the_screen_gives_up_on_a_submission_past_its_time_and_says_so(tmp_path, monkeypatch):
    """The screen's time limit, per submission: whatever makes it slow, the module is not run."""
    def endless(*args, **kwargs):
        while True:
            pass
    monkeypatch.setattr(screen, "screen_module", endless)
    course = Course.load(ROOT)
    sub = Submission("slow", tmp_path, files={"lora": filled("lora").encode()})
    started = time.monotonic()
    graded = prepare(sub, course, tmp_path / "staged", seconds=0.3)
    assert "the screen ran out of time (0.3 s" in graded.module_notes["lora"], graded.module_notes
    assert (tmp_path / "staged" / "labs" / "lora.py").read_text() == course.stubs["lora"]
    assert time.monotonic() - started < 60  # a backstop for the run itself, not a timing claim
    with pytest.raises(screen.OutOfTime):
        with screen.time_limit(0):
            pass


# ---------------------------------------------------------------------------------------------
# The fork server's budgets, fed events by hand
# ---------------------------------------------------------------------------------------------
class _Server:
    """A fork server with a real (sleeping) child to kill, fed events by hand."""

    def __init__(self, limits: dict, plan=None, submission="s"):
        self.proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
        read, write = os.pipe()
        self.events = os.fdopen(read, "rb")
        self.server = sandbox.Server(write, 1, Path("/nonexistent"))
        key = secrets.token_bytes(sandbox_child.KEY_BYTES)
        self.child = sandbox_child.Channel(key)
        task = {"id": f"{submission}/scaling", "submission": submission,
                "limits": {"timeout": 60, "test_timeout": 5, **limits}, "plan": plan}
        self.attempt = sandbox.Attempt(task, self.proc.pid, Path("/nonexistent"), -1, -1,
                                       sandbox_child.Channel(key), 1e12, time.monotonic())
        self.server.running[self.proc.pid] = self.attempt

    def run(self, nodeids: list[str], errors: list[str | None]) -> None:
        """Collect `nodeids`, then run the first of them, as many as `errors` (None: passed)."""
        self.server.on_results(self.attempt, self.child.seal({"event": "collected", "nodeids": nodeids}))
        for nodeid, error in zip(nodeids, errors):
            for event in ({"event": "start", "nodeid": nodeid},
                          {"event": "result", "nodeid": nodeid, "outcome": "failed" if error else "passed",
                           "error": error}):
                self.server.on_results(self.attempt, self.child.seal(event))

    def finish(self) -> list[dict]:
        self.proc.kill()  # if the server did not
        self.attempt.status = os.waitpid(self.proc.pid, 0)[1]
        del self.server.running[self.proc.pid]
        self.server.finish(self.attempt)
        os.close(self.server.events_fd)
        return [json.loads(line) for line in self.events]


def test_a_module_stops_after_k_tests_in_a_row_ran_out_of_time():
    s = _Server({"max_timeouts": 2})
    ids = ["t1", "t2", "t3", "t4", "t5"]
    s.run(ids, [None, "TestTimeout", "TestTimeout"])
    assert "tests of 2 exercises in a row ran out of time" in (s.attempt.killed or ""), s.attempt.killed
    events = s.finish()
    results = {e["nodeid"]: e for e in events if e["event"] == "result"}
    assert results["t1"]["outcome"] == "passed" and results["t3"]["error"] == "TestTimeout"
    assert all(results[t]["error"] == "DidNotFinish" and "in a row ran out of time" in results[t]["message"]
               for t in ("t4", "t5")), results
    assert s.server.queue == [] and events[-1]["event"] == "done", "the rest is not run again"


def test_a_test_that_ignores_its_timeout_counts_as_one_in_a_row():
    """The server kills a child whose test ran past its wall-clock backstop: that test is a timeout
    too, and with the one before it the module stops instead of starting a new child."""
    s = _Server({"max_timeouts": 2})
    s.run(["t1", "t2", "t3"], ["TestTimeout"])
    s.server.on_results(s.attempt, s.child.seal({"event": "start", "nodeid": "t2"}))
    s.attempt.current_since -= 1e6  # as if t2 had run that long
    s.server.check_deadlines()
    assert s.attempt.hung and "ignored its timeout" in s.attempt.killed
    events = s.finish()
    results = {e["nodeid"]: e for e in events if e["event"] == "result"}
    assert results["t2"]["error"] == "Crash" and results["t3"]["error"] == "DidNotFinish", results
    assert "in a row ran out of time" in results["t3"]["message"] and s.server.queue == []


def test_a_test_its_decoys_and_its_exercise_count_once_and_a_test_in_time_resets_the_count():
    """One endless loop costs its own exercise only, however many tests that exercise has."""
    plan = [["a", "t1", 0], ["a", "t2", 4], ["b", "t3", 0], ["c", "t4", 0], ["d", "t5", 0], ["e", "t6", 0]]
    s = _Server({"max_timeouts": 2}, plan)
    s.attempt.task["exercise_of"] = {"a": "2.4", "b": "2.4", "c": "2.1", "d": "2.2", "e": "2.3"}
    s.run(["t1", "t2", "t3", "t4", "t5", "t6"], ["TestTimeout", "TestTimeout", "TestTimeout", None, "TestTimeout", None])
    assert s.attempt.killed is None, "2.4 three times, 2.1 in time, 2.2 once: never 2 exercises in a row"
    s.finish()


def test_a_submission_past_its_budget_is_stopped_and_its_next_module_not_run():
    s = _Server({"submission_timeout": 30})
    s.server.spent["s"] = 31.0  # its other modules already ran that long
    s.server.check_deadlines()
    assert "30 s for all the modules of this submission" in (s.attempt.killed or ""), s.attempt.killed
    s.server.start({"id": "s/freezing", "submission": "s", "limits": {"timeout": 60, "submission_timeout": 30}})
    events = s.finish()
    [skipped] = [e for e in events if e["task"] == "s/freezing"]
    assert skipped["event"] == "done" and "was not run" in skipped["reason"], skipped


# ---------------------------------------------------------------------------------------------
# One grading run per isolation mode: a spinner, a fork bomb, a peeker, and honest students
# ---------------------------------------------------------------------------------------------
LIMITS = Limits(timeout=60, test_timeout=1.5, memory_mb=3072, nproc=32, max_timeouts=2)
FORK_BOMB = '''
import torch
_os = torch.serialization.os


_MADE = []


def _bomb():
    """Fork until refused; each copy moves to its own session and waits (no CPU spent). Returns how
    many copies this child made so far (they live until the child is gone)."""
    r, w = _os.pipe()
    for _ in range(2000):
        try:
            pid = _os.fork()
        except OSError:
            break
        if pid == 0:
            _os.setsid()
            _os.read(r, 1)
            _os._exit(0)
        _MADE.append(pid)
    return len(_MADE)
'''
PEEK = '''
import torch
_os = torch.serialization.os


def _peek():
    """Everything outside its own copy that this child could read or write."""
    got = []
    for path in (SECRET, COURSE + "/tests/hidden/test_hidden_scaling.py"):
        try:
            fd = _os.open(path, _os.O_RDONLY)
            got.append("read " + path + ": " + _os.read(fd, 40).decode())
        except OSError:
            pass
    for path in (COURSE + "/PWNED", COURSE + "/solutions/PWNED", CLASS + "/PWNED", CLASS + "/honest/labs/PWNED"):
        try:
            _os.close(_os.open(path, _os.O_WRONLY | _os.O_CREAT, 0o644))
            got.append("wrote " + path)
        except OSError:
            pass
    here = _os.getcwd()
    for path in (here + "/../..", here + "/../../staged", here + "/.."):
        try:
            got.append("listed " + path + ": " + ",".join(_os.listdir(path)))
        except OSError:
            pass
    try:
        _os.close(_os.open(SCRATCH, _os.O_WRONLY | _os.O_CREAT, 0o644))
    except OSError:
        pass
    return "uid %d; %s" % (_os.getuid(), got)
'''


@pytest.fixture(scope="module", params=["off", "auto"])
def run(request) -> dict:
    """A class graded with --jobs 2: honest students, a spinner, a fork bomb, and (past the screen) a
    peeker. The course and class live in world-readable folders, as an instructor's may."""
    if request.param == "auto" and shutil.which("bwrap") is None:
        pytest.skip("needs bubblewrap")
    base = Path(tempfile.mkdtemp(prefix="limits-"))
    os.chmod(base, 0o755)
    try:
        yield _grade_class(base, request.param)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _grade_class(base: Path, mode: str) -> dict:
    course = base / "course"
    (course / "labs").mkdir(parents=True)
    for src in (ROOT / "labs").glob("*.py"):
        if not src.read_text().startswith("# GENERATED") or src.stem in MODULES:
            shutil.copyfile(src, course / "labs" / src.name)
    (course / "tests" / "hidden").mkdir(parents=True)
    shutil.copyfile(ROOT / "tests" / "conftest.py", course / "tests" / "conftest.py")
    for module in MODULES:
        shutil.copyfile(ROOT / "tests" / f"test_ex_{module}.py", course / "tests" / f"test_ex_{module}.py")
        shutil.copyfile(ROOT / "tests" / "hidden" / f"test_hidden_{module}.py",
                        course / "tests" / "hidden" / f"test_hidden_{module}.py")
    shutil.copyfile(ROOT / "pyproject.toml", course / "pyproject.toml")
    (course / "solutions").mkdir()
    secret = course / "solutions" / "scaling.py"
    secret.write_text("ANSWER = 'the reference'\n")
    for path in [course, *course.rglob("*")]:
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    klass, scratch = base / "class", f"/tmp/limits-scratch-{secrets.token_hex(4)}"
    sc, fr = filled("scaling"), filled("freezing")
    anchor = '    bits = {"fp32"'
    peek = PEEK.replace("SECRET", repr(str(secret))).replace("COURSE", repr(str(course))).replace(
        "CLASS", repr(str(klass))).replace("SCRATCH", repr(scratch))
    paths = [
        folder(klass, "honest", {"scaling": sc, "freezing": fr}),
        folder(klass, "spinner", {"scaling": from_stub("scaling", "while True: pass"),
                                  "freezing": from_stub("freezing", "while True: pass")}),
        folder(klass, "forkbomb", {"scaling": sc.replace(anchor, '    raise RuntimeError(f"FORKED {_bomb()}")\n'
                                                         + anchor, 1).replace("NOTEBOOK =", FORK_BOMB + "\nNOTEBOOK =", 1),
                                   "freezing": fr}),
        folder(klass, "peeker", {"scaling": sc.replace(anchor, '    raise RuntimeError(f"PEEK {_peek()}")\n'
                                                       + anchor, 1).replace("NOTEBOOK =", peek + "\nNOTEBOOK =", 1),
                                 "freezing": fr}),
        folder(klass, "honest-last", {"scaling": sc, "freezing": fr}),
    ]
    for path in [klass, *klass.rglob("*")]:
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    out, lines = base / "out", []
    grade(paths, out, LIMITS, jobs=2, course=Course.load(course), progress=lines.append,
          unscreened=frozenset({"forkbomb", "peeker"}), sandbox=mode)
    table = {row["student"]: row for row in csv.DictReader((out / "grades.csv").open())}
    results = {p.parent.name: json.loads(p.read_text()) for p in out.glob("students/*/results.json")}
    left = [p for p in Path("/proc").iterdir() if p.name.isdigit() and sandbox.is_child_uid(_uid_of(p))
            and _state(p) not in ("Z", None)]  # a zombie is dead, waiting for init to collect it
    return {"mode": mode, "csv": table, "results": results, "progress": lines, "course": course, "class": klass,
            "scratch": scratch, "left": left, "solutions_mode": stat.S_IMODE(os.stat(course / "solutions").st_mode),
            "escaped": [p for p in (course / "PWNED", course / "solutions" / "PWNED", klass / "PWNED",
                                    klass / "honest" / "labs" / "PWNED") if p.exists()]}


def _uid_of(proc: Path) -> int | None:
    try:
        return proc.stat().st_uid
    except OSError:
        return None


def _state(proc: Path) -> str | None:
    try:
        return (proc / "stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return None


def said(run: dict, student: str, exercise: str) -> str:
    return " | ".join(t.get("output", "") for t in run["results"][student]["tests"] if t["number"] == exercise)


def test_honest_students_keep_full_marks_beside_the_attackers(run):
    for student in ("honest", "honest-last"):
        row = run["results"][student]
        assert row["score"] == sum(t["max_score"] for t in row["tests"]) > 0, (student, run["progress"][-8:])
        assert run["csv"][student]["status"] == "ok"


def test_a_module_whose_every_test_spins_stops_after_k_timeouts(run):
    tests = run["results"]["spinner"]["tests"]
    assert all(t["score"] == 0 for t in tests)
    outputs = [t.get("output", "") for t in tests]
    assert any("in a row ran out of time" in o for o in outputs), outputs
    stopped = sum("in a row ran out of time" in o for o in outputs)
    assert stopped >= len(tests) // 2, "most of the module's tests were not run at all"


def test_a_fork_bomb_is_held_to_the_child_process_limit_and_swept(run):
    message = said(run, "forkbomb", "0.1")
    made = max(int(n) for n in re.findall(r"FORKED (\d+)", message))
    if os.geteuid() == 0:  # its own uid: the limit counts this child's processes and nobody else's
        assert 0 < made < LIMITS.nproc, message
    assert run["left"] == [], f"processes of the children's uids left after the run: {run['left']}"
    assert run["csv"]["forkbomb"]["2.1"] == run["csv"]["honest"]["2.1"], "its other module is graded as usual"


@pytest.mark.skipif(os.geteuid() != 0, reason="a uid drop needs a root grader")
def test_a_child_runs_as_its_own_uid_and_reaches_nothing_outside_its_copy(run):
    message = said(run, "peeker", "0.1")
    found = re.search(r"PEEK uid (\d+); (\[.*?\])", message)
    assert found, message
    assert sandbox.is_child_uid(int(found.group(1))), message
    reached = ast.literal_eval(found.group(2))
    if run["csv"]["peeker"]["sandbox"] == "bubblewrap":  # above /grading is the sandbox's own root: fine
        reached = [r for r in reached if not r.startswith("listed /grading/..")]
    assert reached == [], f"reached outside its copy: {reached}"
    assert run["escaped"] == [] and not Path(run["scratch"]).exists(), "what it wrote in /tmp is swept"
    row = run["csv"]["peeker"]
    assert "uid drop: yes" in row["protections"] and f"bubblewrap: {'no' if row['sandbox'] != 'bubblewrap' else 'yes'}" \
        in row["protections"], row["protections"]
    assert f"{LIMITS.nproc} processes" in row["protections"]
    if run["mode"] == "off":
        assert run["solutions_mode"] & 0o007 == 0, "solutions/ closed to other users"
        assert "NONE" in row["sandbox"]
