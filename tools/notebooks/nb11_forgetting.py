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
notebook measures that promise for full fine-tuning and every method of the course on one task
(SmolLM2-135M learning WordNet definitions), and teaches the four ways such a measurement misleads:

1. forgetting depends on **how** it is measured;
2. an adapter **switched off** forgets nothing, by construction: that zero says nothing;
3. prompt and prefix tuning do **not start as the identity**, so they are measured with the adapter on;
4. a probe of 60 questions **cannot see** a change of two points.

The fine-tunes are the comparison of notebook 12 (`labs compare`, quick preset, every method in its
own process). Training all seven takes about 15 minutes on two CPU cores, so the numbers below come
from a recorded run, made by the command printed in the next cell. Set `LIVE = True` to make your own
(on your own `labs/` modules; an interrupted run resumes where it stopped, and notebook 12 reuses it).
What is measured live here, on the base model and on the recorded LoRA adapter, checks that the
recording is what this code measures."""),
    ("code", r"""
import copy
from pathlib import Path

import torch

from labs import viz
from labs.compare import RECORD_COMMAND, RECORDED, course_comparison
from labs.data import get_task, load_examples, load_probe
from labs.evaluate import example_losses, paired_change, paired_difference, probe_correct
from labs.impl import technique
from labs.methods import open_exercises, prepare
from labs.models import load_model
from labs.peft_format import load_adapter
from labs.prerequisites import prerequisites
from labs.presets import get_preset

prerequisites({"the recorded comparison (LIVE = False)": ["full"],
               "the recorded LoRA adapter, loaded onto the base": ["lora"],
               "fresh prefix and prompt tuning adapters": ["prefix", "prompt"],
               "LIVE = True: every method run on your modules": ["bitfit", "adapter", "lora", "prefix", "prompt", "qlora"]})
LIVE = False    # True: run the comparison yourself, on your modules (about 15 min on 2 cores; resumes)
FOLDER = None   # or a folder that `labs compare` wrote, such as "../runs/compare-laptop"
folder, settings, rows, runs = course_comparison(LIVE, FOLDER)
if folder == RECORDED:
    print("recorded with:", RECORD_COMMAND)
preset = get_preset(settings["preset"])
print(f"comparison in {folder}: {settings['model']} on {settings['task']}, {settings['preset']} preset "
      f"({preset.max_steps} steps of {preset.batch_size} rows of {preset.seq_len} tokens), methods: {', '.join(runs)}")"""),
    ("md", r"""
## 1. Two instruments

Forgetting is measured **outside** the task, before and after training, on the same items both times:

- the **general-knowledge probe**: multiple-choice questions (capitals, science, history, ...); the
  model "answers" with the choice it finds likeliest. Per question: right or wrong.
- the **loss on public-domain English**: held-out chunks of Jane Austen's novels, text the model
  predicted well before fine-tuning. Per chunk: the mean loss per token (its perplexity is $e^{loss}$).

Both are *paired*: each question and each chunk is scored by the model before and after, and the
change is averaged over items with its standard error (`labs.evaluate.paired_difference`): what the
items share (a hard question is hard for both models) cancels out.

The base model is measured live here, with the same items and settings as the recorded runs: the
two must agree, or the recording is not what this code measures."""),
    ("code", r"""
torch.manual_seed(0)
model, tok = load_model("smollm2-135m")
model.eval()
task = get_task(settings["task"])
forgot = runs["lora"]["forgetting"]
probe = load_probe(n=preset.n_probe)
english = load_examples(forgot["english_corpus"], "validation", n=forgot["english_chunks"])

def english_losses(m):
    return example_losses(m, tok, forgot["english_corpus"], english, preset.seq_len, preset.batch_size)

base_probe = probe_correct(model, tok, probe)
base_english = english_losses(model)
recorded_english = runs["lora"]["english_losses_before"]
gap = max(abs(a - b) for a, b in zip(base_english, recorded_english))
print(f"probe: {sum(base_probe)}/{len(probe)} right live, {sum(runs['lora']['probe_correct_before'])}/{len(probe)} recorded")
print(f"English ({forgot['english_corpus']}, {len(english)} chunks): perplexity "
      f"{torch.tensor(base_english).mean().exp():.2f} live, {forgot['english_ppl_before']:.2f} recorded; "
      f"largest difference per chunk {gap:.1e}")
assert gap < 1e-3 and abs(sum(base_probe) - sum(runs["lora"]["probe_correct_before"])) <= 1"""),
    ("md", r"""
## 2. Learning against forgetting, every method

Each row: how much the task improved (loss per held-out definition, lower after = positive gain)
and how much was lost elsewhere (probe accuracy drop, English loss rise; positive = forgotten),
each with its standard error."""),
    ("code", r"""
print(f"{'method':<8}{'trainable %':>12}{'learning':>18}{'probe drop':>18}{'English loss rise':>20}{'ppl before->after':>20}")
for name, m in runs.items():
    l, f = m["learning"], m["forgetting"]
    print(f"{name:<8}{m['trainable_percent']:>12.3f}{l['gain']:>+11.3f} ± {l['se']:.3f}"
          f"{f['probe_drop']:>+11.3f} ± {f['probe_drop_se']:.3f}{f['english_loss_rise']:>+12.3f} ± {f['english_loss_rise_se']:.3f}"
          f"{f['english_ppl_before']:>11.1f} -> {f['english_ppl_after']:.1f}")
failed = [r["method"] for r in rows if r["status"] != "ok"]
print("failed runs: " + (", ".join(failed) if failed else "none"))

by_probe = {n: (m["learning"]["gain"], m["learning"]["se"], m["forgetting"]["probe_drop"], m["forgetting"]["probe_drop_se"])
            for n, m in runs.items()}
by_english = {n: (m["learning"]["gain"], m["learning"]["se"], m["forgetting"]["english_loss_rise"],
                  m["forgetting"]["english_loss_rise_se"]) for n, m in runs.items()}
display(viz.learning_vs_forgetting(by_probe, x_label="learning: loss gain on definitions",
                                   y_label="forgetting: probe accuracy drop", title="Measured by the probe"))
display(viz.learning_vs_forgetting(by_english, x_label="learning: loss gain on definitions",
                                   y_label="forgetting: English loss rise", title="Measured on Austen"))"""),
    ("md", r"""
## 3. Pitfall 1: forgetting depends on how it is measured

Rank the methods by each instrument. If "forgetting" were one quantity, the two orders would agree.
A change counts as seen only beyond two standard errors."""),
    ("code", r"""
def seen(change, se):
    return "forgot" if change > 2 * se else "gained" if change < -2 * se else "no visible change"

order_probe = sorted(runs, key=lambda n: runs[n]["forgetting"]["probe_drop"])
order_english = sorted(runs, key=lambda n: runs[n]["forgetting"]["english_loss_rise"])
print("least to most forgetting, by the probe  :", " < ".join(order_probe))
print("least to most forgetting, by the English:", " < ".join(order_english))
n = len(runs)
rank_p = {name: i for i, name in enumerate(order_probe)}
rank_e = {name: i for i, name in enumerate(order_english)}
rho = 1 - 6 * sum((rank_p[k] - rank_e[k]) ** 2 for k in runs) / (n * (n * n - 1))
print(f"Spearman rank correlation of the two orders: {rho:+.2f} (1 = the same order)")
for name, m in runs.items():
    f = m["forgetting"]
    print(f"  {name:<8} probe: {seen(f['probe_drop'], f['probe_drop_se']):<18} English: "
          f"{seen(f['english_loss_rise'], f['english_loss_rise_se'])}")"""),
    ("md", r"""
The English loss sees small changes (every chunk has hundreds of tokens, and the loss moves for every
one of them), while the probe only moves when a question flips. They also ask different things: the
loss asks "does the model still predict this kind of text?", the probe "does it still pick the right
fact?". A method can shift the style of its text (the loss rises) and keep its facts (the probe does
not move), or the other way round. Report which instrument you used, with its standard error."""),
    ("md", r"""
## 4. Pitfall 2: an adapter switched off forgets nothing

The recorded LoRA adapter (r = 8 on q and v) is loaded onto the base. With it on, the English
losses must be the recorded "after" ones. Switched off (each LoRA layer's `scaling` set to 0, so its
update adds exactly zero), the model **is** the base: its forgetting is zero by construction."""),
    ("code", r"""
if open_exercises("lora"):
    raise RuntimeError(f"finish exercises {', '.join(open_exercises('lora'))} (notebook 05) to load the LoRA adapter")
lora = technique("lora")
tuned = load_adapter(copy.deepcopy(model), folder / "lora" / "adapter", method="lora")
on = english_losses(tuned)
layers = [layer for _, layer in lora.lora_layers(tuned)]
scalings = [layer.scaling for layer in layers]
for layer in layers:
    layer.scaling = 0.0
off = english_losses(tuned)
for layer, s in zip(layers, scalings):
    layer.scaling = s

recorded_after = runs["lora"]["english_losses_after"]
rise_on, se_on = paired_difference(on, base_english)
rise_off, se_off = paired_difference(off, base_english)
print(f"adapter on : loss rise {rise_on:+.4f} ± {se_on:.4f}; largest difference from the recorded run "
      f"{max(abs(a - b) for a, b in zip(on, recorded_after)):.1e}")
print(f"adapter off: loss rise {rise_off:+.4f} ± {se_off:.4f}; largest difference from the base "
      f"{max(abs(a - b) for a, b in zip(off, base_english)):.1e}")
assert off == base_english, "switched off, the adapted model must be the base exactly"
assert max(abs(a - b) for a, b in zip(on, recorded_after)) < 1e-3"""),
    ("md", r"""
That is why "PEFT does not forget" needs care: the *base* never forgets anything (it is frozen), so a
system that switches adapters per request (notebook 10) keeps the base's knowledge for every request
routed without an adapter. The forgetting that matters is the model you deploy **for the task**: the
adapter on."""),
    ("md", r"""
## 5. Pitfall 3: prompt and prefix tuning do not start as the identity

LoRA's B starts at zero, so a freshly applied LoRA **is** the base model. A soft prompt or a prefix
starts as some vectors (from text, or random) that every forward pass reads: before one step of
training the model already behaves differently. Measured here with fresh, untrained adapters:"""),
    ("code", r"""
at_init = {}
for name in ("lora", "prefix", "prompt"):
    if open_exercises(name):     # your module is still a stub: nothing to measure yet
        print(f"{name}: skipped until you finish exercises {', '.join(open_exercises(name))}")
        continue
    torch.manual_seed(0)
    fresh = prepare(name, copy.deepcopy(model), task)      # the registry's default options, untrained
    at_init[name] = paired_difference(english_losses(fresh), base_english)
    del fresh
for name, (rise, se) in at_init.items():
    print(f"{name:<7} untrained, adapter on: English loss {rise:+.4f} ± {se:.4f} against the base")
assert at_init.get("lora", (0.0, 0.0)) == (0.0, 0.0), "LoRA at initialisation is the base model exactly"
for name in [n for n in at_init if n != "lora"]:
    print(f"{name}: its recorded rise after training {runs[name]['forgetting']['english_loss_rise']:+.4f} "
          f"includes {at_init[name][0]:+.4f} that was there before any training")"""),
    ("md", r"""
So for prompt and prefix tuning, "before" is the base model and "after" the model with its trained
prompt or prefix on, exactly as it will run. Measuring "before" with the untrained prompt on would
hide what the prompt itself does to other text; measuring "after" with it off would measure the base.
Part of what looks like forgetting may be there from the first step: the start, not the training."""),
    ("md", r"""
## 6. Pitfall 4: what a probe of 60 questions can see

A paired change of accuracy is decided only by the questions that flip (McNemar, `paired_change`).
With a fraction $d$ of questions flipping, the standard error of the change is about
$\sqrt{d / n}$, so a change must be near $2\sqrt{d/n}$ to stand out, and seeing a change $\delta$
takes about $n = 4d/\delta^2$ questions."""),
    ("code", r"""
print(f"{'method':<8}{'flipped':>9}{'change':>9}{'McNemar p':>11}{'smallest visible change':>25}{'questions for 2 points':>24}")
for name, m in runs.items():
    pc = paired_change(m["probe_correct_before"], m["probe_correct_after"])
    d = max(pc.gained + pc.lost, 1) / pc.n          # at least one flip: a probe never has perfect resolution
    print(f"{name:<8}{pc.gained + pc.lost:>5}/{pc.n:<3}{pc.accuracy_change:>+9.3f}{pc.p_value:>11.2f}"
          f"{2 * (d / pc.n) ** 0.5:>25.3f}{4 * d / 0.02 ** 2:>24,.0f}")
print(f"the whole probe holds {len(load_probe())} questions")"""),
    ("md", r"""
Read the last two columns: with 60 questions only changes of several points are visible, and a
2-point change needs hundreds to thousands of questions, more than the probe holds. A "no visible
change" on this probe is *not* "no forgetting": it is "less than about the smallest visible change".
The `laptop` preset scores 200 questions and 128 English chunks; the English loss, with its many
tokens per chunk, is the sharper of the two instruments here.

**What to take away.** Name the instrument, pair the measurements, give standard errors, measure the
model as it will be deployed (adapter on), and know what your probe can see. Notebook 12 puts
learning and forgetting beside memory, time and storage for every method."""),
    ("code", r"""
del model, tuned
print("done")"""),
]

if __name__ == "__main__":
    main(CELLS, "nb11", OUT)
