"""Adapters on disk in the PEFT two-file layout, readable by Hugging Face peft and by us.

    <folder>/adapter_config.json        what the adapter is: peft_type, task_type, r, targets, ...
    <folder>/adapter_model.safetensors  only the trained tensors, under peft's key names

Nothing here knows a technique: `save_adapter` asks the technique module that adapted the
model (recorded by labs.surgery.mark_adapted) for its `to_peft`, and `load_adapter` picks the
technique module from `peft_type` and hands the tensors to its `from_peft`. Methods peft lacks
(BitFit, bottleneck adapters) use the same layout with their own `peft_type`.
"""
from __future__ import annotations

import importlib
import json
import os
import tempfile
from pathlib import Path
from typing import Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from labs.methods import method_for_peft_type
from labs.surgery import adapter_record

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"



def _write_atomically(target: Path, write: Callable[[str], None]) -> None:
    """Write through a temporary file in the same folder, then rename: readers never see half a file."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_adapter(model: nn.Module, path: str | os.PathLike) -> Path:
    """Save the adapter that `model` carries into folder `path` (created if needed); return the folder.

    The weights are written before the config, each file atomically, so a folder with a config
    always has complete weights beside it.
    """
    record = adapter_record(model)  # ValueError when the model carries no adapter
    config_dict, state = importlib.import_module(record.module).to_peft(model)
    # safetensors wants plain, contiguous CPU tensors that share no memory with one another
    tensors = {key: t.detach().to("cpu").contiguous().clone() for key, t in state.items()}
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    _write_atomically(folder / WEIGHTS_NAME, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    text = json.dumps(config_dict, indent=2, sort_keys=True) + "\n"
    _write_atomically(folder / CONFIG_NAME, lambda tmp: Path(tmp).write_text(text))
    return folder


def _require(folder: Path, name: str) -> Path:
    file = folder / name
    if not file.is_file():
        present = ", ".join(sorted(p.name for p in folder.iterdir())) if folder.is_dir() else "folder missing"
        hint = (" (this folder holds a pickle-format adapter_model.bin; re-save it with "
                "safe_serialization=True)" if (folder / "adapter_model.bin").exists() else "")
        raise FileNotFoundError(f"{file} not found: an adapter folder needs {CONFIG_NAME} and "
                                f"{WEIGHTS_NAME}; present: {present or 'nothing'}{hint}")
    return file


def read_adapter(path: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config dict, tensors) of the adapter in folder `path`, with clear errors for broken files."""
    folder = Path(path)
    config_file, weights_file = _require(folder, CONFIG_NAME), _require(folder, WEIGHTS_NAME)
    try:
        config_dict = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{config_file} is not valid JSON ({err}); the file is damaged") from err
    if not isinstance(config_dict, dict):
        raise ValueError(f"{config_file} holds a {type(config_dict).__name__}, not a JSON object")
    try:
        state = load_file(weights_file)
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{weights_file} is not a readable safetensors file ({err}); it is probably "
                         "truncated or corrupt: save the adapter again") from err
    return config_dict, state


def technique_for(config_dict: dict, impl: str | None = None):
    """The technique module that reads adapters of this config's peft_type (from the registry)."""
    return method_for_peft_type(config_dict.get("peft_type")).technique(impl)


def load_adapter(model: nn.Module, path: str | os.PathLike, *, method: str | None = None,
                 impl: str | None = None) -> nn.Module:
    """Apply the adapter saved in folder `path` (by save_adapter or by peft) to base `model`.

    `method` ("lora", "adapter", ...) says which kind you expect: another kind is an error.
    `impl` picks labs or solutions (default: $LABS_IMPL). Returns the adapted model.
    """
    existing = getattr(model, "labs_adapter", None)
    if existing is not None:
        raise ValueError(f"this model already carries a {existing.method!r} adapter; load the "
                         "adapter into a fresh base model")
    config_dict, state = read_adapter(path)
    found = method_for_peft_type(config_dict.get("peft_type"))
    if method is not None and method not in (found.name, found.module):
        raise ValueError(f"{Path(path) / CONFIG_NAME} holds a {config_dict['peft_type']!r} adapter "
                         f"(method {found.name!r}), not the {method!r} adapter expected")
    return found.technique(impl).from_peft(model, config_dict, state)
