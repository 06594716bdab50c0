"""How the registry's learning rates are chosen: held-out loss after one preset's run, per rate.

    python benchmarks/lr_sweep.py --methods prefix,prompt --lrs 2e-3,1e-2,3e-2
    python benchmarks/lr_sweep.py --preset laptop --methods lora --lrs 3e-4,1e-3,3e-3

Each (method, rate) is one `labs finetune` run of the reference implementation on the same model,
task, data and seed, in its own process (so runs do not share memory or threads). The table gives
the held-out loss before and after, and marks each method's best rate; labs/methods.py records the
rates chosen, and the registry issue's closing note the figures. A rate that diverges shows as a
loss above the starting one. Takes about (methods x rates) quick runs: ~1.5 minutes each on 2 idle cores.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", default="bitfit,adapter,lora,prefix,prompt", help="comma-separated methods")
    p.add_argument("--lrs", default="1e-3,3e-3,1e-2,3e-2", help="comma-separated learning rates")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--task", default="define")
    p.add_argument("--preset", default="quick")
    p.add_argument("--max-steps", type=int, default=None, help="override the preset's steps")
    return p.parse_args(argv)


def run(method: str, lr: float, args, out: Path) -> dict:
    cmd = [sys.executable, "-m", "labs", "finetune", "--method", method, "--lr", str(lr), "--impl", "solutions",
           "--model", args.model, "--task", args.task, "--preset", args.preset, "--out", str(out), "--no-progress"]
    cmd += ["--max-steps", str(args.max_steps)] if args.max_steps else []
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    metrics = json.loads((out / "metrics.json").read_text())
    return {"before": metrics["eval_before"]["loss"], "after": metrics["eval_after"]["loss"]}


def main(argv=None) -> None:
    args = parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    lrs = [float(x) for x in args.lrs.split(",") if x.strip()]
    print(f"{args.model} on {args.task}, preset {args.preset}: held-out loss after training")
    with tempfile.TemporaryDirectory() as tmp:
        for method in methods:
            results = {lr: run(method, lr, args, Path(tmp) / f"{method}-{lr:g}") for lr in lrs}
            done = {lr: r["after"] for lr, r in results.items() if "after" in r}
            best = min(done, key=done.get) if done else None
            for lr, r in results.items():
                text = r.get("error") or f"{r['before']:.3f} -> {r['after']:.3f}"
                print(f"  {method:>8}  lr {lr:<8g} {text}{'   <- best' if lr == best else ''}", flush=True)


if __name__ == "__main__":
    main()
