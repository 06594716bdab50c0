"""Adapters on disk in the PEFT two-file layout, readable by Hugging Face peft and by us.

    <folder>/adapter_config.json        what the adapter is: peft_type, task_type, r, targets, ...
    <folder>/adapter_model.safetensors  only the trained tensors, under peft's key names

Nothing here knows a technique: `save_adapter` asks the technique module that adapted the
model (recorded by labs.surgery.mark_adapted) for its `to_peft`, and `load_adapter` picks the
technique module from `peft_type` (the registry, labs.methods) and hands the tensors to its
`from_peft`. Methods peft lacks (BitFit, bottleneck adapters) use the same layout with their own
`peft_type`.

The second half is what every technique's `to_peft` / `from_peft` shares: the common config
fields, the trained tensors under peft's key names, and loading them back with shape checks.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import os
from pathlib import Path
from typing import Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from labs.files import write_atomically
from labs.methods import TASK_HEADS, method_for_module, method_for_peft_type
from labs.surgery import AdapterRecord, adapter_record

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
KEY_PREFIX = "base_model.model."  # peft stores every tensor of the wrapped model under this prefix
# peft's task_type picks its PeftModel class; it follows from the model's class name.
TASK_TYPES = {"ForSequenceClassification": "SEQ_CLS", "ForCausalLM": "CAUSAL_LM", "LMHeadModel": "CAUSAL_LM"}


def save_adapter(model: nn.Module, path: str | os.PathLike) -> Path:
    """Save the adapter that `model` carries into folder `path` (created if needed); return the folder.

    The weights are written before the config, each file atomically, so a folder with a config
    always has complete weights beside it.
    """
    record = adapter_record(model)  # ValueError when the model carries no adapter
    return write_adapter(path, *importlib.import_module(record.module).to_peft(model))


def write_adapter(path: str | os.PathLike, config_dict: dict, state: dict[str, torch.Tensor]) -> Path:
    """Write an adapter_config dict and its tensors into folder `path`, weights first; return the folder."""
    # safetensors wants plain, contiguous CPU tensors that share no memory with one another
    tensors = {key: t.detach().to("cpu").contiguous().clone() for key, t in state.items()}
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    write_atomically(folder / WEIGHTS_NAME, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    write_atomically(folder / CONFIG_NAME, json.dumps(config_dict, indent=2, sort_keys=True) + "\n")
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


# ---------------------------------------------------------------------------------------------
# Shared by the techniques' to_peft / from_peft
# ---------------------------------------------------------------------------------------------
def task_type(model: nn.Module) -> str | None:
    """peft's task_type for `model`: SEQ_CLS, CAUSAL_LM, FEATURE_EXTRACTION (other transformers
    models), or None for a module that is not a transformers model."""
    name = type(model).__name__
    found = next((kind for suffix, kind in TASK_TYPES.items() if name.endswith(suffix)), None)
    return found or ("FEATURE_EXTRACTION" if hasattr(model, "config") else None)


def prepared_by(model: nn.Module, module: str) -> AdapterRecord:
    """The adapter record of `model` if technique `module` (its __name__) applied it, else a clear error."""
    record = getattr(model, "labs_adapter", None)
    method = method_for_module(module).name
    if record is None or record.method != method:
        raise ValueError(f"to_peft needs a model prepared with {module}.apply; this one carries "
                         f"{record.method if record else 'no adapter'!r}")
    return record


def config_fields(model: nn.Module, record: AdapterRecord) -> dict:
    """The adapter_config.json fields every method writes: peft_type (from the registry), task_type,
    the base model's name, inference_mode."""
    return {"peft_type": method_for_module(record.module).peft_type, "task_type": task_type(model),
            "base_model_name_or_path": getattr(getattr(model, "config", None), "name_or_path", None) or None,
            "inference_mode": True}


def check_peft_type(config_dict: dict, module: str) -> None:
    """Refuse an adapter_config of another kind than technique `module` writes."""
    want = method_for_module(module).peft_type
    if config_dict.get("peft_type") != want:
        raise ValueError(f"peft_type {config_dict.get('peft_type')!r} is not {want!r}: this adapter "
                         f"was not made by {module.rsplit('.', 1)[-1]}.to_peft (or by peft for it)")


def trained_tensors(model: nn.Module, prefix: str = KEY_PREFIX, skip: str | None = None,
                    rename: Callable[[str], str] = lambda name: name) -> dict[str, torch.Tensor]:
    """Every trainable tensor, and the task head (new and random: the logits need it), under peft's
    key `prefix + rename(name)`; names starting with `skip` are left out (a technique's own module)."""
    return {prefix + rename(n): p.detach().clone() for n, p in model.named_parameters()
            if (p.requires_grad or n.split(".")[0] in TASK_HEADS) and not (skip and n.startswith(skip))}


def modules_to_save(keys, prefix: str = KEY_PREFIX) -> list[str] | None:
    """peft's modules_to_save for saved keys: the task heads among them (None when there is none)."""
    names = {k[len(prefix):].split(".")[0] for k in keys if k.startswith(prefix)}
    return sorted(names & set(TASK_HEADS)) or None


def tensors_under(state_dict: dict[str, torch.Tensor], prefix: str = KEY_PREFIX,
                  rename: Callable[[str], str] = lambda name: name) -> dict[str, torch.Tensor]:
    """The tensors whose keys start with `prefix`, by parameter name (prefix removed, then renamed)."""
    return {rename(k[len(prefix):]): t for k, t in state_dict.items() if k.startswith(prefix)}


def load_tensors(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Copy each tensor into the parameter of that name and let it train; every shape is checked
    before anything is copied."""
    params = dict(model.named_parameters())
    for name, tensor in tensors.items():
        if name not in params:
            raise ValueError(f"adapter tensor {name!r} names no parameter of {type(model).__name__}: "
                             "the adapter was made for another base model")
        if tuple(params[name].shape) != tuple(tensor.shape):
            raise ValueError(f"the adapter was made for another base model: {name!r} has shape "
                             f"{tuple(tensor.shape)} in the file but {tuple(params[name].shape)} in this model")
    with torch.no_grad():
        for name, tensor in tensors.items():
            params[name].copy_(tensor.to(params[name].dtype)).requires_grad_(True)


def require_all(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Refuse a file that lacks a tensor the prepared model trains."""
    missing = sorted(n for n, p in model.named_parameters() if p.requires_grad and n not in tensors)
    if missing:
        raise ValueError(f"the adapter file lacks {len(missing)} tensors this model trains, e.g. {missing[0]!r}")


# Methods whose adapter is "their config plus some trained tensors of the model" (BitFit, bottleneck
# adapters) need nothing more than these two.
def plain_to_peft(model: nn.Module, module: str, **extra) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config: the common fields, the config dataclass's fields and `extra`; every trained tensor)."""
    record = prepared_by(model, module)
    state = trained_tensors(model)
    return {**config_fields(model, record), **dataclasses.asdict(record.config), **extra,
            "modules_to_save": modules_to_save(state)}, state


def plain_from_peft(model: nn.Module, config_dict: dict, state_dict: dict[str, torch.Tensor],
                    module: str, config_class: type, apply: Callable) -> nn.Module:
    """apply(model, config_class(fields read from config_dict)), then load every saved tensor."""
    check_peft_type(config_dict, module)
    known = {f.name for f in dataclasses.fields(config_class)}
    apply(model, config_class(**{k: v for k, v in config_dict.items() if k in known}))
    tensors = tensors_under(state_dict)
    load_tensors(model, tensors)
    require_all(model, tensors)
    return model
