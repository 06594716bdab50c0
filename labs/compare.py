"""Several methods on one task, side by side: `labs compare`.

    rows = run_compare(["full", "lora", "prompt"], "smollm2-135m", task="define", preset="quick")

Each method is fine-tuned by `labs finetune` in a fresh process, so that each peak memory is its
own, with its own learning rate from the registry (labs/methods.py); its output goes to
<method>/run.log. Written into `out/`, each file atomically and again after every method (a method
not run yet has status "not run yet"): <method>/ (that run's folder), compare.csv (raw numbers),
compare.json (the same rows and the settings), compare.md (rounded, for reading) and three plots:
pareto.png (quality vs trainable share), pareto_memory.png (quality vs peak memory) and
learning_forgetting.png.

A method may carry options, joined to its name by ':' (no commas): `lora:use_dora=true`,
`lora:init=pissa:r=16`. Each such entry is its own row, labelled as written, run in the folder of
that label with ':' turned into '+' (lora+use_dora=true), so LoRA and its variants compare side by side.

Resuming: a method whose folder holds a finished run of the same command and the same code (a
hash of labs/ and solutions/) is not run again, so an interrupted comparison picks up where it
stopped. A method whose run fails gets a row with status "failed: <reason>"; `run_compare` then
raises CompareFailed after writing the table, naming every method that failed.
"""
from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import time
from pathlib import Path

from labs.files import write_atomically, write_json

COLUMNS = ("method", "status", "lr", "trainable_params", "trainable_percent", "peak_memory_mib",
           "step_time_median_s", "adapter_bytes", "metric", "before", "after", "score", "gain", "gain_se",
           "learned", "probe_before", "probe_after", "probe_drop", "probe_drop_se", "english_ppl_before",
           "english_ppl_after", "english_loss_rise", "english_loss_rise_se", "english_loss_rise_at_start",
           "english_loss_rise_at_start_se", "english_loss_rise_from_start", "english_loss_rise_from_start_se",
           "forgetting_note", "wall_time_s")
NOT_RUN = "not run yet"
RUN_RECORD = "compare_run.json"   # in a method's folder: the command and code of its finished run


class CompareFailed(RuntimeError):
    """At least one method's run failed; `rows` holds the table as written."""

    def __init__(self, failed: list[dict], rows: list[dict]):
        self.failed, self.rows = failed, rows
        super().__init__("method(s) failed: " + "; ".join(f"{r['method']}: {r['status']}" for r in failed))


def run_compare(methods, model: str = "smollm2-135m", task: str | None = None, preset="quick",
                out: str | Path | None = None, seed: int = 0, progress: bool = True,
                max_steps: int | None = None, impl: str | None = None, lr: float | None = None,
                gradient_checkpointing: bool = False) -> list[dict]:
    """Fine-tune each method on the same task; write the table and plots; return one row per method.

    lr        one learning rate for every method (default: each method's own, from the registry)
    progress  print a line as each method starts and ends, with the time the rest should take
    """
    from labs.finetune import default_out, default_task
    from labs.impl import current_impl
    from labs.methods import get_method, require_finished
    from labs.methods import check_options
    methods = list(methods)
    if len(set(methods)) < len(methods):
        raise ValueError(f"a method is listed twice in {methods}; each gets its own folder")
    impl = impl or current_impl()
    entries = {entry: parse_entry(entry) for entry in methods}
    for method, options in entries.values():  # unknown names, options and open exercises fail before any run
        get_method(method)
        check_options(method, options, impl)
        require_finished(method, impl, options)
    task = task or default_task(model)
    preset_name = preset if isinstance(preset, str) else preset.name
    out = Path(out) if out is not None else default_out("compare", model, task)
    out.mkdir(parents=True, exist_ok=True)
    extra = ["--impl", impl, "--seed", str(seed), "--model", str(model), "--task", task, "--preset", preset_name]
    extra += (["--max-steps", str(max_steps)] if max_steps else []) + (["--lr", str(lr)] if lr else [])
    extra += ["--gradient-checkpointing"] if gradient_checkpointing else []
    settings = {"model": str(model), "task": task, "preset": preset_name, "seed": seed, "impl": impl,
                "max_steps": max_steps, "lr": lr, "gradient_checkpointing": gradient_checkpointing}
    say = print if progress else (lambda *a, **k: None)
    rows = [{"method": m, "status": NOT_RUN} for m in methods]
    clock, ran = time.perf_counter(), 0
    for i, entry in enumerate(methods):
        method, options = entries[entry]
        folder, label = out / entry.replace(":", "+"), f"[{i + 1}/{len(methods)}] {entry}"
        command = ["finetune", "--method", method, "--out", str(folder), "--no-progress", *extra,
                   *[arg for key, value in options.items() for arg in ("--option", f"{key}={value}")]]
        rows[i] = finished_row(folder, command, entry)
        if rows[i] is not None:
            say(f"{label}: reused the finished run in {folder}", flush=True)
        else:
            say(f"{label}: fine-tuning{_time_left(clock, ran, len(methods) - i)}", flush=True)
            rows[i] = _run_one(entry, folder, command)
            ran += 1
            say(f"{label}: {_outcome(rows[i])}", flush=True)
        write_table(rows, out, settings)
    done = [r for r in rows if r["status"] == "ok"]
    if done:
        plot_comparison(done, out)
    say(f"compare: {len(done)} of {len(rows)} methods finished in {time.perf_counter() - clock:.0f} s; "
        f"table in {out / 'compare.md'}", flush=True)
    failed = [r for r in rows if r["status"] != "ok"]
    if failed:
        raise CompareFailed(failed, rows)
    return rows


def _time_left(clock: float, ran: int, remaining: int) -> str:
    """' (about N min left)' from the pace of the methods run so far in this call."""
    if not ran:
        return ""
    return f" (about {(time.perf_counter() - clock) / ran * remaining / 60:.0f} min left at this pace)"


def _outcome(row: dict) -> str:
    if row["status"] != "ok":
        return row["status"]
    return (f"{row['metric']} {row['before']:.4g} -> {row['after']:.4g}, gain {row['gain']:+.3f} "
            f"+- {row['gain_se']:.3f} ({row['wall_time_s']:.0f} s)")


def _code_version() -> str:
    from labs.check import code_fingerprint
    return code_fingerprint()


def parse_entry(entry: str) -> tuple[str, dict[str, str]]:
    """"lora:use_dora=true:r=16" -> ("lora", {"use_dora": "true", "r": "16"}): a method and its options."""
    method, *pairs = entry.split(":")
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ValueError(f"method entry {entry!r}: {pair!r} is not KEY=VALUE; give a method its options "
                             "joined by ':', e.g. lora:use_dora=true or lora:init=pissa:r=16")
        options[key.strip().replace("-", "_")] = value.strip()
    return method.strip(), options


def finished_row(folder: Path, command: list[str], label: str | None = None) -> dict | None:
    """The row of a run in `folder` finished with the same command and code, else None (run it)."""
    record, metrics = folder / RUN_RECORD, folder / "metrics.json"
    if not (record.is_file() and metrics.is_file()):
        return None
    try:
        if json.loads(record.read_text()) != {"command": command, "code": _code_version()}:
            return None
        return {**compare_row(json.loads(metrics.read_text())), **({"method": label} if label else {})}
    except (ValueError, KeyError):
        return None  # a record from another version of the table: run again


def _run_one(method: str, folder: Path, command: list[str]) -> dict:
    """One `labs finetune` in its own process, its output in folder/run.log; its row."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / RUN_RECORD).unlink(missing_ok=True)   # a rerun must not be mistaken for the old one
    log = folder / "run.log"
    code = _launch(command, log)
    if code != 0:
        lines = log.read_text(errors="replace").strip().splitlines() or [f"exit code {code}"]
        return {"method": method, "status": "failed: " + lines[-1][:200] + f" (see {log})"}
    row = {**compare_row(json.loads((folder / "metrics.json").read_text())), "method": method}
    write_json(folder / RUN_RECORD, {"command": command, "code": _code_version()})
    return row


def _launch(command: list[str], log: Path) -> int:
    """`labs <command>` in a fresh process, its output into `log`; its exit code."""
    with log.open("w") as sink:
        return subprocess.run([sys.executable, "-m", "labs", *command], stdout=sink,
                              stderr=subprocess.STDOUT).returncode


def compare_row(metrics: dict) -> dict:
    """One table row from a run's metrics.json."""
    name = next(k for k in metrics["eval_after"] if k != "loss")
    learning, forgot = metrics["learning"], metrics["forgetting"]
    return {"method": metrics["method"], "status": "ok", "lr": metrics["lr"],
            "trainable_params": metrics["trainable_params"], "trainable_percent": metrics["trainable_percent"],
            "peak_memory_mib": metrics["peak_memory_bytes"] / 2 ** 20,
            "step_time_median_s": metrics["step_time_median_s"], "adapter_bytes": metrics["saved_bytes"],
            "metric": name, "before": metrics["eval_before"][name], "after": metrics["eval_after"][name],
            "score": learning["score"], "gain": learning["gain"], "gain_se": learning["se"],
            "learned": learning["learned"],
            "probe_before": metrics.get("probe_before"), "probe_after": metrics.get("probe_after"),
            "probe_drop": forgot.get("probe_drop"), "probe_drop_se": forgot.get("probe_drop_se"),
            "english_ppl_before": forgot.get("english_ppl_before"),
            "english_ppl_after": forgot.get("english_ppl_after"),
            "english_loss_rise": forgot.get("english_loss_rise"),
            "english_loss_rise_se": forgot.get("english_loss_rise_se"),
            **_from_start(metrics), "forgetting_note": forgot.get("note"), "wall_time_s": metrics["wall_time_s"]}


def _from_start(metrics: dict) -> dict:
    """For a method that does not start as the base (QLoRA's quantized base, an untrained prompt or
    prefix): the English loss rise its start already had, and the rise from that start."""
    row = {}
    for when in ("at_start", "from_start"):
        forgot = metrics.get(f"forgetting_{when}") or {}
        row[f"english_loss_rise_{when}"] = forgot.get("english_loss_rise")
        row[f"english_loss_rise_{when}_se"] = forgot.get("english_loss_rise_se")
    return row


def read_comparison(out: str | Path) -> tuple[dict, list[dict], dict[str, dict]]:
    """A comparison as written: its settings, its rows, and each finished method's metrics.json."""
    out = Path(out)
    table = out / "compare.json"
    if not table.is_file():
        raise FileNotFoundError(f"{table} is missing: run `labs compare --out {out}` first")
    written = json.loads(table.read_text())
    runs = {r["method"]: json.loads((out / r["method"].replace(":", "+") / "metrics.json").read_text())
            for r in written["rows"] if r["status"] == "ok"}
    return written["settings"], written["rows"], runs


ROOT = Path(__file__).resolve().parent.parent
RECORDED = ROOT / "notebooks" / "recorded" / "compare-quick"
RECORD_COMMAND = "LABS_IMPL=solutions labs compare --task define --preset quick --out notebooks/recorded/compare-quick"
# What a longer run changes (notebook 12): two methods in the laptop preset, one thread, about 2 h
RECORDED_LAPTOP = ROOT / "notebooks" / "recorded" / "compare-laptop"
RECORD_LAPTOP_COMMAND = ("LABS_IMPL=solutions OMP_NUM_THREADS=1 labs compare --task define --preset laptop "
                         "--methods lora,prompt --out notebooks/recorded/compare-laptop")


def course_comparison(live: bool = False, folder: str | Path | None = None
                      ) -> tuple[Path, dict, list[dict], dict[str, dict]]:
    """The comparison notebooks 11 and 12 read: (folder, settings, rows, each method's metrics).

    By default the recorded one (made by RECORD_COMMAND, about 15 minutes on 2 CPU cores); with
    live=True every method run here on your own modules, in runs/course-compare/<preset>, resumed
    where an earlier run stopped (so the second notebook reuses the first one's runs); or the one
    `labs compare` wrote to `folder`.
    """
    from labs.methods import METHODS
    from labs.presets import get_preset
    if folder is not None:
        return (Path(folder), *read_comparison(folder))
    folder = RECORDED
    if live:
        folder = ROOT / "runs" / "course-compare" / get_preset().name
        run_compare(list(METHODS), "smollm2-135m", task="define", preset=get_preset().name, out=folder)
    return (folder, *read_comparison(folder))


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def write_table(rows: list[dict], out: Path, settings: dict | None = None) -> None:
    """compare.csv (raw numbers), compare.json (rows and settings) and compare.md (rounded)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, restval="")
    writer.writeheader()
    writer.writerows(rows)
    md = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    md += ["| " + " | ".join(_cell(r.get(c)) for c in COLUMNS) + " |" for r in rows]
    write_atomically(out / "compare.csv", buf.getvalue())
    write_json(out / "compare.json", {"settings": settings or {}, "columns": list(COLUMNS), "rows": rows})
    write_atomically(out / "compare.md", "\n".join(md) + "\n")


def plot_comparison(rows: list[dict], out: Path) -> None:
    """pareto.png, pareto_memory.png and (where forgetting was measured) learning_forgetting.png."""
    from labs import viz
    metric = rows[0]["metric"]
    higher = metric == "accuracy"
    quality = f"held-out {metric} after"
    share = {r["method"]: (max(r["trainable_percent"], 1e-6), r["after"]) for r in rows}
    viz.save(viz.pareto(share, y_label=quality, higher_is_better=higher, title=f"Trainable share vs {metric}"),
             out / "pareto.png")
    memory = {r["method"]: (r["peak_memory_mib"], r["after"]) for r in rows}
    viz.save(viz.pareto(memory, x_label="peak training memory (MiB)", y_label=quality, higher_is_better=higher,
                        logx=False, title=f"Peak memory vs {metric}"), out / "pareto_memory.png")
    probed = [r for r in rows if r["probe_drop"] is not None]
    if probed:
        points = {r["method"]: (r["gain"], r["gain_se"], r["probe_drop"], r["probe_drop_se"]) for r in probed}
        viz.save(viz.learning_vs_forgetting(points, x_label=f"learning: {rows[0]['score']} gain on the task",
                                            y_label="forgetting: probe accuracy drop"),
                 out / "learning_forgetting.png")
