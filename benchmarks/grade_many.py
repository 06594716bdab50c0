"""Wall time of `labs grade` on N submissions, for this checkout and (side by side) another one.

    python benchmarks/grade_many.py --n 10                          # this checkout only
    python benchmarks/grade_many.py --n 10 --baseline /path/to/old  # the same class, both checkouts
    python benchmarks/grade_many.py --n 100 --jobs 2 --repeats 2 --baseline /path/to/old

The class is built once, in a temporary folder, from this checkout's reference (so it needs
solutions/): N honest copies of the reference (every exercise done), or with --mix a few
broken ones among them (an endless loop in one exercise, a syntax error, an untouched stub).
Each checkout runs `python -m labs grade CLASS --out OUT --jobs J` from its own folder, with its
own labs package; runs alternate between the checkouts (A B A B ...) so that both see the same
load. Printed: each run's wall time and what it graded (rows ok, points), then per checkout the
median wall time and the ratio to the baseline's, measured in this same invocation.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BEGIN = re.compile(r"^(?P<indent>\s*)# BEGIN SOLUTION (?P<id>\d+\.\d+)\s*$")
END = re.compile(r"^\s*# END SOLUTION\s*$")


def reference(name: str, loop: bool = False) -> str:
    """labs/<name>.py with every exercise done: the reference without its solution markers (loop:
    its first exercise starts with an endless loop)."""
    out = []
    for line in (ROOT / "solutions" / f"{name}.py").read_text().splitlines(True):
        begin = BEGIN.match(line)
        if begin and loop:
            out.append(f"{begin['indent']}while True:\n{begin['indent']}    pass\n")
            loop = False
        elif not begin and not END.match(line):
            out.append(line)
    return "".join(out)


def make_class(base: Path, n: int, mix: bool) -> None:
    techniques = sorted(p.stem for p in (ROOT / "solutions").glob("*.py") if p.stem != "__init__")
    honest = {t: reference(t) for t in techniques}
    for i in range(n):
        modules = dict(honest)
        if mix and i % 5 == 4:  # one in five spoiled in one way, in one module
            how, name = ("loop", "syntax", "stub")[(i // 5) % 3], techniques[i % len(techniques)]
            modules[name] = {"loop": reference(name, loop=True), "syntax": modules[name] + "\ndef oops(:\n",
                             "stub": (ROOT / "labs" / f"{name}.py").read_text()}[how]
        (base / f"s{i:03d}" / "labs").mkdir(parents=True)
        for name, text in modules.items():
            (base / f"s{i:03d}" / "labs" / f"{name}.py").write_text(text)


def run_once(code: Path, klass: Path, out: Path, args) -> dict:
    python = code / ".venv" / "bin" / "python"
    command = [str(python if python.exists() else Path(sys.executable)), "-m", "labs", "grade", str(klass),
               "--out", str(out), "--jobs", str(args.jobs), "--timeout", str(args.timeout),
               "--test-timeout", str(args.test_timeout)] + (["--no-sandbox"] if args.no_sandbox else [])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    started = time.monotonic()
    done = subprocess.run(command, cwd=code, env=env, capture_output=True, text=True)
    wall = time.monotonic() - started
    rows = list(csv.DictReader((out / "grades.csv").open())) if (out / "grades.csv").is_file() else []
    if done.returncode != 0 or not rows:
        print(done.stderr[-2000:], file=sys.stderr)
    top = max((float(r["total"]) for r in rows), default=0.0)
    for row in rows:  # an honest copy below the best: say which tests it lost, and why
        if float(row["total"]) < top:
            results = out / "students" / row["student"] / "results.json"
            lost = [t for t in json.loads(results.read_text())["tests"] if t["score"] < t["max_score"]] \
                if results.is_file() else []
            print(f"  {row['student']} scored {row['total']} of {top:g}: "
                  + "; ".join(f"{t['name']}: {t.get('output', '')[:200]}" for t in lost[:3]), flush=True)
    return {"wall": wall, "rows": len(rows), "ok": sum(r["status"] == "ok" for r in rows),
            "points": sum(float(r["total"]) for r in rows), "sandbox": rows[0]["sandbox"] if rows else "?",
            "rc": done.returncode}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10, help="submissions (default 10)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1, help="runs per checkout (alternating)")
    parser.add_argument("--baseline", type=Path, default=None,
                        help="another checkout (its own .venv or this Python) to time on the same class")
    parser.add_argument("--mix", action="store_true", help="one submission in five spoiled (loop, syntax, stub)")
    parser.add_argument("--no-sandbox", action="store_true")
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--test-timeout", type=float, default=20.0)
    args = parser.parse_args()
    if not (ROOT / "solutions").is_dir():
        print("this benchmark builds its class from solutions/: run it in the instructor's checkout")
        return 2
    checkouts = [("this", ROOT)] + ([("baseline", args.baseline.resolve())] if args.baseline else [])
    work = Path(tempfile.mkdtemp(prefix="grade-many-"))
    try:
        make_class(work / "class", args.n, args.mix)
        walls: dict[str, list[float]] = {name: [] for name, _ in checkouts}
        for r in range(args.repeats):
            order = checkouts if r % 2 == 0 else checkouts[::-1]
            for name, code in order:
                out = work / f"out-{name}-{r}"
                got = run_once(code, work / "class", out, args)
                walls[name].append(got["wall"])
                print(f"run {r + 1} {name:<8} {code}: {got['wall']:7.1f} s wall, {got['rows']} rows, {got['ok']} ok, "
                      f"{got['points']:g} points, sandbox {got['sandbox']}, exit {got['rc']}", flush=True)
                shutil.rmtree(out, ignore_errors=True)
        load = os.getloadavg()
        print(f"\n{args.n} submissions ({'mixed' if args.mix else 'honest copies of the reference'}), --jobs {args.jobs}, "
              f"{'no sandbox' if args.no_sandbox else 'sandbox where it works'}, {os.cpu_count()} cores, "
              f"load {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}")
        base = statistics.median(walls["baseline"]) if "baseline" in walls else None
        for name, code in checkouts:
            median = statistics.median(walls[name])
            ratio = f", {median / base:.2f}x the baseline" if base else ""
            print(f"  {name:<8} median {median:7.1f} s ({median / args.n:.2f} s per submission){ratio}  [{code}]")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
