"""Build notebooks/06_prefix_tuning.ipynb (committed without outputs).

    python tools/notebooks/nb06_prefix.py
"""
from __future__ import annotations

from nbtools import ROOT, main

OUT = ROOT / "notebooks" / "06_prefix_tuning.ipynb"

CELLS = [
    ("md", r"""
# 06 · Prefix tuning: steer every layer through the cache

Can a frozen model learn to write like Jane Austen -- or like the King James Bible -- if the only thing
we train is a handful of vectors, and no weight of the model moves at all?

Li & Liang (2021) said yes, with **prefix tuning**. In every attention layer, each token looks back at the
*keys* and *values* of the tokens before it. Prefix tuning puts $P$ extra key/value pairs in front of
them in **every layer**: free parameters, not computed from any token. Every real token then attends
to them as if $P$ tokens of "context" came first, a context chosen by gradient descent.

What the paper reports. Training 0.1% of the parameters, prefix tuning of GPT-2 on table-to-text
(E2E, WebNLG, DART) was comparable to full fine-tuning with the full training data (section 6.1,
Table 2); on XSUM summarisation with BART it trailed full fine-tuning (section 6.2, Table 3). It did
better than fine-tuning with little data (section 6.3) and on topics unseen during training (section
6.4). The default prefix was 10 positions long (section 5.3); quality rose with the length up to
about 10 for table-to-text and 200 for summarisation, then dipped a little (section 7.1). We use
$P = 10$.

For one attention head of layer $\ell$, with the prefix keys $K^{\ell}_{\text{pre}}$ and values
$V^{\ell}_{\text{pre}}$ (each $P \times d$):

$$\text{head}(x_t) = \operatorname{softmax}\!\Big(\frac{q_t\,[\,K^{\ell}_{\text{pre}}\,;\,K^{\ell}_{\le t}\,]^{\top}}{\sqrt{d}}\Big)\,[\,V^{\ell}_{\text{pre}}\,;\,V^{\ell}_{\le t}\,]$$

This notebook builds it in `labs/prefix_tuning.py` (six exercises), then trains two prefixes on
SmolLM2-135M -- one on Austen, one on the King James Bible -- and asks each to continue the same
sentence."""),
    ("code", r"""
import copy
import math
import tempfile
from pathlib import Path

import torch
from transformers import DynamicCache

from labs import viz
from labs.check import check
from labs.data import batches, load_examples
from labs.evaluate import eval_loss, perplexity
from labs.impl import technique
from labs.models import load_model
from labs.peft_format import save_adapter
from labs.presets import get_preset
from labs.surgery import count_parameters
from labs.train import TrainConfig, train

prefix_tuning = technique("prefix_tuning")  # your labs/prefix_tuning.py (or the reference, LABS_IMPL=solutions)
preset = get_preset()
torch.manual_seed(0)
base, tok = load_model("smollm2-135m")      # SmolLM2-135M-Instruct, fp32, eval mode
print(f"preset {preset.name}: {preset.max_steps} steps of {preset.batch_size} x {preset.seq_len} tokens")
print(f"SmolLM2: {count_parameters(base).total:,} parameters")"""),
    ("md", r"""
## 1. How big is a prefix?

A prefix holds, for each of the $L$ layers, $P$ keys and $P$ values. How wide is one key? Not always $D$:
SmolLM2 uses **grouped-query attention** -- 9 query heads share 3 key/value heads of 64 numbers each --
so a layer's keys are $3 \times 64 = 192$ wide, not $576$. A prefix must have exactly the shape the
attention layers use for their own keys:

$$\text{prefix parameters} = P \times L \times 2 \times \text{kv\_heads} \times \text{head\_dim}$$

**Exercise 6.1.** In `labs/prefix_tuning.py`, write `kv_shape(model_config)`: return a
`KVShape(layers, kv_heads, head_dim)` read from a model's config. `num_key_value_heads` when the config
has it (grouped-query attention), else `num_attention_heads` (BERT, GPT-2); `head_dim` when the config
sets it, else `hidden_size // num_attention_heads`."""),
    ("code", r"""check("6.1")"""),
    ("code", r"""
shape = prefix_tuning.kv_shape(base.config)
P = 10
print(shape)
print(f"one prefix of P={P}: {P * shape.width:,} numbers "
      f"(with 9 full-width heads it would be {P * shape.layers * 2 * 576:,})")
print(f"share of SmolLM2: {100 * P * shape.width / count_parameters(base).total:.3f}%")"""),
    ("md", r"""
## 2. The key/value cache carries the prefix

When a model generates, it keeps the keys and values of every token it has already seen in a **cache**,
so each new token only computes its own. transformers 5 models take it as `model(..., cache=cache)`: a
`DynamicCache` with one layer entry per attention layer, keys and values shaped
`(B, kv_heads, tokens, head_dim)`, filled with `cache.update(keys, values, layer_idx)`.

That is exactly the door prefix tuning needs: a cache that already "contains" $P$ tokens -- our prefix --
makes the model treat them as earlier context, in every layer, without touching its code.

We store all layers of a prefix as one flat tensor `(P, L * 2 * kv_heads * head_dim)`, the layout peft
saves, so our adapters and peft's are interchangeable. Viewed as `(P, L, 2, kv_heads, head_dim)`,
index 0 of the "2" is the key and 1 the value.

**Exercise 6.2.** Write `prefix_to_cache(prefix, shape, batch_size, cache)`: give layer $\ell$ its keys and
values, each `(B, kv_heads, P, head_dim)` -- the same prefix for every row of the batch (`expand`, no
copy) -- with `cache.update`, and return the cache."""),
    ("code", r"""check("6.2")"""),
    ("code", r"""
cache = prefix_tuning.prefix_to_cache(torch.zeros(P, shape.width), shape, 2, DynamicCache(config=base.config))
print("positions in the cache:", cache.get_seq_length())
print("layer 0 keys:", tuple(cache.layers[0].keys.shape), "= (B, kv_heads, P, head_dim)")"""),
    ("md", r"""
## 3. The trainable prefix

The prefix lives in a small module, `PrefixEncoder`, hung on the model as `model.prefix_encoder`. Its
parameters carry the `prefix_` name so that selecting, saving and testing work by name. It holds either
the prefix itself, `prefix_kv` (P, width), or -- section 5 -- a small MLP that computes it.

**Exercise 6.3.** Write `PrefixEncoder.prefix()`: return `prefix_kv` when the encoder has it, else
`prefix_mlp(prefix_embedding)`."""),
    ("code", r"""check("6.3")"""),
    ("md", r"""
## 4. A forward pre-hook puts it in

`apply(model, config)` freezes the model, attaches the encoder and registers a **forward pre-hook**: a
function PyTorch runs before every `model(...)` call, which may rewrite its keyword arguments. Ours
does three things:

1. with no cache, or an empty one, fill one with the prefix (`prefix_to_cache`);
2. widen the attention mask by $P$ ones in front: every row sees the prefix, padding stays hidden;
3. give the real tokens positions $P, \dots, P+T-1$.

`model.generate()` calls forward once on the whole prompt (the *prefill*), then once per new token. It
passes its own cache, empty on the prefill: the hook fills it there, so the prefix goes in exactly once
and one fresh cache per `generate()` call is sized for whatever batch generate runs (with
`num_return_sequences` or beams, that is already the expanded batch). Later calls only get the wider
mask and shifted positions.

**Why positions from $P$?** The prefix stands for $P$ tokens of context; the real tokens sit where they
would if $P$ real tokens came first. peft does the same, and so did the paper's GPT-2 code (GPT-2 counts
positions from the cache length). SmolLM2 uses rotary position embeddings: the score of two real tokens
depends only on the *difference* of their positions, so the shift changes nothing among them. The prefix
keys carry no rotation of their own, so a query's score with them depends on the query's position: start
at 0 instead and a prefix trained here, or by peft, would meet queries rotated differently than during
training. Section 6 shows the payoff: with this convention a prefix made of real tokens' keys and values
acts *exactly* like those tokens typed in front.

**Exercise 6.4.** Write `PrefixEncoder.model_inputs(model, kwargs)`, the body of the hook, following its
docstring. A left-padded row gets positions counted only over its real tokens
(`positions_from_mask`, shared with prompt tuning in `labs/virtual_tokens.py`), which is what
`generate()` does too. A prefix plus input longer than the model's context is a `ValueError` whose
message must contain `max_position_embeddings`: `check_context` writes it."""),
    ("code", r"""check("6.4")"""),
    ("md", r"""
A prefix of random numbers ($\mathcal{N}(0, 1)$, peft's default) is not a gentle start: every layer
attends to $P$ keys and values that look like nothing the model has seen."""),
    ("code", r"""
enc = tok(["The morning was"], return_tensors="pt")
random_prefix = prefix_tuning.apply(copy.deepcopy(base), prefix_tuning.PrefixTuningConfig(num_virtual_tokens=P, init="random"))
for name, m in {"no prefix": base, "random prefix": random_prefix}.items():
    out = m.generate(**enc, max_new_tokens=20, do_sample=False, repetition_penalty=1.2)
    print(f"{name:>14}: {tok.decode(out[0, enc['input_ids'].shape[1]:], skip_special_tokens=True)!r}")
del random_prefix"""),
    ("md", r"""
## 5. Reparameterisation, then fold it away

Li & Liang found that training the prefix numbers directly was unstable. Their fix: while training,
compute the prefix with a small MLP from a smaller embedding,

$$\text{prefix} = \mathrm{MLP}(E), \qquad E \in \mathbb{R}^{P \times k}, \quad \mathrm{MLP}: k \xrightarrow{\text{linear}} 512 \xrightarrow{\tanh,\ \text{linear}} L \cdot 2 \cdot \text{kv\_heads} \cdot \text{head\_dim}$$

(their section 4.3), with $k = $ kv_heads $\times$ head_dim ($192$ here) and linear, tanh, linear, as in
peft (`PrefixTuningConfig(prefix_projection=True)`) and in the authors' code. The hidden width 512 is
this course's choice (`encoder_hidden_size`). peft's hidden width defaults to $k$ itself; the authors'
code used 512 for table-to-text and 800 for summarisation, numbers the paper reports as the width $k$
of $E$ (footnote 4 of section 4.3). After training only the MLP's *output* matters, so it can be
computed once and stored instead.

**Exercise 6.5.** Write `PrefixEncoder.fold()`: with `torch.no_grad()`, compute `prefix()`, delete
`prefix_mlp` and `prefix_embedding`, and keep the result as a new `nn.Parameter` named `prefix_kv`.
Nothing to do when there is no MLP."""),
    ("code", r"""check("6.5")"""),
    ("code", r"""
mlp_model = prefix_tuning.apply(copy.deepcopy(base), prefix_tuning.PrefixTuningConfig(
    num_virtual_tokens=P, init="random", prefix_projection=True))
ids = tok(["Reparameterise while training, fold for serving."], return_tensors="pt")["input_ids"]
with torch.no_grad():
    before = mlp_model(input_ids=ids).logits
print("while training:", count_parameters(mlp_model))
prefix_tuning.fold(mlp_model)
with torch.no_grad():
    after = mlp_model(input_ids=ids).logits
print("after fold:    ", count_parameters(mlp_model))
print(f"largest logit change from folding: {(after - before).abs().max().item():.2e}")
del mlp_model"""),
    ("md", r"""
## 6. Start from real words

The paper's other remedy: initialise the prefix with the keys and values that real words produce
(section 7.4: it mattered with little data, and made no difference with the full data). Run
the frozen model once on $P$ tokens with an empty cache, and read the cache back: that is a prefix the
model already understands. `init="vocab"` (our default) uses $P$ common tokens drawn at random;
`init="text"` uses the tokens of a text you choose.

**Exercise 6.6.** Write `prefix_from_tokens(model, token_ids, shape)` following its docstring: the inverse
of `prefix_to_cache`."""),
    ("code", r"""check("6.6")"""),
    ("md", r"""
If positions and masks are right, a prefix made from a text must act *exactly* like the text typed in
front of the input:"""),
    ("code", r"""
text = "It is a truth universally acknowledged"
n_text = len(tok(text)["input_ids"])
from_text = prefix_tuning.apply(copy.deepcopy(base), prefix_tuning.PrefixTuningConfig(
    num_virtual_tokens=n_text, init="text", init_text=text), tok)
ids = tok([", that a single man"], return_tensors="pt")["input_ids"]
with torch.no_grad():
    typed = base(input_ids=torch.cat([tok([text], return_tensors="pt")["input_ids"], ids], dim=1)).logits[:, n_text:]
    prefixed = from_text(input_ids=ids).logits
print(f"{n_text} text tokens as a prefix vs typed: largest logit difference {(typed - prefixed).abs().max().item():.2e}")
del from_text"""),
    ("md", r"""
## 7. Style control: one frozen model, two prefixes

Now the real thing. We train one prefix on excerpts of Jane Austen's novels and another on the King
James Bible (both public domain, in `data/`), each for `STYLE_STEPS` steps of `STYLE_BATCH` rows (12 of
4 in the quick preset, the preset's own budget in the others), from the same frozen SmolLM2. Prefix and prompt tuning train a
few numbers far from any pretrained weight and take a larger learning rate than LoRA: $10^{-2}$ here
(peft's examples use $10^{-2}$ to $3 \cdot 10^{-2}$)."""),
    ("code", r"""
LR = 1e-2
STYLE_STEPS = preset.side_run_steps   # two side runs: 12 steps of 4 rows each in the quick preset
STYLE_BATCH = preset.side_run_batch
N_EVAL = max(16, preset.n_eval // 4)
CORPORA = ("austen", "kjv")
held_out = {c: load_examples(c, "validation", n=N_EVAL) for c in CORPORA}

def train_prefix(corpus: str):
    model = prefix_tuning.apply(copy.deepcopy(base), prefix_tuning.PrefixTuningConfig(num_virtual_tokens=P))
    data = batches(load_examples(corpus, "train", n=preset.n_train), tok, corpus, preset.seq_len,
                   STYLE_BATCH, epochs=None)
    history = train(model, data, TrainConfig(lr=LR, max_steps=STYLE_STEPS, seed=0))
    return model, history

NAMES = {"austen": "Austen prefix", "kjv": "King James prefix"}
style, histories = {}, {}
for corpus in CORPORA:
    style[corpus], histories[NAMES[corpus]] = train_prefix(corpus)
models = {"no prefix": base, **{NAMES[c]: m for c, m in style.items()}}
print(f"each prefix: {count_parameters(style['austen'])}")
viz.loss_curves(histories, title="Prefix tuning SmolLM2-135M on two corpora")"""),
    ("md", r"""
**Held-out perplexity, 3 x 2.** Each row is a model (the base, or a prefix), each column a corpus it did
not train on (held-out excerpts). A prefix that learned a *style* should help most on its own corpus:
the diagonal of the two prefix rows."""),
    ("code", r"""
table = {name: {c: math.exp(eval_loss(m, tok, c, held_out[c], preset.seq_len, preset.batch_size)) for c in CORPORA}
         for name, m in models.items()}
print(f"{'held-out perplexity':>20} | " + " | ".join(f"{c:>8}" for c in CORPORA))
for name, row in table.items():
    print(f"{name:>20} | " + " | ".join(f"{row[c]:8.1f}" for c in CORPORA))

fig, (ax,) = viz.new_figure(6.4, 3.6)
width = 0.8 / len(table)
for i, (name, row) in enumerate(table.items()):
    bars = ax.bar([j + i * width for j in range(len(CORPORA))], [row[c] for c in CORPORA], width, label=name)
    ax.bar_label(bars, fmt="%.0f")
ax.set_xticks([j + width for j in range(len(CORPORA))], [f"held-out {c}" for c in CORPORA])
ax.set(ylabel="perplexity (lower is better)", title="Which prefix knows which corpus")
ax.legend()
fig"""),
    ("md", r"""
**Continue the same sentence.** Greedy decoding (with a mild repetition penalty, as small models loop)
from each model. Then we score every continuation with each trained prefix: its perplexity under the
Austen prefix and under the King James prefix. A continuation written in Austen's manner should look
likelier to the Austen prefix, and vice versa."""),
    ("code", r"""
prompt = "And then she said unto him,"
enc = tok([prompt], return_tensors="pt")
continuations = {}
for name, m in models.items():
    out = m.generate(**enc, max_new_tokens=40, do_sample=False, repetition_penalty=1.2)
    continuations[name] = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    print(f"--- {name}:\n{prompt}{continuations[name]}\n")

print(f"{'perplexity of the continuation':>32} | " + " | ".join(f"{'under ' + c + ' prefix':>19}" for c in CORPORA))
for name, text in continuations.items():
    scores = [perplexity(style[c], tok, prompt + text) for c in CORPORA]
    print(f"{'by ' + name:>32} | " + " | ".join(f"{s:19.1f}" for s in scores))"""),
    ("md", r"""
How much did each style cost to store? The adapter is the prefix alone, in the PEFT two-file layout
(`peft.PeftModel.from_pretrained` reads it):"""),
    ("code", r"""
folder = Path(tempfile.mkdtemp()) / "austen-prefix"
save_adapter(style["austen"], folder)
size = sum(f.stat().st_size for f in folder.iterdir())
print(f"{folder.name}: {size / 1024:.0f} KiB on disk, vs {count_parameters(base).total * 4 / 2**20:.0f} MiB for the fp32 model")
print(sorted(f.name for f in folder.iterdir()))"""),
    ("md", r"""
## 8. Notes from the source

**Gradient checkpointing is refused.** transformers' checkpointed layers replace the cache by `None`
(they cannot replay a cache update on the backward pass), so the prefix would silently vanish from
training. `model.gradient_checkpointing_enable()` on a prefix-tuned model raises, and so does a training
step of a model whose layers had it switched on another way. Prompt tuning (notebook 07) and LoRA work
with it.

**BERT works too.** In transformers 5.24, `BertSelfAttention` calls `cache.update(...)` whenever a cache
is passed -- also in an encoder -- and `BertModel` accepts a 2-D attention mask as long as keys plus
queries (`P + T`), so `apply` works on MiniLM for classification (`tests/test_ex_prefix_tuning.py` checks
it against the base model reading peft's own prefix cache). One difference from Llama: BERT's positions are learned embeddings, so
starting real tokens at $P$ moves `[CLS]` off position 0 -- as peft does, and exactly as typing $P$ tokens
in front would. peft 0.21.2 itself fails here on transformers 5: it looks for a `past_key_values`
argument in BERT's signature, which transformers 5 renamed `cache`.

**peft's `generate()` for prompt learning is wrong on transformers 5.** peft 0.21.2 looks for the cache
under the old name `past_key_values` and for `cache_position`, which generate no longer passes. For
prefix tuning it adds its prefix under the old name beside generate's own `cache`; transformers keeps
`cache` and drops the old name, so the prefix is ignored: peft's generations equal the base model's. For
prompt tuning it believes every step is the first and prepends the soft prompt again on every new token.
peft's *forward* is right (our tests match its logits, losses and gradients exactly), so compare
adapters through forward passes, and generate with the hook-based models here.

| step | exercise | what it does |
|---|---|---|
| geometry | `kv_shape` (6.1) | L, kv_heads, head_dim: GQA keys are narrower than queries |
| the cache | `prefix_to_cache` (6.2) | flat prefix -> per-layer (B, kv_heads, P, head_dim) |
| the parameter | `PrefixEncoder.prefix` (6.3) | plain, or through the MLP |
| the hook | `PrefixEncoder.model_inputs` (6.4) | cache on the prefill, mask + P, positions from P |
| serving | `PrefixEncoder.fold` (6.5) | MLP output becomes the parameter |
| initialisation | `prefix_from_tokens` (6.6) | real tokens' keys and values |"""),
]


if __name__ == "__main__":
    main(CELLS, "prefix", OUT)
