# GENERATED from solutions/freezing.py by tools/make_stubs.py: the reference lives there.
# Your exercises: replace each `raise NotImplementedError(...)` below with your code.
"""Freeze and add: which weights train, how many there are, and what the optimizer sees.

Every parameter-efficient technique in this course starts the same way: freeze the pretrained
model, add (or unfreeze) a few parameters, and give the optimizer only those. This module builds
those steps by hand, once. From notebook 03 on, the course uses the infrastructure versions in
`labs/surgery.py` (`freeze`, `count_parameters`, `trainable_parameters`) and the optimizer of
`labs/train.py`, built from `trainable_parameters` only.

Exercises (notebook 02):
    2.1 freeze_all            every parameter stops receiving gradients
    2.2 count_trainable       (trainable, total), a tensor shared by two modules counted once
    2.3 drop_stale_gradients  a frozen parameter's leftover gradient, which an optimizer would still apply
    2.4 add_trainable_head    freeze the body, hang a new trainable module on it
"""
from __future__ import annotations

from torch import nn

from labs.surgery import get_submodule_parent

NOTEBOOK = "notebooks/02_freeze_and_add.ipynb"


def freeze_all(model: nn.Module) -> nn.Module:
    """Set requires_grad=False on every parameter of `model` and return the same model.

    A frozen parameter receives no .grad in backward, so autograd keeps no gradient for it
    and an optimizer has nothing to update. Buffers (e.g. rotary frequencies) are not
    parameters and never train, so there is nothing to do for them.
    """
    raise NotImplementedError("Exercise 2.1: freeze_all - see notebooks/02_freeze_and_add.ipynb")


def count_trainable(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) numbers of parameter elements in `model`.

    A tensor shared by two modules (tied input embedding and output head) is one tensor in
    memory, so it counts once. Buffers are not parameters and do not count.
    """
    raise NotImplementedError("Exercise 2.2: count_trainable - see notebooks/02_freeze_and_add.ipynb")


def drop_stale_gradients(model: nn.Module) -> list[str]:
    """Set .grad to None on every frozen parameter that still holds one; return their names, in order.

    A parameter frozen *after* a backward pass keeps the gradient it received (or a zero tensor,
    when zero_grad(set_to_none=False) ran). An optimizer that was handed it still applies that
    gradient, and weight decay, and momentum: the "frozen" weight moves. AdamW skips a parameter
    whose .grad is None. Trainable parameters keep their gradients.
    """
    raise NotImplementedError("Exercise 2.3: drop_stale_gradients - see notebooks/02_freeze_and_add.ipynb")


def _place_like(model: nn.Module, name: str, head: nn.Module) -> nn.Module:
    """Move `head` to the device and floating dtype of the module it replaces (or of the model)."""
    try:
        reference = next(model.get_submodule(name).parameters())
    except (AttributeError, StopIteration):
        reference = next(model.parameters(), None)
    if reference is None or not reference.is_floating_point():
        return head
    return head.to(device=reference.device, dtype=reference.dtype)


def add_trainable_head(model: nn.Module, name: str, head: nn.Module) -> list[nn.Parameter]:
    """Freeze `model`, hang `head` at the dotted submodule path `name`, and return its parameters.

    `name` usually replaces an existing output layer ("classifier" of a BERT classifier,
    "score" of a Llama classifier) so the model's own forward uses the new module. After the
    call only the head's parameters require gradients: the frozen body plus a small trainable
    addition is the shape of every technique that follows.
    """
    if not isinstance(head, nn.Module) or not list(head.parameters()):
        raise ValueError(f"head must be an nn.Module with at least one parameter, got {type(head).__name__}")
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a submodule path such as 'classifier', got {name!r}")
    parent_name = name.rpartition(".")[0]
    if parent_name and parent_name not in dict(model.named_modules()):
        raise ValueError(f"no submodule {parent_name!r} in {type(model).__name__} to attach "
                         f"{name!r} to; give a dotted path such as 'classifier' or 'bert.pooler.dense'")
    head = _place_like(model, name, head)
    raise NotImplementedError("Exercise 2.4: add_trainable_head - see notebooks/02_freeze_and_add.ipynb")
