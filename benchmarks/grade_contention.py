"""Does one hostile child slow an honest one past its limits? `labs grade --jobs 2` with a spinner
beside an honest submission, against the honest submission graded alone.

    python benchmarks/grade_contention.py                # 3 repeats of each scenario
    python benchmarks/grade_contention.py --repeats 1 --no-sandbox

Scenarios, on a small course (the scaling, freezing and lora modules and their tests):
- alone        the honest submission (the reference) graded alone, --jobs 1
- spinner      beside it (--jobs 2), a submission whose every exercise is `while True: pass`
- fork-spinner beside it (--jobs 2), a submission (past the screen) that forks until refused,
               every copy in a session of its own, spinning
Printed per scenario: the honest submission's points (it must keep them all), the seconds its
test processes ran (median over repeats), the run's wall time, and the ratio to `alone` measured
in this same invocation. Needs the instructor's checkout (solutions/).
"""
from __future__ import annotations

import argparse
import csv
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from labs.instructor.grade import Course, Limits, grade  # noqa: E402

MODULES = ("scaling", "freezing", "lora")
BEGIN = re.compile(r"^\s*# BEGIN SOLUTION (?P<id>\d+\.\d+)\s*$")
END = re.compile(r"^\s*# END SOLUTION\s*$")
FORK_SPIN = '''
import torch
_os = torch.serialization.os


def _spin_everywhere():
    for _ in range(1000):
        try:
            if _os.fork() == 0:
                _os.setsid()
                while True:
                    pass
        except OSError:
            break
    while True:
        pass
'''


def reference(name: str) -> str:
    return "".join(line for line in (ROOT / "solutions" / f"{name}.py").read_text().splitlines(True)
                   if not BEGIN.match(line) and not END.match(line))


def stub_with(name: str, body: str, header: str = "") -> str:
    lines = (ROOT / "labs" / f"{name}.py").read_text().splitlines(True)
    out = [re.sub(r"raise NotImplementedError\(.*\)$", body, line) if 'raise NotImplementedError("Exercise' in line
           else line for line in lines]
    at = next(i for i, line in enumerate(out) if line.startswith("NOTEBOOK ="))
    return "".join(out[:at]) + header + "".join(out[at:])


def make_course(base: Path) -> Path:
    course = base / "course"
    (course / "labs").mkdir(parents=True)
    for src in (ROOT / "labs").glob("*.py"):
        if not src.read_text().startswith("# GENERATED") or src.stem in MODULES:
            shutil.copyfile(src, course / "labs" / src.name)
    (course / "tests" / "hidden").mkdir(parents=True)
    shutil.copyfile(ROOT / "tests" / "conftest.py", course / "tests" / "conftest.py")
    for m in MODULES:
        shutil.copyfile(ROOT / "tests" / f"test_ex_{m}.py", course / "tests" / f"test_ex_{m}.py")
        shutil.copyfile(ROOT / "tests" / "hidden" / f"test_hidden_{m}.py", course / "tests" / "hidden" / f"test_hidden_{m}.py")
    shutil.copyfile(ROOT / "pyproject.toml", course / "pyproject.toml")
    return course


def submission(base: Path, name: str, modules: dict[str, str]) -> Path:
    (base / name / "labs").mkdir(parents=True)
    for m, text in modules.items():
        (base / name / "labs" / f"{m}.py").write_text(text)
    return base / name


def scenario(kind: str, base: Path, course: Course, limits: Limits, sandbox: str) -> dict:
    klass = base / f"class-{kind}-{time.monotonic_ns()}"
    honest = submission(klass, "honest", {m: reference(m) for m in MODULES})
    paths, jobs = [honest], 1
    if kind == "spinner":
        paths, jobs = [submission(klass, "spinner", {m: stub_with(m, "while True: pass") for m in MODULES}), honest], 2
    elif kind == "fork-spinner":
        paths, jobs = [submission(klass, "forkspin", {m: stub_with(m, "_spin_everywhere()", FORK_SPIN)
                                                      for m in MODULES}), honest], 2
    lines: list[str] = []
    started = time.monotonic()
    grade(paths, klass / "out", limits, jobs, course=course, progress=lines.append,
          unscreened=frozenset({"forkspin"}), sandbox=sandbox)
    wall = time.monotonic() - started
    row = next(r for r in csv.DictReader((klass / "out" / "grades.csv").open()) if r["student"] == "honest")
    seconds = float(re.search(r"honest: .*\(([\d.]+) s\)", "\n".join(lines)).group(1))
    return {"points": float(row["total"]), "status": row["status"], "seconds": seconds, "wall": wall,
            "sandbox": row["sandbox"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-sandbox", action="store_true")
    parser.add_argument("--test-timeout", type=float, default=4.0)
    parser.add_argument("--nproc", type=int, default=16)
    args = parser.parse_args()
    limits = Limits(timeout=120, test_timeout=args.test_timeout, memory_mb=3072, nproc=args.nproc, max_timeouts=2)
    base = Path(tempfile.mkdtemp(prefix="grade-contention-"))
    try:
        course = Course.load(make_course(base))
        got: dict[str, list[dict]] = {k: [] for k in ("alone", "spinner", "fork-spinner")}
        for r in range(args.repeats):
            for kind in got:
                got[kind].append(scenario(kind, base, course, limits, "off" if args.no_sandbox else "auto"))
                g = got[kind][-1]
                print(f"run {r + 1} {kind:<13} honest {g['points']:g} points ({g['status']}), its children "
                      f"{g['seconds']:.1f} s, run wall {g['wall']:.1f} s, sandbox {g['sandbox']}", flush=True)
        alone = statistics.median(g["seconds"] for g in got["alone"])
        load = os.getloadavg()
        print(f"\nmedians over {args.repeats} repeat(s); {os.cpu_count()} cores, load {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}; "
              f"per test {args.test_timeout:g} s CPU, {args.nproc} processes per child")
        for kind, runs in got.items():
            seconds = statistics.median(g["seconds"] for g in runs)
            print(f"  {kind:<13} honest points {min(g['points'] for g in runs):g}-{max(g['points'] for g in runs):g}, "
                  f"its children {seconds:6.1f} s ({seconds / alone:.2f}x alone), run wall "
                  f"{statistics.median(g['wall'] for g in runs):6.1f} s")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
