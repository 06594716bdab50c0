"""One frozen base model serving several LoRA adapters, switched per request.

    server = AdapterServer(base_model)               # the base is held once
    server.add("sql", "adapters/sql")                # PEFT folders: adapter_config.json + safetensors
    server.add("chat", "adapters/chat")
    logits = server("sql", input_ids=ids).logits     # switches to "sql" if another adapter is active

The first adapter wraps the target layers (through the LoRA technique module's `apply`, via
`from_peft`); every later one must have the same rank and target layers, so a switch only copies
that adapter's A and B factors into the layers already in place: a few MB, not the whole model.
This is what multi-adapter servers do for LoRA, whose adapters all have the shape of their layers.
The base's weights are never written: switching touches `lora_A` / `lora_B` only.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from labs.impl import technique
from labs.peft_format import KEY_PREFIX, read_adapter, tensors_under


class AdapterServer:
    """A base model plus named LoRA adapters held in memory; `use(name)` makes one active."""

    def __init__(self, model: nn.Module, impl: str | None = None):
        if getattr(model, "labs_adapter", None) is not None:
            raise ValueError(f"the base model already carries a {model.labs_adapter.method!r} adapter; "
                             "give the server a plain base model")
        self.model = model
        self.lora = technique("lora", impl)
        self.adapters: dict[str, dict[str, torch.Tensor]] = {}  # name -> factors by parameter name
        self.active: str | None = None
        self._config = None  # the LoRAConfig every adapter shares (set by the first one)

    @property
    def names(self) -> list[str]:
        return list(self.adapters)

    def add(self, name: str, path: str | os.PathLike) -> None:
        """Read the LoRA adapter in folder `path` and keep it in memory under `name`."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"adapter name {name!r} is not valid; use a non-empty string such as 'sql'")
        if name in self.adapters:
            raise ValueError(f"an adapter named {name!r} is already served; served: {', '.join(self.names)}")
        config_dict, state = read_adapter(path)
        if config_dict.get("peft_type") != "LORA":
            raise ValueError(f"{Path(path)} holds a {config_dict.get('peft_type')!r} adapter; this server "
                             "switches LoRA adapters only (peft_type 'LORA')")
        tensors = tensors_under(state, KEY_PREFIX, rename=self.lora.our_name)
        if self._config is None:
            config = self.lora.config_from_peft(config_dict, tensors, self.model)
            self.lora.from_peft(self.model, config_dict, state)  # checks shapes, wraps the targets
            self.model.requires_grad_(False)                    # serving only: nothing trains
            self._config, self.active = config, name
        else:
            self._check_like_first(name, path, config_dict, tensors)
        self.adapters[name] = {k: t.detach().clone() for k, t in tensors.items()}

    def _check_like_first(self, name: str, path, config_dict: dict, tensors: dict) -> None:
        """A later adapter must fit the layers the first one wrapped: same scale, same tensors, same shapes."""
        first = self._config
        scale = {"r": first.r, "lora_alpha": first.alpha, "use_rslora": first.use_rslora}
        for key, want in scale.items():
            if config_dict.get(key, want) != want:
                raise ValueError(f"adapter {name!r} ({Path(path)}) has {key}={config_dict.get(key)!r}; this "
                                 f"server's adapters have {key}={want!r}: serve it from its own server")
        params = dict(self.model.named_parameters())
        for key, tensor in tensors.items():
            if key not in params:
                raise ValueError(f"adapter {name!r} ({Path(path)}) has tensor {key!r}, which the adapters "
                                 f"served here do not have (they adapt {list(first.target_modules)})")
            if tuple(tensor.shape) != tuple(params[key].shape):
                raise ValueError(f"adapter {name!r} was made for another base model: {key} has shape "
                                 f"{tuple(tensor.shape)} in the file but {tuple(params[key].shape)} here")
        missing = sorted(set(next(iter(self.adapters.values()))) - set(tensors))
        if missing:
            raise ValueError(f"adapter {name!r} ({Path(path)}) lacks {len(missing)} tensors the served "
                             f"adapters have, e.g. {missing[0]!r}")
        self.adapters[name] = {k: t.detach().clone() for k, t in tensors.items()}

    def use(self, name: str) -> None:
        """Make adapter `name` the active one: copy its factors into the adapted layers."""
        if name not in self.adapters:
            raise KeyError(f"no adapter named {name!r}; this server has "
                           f"{', '.join(map(repr, self.names)) or 'none yet (call add first)'}")
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for key, tensor in self.adapters[name].items():
                params[key].copy_(tensor)
        self.active = name

    def __call__(self, name: str, **inputs):
        """Run one request with adapter `name` (switching to it first when another is active)."""
        if name != self.active:
            self.use(name)
        with torch.no_grad():
            return self.model(**inputs)

    def adapter_bytes(self) -> dict[str, int]:
        """Bytes each adapter's factors take in memory."""
        return {name: sum(t.numel() * t.element_size() for t in tensors.values())
                for name, tensors in self.adapters.items()}
