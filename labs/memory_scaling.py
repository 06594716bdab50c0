"""Training memory against model size: model shapes, the analytic lines, and the recorded measurement.

`benchmarks/memory_vs_size.py` trains a few steps of four variants on three sizes (SmolLM2-135M with
its real weights; SmolLM2-360M's and SmolLM2-1.7B's shapes with random weights: memory does not
depend on weight values) and records each run's peak memory ABOVE the process's own baseline
(Python, torch and the libraries, read in the same process just before loading). This module holds
what the benchmark, notebooks 08, 09 and 12 share: the shapes, the analytic model of each variant
(labs.memory.estimate_memory) extended to 7B and 70B, and `largest_trainable`, which answers "what
is the largest model this variant trains in G GB?" from the recording.

Variants (the same four everywhere):
    full       every weight trains: fp32 weights, gradients and AdamW's two moments (16 bytes/param)
    lora-fp32  LoRA (q, v; r=8) on an fp32 base
    lora-bf16  LoRA on a bf16 base
    qlora      LoRA on an NF4 base (double quantization) quantized while loading, embedding in bf16
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from labs.memory import BYTES_PER_PARAM, GB, MemoryEstimate, estimate_memory

ROOT = Path(__file__).resolve().parent.parent
RECORDED = ROOT / "notebooks" / "recorded" / "memory-vs-size" / "memory_vs_size.json"
RECORD_COMMAND = ("OMP_NUM_THREADS=1 LABS_IMPL=solutions python benchmarks/memory_vs_size.py "
                  "--out notebooks/recorded/memory-vs-size")
VARIANTS = ("full", "lora-fp32", "lora-bf16", "qlora")
LABELS = {"full": "full fine-tuning (fp32)", "lora-fp32": "LoRA, fp32 base", "lora-bf16": "LoRA, bf16 base",
          "qlora": "QLoRA (NF4 base)", "qlora-old": "QLoRA, loaded in fp32 then quantized"}
CONSUMER_GPU_GB = 24.0   # one consumer card (RTX 3090 / 4090)


@dataclass(frozen=True)
class Shape:
    """A Llama-style decoder, as far as memory is concerned."""
    name: str            # short label, e.g. "1.7B"
    hidden: int          # D
    intermediate: int    # MLP width
    layers: int          # L
    heads: int           # H query heads
    kv_heads: int        # key/value heads (grouped-query attention)
    vocab: int           # V
    tied: bool           # the output head shares the embedding's table
    rope_theta: float = 10_000.0   # rotary base (only needed to write a config)

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.hidden // self.heads

    def linear_params(self) -> int:
        """Weights of the layers QLoRA quantizes: attention and MLP projections of every block."""
        d, kv = self.hidden, self.kv_dim
        return self.layers * (2 * d * d + 2 * d * kv + 3 * d * self.intermediate)

    def embedding_params(self) -> int:
        """The input embedding, plus the output head when it is not tied."""
        return self.vocab * self.hidden * (1 if self.tied else 2)

    def n_params(self) -> int:
        norms = self.hidden * (2 * self.layers + 1)
        return self.linear_params() + self.embedding_params() + norms

    def lora_params(self, r: int = 8) -> int:
        """LoRA on q_proj and v_proj (the course's default targets), rank r."""
        return self.layers * r * (2 * self.hidden + self.hidden + self.kv_dim)


SHAPES = {s.name: s for s in (
    Shape("135M", 576, 1536, 30, 9, 3, 49_152, True, 100_000.0),     # SmolLM2-135M
    Shape("360M", 960, 2560, 32, 15, 5, 49_152, True, 100_000.0),    # SmolLM2-360M
    Shape("1.7B", 2048, 8192, 24, 32, 32, 49_152, True, 130_000.0),  # SmolLM2-1.7B
    Shape("7B", 4096, 11_008, 32, 32, 32, 32_000, False),            # Llama-2-7B
    Shape("70B", 8192, 28_672, 80, 64, 8, 32_000, False),            # Llama-2-70B
)}


def analytic(shape: Shape, variant: str, batch_size: int, seq_len: int) -> MemoryEstimate:
    """labs.memory.estimate_memory for `variant` at `shape`, activations as computed on a CPU (fp32,
    bf16 for the bf16 base). QLoRA's base: its linear layers at NF4 + double quantization, the
    embedding (and an untied head) at bf16, as labs.nf4_loading holds them."""
    if variant not in VARIANTS:
        raise ValueError(f"variant {variant!r} is not valid; use one of {', '.join(VARIANTS)}")
    n = shape.n_params()
    base = {"full": 4.0, "lora-fp32": 4.0, "lora-bf16": 2.0,
            "qlora": (shape.linear_params() * BYTES_PER_PARAM["nf4-dq"]
                      + (n - shape.linear_params()) * 2.0) / n}[variant]
    common = dict(weight_bytes=base, grad_bytes=4.0, batch_size=batch_size, seq_len=seq_len, hidden=shape.hidden,
                  layers=shape.layers, vocab=shape.vocab, activation_bytes_per_value=2.0 if variant == "lora-bf16" else 4.0)
    if variant == "full":
        return estimate_memory(n, "full", **common)
    return estimate_memory(n, "lora", trainable_params=shape.lora_params(), **common)


def load_recording(path: str | Path | None = None) -> dict:
    """The recorded benchmark (RECORD_COMMAND): its settings, measured runs and analytic lines."""
    path = Path(path) if path is not None else RECORDED
    if not path.is_file():
        raise FileNotFoundError(f"no memory recording at {path}; make one with: {RECORD_COMMAND}")
    return json.loads(path.read_text())


def peak_gb(recording: dict, variant: str, size: str) -> tuple[float, str]:
    """(GB, source) of `variant` at `size`: the measured peak above baseline where it was measured,
    else the analytic total."""
    measured = [r for r in recording["runs"] if r["variant"] == variant and r["size"] == size and "peak_above_baseline" in r]
    if measured:
        return measured[0]["peak_above_baseline"] / GB, "measured"
    return recording["analytic"][variant][size] / GB, "analytic"


def largest_trainable(method: str, gpu_gb: float = CONSUMER_GPU_GB, recording: dict | None = None) -> dict | None:
    """The largest recorded model size `method` trains within `gpu_gb` GB (1e9 bytes), or None.

    method   one of VARIANTS ("full", "lora-fp32", "lora-bf16", "qlora"); "lora" means "lora-bf16"
    Returns {"size", "n_params", "gb", "source"}: source "measured" (the CPU benchmark's peak above
    its baseline) or "analytic" (sizes it could not run: 7B, 70B, full fine-tuning of 1.7B). The
    batch is the recording's (small): activations grow with it, weights and optimizer state do not.
    """
    method = {"lora": "lora-bf16"}.get(method, method)
    if method not in VARIANTS:
        raise ValueError(f"method {method!r} is not valid; use one of {', '.join(VARIANTS)} (or 'lora')")
    if isinstance(gpu_gb, bool) or not isinstance(gpu_gb, (int, float)) or gpu_gb <= 0:
        raise ValueError(f"gpu_gb must be a positive number of GB, e.g. 24, not {gpu_gb!r}")
    recording = recording if recording is not None else load_recording()
    best = None
    for size in recording["sizes"]:
        gb, source = peak_gb(recording, method, size)
        if gb <= gpu_gb and (best is None or recording["n_params"][size] > best["n_params"]):
            best = {"size": size, "n_params": recording["n_params"][size], "gb": gb, "source": source}
    return best
