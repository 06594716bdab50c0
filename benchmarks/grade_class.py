"""How long `labs grade` takes for a class: 100 generated submissions on 2 cores, every limit on.

    python benchmarks/grade_class.py                  # 100 submissions, 2 jobs
    python benchmarks/grade_class.py --n 20 --jobs 2  # a quicker look
    python benchmarks/grade_class.py --no-sandbox     # the same class without bubblewrap: its cost

The class is generated from the reference (so it needs the instructor's checkout), seeded:
- correct    every exercise filled in from solutions/
- partial    each exercise done with probability 1/2
- untouched  the stubs as generated (these modules are not run at all)
- broken     a correct submission with one thing wrong: a syntax error, an endless loop in one
             exercise, a memory bomb, a refused import, peft in a from-scratch exercise, or a
             module missing
- malformed  an empty zip or a corrupt one

Printed: the wall time from start to grades.csv, the part spent starting the test runner and
collecting the tests (paid once per run), per submission the median and spread of the time its
test processes ran, by kind, whether the children ran in the sandbox, and the load average (on a
shared machine, compare runs made under similar load), and the CPU time all grading processes used
(what the class costs whatever else runs).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import re
import shutil
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from labs.instructor.grade import Course, Limits, grade  # noqa: E402

BEGIN = re.compile(r"^(?P<indent>\s*)# BEGIN SOLUTION (?P<id>\d+\.\d+)\s*$")
END = re.compile(r"^\s*# END SOLUTION\s*$")
KINDS = (("correct", 0.35), ("partial", 0.30), ("untouched", 0.10), ("broken", 0.20), ("malformed", 0.05))
SPOILERS = {"loop": "while True:\n    pass\n", "memory": "hog = bytearray(64 * 2**30)\n",
            "peft": "import peft\n", "exit": "raise SystemExit(1)\n"}


def filled(name: str, done, inject: dict[str, str] | None = None) -> str:
    """The stub of `name` with the exercises `done(id)` filled in from the reference; `inject`
    puts extra lines at the top of some exercise bodies."""
    raises = [line for line in (ROOT / "labs" / f"{name}.py").read_text().splitlines(True)
              if 'raise NotImplementedError("Exercise' in line]
    out, current, k = [], None, 0
    for line in (ROOT / "solutions" / f"{name}.py").read_text().splitlines(True):
        begin = BEGIN.match(line)
        if begin:
            current = begin["id"]
            extra = (inject or {}).get(current, "")
            out += [begin["indent"] + x + "\n" for x in extra.splitlines()]
            if not done(current):
                out.append(raises[k])
            k += 1
        elif current and END.match(line):
            current = None
        elif current is None or done(current):
            out.append(line)
    return "".join(out)


def exercises_of(name: str) -> list[str]:
    return [m.group("id") for m in map(BEGIN.match, (ROOT / "solutions" / f"{name}.py").read_text().splitlines()) if m]


def break_one(modules: dict[str, str], rng: random.Random) -> str:
    """Spoil one module of a correct submission in one of the usual ways; return how."""
    name = rng.choice(sorted(modules))
    how = rng.choice(["syntax", "import", "missing", *SPOILERS])
    if how == "syntax":
        modules[name] += "\ndef oops(:\n"
    elif how == "missing":
        del modules[name]
    elif how == "import":
        modules[name] = "import os\n" + modules[name]
    else:
        exercise = rng.choice(exercises_of(name))
        modules[name] = filled(name, lambda ex: True, {exercise: SPOILERS[how]})
        return f"{name} {exercise}: {how}"
    return f"{name}: {how}"


def make_class(base: Path, n: int, seed: int) -> dict[str, str]:
    """Write n submissions under base; return student -> kind."""
    rng = random.Random(seed)
    techniques = sorted(p.stem for p in (ROOT / "solutions").glob("*.py") if p.stem != "__init__")
    kinds = {}
    for i in range(n):
        kind = rng.choices([k for k, _ in KINDS], [w for _, w in KINDS])[0]
        student = f"s{i:03d}-{kind}"
        kinds[student] = kind
        if kind == "malformed":
            path = base / f"{student}.zip"
            if rng.random() < 0.5:
                zipfile.ZipFile(path, "w").close()
            else:
                path.write_bytes(b"PK\x03\x04 truncated upload")
            continue
        chosen = {ex for t in techniques for ex in exercises_of(t)
                  if kind in ("correct", "broken") or kind == "partial" and rng.random() < 0.5}
        modules = {t: filled(t, chosen.__contains__) for t in techniques}
        if kind == "broken":
            kinds[student] += f" ({break_one(modules, rng)})"
        (base / student / "labs").mkdir(parents=True)
        for name, text in modules.items():
            (base / student / "labs" / f"{name}.py").write_text(text)
    return kinds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100, help="submissions (default 100)")
    parser.add_argument("--jobs", type=int, default=2, help="test processes at once (default 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=Limits.timeout)
    parser.add_argument("--test-timeout", type=float, default=Limits.test_timeout)
    parser.add_argument("--no-sandbox", action="store_true",
                        help="grade without the bubblewrap sandbox (to measure what it costs)")
    args = parser.parse_args()
    if not (ROOT / "solutions").is_dir():
        print("this benchmark builds its class from solutions/: run it in the instructor's checkout")
        return 2
    limits = Limits(timeout=args.timeout, test_timeout=args.test_timeout)
    work = Path(tempfile.mkdtemp(prefix="grade-class-"))
    try:
        (work / "class").mkdir()
        kinds = make_class(work / "class", args.n, args.seed)
        marks: dict[str, float] = {}
        started = time.monotonic()

        def progress(line: str) -> None:
            marks.setdefault("ready" if line.startswith("ready:") else "first", time.monotonic() - started)
            print(line, flush=True)

        rows = grade(sorted((work / "class").iterdir()), work / "out", limits, args.jobs,
                     course=Course.load(ROOT), progress=progress, sandbox="off" if args.no_sandbox else "auto")
        wall = time.monotonic() - started
        report(rows, kinds, work / "out", wall, marks.get("ready", 0.0), args)
        load, used = os.getloadavg(), resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = used.ru_utime + used.ru_stime  # the test runner and every child, whatever else ran
        print(f"sandbox: {(work / 'out' / 'grades.csv').read_text().splitlines()[1].rsplit(',', 1)[-1]}; "
              f"load average at the end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1/5/15 min)")
        print(f"CPU time of the grading processes: {cpu:.0f} s ({used.ru_utime:.0f} user + {used.ru_stime:.0f} "
              f"system): on {args.jobs} otherwise idle cores at least {cpu / args.jobs / 60:.1f} min")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def report(rows, kinds: dict[str, str], out: Path, wall: float, ready: float, args) -> None:
    seconds = {s: json.loads((out / "students" / s / "results.json").read_text())["execution_time"] for s, _, _ in rows}
    print(f"\n{len(rows)} submissions, {args.jobs} jobs, {os.cpu_count()} cores, "
          f"timeout {args.timeout:g} s per module, {args.test_timeout:g} s per test")
    print(f"wall time, start to grades.csv: {wall:.1f} s ({wall / 60:.1f} min; goal: under 10 min for 100)")
    print(f"  of which starting the test runner and collecting the tests: {ready:.1f} s (once per run)")
    print(f"  per submission, wall: {(wall - ready) / max(len(rows), 1):.2f} s on average with {args.jobs} jobs")
    print("test-process seconds per submission (the sum over its modules), by kind:")
    for kind in [k for k, _ in KINDS]:
        values = [seconds[s] for s in seconds if kinds.get(s, "").startswith(kind)]
        if values:
            print(f"  {kind:<10} n={len(values):<3} median {statistics.median(values):6.2f} s   "
                  f"min {min(values):6.2f}   max {max(values):6.2f}")
    every = list(seconds.values())
    print(f"  {'all':<10} n={len(every):<3} median {statistics.median(every):6.2f} s   total {sum(every):.0f} s")
    slow = sorted(seconds, key=seconds.get, reverse=True)[:3]
    print("slowest: " + ", ".join(f"{s} [{kinds.get(s, '')}] {seconds[s]:.1f} s" for s in slow))


if __name__ == "__main__":
    sys.exit(main())
