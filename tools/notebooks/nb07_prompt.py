"""Build notebooks/07_prompt_tuning.ipynb (committed without outputs).

    python tools/notebooks/nb07_prompt.py
"""
from __future__ import annotations

from nbtools import ROOT, main

OUT = ROOT / "notebooks" / "07_prompt_tuning.ipynb"

CELLS = [
    ("md", r"""
# 07 · Prompt tuning: a few vectors at the input

Prefix tuning (notebook 06) put trained keys and values into *every* layer. Lester, Al-Rfou & Constant
(2021) asked how little is enough: what if only the **input** gets something new? **Prompt tuning**
prepends $P$ "virtual tokens" to the input embeddings -- rows of one trainable matrix, which need not be
the embedding of any word -- and trains nothing else:

$$\big[\,p_1, \dots, p_P,\; e(x_1), \dots, e(x_T)\,\big] \in \mathbb{R}^{(P+T) \times D}$$

What the paper found. On T5-XXL (11 billion parameters) a soft prompt matched fine-tuning all the
weights on SuperGLUE, even the stronger multi-task fine-tuning baseline, with over 20,000 times fewer
task-specific parameters (section 3.1, Figure 1). That used the paper's default prompt of **100
tokens**: 100 x 4096 = **409,600 numbers per task**. (The often-quoted 20,480, 5 tokens x 4096, is
Figure 2's illustration of what storing a 5-token prompt would cost.) Two more things made it work:

- **LM-adapted T5.** T5 was pretrained only to fill in masked spans marked by sentinel tokens, a habit
  a frozen model cannot unlearn through its input alone. The authors first trained it 100,000 steps
  more as an ordinary language model, once, and froze that (section 2.2). Without it, several
  mid-sized models never learned to output a valid label (section 3.2, Figure 3(c)).
- **Scale.** The gap to fine-tuning closes as the model grows (Figure 1). At XXL size even a 1-token
  prompt did well and the starting point stopped mattering (Figure 3(a, b)): "the larger the model,
  the less conditioning signal is needed" (section 3.2). Small models need longer prompts and a good
  start, and still trail.

SmolLM2-135M is small, so expect a prompt at the input to trail here. The remedy for small models is
a trainable prompt in *every* layer instead of only at the input: deep prompt tuning, which is prefix
tuning (notebook 06). P-tuning v2 (Liu et al. 2022) showed deep prompts matching fine-tuning across
model scales, "normal-sized" models included, while training 0.1-3% of the parameters. Let us see how
far a soft prompt at the input gets SmolLM2, and what each choice (length, initialisation) buys."""),
    ("code", r"""
import copy
import gc
import math

import torch

from labs import viz
from labs.check import check
from labs.data import batches, collate, get_task, load_examples
from labs.evaluate import eval_loss, generate
from labs.impl import technique
from labs.memory import measure_components
from labs.models import load_model
from labs.presets import get_preset
from labs.surgery import count_parameters
from labs.timing import interleaved_medians
from labs.train import TrainConfig, batch_loss, train

prompt_tuning = technique("prompt_tuning")  # your labs/prompt_tuning.py (or the reference, LABS_IMPL=solutions)
preset = get_preset()
torch.manual_seed(0)
base, tok = load_model("smollm2-135m")      # SmolLM2-135M-Instruct, fp32, eval mode
D = base.get_input_embeddings().weight.shape[1]
print(f"preset {preset.name}: {preset.max_steps} steps of {preset.batch_size} x {preset.seq_len} tokens")
print(f"SmolLM2: {count_parameters(base).total:,} parameters")"""),
    ("md", r"""
## 1. The arithmetic

A soft prompt is $P \times D$ numbers, whatever the depth of the model:"""),
    ("code", r"""
for P, what in ((5, "Figure 2's storage example"), (100, "the default that matched fine-tuning")):
    print(f"T5-XXL, P={P:>3} x 4096 = {P * 4096:>7,} parameters per task, "
          f"{100 * P * 4096 / 11e9:.5f}% of 11 billion ({what})")
for P in (5, 20, 100):
    print(f"SmolLM2, P={P:>3}: {P} x {D} = {P * D:>6,} parameters, "
          f"{100 * P * D / count_parameters(base).total:.4f}% of the model")"""),
    ("md", r"""
## 2. Where the prompt starts

The paper compared three starting points (sections 2.1 and 3.2): **random** vectors (uniform in
$[-0.5, 0.5]$), **sampled vocabulary** (the embeddings of tokens drawn from the 5,000 most common) and
**class labels** (the embeddings of the output classes' names, one per prompt token, falling back to
sampled vocabulary once the classes run out, as they do at 100 tokens). Class labels did best and
random worst, and at XXL size the difference vanished (Figure 3(b)).

This course's three are `"random"`, `"vocab"` and `"text"`. Our task, definitions, has no class
labels; in their place `"text"` starts from the tokens of a description of the task. That option is
peft's (`PromptTuningInit.TEXT`) and echoes Li & Liang's prefix initialised with task-relevant words
such as "summarize" (their section 7.4). Lester et al. used task words only where class labels did
not exist, for two free-form tasks (ReCoRD and WSC, their footnote 7).

A soft prompt is a row of vectors in the space of the word embeddings, so one can ask which *words*
it is near. The paper did, after training: by cosine similarity, the nearest words of its learned
prompt vectors were often related to the task, and a prompt started from the class labels kept those
labels among its nearest words.

**Exercise 7.1.** In `labs/prompt_tuning.py`, write `nearest_tokens(prompt, embedding_weight, k=1)`: for
each row of the `(P, D)` prompt, the `k` token ids whose embedding rows (`(V, D)`) have the highest
cosine similarity with it, and those similarities, both `(P, k)`, most similar first (normalise the
rows to unit length, one matrix product, `torch.topk`). A `k` outside 1..V is a `ValueError` whose
message must contain `k=` and the bad value, as in `k=0 is not valid`."""),
    ("code", r"""check("7.1")"""),
    ("md", r"""
**Exercise 7.2.** Write `init_prompt(embedding, config, tokenizer)`, the `(P, D)` float32 starting prompt,
following its docstring: `"random"` at the scale of the real embeddings (peft draws $\mathcal{N}(0, 1)$,
far off that scale); `"vocab"` and `"text"` copy the embedding rows of the token ids
`labs.virtual_tokens.init_token_ids` gives (prefix tuning starts from the same ids): $P$ ids sampled
among the first 5,000 (the paper drew from the 5,000 most common tokens; in a BPE vocabulary the low ids
are the early, frequent merges), or the tokens of `config.init_text`, repeated or cut to $P$ as peft does."""),
    ("code", r"""check("7.2")"""),
    ("md", r"""
How far is each start from real words? For every row, the nearest token (cosine) and how near:"""),
    ("code", r"""
INIT_TEXT = "Give a short dictionary definition of the word:"
for init in prompt_tuning.INITS:
    cfg = prompt_tuning.PromptTuningConfig(num_virtual_tokens=8, init=init, init_text=INIT_TEXT)
    prompt = prompt_tuning.init_prompt(base.get_input_embeddings(), cfg, tok)          # (P, D)
    similarity, ids = prompt_tuning.nearest_tokens(prompt, base.get_input_embeddings().weight)  # (P, 1)
    words = [tok.decode(i) for i in ids.tolist()]
    print(f"{init:>6}: mean cosine to nearest word {similarity.mean().item():.2f}  {words}")"""),
    ("md", r"""
## 3. In front of the input

**Exercise 7.3.** Write `prepend(prompt, embeds)`: `(P, D)` and `(B, T, D)` give `(B, P+T, D)`, the prompt
first in every row, cast to the embeddings' dtype.

**Exercise 7.4.** Write `extend_mask_and_labels(mask, labels, P)`. The attention mask gets $P$ ones in
front, so every row sees the virtual tokens (a left-padded row keeps its padding hidden). Token labels
get $P$ times `-100` in front: the loss skips the virtual positions, which have no word to predict.
Class labels `(B,)` and `None` pass through."""),
    ("code", r"""check("7.3")"""),
    ("code", r"""check("7.4")"""),
    ("md", r"""
## 4. A forward pre-hook, prepending once

`apply(model, config, tokenizer)` freezes the model, hangs a `SoftPrompt` module on it
(`model.soft_prompt.prompt_embeddings`, the only trainable tensor) and registers two hooks. The
**forward pre-hook** runs before every `model(...)` call and rewrites its inputs; a forward hook afterwards
trims the logits back to the $T$ real positions, so `logits[:, t]` still belongs to `input_ids[:, t]`.

`generate()` complicates things. It calls forward once on the whole prompt (the *prefill*, its cache
still empty) and then once per new token, with only that token. The virtual tokens must go in on the
prefill -- they land in the key/value cache like any other token -- and never again: on later calls the
hook only widens the attention mask by $P$ and shifts the positions by $P$ (`decode_inputs`, given).

Positions: the virtual tokens take $0 \dots P-1$ and the real ones follow, counted over the extended
mask, so a left-padded row numbers its real tokens exactly as an unpadded one -- what `generate()` does.

**Exercise 7.5.** Write `SoftPrompt.fresh_inputs(model, kwargs)`, the prefill / training case, following
its docstring. The tests compare `generate()` with greedy decoding by full forward passes, and your
logits, loss and gradient with peft's. A prompt plus input longer than the model's context is a
`ValueError` whose message must contain `max_position_embeddings`: `check_context` writes it."""),
    ("code", r"""check("7.5")"""),
    ("md", r"""
A soft prompt initialised from a text must act exactly like that text typed in front of the input:"""),
    ("code", r"""
n_text = len(tok(INIT_TEXT)["input_ids"])
typed_prompt = prompt_tuning.apply(copy.deepcopy(base), prompt_tuning.PromptTuningConfig(
    num_virtual_tokens=n_text, init="text", init_text=INIT_TEXT), tok)
ids = tok([" serendipity"], return_tensors="pt")["input_ids"]
with torch.no_grad():
    typed = base(input_ids=torch.cat([tok([INIT_TEXT], return_tensors="pt")["input_ids"], ids], 1)).logits[:, n_text:]
    soft = typed_prompt(input_ids=ids).logits
print(f"{n_text} tokens: largest logit difference, soft prompt vs typed text: {(typed - soft).abs().max().item():.2e}")
del typed_prompt"""),
    ("md", r"""
## 5. A real fine-tune: "define X"

The task: WordNet glosses. The model sees `Define the word "X".` (in its chat format) and learns to answer
with the dictionary's definition; the loss and the perplexity count only the answer tokens. We train a
20-token soft prompt, started from `INIT_TEXT`. Soft prompts train few numbers far from any pretrained
weight and want a large learning rate: $3 \cdot 10^{-2}$ here (peft's examples use $10^{-2}$ to
$3 \cdot 10^{-2}$; the paper used 0.3 with Adafactor)."""),
    ("code", r"""
task = get_task("define")
LR = 3e-2
N_EVAL = max(16, preset.n_eval // 2)
train_examples = load_examples("define", "train", n=preset.n_train)
held_out = load_examples("define", "validation", n=N_EVAL)
shown = held_out[:3]

def held_out_perplexity(model) -> float:
    return math.exp(eval_loss(model, tok, task, held_out, preset.seq_len, preset.batch_size))

def tune(num_virtual_tokens: int, init: str, steps: int, batch_size: int = preset.batch_size, progress: bool = False):
    cfg = prompt_tuning.PromptTuningConfig(num_virtual_tokens=num_virtual_tokens, init=init, init_text=INIT_TEXT)
    model = prompt_tuning.apply(copy.deepcopy(base), cfg, tok)
    data = batches(train_examples, tok, task, preset.seq_len, batch_size, epochs=None)
    history = train(model, data, TrainConfig(lr=LR, max_steps=steps, seed=0), progress=progress)
    return model, history

before = {"perplexity": held_out_perplexity(base)}
before_text = generate(base, tok, [ex["prompt"] for ex in shown], max_new_tokens=30)
model, history = tune(20, "text", preset.max_steps, progress=True)
after = {"perplexity": held_out_perplexity(model)}
after_text = generate(model, tok, [ex["prompt"] for ex in shown], max_new_tokens=30)
print("soft prompt:", count_parameters(model))
viz.loss_curves({"prompt tuning, P=20": history}, title='Prompt tuning SmolLM2-135M on "define X"')"""),
    ("code", r"""
for ex, b, a in zip(shown, before_text, after_text):
    print(f"{ex['prompt']}\n  reference: {ex['response']}\n  before:    {b}\n  after:     {a}\n")
viz.before_after(before, after, title="Held-out perplexity of the definitions")"""),
    ("md", r"""
What did the 20 vectors become? They started as the embeddings of `INIT_TEXT`, each at cosine 1 from a
word of it. The cosine to the nearest words now shows how far training took each vector from the
vocabulary, and whether its nearest words are still the ones it started from."""),
    ("code", r"""
learned = model.soft_prompt.prompt_embeddings                                   # (P, D)
similarity, ids = prompt_tuning.nearest_tokens(learned, base.get_input_embeddings().weight, k=3)
for row in range(0, learned.shape[0], 4):
    words = ", ".join(f"{tok.decode([i])!r} {c:.2f}" for i, c in zip(ids[row].tolist(), similarity[row].tolist()))
    print(f"virtual token {row:>2}: {words}")"""),
    ("md", r"""
## 6. How long, and where to start?

Two questions from the paper, asked on a small budget: short runs of the same length for each setting
(tiny in the quick preset, 5 steps of 4 examples, so read the trend, not the decimals). First the prompt length $P$, started
from the task text; then, at one length, the three starting points."""),
    ("code", r"""
del model
gc.collect()
SWEEP_STEPS = max(5, preset.max_steps // 4)   # 5 in the quick preset
SWEEP_BATCH = preset.side_run_batch   # a sweep's batch: half the batch in the quick preset
LENGTHS = (1, 4, 16) if preset.name == "quick" else (1, 5, 20, 50)
runs = {}  # (P, init) -> held-out perplexity after SWEEP_STEPS steps

def sweep_run(num_virtual_tokens: int, init: str) -> float:
    if (num_virtual_tokens, init) not in runs:
        m, _ = tune(num_virtual_tokens, init, SWEEP_STEPS, SWEEP_BATCH)
        runs[num_virtual_tokens, init] = held_out_perplexity(m)
        print(f"P={num_virtual_tokens:>3}, init {init:>6}: held-out perplexity {runs[num_virtual_tokens, init]:.1f}")
        del m
        gc.collect()
    return runs[num_virtual_tokens, init]

by_length = [sweep_run(P, "text") for P in LENGTHS]
viz.sweep({f"after {SWEEP_STEPS} steps": (list(LENGTHS), by_length),
           "no prompt": (list(LENGTHS), [before["perplexity"]] * len(LENGTHS))},
          x_label="virtual tokens P", y_label="held-out perplexity (lower is better)",
          title="Prompt length", logx=True)"""),
    ("code", r"""
P_INIT = LENGTHS[len(LENGTHS) // 2]
by_init = {"no prompt": before["perplexity"], **{init: sweep_run(P_INIT, init) for init in prompt_tuning.INITS}}
fig, (ax,) = viz.new_figure(5.6, 3.6)
bars = ax.bar(list(by_init), list(by_init.values()), color=["#999999", "#c44e52", "#dd8452", "#4c72b0"])
ax.bar_label(bars, fmt="%.0f")
ax.set(ylabel="held-out perplexity (lower is better)",
       title=f"Where the prompt starts (P={P_INIT}, {SWEEP_STEPS} steps)")
fig"""),
    ("md", r"""
## 7. What a step costs: prompt vs prefix vs LoRA

Same batch, same model, one AdamW step each, with each method's `labs finetune` defaults (prompt tuning
$P=20$, prefix tuning $P=10$, LoRA $r=8$). Memory is measured component by component on the real tensors
(`labs.memory.measure_components`: weights, gradients, optimizer state, and what the forward pass saves
for backward). A method whose exercises you have not done yet is skipped."""),
    ("code", r"""
batch = collate(train_examples[:preset.batch_size], tok, task, preset.seq_len)
print("batch:", tuple(batch["input_ids"].shape), "(B, T); prompt tuning runs P + T positions per row")
models = {}
for method, module in (("prompt", "prompt_tuning"), ("prefix", "prefix_tuning"), ("lora", "lora")):
    try:
        models[method] = technique(module).prepare_for_finetune(copy.deepcopy(base), task, {}).train()
        models[method](**batch)
    except NotImplementedError as err:
        print(f"{method}: skipped ({str(err).splitlines()[0]})")
        models.pop(method, None)
optimizers = {m: torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
              for m, model in models.items()}
def training_step(m):
    def step():
        batch_loss(models[m], batch).backward()   # the loss labs.train takes
        optimizers[m].step()
    return step

# in turns (labs.timing): a busy machine slows every method alike
seconds = interleaved_medians({m: training_step(m) for m in models}, repeats=2, warmup=0)
rows = {m: measure_components(model, optimizers[m], batch=batch) for m, model in models.items()}
for m, model in models.items():
    print(f"{m:>6}: step {seconds[m]:.2f} s, {count_parameters(model)}")
del models, optimizers
gc.collect()
viz.memory_breakdown(rows, title="One training step, batch {} x {}".format(*batch["input_ids"].shape))"""),
    ("md", r"""
What the bars say: the frozen weights and the activations make up nearly all of it; gradients and AdamW
state are a few MiB at most for all three. Activations are what differ. None of the three saves the backward pass through the network: the
soft prompt sits *below* the first layer, so its gradient must travel down through all of them, and the
prefix and LoRA live in every layer. Prompt tuning also makes every sequence $P$ tokens longer -- more
activations and more compute per step -- while LoRA adds small extra matrices beside the frozen ones.
Storage is where prompt tuning wins: $P \times D$ numbers per task. The paper adds that one batch can
mix tasks -- each row with its own prompt -- on one frozen model, with no extra machinery.

| step | exercise |
|---|---|
| which words a prompt is near | `nearest_tokens` (7.1) |
| random / vocabulary / text start | `init_prompt` (7.2) |
| prompt in front of the embeddings | `prepend` (7.3) |
| mask ones, labels -100 | `extend_mask_and_labels` (7.4) |
| the hook's prefill / training case | `SoftPrompt.fresh_inputs` (7.5) |"""),
]


if __name__ == "__main__":
    main(CELLS, "prompt", OUT)
