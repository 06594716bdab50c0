"""Build notebooks/11_forgetting.ipynb (committed without outputs).

    python tools/notebooks/nb11_forgetting.py
"""
from __future__ import annotations

from nbtools import ROOT, main

OUT = ROOT / "notebooks" / "11_forgetting.ipynb"

CELLS = [
    ("md", r"""
# 11 · Catastrophic forgetting: what a fine-tune costs outside its task

The third promise of PEFT: a model fine-tuned on one task keeps more of what it knew before. This
notebook puts the promise to a test in which forgetting can show, and reports what it finds.

**How to compare fairly.** Comparing methods by what they forgot *at the end* of training is unfair
to the one that learned more: a method that barely moved forgets nothing. Biderman et al. 2024
("LoRA Learns Less and Forgets Less") compare at **matched learning**: each run is scored at
checkpoints along training, so it draws a curve of learning (the task's held-out gain) against
forgetting, and runs are compared where their curves reach the same learning.

**The experiment** (`labs/forgetting.py`). SmolLM2-135M learns **King James English** (Genesis, Ruth,
Esther, Jonah, Psalms: 17th-century biblical prose, "And it came to pass"), a task far from what the two
instruments measure:
- the **general-knowledge probe**: 300 multiple-choice questions of modern facts; per question, right or wrong;
- the loss on **modern English**: 32 fixed windows of 256 tokens spread over every sentence of the
  Rotten Tomatoes movie reviews (2000s), never trained on; per window, the mean loss per predicted
  token (its perplexity is $e^{loss}$). Not Austen, as in notebook 12: old literary English is close
  enough to King James English that learning the task *lowered* the loss on Austen (a first version
  of this experiment measured it), which is transfer, not the absence of forgetting.

Full fine-tuning at two learning rates, LoRA at two ranks and two learning rates, BitFit, adapters, prefix and prompt
tuning, and QLoRA, each scored at checkpoints on the same items. The whole recording takes about an
hour on one CPU core, so it was made once with the command printed below; section 2 runs a small
version of it live, on your own modules.

**Sign convention, everywhere in this notebook: forgetting is positive when something was lost** (the
English loss rose, or the probe's accuracy dropped). Learning is positive when the task's held-out
loss fell."""),
    ("code", r"""
import copy
import json
import shutil
from dataclasses import replace
from pathlib import Path

import torch

from labs import viz
from labs.evaluate import paired_change, paired_difference
from labs.forgetting import (INSTRUMENTS, PLANS, RECORD_COMMAND, RECORDED, Instruments, at_end, compare_at,
                             curve, load_runs, matched_gain, record, verdict_line, window_losses)
from labs.methods import open_exercises
from labs.prerequisites import prerequisites

prerequisites({"the recorded experiment, and the live full fine-tune": ["full"],
               "the live LoRA run, and a fresh LoRA against the base": ["lora"]})
plan = PLANS["laptop"]
base, runs = load_runs(RECORDED)
summary = json.loads((RECORDED / "summary.json").read_text())
print("recorded with:", RECORD_COMMAND)
print(f"finished {summary['finished']}: {summary['runs']} runs, {summary['wall_time_s'] / 60:.0f} min of training "
      f"and scoring on {summary['torch_threads']} CPU thread(s)")
print(f"each run: {plan.steps} steps of {plan.batch_size} rows of {plan.seq_len} tokens, scored every "
      f"{plan.checkpoint_every} steps")
print(f"instruments: {len(base['probe'])} probe questions; {len(base['english'])} windows of {plan.window_tokens} "
      f"tokens of {plan.english}; learning on {len(base['task'])} held-out chunks of {plan.task}")
missing_runs = [r.label for r in plan.runs if r.label not in runs]
print(f"{len(runs)} of the plan's {len(plan.runs)} runs are recorded"
      + (f"; not yet: {', '.join(missing_runs)} (run the command to complete it: it resumes)" if missing_runs else ""))
for label, run in runs.items():
    opts = ", ".join(f"{k}={v}" for k, v in run["run"]["options"])
    print(f"  {label:<18} {run['run']['method']:<8} lr {run['run']['lr']:<8g} seed {run['run']['seed']} {opts}")"""),
    ("md", r"""
## 1. Why this task, and why these instruments

A forgetting test needs a task **far** from what the instruments measure. Notebook 12's comparison
trains on English definitions, and there the fine-tune *improves* both instruments: defining words
is close to writing English and to answering questions. What looks like "no forgetting" there is
transfer. Read it from the recorded comparison (one sign convention: positive = forgotten):"""),
    ("code", r"""
from labs.compare import RECORD_COMMAND as COMPARE_COMMAND, course_comparison

_, compare_settings, _, compare_runs = course_comparison()
full_define = compare_runs["full"]["forgetting"]
print(f"full fine-tuning on {compare_settings['task']} ({compare_settings['preset']} preset, `{COMPARE_COMMAND}`):")
print(f"  English loss change {full_define['english_loss_rise']:+.3f} ± {full_define['english_loss_rise_se']:.3f}, "
      f"probe accuracy drop {full_define['probe_drop']:+.3f} ± {full_define['probe_drop_se']:.3f} (negative: improved)")
print(f"King James English, full fine-tuning at {runs['full 5e-5']['run']['lr']:g}, after {plan.steps} steps:")
for instrument in INSTRUMENTS:
    mean, se = at_end(base, runs["full 5e-5"], instrument)
    print(f"  {INSTRUMENTS[instrument]} {mean:+.4f} ± {se:.4f} ({mean / se:+.1f} standard errors)")"""),
    ("md", r"""
## 2. A small version, live, on your own modules

The same experiment in the quick preset: two runs (full fine-tuning and LoRA r = 8), 12 steps of
8 rows of 64 tokens, scored every 6 steps on 16 windows of 256 tokens of modern English (movie
reviews) and 60 probe questions: about
two minutes. Too small to decide anything (the standard errors say so), but everything below is
computed the same way from the recording. Full fine-tuning needs no exercise; LoRA needs
exercises 5.1-5.6 (notebook 05), and without them only the full fine-tune runs."""),
    ("code", r"""
quick = PLANS["quick"]
missing = open_exercises("lora")
if missing:
    print(f"LoRA skipped: finish exercises {', '.join(missing)} (notebook 05); full fine-tuning runs alone")
    quick = replace(quick, runs=tuple(r for r in quick.runs if r.method != "lora"))
from labs.files import scratch_folder
live_folder = scratch_folder("nb11-forgetting-")      # a fresh run of your current code, removed when the kernel stops
torch.set_num_threads(1)
record(quick, live_folder)
live_base, live_runs = load_runs(live_folder)
for instrument in INSTRUMENTS:
    for label, run in live_runs.items():
        points = curve(live_base, run, instrument)
        print(f"{label:<10} {INSTRUMENTS[instrument]:<20}", "  ".join(
            f"step {p['step']}: gain {p['gain']:+.3f}, forgot {p['forgetting']:+.4f}" for p in points))
if "lora r=8" in live_runs:
    for instrument in INSTRUMENTS:
        print(verdict_line("lora r=8", "full 2e-4", compare_at(live_base, live_runs["lora r=8"], live_runs["full 2e-4"],
                                                               instrument), instrument))
display(viz.forgetting_curves({label: [(p["gain"], p["forgetting"]) for p in curve(live_base, run, "english")]
                               for label, run in live_runs.items()},
                              y_label="forgetting: English loss rise", title="Live, quick preset"))"""),
    ("md", r"""
## 3. The recorded curves

Each line is one run, a marker per checkpoint, from step 0 (where a method that starts as the base sits
at the origin). Runs of one method share a colour. QLoRA is drawn twice: against the full-precision
base (the model you would deploy, compared with the model you started from) and, dashed, against its
own 4-bit base (what training itself did). The star is the 4-bit base alone, no adapter: before a
single step, quantization has already moved it."""),
    ("code", r"""
def curves_of(instrument):
    lines = {label: [(p["gain"], p["forgetting"]) for p in curve(base, run, instrument)] for label, run in runs.items()}
    qlora = runs.get("qlora r=8")
    points = {}
    if qlora is not None:
        own = curve(base, qlora, instrument, start_as_base=qlora["start"])
        lines["qlora r=8, from its 4-bit base"] = [(p["gain"], p["forgetting"]) for p in own]
        start = curve(base, qlora, instrument)[0]
        points["4-bit (NF4) base, no adapter"] = (start["gain"], start["forgetting"])
    return lines, points

reference, peft_main = "full 5e-5", "lora r=8"
matched = matched_gain(curve(base, runs[reference], "english"), curve(base, runs[peft_main], "english"))
for instrument in INSTRUMENTS:
    lines, points = curves_of(instrument)
    display(viz.forgetting_curves(lines, points=points, matched=matched, y_label=f"forgetting: {INSTRUMENTS[instrument]}",
                                  title=f"Learning King James English vs forgetting ({instrument})"))"""),
    ("md", r"""
## 4. The verdict, at matched learning

Every run against full fine-tuning at 5e-5, where both curves reach the same gain (the most both
reach), each run's forgetting interpolated between its two checkpoints around that gain, per item,
so that the difference is paired over the same windows (or questions). Negative difference: the run
forgets less. A difference within two standard errors "cannot be told apart". The standard errors
count the items only: the repeated seeds show how much a run's curve moves with its seed alone."""),
    ("code", r"""
verdicts = {}
for instrument in INSTRUMENTS:
    print(f"--- {INSTRUMENTS[instrument]}, against {reference} ---")
    for label, run in runs.items():
        if label == reference:
            continue
        try:
            result = compare_at(base, run, runs[reference], instrument)
        except ValueError as err:          # a curve that starts above the other's reach
            print(f"{label}: not comparable here ({err})")
            continue
        verdicts[instrument, label] = result
        print(verdict_line(label, reference, result, instrument))
    if "qlora r=8" in runs:
        own = compare_at(base, runs["qlora r=8"], runs[reference], instrument, own_start=True)
        print(verdict_line("qlora r=8 (from its 4-bit base)", reference, own, instrument))"""),
    ("code", r"""
def spread(a, b, instrument):
    r = compare_at(base, runs[a], runs[b], instrument)
    return f"{r['difference']:+.4f} ± {r['se']:.4f}"

print("what the seed alone moves (same method, same settings, another seed), English loss rise:")
for a, b in (("full 5e-5 seed 1", "full 5e-5"), ("lora r=8 seed 1", "lora r=8")):
    if a in runs and b in runs:
        print(f"  {a} vs {b}: {spread(a, b, 'english')}")

lora, full = verdicts.get(("english", peft_main)), verdicts.get(("english", reference))
own_mean, own_se = at_end(base, runs[peft_main], "english")
print()
print(f"The claim 'PEFT prevents catastrophic forgetting', at this scale ({plan.steps} steps, 135M parameters):")
if lora is not None:
    if lora["z"] < -2:
        print(f"  at matched learning (gain {lora['gain']:.3f}), LoRA r=8 forgets less than full fine-tuning: "
              f"{lora['run']:+.4f} vs {lora['reference']:+.4f} English loss rise ({abs(lora['z']):.1f} SE apart).")
    elif lora["z"] > 2:
        print(f"  at matched learning (gain {lora['gain']:.3f}), LoRA r=8 forgets MORE than full fine-tuning: "
              f"{lora['run']:+.4f} vs {lora['reference']:+.4f} ({lora['z']:.1f} SE apart).")
    else:
        print(f"  at matched learning (gain {lora['gain']:.3f}), LoRA r=8 and full fine-tuning cannot be told apart: "
              f"{lora['run']:+.4f} vs {lora['reference']:+.4f} ({abs(lora['z']):.1f} SE).")
print(f"  and LoRA does forget: after its {plan.steps} steps its English loss rose {own_mean:+.4f} ± {own_se:.4f} "
      f"({own_mean / own_se:.1f} SE): 'prevents' is too strong; 'forgets less per unit learned' is what can be tested.")
end_full, end_lora = (curve(base, runs[k], "english")[-1] for k in (reference, peft_main))
print(f"  at the end of training (not matched): full learned {end_full['gain']:.3f} and forgot {end_full['forgetting']:+.4f}; "
      f"LoRA learned {end_lora['gain']:.3f} and forgot {end_lora['forgetting']:+.4f}: much of 'LoRA forgets less' "
      f"at the end is 'LoRA learned less'.")"""),
    ("md", r"""
### What sets LoRA's forgetting here: its rank, its learning rate, or its seed?

The verdict above is one LoRA setting against one full fine-tuning setting. Three more runs ask what
moves LoRA's curve: the same LoRA with another seed (how much the seed alone moves it), rank 64
(alpha 128, the same alpha / r = 2, so each rank-1 direction is scaled as at r = 8, but there are 8x more
of them), and rank 8 at a 3x lower learning rate. Each pair is compared at the learning both reach."""),
    ("code", r"""
pairs = [("lora r=8 seed 1", "lora r=8", "the seed alone"),
         ("lora r=64", "lora r=8", "rank 64 instead of 8, same rate"),
         ("lora r=8 3e-4", "lora r=8", "rate 3e-4 instead of 1e-3, same rank"),
         ("full 5e-5 seed 1", "full 5e-5", "the seed alone (full fine-tuning)")]
moved = {}
for a, b, what in pairs:
    if a not in runs or b not in runs:
        print(f"{what}: not recorded yet ({a})")
        continue
    r = compare_at(base, runs[a], runs[b], "english")
    moved[a] = r
    print(f"{what:<40} {verdict_line(a, b, r, 'english')}")
seed = moved.get("lora r=8 seed 1")
for a in ("lora r=64", "lora r=8 3e-4"):
    if a in moved and seed is not None:
        ratio = abs(moved[a]["difference"]) / max(abs(seed["difference"]) + 2 * seed["se"], 1e-9)
        print(f"  {a}: moves LoRA's forgetting {ratio:.1f}x as far as the seed can (difference over seed difference + 2 SE)")
if "lora r=8 3e-4" in runs:
    slow = compare_at(base, runs["lora r=8 3e-4"], runs[reference], "english")
    first = curve(base, runs[reference], "english")[1]
    print(verdict_line("lora r=8 3e-4", reference, slow, "english"))
    if slow["gain"] < first["gain"]:
        print(f"  (read with care: {reference} reaches that gain before its first checkpoint, at step {first['step']} "
              f"it had {first['gain']:.3f}; its forgetting there is interpolated from step 0)")"""),
    ("md", r"""
## 5. Pitfall 1: forgetting depends on how it is measured

Rank the runs by each instrument, at the learning all of them reach. If "forgetting" were one
quantity, the two orders would agree. Ties get their average rank (Spearman's rule), and with a
handful of runs the correlation rests on very few points: read it as a hint, not a finding."""),
    ("code", r"""
def average_ranks(values: dict) -> dict:
    order = sorted(values, key=values.get)
    ranks, i = {}, 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks

curves_e = {label: curve(base, run, "english") for label, run in runs.items()}
common = matched_gain(*curves_e.values())
from labs.forgetting import at_gain
at_common = {}
for instrument in INSTRUMENTS:
    at_common[instrument] = {}
    for label, run in runs.items():
        items = at_gain(curve(base, run, instrument), common)
        if items is not None:
            at_common[instrument][label] = sum(items) / len(items)
labels = [l for l in runs if all(l in at_common[i] for i in INSTRUMENTS)]
rank = {i: average_ranks({l: at_common[i][l] for l in labels}) for i in INSTRUMENTS}
print(f"at a gain of {common:.3f} (reached by every run):")
for l in sorted(labels, key=rank["english"].get):
    print(f"  {l:<18} English rise {at_common['english'][l]:+.4f} (rank {rank['english'][l]:.1f})   "
          f"probe drop {at_common['probe'][l]:+.4f} (rank {rank['probe'][l]:.1f})")
n = len(labels)
mean_rank = (n + 1) / 2
cov = sum((rank["english"][l] - mean_rank) * (rank["probe"][l] - mean_rank) for l in labels)
var = (sum((rank["english"][l] - mean_rank) ** 2 for l in labels) * sum((rank["probe"][l] - mean_rank) ** 2 for l in labels)) ** 0.5
print(f"Spearman rank correlation (average ranks) of the two orders: {cov / var:+.2f} over {n} runs")"""),
    ("md", r"""
The English loss sees small changes: every window has hundreds of tokens and the loss moves for every
one of them. The probe moves only when a question flips. They also ask different things: the loss
asks "does the model still predict this kind of text?", the probe "does it still pick the right
fact?". Report which instrument you used, with its standard error."""),
    ("md", r"""
## 6. Pitfall 2: a method that does not start as the base

LoRA's B starts at zero, so a freshly applied LoRA **is** the base model (checked live below). A soft
prompt or a prefix starts as some vectors every forward pass reads, and QLoRA starts from the base
quantized to 4 bits: before one step of training these models already differ from the base. The
recording scored each of them at step 0:"""),
    ("code", r"""
for label in ("qlora r=8", "prefix", "prompt"):
    if label not in runs or runs[label]["start"] is None:
        continue
    points = curve(base, runs[label], "english")
    start_items = points[0]["items"]
    s_mean, s_se = paired_difference(start_items, [0.0] * len(start_items))
    print(f"{label:<10} before any training: English loss {s_mean:+.4f} ± {s_se:.4f}, task gain {points[0]['gain']:+.3f}; "
          f"after training: {points[-1]['forgetting']:+.4f}, of which {s_mean / points[-1]['forgetting']:.0%} was there at the start"
          if points[-1]["forgetting"] > 0 else
          f"{label:<10} before any training: English loss {s_mean:+.4f} ± {s_se:.4f}; after training {points[-1]['forgetting']:+.4f}")

if not missing:                                      # the live plan's English windows, on the base and a fresh LoRA
    from labs.methods import prepare
    from labs.models import load_model
    torch.manual_seed(0)
    model, tok = load_model(plan.model)
    instruments = Instruments(PLANS["quick"], tok)
    fresh = prepare("lora", copy.deepcopy(model), instruments.task)
    same = window_losses(fresh, instruments.windows) == window_losses(model, instruments.windows)
    print(f"a fresh, untrained LoRA computes exactly the base's English losses: {same}")
    assert same, "LoRA at initialisation must be the base model exactly"
    del fresh"""),
    ("md", r"""
So for QLoRA, "forgetting" against the full-precision base mixes two things: what quantization did
(there at step 0, with no training at all) and what training did. Both matter to whoever deploys the
model; only the second is what "fine-tuning forgets". Say which one you report. The same holds for an
adapter trained on the 4-bit base and then loaded on the full-precision one: that is a third model
(notebook 08 measures by how much). And an adapter **switched off** forgets nothing, by construction:
the frozen base never changes, so "PEFT does not forget" is trivially true of the base and says nothing
of the model you deploy for the task, which is the one with the adapter on."""),
    ("md", r"""
## 7. Pitfall 3: what a probe of N questions can see

A paired change of accuracy is decided only by the questions that flip (McNemar, `paired_change`).
With a fraction $d$ of questions flipping, the standard error of the change is about $\sqrt{d / n}$,
so a change must be near $2\sqrt{d/n}$ to stand out, and seeing a change $\delta$ takes about
$n = 4d/\delta^2$ questions. Notebook 12's quick comparison asks 60; this recording asks all 300."""),
    ("code", r"""
print(f"{'run':<18}{'flipped':>10}{'accuracy drop':>15}{'McNemar p':>11}{'smallest visible':>18}{'questions for 2 points':>24}")
for label, run in runs.items():
    before = base["probe"]
    after = run["checkpoints"][-1]["probe"]
    pc = paired_change(before, after)
    d = max(pc.gained + pc.lost, 1) / pc.n          # at least one flip: a probe never has perfect resolution
    print(f"{label:<18}{pc.gained + pc.lost:>6}/{pc.n:<3}{-pc.accuracy_change:>+15.3f}{pc.p_value:>11.2f}"
          f"{2 * (d / pc.n) ** 0.5:>18.3f}{4 * d / 0.02 ** 2:>24,.0f}")
print("(accuracy drop: positive = forgotten, the convention of this whole notebook)")"""),
    ("md", r"""
Even 300 questions see only changes of a few points; a "no visible change" on a probe is *not* "no
forgetting", it is "less than about the smallest visible change". The English windows, with their
many tokens each, are the sharper instrument here.

**What to take away.** Test forgetting on a task far from your instruments; compare methods at
matched learning, not at the end; pair the measurements and give standard errors; repeat a seed to
see the spread; say whether a quantized or prompted model is measured against the base or against
its own start; and know what your probe can see. Notebook 12 puts learning and forgetting beside
memory, time and storage for every method."""),
    ("code", r"""
shutil.rmtree(live_folder, ignore_errors=True)
print("done")"""),
]

if __name__ == "__main__":
    main(CELLS, "nb11", OUT)
