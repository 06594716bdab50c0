"""Training memory against model size, on the CPU: full fine-tuning, LoRA on an fp32 base, LoRA on a
bf16 base and QLoRA, at SmolLM2-135M (real weights) and at SmolLM2-360M's and SmolLM2-1.7B's shapes
(random weights written as safetensors to a temporary folder, so the same loaders run; nothing is
downloaded), with the analytic lines extended to 7B and 70B and a 24 GB consumer card's line.

    OMP_NUM_THREADS=1 LABS_IMPL=solutions python benchmarks/memory_vs_size.py --out notebooks/recorded/memory-vs-size
    python benchmarks/memory_vs_size.py --sizes 135M --steps 2      # a quick look

How it is measured, so the figures can be judged:
- Every run is its own child process (this script with --child). It imports everything first, gives
  freed memory back (labs.memory.release_freed_memory), reads its resident memory (the BASELINE: Python,
  torch, transformers, the course), starts a new peak window (labs.memory.reset_peak), loads the model,
  prepares it, and runs --steps AdamW steps on one random batch. Every figure is ABOVE that baseline:
  the peak while loading, the resident memory after loading, the peak while training (a second
  window, started after loading) and the peak of the whole run (the larger of the two).
- QLoRA is measured twice: as `labs finetune` now loads it (labs.nf4_loading: quantized layer by layer
  while reading the checkpoint, embedding in bf16) and the old way ("qlora-old": load_model in fp32,
  then qlora.quantize_model), so the saving of quantizing while loading shows.
- A run is skipped, and said so, where its analytic estimate (x1.3, +1 GB) exceeds the memory the
  machine has available at that moment; full fine-tuning of 1.7B needs about 27 GB and is always
  left to the analytic line.
- The analytic lines (labs.memory_scaling.analytic) use the same batch; they extend to Llama-2-7B's and
  Llama-2-70B's shapes. Nothing here is timed for a claim; step times are printed for information.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

GiB = 2 ** 30
MEASURED_SIZES = ("135M", "360M", "1.7B")
RUN_VARIANTS = ("full", "lora-fp32", "lora-bf16", "qlora-old", "qlora")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", nargs="+", default=list(MEASURED_SIZES), choices=MEASURED_SIZES)
    p.add_argument("--variants", nargs="+", default=list(RUN_VARIANTS), choices=RUN_VARIANTS)
    p.add_argument("--batch", type=int, default=2, help="rows per step (B)")
    p.add_argument("--seq", type=int, default=64, help="tokens per row (T)")
    p.add_argument("--steps", type=int, default=2, help="AdamW steps per run (the second has the optimizer state)")
    p.add_argument("--out", type=Path, default=None, help="folder for memory_vs_size.json and .png")
    p.add_argument("--child", nargs=2, metavar=("VARIANT", "FOLDER"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# Random-weight checkpoints of a shape (memory does not depend on the values)
# ---------------------------------------------------------------------------------------------
def write_random_checkpoint(shape, folder: Path, shard_bytes: int = 1 << 30) -> Path:
    """A Llama folder of `shape` with N(0, 0.02) bf16 weights (norms 1), in safetensors shards, plus
    SmolLM2's tokenizer: what labs.models.load_model and labs.nf4_loading.load_quantized read."""
    import torch
    from accelerate import init_empty_weights
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM
    from labs.models import prepare_cache
    config = LlamaConfig(vocab_size=shape.vocab, hidden_size=shape.hidden, intermediate_size=shape.intermediate,
                         num_hidden_layers=shape.layers, num_attention_heads=shape.heads,
                         num_key_value_heads=shape.kv_heads, tie_word_embeddings=shape.tied,
                         max_position_embeddings=8192, rope_theta=shape.rope_theta,
                         bos_token_id=1, eos_token_id=2, pad_token_id=2)
    with init_empty_weights():
        skeleton = LlamaForCausalLM(config)
    # A tied head has no tensor of its own in a real checkpoint (SmolLM2's files hold none): write none.
    names = [(n, p.shape) for n, p in skeleton.named_parameters() if not (shape.tied and n == "lm_head.weight")]
    folder.mkdir(parents=True, exist_ok=True)
    generator, shard, size, weight_map = torch.Generator().manual_seed(0), {}, 0, {}

    def flush():
        nonlocal shard, size
        if shard:
            file = f"model-{len(set(weight_map.values())) + 1:05d}.safetensors"
            save_file(shard, str(folder / file))
            weight_map.update({k: file for k in shard})
            shard, size = {}, 0

    for name, dims in names:
        t = (torch.ones(dims) if name.endswith("norm.weight") else torch.randn(dims, generator=generator) * 0.02)
        shard[name] = t.to(torch.bfloat16)
        size += shard[name].numel() * 2
        if size >= shard_bytes:
            flush()
    flush()
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    config.save_pretrained(folder)
    source = prepare_cache("smollm2-135m", progress=False)
    for file in TOKENIZER_FILES:
        if (source / file).is_file():
            shutil.copy(source / file, folder / file)
    return folder


# ---------------------------------------------------------------------------------------------
# One run, in a child process
# ---------------------------------------------------------------------------------------------
def child(variant: str, folder: str, args) -> dict:
    import torch
    import transformers  # noqa: F401  every child imports the same libraries before its baseline
    from labs.impl import technique
    from labs.memory import current_rss_bytes, peak_rss_bytes, release_freed_memory, reset_peak, weight_bytes
    from labs.models import load_model
    from labs.nf4_loading import load_quantized
    from labs.surgery import count_parameters
    lora, qlora = technique("lora"), technique("qlora")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    ids = torch.randint(3, 49_152, (args.batch, args.seq), generator=torch.Generator().manual_seed(0))  # (B, T)
    release_freed_memory()
    baseline = current_rss_bytes()
    reset_peak(torch.device("cpu"))
    start = time.perf_counter()
    if variant == "qlora":
        model = load_quantized(folder)[0]
    else:
        model = load_model(folder, dtype=torch.bfloat16 if variant == "lora-bf16" else torch.float32)[0]
        if variant == "qlora-old":
            qlora.quantize_model(model)
    load_s, load_peak, loaded = time.perf_counter() - start, peak_rss_bytes(), current_rss_bytes()
    base_bytes = weight_bytes(model)
    release_freed_memory()
    reset_peak(torch.device("cpu"))    # training's own window: loading's transients are not in it
    if variant != "full":
        model = (qlora.apply if variant.startswith("qlora") else lora.apply)(
            model, (qlora.QLoRAConfig() if variant.startswith("qlora") else lora.LoRAConfig()))
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    step_s = []
    for _ in range(args.steps):
        t = time.perf_counter()
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        step_s.append(time.perf_counter() - t)
    counts = count_parameters(model)
    train_peak = peak_rss_bytes()
    return {"baseline_rss": baseline, "load_peak_above_baseline": load_peak - baseline,
            "loaded_above_baseline": loaded - baseline, "train_peak_above_baseline": train_peak - baseline,
            "peak_above_baseline": max(load_peak, train_peak) - baseline,
            "base_weight_bytes": base_bytes, "trainable_params": counts.trainable, "total_params": counts.total,
            "load_s": round(load_s, 2), "step_s": [round(s, 2) for s in step_s]}


def available_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 1 << 62


def run_child(variant: str, folder: Path, args) -> dict:
    cmd = [sys.executable, __file__, "--child", variant, str(folder), "--batch", str(args.batch),
           "--seq", str(args.seq), "--steps", str(args.steps)]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
    if done.returncode or not lines:
        return {"error": f"exit code {done.returncode}: {done.stderr.strip().splitlines()[-1:] or ['?']}"}
    return json.loads(lines[-1][len("RESULT "):])


# ---------------------------------------------------------------------------------------------
# The whole benchmark
# ---------------------------------------------------------------------------------------------
def folder_for(size: str, tmp: Path) -> Path:
    from labs.memory_scaling import SHAPES
    from labs.models import prepare_cache
    if size == "135M":
        return prepare_cache("smollm2-135m", progress=False)
    print(f"writing random {size} weights ...", flush=True)
    return write_random_checkpoint(SHAPES[size], tmp / size)


def measure_all(args) -> list[dict]:
    from labs.memory_scaling import SHAPES, analytic
    runs = []
    tmp = Path(tempfile.mkdtemp(prefix="memory-vs-size-"))
    try:
        for size in args.sizes:
            folder = folder_for(size, tmp)
            for variant in args.variants:
                estimate = analytic(SHAPES[size], variant.replace("qlora-old", "lora-fp32"), args.batch, args.seq).total
                row = {"size": size, "variant": variant}
                if estimate * 1.3 + GiB > available_bytes():
                    row["skipped"] = (f"needs about {estimate / 1e9:.1f} GB (analytic); "
                                      f"{available_bytes() / 1e9:.1f} GB were available")
                else:
                    row.update(run_child(variant, folder, args))
                runs.append(row)
                print(f"  {size:>5} {variant:<10} " + (f"peak above baseline {row['peak_above_baseline'] / GiB:6.2f} GiB, "
                      f"loading {row['load_peak_above_baseline'] / GiB:6.2f} GiB, training {row['train_peak_above_baseline'] / GiB:6.2f} GiB, base {row['base_weight_bytes'] / GiB:6.2f} GiB, "
                      f"steps {row['step_s']} s" if "peak_above_baseline" in row else row.get("skipped") or row.get("error")),
                      flush=True)
            if size != "135M":
                shutil.rmtree(folder, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return runs


def claims(runs: list[dict]) -> dict:
    """The targets, computed from the runs: QLoRA below LoRA-fp32; 1.7B's base <= 0.16 of fp32."""
    from labs.memory_scaling import SHAPES
    got = {(r["size"], r["variant"]): r for r in runs if "peak_above_baseline" in r}
    out = {}
    for size in ("360M", "1.7B"):
        q, lf = got.get((size, "qlora")), got.get((size, "lora-fp32"))
        if q and lf:
            out[f"qlora_below_lora_fp32_{size}"] = q["peak_above_baseline"] < lf["peak_above_baseline"]
            out[f"qlora_over_lora_fp32_{size}"] = round(q["peak_above_baseline"] / lf["peak_above_baseline"], 3)
    if ("1.7B", "qlora") in got:
        ratio = got[("1.7B", "qlora")]["base_weight_bytes"] / (4 * SHAPES["1.7B"].n_params())
        out["base_over_fp32_1.7B"] = round(ratio, 4)
        out["base_at_most_0.16_1.7B"] = ratio <= 0.16
    return out


def record(args, runs: list[dict]) -> dict:
    import torch
    from labs.memory_scaling import CONSUMER_GPU_GB, SHAPES, VARIANTS, analytic
    return {"command": " ".join(["OMP_NUM_THREADS=" + os.environ.get("OMP_NUM_THREADS", "?"),
                                 "LABS_IMPL=" + os.environ.get("LABS_IMPL", "labs"), "python",
                                 "benchmarks/memory_vs_size.py", *sys.argv[1:]]),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, shared with other work; CPU, one thread",
            "torch": torch.__version__, "batch_size": args.batch, "seq_len": args.seq, "steps": args.steps,
            "memory": "peak resident memory above the child process's own baseline (Python, torch, libraries), bytes",
            "sizes": list(SHAPES), "n_params": {k: s.n_params() for k, s in SHAPES.items()},
            "gpu_line_gb": CONSUMER_GPU_GB, "runs": runs, "claims": claims(runs),
            "analytic": {v: {k: analytic(s, v, args.batch, args.seq).total for k, s in SHAPES.items()} for v in VARIANTS}}


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(child(*args.child, args)), flush=True)
        return
    from labs.files import write_json
    runs = measure_all(args)
    rec = record(args, runs)
    print(json.dumps(rec["claims"], indent=1))
    if args.out:
        from labs import viz
        args.out.mkdir(parents=True, exist_ok=True)
        write_json(args.out / "memory_vs_size.json", rec)
        viz.save(viz.memory_vs_size(rec), args.out / "memory_vs_size.png")
        print(f"wrote {args.out}/memory_vs_size.json and .png")


if __name__ == "__main__":
    main()
