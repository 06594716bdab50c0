# GENERATED from solutions/scaling.py by tools/make_stubs.py: the reference lives there.
# Your exercises: replace each `raise NotImplementedError(...)` below with your code.
"""The arithmetic of the scaling crisis: what a model costs in bytes, to hold, to train, to keep.

Exercises 0.1-0.4 of notebooks/00_welcome.ipynb. No torch here: every answer is a count of
parameters times a count of bytes, and that is the whole point -- the crisis is arithmetic.

Units: bytes everywhere (1 GB = 1e9 bytes, as disk makers and GPU spec sheets count).
The finer memory model with activations, used by the notebook's calculator, lives in labs/memory.py.
"""
from __future__ import annotations

from dataclasses import dataclass

NOTEBOOK = "notebooks/00_welcome.ipynb"

# The storage formats the course meets, by the names the notebooks and the command line use.
DTYPES = ("fp32", "bf16", "fp16", "int8", "nf4")
# How a full fine-tune keeps its numbers (exercise 0.2).
PRECISIONS = ("fp32", "mixed")


def check_count(value, what: str) -> int:
    """`value` as a non-negative whole number, or a clear error naming `what` and the bad value."""
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            return check_count(int(value), what)
        raise TypeError(f"{what} must be a whole number, got {value!r} ({type(value).__name__})")
    if value < 0:
        raise ValueError(f"{what} must be >= 0, got {value}")
    return value


def check_choice(value: str, accepted: tuple[str, ...], what: str) -> str:
    """`value` when it is one of `accepted`, else a ValueError listing what is accepted."""
    if value not in accepted:
        raise ValueError(f"unknown {what} {value!r}; use one of {', '.join(accepted)}")
    return value


@dataclass(frozen=True)
class TrainingBytes:
    weights: float     # the parameters themselves, in every copy training keeps
    gradients: float   # one gradient per trainable parameter, filled by backward()
    optimizer: float   # AdamW's two running moments (m and v) per trainable parameter

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer


@dataclass(frozen=True)
class Storage:
    full_copies: float         # bytes on disk: one fine-tuned copy of the whole model per task
    base_plus_adapters: float  # bytes on disk: one shared base model plus one adapter per task

    @property
    def saving_percent(self) -> float:
        """How much smaller the adapter library is, in % of the full copies (0 when both are 0)."""
        if self.full_copies == 0:
            return 0.0
        return 100.0 * (1.0 - self.base_plus_adapters / self.full_copies)


# ---------------------------------------------------------------------------------------------
# Exercise 0.1: bytes to hold the weights
# ---------------------------------------------------------------------------------------------
def bytes_of_weights(n_params: int, dtype_name: str) -> float:
    """Bytes needed to hold `n_params` weights stored as `dtype_name`.

    fp32 takes 4 bytes a weight; bf16 and fp16 take 2; int8 takes 1; nf4 takes half a byte
    (4 bits: two weights share a byte). An unknown dtype_name (see DTYPES) -> ValueError: the
    message must contain the bad name (check_choice writes such a message);
    n_params that is not a whole number >= 0 -> TypeError / ValueError (use check_count).
    """
    raise NotImplementedError("Exercise 0.1: bytes_of_weights - see notebooks/00_welcome.ipynb")


# ---------------------------------------------------------------------------------------------
# Exercise 0.2: bytes to fine-tune every weight with AdamW
# ---------------------------------------------------------------------------------------------
def full_finetune_bytes(n_params: int, precision: str = "fp32") -> TrainingBytes:
    """Weights, gradients and AdamW state for a full fine-tune of `n_params` parameters.

    Every parameter trains, so every parameter has a gradient and two AdamW moments (m, v),
    and the moments are always kept in fp32 (4 bytes each) because they average tiny numbers.
    - precision "fp32": weights fp32 (4 bytes), gradients fp32 (4).
    - precision "mixed": the usual bf16 recipe. Weights are held twice, a bf16 copy for the
      forward and backward passes (2) plus an fp32 master copy the optimizer updates (4);
      gradients bf16 (2).
    Activations are left out: they depend on batch and sequence length, not on n_params alone.
    Unknown precision (see PRECISIONS) -> ValueError: the message must contain the bad name
    (check_choice writes such a message).
    """
    raise NotImplementedError("Exercise 0.2: full_finetune_bytes - see notebooks/00_welcome.ipynb")


# ---------------------------------------------------------------------------------------------
# Exercise 0.3: how many parameters LoRA trains
# ---------------------------------------------------------------------------------------------
def lora_trainable_params(d_in: int, d_out: int, r: int, n_layers: int, n_targets: int) -> int:
    """Trainable parameters when LoRA of rank `r` wraps `n_targets` linear layers in each of
    `n_layers` blocks, every wrapped layer mapping d_in -> d_out.

    Each wrapped layer W (d_out, d_in) stays frozen and gains A (r, d_in) and B (d_out, r);
    only A and B train. Negative or non-whole sizes -> ValueError / TypeError (use check_count);
    r must be >= 1 (a rank-0 update is no update) -> ValueError.
    """
    raise NotImplementedError("Exercise 0.3: lora_trainable_params - see notebooks/00_welcome.ipynb")


# ---------------------------------------------------------------------------------------------
# Exercise 0.4: storage for many tasks
# ---------------------------------------------------------------------------------------------
def storage_for_tasks(n_tasks: int, base_bytes: float, adapter_bytes: float) -> Storage:
    """Disk needed to serve `n_tasks` fine-tuned variants of one base model of `base_bytes`.

    Full fine-tuning keeps one whole copy per task. PEFT keeps the base once and one adapter
    of `adapter_bytes` per task. Negative sizes or task counts -> ValueError.
    """
    raise NotImplementedError("Exercise 0.4: storage_for_tasks - see notebooks/00_welcome.ipynb")
