"""The classic fine-tuning mistakes, made on purpose: notebook 14 and the clinic's tests break a
healthy set-up with these, one at a time, and watch what the run records.

Each function does what a real script gets wrong, in a line or two, and says which in its name:

    zero_lora_a(model)                 A initialised to zeros as well as B: nothing ever moves
    checkpoint_reentrant(model)        old-style (reentrant) checkpointing over frozen embeddings
    mask_by_token_id(batch, eos_id)    `labels[labels == pad_id] = -100` with pad = EOS
    label_everything(batch)            labels = input_ids: the prompt is scored too
    without_chat_template(tokenizer)   rows formatted as plain "Question: ... Answer:" text

The optimizer built before the model was wrapped needs no helper: `torch.optim.AdamW(model.parameters())`
before the method runs, handed to `labs.train.train(optimizer=...)`.
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from labs.data import IGNORE


def zero_lora_a(model: nn.Module) -> int:
    """Set every lora_A to zero (as a hand-written LoRA that zero-initialises both factors);
    returns how many tensors were zeroed."""
    zeroed = 0
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_A" in name:
                param.zero_()
                zeroed += 1
    return zeroed


def checkpoint_reentrant(model: nn.Module) -> int:
    """Recompute each decoder layer in the backward pass with torch's reentrant checkpoint, as
    older training scripts did. Its output requires grad only when an input does; with frozen
    embeddings none does, so the trainable tensors inside the layers get no gradient (torch only
    warns). Returns how many layers were wrapped."""
    layers = _decoder_layers(model)
    for layer in layers:
        forward = layer.forward

        def recomputed(hidden_states, *args, _forward=forward, **kwargs):
            return checkpoint(lambda h: _forward(h, *args, **kwargs), hidden_states, use_reentrant=True)
        layer.forward = recomputed
    return len(layers)


def _decoder_layers(model: nn.Module) -> list[nn.Module]:
    for module in model.modules():
        layers = getattr(module, "layers", None)
        if isinstance(layers, nn.ModuleList) and len(layers):
            return list(layers)
    raise ValueError(f"{type(model).__name__} has no `layers` list of decoder layers to checkpoint")


def mask_by_token_id(batch: dict, pad_token_id: int) -> dict:
    """The batch with every label equal to the pad token masked, as `labels[labels == pad] = -100`
    does. With pad = EOS this also masks the EOS that ends each answer."""
    labels = batch["labels"].clone()                       # (B, T)
    labels[batch["input_ids"] == pad_token_id] = IGNORE
    return {**batch, "labels": labels}


def label_everything(batch: dict) -> dict:
    """The batch with every attended token labelled: labels = input_ids (padding still masked)."""
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, IGNORE)  # (B, T)
    return {**batch, "labels": labels}


def without_chat_template(tokenizer):
    """A copy of the tokenizer with no chat template: labs.data then formats every row as
    "Question: ...\\nAnswer:", while inference with the original uses the chat template."""
    plain = copy.deepcopy(tokenizer)
    plain.chat_template = None
    return plain
