"""Build notebooks/10_storage.ipynb (committed without outputs).

    python tools/notebooks/nb10_storage.py
"""
from __future__ import annotations

from nbtools import ROOT, main

OUT = ROOT / "notebooks" / "10_storage.ipynb"

CELLS = [
    ("md", r"""
# 10 · Storage and serving: small files, one base, many adapters

Notebook 00 promised that PEFT saves **storage**: a company that specialises a 70B model for ten
tasks keeps one base and ten small adapter files instead of ten full copies. This notebook measures
that promise on SmolLM2-135M, then uses it the way production servers do:

1. every method of the course saved in the PEFT two-file layout, and its bytes on disk beside the
   full checkpoint;
2. notebook 00's 70B arithmetic beside the ratio measured here;
3. one base model in memory serving three LoRA adapters, switched per request: memory held, switch
   time, and a check that every request gets exactly what its own fine-tuned model would answer;
4. merging an adapter into the base and unmerging it, and what each form costs per request;
5. many adapters in **one batch**, each row with its own (exercises 10.1-10.3 in `labs/multi_lora.py`),
   measured against the alternatives.

Sections 1-4 use the course's infrastructure (`labs.peft_format`, `labs.serving`) and the exercises
you wrote in notebooks 00 (`storage_for_tasks`) and 05 (LoRA's `merge` / `unmerge`)."""),
    ("code", r"""
import copy
import shutil

import torch
from safetensors.torch import load_file

from labs import viz
from labs.data import get_task
from labs.files import dir_bytes, scratch_folder
from labs.full import save_full_model
from labs.impl import technique
from labs.memory import weight_bytes
from labs.methods import METHODS, prepare
from labs.models import load_model
from labs.peft_format import load_adapter, save_adapter
from labs.prerequisites import prerequisites, ready
from labs.serving import AdapterServer
from labs.surgery import count_parameters
from labs.timing import count_matrix_products, interleaved_medians

prerequisites({"section 1, each method's files (full fine-tuning, and each method once its exercises are done)": ["full"],
               "section 2, notebook 00's storage arithmetic, measured": ["scaling", "lora"],
               "sections 3-4, serving and merging LoRA adapters": ["lora"],
               "section 5, many adapters in one batch": ["lora", "10.1-10.3"]})
lora, scaling = technique("lora"), technique("scaling")  # your modules (or the reference: LABS_IMPL=solutions)
torch.manual_seed(0)
model, tok = load_model("smollm2-135m")   # the base, kept untouched: every method starts from a copy
model.eval()
task = get_task("define")
prompt_ids = tok('Define the word "lantern".', return_tensors="pt").input_ids   # (1, T)
workdir = scratch_folder("nb10-")     # removed at the end, and when the kernel stops, even after an error
print(f"SmolLM2-135M: {count_parameters(model).total:,} parameters, prompt of {prompt_ids.shape[1]} tokens")"""),
    ("md", r"""
## 1. What each method leaves on disk

`labs.save_adapter(model, folder)` writes the PEFT layout that Hugging Face peft reads:

    folder/adapter_config.json        what the adapter is: peft_type, rank, targets, ...
    folder/adapter_model.safetensors  only the trained tensors

Full fine-tuning has no adapter: its result is the whole model (`labs.full.save_full_model`, one
safetensors file, the tied embedding stored once). The size of a file depends on the *shapes* of what
trains, not on the values, so **no training is needed to measure it**: each method is applied with
the registry's default options to a fresh copy of the base and saved as is. Everything is stored in
float32, as the course trains; at 16 bits every file would be half as large, the ratios the same.
QLoRA is included with its `scratch` backend (our NF4 code from notebook 08, no bitsandbytes): it
saves a plain LoRA adapter, since the 4-bit base is a property of the frozen model, not of the file."""),
    ("code", r"""
rows = {}
for name in METHODS:
    if not ready(name):     # your module still has open exercises: its file waits (the line says which)
        continue
    adapted = prepare(name, copy.deepcopy(model), task)          # the registry's default options
    folder = workdir / "methods" / name
    if name == "full":
        save_full_model(adapted, folder / "model.safetensors")
    else:
        save_adapter(adapted, folder)
    rows[name] = {"bytes": dir_bytes(folder), "trainable": count_parameters(adapted).trainable,
                  "files": sorted(p.name for p in folder.iterdir())}
    del adapted

full_bytes = rows["full"]["bytes"]
print(f"{'method':<8}{'bytes on disk':>16}{'MB':>10}{'% of full':>11}{'trainable':>14}{'bytes/param':>13}  files")
for name, row in rows.items():
    print(f"{name:<8}{row['bytes']:>16,}{row['bytes'] / 1e6:>10.2f}{100 * row['bytes'] / full_bytes:>11.4f}"
          f"{row['trainable']:>14,}{row['bytes'] / row['trainable']:>13.2f}  {', '.join(row['files'])}")
print("the full checkpoint is " + ", ".join(f"{full_bytes / row['bytes']:,.0f}x {name}"
                                           for name, row in rows.items() if name != "full"))"""),
    ("code", r"""
fig, (ax,) = viz.new_figure(7, 3.8)
names = sorted(rows, key=lambda n: rows[n]["bytes"])
bars = ax.bar(names, [rows[n]["bytes"] for n in names],
              color=["#999999" if n == "full" else "#4c72b0" for n in names])
ax.bar_label(bars, labels=[f"{rows[n]['bytes'] / 1e6:.2f} MB" for n in names], padding=2, fontsize=8)
ax.set_yscale("log")
ax.set(ylabel="bytes on disk (log scale)", title="SmolLM2-135M: each method's saved file(s), float32")
fig"""),
    ("md", r"""
Read the last two columns. Every file is about 4 bytes per trained number (float32) plus a small
JSON header: the disk holds exactly what trains, nothing else. So the ranking is the ranking of
the trainable counts: prompt tuning (a few soft tokens), BitFit (the norm gains, since Llama has no
biases) and prefix tuning take tens to hundreds of kilobytes; LoRA at r = 8 on q and v under 2 MB
(QLoRA's file is the same LoRA adapter); the bottleneck adapters of notebook 04 more, since every
block gets two of them; and the full model over 500 MB. The log scale is needed: the ratios printed
under the table run from tens to over ten thousand."""),
    ("md", r"""
## 2. Notebook 00's arithmetic, measured

Notebook 00 stored a 70B model at 16 bits (about 140 GB) for ten tasks: ten full copies against one
base plus ten LoRA adapters (r = 16 on two projections per block). Here is that arithmetic again,
with your `storage_for_tasks` (exercise 0.4), beside the same question asked of the files just
written: one SmolLM2 base plus N LoRA adapters against N full checkpoints."""),
    ("code", r"""
%%needs scaling lora
big_base = scaling.bytes_of_weights(69e9, "bf16")                                          # ~140 GB
big_adapter = scaling.bytes_of_weights(scaling.lora_trainable_params(8192, 8192, r=16, n_layers=80, n_targets=2), "bf16")
big = scaling.storage_for_tasks(10, big_base, big_adapter)
small = scaling.storage_for_tasks(10, full_bytes, rows["lora"]["bytes"])
print(f"70B, 10 tasks (notebook 00)   : full copies {big.full_copies / 1e12:.2f} TB, "
      f"base + adapters {big.base_plus_adapters / 1e9:.1f} GB, ratio {big.base_plus_adapters / big.full_copies:.4f}")
print(f"SmolLM2, 10 tasks (measured)  : full copies {small.full_copies / 1e9:.2f} GB, "
      f"base + adapters {small.base_plus_adapters / 1e9:.3f} GB, ratio {small.base_plus_adapters / small.full_copies:.4f}")
print(f"adapter / base: 70B {big_adapter / big_base:.5f}, SmolLM2 measured {rows['lora']['bytes'] / full_bytes:.5f}")

tasks = [1, 2, 5, 10, 20, 50, 100]
ratios = {name: [scaling.storage_for_tasks(n, full_bytes, rows[name]["bytes"]).base_plus_adapters / (n * full_bytes)
                 for n in tasks] for name in rows if name != "full"}
fig = viz.sweep({name: (tasks, r) for name, r in ratios.items()}, x_label="number of tasks N",
                y_label="(base + N adapters) / (N full copies)", title="Measured storage ratio, SmolLM2-135M")
fig.axes[0].set(xscale="log", yscale="log")
fig"""),
    ("md", r"""
The two ratios are close, both near 1/10: with ten tasks the base dominates the adapter library, so
the saving is about "nine full copies not stored", whatever the model's size. The adapter's own share
differs more (third line above): per layer, LoRA grows like $r \cdot D$ while the weights grow like
$D^2$, so an adapter is a larger fraction of a small model (D = 576) than of a 70B one (D = 8192).
That share decides the ratio once N grows large: the curves stop falling like 1/N and flatten towards
adapter / base, the bottleneck adapters first.

## 3. One base, three adapters, switched per request

A server that holds ten full fine-tuned models needs ten times the memory of one. A PEFT server holds
the base **once** and keeps every adapter beside it; each request names its adapter, and switching
means copying that adapter's few tensors into the layers, not loading a model. `labs.serving.AdapterServer`
does this for LoRA: the first adapter wraps the target layers (through your `from_peft` and
`apply`), every later one must have the same rank and targets, and `use(name)` copies its A and B
factors in place.

Three adapters, as three tasks would give. We do not train them here (notebook 05 did that, and three
fine-tunes would not fit this notebook's time): each gets **non-zero B factors drawn from a different
seed**, as after training, so that the three really change the model, and differently."""),
    ("code", r"""
%%needs lora
folders = {}
for seed, name in enumerate(("define", "sentiment", "style"), start=1):
    adapted = lora.apply(copy.deepcopy(model), lora.LoRAConfig(r=8, alpha=16))
    with torch.no_grad():
        for _, layer in lora.lora_layers(adapted):
            layer.lora_B.normal_(std=0.02, generator=torch.Generator().manual_seed(seed))
    folders[name] = save_adapter(adapted, workdir / "served" / name)
    del adapted

server = AdapterServer(copy.deepcopy(model))
for name, folder in folders.items():
    server.add(name, folder)

base_in_memory = weight_bytes(model)
in_layers = weight_bytes(server.model) - base_in_memory           # the active adapter's factors, in place
held = weight_bytes(server.model) + sum(server.adapter_bytes().values())
copies = len(folders) * base_in_memory
print(f"served adapters: {server.names}")
print(f"held in memory : base {base_in_memory / 1e6:.1f} MB + active factors {in_layers / 1e6:.2f} MB + adapters "
      + " + ".join(f"{b / 1e6:.2f}" for b in server.adapter_bytes().values()) + f" MB = {held / 1e6:.1f} MB")
print(f"3 full copies  : {copies / 1e6:.1f} MB  ->  the server holds {held / copies:.3f} of it")"""),
    ("md", r"""
Now the promise that matters to a user: a request served this way gets **the same answer** as the
fine-tuned model loaded on its own. For each adapter: load it alone on a fresh base (as if it were the
only model on the machine) and compare its logits with the server's, requests arriving in a mixed
order. The largest difference between two *different* adapters shows that the check can fail."""),
    ("code", r"""
%%needs lora
TOLERANCE = 1e-5
served = {name: server(name, input_ids=prompt_ids).logits for name in ("sentiment", "define", "style", "define")}
for name, folder in folders.items():
    with torch.no_grad():
        alone = load_adapter(copy.deepcopy(model), folder).eval()(prompt_ids).logits
    gap = (served[name] - alone).abs().max().item()
    print(f"{name:<10} server vs loaded alone: max |difference| {gap:.1e}  (within {TOLERANCE:g}: {gap <= TOLERANCE})")
    assert gap <= TOLERANCE
    del alone
print(f"between two adapters (define vs style): max |difference| "
      f"{(served['define'] - served['style']).abs().max().item():.2f}")"""),
    ("md", r"""
How long does a switch take? Against it, the alternative of full copies that do not fit in memory:
switching means reading another 538 MB checkpoint from disk into the model (from the page cache here,
the fastest case). And for scale, one request itself: a forward pass over the prompt. All three take
turns in one timing loop (`labs.timing.interleaved_medians`, median wall time)."""),
    ("code", r"""
%%needs lora
full_file = workdir / "methods" / "full" / "model.safetensors"
other = copy.deepcopy(model)

def switch_full_copy():
    missing, unexpected = other.load_state_dict(load_file(full_file), strict=False)  # lm_head: tied
    assert not unexpected

turn = iter(["define", "sentiment", "style"] * 100)
with torch.inference_mode():
    switch = interleaved_medians({"switch LoRA adapter": lambda: server.use(next(turn)),
                                  "switch full copy (read from disk)": switch_full_copy,
                                  "one request (forward)": lambda: server.model(prompt_ids)}, repeats=5)
del other
for what, seconds in switch.items():
    print(f"{what:<36} {1e3 * seconds:9.2f} ms")
print(f"a LoRA switch is {switch['switch full copy (read from disk)'] / switch['switch LoRA adapter']:.0f}x faster "
      f"than loading a full copy, and {switch['one request (forward)'] / switch['switch LoRA adapter']:.0f}x cheaper than the request itself")"""),
    ("md", r"""
A LoRA switch copies about 1.8 MB; a full copy, 538 MB. That is why servers such as vLLM's multi-LoRA
and S-LoRA keep one base on the GPU and many adapters beside it; they go further and serve a *batch*
mixing several adapters at once (each row's low-rank path with its own A and B), which this small
server does not do: it serves one adapter per call.

## 4. Merge and unmerge: the adapter inside the weights

Unmerged, every adapted layer computes $Wx + \frac{\alpha}{r}BAx$: two extra thin products per
layer, per request. Merged (your `merge` from exercise 5.4), $W \leftarrow W + \frac{\alpha}{r}BA$ and
the layer is the base layer again. For a server that serves one task for a long time, merging removes
the adapter's cost; `unmerge` takes the update back out when another adapter is needed. We merge a copy
of the server's model with the `define` adapter active and compare outputs, then latency at batch 1."""),
    ("code", r"""
%%needs lora
server.use("define")
unmerged_model = server.model
merged_model = lora.merge(copy.deepcopy(unmerged_model))
with torch.no_grad():
    gap = (merged_model(prompt_ids).logits - unmerged_model(prompt_ids).logits).abs().max().item()
print(f"merged vs unmerged logits: max |difference| {gap:.1e}  (within 1e-4: {gap <= 1e-4}; float32 sums in another order)")
assert gap <= 1e-4

forms = {"base": model, "LoRA unmerged": unmerged_model, "LoRA merged": merged_model}
products = {name: count_matrix_products(lambda m=m: m(prompt_ids)) for name, m in forms.items()}
with torch.inference_mode():
    latency = interleaved_medians({name: (lambda m=m: m(prompt_ids)) for name, m in forms.items()}, repeats=7)
for name in forms:
    print(f"{name:<14} {1e3 * latency[name]:7.1f} ms per request (batch 1, {prompt_ids.shape[1]} tokens), "
          f"{latency[name] / latency['base']:.2f}x base, {products[name]} matrix products")
print(f"adapted layers: {len(lora.lora_layers(unmerged_model))}")
viz.ratio_bars({f"forward, batch 1 x {prompt_ids.shape[1]} tokens": latency})"""),
    ("md", r"""
The product count is the part a noisy clock cannot blur: unmerged, each adapted layer adds two
products (the count grows by twice the number of adapted layers printed above); merged, the count is the base's again. On a CPU at batch 1 the wall-clock gap is small
(the thin products are cheap beside the 576-wide ones), and a few percent either way is the shared
machine's noise: notebook 05 timed token-by-token generation, where the gap shows more.

Unmerging subtracts the same update again. In exact arithmetic that restores $W$; in float32 it leaves
rounding error, which is why a server that switches often keeps the base unmerged (section 3) and
merges only for a long-lived single task."""),
    ("code", r"""
%%needs lora
lora.unmerge(merged_model)
base_weights = dict(model.named_parameters())
drift = max((p - base_weights[n.replace(".base_layer", "")]).abs().max().item()
            for n, p in merged_model.named_parameters() if ".lora_" not in n)
with torch.no_grad():
    back = (merged_model(prompt_ids).logits - unmerged_model(prompt_ids).logits).abs().max().item()
print(f"after merge + unmerge: largest weight change {drift:.1e}, logits vs never merged {back:.1e}")
unchanged = all(torch.equal(p, base_weights[n.replace(".base_layer", "")])
                for n, p in server.model.named_parameters() if ".lora_" not in n)
print(f"the server's base weights after all the switching: bit-identical to the base: {unchanged}")"""),
    ("code", r"""
shutil.rmtree(workdir)   # the files this notebook wrote (scratch_folder also removes them when the kernel stops)"""),
    ("md", r"""
## 5. Many adapters in one batch

Section 3's server runs one adapter per call: requests for ten adapters mean ten forwards, each
paying for the base's big products again. Multi-LoRA servers (Punica, S-LoRA, LoRAX, vLLM, and
peft with `adapter_names=[...]`) put requests for *different* adapters in one batch. In every
adapted layer, for each row $n$ of the batch:

$$h_n = W x_n + s_n\, B_n A_n x_n$$

$W x$ is computed **once for the whole batch**, as for a single model; only the thin update uses
row $n$'s own adapter ($A_n$, $B_n$, scale $s_n$). Two ways to compute the updates:

- **gather**: stack every adapter's factors in one tensor (K adapters, zero-padded to one rank),
  pick each row's A and B by index, and run one *batched* product (`torch.bmm`) over the rows;
- **group**: collect the rows that name the same adapter, and run one pair of ordinary products
  per adapter over its rows.

`labs/multi_lora.py` holds both; `MultiLoRALinear` wraps a frozen layer with them, and
`labs.serving.MultiAdapterServer` puts such layers into a model.

**Exercise 10.1.** Write `gathered_update(x, A, B, scaling, index)`: x (N, T, in); A (K, r, in),
B (K, out, r), scaling (K,) stacked for K adapters; index (N,) the adapter of each row. Gather
`A[index]`, `B[index]` (one copy of the factors per row), then two `torch.bmm`s: (N, T, in) to
(N, T, r) to (N, T, out), and multiply row n by `scaling[index[n]]`."""),
    ("code", r"""
from labs.check import check
check("10.1")"""),
    ("md", r"""
**Exercise 10.2.** Write `group_rows(names)`: {adapter name: LongTensor of its rows}, adapters in
the order of their first row, rows named `None` (the base alone) in no group.

**Exercise 10.3.** Write `grouped_update(x, groups, factors, out_features)`: for each adapter,
`scaling * x[rows] @ A.T @ B.T` on its rows only (each adapter keeps its own rank, no padding),
zeros for the rows of no group."""),
    ("code", r"""
check("10.2")
check("10.3")"""),
    ("md", r"""
Eight adapters on SmolLM2, as eight customers would send, with **different ranks** (4, 8 and 16):
one batch of eight prompts, each row naming its adapter and one row naming none (the base). The
promise to check: every row gets what its adapter alone would give. Section 3's server, switched
row by row, gives the reference (its adapters must share a rank, so the check uses the rank-8 ones
there), and the base row must equal the base model's own logits."""),
    ("code", r"""
%%needs lora 10.1-10.3
from labs.serving import MultiAdapterServer

multi_dir = scratch_folder("nb10-multi-")          # removed at the end of this section, or when the kernel stops
ranks = {f"customer{i}": (4, 8, 16)[i % 3] for i in range(8)}
multi_folders = {}
for seed, (name, r) in enumerate(ranks.items(), start=10):
    adapted = lora.apply(copy.deepcopy(model), lora.LoRAConfig(r=r, alpha=2 * r))
    with torch.no_grad():
        for _, layer in lora.lora_layers(adapted):
            layer.lora_B.normal_(std=0.02, generator=torch.Generator().manual_seed(seed))
    multi_folders[name] = save_adapter(adapted, multi_dir / name)
    del adapted

multi = MultiAdapterServer(copy.deepcopy(model), mode="gather")
for name, folder in multi_folders.items():
    multi.add(name, folder)
rank8 = [n for n, r in ranks.items() if r == 8]
for name in rank8:
    server.add(name, multi_folders[name])                          # section 3's server, for the reference

rows = list(ranks)[:7] + [None]                                    # 7 adapters and one base row
batch = tok(["Define the word \"lantern\"."] * 8, return_tensors="pt").input_ids   # (8, T)
MIXED_TOLERANCE = 5e-4   # float32 over 30 layers: a batch of 8 sums its products in another order (the base row too)
for mode in ("gather", "group"):
    multi.mode = mode
    mixed = multi(rows, input_ids=batch).logits                    # (8, T, V): one forward
    for n, name in enumerate(rows):
        if name is None:
            with torch.no_grad():
                want = model(batch[n:n + 1]).logits[0]
        elif name in rank8:
            want = server(name, input_ids=batch[n:n + 1]).logits[0]
        else:
            continue
        gap = (mixed[n] - want).abs().max().item()
        print(f"{mode:<6} row {n} ({name or 'base'}, r={ranks.get(name, 0)}): max |difference| {gap:.1e}")
        assert gap <= MIXED_TOLERANCE
print(f"two rows, two adapters (customer0 vs customer1): max |difference| {(mixed[0] - mixed[1]).abs().max().item():.2f}")"""),
    ("md", r"""
The test suite (`tests/test_serving_mixed.py`) checks every row, of every rank, against its adapter
loaded alone and against peft's own mixed batch (`adapter_names=[...]`), within 1e-5 on a tiny model.
From a terminal, `labs generate --pair ADAPTER_FOLDER=PROMPT --pair base=PROMPT ...` answers such a batch.

Now the cost, live and small: the same batch of 8 rows, 8 distinct adapters, one forward over the
prompt, four ways. **merged** is the floor: one model with one adapter merged in costs exactly what
the base costs (the same shapes), so the base is timed; it serves a single adapter. **swap** runs
the rows adapter by adapter through section 3's server (copy the factors in, then forward), which
is what it has to do with eight different adapters; those are the rank-8 adapters only, so swap gets
the cheapest case."""),
    ("code", r"""
%%needs lora 10.1-10.3
names8 = list(ranks)                                                        # 8 rows, 8 distinct adapters

def swap_rows():
    for n, name in enumerate(swap_names):
        server(name, input_ids=batch[n:n + 1], logits_to_keep=1)

swap_names = [rank8[n % len(rank8)] for n in range(8)]                       # 8 rows, rank-8 adapters in turn
forms = {"merged (base cost)": lambda: model(batch, logits_to_keep=1)}
for mode in ("gather", "group"):
    forms[f"multi-LoRA, {mode}"] = (lambda m=mode: (setattr(multi, "mode", m), multi(names8, input_ids=batch, logits_to_keep=1)))
forms["swap per request"] = swap_rows
with torch.inference_mode():
    live = interleaved_medians(forms, repeats=3)
tokens = batch.numel()
for what, seconds in live.items():
    print(f"{what:<22} {1e3 * seconds:8.1f} ms  {tokens / seconds:7.0f} prompt tokens/s  "
          f"{seconds / live['merged (base cost)']:.2f}x merged")
shutil.rmtree(multi_dir)"""),
    ("md", r"""
On a CPU, one thread, the two multi-LoRA forms stay close to the merged model: the updates add about
$2r(\text{in}+\text{out})$ multiply-adds per token and adapted layer beside the base's
$\text{in} \times \text{out}$. Swapping pays for the base's products once *per adapter*, on one row
at a time, where one batched forward pays once. The gap grows with the number of distinct adapters,
and most in token-by-token generation, where each step of a batch of 16 costs little more than a
step of one row (the weights are read once per step either way).

The recorded benchmark below sweeps 1 to 64 distinct adapters, for prompt processing and for
generation, with a fifth alternative: one merged copy of the whole model per adapter."""),
    ("code", r"""
import json
from IPython.display import Image, display

import labs
recorded = Path(labs.__file__).resolve().parent.parent / "notebooks" / "recorded" / "multi-lora"
bench = json.loads((recorded / "multi_lora.json").read_text())
print(f"recorded {bench['date']} on {bench['machine']}\nwith: {bench['command']}")
print(f"{'adapters':>8} {'rows':>5} {'prompt tok/s: merged':>21} {'gather':>7} {'group':>7} {'swap':>7} {'copies':>7}"
      f" {'gen tok/s: merged':>18} {'gather':>7} {'group':>7} {'swap':>7} {'copies':>7}")
for row in bench["rows"]:
    p, g = row["prompt_tokens_per_s"], row["generation_tokens_per_s"]
    print(f"{row['adapters']:>8} {row['rows']:>5} {p['merged']:>21.0f} {p['gather']:>7.0f} {p['group']:>7.0f} {p['swap']:>7.0f}"
          f" {p['copies']:>7.0f} {g['merged']:>18.1f} {g['gather']:>7.1f} {g['group']:>7.1f} {g['swap']:>7.1f} {g['copies']:>7.1f}")
at16 = next(r for r in bench["rows"] if r["adapters"] == 16)["ratios"]
best = at16["best_mode"]
print(f"16 rows, 16 adapters: multi-LoRA ({best}) takes {at16[best + '_vs_merged']:.2f}x the merged model's time "
      f"(target <= 1.3), swapping takes {at16['swap_vs_best']:.1f}x multi-LoRA's (target >= 4)")
mem = bench["memory"]
print(f"memory for {mem['adapters']} adapters: {mem['multi_lora_total'] / 1e6:.0f} MB (base {mem['base'] / 1e6:.0f} + "
      f"factors {mem['factors'] / 1e6:.0f} + gather stacks {mem['gather_stacks'] / 1e6:.0f}) "
      f"vs {mem['merged_copies_total'] / 1e9:.1f} GB for {mem['adapters']} merged copies")
display(Image(filename=str(recorded / "multi_lora.png")))"""),
    ("md", r"""
When to choose each:

- **one merged model**: one adapter serves (nearly) all the traffic; the fastest, and the adapter's cost is zero.
- **multi-LoRA, gather**: many adapters with few rows each (one request per customer); one batched product whatever the count.
- **multi-LoRA, group**: many rows share each adapter; fewer, larger products, a loop as long as the adapters in the batch.
- **swap per request**: one adapter at a time and no batching (a single user switching tasks); simplest, slowest under mixed traffic.
- **one merged copy per adapter**: a handful of adapters each with traffic enough to keep its own model busy, and memory to spare: n times the memory."""),
    ("md", r"""
## Summary

| question | answer, measured above |
|---|---|
| what does an adapter file hold? | only the trained tensors (about 4 bytes each in float32) and a JSON config |
| how big, beside the full model? | tens to hundreds of kB (prompt, BitFit, prefix), under 2 MB (LoRA r = 8), about 18 MB (bottleneck adapters), against over 500 MB |
| ten tasks: base + adapters vs full copies? | about 1/10 for SmolLM2, as for the 70B of notebook 00; it tends to adapter / base as tasks grow |
| serving three tasks | one base in memory plus three small adapters, switched per request in milliseconds, each request equal to its own fine-tuned model |
| merge / unmerge | merged: the base's cost, same outputs within float32 rounding; unmerge restores the base up to rounding |
| many adapters in one batch | each row gets its own adapter's logits in one forward, near the merged model's time; swapping pays once per adapter (recorded ratios above) |

Next, notebook 11 asks what fine-tuning costs in what the model already knew: forgetting."""),
]


if __name__ == "__main__":
    main(CELLS, "storage", OUT)
