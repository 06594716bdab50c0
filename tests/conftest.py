"""Shared test set-up: the `impl` fixture, the exercise marker, and the exercise report.

Graded tests reach technique code only through `impl("lora")`, never a top-level import, so a
broken student file fails its own tests instead of stopping collection of the whole suite.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Child processes (labs check, notebooks, compare runs) inherit this: one thread each on shared cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def _default_impl() -> str:
    if os.environ.get("LABS_IMPL"):
        return os.environ["LABS_IMPL"]
    return "solutions" if (ROOT / "solutions").is_dir() else "labs"


def pytest_addoption(parser):
    parser.addoption("--impl", default=None, choices=("labs", "solutions"),
                     help="which implementation graded tests run against (default: $LABS_IMPL, "
                          "else solutions when present)")
    parser.addoption("--exercise", default=None,
                     help="run only graded tests of one exercise ('5.2') or one notebook ('5')")
    parser.addoption("--exercise-report", default=None,
                     help="write a JSON report of graded test outcomes to this path")


def pytest_configure(config):
    impl = config.getoption("--impl") or _default_impl()
    config.option.impl = impl
    os.environ["LABS_IMPL"] = impl  # subprocesses and notebooks follow the same switch
    config._exercise_results = []


def pytest_sessionstart(session):
    import torch
    # Two cores shared by parallel workers: one thread each, or steps slow down many times over.
    torch.set_num_threads(1)


def exercise_of(item) -> tuple[str, float] | None:
    marker = item.get_closest_marker("exercise")
    if marker is None:
        return None
    return str(marker.args[0]), float(marker.kwargs.get("points", 1))


def pytest_collection_modifyitems(config, items):
    wanted = config.getoption("--exercise")
    for item in items:
        markers = [m for m in item.iter_markers("exercise")]
        if len(markers) > 1:
            raise pytest.UsageError(f"{item.nodeid} carries {len(markers)} exercise markers; one each")
    if not wanted:
        return
    keep = []
    for item in items:
        ex = exercise_of(item)
        if ex and (ex[0] == wanted or ex[0].split(".")[0] == wanted):
            keep.append(item)
    deselected = [i for i in items if i not in keep]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
    items[:] = keep


@pytest.fixture
def impl(request):
    """impl("lora") -> the lora module of the implementation under test (labs or solutions)."""
    from labs.impl import technique
    chosen = request.config.getoption("--impl")
    return lambda name: technique(name, chosen)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    ex = exercise_of(item)
    if ex is None or report.when not in ("setup", "call"):
        return report
    if report.when == "call" or report.outcome != "passed":
        results = item.config._exercise_results
        hint = ""
        if call.excinfo is not None:
            lines = str(call.excinfo.value).strip().splitlines() or [""]
            hint = f"{call.excinfo.typename}: {lines[0]}"[:300]
        results.append({"nodeid": item.nodeid, "exercise": ex[0], "points": ex[1],
                        "outcome": report.outcome, "error": call.excinfo.typename if call.excinfo else None,
                        "hint": hint})
    return report


def pytest_sessionfinish(session, exitstatus):
    """Write the graded outcomes as JSON; under xdist each worker writes a part, the main merges."""
    path = session.config.getoption("--exercise-report")
    if not path:
        return
    results = session.config._exercise_results
    worker = getattr(session.config, "workerinput", {}).get("workerid")
    if worker:
        Path(f"{path}.{worker}").write_text(json.dumps(results))
        return
    for part in sorted(Path(path).parent.glob(Path(path).name + ".gw*")):
        results = results + json.loads(part.read_text())
        part.unlink()
    tmp = Path(path).with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1))
    tmp.replace(path)
