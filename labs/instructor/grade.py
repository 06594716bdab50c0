"""`labs grade`: grade a class of submissions fairly, fast and safely.

    labs grade submissions/*.zip --out grades            every zip (or folder) given
    labs grade submissions/ --out grades --jobs 2        a folder of zips or folders
    labs grade /autograder/submission --out /autograder/results --gradescope-single
    labs grade submissions/ --out grades-2 --shard 2/4        machine 2 of 4 grades its slice
    labs merge-grades --out grades.csv grades-1 grades-2 grades-3 grades-4

For each submission only `labs/<technique>.py` is taken, screened (labs/instructor/screen.py), and dropped
into a fresh grading tree built from the instructor's own files: infrastructure, tests (the
hidden ones too), conftest. The tests run in forked children (labs/instructor/sandbox.py), one
technique module per child, each in its own bubblewrap sandbox (labs/instructor/boundary.py) with
resource limits, and report over a signed pipe; scores are computed here from what the trusted
collection declared (points per test, from the exercise markers). Where bubblewrap cannot build a
sandbox on this machine the run says so at the start and the end, grades.csv says so in its
`sandbox` column, and the children run with the resource limits only.

Out, in --out DIR:
    DIR/students/<student>/results.json   Gradescope format: one entry per test, hidden ones "after_published"
    DIR/students/<student>/feedback.md    per exercise: status, points, a hint
    DIR/students/<student>/output.txt     what the student's code printed (for the instructor)
    DIR/grades.csv     one row per submission, rewritten as each finishes: a column per exercise,
                       total, status, sandbox, tampered, id_note, protections
    DIR/instructor.md  for the instructor: the run's protections, and each tampered submission
status: ok (everything graded), partial (a module was refused, missing or did not finish: see
feedback.md), error:<reason> (nothing could be graded, e.g. a corrupt zip), tampered (a decoy test
passed or the grading plugin was changed: scored 0; the student is told only to see the instructor).
id_note: a name that collided with another once cleaned (exact names keep theirs).
sandbox: "bubblewrap" when each child ran in its own sandbox, else "NONE: <why>" (limits only).
protections: everything in force, in words: bubblewrap yes/no; uid drop yes/no (a root grader runs
each child under a uid of its own, with or without bubblewrap, so that its process limit is its own
and, without bubblewrap, solutions/ and tests/hidden/ are closed to it); the limits.
Cost is bounded: the screen has 30 s per submission (Limits.screen_timeout); a test has
--test-timeout seconds of CPU time (and a wall-clock backstop); a module --timeout, a submission
--submission-timeout seconds of wall-clock time; a module stops after --max-timeouts of its tests
in a row ran out of time, counted in exercises (the rest fail with that reason).
What a submission wrote (messages, names, reasons) is shown as typed: cleaned of control characters
and terminal escapes, capped, and quoted in Markdown code (labs/instructor/untrusted.py). A hidden
test shows its name, points and pass/fail only; the public tests of a module run before its hidden
ones, and a visible message that comes after a hidden test or quotes one is withheld.
Every submission always gets a row, and grades.csv is always written, whatever a child does.

A large class can be spread over machines: each runs `--shard i/n` on the same submissions and
grades every n-th of them from the i-th (DIR/shard.json says which); `labs merge-grades` joins
their grades.csv into one, refusing a missing, doubled or overlapping shard.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from labs.instructor import decoys, screen, untrusted
from labs.instructor.course import Course
from labs.files import write_atomically
from labs.instructor.gradebook import (ExerciseScore, Graded, grades_csv, merge_shards, shard_record,
                                       write_reports)
from labs.instructor.submissions import Submission, expand, read_submission, student_ids

@dataclass(frozen=True)
class Limits:
    timeout: float = 300.0      # wall-clock seconds for one technique module's tests (one child)
    test_timeout: float = 20.0  # CPU seconds for one test before it fails as an endless loop
    wall_factor: float = 2.0    # a test's wall-clock backstop (one that waits), in multiples of test_timeout
    memory_mb: int = 4096       # address space of one child (torch alone maps about 1 GB)
    file_mb: int = 64           # largest file a child may write
    nproc: int = 64             # processes and threads of one child (its own uid where the grader is root)
    submission_timeout: float = 900.0  # seconds for all the modules of one submission together
    max_timeouts: int = 3       # a module stops once tests of this many exercises in a row ran out of time
    screen_timeout: float = screen.SCREEN_SECONDS  # seconds to screen one submission's modules

    def __post_init__(self):
        for name in ("timeout", "test_timeout", "wall_factor", "memory_mb", "file_mb", "nproc", "submission_timeout",
                     "max_timeouts", "screen_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        if self.memory_mb < 1024:
            raise ValueError(f"memory_mb={self.memory_mb} is too small: torch alone needs about 1024 MB")


# ---------------------------------------------------------------------------------------------
# One submission: screening, staging, and its score
# ---------------------------------------------------------------------------------------------


def prepare(sub: Submission, course: Course, staging: Path, screened: bool = True,
            seconds: float = screen.SCREEN_SECONDS) -> Graded:
    """Screen each technique module; stage what may run (a refused module is replaced by the stub).

    screened=False skips the static screen: tests use it to check the walls behind it on their own.
    seconds: the screen's time for all the modules together; a module it could not finish in time
    is not run (it scores zero with that reason), and neither are the modules after it."""
    graded = Graded(sub, dict(sub.notes))
    if sub.error:
        return graded
    labs = staging / "labs"
    labs.mkdir(parents=True)
    deadline = time.monotonic() + seconds
    for name, stub in course.stubs.items():
        text = _decode(sub.files.get(name), name, graded)
        if text is not None and _same_code(text, stub):
            graded.untouched.add(name)
        elif text is not None:
            try:
                with screen.time_limit(deadline - time.monotonic()):
                    findings = screen.screen_module(text, stub, frozenset(course.stubs), course.api) if screened else []
            except screen.OutOfTime:
                findings = [screen.Finding(1, f"the screen ran out of time ({seconds:g} s for a submission's "
                                              "modules): make the module smaller and simpler")]
            refused = [f for f in findings if f.exercise is None]
            if refused:
                graded.module_notes[name] = f"labs/{name}.py was not run: " + "; ".join(map(str, refused[:3]))
                text = None
            for finding in findings:
                if finding.exercise:
                    graded.exercise_notes[finding.exercise] = str(finding)
        (labs / f"{name}.py").write_text(stub if text is None else text)
    return graded


def _decode(data: bytes | None, name: str, graded: Graded) -> str | None:
    if data is None:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        graded.module_notes[name] = f"labs/{name}.py is not UTF-8 text ({err.reason} at byte {err.start})"
        return None


def _same_code(text: str, stub: str) -> bool:
    try:
        return ast.dump(ast.parse(text)) == ast.dump(ast.parse(stub))
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False


def runnable(graded: Graded, course: Course) -> list[str]:
    """Technique modules whose tests must run: present, accepted, and changed from the stub."""
    if graded.sub.error:
        return []
    return [n for n in course.stubs if n not in graded.module_notes and n not in graded.untouched]


# ---------------------------------------------------------------------------------------------
# The fork server, seen from here
# ---------------------------------------------------------------------------------------------
MAX_EVENT_BYTES = 4 * 2**20  # one event line from the test runner (a module's output is at most ~16 KB)


class Runner:
    """labs/instructor/sandbox.py as a child process: tasks go in as JSON lines, events come back."""

    def __init__(self, course: Course, jobs: int, workdir: Path, sandbox: str = "auto"):
        read_end, write_end = os.pipe()
        trees = workdir / "trees"
        trees.mkdir(parents=True, exist_ok=True)
        (workdir / "staged").mkdir(mode=0o700, exist_ok=True)  # every submission: never a child's to read
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "HOME": str(workdir),
               "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1",
               "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
               "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1", "MPLBACKEND": "Agg", "HF_HOME": str(workdir / "hf")}
        cmd = [sys.executable, "-I", str(Path(__file__).with_name("sandbox.py")), "--events", str(write_end),
               "--jobs", str(jobs), "--workdir", str(trees), "--course", str(course.root), "--sandbox", sandbox]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, pass_fds=(write_end,), env=env, cwd=workdir,
                                     start_new_session=True)
        os.close(write_end)
        self.events = os.fdopen(read_end, "rb")
        self.stderr: list[bytes] = []
        self.sandboxed, self.sandbox_said = False, "the test runner did not say"
        self.uid_said = "uid drop: the test runner did not say"
        self.dropped: list[str] = []   # event lines that were not JSON objects (none expected)
        threading.Thread(target=self._drain_stderr, daemon=True).start()

    def _drain_stderr(self) -> None:
        for line in self.proc.stderr:
            self.stderr = (self.stderr + [line])[-40:]

    def send(self, tasks: list[dict], close: bool = False) -> None:
        def write():
            try:
                for task in tasks:
                    self.proc.stdin.write((json.dumps(task) + "\n").encode())
                self.proc.stdin.flush()
                if close:
                    self.proc.stdin.close()
            except (BrokenPipeError, ValueError):
                pass
        threading.Thread(target=write, daemon=True).start()

    def next_event(self) -> dict | None:
        """The next event from the test runner, None once it is gone; a line that is not a JSON
        object (it cannot come from the runner) is noted and skipped, never fatal."""
        while line := self.events.readline(MAX_EVENT_BYTES):
            try:
                event = json.loads(line)
            except ValueError:
                event = None
            if isinstance(event, dict):
                if event.get("event") == "ready":
                    self.sandboxed, self.sandbox_said = bool(event.get("sandbox")), str(event.get("said"))
                    self.uid_said = str(event.get("uid", "uid drop: no"))
                    continue
                return event
            self.dropped.append(line[:200].decode(errors="replace"))
        return None

    def sandbox_column(self) -> str:
        """What grades.csv says about the sandbox: short when it held, the reason when it did not."""
        return "bubblewrap" if self.sandboxed else f"NONE: {self.sandbox_said}"

    def collect(self, course: Course, limits: Limits, policy: dict) -> list[dict]:
        """The graded tests, their exercises and points, collected on the instructor's stubs."""
        files = course.test_files()
        if not files:
            raise FileNotFoundError(f"no graded tests (files with @pytest.mark.exercise) under {course.root / 'tests'}")
        self.send([{"id": "collect", "base": str(course.root), "labs": str(course.root / "labs"),
                    "tests": files, "exercises": sorted(course.exercises), "collect_only": True,
                    "policy": policy, "limits": vars(limits)}])
        items, errors = None, []
        while (event := self.next_event()) is not None:
            if event.get("event") == "items":
                items = event["items"]
            elif event.get("event") == "collect_error":
                errors.append(f"{event.get('where')}: {event.get('message', '')[-1500:]}")
            elif event.get("event") == "done":
                break
        if errors:
            raise RuntimeError("the graded tests do not collect in a grading tree:\n" + "\n".join(errors))
        if not items:
            tail = (event or {}).get("output", "") or b"".join(self.stderr).decode(errors="replace")
            raise RuntimeError("could not collect the graded tests:\n" + tail[-3000:])
        return items

    def close(self) -> None:
        for stream in (self.proc.stdin, self.events):
            try:
                stream.close()
            except (BrokenPipeError, OSError, ValueError):
                pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def protections(runner, limits: Limits) -> str:
    """Every protection in force in this run, in one line (grades.csv, instructor.md, the terminal),
    from what the test runner said when it started (a stand-in runner says nothing of uids)."""
    sandboxed, uid_said = bool(getattr(runner, "sandboxed", False)), getattr(runner, "uid_said", "uid drop: not known")
    own = uid_said.startswith("uid drop: yes")
    return (f"bubblewrap: {'yes' if sandboxed else 'no'}; {uid_said}; limits per child: "
            f"{limits.nproc if own else 'the user' + chr(39) + 's'} processes, {limits.memory_mb} MB, "
            f"{int(limits.timeout) + 1} s CPU per process, {limits.file_mb} MB files; per test {limits.test_timeout:g} s "
            f"CPU ({limits.wall_factor:g}x that in wall time); per module {limits.timeout:g} s; per submission "
            f"{limits.submission_timeout:g} s; a module stops after {limits.max_timeouts} exercises timed out in a row; "
            f"screen {limits.screen_timeout:g} s")


def tasks_for(graded: Graded, course: Course, staging: Path, limits: Limits, policy: dict,
              rng: random.Random | None = None) -> list[dict]:
    """One task per technique module to run. Its graded tests run under fresh names beside their
    decoy copies (labs/instructor/decoys.py); `graded.planned` maps each name back."""
    rng = rng or random.SystemRandom()
    tasks = []
    for module in runnable(graded, course):
        ids = sorted(ex for ex, m in course.exercises.items() if m == module)
        files = sorted({i["nodeid"].split("::")[0] for i in course.items if i["exercise"] in ids})
        if not files:
            continue
        task_id = f"{graded.sub.student}/{module}"
        # public tests first: no visible test runs after a hidden one, so nothing the code under test
        # saw of a hidden test can reach a visible message (on_event withholds any that comes later)
        nodeids = sorted((i["nodeid"] for i in course.items if i["exercise"] in ids), key=course.is_hidden)
        planned = decoys.plan(nodeids, rng)
        tasks.append({"id": task_id, "submission": graded.sub.student, "base": str(course.root),
                      "labs": str(staging / "labs"),
                      "tests": files, "hidden": [f for f in files if course.is_hidden(f)], "exercises": ids,
                      "policy": policy, "limits": vars(limits),
                      "plan": [[p.source, p.nodeid, p.shift] for p in planned],
                      "exercise_of": {i["nodeid"]: i["exercise"] for i in course.items if i["exercise"] in ids}})
        graded.expected[task_id] = {p.nodeid for p in planned}
        graded.planned.update({p.nodeid: p for p in planned})
        graded.hidden_ids.update(p.nodeid for p in planned if course.is_hidden(p.source))
    graded.pending = {t["id"] for t in tasks}
    return tasks


def flag_tampering(graded: Graded, note: str, first: bool = False) -> None:
    """Record why a submission's verdicts cannot be trusted, each reason once (a forged plugin
    reports on every test), a decoy that passed first: it is the proof, and grades.csv's cell is
    bounded, so what comes first is what the instructor reads."""
    if note in graded.tampered:
        return
    graded.tampered.insert(0 if first else len(graded.tampered), note)


def on_event(event: dict, by_student: dict[str, Graded]) -> Graded | None:
    """Fold one event into its submission; return the submission when its last task is done.
    Only a pending task's events count, and only for tests that task runs, once each."""
    task = str(event.get("task", ""))
    student, _, module = task.partition("/")
    graded = by_student.get(student)
    if graded is None or task not in graded.pending:
        return None
    if event.get("event") == "result":
        nodeid = event.get("nodeid")
        if nodeid not in graded.expected.get(task, ()) or nodeid in graded.seen:
            return None
        graded.seen.add(nodeid)
        planned, outcome = graded.planned.get(nodeid), str(event.get("outcome"))
        after_hidden = task in graded.hidden_ran
        if nodeid in graded.hidden_ids:
            graded.hidden_ran.add(task)
        if event.get("tampered"):
            flag_tampering(graded, f"labs/{module}.py: {event['tampered']}")
        if planned is not None and planned.shift:  # a decoy: it must fail
            if outcome == "passed":
                graded.decoys_passed += 1
                if graded.decoys_passed == 1:  # the first says how; instructor_report counts them all
                    flag_tampering(graded, f"labs/{module}.py: decoy test {nodeid} (a copy of {planned.source} "
                                           "that must fail) was reported passed", first=True)
            elif event.get("error") == "Tampering":  # a library replaced while it ran: its original pays
                graded.results[planned.source] = {"outcome": "failed", "message": str(event.get("message") or "")}
            return None
        real = planned.source if planned is not None else nodeid
        if real not in graded.results:
            graded.results[real] = {"outcome": outcome, "message": str(event.get("message") or ""),
                                    "after_hidden": after_hidden and nodeid not in graded.hidden_ids}
    elif event.get("event") == "done":
        graded.pending.discard(task)
        try:
            graded.seconds += float(event.get("seconds", 0))
        except (TypeError, ValueError):
            pass
        if event.get("output"):
            graded.output.append(f"===== labs/{module}.py =====\n{event['output']}\n")
        if event.get("reason"):
            graded.problems.append(f"labs/{module}.py: the test process {event['reason']}")
        return graded if not graded.pending else None
    return None


# ---------------------------------------------------------------------------------------------
# Shards: one class, several machines
# ---------------------------------------------------------------------------------------------
def parse_shard(text: str) -> tuple[int, int]:
    """"2/4" -> (2, 4): this machine grades the second of four slices of the class."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not match or not 1 <= int(match[1]) <= int(match[2]):
        raise ValueError(f"--shard {text!r} is not i/n with 1 <= i <= n (for example --shard 2/4)")
    return int(match[1]), int(match[2])


def named_submissions(paths: list[Path], shard: tuple[int, int] | None = None,
                      notes: dict[str, str] | None = None) -> list[tuple[Path, str]]:
    """(path, student id) of each submission to grade here.

    Ids are given over the whole class first, so a student has the same id on every machine; a
    shard (i, n) then keeps every n-th submission from the i-th, a slice that interleaves the
    class so that no machine gets all the late, large submissions.
    """
    found = expand(paths)
    ids = student_ids(found)
    named = [(p, student) for p, (student, _) in zip(found, ids)]
    if notes is not None:  # how a colliding cleaned name was filed: grades.csv's id_note
        notes.update({student: note for student, note in ids if note})
    if shard is None:
        return named
    i, n = shard
    return named[i - 1::n]


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------
def grade(paths: list[Path], out: Path, limits: Limits, jobs: int, single: bool = False,
          course: Course | None = None, progress=print, unscreened: frozenset[str] = frozenset(),
          sandbox: str = "auto", shard: tuple[int, int] | None = None) -> list[tuple[str, list[ExerciseScore], str]]:
    """Grade every submission in `paths`; write the reports under `out`; return the grades.csv rows.

    unscreened: student ids whose modules skip the static screen (tests use it to check the walls
    behind the screen on their own). sandbox: "auto" (bubblewrap where it works) or "off".
    shard: (i, n) grades only slice i of n (see named_submissions) and writes out/shard.json."""
    progress = _for_terminal(progress)
    id_notes: dict[str, str] = {}
    named = named_submissions(paths, shard, id_notes)
    if shard is not None:  # written first: it says what this machine was given, whatever happens next
        write_atomically(out / "shard.json", json.dumps(shard_record(shard, [s for _, s in named],
                                                                     len(named_submissions(paths))), indent=1))
    course = course or Course.load()
    policy = course.policy()
    workdir = Path(tempfile.mkdtemp(prefix="labs-grade-"))
    started = time.monotonic()
    runner = Runner(course, jobs, workdir, sandbox)
    try:
        try:
            course.items = runner.collect(course, limits, policy)
        except RuntimeError:
            _write_ungraded(named, out, course, runner, "not graded: the course's own tests could not be collected")
            raise
        progress(f"ready: {len(course.items)} graded tests collected, test runner up in "
                 f"{time.monotonic() - started:.1f} s; sandbox: {runner.sandbox_said}")
        if not runner.sandboxed:
            progress(_no_sandbox_banner(runner))
        progress(f"protections: {protections(runner, limits)}")
        if id_notes:
            progress(f"note: {len(id_notes)} submission name(s) collided once cleaned: "
                     + "; ".join(id_notes.values())[:1000])
        rows = _grade_all(named, out, limits, course, policy, runner, workdir, single, progress, unscreened,
                          id_notes)
        if not runner.sandboxed:
            progress(_no_sandbox_banner(runner))
        if runner.dropped:
            progress(f"note: {len(runner.dropped)} line(s) from the test runner were not events and were "
                     f"skipped, e.g. {runner.dropped[0][:100]!r}")
        return rows
    finally:
        runner.close()
        shutil.rmtree(workdir, ignore_errors=True)


def _for_terminal(progress):
    """Progress lines carry submission names and reasons from submissions: printed without
    terminal escapes or control characters (a "\r" would overwrite the line before it)."""
    def say(line: str) -> None:
        progress(untrusted.clean(line, 4000, keep_newlines=True))
    return say


def _no_sandbox_banner(runner: Runner) -> str:
    line = "!" * 100
    return (f"{line}\n!! NO SANDBOX: {runner.sandbox_said}\n!! Student code ran with resource limits only: "
            "no filesystem, PID or network isolation.\n!! grades.csv says so in its sandbox column. On Debian: "
            f"apt-get install bubblewrap; user namespaces must be allowed.\n{line}")


def _write_ungraded(named: list[tuple[Path, str]], out: Path, course: Course, runner: Runner, why: str) -> None:
    """A row per submission even when nothing could be graded, so no one is silently missing."""
    rows = [(student, [], f"error:{why}") for _, student in named]
    write_atomically(out / "grades.csv", grades_csv(rows, course, runner.sandbox_column()))


def _grade_all(named, out, limits, course, policy, runner, workdir, single, progress, unscreened, id_notes=None):
    if single and len(named) != 1:
        raise ValueError(f"--gradescope-single grades exactly one submission, got {len(named)}")
    id_notes = id_notes or {}
    by_student = {student: Graded(Submission(student, p)) for p, student in named}
    rows: dict[str, tuple] = {}
    rng = random.SystemRandom()  # the decoys' names, order and shifts: fresh for every run

    def finish(graded: Graded) -> None:
        student = graded.sub.student
        try:
            scores, status = write_reports(graded, course, out if single else out / "students" / student)
        except Exception as err:  # noqa: BLE001 - the row is written whatever the reports do
            scores, status = [], f"error:the reports could not be written ({err})"
        rows[student] = (student, scores, status, {"tampered": "; ".join(graded.tampered),
                                                   "id_note": id_notes.get(student, ""),
                                                   "protections": protections(runner, limits)})
        write_atomically(out / "grades.csv", grades_csv([rows[s] for s in by_student if s in rows], course,
                                                        runner.sandbox_column()))  # row by row: nothing lost
        total, top = sum(s.points for s in scores), sum(s.max_points for s in scores)
        progress(f"[{len(rows)}/{len(by_student)}] {student}: {total:g}/{top:g} {status} ({graded.seconds:.1f} s)")
        shutil.rmtree(workdir / "staged" / student, ignore_errors=True)

    try:
        tasks = []
        for (path, student) in named:  # intake inside the run's try: one unreadable submission is its own row
            staging = workdir / "staged" / student
            try:
                sub = by_student[student].sub = read_submission(path, student, list(course.stubs))
                by_student[student] = prepare(sub, course, staging, student not in unscreened, limits.screen_timeout)
                tasks += tasks_for(by_student[student], course, staging, limits, policy, rng)
            except Exception as err:  # noqa: BLE001 - one odd submission never stops the class
                by_student[student].problems.append(f"could not be prepared for grading ({err!r})")
                by_student[student].pending.clear()
        for graded in by_student.values():
            if not graded.pending:
                finish(graded)
        runner.send(tasks, close=True)
        while len(rows) < len(by_student) and (event := runner.next_event()) is not None:
            try:
                done = on_event(event, by_student)
            except Exception as err:  # noqa: BLE001
                runner.dropped.append(f"{err!r}: {str(event)[:100]}")
                continue
            if done is not None:
                finish(done)
    finally:
        for graded in by_student.values():  # the runner stopped early: nothing is lost, it is reported
            if graded.sub.student not in rows:
                graded.problems.append("the grader's test runner stopped before these tests finished")
                finish(graded)
        ordered = [rows[s] for s in by_student]
        write_atomically(out / "grades.csv", grades_csv(ordered, course, runner.sandbox_column()))
        write_atomically(out / "instructor.md", instructor_report(list(by_student.values()), runner.sandbox_column(),
                                                                  protections(runner, limits)))
    return ordered


def instructor_report(graded: list[Graded], sandbox: str, protections: str = "") -> str:
    """For the instructor only: the run's protections, and each submission whose verdicts could not
    be trusted, with what gave it away (its student sees only that grading could not be trusted)."""
    lines = ["# Grading run: for the instructor", "", f"- sandbox: {sandbox}",
             *([f"- protections: {protections}"] if protections else []),
             f"- decoy tests: {decoys.DECOYS_PER_TEST} per graded test (a blind flip of 3 or more tests is caught "
             f"with probability >= {decoys.guaranteed(3):.1%})", ""]
    flagged = [g for g in graded if g.tampered]
    lines += [f"## Tampered ({len(flagged)})", ""]
    for g in flagged:  # the reasons come from the child, so from the student's code: quoted, as typed
        lines += [f"### {untrusted.markdown_text(g.sub.student, 100)}", "",
                  f"- decoy tests reported passed: {g.decoys_passed}",
                  *(f"- {untrusted.code_span(t, 400)}" for t in g.tampered[:20]), ""]
    return "\n".join(lines if flagged else lines + ["none"]) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="labs grade", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("submissions", nargs="+", type=Path, help="submission folders or .zip files, "
                        "or a folder holding them")
    parser.add_argument("--out", type=Path, required=True, help="where reports and grades.csv go")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="children at once (default: cores)")
    parser.add_argument("--timeout", type=float, default=Limits.timeout,
                        help="wall-clock seconds for one technique module's tests (default: %(default)s)")
    parser.add_argument("--test-timeout", type=float, default=Limits.test_timeout,
                        help="seconds for one test (default: %(default)s)")
    parser.add_argument("--memory-mb", type=int, default=Limits.memory_mb,
                        help="address-space limit of one child in MB (default: %(default)s)")
    parser.add_argument("--submission-timeout", type=float, default=Limits.submission_timeout,
                        help="wall-clock seconds for all the modules of one submission (default: %(default)s)")
    parser.add_argument("--max-timeouts", type=int, default=Limits.max_timeouts,
                        help="stop a module once the tests of this many of its exercises in a row ran out "
                             "of time (default: %(default)s)")
    parser.add_argument("--gradescope-single", action="store_true",
                        help="one submission; write results.json straight into --out (Gradescope)")
    parser.add_argument("--shard", type=parse_shard, default=None, metavar="I/N",
                        help="grade only slice I of N of the submissions (every N-th from the I-th), for "
                             "spreading a class over N machines; join them with labs merge-grades")
    parser.add_argument("--no-sandbox", action="store_true",
                        help="do not use bubblewrap even where it works (resource limits only; "
                             "grades.csv says so)")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        raise ValueError(f"--jobs must be at least 1, got {args.jobs}")
    limits = Limits(timeout=args.timeout, test_timeout=min(args.test_timeout, args.timeout),
                    memory_mb=args.memory_mb, submission_timeout=args.submission_timeout,
                    max_timeouts=args.max_timeouts)
    if args.shard and args.gradescope_single:
        raise ValueError("--shard and --gradescope-single do not go together: Gradescope grades one "
                         "submission per container already")
    if not hasattr(os, "fork"):
        raise ValueError("labs grade needs Linux or macOS: it forks and sets resource limits")
    started = time.monotonic()
    try:
        rows = grade(args.submissions, args.out, limits, args.jobs, args.gradescope_single,
                     progress=lambda line: print(line, file=sys.stderr),
                     sandbox="off" if args.no_sandbox else "auto", shard=args.shard)
    except RuntimeError as err:  # the course's own tests or test runner failed: not the students' fault
        print(f"labs grade: {err}", file=sys.stderr)
        return 1
    print(f"graded {len(rows)} submission(s) in {time.monotonic() - started:.1f} s: {args.out / 'grades.csv'}")
    return 0


def merge_main(argv: list[str] | None = None) -> int:
    """`labs merge-grades`: join the grades.csv of several `labs grade --shard i/n` runs into one."""
    parser = argparse.ArgumentParser(prog="labs merge-grades", description=merge_main.__doc__)
    parser.add_argument("shards", nargs="+", type=Path,
                        help="the --out folders of the shard runs (or the grades.csv in each)")
    parser.add_argument("--out", type=Path, required=True, help="the merged CSV file to write")
    args = parser.parse_args(argv)
    csvs = [p / "grades.csv" if p.is_dir() else p for p in args.shards]
    text = merge_shards(csvs)
    write_atomically(args.out, text)
    print(f"merged {len(csvs)} shard(s), {text.count(chr(10)) - 1} submission(s): {args.out}")
    return 0
