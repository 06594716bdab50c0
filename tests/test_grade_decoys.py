"""Verdicts that cannot be forged unseen: positive evidence of a pass, the plugin's own integrity
check, and decoy tests that make a blind forgery of verdicts detectable (labs/instructor/decoys.py)."""
from __future__ import annotations

import itertools
import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from labs.instructor import decoys
from labs.instructor.course import Course
from labs.instructor.grade import on_event, tasks_for
from labs.instructor.gradebook import (Graded, UNTRUSTED, feedback_md, exercise_scores, results_json,
                                       score_tests, status_of)
from labs.instructor.submissions import Submission

ROOT = Path(__file__).resolve().parent.parent
IDS = [f"tests/test_ex_x.py::test_{name}" for name in
       ("shapes_match", "zero_init", "scaling_is_alpha_over_r[fp16]", "scaling_is_alpha_over_r[fp32]",
        "merge_matches_forward")] + ["tests/hidden/test_hidden_x.py::test_unseen_case"]


# ---------------------------------------------------------------------------------------------
# The plan and its detection probability
# ---------------------------------------------------------------------------------------------
def test_plan_gives_every_test_its_decoys_under_fresh_names():
    planned = decoys.plan(IDS, random.Random(0))
    assert len(planned) == len(IDS) * (1 + decoys.DECOYS_PER_TEST)
    for source in IDS:
        rows = [p for p in planned if p.source == source]
        assert [p.shift == 0 for p in rows].count(True) == 1, "exactly one real run per graded test"
        assert all(p.shift != 0 and abs(p.shift) <= decoys.SHIFT_RANGE for p in rows if p.shift)
        prefix, _, params = decoys.split_nodeid(source)
        assert all(decoys.split_nodeid(p.nodeid)[0] == prefix and decoys.split_nodeid(p.nodeid)[2] == params
                   for p in rows), "a copy stays in its file, with its parameters"
    names = [p.nodeid for p in planned]
    assert len(set(names)) == len(names) and not set(names) & set(IDS), "fresh names, none public"
    assert all(decoys.split_nodeid(n)[1].startswith("test_") for n in names)
    files = [decoys.split_nodeid(p.nodeid)[0] for p in planned]
    assert files == sorted(files, key=[decoys.split_nodeid(i)[0] for i in IDS].index), "files keep their order"
    again = decoys.plan(IDS, random.Random(1))
    assert [p.nodeid for p in again] != names, "each run draws its own names and order"
    with pytest.raises(ValueError, match="at least 1"):
        decoys.plan(IDS, random.Random(0), decoys=0)


@pytest.mark.parametrize("k", [3, 4, 5, 8])
def test_a_blind_flip_of_k_tests_is_caught_with_the_stated_probability(k):
    """The figure of the design: >= 1 - (1/3)^k whatever the module's size (96.3% for k = 3)."""
    assert decoys.guaranteed(3) >= 0.95 and round(decoys.guaranteed(3), 3) == 0.963
    for n in range(1, 201):
        if k <= 3 * n:
            assert decoys.detection_probability(n, k) >= decoys.guaranteed(k) - 1e-12, n
    # measured on real plans: an attacker that flips k of the tests it sees, blind, or one test of
    # each of k functions it recognises (every function has 1 real and 2 decoy runs)
    rng, trials = random.Random(22), 4000
    caught_blind = caught_grouped = 0
    for _ in range(trials):
        planned = decoys.plan(IDS, rng)
        caught_blind += any(p.shift for p in rng.sample(planned, k))
        groups = rng.sample(IDS, min(k, len(IDS)))
        caught_grouped += any(rng.choice([p for p in planned if p.source == g]).shift for g in groups)
    assert caught_blind / trials >= 0.95, caught_blind / trials
    assert caught_grouped / trials >= 0.95 if k <= len(IDS) else True


def test_flipping_every_test_is_always_caught():
    for n in range(1, 50):
        assert decoys.detection_probability(n, n * (1 + decoys.DECOYS_PER_TEST)) == 1.0


# ---------------------------------------------------------------------------------------------
# The grader's side: decoys that pass flag the submission; the student is told only that
# ---------------------------------------------------------------------------------------------
def a_course() -> Course:
    course = Course(ROOT, {"x": "# stub\n"}, {"1.1": "x", "1.2": "x"}, {})
    course.items = [{"nodeid": n, "exercise": "1.1" if i < 3 else "1.2", "points": 1} for i, n in enumerate(IDS)]
    return course


def run_events(outcome_of) -> Graded:
    """A submission whose task reports `outcome_of(planned)` for every test it ran."""
    course = a_course()
    graded = Graded(Submission("s", Path("s")))
    [task] = tasks_for(graded, course, Path("/nonexistent"), _Limits(), {}, random.Random(5))
    by_student = {"s": graded}
    for name, shift, source in ((row[1], row[2], row[0]) for row in task["plan"]):
        on_event({"task": task["id"], "event": "result", "nodeid": name,
                  "outcome": outcome_of(decoys.Planned(source, name, shift))}, by_student)
    assert on_event({"task": task["id"], "event": "done"}, by_student) is graded
    return graded


class _Limits:
    timeout, test_timeout, memory_mb, file_mb, nproc = 60.0, 5.0, 2048, 8, 64


def test_an_honest_run_maps_each_renamed_test_back_and_is_not_flagged():
    graded = run_events(lambda p: "failed" if p.shift else "passed")
    assert not graded.tampered and set(graded.results) == set(IDS)
    assert {r["outcome"] for r in graded.results.values()} == {"passed"} and status_of(graded) == "ok"
    assert sum(t.score for t in score_tests(graded, a_course())) == len(IDS)


@pytest.mark.parametrize("flip", ["every test", "one decoy"])
def test_a_decoy_reported_passed_zeroes_the_submission_and_flags_it(flip):
    chosen = []

    def outcome(p):
        if flip == "every test":
            return "passed"
        if p.shift and not chosen:
            chosen.append(p)
            return "passed"
        return "failed" if p.shift else "passed"
    graded = run_events(outcome)
    course = a_course()
    assert graded.tampered and "must fail" in graded.tampered[0] and status_of(graded) == "tampered"
    tests = score_tests(graded, course)
    assert sum(t.score for t in tests) == 0
    student_sees = feedback_md(exercise_scores(tests, graded, course), graded) + json.dumps(
        results_json(tests, graded, course))
    assert UNTRUSTED in student_sees and "decoy" not in student_sees and "must fail" not in student_sees


# ---------------------------------------------------------------------------------------------
# The child's side: positive evidence, decoys that fail, the integrity check
# ---------------------------------------------------------------------------------------------
TESTS = '''
import pytest


def plugin_of(request):
    return next(p for p in request.config.pluginmanager.get_plugins() if type(p).__name__ == "ResultPlugin")


@pytest.mark.exercise("1.1", points=1)
def test_passes():
    assert 1 + 1 == 2


@pytest.mark.exercise("1.1", points=1)
def test_fails():
    assert 1 + 1 == 3


@pytest.mark.exercise("1.1", points=1)
def test_skips():
    pytest.skip("not today")


@pytest.fixture
def erase_my_failure(request):
    yield
    plugin_of(request).outcomes.clear()  # after the call's failure was recorded


@pytest.mark.exercise("1.1", points=1)
def test_fails_then_erases_its_verdict(erase_my_failure):
    assert False


@pytest.fixture
def forge_a_pass(request):
    yield
    plugin = plugin_of(request)
    plugin.outcomes.pop(request.node.nodeid, None)
    plugin.evidence[request.node.nodeid] = b"guessed secret"


@pytest.mark.exercise("1.1", points=1)
def test_writes_itself_a_pass(forge_a_pass):
    assert False


@pytest.mark.exercise("1.1", points=1)
def test_replaces_the_outcome_table(request):
    plugin_of(request).outcomes = {}  # last: the table stays replaced for every later test
'''
RUN = '''
import json, os, sys
sys.path.insert(0, sys.argv[1])
import pytest
from labs.instructor import sandbox_child as C
key = os.urandom(C.KEY_BYTES)
read, write = os.pipe()
task = {"exercises": ["1.1"], "limits": {"test_timeout": 30}, "plan": json.loads(sys.argv[3])}
plugin = C.ResultPlugin(write, C.Channel(key), task)
pytest.main([sys.argv[2], "-q", "-p", "no:cacheprovider", "-W", "ignore", "--rootdir", os.path.dirname(sys.argv[2])],
            plugins=[plugin])
os.close(write)
opener = C.Channel(key)
print("EVENTS" + json.dumps([opener.open(line) for line in os.fdopen(read, "rb").read().splitlines()]))
'''


def child_events(tmp_path: Path, plan: list | None = None) -> dict[str, dict]:
    (tmp_path / "test_child.py").write_text(TESTS)
    done = subprocess.run([sys.executable, "-c", RUN, str(ROOT), str(tmp_path / "test_child.py"), json.dumps(plan)],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    line = next((x for x in done.stdout.splitlines() if x.startswith("EVENTS")), None)
    assert line, done.stdout[-2000:] + done.stderr[-2000:]
    return {e["nodeid"].rpartition("::")[2]: e for e in json.loads(line[6:]) if e["event"] == "result"}


def test_a_test_passes_only_on_evidence_and_forged_tables_are_named(tmp_path):
    results = child_events(tmp_path)
    assert results["test_passes"]["outcome"] == "passed" and not results["test_passes"].get("tampered")
    assert results["test_fails"]["outcome"] == "failed" and results["test_skips"]["outcome"] == "skipped"
    erased = results["test_fails_then_erases_its_verdict"]
    assert erased["outcome"] == "failed" and erased["error"] == "NoVerdict", "never passed by default"
    assert "tables were replaced" in results["test_replaces_the_outcome_table"]["tampered"]
    assert "from outside its run" in results["test_writes_itself_a_pass"]["tampered"]


def test_the_child_runs_each_test_and_its_decoys_under_the_planned_names(tmp_path):
    sources = [f"test_child.py::{n}" for n in ("test_passes", "test_fails")]
    planned = decoys.plan(sources, random.Random(3))
    results = child_events(tmp_path, [[p.source, p.nodeid, p.shift] for p in planned])
    assert set(results) == {decoys.split_nodeid(p.nodeid)[1] for p in planned}, "exactly the planned tests ran"
    for p in planned:
        got = results[decoys.split_nodeid(p.nodeid)[1]]
        must_pass = p.source.endswith("test_passes") and not p.shift
        assert got["outcome"] == ("passed" if must_pass else "failed"), (p, got)


def test_a_forged_plugin_is_named_once_and_the_decoy_that_passed_comes_first_in_grades_csv():
    """A replaced plugin reports its forgery on every test; repeated, it filled grades.csv's bounded
    cell and pushed out the decoy, the proof the instructor needs."""
    from labs.instructor.gradebook import grades_csv
    course = a_course()
    graded = Graded(Submission("s", Path("s")))
    [task] = tasks_for(graded, course, Path("/nonexistent"), _Limits(), {}, random.Random(5))
    for source, name, shift in task["plan"]:
        on_event({"task": task["id"], "event": "result", "nodeid": name, "outcome": "passed",
                  "tampered": "the grading plugin's tables or methods were replaced " + "x" * 200},
                 {"s": graded})
    assert len(graded.tampered) == 2 and "must fail" in graded.tampered[0], graded.tampered
    cell = grades_csv([("s", [], "tampered", {"tampered": "; ".join(graded.tampered)})], course, "NONE")
    assert "must fail" in cell and cell.count("were replaced") == 1
