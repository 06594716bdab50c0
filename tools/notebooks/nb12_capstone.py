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
from labs.presets import get_preset

LIVE = False    # True: run the comparison yourself, on your modules (about 30 min on 2 cores; resumes)
FOLDER = None   # or a folder that `labs compare` wrote, such as "../runs/compare-laptop"
folder, settings, rows, runs = course_comparison(LIVE, FOLDER)
if folder == RECORDED:
    print("recorded with:", RECORD_COMMAND)
print(f"{settings['model']} on {settings['task']}, {settings['preset']} preset; recorded in {folder}")
wall = sum(m["wall_time_s"] for m in runs.values())
print(f"{len(runs)} of {len(rows)} methods finished; their runs took {wall / 60:.0f} min in all")
Markdown((folder / "compare.md").read_text())"""),
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
plots = Path(tempfile.mkdtemp(prefix="nb12-"))
plot_comparison(ok, plots)
for name in ("pareto.png", "pareto_memory.png", "learning_forgetting.png"):
    display(Image(filename=str(plots / name)))"""),
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
forgets = best("english_loss_rise")
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
    f"- **Keep general English:** {forgets['method']} (English loss {forgets['english_loss_rise']:+.3f} ± "
    f"{forgets['english_loss_rise_se']:.3f}; full fine-tuning {full['english_loss_rise']:+.3f}).",
    "- **Within 10% of full fine-tuning's perplexity:** "
    + (", ".join(f"{n} ({r['trainable_percent']:.3f}% trained)" for n, r in near_full.items()) or "none in this run") + ".",
]
if "qlora" in runs:
    q = runs["qlora"]
    guide.append(f"- **A model too big for your GPU:** qlora holds the base at {q['base_bits_per_param']:.1f} bits per "
                 f"parameter as loaded here (the quantized layers at about 4.1; notebook 08) and trains LoRA on top.")
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

The quick preset is enough to see every method move, not to rank the methods by final quality:
methods that start away from the identity (prompt, prefix) or train few parameters need more steps,
and full fine-tuning forgets more the longer it trains. The `laptop` preset trains on many more tokens
and scores more items (printed below); run it on your machine and point this notebook at it:

    labs compare --task define --preset laptop --out runs/compare-laptop

then set `FOLDER = "../runs/compare-laptop"` in the first cell."""),
    ("code", r"""
quick, laptop = get_preset("quick"), get_preset("laptop")
def tokens(p):
    return p.max_steps * p.batch_size * p.grad_accum * p.seq_len
print(f"training tokens: quick {tokens(quick):,}, laptop {tokens(laptop):,} ({tokens(laptop) / tokens(quick):.0f}x); "
      f"held-out examples {quick.n_eval} -> {laptop.n_eval}, probe questions {quick.n_probe} -> {laptop.n_probe}, "
      f"English chunks {quick.n_english} -> {laptop.n_english}")"""),
]

if __name__ == "__main__":
    main(CELLS, "nb12", OUT)
