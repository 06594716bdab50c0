"""Notebook 15's measurements, longer: rsLoRA, LoRA+, PiSSA, DoRA and all-linear against LoRA.

    LABS_IMPL=solutions python benchmarks/lora_variants.py --preset laptop --out notebooks/recorded/lora-variants-laptop
    LABS_IMPL=solutions python benchmarks/lora_variants.py --preset quick --ranks 4,64 --out /tmp/lora-variants   # a smoke run

Every run is labs.lora_experiments.run_variant on the implementation LABS_IMPL selects (solutions:
the reference; otherwise your own labs/ modules): a fresh copy of
SmolLM2-135M, the same batches in the same order, the same held-out definitions, so every pair of
runs is compared example by example (paired standard error). The runs:

    LoRA and rsLoRA at each rank of --ranks (alpha fixed at 16): gain and the update's size against r
    LoRA+ at lambda 4 and 16 (lambda 1 is the LoRA run at r = 16)
    PiSSA at r = 16: the training loss over the first steps, and the gain
    DoRA at r = 16: gain, median step time, peak memory of a step
    all linear layers at the rank that trains as many numbers as q, v at r = 16

Each finished run is saved as <out>/runs/<name>.json, so an interrupted recording resumes where it
stopped (delete the folder to start again); the table is written to <out>/lora_variants.md and
<out>/lora_variants.json after every run. Step times are medians within a run; compare them only
between runs of one recording on one machine. Takes about (2 x ranks + 5) runs of the preset's
steps: on one thread roughly 25 s per quick run, 4-8 min per laptop run (more at large ranks).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

R, ALPHA = 16, 16


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="laptop")
    p.add_argument("--ranks", default="4,16,64,256", help="comma-separated ranks for LoRA against rsLoRA")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default: the preset's)")
    p.add_argument("--n-eval", type=int, default=None, help="held-out examples (default: the preset's)")
    p.add_argument("--out", default="notebooks/recorded/lora-variants-laptop")
    return p.parse_args(argv)


def file_stem(name: str) -> str:
    """A plain-ASCII file name for a run: "LoRA+ λ=4" -> "LoRAplus_lambda4"."""
    return name.replace("+", "plus").replace(" ", "_").replace("λ=", "lambda").replace("=", "")


def plan(ranks: list[int], r_all: int) -> dict[str, dict]:
    """Run name -> run_variant keyword arguments."""
    from labs.lora_experiments import ALL_LINEAR, QV
    runs = {}
    for r in sorted(set(ranks) | {R}):
        runs[f"LoRA r={r}"] = dict(r=r, alpha=ALPHA, target_modules=QV, measure_memory=r == R)
        runs[f"rsLoRA r={r}"] = dict(r=r, alpha=ALPHA, target_modules=QV, use_rslora=True)
    for ratio in (4, 16):
        runs[f"LoRA+ λ={ratio}"] = dict(r=R, alpha=ALPHA, target_modules=QV, loraplus_ratio=float(ratio))
    runs["PiSSA"] = dict(r=R, alpha=ALPHA, target_modules=QV, init="pissa")
    runs["DoRA"] = dict(r=R, alpha=ALPHA, target_modules=QV, use_dora=True, measure_memory=True)
    runs["all-linear"] = dict(r=r_all, alpha=ALPHA * r_all / R, target_modules=ALL_LINEAR)
    return runs


def table(results: dict, ranks: list[int]) -> str:
    """The recording's verdicts as markdown: each run against its LoRA counterpart, paired."""
    from labs.lora_experiments import Run, verdict
    runs = {name: Run(**row) for name, row in results.items()}
    ref = runs.get(f"LoRA r={R}")
    lines = ["| run | trainable | gain ± SE | update norm | step s | peak MiB | against | paired diff ± SE | verdict |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, run in runs.items():
        against = f"LoRA r={name.split('=')[1]}" if name.startswith("rsLoRA") else f"LoRA r={R}"
        other = runs.get(against) if name != against else None
        paired = said = ""
        if other is not None:
            d, s, said = verdict(run, other)
            paired = f"{d:+.3f} ± {s:.3f}"
        peak = f"{run.peak_bytes / 2**20:.0f}" if run.peak_bytes else ""
        lines.append(f"| {name} | {run.trainable:,} | {run.gain:+.3f} ± {run.gain_se:.3f} | {run.update_norm:.3f} | "
                     f"{run.step_time:.2f} | {peak} | {against if other else ''} | {paired} | {said} |")
    if ref is not None and "PiSSA" in runs:
        first = min(10, len(ref.losses))
        lines += ["", f"Training loss over the first {first} steps (same batches):", "",
                  "| step | " + " | ".join(str(i + 1) for i in range(first)) + " |",
                  "|---|" + "---|" * first]
        for name in (f"LoRA r={R}", "PiSSA"):
            lines.append(f"| {name} | " + " | ".join(f"{x:.2f}" for x in runs[name].losses[:first]) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    import torch

    from labs.files import write_atomically, write_json
    from labs.lora_experiments import ALL_LINEAR, QV, equal_budget_rank, make_setup, run_variant
    args = parse_args(argv)
    torch.set_num_threads(1)
    ranks = [int(r) for r in args.ranks.split(",") if r.strip()]
    out = Path(args.out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    setup = make_setup("smollm2-135m", "define", args.preset, n_eval=args.n_eval, steps=args.steps)
    command = "python benchmarks/lora_variants.py " + " ".join(sys.argv[1:] if argv is None else argv)
    results = {}
    for name, kwargs in plan(ranks, equal_budget_rank(setup.base, ALL_LINEAR, QV, R)).items():
        path = out / "runs" / f"{file_stem(name)}.json"
        if path.is_file():
            results[name] = json.loads(path.read_text())
            print(f"{name}: reused {path}", flush=True)
            continue
        clock = time.perf_counter()
        run = run_variant(setup, name, **kwargs)
        results[name] = {k: v for k, v in dataclasses.asdict(run).items() if k != "model"}
        write_json(path, results[name])
        print(f"{name}: gain {run.gain:+.3f} ± {run.gain_se:.3f}, {time.perf_counter() - clock:.0f} s", flush=True)
        settings = {"command": command, "preset": setup.preset.name, "steps": setup.steps,
                    "batch_size": setup.batch_size, "seq_len": setup.preset.seq_len,
                    "n_eval": len(setup.eval_examples), "torch_threads": torch.get_num_threads()}
        write_json(out / "lora_variants.json", {"settings": settings, "runs": results})
        write_atomically(out / "lora_variants.md", f"`{command}`\n\n{json.dumps(settings)}\n\n" + table(results, ranks))
    print(table(results, ranks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
