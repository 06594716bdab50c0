"""Presets: how big a run is. One switch (LABS_PRESET or --preset) picks one.

quick   CI and live demos: each fine-tune 85-153 s on 2 CPU cores (recorded quick comparison).
laptop  a CPU for a few minutes: gains you can see.
gpu     one consumer GPU (8-24 GB): bf16, longer sequences, more steps.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace

ENV_VAR = "LABS_PRESET"


@dataclass(frozen=True)
class Preset:
    name: str
    max_steps: int          # optimizer steps per fine-tune
    batch_size: int         # rows per micro-batch (B)
    grad_accum: int         # micro-batches per optimizer step
    seq_len: int            # tokens per row (T), truncated / padded
    n_train: int            # training examples drawn from the task's train split
    n_eval: int             # held-out examples scored before and after
    n_probe: int            # general-knowledge probe items (forgetting)
    eval_every: int         # steps between held-out evaluations during training (0 = only at end)
    bf16: bool              # autocast to bfloat16 where the device really supports it
    frozen_bf16: bool = False  # with bf16 autocast on: store the frozen base in bf16, half its bytes
                               # (trainable weights and optimizer state stay fp32)
    gradient_checkpointing: bool = False  # recompute activations in backward (where the method allows)
    lr: float | None = None  # one learning rate for every method; None = each method's own from the
                             # registry (labs/methods.py: full fine-tuning wants ~100x less than PEFT)
    n_english: int = 32     # windows of public-domain English scored before and after (forgetting,
                            # decoders only), evenly spaced over a whole corpus never trained on
    english_tokens: int = 128  # tokens in each of those windows: every window is exactly this long
    side_steps: int | None = None  # steps of a notebook's side runs (sweeps, a second model) beside
                                   # its main fine-tune; None = max_steps (quick: fewer, to fit CI)
    side_batch: int | None = None  # rows per batch of a sweep's runs; None = batch_size

    @property
    def side_run_steps(self) -> int:
        return self.side_steps or self.max_steps

    @property
    def side_run_batch(self) -> int:
        return self.side_batch or self.batch_size


PRESETS = {
    "quick": Preset("quick", max_steps=16, batch_size=8, grad_accum=1, seq_len=64, n_train=400,
                    n_eval=64, n_probe=60, eval_every=0, bf16=False, side_steps=12, side_batch=4),
    "laptop": Preset("laptop", max_steps=120, batch_size=8, grad_accum=2, seq_len=128, n_train=4000,
                     n_eval=256, n_probe=200, eval_every=40, bf16=False, n_english=128, english_tokens=256),
    "gpu": Preset("gpu", max_steps=600, batch_size=16, grad_accum=2, seq_len=256, n_train=20000,
                  n_eval=1000, n_probe=300, eval_every=100, bf16=True, frozen_bf16=True,
                  n_english=200, english_tokens=256),  # the probe holds 300 questions; Austen 200 windows
}


def get_preset(name: str | None = None, **overrides) -> Preset:
    """The preset called `name` (default: $LABS_PRESET, else "quick"), with field overrides."""
    name = name or os.environ.get(ENV_VAR, "quick")
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return replace(PRESETS[name], **overrides) if overrides else PRESETS[name]
