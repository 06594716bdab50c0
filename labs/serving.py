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
from labs.surgery import get_submodule_parent, is_linear


def read_lora(name: str, path: str | os.PathLike, served: list[str], lora) -> tuple[dict, dict, dict[str, torch.Tensor]]:
    """(config dict, tensors as in the file, tensors by our names) of the LoRA adapter in `path`,
    to be served as `name`."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"adapter name {name!r} is not valid; use a non-empty string such as 'sql'")
    if name in served:
        raise ValueError(f"an adapter named {name!r} is already served; served: {', '.join(served)}")
    config_dict, state = read_adapter(path)
    if config_dict.get("peft_type") != "LORA":
        raise ValueError(f"{Path(path)} holds a {config_dict.get('peft_type')!r} adapter; this server "
                         "serves LoRA adapters only (peft_type 'LORA')")
    return config_dict, state, tensors_under(state, KEY_PREFIX, rename=lora.our_name)


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
        config_dict, state, tensors = read_lora(name, path, self.names, self.lora)
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


class MultiAdapterServer:
    """A base model plus any number of LoRA adapters, one batch mixing them row by row.

        server = MultiAdapterServer(base_model)           # mode="gather" or "group" (labs multi_lora)
        server.add("sql", "adapters/sql")                 # any rank, any target layers
        server.add("chat", "adapters/chat")
        logits = server(["sql", "chat", None, "sql"], input_ids=ids).logits   # (4, T, V): one forward

    Each adapted layer becomes a `MultiLoRALinear` (the multi_lora technique module): the base
    product once for the whole batch, then every row's update from its own adapter's A and B.
    A row named None gets the base alone. Unlike AdapterServer, adapters need not share a rank or
    targets: a layer that an adapter does not adapt gives that adapter's rows the base product.
    """

    def __init__(self, model: nn.Module, impl: str | None = None, mode: str = "gather"):
        if getattr(model, "labs_adapter", None) is not None:
            raise ValueError(f"the base model already carries a {model.labs_adapter.method!r} adapter; "
                             "give the server a plain base model")
        self.model = model.requires_grad_(False)  # serving only: nothing trains
        self.lora, self.multi = technique("lora", impl), technique("multi_lora", impl)
        if mode not in self.multi.MODES:
            raise ValueError(f"mode {mode!r} is not valid; use one of {', '.join(self.multi.MODES)}")
        self.mode = mode
        self.ranks: dict[str, int] = {}  # name -> rank, in the order the adapters were added

    @property
    def names(self) -> list[str]:
        return list(self.ranks)

    def layers(self) -> list[tuple[str, nn.Module]]:
        """Every multi-adapter layer, with its name, in model order."""
        return [(n, m) for n, m in self.model.named_modules() if isinstance(m, self.multi.MultiLoRALinear)]

    def add(self, name: str, path: str | os.PathLike) -> None:
        """Read the LoRA adapter in folder `path`; its rows will be named `name`."""
        config_dict, _, tensors = read_lora(name, path, self.names, self.lora)
        whole = sorted(k for k in tensors if ".lora_" not in k)
        if whole:
            raise ValueError(f"adapter {name!r} ({Path(path)}) also trains whole modules ({whole[0]!r}, ...): "
                             "rows cannot share one model's modules_to_save; serve it from AdapterServer")
        config = self.lora.config_from_peft(config_dict, tensors, self.model)
        # The scale alpha / r (or alpha / sqrt(r)) as your LoRALinear (exercise 5.1) computes it.
        scaling = self.lora.LoRALinear(nn.Linear(1, 1), config.r, config.alpha,
                                       use_rslora=config.use_rslora).scaling
        layers = {n[: -len(".lora_A")] for n in tensors if n.endswith(".lora_A")}
        for layer in sorted(layers):
            self._layer(name, path, layer).add(name, tensors[layer + ".lora_A"], tensors[layer + ".lora_B"],
                                               scaling)
        self.ranks[name] = config.r

    def _layer(self, name: str, path, layer: str) -> nn.Module:
        """The multi-adapter layer at `layer`, wrapping the base layer there on first use."""
        try:
            module = self.model.get_submodule(layer)
        except AttributeError:
            raise ValueError(f"adapter {name!r} ({Path(path)}) was made for another base model: it adapts "
                             f"{layer!r}, which {type(self.model).__name__} does not have") from None
        if isinstance(module, self.multi.MultiLoRALinear):
            return module
        if not is_linear(module):
            raise ValueError(f"adapter {name!r} ({Path(path)}) adapts {layer!r}, a {type(module).__name__}; "
                             "LoRA adapts linear layers only")
        parent, child = get_submodule_parent(self.model, layer)
        setattr(parent, child, self.multi.MultiLoRALinear(module))
        return getattr(parent, child)

    def plan(self, names: list[str | None]) -> None:
        """Which adapter each row of the coming forwards uses (None: the base); stays until the next plan."""
        unknown = sorted({n for n in names if n is not None and n not in self.ranks}, key=str)
        if unknown:
            raise KeyError(f"no adapter named {', '.join(map(repr, unknown))}; this server has "
                           f"{', '.join(map(repr, self.names)) or 'none yet (call add first)'} (or None: the base)")
        for _, layer in self.layers():
            layer.plan(list(names), self.mode)

    def __call__(self, names: list[str | None], **inputs):
        """One forward of a batch whose row n uses adapter names[n] (None: the base)."""
        rows = next(iter(inputs.values())).shape[0] if inputs else None
        if rows != len(names):
            raise ValueError(f"{len(names)} adapter names for a batch of {rows} rows; give one name "
                             "(or None) per row")
        self.plan(names)
        with torch.no_grad():
            return self.model(**inputs)

    def adapter_bytes(self) -> dict[str, int]:
        """Bytes each adapter's factors take in memory (over every layer it adapts)."""
        sizes = dict.fromkeys(self.ranks, 0)
        for _, layer in self.layers():
            for name, (A, B, _) in layer.factors.items():
                sizes[name] += A.numel() * A.element_size() + B.numel() * B.element_size()
        return sizes


def encode_pairs(tokenizer, pairs, add_special_tokens: bool = True) -> tuple[list[str | None], dict[str, torch.Tensor]]:
    """(adapter names, model inputs) for a batch of (adapter, prompt text) pairs.

    Prompts are LEFT-padded, so that every row's last token sits at the last position and the next
    tokens of all rows come out together; the attention mask hides the padding.
    add_special_tokens=False for texts that already carry them (a rendered chat template).
    """
    pairs = list(pairs)
    bad = [p for p in pairs if not (isinstance(p, (tuple, list)) and len(p) == 2 and isinstance(p[1], str))]
    if not pairs or bad:
        raise ValueError(f"give (adapter name or None, prompt text) pairs, got {bad[0] if bad else pairs!r}")
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        inputs = tokenizer([prompt for _, prompt in pairs], return_tensors="pt", padding=True,
                           add_special_tokens=add_special_tokens)
    finally:
        tokenizer.padding_side = side
    return [name for name, _ in pairs], dict(inputs)
