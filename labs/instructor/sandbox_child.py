"""Inside a grading child: isolation set up before pytest starts, and the result plugin.

labs/instructor/sandbox.py (the fork server) forks a child per task and calls `run_child` in it. Before any
student code is imported, the child leaves the server's process group, takes its resource
limits, scrubs its environment, narrows sys.path to the standard library, site-packages and its
own grading tree (no editable finders, `solutions` blocked), and installs a loader that runs the
student's technique modules with checked builtins. Then pytest runs with `ResultPlugin`, which
reports each test over a pipe, deletes the hidden test files once collected, bounds each test's
time, and fails any test during which a library function was replaced.

This file imports nothing from labs: the fork server runs outside the package and loads it by path.
"""
from __future__ import annotations

import builtins
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
from types import ModuleType

import pytest

WATCHED_MODULES = ("builtins", "math", "torch", "torch.nn", "torch.nn.functional", "torch.nn.init",
                   "torch.testing", "torch.linalg", "torch.autograd", "torch.nn.modules.module",
                   "transformers", "dataclasses", "functools", "itertools", "collections", "copy",
                   "pytest", "_pytest.python_api", "_pytest.outcomes")


class TestTimeout(BaseException):
    """Raised into a test that ran past its time (BaseException: `except Exception` cannot eat it)."""


class Interrupted(Exception):
    """A KeyboardInterrupt raised by the code under test: a failure of that test, not the end of the run."""


class ResultPlugin:
    """Reports collection and each test's outcome as JSON lines on a pipe, and guards the run."""

    def __init__(self, fd: int, task: dict):
        self.fd, self.task = fd, task
        self.outcomes: dict[str, tuple[str, str | None, str]] = {}  # nodeid -> (outcome, error, message)
        self.baseline: dict = {}
        self.item_deadline = 0.0

    def send(self, **event) -> None:
        data = (json.dumps(event) + "\n").encode()
        while data:
            data = data[os.write(self.fd, data):]

    def pytest_collection_modifyitems(self, config, items):
        keep_ids, skip = set(self.task["exercises"]), set(self.task.get("deselect", ()))
        kept = [i for i in items if _exercise(i) and _exercise(i)[0] in keep_ids and i.nodeid not in skip]
        dropped = [i for i in items if i not in kept]
        if dropped:
            config.hook.pytest_deselected(items=dropped)
        items[:] = kept

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
        self.item_deadline = time.monotonic() + float(self.task["limits"]["test_timeout"])
        self.send(event="start", nodeid=nodeid)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_setup(self, item):
        return (yield from self._timed())

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item):
        return (yield from self._timed())

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_teardown(self, item):
        return (yield from self._timed())

    def _timed(self):
        """One phase (setup, call, teardown) under an alarm: the three share the test's time limit."""
        limit = float(self.task["limits"]["test_timeout"])
        previous = signal.signal(signal.SIGALRM, _raise_timeout(limit))
        signal.setitimer(signal.ITIMER_REAL, max(0.05, self.item_deadline - time.monotonic()))
        try:
            return (yield)
        except KeyboardInterrupt as err:  # nobody can press Ctrl-C in a detached child: it was raised
            raise Interrupted(f"the code raised KeyboardInterrupt {err}".strip()) from None
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item, call):
        report = yield
        if call.when == "call":
            changed = _restore(self.baseline)
            if changed:
                report.outcome = "failed"
                self.outcomes[item.nodeid] = ("failed", "Tampering", "the code under test replaced "
                                              f"{', '.join(changed[:3])}; library functions must stay as they are")
        if item.nodeid in self.outcomes and self.outcomes[item.nodeid][0] == "failed":
            return report
        if report.failed:
            excinfo = call.excinfo
            error = excinfo.typename if excinfo is not None else "Failed"
            first = (str(excinfo.value).strip().splitlines() or [""])[0] if excinfo is not None else ""
            self.outcomes[item.nodeid] = ("failed", error, f"{error}: {first}"[:300])
        elif report.skipped:
            self.outcomes[item.nodeid] = ("skipped", "Skipped", "skipped: earns no points")
        return report

    def pytest_runtest_logfinish(self, nodeid, location):
        outcome, error, message = self.outcomes.get(nodeid, ("passed", None, ""))
        self.send(event="result", nodeid=nodeid, outcome=outcome, error=error, message=message)


def _exercise(item) -> tuple[str, float] | None:
    marker = item.get_closest_marker("exercise")
    return (str(marker.args[0]), float(marker.kwargs.get("points", 1))) if marker and marker.args else None


def _raise_timeout(limit: float):
    def handler(signum, frame):
        raise TestTimeout(f"the test ran for more than {limit:g} s (an endless loop?)")
    return handler


def _snapshot() -> dict:
    """What student code must leave alone: library namespaces, torch.nn classes, global hooks."""
    spaces = {name: sys.modules[name].__dict__ for name in WATCHED_MODULES if name in sys.modules}
    torch = sys.modules.get("torch")
    if torch is not None:
        for cls in [torch.Tensor, *(v for v in vars(torch.nn).values() if isinstance(v, type))]:
            spaces[f"{cls.__module__}.{cls.__qualname__}"] = cls.__dict__
    snapshot = {name: dict(space) for name, space in spaces.items()}
    module = sys.modules.get("torch.nn.modules.module")
    hooks = {k: len(v) for k, v in vars(module).items() if k.startswith("_global_") and isinstance(v, dict)} \
        if module else {}
    return {"spaces": spaces, "values": snapshot, "hooks": hooks, "modes": _mode_depth()}


def _mode_depth() -> tuple[int, int]:
    torch_c = getattr(sys.modules.get("torch"), "_C", None)
    if torch_c is None:
        return (0, 0)
    return (torch_c._len_torch_function_stack(), torch_c._len_torch_dispatch_stack())


def _restore(baseline: dict) -> list[str]:
    """Names whose value changed since the baseline; each is put back."""
    changed = []
    for name, original in baseline.get("values", {}).items():
        space = baseline["spaces"][name]
        for key, value in original.items():
            if space.get(key, _MISSING) is not value:
                changed.append(f"{name}.{key}")
                _put_back(name, space, key, value)
    module = sys.modules.get("torch.nn.modules.module")
    for key, size in baseline.get("hooks", {}).items():
        if len(getattr(module, key)) != size:
            changed.append(f"a global module hook ({key})")
    if baseline and _mode_depth() != baseline["modes"]:
        changed.append("the torch function/dispatch mode stack")
    return changed


_MISSING = object()


def _put_back(name: str, space, key: str, value) -> None:
    try:
        if isinstance(space, dict):
            space[key] = value
        else:  # a class dict is read-only: go through the class
            owner = next(c for c in _watched_classes() if f"{c.__module__}.{c.__qualname__}" == name)
            setattr(owner, key, value)
    except (TypeError, AttributeError, StopIteration):
        pass


def _watched_classes() -> list[type]:
    torch = sys.modules["torch"]
    return [torch.Tensor, *(v for v in vars(torch.nn).values() if isinstance(v, type))]


# ---------------------------------------------------------------------------------------------
# Inside the child: isolation before pytest starts
# ---------------------------------------------------------------------------------------------
def run_child(task: dict, tree: Path, results_w: int, output_w: int, clean_path: list[str]) -> None:
    """Runs in the forked child; never returns."""
    code = 70
    try:
        os.setsid()
        _redirect(output_w, results_w)
        _apply_limits(task["limits"])
        _scrub_environment(tree)
        _isolate_imports(tree, task, clean_path)
        os.chdir(tree)
        code = int(pytest.main(_pytest_args(task, tree), plugins=[ResultPlugin(results_w, task)]))
    except BaseException:  # noqa: BLE001 - report anything, then leave without running cleanups
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _redirect(output_w: int, results_w: int) -> None:
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(output_w, 1)
    os.dup2(output_w, 2)
    top = min(resource.getrlimit(resource.RLIMIT_NOFILE)[0], 65536)
    os.closerange(3, results_w)  # the server's pipes, sockets and files: none of the child's business
    os.closerange(results_w + 1, top)


def _apply_limits(limits: dict) -> None:
    cpu = int(limits["timeout"]) + 1
    memory, files = int(limits["memory_mb"]) * 2**20, int(limits["file_mb"]) * 2**20
    for name, soft, hard in (("RLIMIT_CPU", cpu, cpu + 5), ("RLIMIT_AS", memory, memory),
                             ("RLIMIT_FSIZE", files, files), ("RLIMIT_NPROC", int(limits["nproc"]), int(limits["nproc"])),
                             ("RLIMIT_CORE", 0, 0)):
        try:
            resource.setrlimit(getattr(resource, name), (soft, hard))
        except (ValueError, OSError) as err:  # e.g. macOS does not enforce RLIMIT_AS
            print(f"grading: could not set {name}: {err}", file=sys.stderr)


def _scrub_environment(tree: Path) -> None:
    keep = {k: os.environ[k] for k in ("PATH", "LANG", "LC_ALL") if k in os.environ}
    os.environ.clear()
    os.environ.update(keep)
    os.environ.update(HOME=str(tree / "home"), TMPDIR=str(tree / "tmp"), HF_HOME=str(tree / "home" / "hf"),
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


def _pytest_args(task: dict, tree: Path) -> list[str]:
    args = [*task["tests"], "-q", "--no-header", "-rN", "--tb=no", "-p", "no:cacheprovider",
            "-m", "exercise", "--impl=labs", f"--rootdir={tree}", "-c", str(tree / "pyproject.toml"),
            f"--confcutdir={tree}", f"--basetemp={tree / 'tmp' / 'pytest'}", "-o", "addopts=",
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
    check = _attribute_check(set(policy["refused_attrs"]), set(policy["allowed_dunders"]))

    def checked_getattr(obj, name, *default):
        return getattr(obj, check(name), *default)

    def checked_hasattr(obj, name):
        return hasattr(obj, check(name))

    def checked_setattr(obj, name, value):
        _refuse_shared(obj, name)
        setattr(obj, check(name), value)

    def checked_delattr(obj, name):
        _refuse_shared(obj, name)
        delattr(obj, check(name))

    safe.update(getattr=checked_getattr, hasattr=checked_hasattr, setattr=checked_setattr,
                delattr=checked_delattr, __import__=_checked_import(policy))
    return safe


def _attribute_check(refused: set[str], allowed_dunders: set[str]):
    def check(name):
        if not isinstance(name, str):
            raise TypeError(f"attribute name must be a string, got {type(name).__name__}")
        if (name.startswith("__") and name not in allowed_dunders) or name in refused:
            raise AttributeError(f"grading refuses access to attribute {name!r}")
        return name
    return check


def _refuse_shared(obj, name: str) -> None:
    """Modules and classes are shared with the tests: the student's code may not change them."""
    if isinstance(obj, (type, ModuleType)):
        raise AttributeError(f"grading refuses changing {getattr(obj, '__name__', obj)!r}.{name}: "
                             "modules and classes are shared with the tests")


def _checked_import(policy: dict):
    allowed, infra = set(policy["allowed_imports"]), set(policy["labs_infra"])
    techniques = set(policy["techniques"])

    def checked(name, globals=None, locals=None, fromlist=(), level=0):
        parts = name.split(".") if name else []
        if level:
            targets = parts[:1] or list(fromlist or ())
            ok = level == 1 and all(t in techniques for t in targets)
        elif parts[0] == "labs":
            sub = parts[1] if len(parts) > 1 else None
            ok = (sub in infra | techniques) if sub else all(n in infra | techniques for n in fromlist or ())
        else:
            ok = parts[0] in allowed
        if not ok:
            raise ImportError(f"grading refuses the import of {'.' * level}{name or ', '.join(fromlist)}")
        return builtins.__import__(name, globals, locals, fromlist, level)
    return checked
