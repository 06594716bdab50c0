"""Model surgery shared by every technique: freeze, count, and swap modules.

Nothing here knows about any one technique: a technique passes in *which* modules to touch
(a predicate) and *what* to put there (a factory that wraps the old module).
"""
from __future__ import annotations

import keyword
import re
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import nn

try:  # GPT-2 style models use Conv1D: a linear layer whose weight is stored transposed (in, out)
    from transformers.pytorch_utils import Conv1D
except ImportError:  # pragma: no cover - transformers is a course dependency
    Conv1D = ()

LINEAR_TYPES = (nn.Linear, Conv1D) if Conv1D else (nn.Linear,)


# ---------------------------------------------------------------------------------------------
# Freezing and counting
# ---------------------------------------------------------------------------------------------
def freeze(model: nn.Module) -> nn.Module:
    """Mark every parameter as frozen (requires_grad=False); returns the model."""
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def unfreeze(model: nn.Module, predicate: Callable[[str], bool] = lambda name: True) -> list[str]:
    """Make the parameters whose full name satisfies `predicate` trainable; return their names."""
    names = []
    for name, p in model.named_parameters():
        if predicate(name):
            p.requires_grad_(True)
            names.append(name)
    return names


@dataclass(frozen=True)
class ParamCount:
    trainable: int
    total: int

    @property
    def percent(self) -> float:
        return 100.0 * self.trainable / self.total if self.total else 0.0

    def __str__(self) -> str:  # the one format every notebook uses
        return f"trainable {self.trainable:,} / total {self.total:,} ({self.percent:.4f}%)"


def count_parameters(model: nn.Module) -> ParamCount:
    """Trainable and total parameter counts (shared tensors, e.g. tied embeddings, counted once)."""
    # A packed 4-bit weight (bitsandbytes' Linear4bit, qlora's NF4Linear) keeps two weights in each
    # uint8 element: count the in x out weights the layer stands for, or the total comes out halved.
    packed = {id(m.weight): m.in_features * m.out_features for m in model.modules()
              if isinstance(m, nn.Linear) and m.weight.dtype == torch.uint8}
    seen, trainable, total = set(), 0, 0
    for p in model.parameters():  # .parameters() already skips duplicates of the same tensor
        if id(p) in seen:
            continue
        seen.add(id(p))
        n = packed.get(id(p), p.numel())
        total += n
        trainable += n if p.requires_grad else 0
    return ParamCount(trainable, total)


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters an optimizer should see: only those with requires_grad=True."""
    return [p for p in model.parameters() if p.requires_grad]


def trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the trainable tensors, by full name: what a PEFT checkpoint needs to store."""
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


def is_norm(module: nn.Module) -> bool:
    """LayerNorm, RMSNorm and the models' own norm classes (LlamaRMSNorm, T5LayerNorm, ...)."""
    return isinstance(module, (nn.LayerNorm, nn.RMSNorm)) or type(module).__name__.endswith("Norm")


def norm_parameter_names(model: nn.Module) -> list[str]:
    """Names of the parameters that belong directly to a normalisation layer (gains, LayerNorm shifts)."""
    return [f"{module_name}.{name}" if module_name else name
            for module_name, module in model.named_modules() if is_norm(module)
            for name, _ in module.named_parameters(recurse=False)]


# ---------------------------------------------------------------------------------------------
# Linear layers of both layouts
# ---------------------------------------------------------------------------------------------
def is_linear(module: nn.Module) -> bool:
    return isinstance(module, LINEAR_TYPES)


def linear_dims(module: nn.Module) -> tuple[int, int]:
    """(in_features, out_features) of an nn.Linear or a GPT-2 Conv1D."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if Conv1D and isinstance(module, Conv1D):
        in_features, out_features = module.weight.shape  # Conv1D stores W as (in, out)
        return in_features, out_features
    raise TypeError(f"{type(module).__name__} is not a linear layer; expected nn.Linear or Conv1D")


def linear_weight(module: nn.Module) -> torch.Tensor:
    """The weight as (out, in), whatever the layout: a view, so in-place edits reach the module."""
    linear_dims(module)  # type check
    if module.weight.dtype == torch.uint8:
        raise TypeError(f"{type(module).__name__} stores its weight as packed 4-bit codes, which cannot be edited "
                        "in place; dequantize it first (qlora.dequantize_model)")
    return module.weight if isinstance(module, nn.Linear) else module.weight.T


# ---------------------------------------------------------------------------------------------
# Replacing modules
# ---------------------------------------------------------------------------------------------
PLAIN_PART = re.compile(r"[A-Za-z0-9_]+")  # one step of a submodule path: "encoder", "layer", "0"


def check_submodule_path(name: str) -> str:
    """`name` if it is a dotted path of plain steps ("bert.pooler.dense", "h.0.attn"): letters,
    digits and _, no "__" in a step. These helpers set attributes by name on modules a caller hands
    in, so a dunder or a mangled private name (__class__, _Printer__setup) is refused."""
    if not isinstance(name, str) or not all(PLAIN_PART.fullmatch(p) and "__" not in p for p in name.split(".")):
        raise ValueError(f"{name!r} is not a submodule path: give dotted steps of letters, digits and single "
                         "underscores (such as 'classifier' or 'transformer.h.0.attn')")
    return name


def check_attribute_name(name: str) -> str:
    """`name` if it is a plain public identifier ("soft_prompt"): no dunder, no _private, no keyword."""
    if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name) or name.startswith("_"):
        raise ValueError(f"{name!r} is not a plain attribute name: use a Python identifier that does not "
                         "start with _ (such as 'soft_prompt')")
    return name


def check_module(value, what: str) -> nn.Module:
    """`value` if it is an nn.Module instance (not a class, not another object)."""
    if not isinstance(value, nn.Module):
        raise TypeError(f"{what} must be an nn.Module, got {type(value).__name__}")
    return value


def get_submodule_parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    """The parent of submodule `name` and the attribute under which it hangs (both checked: the
    caller sets that attribute)."""
    check_module(model, "model")
    parent_name, _, child = check_submodule_path(name).rpartition(".")
    return check_module(model.get_submodule(parent_name) if parent_name else model, f"the parent of {name!r}"), child


def replace_modules(model: nn.Module,
                    predicate: Callable[[str, nn.Module], bool],
                    factory: Callable[[str, nn.Module], nn.Module],
                    *, what: str = "modules") -> list[str]:
    """Replace every submodule for which predicate(name, module) holds by factory(name, module).

    Returns the names replaced, in model order. Raises ValueError when nothing matches, naming
    a few of the module names that do exist, so a typo in a target list is caught at once.
    """
    check_module(model, "model")
    matches = [(n, m) for n, m in model.named_modules() if n and predicate(n, m)]
    if not matches:
        names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if n and is_linear(m)})
        raise ValueError(f"no {what} matched in {type(model).__name__}; "
                         f"linear layers here are named: {', '.join(names) or '(none)'}")
    for name, module in matches:
        parent, child = get_submodule_parent(model, name)
        setattr(parent, child, check_module(factory(name, module), f"the factory's replacement for {name!r}"))
    return [n for n, _ in matches]


def match_names(targets: Iterable[str] | str) -> Callable[[str, nn.Module], bool]:
    """A predicate for replace_modules: linear layers whose name ends with one of `targets`.

    `targets` are short names ("q_proj", "query") or dotted suffixes ("attention.self.query");
    "all-linear" matches every linear layer except the output head (lm_head / classifier).
    """
    if isinstance(targets, str):
        targets = [targets]
    targets = list(targets)
    if not targets:
        raise ValueError("target_modules is empty; name at least one module, e.g. ['q_proj', 'v_proj']")

    def predicate(name: str, module: nn.Module) -> bool:
        if not is_linear(module):
            return False
        if "all-linear" in targets:
            return name.rsplit(".", 1)[-1] not in ("lm_head", "classifier", "score")
        return any(name == t or name.endswith("." + t) for t in targets)

    return predicate


# ---------------------------------------------------------------------------------------------
# Which adapter a model carries (read by save_adapter, and to refuse applying a technique twice)
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AdapterRecord:
    method: str        # "lora", "adapter", "bitfit", "prefix", "prompt", ...
    config: object     # the technique's frozen config dataclass
    module: str        # the technique module that applied it, e.g. "solutions.lora"


def mark_adapted(model: nn.Module, config: object, module: str) -> None:
    """Record on `model` that technique `module` (its __name__) applied `config`; refuse a second one.

    The method's name comes from the registry (labs.methods): "solutions.lora" -> "lora".
    """
    from labs.methods import method_for_module
    refuse_second_adapter(model, module)
    model.labs_adapter = AdapterRecord(method_for_module(module).name, config, module)


def refuse_second_adapter(model: nn.Module, module: str) -> None:
    """Raise if `model` already carries an adapter. Technique `module` (its __name__) calls it before
    changing the model, so a refused technique leaves the model as it was."""
    from labs.methods import method_for_module
    method = method_for_module(module).name
    existing = getattr(model, "labs_adapter", None)
    if existing is not None:
        raise ValueError(f"this model already carries a {existing.method!r} adapter; applying "
                         f"{method!r} on top is not supported: load a fresh base model first "
                         "(a LoRA adapter can also be merged away with lora.merge_and_unload)")


def adapter_record(model: nn.Module) -> AdapterRecord:
    """The record left by mark_adapted, or a clear error when the model has no adapter."""
    record = getattr(model, "labs_adapter", None)
    if record is None:
        raise ValueError("this model carries no adapter: apply a technique (e.g. lora.apply) first")
    return record
