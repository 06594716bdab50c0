"""Scores and reports for one graded submission: per test, per exercise, and the files.

    results.json   Gradescope's format: one entry per test (hidden ones "after_published")
    feedback.md    per exercise: status, points and a hint, for the student
    grades.csv     one row per submission: a column per exercise, total, status, sandbox

Points come from the graded tests' exercise markers as the trusted collection read them (see
labs/instructor/grade.py); the tests' outcomes come from the grading children. Partial credit falls out of
the sum: an exercise earns the points of its tests that passed.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

from labs.files import write_atomically
from labs.instructor import untrusted
from labs.instructor.course import Course
from labs.instructor.submissions import Submission


@dataclass
class Graded:
    sub: Submission
    module_notes: dict[str, str] = field(default_factory=dict)     # technique -> why it was not run
    exercise_notes: dict[str, str] = field(default_factory=dict)   # exercise -> why it scores zero
    untouched: set[str] = field(default_factory=set)               # techniques identical to the stub
    results: dict[str, dict] = field(default_factory=dict)         # nodeid -> result event
    problems: list[str] = field(default_factory=list)              # children that did not finish
    output: list[str] = field(default_factory=list)
    pending: set[str] = field(default_factory=set)                 # task ids still running
    expected: dict[str, set[str]] = field(default_factory=dict)    # task id -> the test node ids it runs
    planned: dict[str, object] = field(default_factory=dict)       # node id run -> decoys.Planned
    seen: set[str] = field(default_factory=set)                    # node ids whose result came in
    tampered: list[str] = field(default_factory=list)              # why its verdicts cannot be trusted
    hidden_ids: set[str] = field(default_factory=set)              # node ids run for hidden tests (decoys too)
    hidden_ran: set[str] = field(default_factory=set)              # task ids that reported a hidden test
    decoys_passed: int = 0                                         # decoy tests reported passed (must be 0)
    seconds: float = 0.0


@dataclass(frozen=True)
class TestScore:
    nodeid: str
    exercise: str
    max_score: float
    score: float
    hidden: bool
    message: str      # "" when passed


def score_tests(graded: Graded, course: Course) -> list[TestScore]:
    out = []
    for item in course.items:
        nodeid, ex, points = item["nodeid"], item["exercise"], float(item["points"])
        module = course.exercises[ex]
        result = graded.results.get(nodeid)
        passed = result is not None and result["outcome"] == "passed"
        message = _why_not(graded, module, ex, result, course)
        earned = points if passed and ex not in graded.exercise_notes and not graded.sub.error else 0.0
        earned = 0.0 if graded.tampered else earned
        out.append(TestScore(nodeid, ex, points, earned, course.is_hidden(nodeid), "" if earned else message))
    return out


UNTRUSTED = "Grading could not be trusted for this submission: see your instructor."


WITHHELD_AFTER = "(message withheld: it came after a hidden test ran)"
WITHHELD_QUOTE = "(message withheld: it quotes a hidden test)"


def _why_not(graded: Graded, module: str, ex: str, result: dict | None, course: Course) -> str:
    if graded.tampered:
        return UNTRUSTED
    if graded.sub.error:
        return graded.sub.error
    if module in graded.module_notes:
        return graded.module_notes[module]
    if ex in graded.exercise_notes:
        return f"scored zero: {graded.exercise_notes[ex]}"
    if module in graded.untouched:
        return f"NotImplementedError: exercise {ex} is not done yet"
    if result is None:
        return "did not run: " + ("; ".join(graded.problems) or "no result was reported")
    message = result.get("message") or result["outcome"]
    if result.get("after_hidden"):  # the code may have seen a hidden test's locals by then
        return WITHHELD_AFTER
    return WITHHELD_QUOTE if course.quotes_hidden(message) else message


def status_of(graded: Graded) -> str:
    if graded.tampered:
        return "tampered"
    if graded.sub.error:
        return f"error:{graded.sub.error}"
    broken = graded.module_notes or graded.exercise_notes or graded.problems
    return "partial" if broken else "ok"


# ---------------------------------------------------------------------------------------------
# Reports: results.json (Gradescope), feedback.md, grades.csv
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ExerciseScore:
    exercise: str
    points: float
    max_points: float
    status: str       # passed / partial / failing / not started / zero
    hint: str


def exercise_scores(tests: list[TestScore], graded: Graded, course: Course) -> list[ExerciseScore]:
    by_id: dict[str, list[TestScore]] = {}
    for t in tests:
        by_id.setdefault(t.exercise, []).append(t)
    out = []
    for ex in sorted(course.exercises, key=_id_key):
        rows = by_id.get(ex, [])
        points, top = sum(t.score for t in rows), sum(t.max_score for t in rows)
        failed = [t for t in rows if not t.score]
        visible = [t for t in failed if not t.hidden]
        hint = (visible[0].message if visible else "a hidden test did not pass" if failed else "")
        out.append(ExerciseScore(ex, points, top, _exercise_status(points, top, failed, ex, graded), hint))
    return out


def _exercise_status(points: float, top: float, failed: list[TestScore], ex: str, graded: Graded) -> str:
    if ex in graded.exercise_notes:
        return "zero"
    if not top:
        return "no tests"
    if not failed:
        return "passed"
    if points > 0:
        return "partial"
    return "not started" if all(t.message.startswith("NotImplementedError") for t in failed) else "failing"


def _id_key(ex: str) -> tuple[int, ...]:
    return tuple(int(p) for p in ex.split("."))


# Gradescope shows every text of results.json as plain text: nothing a submission wrote is read
# as Markdown, HTML or ANSI colour (its own default for "output" is "simple_format").
TEXT_ONLY = {"output_format": "text", "test_output_format": "text", "test_name_format": "text"}


def results_json(tests: list[TestScore], graded: Graded, course: Course) -> dict:
    total = sum(t.score for t in tests)
    entries = [{"name": f"Exercise {t.exercise}: {t.nodeid.split('::', 1)[-1]}", "number": t.exercise,
                "score": t.score, "max_score": t.max_score, "status": "passed" if t.score else "failed",
                "output": "" if t.hidden else untrusted.one_line(t.message),  # hidden: name, points, pass/fail only
                "output_format": "text", "visibility": "after_published" if t.hidden else "visible"}
               for t in tests]
    notes = [untrusted.one_line(n) for n in _notes(graded)]
    if graded.tampered:  # the student learns that, and nothing of what was found
        entries = [{**e, "output": ""} for e in entries]
        return {"score": 0.0, "execution_time": round(graded.seconds, 2), "tests": entries,
                "output": UNTRUSTED, **TEXT_ONLY, "stdout_visibility": "hidden"}
    return {"score": total, "execution_time": round(graded.seconds, 2), "tests": entries,
            "output": (f"{total:g} of {sum(t.max_score for t in tests):g} points."
                       + ("\n" + "\n".join(notes) if notes else "")), **TEXT_ONLY, "stdout_visibility": "hidden"}


def _notes(graded: Graded) -> list[str]:
    notes = [graded.sub.error] if graded.sub.error else []
    notes += [graded.module_notes[k] for k in sorted(graded.module_notes)]
    notes += [f"exercise {ex}: {graded.exercise_notes[ex]}" for ex in sorted(graded.exercise_notes, key=_id_key)]
    return notes + graded.problems + graded.sub.warnings


GRADER_HINTS = ("see the note above", "well done", "a hidden test did not pass", WITHHELD_AFTER, WITHHELD_QUOTE)


def feedback_md(scores: list[ExerciseScore], graded: Graded) -> str:
    """The student's report. Every text that a submission could have shaped (messages, notes, its
    own name) sits in a code span or is escaped, so it reads as typed: no fake rows or totals."""
    total, top = sum(s.points for s in scores), sum(s.max_points for s in scores)
    lines = [f"# Feedback for {untrusted.markdown_text(graded.sub.student, 100)}", "",
             f"**{total:g} of {top:g} points.**", ""]
    if graded.tampered:
        return "\n".join(lines + [UNTRUSTED]) + "\n"
    notes = _notes(graded)
    if notes:
        lines += ["Before the table, what stopped part of the grading:", ""]
        lines += [f"- {untrusted.code_span(n)}" for n in notes] + [""]
    lines += ["| exercise | status | points | hint |", "|---|---|---|---|"]
    said = set(notes)
    for s in scores:
        hint = s.hint.removeprefix("scored zero: ")
        hint = "see the note above" if hint in said or f"exercise {s.exercise}: {hint}" in said else hint
        hint = hint or ("well done" if s.status == "passed" else "")
        cell = hint if hint in GRADER_HINTS else untrusted.code_span(hint, in_table=True)
        lines.append(f"| {s.exercise} | {s.status} | {s.points:g} / {s.max_points:g} | {cell} |")
    lines += ["", "Hints come from the first failing visible test; run `labs check N.k` to see it yourself."]
    return "\n".join(lines) + "\n"


NOTE_COLUMNS = ("tampered", "id_note", "protections")  # after sandbox: why verdicts were not trusted; how the id was made


def grades_csv(rows: list[tuple], course: Course, sandbox: str) -> str:
    """rows: (student, scores, status) or (student, scores, status, {column: text} for NOTE_COLUMNS).
    sandbox: how the children were isolated in this run ("bubblewrap", or "NONE: <why>")."""
    exercises = sorted(course.exercises, key=_id_key)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["student", *exercises, "total", "status", "sandbox", *NOTE_COLUMNS])
    for student, scores, status, *more in rows:
        points, notes = {s.exercise: s.points for s in scores}, (more[0] if more else {})
        writer.writerow([student, *(f"{points.get(ex, 0):g}" for ex in exercises),
                         f"{sum(points.values()):g}", status, sandbox,
                         *(_cell(notes.get(c, "")) for c in NOTE_COLUMNS)])
    return out.getvalue()


def _cell(text: str) -> str:
    """One line without control characters or terminal escapes, no leading character a
    spreadsheet reads as a formula."""
    text = untrusted.one_line(text)
    return "'" + text if text[:1] in ("=", "+", "-", "@") else text


def write_reports(graded: Graded, course: Course, folder: Path) -> tuple[list[ExerciseScore], str]:
    tests = score_tests(graded, course)
    scores = exercise_scores(tests, graded, course)
    write_atomically(folder / "results.json", json.dumps(results_json(tests, graded, course), indent=1))
    write_atomically(folder / "feedback.md", feedback_md(scores, graded))
    write_atomically(folder / "output.txt", untrusted.clean("".join(graded.output), 2**20, keep_newlines=True))
    return scores, status_of(graded)


# ---------------------------------------------------------------------------------------------
# Shards: grades.csv of several machines, joined into one
# ---------------------------------------------------------------------------------------------
SHARD_FILE = "shard.json"  # beside a shard's grades.csv: which slice it is, and whom it was given


def shard_record(shard: tuple[int, int], students: list[str], class_size: int) -> dict:
    i, n = shard
    return {"shard": i, "of": n, "class_size": class_size, "students": students}


def merge_shards(csvs: list[Path]) -> str:
    """One grades.csv from the grades.csv of every shard of a class, in the class's order.

    Refused, with the reason: a shard missing or given twice, shards of different splits or
    classes, a student in two shards, a shard whose grades.csv lacks a student it was given.
    """
    shards = [_read_shard(Path(p)) for p in csvs]
    n = shards[0]["of"]
    for s in shards:
        if (s["of"], s["class_size"]) != (n, shards[0]["class_size"]):
            raise ValueError(f"{s['path']} is shard {s['shard']}/{s['of']} of a class of {s['class_size']}, but "
                             f"{shards[0]['path']} is {shards[0]['shard']}/{n} of {shards[0]['class_size']}: "
                             "merge the shards of one run only")
        if s["header"] != shards[0]["header"]:
            raise ValueError(f"{s['path']} has columns {s['header']} but {shards[0]['path']} has "
                             f"{shards[0]['header']}: graded with different courses")
    by_index: dict[int, dict] = {}
    for s in shards:
        if s["shard"] in by_index:
            raise ValueError(f"shard {s['shard']}/{n} is given twice: {by_index[s['shard']]['path']} and {s['path']}")
        by_index[s["shard"]] = s
    missing = [f"{i}/{n}" for i in range(1, n + 1) if i not in by_index]
    if missing:
        raise ValueError(f"shard(s) {', '.join(missing)} missing: grade them with labs grade ... --shard I/{n}, "
                         "then merge all of them")
    seen: dict[str, str] = {}
    for s in shards:
        for student in s["students"]:
            if student in seen:
                raise ValueError(f"{student} is in {seen[student]} and in {s['path']}: the shards overlap "
                                 "(were they cut from different lists of submissions?)")
            seen[student] = str(s["path"])
    ordered = [by_index[i] for i in range(1, n + 1)]
    rows = [s["rows"][j] for j in range(max(len(s["students"]) for s in ordered))  # shard i holds i-1, i-1+n, ...
            for s in ordered if j < len(s["students"])]
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows([shards[0]["header"], *rows])
    return out.getvalue()


def _read_shard(path: Path) -> dict:
    """A shard's grades.csv with its shard.json: its rows in the order of the students it was given."""
    record_path = path.parent / SHARD_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no such grades file: {path}")
    if not record_path.is_file():
        raise ValueError(f"{path} has no {SHARD_FILE} beside it: was it written by labs grade --shard I/N?")
    record = json.loads(record_path.read_text())
    header, *rows = list(csv.reader(io.StringIO(path.read_text())))
    by_student = {row[0]: row for row in rows}
    students = list(record["students"])
    lacking = [s for s in students if s not in by_student]
    extra = sorted(set(by_student) - set(students))
    if lacking or extra:
        raise ValueError(f"{path} does not match its {SHARD_FILE}: "
                         + "; ".join(filter(None, [f"no row for {', '.join(lacking)} (did that run finish?)" if lacking else "",
                                                   f"rows for {', '.join(extra)}, not of this shard" if extra else ""])))
    return {"path": path, "shard": int(record["shard"]), "of": int(record["of"]), "class_size": int(record["class_size"]),
            "students": students, "header": header, "rows": [by_student[s] for s in students]}
