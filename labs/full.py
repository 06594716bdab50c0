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


def save_full_model(model: nn.Module, path) -> int:
    """The whole state dict as safetensors; a tensor shared by several names (tied embeddings)
    is stored once, under its first name. Written atomically; returns the bytes written."""
    from safetensors.torch import save_file

    from labs.files import write_atomically
    tensors, seen = {}, set()
    for name, tensor in model.state_dict().items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if key in seen:
            continue
        seen.add(key)
        tensors[name] = tensor.detach().to("cpu").contiguous()
    target = write_atomically(path, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    return target.stat().st_size
