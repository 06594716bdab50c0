"""Inside a grading child: isolation set up before pytest starts, and the result plugin.

labs/instructor/sandbox.py (the fork server) forks a child per task and calls `run_child` in it. Before any
student code is imported, the child leaves the server's process group, moves into its own
sandbox (labs/instructor/boundary.py, where bubblewrap works), reads its result-channel key from
a pipe, takes its resource limits, scrubs its environment, narrows sys.path to the standard
library, site-packages and its own grading tree (no editable finders, `solutions` blocked), and
installs a loader that runs the student's technique modules with checked builtins. Then pytest
runs with `ResultPlugin`, which reports each test over an authenticated pipe (`Channel`),
deletes the hidden test files once collected, bounds each test's time, and fails any test during
which a library function was replaced or a watched class gained an attribute.

This file imports nothing from labs: the fork server runs outside the package and loads it by path.
"""
from __future__ import annotations

import builtins
import hashlib
import hmac
import json
import os
import resource
import signal
import sys
import time
import traceback
from importlib.machinery import SourceFileLoader
from importlib.util import spec_from_file_location
from pathlib import Path
from types import FunctionType, ModuleType

import pytest

WATCHED_MODULES = ("builtins", "math", "torch", "torch.nn", "torch.nn.functional", "torch.nn.init",
                   "torch.testing", "torch.linalg", "torch.autograd", "torch.nn.modules.module",
                   "transformers", "dataclasses", "functools", "itertools", "collections", "copy",
                   "pytest", "_pytest.python_api", "_pytest.outcomes")


class TestTimeout(BaseException):
    """Raised into a test that ran past its time (BaseException: `except Exception` cannot eat it)."""


class Interrupted(Exception):
    """A KeyboardInterrupt raised by the code under test: a failure of that test, not the end of the run."""


KEY_BYTES = 32
MAX_LINE = 2**20  # bytes in one line of the result channel; a longer one is a protocol violation


class Channel:
    """One end of a result channel: each line is `<HMAC-SHA256 hex> <JSON>`, the JSON numbered in
    order, under a key only this child and the server know. The child seals, the server opens;
    a line written by anyone else (student code that found the descriptor) does not open."""

    def __init__(self, key: bytes):
        if len(key) != KEY_BYTES:
            raise ValueError(f"a channel key has {KEY_BYTES} bytes, got {len(key)}")
        self._mac = hmac.new(key, digestmod=hashlib.sha256)  # keyed once; the raw key is not kept
        self.seq = 0

    def seal(self, event: dict) -> bytes:
        body = json.dumps({**event, "seq": self.seq}, separators=(",", ":")).encode()
        self.seq += 1
        return self._digest(body) + b" " + body + b"\n"

    def open(self, line: bytes) -> dict:
        """The event in one line (without its newline); ValueError says why it is not genuine."""
        digest, _, body = line.partition(b" ")
        if len(digest) != 64 or not hmac.compare_digest(digest, self._digest(body)):
            raise ValueError("its signature is wrong" if len(digest) == 64 else "it is not signed")
        event = json.loads(body)
        if not isinstance(event, dict) or event.get("seq") != self.seq:
            raise ValueError(f"it is out of sequence (expected number {self.seq})")
        self.seq += 1
        return event

    def _digest(self, body: bytes) -> bytes:
        mac = self._mac.copy()
        mac.update(body)
        return mac.hexdigest().encode()


def read_key(fd: int) -> bytes:
    """The channel key, read from the pipe the server wrote it to after forking; the pipe is closed."""
    key = b""
    while len(key) < KEY_BYTES:
        chunk = os.read(fd, KEY_BYTES - len(key))
        if not chunk:
            raise OSError("the server closed the key pipe before sending the key")
        key += chunk
    os.close(fd)
    return key


class ResultPlugin:
    """Reports collection and each test's outcome over the result channel, and guards the run.

    A test is reported passed only on positive evidence: a passing call phase, recorded by this
    plugin under the test's fresh secret, with setup and teardown clean. Before each result the
    plugin checks that it, its hooks and its tables are still the ones installed; any difference
    is reported as tampering. These checks run beside the student's code and could be bypassed:
    the decoy tests (labs/instructor/decoys.py, judged by the grader) make that detectable."""

    HOOKS = ("pytest_collection_modifyitems", "pytest_collectreport", "pytest_collection_finish",
             "pytest_runtest_logstart", "pytest_runtest_setup", "pytest_runtest_call",
             "pytest_runtest_teardown", "pytest_runtest_makereport", "pytest_runtest_logfinish")

    def __init__(self, fd: int, channel: Channel, task: dict):
        self.fd, self.channel, self.task = fd, channel, task
        self.outcomes: dict[str, tuple[bytes, str, str | None, str]] = {}  # nodeid -> (secret, outcome, error, message)
        self.evidence: dict[str, bytes] = {}  # nodeid -> the secret of the test whose call phase passed
        self.shifts: dict[str, int] = {}      # nodeid -> 0, or a decoy's secret shift of its expected value
        self.baseline: dict = {}
        self.item_deadline = 0.0   # the test's end, in CPU seconds of this process (time.process_time)
        self.item_backstop = 0.0   # and its wall-clock backstop (time.monotonic), for a test that waits
        self.secret = b""
        self.config = None
        self.installed = (self.outcomes, self.evidence, self.shifts, channel, self.send)
        self.methods = {name: getattr(type(self), name) for name in self.HOOKS}

    def send(self, **event) -> None:
        data = self.channel.seal(event)
        while data:
            data = data[os.write(self.fd, data):]

    def pytest_configure(self, config):
        self.config = config

    def pytest_collection_modifyitems(self, config, items):
        keep_ids, skip = set(self.task["exercises"]), set(self.task.get("deselect", ()))
        kept = [i for i in items if _exercise(i) and _exercise(i)[0] in keep_ids]
        planned = self.task.pop("plan", None)  # not kept in the task: the shifts live in self.shifts only
        if planned is not None:
            kept = self._planned(kept, planned)
        kept = [i for i in kept if i.nodeid not in skip]
        dropped = [i for i in items if i not in kept]
        if dropped:
            config.hook.pytest_deselected(items=dropped)
        items[:] = kept

    def _planned(self, items: list, planned: list) -> list:
        """The run's tests as the grader planned them: each graded test under its new name, and its
        decoy copies (the same function, fixtures and parameters)."""
        by_id = {i.nodeid: i for i in items}
        out = []
        for source, nodeid, shift in planned:
            item = by_id.get(source)
            if item is None:
                continue
            prefix, _, last = nodeid.rpartition("::")
            base = last.partition("[")[0]
            clone = type(item).from_parent(item.parent, name=base + last[len(base):], callspec=getattr(item, "callspec", None),
                                           callobj=item.obj, fixtureinfo=item._fixtureinfo, originalname=base)
            self.shifts[clone.nodeid] = int(shift)
            out.append(clone)
        return out

    def pytest_collectreport(self, report):
        if report.failed:
            self.send(event="collect_error", where=report.nodeid, message=str(report.longrepr)[-2000:])

    def pytest_collection_finish(self, session):
        """Collected: report what will run, then hide the hidden tests before student code loads."""
        if self.task.get("collect_only"):
            self.send(event="items", items=[{"nodeid": i.nodeid, "exercise": _exercise(i)[0],
                                             "points": _exercise(i)[1]} for i in session.items])
        else:
            self.send(event="collected", nodeids=[i.nodeid for i in session.items])
        for path in self.task.get("hidden", ()):
            Path(path).unlink(missing_ok=True)
        self.baseline = _snapshot()

    def pytest_runtest_logstart(self, nodeid, location):
        self.secret = os.urandom(16)  # fresh per test: an outcome recorded under another is not this test's
        limit = float(self.task["limits"]["test_timeout"])
        self.item_deadline = time.process_time() + limit
        self.item_backstop = time.monotonic() + float(self.task["limits"].get("wall_factor", 1.0)) * limit
        self.send(event="start", nodeid=nodeid)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_setup(self, item):
        return (yield from self._timed())

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item):
        result = yield from self._timed()
        shift = self.shifts.get(item.nodeid, 0)
        if shift:  # a decoy: its expected value is moved, so whatever the code returned it fails
            raise AssertionError(f"assert {len(item.nodeid)} == {len(item.nodeid) + shift}")
        return result

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_teardown(self, item):
        return (yield from self._timed())

    def _timed(self):
        """One phase (setup, call, teardown) under two alarms; the three share the test's limits.
        The limit counts CPU seconds of this process (ITIMER_PROF), so a test slowed down by
        another child hogging the cores is not failed for it; a test that waits instead of
        computing is stopped by the wall-clock backstop (limits["wall_factor"] times the limit)."""
        limit = float(self.task["limits"]["test_timeout"])
        wall = float(self.task["limits"].get("wall_factor", 1.0)) * limit
        previous = (signal.signal(signal.SIGPROF, _raise_timeout(f"more than {limit:g} s of CPU time")),
                    signal.signal(signal.SIGALRM, _raise_timeout(f"more than {wall:g} s")))
        signal.setitimer(signal.ITIMER_PROF, max(0.05, self.item_deadline - time.process_time()))
        signal.setitimer(signal.ITIMER_REAL, max(0.05, self.item_backstop - time.monotonic()))
        try:
            return (yield)
        except KeyboardInterrupt as err:  # nobody can press Ctrl-C in a detached child: it was raised
            raise Interrupted(f"the code raised KeyboardInterrupt {err}".strip()) from None
        finally:
            signal.setitimer(signal.ITIMER_PROF, 0)
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGPROF, previous[0])
            signal.signal(signal.SIGALRM, previous[1])

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_makereport(self, item, call):
        report = yield
        nodeid = item.nodeid
        if call.when == "call":
            changed = _restore(self.baseline)
            if changed:
                report.outcome = "failed"
                self.outcomes[nodeid] = (self.secret, "failed", "Tampering", "the code under test replaced "
                                         f"{', '.join(changed[:3])}; library functions must stay as they are")
            elif call.excinfo is None:
                self.evidence[nodeid] = self.secret  # the only way a test comes to pass
        if nodeid in self.outcomes and self.outcomes[nodeid][1] == "failed":
            return report
        if call.excinfo is not None and call.excinfo.errisinstance(pytest.skip.Exception):
            self.outcomes[nodeid] = (self.secret, "skipped", "Skipped", "skipped: earns no points")
        elif call.excinfo is not None or report.failed:
            excinfo = call.excinfo
            error = excinfo.typename if excinfo is not None else "Failed"
            first = (str(excinfo.value).strip().splitlines() or [""])[0] if excinfo is not None else ""
            self.outcomes[nodeid] = (self.secret, "failed", error, f"{error}: {first}"[:300])
        return report

    def pytest_runtest_logfinish(self, nodeid, location):
        forged = self.forgery(nodeid)
        if forged:
            self.send(event="result", nodeid=nodeid, outcome="failed", error="Forgery", message=forged[:300],
                      tampered=forged[:300])
            return
        secret, outcome, error, message = self.outcomes.get(nodeid, (self.secret, None, None, ""))
        if outcome is None:
            if self.evidence.get(nodeid) == self.secret:
                outcome = "passed"
            else:
                outcome, error, message = "failed", "NoVerdict", "no passing call of this test was seen"
        self.send(event="result", nodeid=nodeid, outcome=outcome, error=error, message=message)

    def forgery(self, nodeid: str) -> str | None:
        """What differs from the plugin as installed, if anything: its registration, its hooks, its
        tables, this test's secret on its recorded outcome."""
        outcomes, evidence, shifts, channel, send = self.installed
        if not all(a is b for a, b in zip((self.outcomes, self.evidence, self.shifts, self.channel),
                                          (outcomes, evidence, shifts, channel))):
            return "the grading plugin's tables were replaced"
        if type(outcomes) is not dict or type(evidence) is not dict or "send" in vars(self) or self.send != send:
            return "the grading plugin's tables or methods were replaced"
        if type(self) is not ResultPlugin or any(getattr(ResultPlugin, n) is not f for n, f in self.methods.items()):
            return "the grading plugin's class was changed"
        manager = getattr(self.config, "pluginmanager", None)
        if manager is None or not manager.is_registered(self):
            return "the grading plugin was unregistered"
        for name in self.HOOKS:
            impls = [i for i in getattr(manager.hook, name).get_hookimpls() if i.plugin is self]
            if len(impls) != 1 or getattr(impls[0].function, "__func__", None) is not self.methods[name]:
                return f"the grading plugin's hook {name} was replaced"
        recorded = self.outcomes.get(nodeid)
        if recorded is not None and (type(recorded) is not tuple or recorded[0] != self.secret):
            return "an outcome was recorded for this test from outside its run"
        if nodeid in self.evidence and self.evidence[nodeid] != self.secret:
            return "a pass was recorded for this test from outside its run"
        return None


def _exercise(item) -> tuple[str, float] | None:
    marker = item.get_closest_marker("exercise")
    return (str(marker.args[0]), float(marker.kwargs.get("points", 1))) if marker and marker.args else None


def _raise_timeout(what: str):
    def handler(signum, frame):
        raise TestTimeout(f"the test ran for {what} (an endless loop?)")
    return handler


def _snapshot() -> dict:
    """What student code must leave alone: library namespaces, watched classes, global hooks."""
    spaces = {name: sys.modules[name].__dict__ for name in WATCHED_MODULES if name in sys.modules}
    classes = {f"{c.__module__}.{c.__qualname__}": c for c in _watched_classes()}
    spaces.update({name: cls.__dict__ for name, cls in classes.items()})
    snapshot = {name: dict(space) for name, space in spaces.items()}
    module = sys.modules.get("torch.nn.modules.module")
    hooks = {k: len(v) for k, v in vars(module).items() if k.startswith("_global_") and isinstance(v, dict)} \
        if module else {}
    return {"spaces": spaces, "classes": classes, "values": snapshot, "hooks": hooks, "modes": _mode_depth()}


def _mode_depth() -> tuple[int, int]:
    torch_c = getattr(sys.modules.get("torch"), "_C", None)
    if torch_c is None:
        return (0, 0)
    return (torch_c._len_torch_function_stack(), torch_c._len_torch_dispatch_stack())


def _restore(baseline: dict) -> list[str]:
    """Names changed since the baseline, each put back: a replaced value anywhere watched, and a new
    attribute on a watched class (it would shadow an inherited method, e.g. Tensor.element_size)."""
    changed = []
    for name, original in baseline.get("values", {}).items():
        space = baseline["spaces"][name]
        for key, value in original.items():
            if space.get(key, _MISSING) is not value:
                changed.append(f"{name}.{key}")
                _put_back(baseline, name, key, value)
        if name in baseline["classes"]:  # modules gain attributes legitimately (lazy submodules)
            for key in [k for k in list(space) if k not in original and not _library_addition(k, space[k])]:
                changed.append(f"{name}.{key} (added)")
                _put_back(baseline, name, key, _MISSING)
    module = sys.modules.get("torch.nn.modules.module")
    for key, size in baseline.get("hooks", {}).items():
        if len(getattr(module, key)) != size:
            changed.append(f"a global module hook ({key})")
    if baseline and _mode_depth() != baseline["modes"]:
        changed.append("the torch function/dispatch mode stack")
    return changed


_MISSING = object()


def _library_addition(key: str, value) -> bool:
    """A class attribute a library adds by itself while tests run: copyreg's __slotnames__ cache,
    or a plain function from library code (transformers installs nn.Module.smart_apply the first
    time a model initialises its weights). Anything else, or code from the grading tree (the
    student's modules), is tampering."""
    if key == "__slotnames__":
        return True
    code = getattr(value, "__code__", None) if isinstance(value, FunctionType) else None
    return code is not None and not Path(code.co_filename).resolve().is_relative_to(Path.cwd().resolve())


def _put_back(baseline: dict, name: str, key: str, value) -> None:
    """Restore one name (value _MISSING: remove it); a class dict is read-only, so go through the class."""
    owner = baseline["classes"].get(name)
    try:
        if owner is None:
            baseline["spaces"][name][key] = value
        elif value is _MISSING:
            delattr(owner, key)
        else:
            setattr(owner, key, value)
    except (TypeError, AttributeError):
        pass


def _watched_classes() -> list[type]:
    """torch.Tensor, every torch.nn class, and the transformers classes exercises use."""
    torch = sys.modules.get("torch")
    if torch is None:
        return []
    found = [torch.Tensor, *(v for v in vars(torch.nn).values() if isinstance(v, type))]
    for module, name in (("transformers.pytorch_utils", "Conv1D"), ("transformers.cache_utils", "DynamicCache"),
                         ("transformers.cache_utils", "Cache")):
        cls = getattr(sys.modules.get(module), name, None)
        if isinstance(cls, type):
            found.append(cls)
    return found


# ---------------------------------------------------------------------------------------------
# Inside the child: isolation before pytest starts
# ---------------------------------------------------------------------------------------------
def run_child(task: dict, tree: Path, fds: dict[str, int], clean_path: list[str], sandbox=None,
              uid: int | None = None) -> None:
    """Runs in the forked child; never returns. fds: "results" and "output" (write ends), "key"
    (read end of the pipe the server writes this child's channel key to). sandbox: a
    boundary.Sandbox to move into first, or None where none can be built (limits only). uid: the
    unprivileged uid this child takes (a root grader gives each running child its own), or None."""
    code = 70
    try:
        os.setsid()
        _redirect(fds["output"], keep=(fds["results"], fds["key"]))
        if sandbox is not None:
            sandbox.enter(tree, hidden_folders(tree), uid)  # returns inside the sandbox, in a new process
            tree, tmp = Path(sandbox.inside), Path("/tmp")
        else:
            tmp = tree / "tmp"
        channel = Channel(read_key(fds["key"]))
        _apply_limits(task["limits"], own_uid=uid is not None)
        if sandbox is None and uid is not None:
            drop_to(uid)
        _scrub_environment(tmp)
        _isolate_imports(tree, task, clean_path)
        os.chdir(tree)
        plugin = ResultPlugin(fds["results"], channel, task)
        code = int(pytest.main(_pytest_args(task, tree, tmp), plugins=[plugin]))
    except BaseException:  # noqa: BLE001 - report anything, then leave without running cleanups
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def drop_to(uid: int) -> None:
    """Become `uid` for good (a root grader without a sandbox): no groups, no capabilities, no way
    back (no_new_privs: no set-uid program raises it again). Checked, not assumed."""
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
    except (OSError, AttributeError):
        pass
    if 0 in os.getresuid() or 0 in os.getresgid() or os.getgroups():
        raise OSError(f"could not drop to uid {uid}: still {os.getresuid()} / {os.getresgid()}")


def hidden_folders(tree: Path) -> list[Path]:
    """The only folders of a grading tree a sandboxed child may change (a private copy of them): it
    deletes the hidden tests there once they are collected."""
    return [tree / "tests" / "hidden"]


def _redirect(output_w: int, keep: tuple[int, ...]) -> None:
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(output_w, 1)
    os.dup2(output_w, 2)
    top = min(resource.getrlimit(resource.RLIMIT_NOFILE)[0], 65536)
    low = 3
    for fd in sorted(keep):  # the server's pipes, sockets and files: none of the child's business
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, top)


SHARED_NPROC = 512  # RLIMIT_NPROC where the child keeps the grader's uid: all that user's processes count


def _apply_limits(limits: dict, own_uid: bool = False) -> None:
    """RLIMIT_NPROC counts the processes and threads of a uid: with a uid of its own (a root
    grader) it is this child's limit (`nproc`); otherwise it is shared with the grader's user."""
    cpu = int(limits["timeout"]) + 1
    memory, files = int(limits["memory_mb"]) * 2**20, int(limits["file_mb"]) * 2**20
    nproc = int(limits["nproc"]) if own_uid else max(int(limits["nproc"]), SHARED_NPROC)
    for name, soft, hard in (("RLIMIT_CPU", cpu, cpu + 5), ("RLIMIT_AS", memory, memory),
                             ("RLIMIT_FSIZE", files, files), ("RLIMIT_NPROC", nproc, nproc),
                             ("RLIMIT_CORE", 0, 0)):
        try:
            resource.setrlimit(getattr(resource, name), (soft, hard))
        except (ValueError, OSError) as err:  # e.g. macOS does not enforce RLIMIT_AS
            print(f"grading: could not set {name}: {err}", file=sys.stderr)


def _scrub_environment(tmp: Path) -> None:
    keep = {k: os.environ[k] for k in ("PATH", "LANG", "LC_ALL") if k in os.environ}
    os.environ.clear()
    os.environ.update(keep)
    (tmp / "home").mkdir(parents=True, exist_ok=True)
    os.environ.update(HOME=str(tmp / "home"), TMPDIR=str(tmp), HF_HOME=str(tmp / "home" / "hf"),
                      HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTEST_DISABLE_PLUGIN_AUTOLOAD="1",
                      PYTHONDONTWRITEBYTECODE="1", LABS_IMPL="labs", LABS_PRESET="quick",
                      OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
                      MPLBACKEND="Agg")
    sys.dont_write_bytecode = True


def _isolate_imports(tree: Path, task: dict, clean_path: list[str]) -> None:
    """Only stdlib, site-packages and the tree on sys.path; no editable finders; solutions blocked."""
    sys.meta_path[:] = [f for f in sys.meta_path if not is_editable(f)]
    sys.path_hooks[:] = [h for h in sys.path_hooks if not is_editable(h)]
    sys.path[:] = [str(tree), *clean_path]
    sys.path_importer_cache.clear()
    for name in [n for n in sys.modules if n.split(".")[0] in ("labs", "solutions", "tests", "conftest")]:
        del sys.modules[name]
    sys.meta_path.insert(0, StudentFinder(tree, task))


def is_editable(obj) -> bool:
    """A finder or path hook installed by an editable install (it maps labs/solutions to a checkout)."""
    owner = obj if isinstance(obj, type) else type(obj)
    return "__editable__" in (getattr(owner, "__module__", "") or "") or "__editable__" in repr(obj)


def _pytest_args(task: dict, tree: Path, tmp: Path) -> list[str]:
    args = [*task["tests"], "-q", "--no-header", "-rN", "--tb=no", "-p", "no:cacheprovider",
            "-m", "exercise", "--impl=labs", f"--rootdir={tree}", "-c", str(tree / "pyproject.toml"),
            f"--confcutdir={tree}", f"--basetemp={tmp / 'pytest'}", "-o", "addopts=",
            "-W", "ignore::DeprecationWarning", "-W", "ignore::FutureWarning"]
    return args + (["--collect-only"] if task.get("collect_only") else [])


class StudentFinder:
    """Blocks `solutions`; loads labs.<technique> with checked builtins."""

    def __init__(self, tree: Path, task: dict):
        self.tree, self.policy = tree, task["policy"]
        self.techniques = set(self.policy["techniques"])

    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] == "solutions":
            raise ModuleNotFoundError("the reference solutions are not part of grading", name=fullname)
        package, _, name = fullname.rpartition(".")
        if package == "labs" and name in self.techniques:
            origin = self.tree / "labs" / f"{name}.py"
            return spec_from_file_location(fullname, origin, loader=StudentLoader(fullname, str(origin), self.policy))
        return None


class StudentLoader(SourceFileLoader):
    """A source loader that runs the module with checked builtins."""

    def __init__(self, fullname: str, path: str, policy: dict):
        super().__init__(fullname, path)
        self.policy = policy

    def exec_module(self, module) -> None:
        module.__dict__["__builtins__"] = checked_builtins(self.policy)
        exec(self.get_code(module.__name__), module.__dict__)  # noqa: S102 - the loader's own job


def checked_builtins(policy: dict) -> dict:
    """The builtins a student module sees: refused names gone, attribute access and import checked."""
    refused = set(policy["refused_names"])
    safe = {k: v for k, v in vars(builtins).items() if k not in refused}
    api = {module: frozenset(names) for module, names in policy["api"].items()}
    check = _attribute_check(set(policy["refused_attrs"]), set(policy["allowed_dunders"]), api)

    def checked_getattr(obj, name, *default):
        return getattr(obj, check(obj, name), *default)

    def checked_hasattr(obj, name):
        return hasattr(obj, check(obj, name))

    def checked_setattr(obj, name, value):
        _refuse_shared(obj, name)
        setattr(obj, check(obj, name), value)

    def checked_delattr(obj, name):
        _refuse_shared(obj, name)
        delattr(obj, check(obj, name))

    safe.update(getattr=checked_getattr, hasattr=checked_hasattr, setattr=checked_setattr,
                delattr=checked_delattr, __import__=_checked_import(policy, api))
    return safe


def _attribute_check(refused: set[str], allowed_dunders: set[str], api: dict[str, frozenset[str]]):
    def check(obj, name):
        if not isinstance(name, str):
            raise TypeError(f"attribute name must be a string, got {type(name).__name__}")
        if isinstance(obj, ModuleType):  # on a module, the allowlist decides (as the screen did)
            module = getattr(obj, "__name__", "?")
            if name not in api.get(module, ()):
                raise AttributeError(f"grading refuses {module}.{name}: not something exercises may use")
            return name
        if (name.startswith("__") and name not in allowed_dunders) or name in refused:
            raise AttributeError(f"grading refuses access to attribute {name!r}")
        return name
    return check


def _refuse_shared(obj, name: str) -> None:
    """Modules and classes are shared with the tests: the student's code may not change them."""
    if isinstance(obj, (type, ModuleType)):
        raise AttributeError(f"grading refuses changing {getattr(obj, '__name__', obj)!r}.{name}: "
                             "modules and classes are shared with the tests")


def _allowed_chain(chain: list[str], api: dict[str, frozenset[str]]) -> bool:
    """Every step of a module chain is in the allowlist (screen.refused_prefix, repeated here)."""
    module = chain[0]
    if module not in api:
        return False
    for name in chain[1:]:
        if name not in api[module]:
            return False
        module = f"{module}.{name}"
        if module not in api:
            return True
    return True


def _checked_import(policy: dict, api: dict[str, frozenset[str]]):
    techniques = set(policy["techniques"])

    def checked(name, globals=None, locals=None, fromlist=(), level=0):
        parts = name.split(".") if name else []
        if level:
            targets = parts[:1] or list(fromlist or ())
            ok = level == 1 and all(t in techniques for t in targets) and \
                all(_allowed_chain(["labs", *parts, f], api) for f in (fromlist or ()) if parts)
        else:
            ok = bool(parts) and _allowed_chain(parts, api) and ".".join(parts) in api and \
                all(f in api[".".join(parts)] for f in fromlist or ())
        if not ok:
            raise ImportError(f"grading refuses the import of {'.' * level}{name or ', '.join(fromlist)}")
        return builtins.__import__(name, globals, locals, fromlist, level)
    return checked
