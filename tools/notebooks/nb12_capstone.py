"""Build notebooks/12_capstone.ipynb (committed without outputs).

    python tools/notebooks/nb12_capstone.py
"""
from __future__ import annotations

from nbtools import ROOT, main

OUT = ROOT / "notebooks" / "12_capstone.ipynb"

CELLS = [
    ("md", r"""
# 12 · Capstone: every method side by side, and when to use which

One model (SmolLM2-135M), one task (WordNet definitions), one preset, and every method of the course:
full fine-tuning, BitFit, bottleneck adapters, LoRA, prefix tuning, prompt tuning and QLoRA, each with
its own learning rate from the registry (`labs/methods.py`). One command runs them all, each in its
own process so that each peak memory is its own:

    labs compare --task define --preset quick --out runs/compare

It writes one table (`compare.csv`, `compare.json`, `compare.md`) with, per method: trainable
parameters, peak memory, step time, bytes on disk, task quality before and after with the paired
gain and its standard error, forgetting before and after (notebook 11), and the learning rate used;
and three plots. It prints its progress, resumes an interrupted run without redoing finished
methods, rewrites the table whole after each method, and exits non-zero, naming them, if any failed.

As in notebook 11, the numbers come from a recorded run (the command is printed below); `LIVE = True`
runs it on your own modules (if you ran notebook 11 live, this reuses those runs)."""),
    ("code", r"""
from pathlib import Path

from IPython.display import Image, Markdown

from labs.compare import RECORD_COMMAND, RECORDED, course_comparison, plot_comparison
from labs.prerequisites import prerequisites
from labs.presets import get_preset

prerequisites({"the recorded comparison (LIVE = False)": ["full"],
               "LIVE = True: every method run on your modules": ["bitfit", "adapter", "lora", "prefix", "prompt", "qlora"]})
LIVE = False    # True: run the comparison yourself, on your modules (about 15 min on 2 cores; resumes)
FOLDER = None   # or a folder that `labs compare` wrote, such as "../runs/compare-laptop"
folder, settings, rows, runs = course_comparison(LIVE, FOLDER)
if folder == RECORDED:
    print("recorded with:", RECORD_COMMAND)
print(f"{settings['model']} on {settings['task']}, {settings['preset']} preset; recorded in {folder}")
wall = sum(m["wall_time_s"] for m in runs.values())
print(f"{len(runs)} of {len(rows)} methods finished; their runs took {wall / 60:.0f} min in all")
Markdown((folder / "compare.md").read_text())"""),
    ("md", r"""
**What each column averages over** (they are not in one unit):
- `before`, `after`: held-out **perplexity**, $e^{\text{loss}}$ with the loss pooled over every answer token
  of every held-out definition (a long answer weighs more);
- `gain`, `gain_se`: the held-out **loss** (not perplexity) each definition lost, averaged per
  definition (each definition's mean loss per token, before minus after), with its paired standard
  error; so a perplexity going 137.8 -> 20.7 (log ratio 1.90) sits beside a gain of 2.3: different
  averages, not a contradiction;
- `probe_*`: accuracy over the probe's questions, right or wrong each; `probe_drop` positive = forgotten;
- `english_*`: perplexity and loss on fixed windows of Austen's prose, averaged per window (each
  window's mean loss per token); `english_loss_rise` positive = forgotten. For QLoRA, prefix and prompt
  tuning, which do not start as the base, `english_loss_rise_at_start` is what the prepared model
  had lost before any training, and `english_loss_rise_from_start` what training added;
- `peak_memory_mib`: the process's peak resident memory while training, which includes Python, torch
  and the model itself (it is not the training's own share: notebook 09 splits it)."""),
    ("md", r"""
## 1. Did every method learn?

A method learned if its paired gain on the held-out definitions (loss per example, before minus
after) is larger than its standard error; "clearly" if larger than two."""),
    ("code", r"""
ok = [r for r in rows if r["status"] == "ok"]
for r in ok:
    z = r["gain"] / r["gain_se"]
    verdict = "clearly learned" if z > 2 else "learned" if z > 1 else "NOT beyond its standard error"
    print(f"{r['method']:<8} lr {r['lr']:<8.0e} loss gain {r['gain']:+.3f} ± {r['gain_se']:.3f}  "
          f"({z:5.1f} standard errors): {verdict};  perplexity {r['before']:.1f} -> {r['after']:.1f}")
not_learned = [r["method"] for r in ok if not r["learned"]]
print("every method learned beyond its standard error" if not not_learned else f"did not learn: {not_learned}")"""),
    ("md", r"""
## 2. Three views of the trade-off

Quality after training against the share of parameters trained (log scale), against peak training
memory, and learning against forgetting (probe; error bars are one standard error). The dashed line
is the Pareto front: no method off it is both cheaper and better than one on it."""),
    ("code", r"""
import tempfile
with tempfile.TemporaryDirectory(prefix="nb12-") as folder:   # removed as the cell ends, even on an error
    plots = Path(folder)
    plot_comparison(ok, plots)
    for name in ("pareto.png", "pareto_memory.png", "learning_forgetting.png"):
        display(Image(filename=str(plots / name)))     # the image is copied into the notebook"""),
    ("md", r"""
## 3. A decision guide, from these measurements

Each line below is computed from the table: the method that wins one criterion among the methods that
learned. The guide is only as good as the run behind it: one seed, a quick preset, a 135M model."""),
    ("code", r"""
learned = {r["method"]: r for r in ok if r["learned"]}
full = learned.get("full") or next(r for r in ok if r["method"] == "full")

def best(key, higher=False, pool=learned):
    return (max if higher else min)(pool.values(), key=lambda r: r[key])

quality = best("after")
memory = best("peak_memory_mib")
storage = best("adapter_bytes")
speed = best("step_time_median_s")
near_full = {n: r for n, r in learned.items() if n != "full" and r["after"] <= 1.1 * full["after"]}
guide = [
    f"- **Best quality, cost no object:** {quality['method']} (perplexity {quality['after']:.1f}; full fine-tuning "
    f"{full['after']:.1f}).",
    f"- **Least memory while training:** {memory['method']} ({memory['peak_memory_mib']:,.0f} MiB peak against "
    f"{full['peak_memory_mib']:,.0f} MiB for full fine-tuning).",
    f"- **Many tasks on one base, smallest files:** {storage['method']} ({storage['adapter_bytes'] / 1e3:,.1f} kB per "
    f"task against {full['adapter_bytes'] / 1e6:,.0f} MB for a full copy).",
    f"- **Fastest steps:** {speed['method']} ({speed['step_time_median_s']:.2f} s against "
    f"{full['step_time_median_s']:.2f} s).",
    "- **Within 10% of full fine-tuning's perplexity:** "
    + (", ".join(f"{n} ({r['trainable_percent']:.3f}% trained)" for n, r in near_full.items()) or "none in this run") + ".",
]
if "qlora" in runs:
    q = runs["qlora"]
    guide.append(f"- **A model too big for your GPU:** qlora holds the base at {q['base_bits_per_param']:.1f} bits per "
                 f"parameter as loaded here (the quantized layers at about 4.1; notebook 08) and trains LoRA on top.")
from labs.memory_scaling import CONSUMER_GPU_GB, largest_trainable
fits = {m: largest_trainable(m, CONSUMER_GPU_GB) for m in ("full", "lora-fp32", "lora-bf16", "qlora")}
guide.append(f"- **The largest model a {CONSUMER_GPU_GB:g} GB card trains** (notebook 08's memory-against-size recording): "
             + "; ".join(f"{m} {f['size']} ({f['gb']:.1f} GB, {f['source']})" if f else f"{m}: none recorded"
                         for m, f in fits.items())
             + ". At 135M QLoRA saves nothing that matters; it is the method that reaches the largest base.")
from labs.forgetting import RECORDED as FORGETTING, compare_at, load_runs, verdict_line
f_base, f_runs = load_runs(FORGETTING)
keeps = compare_at(f_base, f_runs["lora r=8"], f_runs["full 5e-5"], "english")
guide.append("- **Keep general English:** not decided by this table (on definitions, training *improves* the English "
             "instrument: transfer, notebook 11). From notebook 11's forgetting experiment, "
             + verdict_line("LoRA r=8", "full fine-tuning", keeps, "english") + ".")
Markdown("\n".join(guide))"""),
    ("md", r"""
General advice, with this run's evidence printed beneath each: check it against the figures, and
where your own run disagrees, trust your run.

- **LoRA** is the usual starting point: files of a few MB, a fraction of full fine-tuning's memory, it
  merges into the base for serving at no extra latency (notebook 10), and the tooling (peft, QLoRA)
  is built around it. How far its quality is from full fine-tuning's is printed below.
- **QLoRA** when the frozen base does not fit in memory at 16 bits: 4-bit storage costs time per step
  (the weights are rebuilt in every forward and backward); compare its quality with LoRA's at the
  same rank below.
- **Prompt tuning and BitFit** when storage per task must be tiny; prompt tuning also lengthens every
  row (notebook 09 measures that cost).
- **Full fine-tuning** when memory, storage and forgetting do not matter, and always as the baseline."""),
    ("code", r"""
def row(name):
    return next((r for r in ok if r["method"] == name), None)

lora_r, qlora_r = row("lora"), row("qlora")
if lora_r:
    print(f"LoRA : perplexity {lora_r['after']:.1f} vs full {full['after']:.1f}; file {lora_r['adapter_bytes'] / 1e6:.2f} MB "
          f"vs {full['adapter_bytes'] / 1e6:.0f} MB; peak memory {lora_r['peak_memory_mib'] / full['peak_memory_mib']:.0%} of full's")
if qlora_r and lora_r:
    print(f"QLoRA: perplexity {qlora_r['after']:.1f} vs LoRA {lora_r['after']:.1f}; step {qlora_r['step_time_median_s']:.2f} s "
          f"vs {lora_r['step_time_median_s']:.2f} s; base held at {runs['qlora']['base_bits_per_param']:.1f} bits per parameter")
for name in ("prompt", "bitfit"):
    r = row(name)
    if r and lora_r:
        print(f"{name:<6}: gain {r['gain']:+.3f} vs LoRA {lora_r['gain']:+.3f}; file {r['adapter_bytes'] / 1e3:.0f} kB")
print(f"full : the baseline; English loss {full['english_loss_rise']:+.3f} ± {full['english_loss_rise_se']:.3f}, "
      f"probe {full['probe_before']:.3f} -> {full['probe_after']:.3f}")"""),
    ("md", r"""
## 4. What a longer run changes

The quick preset is enough to see every method move, not to rank the methods by final quality. The
`laptop` preset trains on many more tokens and scores more items (printed below). A laptop comparison
of all seven methods takes hours on 2 CPU cores; the course records two of them, LoRA (the usual
default) and prompt tuning, with the command printed below.
Run the full one on your machine and point this notebook at it:

    labs compare --task define --preset laptop --out runs/compare-laptop

then set `FOLDER = "../runs/compare-laptop"` in the first cell."""),
    ("code", r"""
from labs.compare import RECORDED_LAPTOP, RECORD_LAPTOP_COMMAND, read_comparison

quick, laptop = get_preset("quick"), get_preset("laptop")
def tokens(p):
    return p.max_steps * p.batch_size * p.grad_accum * p.seq_len
print(f"training tokens: quick {tokens(quick):,}, laptop {tokens(laptop):,} ({tokens(laptop) / tokens(quick):.0f}x); "
      f"held-out examples {quick.n_eval} -> {laptop.n_eval}, probe questions {quick.n_probe} -> {laptop.n_probe}, "
      f"English windows {quick.n_english} x {quick.english_tokens} -> {laptop.n_english} x {laptop.english_tokens} tokens")
print("laptop figures recorded with:", RECORD_LAPTOP_COMMAND)

_, quick_rows, _ = read_comparison(RECORDED)
_, laptop_rows, laptop_runs = read_comparison(RECORDED_LAPTOP)
for name, recorded_runs in (("quick", runs), ("laptop", laptop_runs)):
    f = next(m["forgetting"] for m in recorded_runs.values() if "english_chunks" in m["forgetting"])
    what = (f"{f['english_chunks']} windows of {f['english_window_tokens']} tokens" if "english_window_tokens" in f else
            f"{f['english_chunks']} held-out chunks of up to 600 characters, cut at {laptop.seq_len} tokens "
            "(recorded before the English instrument became fixed-length windows)")
    print(f"English items in the recorded {name} runs: {what}")
by_preset = {"quick": {r["method"]: r for r in quick_rows if r["status"] == "ok"},
             "laptop": {r["method"]: r for r in laptop_rows if r["status"] == "ok"}}
both = [m for m in by_preset["laptop"] if m in by_preset["quick"]]
print(f"\n{'method':<8}{'preset':<8}{'lr':>8}{'perplexity':>18}{'gain ± SE (z)':>24}{'probe drop ± SE':>18}"
      f"{'English rise ± SE':>20}{'step s':>8}")
for m in both:
    for name, table in by_preset.items():
        r = table[m]
        print(f"{m:<8}{name:<8}{r['lr']:>8.0e}{r['before']:>8.1f} -> {r['after']:<6.1f}"
              f"{r['gain']:>+10.3f} ± {r['gain_se']:.3f} ({r['gain'] / r['gain_se']:4.1f})"
              f"{r['probe_drop']:>+10.3f} ± {r['probe_drop_se']:.3f}{r['english_loss_rise']:>+12.3f} ± "
              f"{r['english_loss_rise_se']:.3f}{r['step_time_median_s']:>8.2f}")"""),
    ("code", r"""
lines = []
for m in both:
    q, l = by_preset["quick"][m], by_preset["laptop"][m]
    lines.append(f"- **{m}**: held-out perplexity after training {q['after']:.1f} (quick) -> {l['after']:.1f} (laptop); "
                 f"English loss {q['english_loss_rise']:+.3f} ± {q['english_loss_rise_se']:.3f} -> "
                 f"{l['english_loss_rise']:+.3f} ± {l['english_loss_rise_se']:.3f}; probe drop "
                 f"{q['probe_drop']:+.3f} ± {q['probe_drop_se']:.3f} ({quick.n_probe} questions) -> "
                 f"{l['probe_drop']:+.3f} ± {l['probe_drop_se']:.3f} ({laptop.n_probe}).")
slowest = min(by_preset["quick"].values(), key=lambda r: r["gain"])
lines.append(f"- **the smallest gain in the quick table**: {slowest['method']} ({slowest['gain']:.3f} ± {slowest['gain_se']:.3f})")
if {"lora", "prompt"} <= set(both):
    from labs.evaluate import paired_difference
    for name, folder_of in (("quick", RECORDED), ("laptop", RECORDED_LAPTOP)):
        a, b = (read_comparison(folder_of)[2][m]["scores_after"] for m in ("prompt", "lora"))
        diff, se = paired_difference(a, b)     # the same held-out definitions, within one preset
        said = "cannot be told apart" if abs(diff) < 2 * se else ("prompt tuning worse" if diff > 0 else "prompt tuning better")
        lines.append(f"- **prompt tuning against LoRA, {name} preset**: held-out loss per definition after training "
                     f"{diff:+.3f} ± {se:.3f} (paired): {said}.")
    lines.append("- the two presets score different held-out definitions, so their gaps are not compared with each other.")
hours = sum(r["wall_time_s"] for r in laptop_runs.values()) / 3600
lines.append(f"- **the price**: the recorded laptop runs took {hours:.1f} h of wall time for {len(laptop_runs)} "
             f"method{'s' * (len(laptop_runs) != 1)}, one thread each, on a shared 2-core CPU.")
Markdown("\n".join(lines))"""),
    ("md", r"""
Read the two presets' figures side by side with care: they score different numbers of held-out
definitions at different lengths (printed above), so even the "before" figures come from
different items, and each method trains with the registry's learning rate for that preset (column lr). What carries over is each method's gain in standard errors, and the forgetting
columns, now on more items: a probe of more questions sees smaller changes (notebook 11), and a
change of the probe *up* is as much a change as one down. Where the probe goes up, one
explanation (not tested here) is that the task teaches short, plain answers, the form the probe
scores: forgetting measured by one probe is a measure of that probe."""),
]

if __name__ == "__main__":
    main(CELLS, "nb12", OUT)
