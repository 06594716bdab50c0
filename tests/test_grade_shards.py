"""labs grade --shard i/n and labs merge-grades: a class spread over machines comes back as one grades.csv."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from labs import cli
from labs.instructor.grade import named_submissions, parse_shard
from labs.instructor.gradebook import SHARD_FILE, merge_shards, shard_record

HEADER = ["student", "5.1", "5.2", "total", "status", "sandbox"]


def a_class(base: Path, names: list[str]) -> list[Path]:
    """Submission folders, each with a labs/ module, as `labs grade` is given them."""
    for name in names:
        (base / "class" / name / "labs").mkdir(parents=True)
        (base / "class" / name / "labs" / "lora.py").write_text("x = 1\n")
    return [base / "class" / name for name in names]


def grade_shard(out: Path, shard: tuple[int, int], named: list[tuple[Path, str]], class_size: int) -> Path:
    """What `labs grade --shard` leaves in --out: shard.json and grades.csv (scores made up)."""
    out.mkdir(parents=True)
    students = [s for _, s in named]
    (out / SHARD_FILE).write_text(json.dumps(shard_record(shard, students, class_size)))
    rows = [[s, "1", str(k % 2), str(1 + k % 2), "ok", "bubblewrap"] for k, s in enumerate(students)]
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows([HEADER, *rows])
    (out / "grades.csv").write_text(text.getvalue())
    return out


def shards_of(tmp_path: Path, n: int, names: list[str]) -> list[Path]:
    folder = a_class(tmp_path, names)
    return [grade_shard(tmp_path / f"grades-{i}", (i, n), named_submissions(folder, (i, n)), len(names))
            for i in range(1, n + 1)]


NAMES = ["ann", "bob", "cy", "dee", "eve", "fay", "gus"]


def test_shard_parses_and_refuses_clearly():
    assert parse_shard("2/4") == (2, 4) and parse_shard(" 1 / 1 ") == (1, 1)
    for bad in ("0/4", "5/4", "2", "a/b", "2/0", "-1/3"):
        with pytest.raises(ValueError, match=r"--shard .* is not i/n"):
            parse_shard(bad)


def test_shards_cut_the_class_into_disjoint_slices_with_stable_ids(tmp_path):
    folder = a_class(tmp_path, NAMES)
    everyone = named_submissions(folder)
    slices = [named_submissions(folder, (i, 3)) for i in (1, 2, 3)]
    ids = [student for part in slices for _, student in part]
    assert sorted(ids) == sorted(s for _, s in everyone) and len(set(ids)) == len(NAMES)
    assert [s for _, s in slices[1]] == ["bob", "eve"], "every 3rd from the 2nd, in the class's order"
    assert named_submissions(folder, (1, 1)) == everyone
    assert named_submissions(folder, (8, 9)) == [], "more machines than students: some have nothing to do"


def test_merge_gives_back_the_class_in_order(tmp_path):
    merged = merge_shards([d / "grades.csv" for d in reversed(shards_of(tmp_path, 3, NAMES))])
    header, *rows = list(csv.reader(io.StringIO(merged)))
    assert header == HEADER and [r[0] for r in rows] == NAMES


def test_merge_command_writes_one_csv_atomically(tmp_path, capsys):
    shards = shards_of(tmp_path, 2, NAMES)
    out = tmp_path / "all" / "grades.csv"
    assert cli.main(["merge-grades", "--out", str(out), *map(str, shards)]) == 0
    assert [r[0] for r in csv.reader(out.open())][1:] == NAMES
    assert "7 submission(s)" in capsys.readouterr().out
    assert not list(out.parent.glob(".*.tmp"))


def test_merge_refuses_a_missing_shard(tmp_path, capsys):
    shards = shards_of(tmp_path, 3, NAMES)
    out = tmp_path / "all.csv"
    assert cli.main(["merge-grades", "--out", str(out), str(shards[0]), str(shards[2])]) == 2
    assert "shard(s) 2/3 missing" in capsys.readouterr().err
    assert not out.exists()


def test_merge_refuses_a_shard_given_twice(tmp_path):
    shards = shards_of(tmp_path, 2, NAMES)
    with pytest.raises(ValueError, match="shard 1/2 is given twice"):
        merge_shards([shards[0] / "grades.csv", shards[0] / "grades.csv", shards[1] / "grades.csv"])


def test_merge_refuses_overlapping_shards(tmp_path):
    shards = shards_of(tmp_path, 2, NAMES)
    other = grade_shard(tmp_path / "other", (2, 2), named_submissions([tmp_path / "class" / n for n in NAMES], (1, 2)), len(NAMES))
    with pytest.raises(ValueError, match="ann is in .* the shards overlap"):
        merge_shards([shards[0] / "grades.csv", other / "grades.csv"])


def test_merge_refuses_shards_of_different_splits(tmp_path):
    two = shards_of(tmp_path / "a", 2, NAMES)
    three = shards_of(tmp_path / "b", 3, NAMES)
    with pytest.raises(ValueError, match="merge the shards of one run only"):
        merge_shards([two[0] / "grades.csv", three[1] / "grades.csv", three[2] / "grades.csv"])


def test_merge_refuses_an_unfinished_shard(tmp_path):
    shards = shards_of(tmp_path, 2, NAMES)
    csv_path = shards[1] / "grades.csv"
    csv_path.write_text("\n".join(csv_path.read_text().splitlines()[:-1]) + "\n")  # the last row lost
    with pytest.raises(ValueError, match=r"does not match its shard.json: no row for fay \(did that run finish\?\)"):
        merge_shards([shards[0] / "grades.csv", csv_path])


def test_merge_refuses_a_csv_without_shard_record(tmp_path):
    shards = shards_of(tmp_path, 1, NAMES)
    (shards[0] / SHARD_FILE).unlink()
    with pytest.raises(ValueError, match="no shard.json beside it: was it written by labs grade --shard"):
        merge_shards([shards[0] / "grades.csv"])


def test_shard_and_gradescope_single_are_refused_together(tmp_path, capsys):
    folder = a_class(tmp_path, ["ann"])
    code = cli.main(["grade", str(folder[0]), "--out", str(tmp_path / "o"), "--shard", "1/2",
                     "--gradescope-single"])
    assert code == 2 and "--shard and --gradescope-single" in capsys.readouterr().err


class IdleRunner:
    """Stands in for the sandboxed test runner: collects nothing and runs nothing, so each
    submission is reported as not finished. Enough to see which submissions a shard takes."""
    sandboxed, sandbox_said, dropped = False, "a stand-in runner for this test", []

    def __init__(self, *args, **kwargs):
        pass

    def collect(self, course, limits, policy):
        return []

    def send(self, tasks, close=False):
        pass

    def next_event(self):
        return None

    def sandbox_column(self):
        return "NONE: test"

    def close(self):
        pass


def test_two_shard_runs_of_labs_grade_merge_into_the_class(tmp_path, monkeypatch):
    from labs.instructor import grade
    monkeypatch.setattr(grade, "Runner", IdleRunner)
    paths = a_class(tmp_path, NAMES)
    for i in (1, 2):
        rows = grade.grade(paths, tmp_path / f"g{i}", grade.Limits(), jobs=1, progress=lambda line: None,
                           shard=(i, 2))
        assert [r[0] for r in rows] == NAMES[i - 1::2]
        assert json.loads((tmp_path / f"g{i}" / SHARD_FILE).read_text())["students"] == NAMES[i - 1::2]
    merged = merge_shards([tmp_path / "g1" / "grades.csv", tmp_path / "g2" / "grades.csv"])
    assert [r[0] for r in csv.reader(io.StringIO(merged))][1:] == NAMES
