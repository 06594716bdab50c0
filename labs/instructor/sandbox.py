"""The grading fork server: runs graded tests against student code in isolated, limited children.

`labs grade` starts this file as a script, `python -I labs/instructor/sandbox.py --events FD --jobs N`. It
imports torch, transformers, peft and pytest once, then for each task (one technique module of
one submission) builds a fresh grading tree and forks a child, which isolates itself before any
student code loads and runs pytest with a result plugin (labs/instructor/sandbox_child.py):

1. its own session and process group (a timeout kills the whole group),
2. its own operating-system sandbox built by bubblewrap (labs/instructor/boundary.py): only its
   grading tree and the Python environment, read-only; a private /tmp; no /proc; its own PID
   namespace; no network; no privileges. Where bubblewrap cannot work here, the server says so
   once (the `ready` event) and the children run with the limits below only,
3. resource limits (CPU seconds, address space, file size, processes, no core files); where the
   grader is root, the child runs under an unprivileged uid of its own (one per running child,
   UID_BASE and up), with or without bubblewrap: its process limit counts its processes only, and
   when it is gone every process of that uid is killed (wherever it moved) and its files in the
   world-writable folders removed before the uid is given to the next child. Without bubblewrap
   its tree is readable by it alone, and solutions/ and tests/hidden/ are closed to other users,
4. a scrubbed environment (HOME and TMPDIR in its private tmp, offline, one thread),
5. only the standard library, site-packages and its tree on sys.path, so neither an editable
   install nor the instructor's checkout can expose `solutions`,
6. student technique modules loaded with checked builtins (no exec/eval/open, a checked
   __import__, getattr/setattr that refuse dunder names and changing modules or classes).

The plugin streams one signed JSON line per event over an inherited pipe, under a key this
server writes to the child through a second pipe after forking (sandbox_child.Channel). The
server accepts a child's events only in protocol order: its collected tests once, before any
student code ran; then for each test, in collection order, its start and then its one result.
A line that is unsigned, forged, malformed, oversized or out of order is dropped and ends the
child: none of its results count (a child that wrote one is not trusted for the others), its
tests fail with the reason, and the server carries on with the others. Results are forwarded
only once their child is gone, so none can be withdrawn after the grader saw it.
A child's stdout and stderr go to a third pipe and are only kept as text. If a child dies or a
test ignores its timeout, that test fails with the reason and the rest run again in a new child,
within the module's time budget and its submission's. A module stops once tests of `max_timeouts`
of its exercises in a row ran out of time (one looping exercise costs only itself); its other tests
fail with that reason. Tasks arrive as JSON lines on stdin; events leave on the
--events fd.
"""
from __future__ import annotations

import gc
import importlib
import importlib.util
import json
import os
import pwd
import selectors
import stat
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path


def _load(name: str):
    """A sibling module: imported as usual inside the package, by path when this runs as a script."""
    if __package__:
        return importlib.import_module(f"labs.instructor.{name}")
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


CHILD = _load("sandbox_child")
BOUNDARY = _load("boundary")

OUTPUT_HEAD, OUTPUT_TAIL = 4_000, 12_000  # characters of a child's output kept (start and end)
MAX_RESTARTS = 60                          # new children per task after crashes (each one costs a test)
GRACE = 5.0                                # seconds a test may outlive its timeout before its child is killed
UID_BASE = 64000                           # children of a root grader run as UID_BASE, UID_BASE + 1, ...: one
                                           # per running child, so that process limits count per child
UID_BLOCK = 256                            # uids per grading process (pids are at most 2**22: below 2**31)
SCRATCH = ("/tmp", "/var/tmp", "/dev/shm")  # world-writable folders swept of a child uid's files after it
PRELOAD = ("torch", "transformers", "transformers.models.llama.modeling_llama",
           "transformers.models.bert.modeling_bert", "transformers.models.gpt2.modeling_gpt2",
           "transformers.pytorch_utils", "peft", "safetensors.torch", "numpy", "pytest",
           "_pytest.python", "_pytest.main", "_pytest.assertion.rewrite", "_pytest.tmpdir")


# ---------------------------------------------------------------------------------------------
# The server: trees, children, restarts, events
# ---------------------------------------------------------------------------------------------
@dataclass
class Attempt:
    task: dict
    pid: int
    tree: Path
    results: int                   # read end of the result pipe
    output: int                    # read end of the output pipe
    channel: object                # sandbox_child.Channel: opens this child's signed lines
    deadline: float
    started: float
    buffer: bytes = b""
    collected: list[str] | None = None
    reported: set[str] = field(default_factory=set)
    accepted: list[dict] = field(default_factory=list)  # result events, forwarded when the child is gone
    current: str | None = None
    current_since: float = 0.0     # when the current test started
    head: str = ""
    tail: str = ""
    killed: str | None = None      # why we killed it, if we did
    out_of_time: bool = False      # killed because the module's whole budget was spent
    violation: str | None = None   # the result channel carried something the harness did not send
    status: int | None = None      # waitpid status once reaped
    open_fds: int = 2
    uid: int | None = None         # the unprivileged uid it runs as (a root grader), else None
    hung: bool = False             # killed because its test ignored its timeout


class Server:
    def __init__(self, events_fd: int, jobs: int, workdir: Path, sandbox=None, uids: list[int] | None = None):
        self.events_fd, self.jobs, self.workdir = events_fd, max(1, jobs), workdir
        self.sandbox = sandbox     # a boundary.Sandbox, or None: limits only
        self.free_uids = list(uids) if uids else None  # one per running child (a root grader), else None
        self.spent: dict[str, float] = {}  # submission -> seconds its finished children ran
        self.queue: list[dict] = []
        self.running: dict[int, Attempt] = {}
        self.selector = selectors.DefaultSelector()
        self.clean_path = clean_path()
        self.stdin_open, self.stdin_buffer = True, b""
        self.counter = 0

    def emit(self, **event) -> None:
        data = (json.dumps(event) + "\n").encode()
        while data:
            data = data[os.write(self.events_fd, data):]

    def serve(self) -> None:
        os.set_blocking(0, False)
        self.selector.register(0, selectors.EVENT_READ, "stdin")
        while self.stdin_open or self.queue or self.running:
            while self.queue and len(self.running) < self.jobs:
                task = self.queue.pop(0)
                try:
                    self.start(task)
                except (OSError, KeyError, TypeError, ValueError) as err:  # no pipes or processes left, a bad task
                    self.done(task, f"could not be started ({err!r})")
            closing = any(a.open_fds == 0 and a.status is None for a in self.running.values())
            for key, _ in self.selector.select(timeout=0.01 if closing else 0.2):  # reap exits promptly
                try:
                    self.readable(key)
                except Exception as err:  # noqa: BLE001 - one child's mess never stops the class
                    if isinstance(key.data, tuple):
                        self.violate(key.data[1], f"the grader could not read what it sent ({err!r})")
                    else:
                        print(f"grading server: {err!r}", file=sys.stderr)
            self.check_deadlines()
            self.reap()

    def readable(self, key) -> None:
        if key.data == "stdin":
            chunk = os.read(0, 65536)
            if not chunk:
                self.stdin_open = False
                self.selector.unregister(0)
            self.stdin_buffer += chunk
            *lines, self.stdin_buffer = self.stdin_buffer.split(b"\n")
            for line in filter(bytes.strip, lines):
                try:
                    task = json.loads(line)
                    if not isinstance(task, dict) or "id" not in task:
                        raise ValueError("not a task")
                except ValueError as err:
                    print(f"grading server: ignored a task line ({err}): {line[:200]!r}", file=sys.stderr)
                    continue
                self.queue.append(task)
            return
        kind, attempt = key.data
        chunk = os.read(key.fd, 65536)
        if not chunk:
            self.selector.unregister(key.fd)
            os.close(key.fd)
            attempt.open_fds -= 1
        elif kind == "results":
            self.on_results(attempt, chunk)
        else:
            self.on_output(attempt, chunk.decode(errors="replace"))

    def on_output(self, attempt: Attempt, text: str) -> None:
        if len(attempt.head) < OUTPUT_HEAD:
            take = OUTPUT_HEAD - len(attempt.head)
            attempt.head, text = attempt.head + text[:take], text[take:]
        attempt.tail = (attempt.tail + text)[-OUTPUT_TAIL:]

    def on_results(self, attempt: Attempt, chunk: bytes) -> None:
        """Open each signed line; anything else ends the child (see the module's docstring)."""
        if attempt.violation:
            return  # already ended: what it still writes is dropped unread
        attempt.buffer += chunk
        *lines, attempt.buffer = attempt.buffer.split(b"\n")
        if len(attempt.buffer) > CHILD.MAX_LINE or any(len(line) > CHILD.MAX_LINE for line in lines):
            return self.violate(attempt, f"a line of over {CHILD.MAX_LINE:,} bytes arrived on the result channel")
        for line in lines:
            try:
                event = attempt.channel.open(line)
            except ValueError as err:
                return self.violate(attempt, f"a line on the result channel was not sent by the grading "
                                             f"harness and was dropped: {err} ({line[:60]!r})")
            problem = self.on_event(attempt, event)
            if problem:
                return self.violate(attempt, f"the result channel carried an unexpected event: {problem}")

    def on_event(self, attempt: Attempt, event: dict) -> str | None:
        """Take one genuine event in protocol order; return what is wrong with it, if anything."""
        kind, task_id, collect_only = event.get("event"), attempt.task["id"], bool(attempt.task.get("collect_only"))
        if kind == "collect_error" and attempt.collected is None:
            if collect_only:
                self.emit(task=task_id, event="collect_error", where=str(event.get("where")),
                          message=str(event.get("message", ""))[-2000:])
            return None
        if kind in ("items", "collected"):
            if attempt.collected is not None or (kind == "items") != collect_only:
                return f"{kind!r} {'again' if attempt.collected is not None else 'in this kind of run'}"
            items = event.get("items") if kind == "items" else [{"nodeid": n} for n in event.get("nodeids", ())]
            nodeids = [i.get("nodeid") if isinstance(i, dict) else None for i in items or ()]
            if not all(isinstance(n, str) for n in nodeids) or len(set(nodeids)) != len(nodeids):
                return "a malformed list of collected tests"
            attempt.collected = nodeids
            if collect_only:
                self.emit(task=task_id, event="items", items=items)
            return None
        if attempt.collected is None:
            return f"{kind!r} before the tests were collected"
        position = len(attempt.reported)
        expected = attempt.collected[position] if position < len(attempt.collected) else None
        nodeid = event.get("nodeid")
        if kind == "start":
            if attempt.current is not None or nodeid != expected:
                return f"the start of {nodeid!r} out of order (expected {expected!r})"
            attempt.current, attempt.current_since = nodeid, time.monotonic()
            return None
        if kind == "result":
            if attempt.current is None or nodeid != attempt.current:
                return f"a result for {nodeid!r}, which had not started"
            attempt.reported.add(nodeid)
            attempt.current = None
            outcome = event.get("outcome") if event.get("outcome") in ("passed", "skipped") else "failed"
            attempt.accepted.append({"task": task_id, "event": "result", "nodeid": nodeid, "outcome": outcome,
                                     "error": str(event.get("error") or "")[:80] or None,
                                     "message": str(event.get("message", ""))[:300],
                                     "tampered": str(event.get("tampered") or "")[:300] or None})
            if self.count_timeout(attempt, nodeid, event.get("error") == "TestTimeout"):
                _kill_group(attempt.pid)
            return None
        return f"an unknown event {str(kind)[:40]!r}"

    def count_timeout(self, attempt: Attempt, nodeid: str, timed_out: bool) -> bool:
        """Keep the run of tests in a row that ran out of time, counted in exercises (a test, its
        decoy copies and the other tests of its exercise count once: one endless loop costs only its
        own exercise); True when it reaches the limit: the module stops, its other tests fail."""
        task = attempt.task
        if not timed_out:
            task["_streak"] = []
            return False
        sources = task.setdefault("_sources", {n: s for s, n, _ in task.get("plan") or ()})
        source = sources.get(nodeid, nodeid)
        exercise = (task.get("exercise_of") or {}).get(source, source)
        streak = task.setdefault("_streak", [])
        if exercise not in streak:
            streak.append(exercise)
        limit = int(task["limits"].get("max_timeouts", 3))
        if len(streak) < limit:
            return False
        attempt.killed = (f"was stopped: tests of {limit} exercises in a row ran out of time (endless loops?), "
                          "so the rest of this module was not run")
        attempt.out_of_time = True
        return True

    def submission_seconds(self, task: dict, now: float) -> float:
        """Seconds spent so far on the submission this task belongs to: its finished children and
        those still running."""
        sub = task.get("submission")
        running = sum(now - a.started for a in self.running.values() if a.task.get("submission") == sub)
        return self.spent.get(sub, 0.0) + running if sub is not None else 0.0

    def violate(self, attempt: Attempt, reason: str) -> None:
        """End a child whose result channel was tampered with: no more of its results count."""
        if attempt.violation is None:
            attempt.violation = reason
            attempt.buffer = b""
            if attempt.status is None:
                _kill_group(attempt.pid)

    def check_deadlines(self) -> None:
        """Kill a child past its module's budget, or one whose test ignored its timeout."""
        now = time.monotonic()
        for attempt in self.running.values():
            limits = attempt.task["limits"]
            if attempt.killed is not None or attempt.status is not None or attempt.violation:
                continue
            budget = float(limits.get("submission_timeout", float("inf")))
            if now > attempt.deadline:
                attempt.killed = f"ran out of time ({limits['timeout']:g} s for this module)"
                attempt.out_of_time = True
            elif self.submission_seconds(attempt.task, now) > budget:
                attempt.killed = f"ran out of time ({budget:g} s for all the modules of this submission)"
                attempt.out_of_time = True
            elif attempt.current and now > attempt.current_since + _hard_limit(limits):
                attempt.killed = f"was stopped: the test ran past {limits['test_timeout']:g} s and ignored its timeout"
                attempt.hung = True
            else:
                continue
            _kill_group(attempt.pid)

    def reap(self) -> None:
        for pid, attempt in list(self.running.items()):
            if attempt.status is None and os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT):
                _kill_group(pid)  # anything left in its group; the unreaped child keeps the id from reuse
                attempt.status = os.waitpid(pid, 0)[1]
            if attempt.status is not None and attempt.open_fds == 0:
                del self.running[pid]
                self.finish(attempt)
            elif attempt.status is not None and time.monotonic() > attempt.deadline + 10:
                for fd in (attempt.results, attempt.output):  # a grandchild holds the pipes open
                    try:
                        self.selector.unregister(fd)
                        os.close(fd)
                    except (KeyError, ValueError, OSError):
                        pass
                attempt.open_fds = 0

    def start(self, task: dict) -> None:
        self.counter += 1
        now = time.monotonic()
        left = float(task["limits"].get("submission_timeout", float("inf"))) - self.submission_seconds(task, now)
        if left <= 0:
            return self.done(task, f"was not run: the time for this submission's modules "
                                   f"({float(task['limits']['submission_timeout']):g} s) was spent")
        uid = self.free_uids.pop(0) if self.free_uids else None
        try:
            tree = build_tree(task, self.workdir / f"run-{self.counter}", self.sandbox, uid)
        except (OSError, KeyError, TypeError) as err:
            self.release(uid)
            return self.done(task, f"could not be prepared ({err})")
        results_r, results_w = os.pipe()
        output_r, output_w = os.pipe()
        key_r, key_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            self.running.clear()  # other children's state is none of this one's business
            CHILD.run_child(task, tree, {"results": results_w, "output": output_w, "key": key_r},
                            self.clean_path, self.sandbox, uid)
        for fd in (results_w, output_w, key_r):
            os.close(fd)
        key = os.urandom(CHILD.KEY_BYTES)  # made after the fork: the child's memory never held it
        os.write(key_w, key)
        os.close(key_w)
        now = time.monotonic()
        budget = float(task["limits"]["timeout"]) - task.get("_seconds", 0.0)  # --timeout covers all restarts
        attempt = Attempt(task, pid, tree, results_r, output_r, CHILD.Channel(key), now + max(min(budget, left), 1.0),
                          now, uid=uid)
        del key
        self.selector.register(results_r, selectors.EVENT_READ, ("results", attempt))
        self.selector.register(output_r, selectors.EVENT_READ, ("output", attempt))
        self.running[pid] = attempt

    def finish(self, attempt: Attempt) -> None:
        """A child is gone: report what it left unfinished, or run the rest in a new child."""
        task, reason = attempt.task, attempt.violation or attempt.killed or _exit_reason(attempt.status)
        self.release(attempt.uid)
        shutil.rmtree(attempt.tree, ignore_errors=True)
        task["_output"] = task.get("_output", "") + _output_text(attempt)
        task["_seconds"] = task.get("_seconds", 0.0) + time.monotonic() - attempt.started
        if task.get("submission") is not None:
            self.spent[task["submission"]] = self.spent.get(task["submission"], 0.0) + time.monotonic() - attempt.started
        remaining = [n for n in attempt.collected or () if n not in attempt.reported]
        if attempt.violation:  # not one of its results counts
            for nodeid in attempt.collected or ():
                self.emit(task=task["id"], event="result", nodeid=nodeid, outcome="failed", error="ResultChannel",
                          message=attempt.violation[:300])
            return self.done(task, attempt.violation)
        for result in attempt.accepted:
            self.emit(**result)
        if not remaining or task.get("collect_only"):
            reason = None if attempt.collected is not None else reason
            return self.done(task, reason)
        if attempt.current is not None:
            self.emit(task=task["id"], event="result", nodeid=attempt.current, outcome="failed", error="Crash",
                      message=f"this test's process {reason}")
            remaining.remove(attempt.current)
            if attempt.hung and self.count_timeout(attempt, attempt.current, True):
                reason = attempt.killed
        made_progress = attempt.current is not None or attempt.reported
        in_time = task["_seconds"] < float(task["limits"]["timeout"]) and not attempt.out_of_time
        if remaining and made_progress and in_time and task.get("restarts", 0) < MAX_RESTARTS:
            retry = {**task, "restarts": task.get("restarts", 0) + 1,
                     "deselect": sorted(set(task.get("deselect", ())) | set(attempt.collected) - set(remaining))}
            self.queue.insert(0, retry)
            return
        for nodeid in remaining:
            self.emit(task=task["id"], event="result", nodeid=nodeid, outcome="failed", error="DidNotFinish",
                      message=f"did not finish: the test process {reason}")
        self.done(task, reason)

    def done(self, task: dict, reason: str | None) -> None:
        self.emit(task=task["id"], event="done", reason=reason, output=task.get("_output", ""),
                  seconds=round(task.get("_seconds", 0.0), 3), attempts=task.get("restarts", 0) + 1)

    def release(self, uid: int | None) -> None:
        """A child's uid back to the pool, once nothing of it is left: its processes (a fork bomb's
        too, whatever group or session they moved to) and its files in the world-writable folders."""
        if uid is None:
            return
        sweep(uid)
        self.free_uids.append(uid)

    def kill_all(self) -> None:
        for pid in list(self.running):
            _kill_group(pid)


def _hard_limit(limits: dict) -> float:
    """How long (wall clock) a test may run before its child is killed: its own wall-clock backstop
    (the child counts a test's time in CPU seconds, see sandbox_child), plus time to honour it."""
    test_timeout = float(limits["test_timeout"])
    return float(limits.get("wall_factor", 1.0)) * test_timeout + min(GRACE, test_timeout)


def child_uids(jobs: int) -> list[int]:
    """One unprivileged uid per running child, none of them a user of this machine, in a block of
    UID_BLOCK that is this grading process's own (it starts at its pid's block): two graders running
    at once (a test suite's workers, two classes) never share a uid, so one's sweep of its children
    cannot kill the other's."""
    found, uid = [], UID_BASE + os.getpid() * UID_BLOCK
    while len(found) < jobs:
        try:
            pwd.getpwuid(uid)
        except KeyError:
            found.append(uid)
        uid += 1
    return found


def is_child_uid(uid: int | None) -> bool:
    """Whether `uid` is one a root grader gives its children (any grading process's block)."""
    return uid is not None and UID_BASE <= uid < UID_BASE + (1 << 22) * UID_BLOCK


def sweep(uid: int) -> None:
    """Kill every process of `uid` and remove its files from the world-writable folders. The kill
    is kill(-1) sent as that uid (from a short-lived child that takes it): it reaches each of its
    processes at once, wherever they moved, and nothing else."""
    for _ in range(2):  # a second pass for any process forked while the first was sent
        pid = os.fork()
        if pid == 0:
            try:
                os.setresgid(uid, uid, uid)
                os.setresuid(uid, uid, uid)
                os.kill(-1, signal.SIGKILL)
            except BaseException:  # noqa: BLE001 - nothing of that uid was left to signal
                pass
            os._exit(0)
        os.waitpid(pid, 0)
    for folder in SCRATCH:
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.stat(follow_symlinks=False).st_uid != uid:
                    continue
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    os.unlink(entry.path)
            except OSError:
                pass


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _exit_reason(status: int | None) -> str:
    if status is None:
        return "vanished"
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig == signal.SIGXCPU:
            return "ran past its CPU time limit"
        if sig == signal.SIGKILL:
            return "was killed (SIGKILL: a CPU or memory limit)"
        return f"crashed ({signal.Signals(sig).name})"
    code = os.WEXITSTATUS(status)
    return {0: "exited early", 1: "exited early", 2: "was interrupted", 70: "failed inside the grading harness",
            BOUNDARY.ENTER_FAILED: "could not enter its sandbox (see output.txt)"}.get(code, f"exited with status {code}")


def _output_text(attempt: Attempt) -> str:
    cut = "\n[... output cut ...]\n" if len(attempt.head) >= OUTPUT_HEAD and attempt.tail else ""
    return attempt.head + cut + attempt.tail


def build_tree(task: dict, tree: Path, sandbox=None, uid: int | None = None) -> Path:
    """A fresh grading tree: instructor infrastructure and tests, the submission's technique modules.
    uid: the child's own uid, where it is not sandboxed: the tree is readable by it alone, and
    only its tmp/ and tests/hidden/ (whose files it deletes once collected) are its own."""
    base, staged = Path(task["base"]), Path(task["labs"])
    (tree / "labs").mkdir(parents=True)
    for src in (base / "labs").glob("*.py"):  # top level only: labs/instructor/ never reaches a child
        shutil.copyfile(src, tree / "labs" / src.name)
    for name in task["policy"]["techniques"]:  # the submission's technique modules, nothing else
        if (staged / f"{name}.py").is_file():
            shutil.copyfile(staged / f"{name}.py", tree / "labs" / f"{name}.py")
    # conftest, and the helper modules graded tests import (tests/clinic_runs.py): test files only as asked
    helpers = [f"tests/{p.name}" for p in (base / "tests").glob("*.py") if not p.name.startswith("test_")]
    extras = [*helpers, "tests/hidden/conftest.py", "tests/hidden/__init__.py"]
    for rel in [*task["tests"], *extras]:
        if (base / rel).is_file():
            (tree / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(base / rel, tree / rel)
    shutil.copyfile(base / "pyproject.toml", tree / "pyproject.toml")
    if sandbox is not None:  # data/ is mounted read-only in the sandbox; only tests/hidden may change
        sandbox.prepare_tree(tree, CHILD.hidden_folders(tree))
    else:
        if (base / "data").is_dir():
            (tree / "data").symlink_to(base / "data")
        (tree / "tmp").mkdir()
        if uid is not None:
            for folder in (tree / "tmp", tree / "tests" / "hidden"):
                folder.mkdir(parents=True, exist_ok=True)
                os.chown(folder, uid, uid)
                os.chmod(folder, 0o700)
            os.chown(tree, 0, uid)   # its group is the child's: it may read the tree, not change it
            os.chmod(tree, 0o750)
    return tree


def clean_path() -> list[str]:
    """sys.path for the children: the standard library and site-packages; no editable finder, no
    folder of the course itself (this script's folder, labs/instructor/, is on sys.path here)."""
    course = Path(__file__).resolve().parents[2]
    prefix = Path(sys.prefix).resolve()
    keep = []
    for entry in sys.path:
        path = Path(entry).resolve() if entry else None
        if path is None or not path.exists() or CHILD.is_editable(entry):
            continue
        if (path == course or course in path.parents) and not (path == prefix or prefix in path.parents):
            continue
        keep.append(entry)
    return keep


def protect_course(course: Path) -> list[str]:
    """Without a sandbox, children see the host's files with their own uid's rights: close the
    instructor's secrets (solutions/, tests/hidden/) to other users. Returns what was changed."""
    changed = []
    for folder in (course / "solutions", course / "tests" / "hidden"):
        if folder.is_dir() and folder.stat().st_mode & 0o007:
            os.chmod(folder, stat.S_IMODE(folder.stat().st_mode) & ~0o007)
            changed.append(str(folder))
    return changed


def unreadable(paths: list[str], uid: int) -> list[str]:
    """Which of `paths` a process of `uid` cannot list (checked in a child that takes the uid)."""
    read_r, read_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_r)
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            bad = []
            for path in paths:
                try:
                    os.listdir(path)
                except OSError:
                    bad.append(path)
            os.write(read_w, json.dumps(bad).encode())
        finally:
            os._exit(0)
    os.close(read_w)
    with os.fdopen(read_r, "rb") as pipe:
        said = pipe.read()
    os.waitpid(pid, 0)
    return json.loads(said) if said else list(paths)


def choose_uids(jobs: int, sandbox, course: Path) -> tuple[list[int] | None, str, list[str]]:
    """(the children's uids or None, what to tell the instructor, the folders of the Python
    environment the children cannot read). A root grader runs each child under its own
    unprivileged uid, with or without bubblewrap; other graders cannot."""
    if os.geteuid() != 0:
        return None, "uid drop: no (the grader is not root; children keep its uid)", []
    if sandbox is not None and sandbox.flavour != "root":
        return None, "uid drop: no", []
    bad: list[str] = []
    uids = child_uids(jobs)
    said = f"uid drop: yes (uids {uids[0]}-{uids[-1]}, one per running child)"
    if sandbox is None:
        closed = protect_course(course)
        if closed:
            said += f"; made unreadable to other users: {', '.join(closed)}"
        bad = unreadable([p for p in [*clean_path(), str(course / "data")] if os.path.isdir(p)], uids[0])
        if bad:
            said += (f"; {len(bad)} folder(s) of the Python environment or data/ unreadable to the children, "
                     f"e.g. {bad[0]} (the standard library is loaded before they start)")
    return uids, said, bad


def choose_sandbox(mode: str, course: Path, workdir: Path):
    """(the boundary.Sandbox children will use or None, and what to tell the instructor)."""
    if mode == "off":
        return None, "turned off (--no-sandbox): resource limits only"
    sandbox = BOUNDARY.Sandbox.for_this_machine(clean_path(), course)
    problem = BOUNDARY.probe(sandbox, workdir, course / "labs")
    if problem:
        return None, problem
    return sandbox, f"{BOUNDARY.version(sandbox.bwrap)} ({sandbox.flavour} flavour)"


def _preload(stdlib: bool = False) -> None:
    """Import the heavy libraries once, here, so every forked child starts with them loaded.
    stdlib: the whole standard library too, for children whose uid cannot read it from disk."""
    sys.meta_path[:] = [f for f in sys.meta_path if not CHILD.is_editable(f)]
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - a missing optional library only costs time later
            pass
    if stdlib:
        _preload_stdlib()
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)
    gc.freeze()  # what is loaded now is permanent: children's collections skip it (and pages stay shared)


STDLIB_SKIPPED = ("antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "ensurepip", "venv",
                  "lib2to3", "pydoc_data", "test", "__main__", "__phello__", "xxlimited", "xxsubtype")


def _preload_stdlib() -> None:
    """Every module of the standard library, its packages' submodules too (a few seconds, once)."""
    import pkgutil
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in sorted(sys.stdlib_module_names):
            if name.split(".")[0] in STDLIB_SKIPPED:
                continue
            try:
                module = importlib.import_module(name)
                for info in pkgutil.walk_packages(getattr(module, "__path__", None) or [], f"{name}.",
                                                  onerror=lambda _: None):
                    if not any(part in STDLIB_SKIPPED or part == "tests" for part in info.name.split(".")):
                        try:
                            importlib.import_module(info.name)
                        except BaseException:  # noqa: BLE001 - a platform's missing part
                            pass
            except BaseException:  # noqa: BLE001 - e.g. a module for another platform
                pass


def main(argv: list[str] | None = None) -> int:
    import argparse
    parser = argparse.ArgumentParser(description="the grading fork server (started by labs grade)")
    parser.add_argument("--events", type=int, required=True, help="file descriptor for events")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--course", type=Path, required=True, help="the instructor's checkout")
    parser.add_argument("--sandbox", choices=("auto", "off"), default="auto",
                        help="auto: bubblewrap where it works here, else limits only")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    BOUNDARY.make_undumpable()  # children of the same user cannot read this process's descriptors
    sandbox, said = choose_sandbox(args.sandbox, args.course.resolve(), args.workdir)
    uids, uid_said, unreadable_here = choose_uids(args.jobs, sandbox, args.course.resolve())
    _preload(stdlib=bool(unreadable_here))
    if uids:  # the children reach their trees under a folder they may cross but not list
        for folder in (args.workdir.parent, args.workdir):
            os.chmod(folder, 0o711)
    server = Server(args.events, args.jobs, args.workdir, sandbox, uids)
    server.emit(event="ready", sandbox=sandbox is not None, said=said, uid=uid_said)
    try:
        server.serve()
    except BrokenPipeError:
        return 1
    finally:
        server.kill_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
