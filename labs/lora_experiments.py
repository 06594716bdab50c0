"""The measurements of notebook 15 (LoRA, deeper): LoRA variants trained side by side, scored pair by pair.

Every run starts from a fresh copy of the same base, trains the same steps on the same batches
(same seed, same order) and is scored on the same held-out examples, so two runs can be compared
example by example (labs.evaluate.paired_difference): the verdicts say "cannot be told apart" when
the paired gap is within two standard errors.

    run_variant(setup, name, config)  one LoRA run: per-example held-out losses, training losses,
                                      step time, peak memory of a step, the update's norm
    verdict(a, b)                     the paired comparison of two runs, in words and numbers
    equal_budget_rank(...)            the rank at which other targets train as many numbers

`benchmarks/lora_variants.py` runs the longer sweeps with the same functions.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from labs.data import batches, get_task, load_examples
from labs.evaluate import example_losses, paired_difference
from labs.impl import technique
from labs.memory import measure_step
from labs.methods import learning_rate
from labs.models import load_model
from labs.presets import Preset, get_preset
from labs.surgery import count_parameters, is_linear, linear_dims
from labs.train import TrainConfig, make_optimizer, train

QV = ("q_proj", "v_proj")
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class Setup:
    """The base model and data every run of a comparison shares."""
    base: nn.Module                 # never trained: each run adapts a deep copy
    tokenizer: object
    task: object
    train_examples: list[dict]
    eval_examples: list[dict]       # the held-out examples every run is scored on, in one order
    preset: Preset
    steps: int                      # optimizer steps per run
    batch_size: int                 # rows per step
    base_losses: list[float] = field(default_factory=list)   # the base's loss on each held-out example


@dataclass
class Run:
    name: str
    trainable: int                  # trained numbers
    losses: list[float]             # training loss per step
    final: list[float]              # held-out loss per example after training
    gain: float                     # mean held-out loss, base minus after (positive: it learned)
    gain_se: float                  # paired standard error of the gain
    step_time: float                # median seconds per optimizer step
    update_norm: float              # ||sum of the layers' updates||: sqrt of the sum of ||delta W||_F^2
    peak_bytes: int | None = None   # peak training memory of one measured step (None: not measured)
    model: nn.Module | None = None  # the trained model, where the caller asked to keep it


def make_setup(model: str = "smollm2-135m", task: str = "define", preset=None, n_eval: int | None = None,
               steps: int | None = None, batch_size: int | None = None) -> Setup:
    """Load the base and the data once; score the base on the held-out examples."""
    preset = preset if isinstance(preset, Preset) else get_preset(preset)
    base, tok = load_model(model)
    base.eval()
    eval_ex = load_examples(task, "validation", n=preset.n_eval)[:n_eval]
    setup = Setup(base, tok, get_task(task), load_examples(task, "train", n=preset.n_train), eval_ex, preset,
                  steps or preset.side_run_steps, batch_size or preset.side_run_batch)
    setup.base_losses = scored(setup, base)
    return setup


def scored(setup: Setup, model: nn.Module) -> list[float]:
    """Each held-out example's own loss (per response token)."""
    return example_losses(model, setup.tokenizer, setup.task, setup.eval_examples, setup.preset.seq_len,
                          setup.preset.batch_size)


def update_norm(model: nn.Module) -> float:
    """The size of what training changed in the weights: sqrt(sum over layers of ||change||_F^2).

    The change is the layer's delta_weight(), less its value at the start where the start was not
    zero (PiSSA: the principal part s B0 A0 was moved out of W, not learned).
    """
    lora = technique("lora")
    total = 0.0
    with torch.no_grad():
        for _, layer in lora.lora_layers(model):
            change = layer.delta_weight()                                   # (out, in)
            if hasattr(layer, "pissa_A0"):
                change = change - layer.scaling * layer.pissa_B0 @ layer.pissa_A0
            total += float(change.pow(2).sum())
    return math.sqrt(total)


def run_variant(setup: Setup, name: str, lr_scale: float = 1.0, measure_memory: bool = False,
                keep_model: bool = False, seed: int = 0, **config) -> Run:
    """Adapt a copy of the base with LoRAConfig(**config), train it, score it. `lr_scale` multiplies
    LoRA's learning rate for the preset (PiSSA's large factors may need a smaller one)."""
    lora = technique("lora")
    torch.manual_seed(seed)
    model = lora.apply(copy.deepcopy(setup.base), lora.LoRAConfig(**config))
    lr = learning_rate("lora", setup.preset) * lr_scale
    data = lambda: batches(setup.train_examples, setup.tokenizer, setup.task, setup.preset.seq_len,  # noqa: E731
                           setup.batch_size, seed=seed, epochs=None)
    peak = None
    if measure_memory:  # one extra step on a throwaway copy, so the run itself is not changed
        probe = copy.deepcopy(model).train()
        peak = measure_step(probe, next(data()), make_optimizer(probe, TrainConfig(lr=lr))).peak
        del probe
    history = train(model, data(), TrainConfig(lr=lr, max_steps=setup.steps), progress=False)
    model.eval()
    final = scored(setup, model)
    gain, se = paired_difference(setup.base_losses, final)
    return Run(name, count_parameters(model).trainable, list(history.losses), final, gain, se,
               history.step_time_median, update_norm(model), peak, model if keep_model else None)


def verdict(a: Run, b: Run) -> tuple[float, float, str]:
    """(mean of a's held-out loss minus b's, its paired SE, a sentence): negative = a ended lower."""
    diff, se = paired_difference(a.final, b.final)
    if abs(diff) > 2 * se:
        said = f"{a.name if diff < 0 else b.name} ended lower, by {abs(diff) / se:.1f} standard errors"
    else:
        said = "cannot be told apart at this budget (within two standard errors)"
    return diff, se, said


def equal_budget_rank(model: nn.Module, targets: tuple[str, ...], reference: tuple[str, ...],
                      reference_r: int) -> int:
    """The rank r at which LoRA on `targets` trains about as many numbers as rank `reference_r` on `reference`."""
    def per_rank(names):  # trained numbers per unit of rank: sum of (in + out) over the matching layers
        return sum(sum(linear_dims(m)) for n, m in model.named_modules()
                   if is_linear(m) and n.rsplit(".", 1)[-1] in names)
    return max(1, round(reference_r * per_rank(reference) / per_rank(targets)))
