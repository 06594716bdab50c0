"""Several methods on one task, side by side: `labs compare`.

    rows = run_compare(["full", "lora", "prompt"], "smollm2-135m", task="define", preset="quick")

Each method is fine-tuned by `labs finetune` in a fresh process, so that each peak memory is its
own, with its own learning rate from the registry (labs/methods.py). Written into `out/`, each
file atomically: <method>/ (that run's folder), compare.csv (raw numbers), compare.md (rounded,
for reading) and pareto.png (trainable share against the held-out metric). A method whose run
fails gets a row with status "failed: <reason>"; `run_compare` then raises CompareFailed after
writing the table, naming every method that failed.
"""
from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

from labs.files import write_atomically

COLUMNS = ("method", "lr", "trainable_params", "trainable_percent", "metric", "before", "after",
           "probe_before", "probe_after", "peak_memory_mib", "step_time_median_s", "saved_mib", "status")


class CompareFailed(RuntimeError):
    """At least one method's run failed; `rows` holds the table as written."""

    def __init__(self, failed: list[dict], rows: list[dict]):
        self.failed, self.rows = failed, rows
        super().__init__("method(s) failed: " + "; ".join(f"{r['method']}: {r['status']}" for r in failed))


def run_compare(methods, model: str = "smollm2-135m", task: str | None = None, preset="quick",
                out: str | Path | None = None, seed: int = 0, progress: bool = True,
                max_steps: int | None = None, impl: str | None = None, lr: float | None = None,
                gradient_checkpointing: bool = False) -> list[dict]:
    """Fine-tune each method on the same task; write the table and plot; return one row per method.

    lr  one learning rate for every method (default: each method's own, from the registry)
    """
    from labs.finetune import default_out, default_task
    from labs.impl import current_impl
    from labs.methods import get_method, require_finished
    methods = list(methods)
    if len(set(methods)) < len(methods):
        raise ValueError(f"a method is listed twice in {methods}; each gets its own folder")
    impl = impl or current_impl()
    for method in methods:  # unknown names and unfinished exercises fail before any run starts
        get_method(method)
        require_finished(method, impl)
    task = task or default_task(model)
    preset_name = preset if isinstance(preset, str) else preset.name
    out = Path(out) if out is not None else default_out("compare", model, task)
    out.mkdir(parents=True, exist_ok=True)
    extra = ["--impl", impl, "--seed", str(seed), "--model", model, "--task", task, "--preset", preset_name]
    extra += (["--max-steps", str(max_steps)] if max_steps else []) + (["--lr", str(lr)] if lr else [])
    extra += [] if progress else ["--no-progress"]
    extra += ["--gradient-checkpointing"] if gradient_checkpointing else []
    rows = [_run_one(m, out / m, extra, progress) for m in methods]
    write_table(rows, out)
    done = [r for r in rows if r["status"] == "ok"]
    if done:
        _pareto_plot(done, out)
    failed = [r for r in rows if r["status"] != "ok"]
    if failed:
        raise CompareFailed(failed, rows)
    return rows


def _run_one(method: str, out: Path, extra: list[str], progress: bool) -> dict:
    cmd = [sys.executable, "-m", "labs", "finetune", "--method", method, "--out", str(out), *extra]
    proc = subprocess.run(cmd, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"]
        if progress:
            print(f"{method}: {lines[-1]}", file=sys.stderr)
        return {"method": method, "status": "failed: " + lines[-1][:200]}
    return compare_row(json.loads((out / "metrics.json").read_text()))


def compare_row(metrics: dict) -> dict:
    """One table row from a run's metrics.json."""
    name = next(k for k in metrics["eval_after"] if k != "loss")
    return {"method": metrics["method"], "lr": metrics["lr"], "trainable_params": metrics["trainable_params"],
            "trainable_percent": metrics["trainable_percent"], "metric": name,
            "before": metrics["eval_before"][name], "after": metrics["eval_after"][name],
            "probe_before": metrics.get("probe_before"), "probe_after": metrics.get("probe_after"),
            "peak_memory_mib": metrics["peak_memory_bytes"] / 2 ** 20,
            "step_time_median_s": metrics["step_time_median_s"],
            "saved_mib": metrics["saved_bytes"] / 2 ** 20, "status": "ok"}


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def write_table(rows: list[dict], out: Path) -> None:
    """compare.csv (raw numbers) and compare.md (rounded, for reading)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, restval="")
    writer.writeheader()
    writer.writerows(rows)
    md = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    md += ["| " + " | ".join(_cell(r.get(c)) for c in COLUMNS) + " |" for r in rows]
    write_atomically(out / "compare.csv", buf.getvalue())
    write_atomically(out / "compare.md", "\n".join(md) + "\n")


def _pareto_plot(rows: list[dict], out: Path) -> None:
    from labs import viz
    metric = rows[0]["metric"]
    points = {r["method"]: (max(r["trainable_percent"], 1e-6), r["after"]) for r in rows}
    fig = viz.pareto(points, y_label=f"held-out {metric} after", higher_is_better=metric == "accuracy",
                     title=f"Trainable share vs {metric}")
    viz.save(fig, out / "pareto.png")
