"""The methods `labs finetune --method` knows, and how each one prepares a model for training.

"full" is the baseline and lives here: every weight trains. Every other method is a technique
module (labs/<module>.py for students, solutions/<module>.py for the reference, chosen by
LABS_IMPL) whose `prepare_for_finetune(model, task, options)` freezes the base and adds its own
trainable parameters. This file only looks the module up; it knows nothing about LoRA & co.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

# New classification heads, by model family: BERT's `classifier`, Llama/GPT's `score`.
TASK_HEADS = ("classifier", "score")


@dataclass(frozen=True)
class Method:
    name: str            # the --method value
    module: str | None   # technique module under labs/ or solutions/ (None: implemented here)
    summary: str         # one line for --help and tables


METHODS = {m.name: m for m in (
    Method("full", None, "full fine-tuning: every weight trains (the baseline)"),
    Method("bitfit", "bitfit", "BitFit: only the biases (or norm gains) train"),
    Method("adapter", "adapters", "bottleneck adapters (Houlsby) after attention and MLP"),
    Method("lora", "lora", "LoRA: low-rank updates B @ A beside frozen linear layers"),
    Method("prefix", "prefix_tuning", "prefix tuning: trained key/value prefixes in every layer"),
    Method("prompt", "prompt_tuning", "prompt tuning: trained soft-prompt embeddings at the input"),
)}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name]


def check_options(method: str, options: dict | None) -> None:
    """Fail before any model is loaded where that is possible: 'full' takes no options.
    (A technique checks its own options in prepare_for_finetune.)"""
    get_method(method)
    if method == "full" and options:
        raise ValueError(f"method 'full' takes no options, got {sorted(options)}")


def prepare_full(model: nn.Module, task, options: dict) -> nn.Module:
    """Full fine-tuning: every parameter trains. It takes no options."""
    from labs.surgery import unfreeze
    check_options("full", options)
    unfreeze(model)
    return model


def prepare(method: str, model: nn.Module, task, options: dict | None = None) -> nn.Module:
    """Prepare `model` for fine-tuning `task` with `method`; returns the model to train.

    A technique module that is still an untouched stub raises NotImplementedError naming the
    exercise to do; that message is let through unchanged.
    """
    from labs.impl import technique
    spec, options = get_method(method), dict(options or {})
    if spec.module is None:
        model = prepare_full(model, task, options)
    else:
        model = technique(spec.module).prepare_for_finetune(model, task, options)
    if getattr(task, "kind", None) == "classify":
        train_task_head(model)
    return model


def train_task_head(model: nn.Module) -> list[str]:
    """Make the classification head trainable, whatever the method.

    The head is created fresh, with random weights, when a pretrained model is loaded for
    classification: no pretrained knowledge lives there, so freezing it would leave the output
    random and no adapter could fix that. peft does the same (`modules_to_save`), and the head is
    tiny (D x labels). It is saved together with the adapter.
    """
    from labs.surgery import unfreeze
    names = unfreeze(model, lambda name: name.split(".")[0] in TASK_HEADS)
    if not names:
        raise ValueError(f"{type(model).__name__} has no classification head named "
                         f"{' or '.join(TASK_HEADS)}; load it with task_kind='classify'")
    return names
