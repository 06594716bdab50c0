"""The grading fork server: runs graded tests against student code in isolated, limited children.

`labs grade` starts this file as a script, `python -I labs/instructor/sandbox.py --events FD --jobs N`. It
imports torch, transformers, peft and pytest once, then for each task (one technique module of
one submission) builds a fresh grading tree and forks a child, which isolates itself before any
student code loads and runs pytest with a result plugin (labs/instructor/sandbox_child.py):

1. its own session and process group (a timeout kills the whole group),
2. resource limits (CPU seconds, address space, file size, processes, no core files),
3. a scrubbed environment (HOME and TMPDIR inside its tree, offline, one thread),
4. only the standard library, site-packages and its tree on sys.path, so neither an editable
   install nor the instructor's checkout can expose `solutions`,
5. student technique modules loaded with checked builtins (no exec/eval/open, a checked
   __import__, getattr/setattr that refuse dunder names and changing modules or classes).

The plugin streams one JSON line per test over an inherited pipe; this server accepts only tests
that were collected before student code ran, each once, and forwards them. A child's stdout and
stderr go to a second pipe and are only kept as text. If a child dies or a test ignores its
timeout, that test fails with the reason and the rest run again in a new child, within the
module's time budget. Tasks arrive as JSON lines on stdin; events leave on the --events fd.
"""
from __future__ import annotations

import gc
import importlib
import importlib.util
import json
import os
import selectors
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path


def _load_child_module():
    """labs/instructor/sandbox_child.py: imported as usual inside the package, by path when run as a script."""
    if __package__:
        from labs.instructor import sandbox_child
        return sandbox_child
    spec = importlib.util.spec_from_file_location("sandbox_child", Path(__file__).with_name("sandbox_child.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


CHILD = _load_child_module()

OUTPUT_HEAD, OUTPUT_TAIL = 4_000, 12_000  # characters of a child's output kept (start and end)
MAX_RESTARTS = 60                          # new children per task after crashes (each one costs a test)
GRACE = 5.0                                # seconds a test may outlive its timeout before its child is killed
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
    deadline: float
    started: float
    buffer: bytes = b""
    collected: list[str] | None = None
    reported: set[str] = field(default_factory=set)
    current: str | None = None
    current_since: float = 0.0     # when the current test started
    head: str = ""
    tail: str = ""
    killed: str | None = None      # why we killed it, if we did
    out_of_time: bool = False      # killed because the module's whole budget was spent
    status: int | None = None      # waitpid status once reaped
    open_fds: int = 2


class Server:
    def __init__(self, events_fd: int, jobs: int, workdir: Path):
        self.events_fd, self.jobs, self.workdir = events_fd, max(1, jobs), workdir
        self.queue: list[dict] = []
        self.running: dict[int, Attempt] = {}
        self.selector = selectors.DefaultSelector()
        self.clean_path = [p for p in sys.path if p and Path(p).exists() and not CHILD.is_editable(p)]
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
                self.start(self.queue.pop(0))
            closing = any(a.open_fds == 0 and a.status is None for a in self.running.values())
            for key, _ in self.selector.select(timeout=0.01 if closing else 0.2):  # reap exits promptly
                self.readable(key)
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
            self.queue += [json.loads(line) for line in lines if line.strip()]
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
        attempt.buffer += chunk
        *lines, attempt.buffer = attempt.buffer.split(b"\n")
        for line in lines:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            self.on_event(attempt, event)

    def on_event(self, attempt: Attempt, event: dict) -> None:
        kind, task_id = event.get("event"), attempt.task["id"]
        if kind == "collect_error" and attempt.task.get("collect_only"):
            self.emit(task=task_id, event="collect_error", where=str(event.get("where")),
                      message=str(event.get("message", ""))[-2000:])
        elif kind == "items" and attempt.collected is None and attempt.task.get("collect_only"):
            attempt.collected = [i["nodeid"] for i in event.get("items", [])]
            self.emit(task=task_id, event="items", items=event.get("items", []))
        elif kind == "collected" and attempt.collected is None:
            attempt.collected = [str(n) for n in event.get("nodeids", [])]
        elif kind == "start" and attempt.collected is not None and event.get("nodeid") in attempt.collected:
            attempt.current, attempt.current_since = event["nodeid"], time.monotonic()
        elif (kind == "result" and attempt.collected is not None and event.get("nodeid") in attempt.collected
              and event["nodeid"] not in attempt.reported):
            attempt.reported.add(event["nodeid"])
            attempt.current = None
            outcome = event.get("outcome") if event.get("outcome") in ("passed", "skipped") else "failed"
            self.emit(task=task_id, event="result", nodeid=event["nodeid"], outcome=outcome,
                      error=str(event.get("error") or "")[:80] or None, message=str(event.get("message", ""))[:300])

    def check_deadlines(self) -> None:
        """Kill a child past its module's budget, or one whose test ignored its timeout."""
        now = time.monotonic()
        for attempt in self.running.values():
            limits = attempt.task["limits"]
            if attempt.killed is not None or attempt.status is not None:
                continue
            if now > attempt.deadline:
                attempt.killed = f"ran out of time ({limits['timeout']:g} s for this module)"
                attempt.out_of_time = True
            elif attempt.current and now > attempt.current_since + _hard_limit(float(limits["test_timeout"])):
                attempt.killed = f"was stopped: the test ran past {limits['test_timeout']:g} s and ignored its timeout"
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
        tree = build_tree(task, self.workdir / f"run-{self.counter}")
        results_r, results_w = os.pipe()
        output_r, output_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            CHILD.run_child(task, tree, results_w, output_w, self.clean_path)
        os.close(results_w)
        os.close(output_w)
        now = time.monotonic()
        budget = float(task["limits"]["timeout"]) - task.get("_seconds", 0.0)  # --timeout covers all restarts
        attempt = Attempt(task, pid, tree, results_r, output_r, now + max(budget, 1.0), now)
        self.selector.register(results_r, selectors.EVENT_READ, ("results", attempt))
        self.selector.register(output_r, selectors.EVENT_READ, ("output", attempt))
        self.running[pid] = attempt

    def finish(self, attempt: Attempt) -> None:
        """A child is gone: report what it left unfinished, or run the rest in a new child."""
        task, reason = attempt.task, attempt.killed or _exit_reason(attempt.status)
        shutil.rmtree(attempt.tree, ignore_errors=True)
        task["_output"] = task.get("_output", "") + _output_text(attempt)
        task["_seconds"] = task.get("_seconds", 0.0) + time.monotonic() - attempt.started
        remaining = [n for n in attempt.collected or () if n not in attempt.reported]
        if not remaining or task.get("collect_only"):
            reason = None if attempt.collected is not None else reason
            return self.done(task, reason)
        if attempt.current is not None:
            self.emit(task=task["id"], event="result", nodeid=attempt.current, outcome="failed", error="Crash",
                      message=f"this test's process {reason}")
            remaining.remove(attempt.current)
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

    def kill_all(self) -> None:
        for pid in list(self.running):
            _kill_group(pid)


def _hard_limit(test_timeout: float) -> float:
    """How long a test may run before its child is killed: its timeout, plus time to honour it."""
    return test_timeout + min(GRACE, test_timeout)


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
    return {0: "exited early", 1: "exited early", 2: "was interrupted",
            70: "failed inside the grading harness"}.get(code, f"exited with status {code}")


def _output_text(attempt: Attempt) -> str:
    cut = "\n[... output cut ...]\n" if len(attempt.head) >= OUTPUT_HEAD and attempt.tail else ""
    return attempt.head + cut + attempt.tail


def build_tree(task: dict, tree: Path) -> Path:
    """A fresh grading tree: instructor infrastructure and tests, the submission's technique modules."""
    base, staged = Path(task["base"]), Path(task["labs"])
    (tree / "labs").mkdir(parents=True)
    for src in (base / "labs").glob("*.py"):  # top level only: labs/instructor/ never reaches a child
        shutil.copyfile(src, tree / "labs" / src.name)
    for name in task["policy"]["techniques"]:  # the submission's technique modules, nothing else
        if (staged / f"{name}.py").is_file():
            shutil.copyfile(staged / f"{name}.py", tree / "labs" / f"{name}.py")
    extras = ["tests/conftest.py", "tests/__init__.py", "tests/hidden/conftest.py", "tests/hidden/__init__.py"]
    for rel in [*task["tests"], *extras]:
        if (base / rel).is_file():
            (tree / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(base / rel, tree / rel)
    shutil.copyfile(base / "pyproject.toml", tree / "pyproject.toml")
    if (base / "data").is_dir():
        (tree / "data").symlink_to(base / "data")
    for folder in ("tmp", "home"):
        (tree / folder).mkdir()
    return tree


def _preload() -> None:
    """Import the heavy libraries once, here, so every forked child starts with them loaded."""
    sys.meta_path[:] = [f for f in sys.meta_path if not CHILD.is_editable(f)]
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - a missing optional library only costs time later
            pass
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)
    gc.freeze()  # what is loaded now is permanent: children's collections skip it (and pages stay shared)


def main(argv: list[str] | None = None) -> int:
    import argparse
    parser = argparse.ArgumentParser(description="the grading fork server (started by labs grade)")
    parser.add_argument("--events", type=int, required=True, help="file descriptor for events")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--workdir", type=Path, required=True)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    _preload()
    server = Server(args.events, args.jobs, args.workdir)
    server.emit(event="ready")
    try:
        server.serve()
    except BrokenPipeError:
        return 1
    finally:
        server.kill_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
