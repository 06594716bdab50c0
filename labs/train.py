"""The one training loop. It knows nothing about any technique.

Full fine-tuning, BitFit, adapters, LoRA, prefix and prompt tuning all train through `train()`:
a technique only decides which parameters have requires_grad=True, and the optimizer is built
from exactly those (as nanoGPT's `configure_optimizers` does). The loop takes the loss of a batch
from `batch_loss`: the model's own (`model(**batch).loss`), so any Hugging Face model with labels
works, except that a causal LM computes its logits only where they predict a label.

    cfg = TrainConfig(lr=2e-3, max_steps=20)
    history = train(model, batches, cfg)
    history.losses, history.step_time_median

The same call runs on several processes under `accelerate launch` or `torchrun` (DDP or FSDP):
the loop goes through an `accelerate.Accelerator` there, and through a plain-PyTorch stand-in with
the same methods when no launcher started it (labs/distributed.py). Each process takes its own
share of `batches`, so N processes with batch B train as one process with batch N*B.
"""
from __future__ import annotations

import inspect
import math
import statistics
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from itertools import islice
from typing import Callable, Iterable, Iterator

import torch
from torch import nn
from torch.nn import functional as F

from labs import distributed
from labs.surgery import trainable_parameters

OPTIMIZERS = ("adamw", "adamw8bit", "sgd")


@dataclass(frozen=True)
class TrainConfig:
    lr: float = 1e-3                     # peak learning rate: after warmup, cosine decay to lr/10 at the end
    max_steps: int = 20                  # optimizer steps; each one sees grad_accum micro-batches
    grad_accum: int = 1                  # micro-batches whose gradients are summed per step
    weight_decay: float = 0.0            # AdamW decay, applied to matrices only (not biases/norms)
    warmup_steps: int = 0                # linear warmup from 0 to lr over this many steps
    max_grad_norm: float | None = 1.0    # clip the global gradient norm (None: no clipping)
    seed: int = 0                        # seeds torch before the first step: same seed, same run
    bf16: bool = False                   # bf16 autocast, used only where the device really has it
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~30% slower
    eval_every: int = 0                  # steps between eval_fn calls (0: once, after the last step)
    log_every: int = 1                   # steps between progress-bar loss updates
    optimizer: str = "adamw"             # "adamw", "adamw8bit" (bitsandbytes) or "sgd" (no state)

    def __post_init__(self):
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        for name in ("max_steps", "grad_accum", "log_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        for name in ("warmup_steps", "eval_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be > 0 or None, got {self.max_grad_norm!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")


@dataclass
class History:
    """What a run did, one entry per optimizer step (plus the evaluations eval_fn returned)."""
    steps: list[int] = field(default_factory=list)          # optimizer step numbers, from 1
    losses: list[float] = field(default_factory=list)       # mean micro-batch loss of each step (over all processes)
    step_times: list[float] = field(default_factory=list)   # seconds per optimizer step
    lr: list[float] = field(default_factory=list)           # learning rate used at each step
    evals: list[tuple[int, dict]] = field(default_factory=list)  # (step, metrics) from eval_fn
    bf16: bool = False                                      # whether bf16 autocast was really on
    world_size: int = 1                                     # processes that trained together (1: no launcher)

    @property
    def step_time_median(self) -> float:
        """Median seconds per step: robust to the slow first step (allocations, warm caches)."""
        return statistics.median(self.step_times) if self.step_times else float("nan")

    @property
    def final_loss(self) -> float:
        return self.losses[-1] if self.losses else float("nan")

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# Pieces of the loop
# ---------------------------------------------------------------------------------------------
def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (where batches must go)."""
    try:
        return next(model.parameters()).device
    except StopIteration:
        raise ValueError("the model has no parameters") from None


def bf16_autocast_available(device: torch.device) -> bool:
    """bf16 autocast only pays where the hardware has it: CUDA with native bf16 (Ampere or newer).

    On a CPU, MPS or an older GPU it would be emulated or partial: slower, not faster.
    """
    from labs.models import supports_bf16
    return supports_bf16(device)


def store_frozen_in(model: nn.Module, dtype: torch.dtype) -> int:
    """Cast the frozen floating-point parameters to `dtype`; return the bytes this saves.

    For PEFT under bf16 autocast: the frozen base is only ever read in bf16 by the autocast
    matrix products, so an fp32 copy doubles its memory for nothing. Trainable parameters stay
    fp32 (the optimizer updates them in full precision); buffers (e.g. rotary frequencies) too.
    """
    saved = 0
    for param in {id(p): p for p in model.parameters()}.values():  # a tied weight once
        if not param.requires_grad and param.is_floating_point() and param.dtype != dtype:
            before = param.element_size() * param.numel()
            param.data = param.data.to(dtype)
            saved += before - param.element_size() * param.numel()
    return saved


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """An optimizer over the trainable (requires_grad=True) parameters only.

    Frozen parameters are never handed to the optimizer, so it keeps no state for them: that is
    where PEFT saves most of its memory. Weight decay goes to matrices only, as in nanoGPT.
    """
    params = trainable_parameters(model)
    if not params:
        raise ValueError("no trainable parameters: every parameter has requires_grad=False; "
                         "apply a technique or unfreeze something before training")
    # A technique may ask for a learning-rate multiplier per parameter (attribute `lr_scale`, e.g.
    # LoRA+ trains B faster than A): one group per multiplier, kept through the schedule.
    groups = []
    for scale in sorted({getattr(p, "lr_scale", 1.0) for p in params}):
        scaled = [p for p in params if getattr(p, "lr_scale", 1.0) == scale]
        decay = [p for p in scaled if p.dim() >= 2]
        no_decay = [p for p in scaled if p.dim() < 2]
        groups += [{"params": g, "weight_decay": wd, "lr_scale": scale} for g, wd in
                   ((decay, cfg.weight_decay), (no_decay, 0.0)) if g]
    if cfg.optimizer == "sgd":  # plain SGD keeps no per-parameter state: the memory floor
        return torch.optim.SGD(groups, lr=cfg.lr)
    if cfg.optimizer == "adamw8bit":
        return _adamw8bit(groups, cfg.lr)
    try:  # one fused kernel for all tensors: on a CPU the step is several times faster
        return torch.optim.AdamW(groups, lr=cfg.lr, fused=True)
    except (RuntimeError, ValueError):  # a device or dtype without the fused kernel
        return torch.optim.AdamW(groups, lr=cfg.lr)


def _adamw8bit(groups: list[dict], lr: float) -> torch.optim.Optimizer:
    try:
        from bitsandbytes.optim import AdamW8bit
    except ImportError as err:
        raise ValueError("optimizer 'adamw8bit' needs bitsandbytes (pip install bitsandbytes); "
                         "use 'adamw' instead") from err
    return AdamW8bit(groups, lr=lr)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to cfg.lr, then cosine decay to cfg.lr / 10 at max_steps (nanoGPT's shape)."""
    if step <= cfg.warmup_steps:
        return cfg.lr * step / cfg.warmup_steps
    # 0 at the first step after warmup, 1 at the last step
    progress = (step - cfg.warmup_steps - 1) / max(1, cfg.max_steps - cfg.warmup_steps - 1)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Turn on activation recomputation, or say clearly that this model cannot do it."""
    # transformers 5 renamed gradient_checkpointing_enable to activation_checkpointing_enable
    enable = getattr(model, "activation_checkpointing_enable", None)
    kwargs_name = "activation_checkpointing_kwargs"
    if enable is None:
        enable, kwargs_name = getattr(model, "gradient_checkpointing_enable", None), "gradient_checkpointing_kwargs"
    if enable is None or not getattr(model, "supports_gradient_checkpointing", True):
        raise ValueError(f"{type(model).__name__} does not support gradient checkpointing; "
                         "train with gradient_checkpointing=False")
    try:  # non-reentrant checkpointing also works when the inputs' embeddings are frozen
        enable(**{kwargs_name: {"use_reentrant": False}})
    except ValueError as err:
        raise ValueError(f"{type(model).__name__} refused gradient checkpointing: {err}") from err
    if getattr(getattr(model, "config", None), "use_cache", False):
        model.config.use_cache = False  # a key/value cache is useless (and warned about) in training


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def micro_batches(batches: Iterable[dict]) -> Iterator[dict]:
    """Yield batches forever: a re-iterable (a list) starts over; a one-shot iterator just ends."""
    while True:
        empty = True
        for batch in batches:
            empty = False
            yield batch
        if empty or iter(batches) is batches:
            return


# ---------------------------------------------------------------------------------------------
# The loss of a batch
# ---------------------------------------------------------------------------------------------
def keeps_logits(model: nn.Module) -> bool:
    """Whether the model's forward takes `logits_to_keep` (transformers' causal LMs do)."""
    while isinstance(getattr(model, "module", None), nn.Module):   # DDP / FSDP wrappers
        model = model.module
    if hasattr(model, "get_base_model"):                           # peft's PeftModel
        model = model.get_base_model()
    return "logits_to_keep" in inspect.signature(model.forward).parameters


def label_logits(model: nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits that predict a label, and the labels they predict, for token labels (B, T).

    Position t predicts token t+1, so no position before the first label (in any row) is scored.
    In a generate task that is the whole prompt: on a batch of definitions, about 20 of 55
    positions predict a label. Asking the model for the last K logits only (`logits_to_keep`) runs
    the output layer (V x D, V = 49,152 on SmolLM2) and the loss on K positions instead of T, in the
    forward and in the backward. Returns logits (B, K, V) and targets (B, K), -100 where a position
    predicts nothing. A model that returns extra leading positions (prompt tuning's virtual tokens)
    is cut to the same last K.
    """
    first, targets = scored_positions(batch["labels"])                   # K = T - first
    keep = targets.shape[1]
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    if keeps_logits(model):
        inputs["logits_to_keep"] = keep
    return model(**inputs).logits[:, -keep:], targets                    # (B, K, V), (B, K)


def scored_positions(labels: torch.Tensor) -> tuple[int, torch.Tensor]:
    """The first position that predicts a label in any row, and what each position from there on
    predicts: targets (B, K) with K = T - first, -100 where a position predicts nothing."""
    targets = F.pad(labels[:, 1:], (0, 1), value=-100)                   # (B, T): the token each position predicts
    scored = (targets != -100).any(dim=0).nonzero()
    first = int(scored[0]) if len(scored) else labels.shape[1] - 1
    return first, targets[:, first:]


def batch_loss(model: nn.Module, batch: dict, logits_fn=label_logits) -> torch.Tensor:
    """The mean loss per target of a batch: what `model(**batch).loss` returns, computed on the
    label positions only for a causal LM (see label_logits); any other model computes its own.

    Only where no row's first token is a target: a model that puts positions in front (prompt
    tuning) predicts the first token from the last of them, a target label_logits does not see.
    logits_fn: label_logits, or a function with its contract (evaluation's reads a shared opening once).
    """
    labels = batch.get("labels")
    if (labels is not None and labels.dim() == 2 and bool((labels[:, 0] == -100).all())
            and keeps_logits(model)):
        logits, targets = logits_fn(model, batch)                        # (B, K, V), (B, K)
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100)
    loss = model(**batch).loss
    if loss is None:
        raise ValueError(f"the model returned no loss: the batch needs 'labels' (it has {sorted(batch)})")
    return loss


def _forward_loss(model: nn.Module, batch: dict, autocast) -> torch.Tensor:
    with autocast:
        return batch_loss(model, batch)


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------
def train(model: nn.Module, batches: Iterable[dict], cfg: TrainConfig, *,
          eval_fn: Callable[[nn.Module], dict] | None = None, progress: bool = True,
          accelerator=None, observe: Callable | None = None,
          optimizer: torch.optim.Optimizer | None = None) -> History:
    """Train `model` for cfg.max_steps optimizer steps on `batches`; return the History.

    `batches` yields dicts of tensors the model accepts (input_ids, attention_mask, labels);
    a list is cycled, an iterator is consumed (training stops early if it runs out).
    `eval_fn(model) -> dict` is called every cfg.eval_every steps and after the last step.
    `accelerator`: an `accelerate.Accelerator` to train through (default: one made from the
    launcher's settings under a launcher, else plain PyTorch in this process).
    `observe(step, model, optimizer, batch, loss)` is called after each step's backward pass, while
    the gradients are there (labs.run_record.Recorder reads them for the failure clinic).
    `optimizer`: one built by the caller instead of make_optimizer's (notebook 14 shows what an
    optimizer built before the model was wrapped does).
    """
    from tqdm.auto import tqdm

    acc = accelerator or distributed.accelerator_for(model)
    # One seed per process: dropout masks differ between processes, as their data does.
    torch.manual_seed(cfg.seed + acc.process_index)
    optimizer = optimizer if optimizer is not None else make_optimizer(model, cfg)
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    # DDP or FSDP wrap the model here (FSDP also swaps the optimizer's parameters for its own).
    distributed.use_trainable_units(acc, model)   # FSDP1 without use_orig_params: LoRA in its own units
    wrapped, optimizer = acc.prepare(model, optimizer)
    device = acc.device
    history = History(bf16=cfg.bf16 and bf16_autocast_available(device), world_size=acc.num_processes)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if history.bf16 else nullcontext()
    # FSDP gathers the weights only through its own wrapper; DDP's wrapper hides .config and the
    # like, and its forward needs no other process, so evaluation sees the model it was given.
    evaluated = wrapped if distributed.is_fsdp(acc) else model
    was_training = model.training
    model.train()
    stream = distributed.shard(micro_batches(batches), acc.process_index, acc.num_processes)
    bar = tqdm(range(1, cfg.max_steps + 1), desc="train", unit="step",
               disable=not (progress and acc.is_main_process))
    try:
        for step in bar:
            with distributed.say_who_stopped(acc, step):
                loss = _train_step(acc, wrapped, optimizer, stream, step, cfg, autocast, history,
                                   observe and (lambda *seen: observe(step, model, *seen)))
            if loss is None:  # the batch iterator ran dry (on some process)
                break
            if step % cfg.log_every == 0 or step == cfg.max_steps:
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{history.lr[-1]:.2e}")
            if eval_fn is not None and _eval_due(step, cfg):
                history.evals.append((step, dict(eval_fn(evaluated))))
                model.train()  # eval_fn may have switched to eval mode
    finally:
        bar.close()
        model.train(was_training)
    if eval_fn is not None and history.steps and (not history.evals or history.evals[-1][0] != history.steps[-1]):
        history.evals.append((history.steps[-1], dict(eval_fn(evaluated))))
    return history


def _eval_due(step: int, cfg: TrainConfig) -> bool:
    return step == cfg.max_steps or (cfg.eval_every > 0 and step % cfg.eval_every == 0)


def _train_step(acc, model, optimizer, stream, step, cfg, autocast, history, observe=None) -> float | None:
    """One optimizer step over cfg.grad_accum micro-batches; returns its mean loss (None: no data).

    The loss is the mean over micro-batches and over processes: what one process would see with
    all of their rows in one batch.
    """
    device = acc.device
    _sync(device)
    start = time.perf_counter()
    lr = lr_at(step, cfg)
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    micro = list(islice(stream, cfg.grad_accum))
    if not distributed.all_agree(acc, len(micro) == cfg.grad_accum):  # every process stops together
        optimizer.zero_grad(set_to_none=True)
        return None
    total = 0.0
    for i, batch in enumerate(micro):
        # Processes exchange gradients once per step, on its last micro-batch, not on every one.
        with acc.no_sync(model) if i < len(micro) - 1 else nullcontext():
            loss = _forward_loss(model, to_device(batch, device), autocast)
            # Dividing by grad_accum makes the summed gradient the mean over micro-batches: 2
            # micro-batches of 4 rows give the same step as 1 batch of 8 (exactly so when every
            # micro-batch has as many target tokens, since each loss is a mean over its own tokens).
            acc.backward(loss / cfg.grad_accum)
        total += loss.item() / cfg.grad_accum
    total = distributed.mean_across(acc, total)
    if observe is not None:   # the gradients before clipping, the optimizer, the step's first batch
        observe(optimizer, micro[0], total)
    if not math.isfinite(total):
        raise ValueError(f"the loss became {total} at step {step}; lower the learning rate "
                         f"(now {cfg.lr:g}) or check the data")
    if cfg.max_grad_norm is not None:
        acc.clip_grad_norm_(_clipped(acc, model, optimizer), cfg.max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)  # set_to_none frees gradient memory between steps
    _sync(device)
    history.steps.append(step)
    history.losses.append(total)
    history.step_times.append(time.perf_counter() - start)
    history.lr.append(lr)
    return total


def _clipped(acc, model, optimizer) -> list:
    """The parameters whose gradient norm is clipped.

    FSDP clips through its root module, which accelerate finds only when handed all of the model's
    parameters (frozen ones have no gradient and count for nothing). Elsewhere: the optimizer's
    parameters, in its order, since the float sum of the norm depends on the order.
    """
    if distributed.is_fsdp(acc):
        return list(model.parameters())
    return [p for g in optimizer.param_groups for p in g["params"]]


def _sync(device: torch.device) -> None:
    """Wait for queued GPU work so that step times measure the work, not the queueing."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
