"""Full fine-tuning, the baseline every PEFT method is measured against: every weight trains.

Not an exercise (notebook 01 builds it step by step); it has the same entry point as the
technique modules, so `labs finetune --method full` takes no special path.
"""
from __future__ import annotations

from torch import nn

from labs.surgery import unfreeze


def prepare_for_finetune(model: nn.Module, task, options: dict | None = None) -> nn.Module:
    """Every parameter trains. Full fine-tuning takes no options."""
    if options:
        raise ValueError(f"method 'full' takes no options, got {sorted(options)}")
    unfreeze(model)
    return model
