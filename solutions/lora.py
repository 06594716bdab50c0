"""LoRA: low-rank adaptation of a frozen linear layer (Hu et al., 2021), all of it in one file.

A pretrained weight W (out, in) stays frozen. Beside it we learn two thin matrices,
A (r, in) and B (out, r), and the layer computes

    h = W x + (alpha / r) * B A x

B starts at zero, so the adapted model is exactly the base model at step 0, and training
moves only r * (in + out) numbers per layer instead of in * out. Because B A has the shape of W,
it can be added into W after training ("merge"), leaving no extra work at inference time.

Read top to bottom: the config, the wrapping layer, `apply` (inject into a model), merging,
and the PEFT-format glue (`to_peft` / `from_peft`) that makes our adapters load in
Hugging Face peft and theirs load here.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace

import torch
from torch import nn

from labs.options import config_from_options
from labs.peft_format import (KEY_PREFIX, check_peft_type, config_fields, load_tensors, modules_to_save,
                              prepared_by, require_all, tensors_under, trained_tensors)
from labs.surgery import (freeze, get_submodule_parent, is_linear, linear_dims, linear_weight, mark_adapted,
                          match_names, refuse_second_adapter, replace_modules, unfreeze)

NOTEBOOK = "notebooks/05_lora.ipynb"
PISSA_INIT = re.compile(r"^pissa(_niter_[1-9][0-9]*)?$")  # peft's names for PiSSA's start

# The usual targets per model family: attention query and value projections, as in the paper.
DEFAULT_TARGETS = {"q_proj": ("q_proj", "v_proj"),   # Llama, Mistral, Qwen, Gemma, ...
                   "query": ("query", "value"),       # BERT and its relatives
                   "c_attn": ("c_attn",)}             # GPT-2: q, k and v share one Conv1D


@dataclass(frozen=True)
class LoRAConfig:
    r: int = 8                        # rank of the update B A: trainable numbers per layer = r * (in + out)
    alpha: float = 16                 # update scale numerator: the update is multiplied by alpha / r
    dropout: float = 0.0              # dropout on the input of the LoRA path only (0 = none, and cheaper)
    target_modules: tuple[str, ...] | None = None  # layer names to adapt; None = usual choice for the family
    use_rslora: bool = False          # rank-stabilised LoRA: scale by alpha / sqrt(r) instead of alpha / r
    bias: str = "none"                # which biases train: only "none" (biases stay frozen, as in peft's default)
    modules_to_save: tuple[str, ...] = ()  # whole modules trained and saved too, e.g. a new "classifier" head
    # The variants of notebook 15 (lora_variants.py); the defaults are plain LoRA:
    use_dora: bool = False            # DoRA: a trained length per output row times the direction of W + B A
    init: str = "default"             # "default" (B = 0) or PiSSA: "pissa" / "pissa_niter_K" (W's top-r SVD)
    loraplus_ratio: float = 1.0       # LoRA+: B learns with the learning rate times this ratio (A with 1x)

    def __post_init__(self):
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r <= 0:
            raise ValueError(f"r={self.r!r} is not valid; the rank must be a positive integer such as 8")
        if not self.alpha > 0:
            raise ValueError(f"alpha={self.alpha!r} is not valid; use a positive number such as 2 * r")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout!r} is not valid; use a probability in [0, 1)")
        if self.bias != "none":
            raise ValueError(f"bias={self.bias!r} is not supported; only 'none' is (BitFit trains biases)")
        for name in ("target_modules", "modules_to_save"):
            value = getattr(self, name)
            if isinstance(value, str):  # "q_proj,v_proj" or "all-linear" -> a tuple of names
                value = tuple(t.strip() for t in value.split(",") if t.strip())
            if value is not None:
                object.__setattr__(self, name, tuple(value))
        if self.init != "default" and not PISSA_INIT.match(str(self.init)):
            raise ValueError(f"init={self.init!r} is not valid; use 'default', 'pissa' or 'pissa_niter_K' (K >= 1)")
        if self.use_dora and self.init != "default":
            raise ValueError(f"use_dora=True with init={self.init!r} is not supported here; choose DoRA or PiSSA")
        if isinstance(self.loraplus_ratio, bool) or not self.loraplus_ratio > 0:
            raise ValueError(f"loraplus_ratio={self.loraplus_ratio!r} is not valid; use a positive number "
                             "(1 = plain LoRA, LoRA+ suggests 4 to 16)")
        if self.target_modules is not None and not self.target_modules:
            raise ValueError(f"target_modules={self.target_modules!r} is empty; name at least one layer, "
                             "e.g. ('q_proj', 'v_proj'), or 'all-linear'")


def adapter_dtype(layer: nn.Module) -> torch.dtype:
    """LoRA factors train in float32 unless the base already uses float32/64 (bf16 and 4-bit bases too)."""
    dtype = layer.weight.dtype
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


class LoRALinear(nn.Module):
    """A frozen linear layer (nn.Linear or GPT-2 Conv1D) plus a trainable low-rank update.

    Merging: `merge()` adds the update into the base weight and the forward then skips the
    LoRA path; `unmerge()` subtracts it again. Both are idempotent: merging a merged layer (or
    unmerging an unmerged one) does nothing, so the update can never be added twice.
    """

    def __init__(self, base_layer: nn.Module, r: int, alpha: float, dropout: float = 0.0,
                 use_rslora: bool = False):
        """Keep `base_layer`; set self.scaling; create lora_A (r, in), Kaiming-uniform(a=sqrt(5)),
        and lora_B (out, r), zeros, as nn.Parameters with the dtype and device in `factory`."""
        super().__init__()
        in_features, out_features = linear_dims(base_layer)  # TypeError for anything but a linear layer
        self.base_layer = base_layer
        self.r, self.alpha, self.use_rslora = r, alpha, use_rslora
        # Dropout of 0 is skipped entirely: an Identity costs nothing, nn.Dropout(0) still copies x.
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        factory = dict(dtype=adapter_dtype(base_layer), device=base_layer.weight.device)
        # BEGIN SOLUTION 5.1
        # alpha / r keeps the size of the update roughly independent of r, so a learning rate tuned
        # at one rank still works at another; rsLoRA's alpha / sqrt(r) keeps it stable at large r.
        self.scaling = alpha / math.sqrt(r) if use_rslora else alpha / r
        self.lora_A = nn.Parameter(torch.empty(r, in_features, **factory))   # (r, in)
        self.lora_B = nn.Parameter(torch.zeros(out_features, r, **factory))  # (out, r): zero, so B A = 0
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # nn.Linear's default init, as in peft
        # END SOLUTION

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """base_layer(x) + (dropout(x) @ A^T @ B^T) * scaling; only base_layer(x) while merged.

        The factors are float32 even on a bf16 or fp16 base layer (adapter_dtype): cast the LoRA
        path's input to self.lora_A.dtype, and its result back to base_layer(x)'s dtype.
        """
        # BEGIN SOLUTION 5.2
        result = self.base_layer(x)                   # (B, T, out)
        if self.merged:                               # the update already lives inside W
            return result
        h = self.dropout(x).to(self.lora_A.dtype)     # (B, T, in)
        update = (h @ self.lora_A.T) @ self.lora_B.T  # (B, T, r) -> (B, T, out): never build B A
        return result + (update * self.scaling).to(result.dtype)
        # END SOLUTION

    def delta_weight(self) -> torch.Tensor:
        """The update this adapter adds to the base weight: scaling * B @ A, shape (out, in)."""
        # BEGIN SOLUTION 5.3
        return (self.lora_B @ self.lora_A) * self.scaling  # (out, r) @ (r, in) -> (out, in)
        # END SOLUTION

    @torch.no_grad()
    def merge(self) -> None:
        """Add delta_weight() into the base weight (in place) and set `merged`; no-op if merged."""
        # BEGIN SOLUTION 5.4
        if self.merged:
            return
        weight = linear_weight(self.base_layer)  # (out, in) view, whatever the storage layout
        weight += self.delta_weight().to(weight.dtype)
        self.merged = True
        # END SOLUTION

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract delta_weight() from the base weight again and clear `merged`; no-op if not merged."""
        # BEGIN SOLUTION 5.5
        if not self.merged:
            return
        weight = linear_weight(self.base_layer)  # (out, in)
        weight -= self.delta_weight().to(weight.dtype)
        self.merged = False
        # END SOLUTION

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha}, scaling={self.scaling:g}, merged={self.merged}"


# ---------------------------------------------------------------------------------------------
# Injecting LoRA into a model
# ---------------------------------------------------------------------------------------------
def default_targets(model: nn.Module) -> tuple[str, ...]:
    """The usual target layers for this model's family (see DEFAULT_TARGETS)."""
    names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if is_linear(m)}
    for marker, targets in DEFAULT_TARGETS.items():
        if marker in names:
            return targets
    raise ValueError(f"no default LoRA targets for {type(model).__name__}; pass target_modules, "
                     f"choosing among its linear layers: {', '.join(sorted(names)) or '(none)'}")


def lora_layers(model: nn.Module) -> list[tuple[str, LoRALinear]]:
    """Every LoRALinear in the model, with its name, in model order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoRALinear)]


def mark_only_lora_as_trainable(model: nn.Module, modules_to_save: tuple[str, ...] = ()) -> list[str]:
    """Freeze everything, then unfreeze lora_A / lora_B and the modules_to_save; return trainable names."""
    def saved(name: str, module: str) -> bool:  # "classifier" matches classifier.weight, x.classifier.bias
        return name.startswith(module + ".") or f".{module}." in name

    freeze(model)
    names = unfreeze(model, lambda n: "lora_A" in n or "lora_B" in n
                     or any(saved(n, m) for m in modules_to_save))
    for module in modules_to_save:
        if not any(saved(n, module) for n in names):
            raise ValueError(f"modules_to_save names {module!r}, which matches no module of this model")
    return names


def apply(model: nn.Module, config: LoRAConfig) -> nn.Module:
    """Wrap every target layer of `model` in a LoRALinear and train only the LoRA factors.

    replace_modules(model, match_names(config.target_modules), factory) swaps the layers,
    mark_only_lora_as_trainable freezes everything else, mark_adapted(model, config, __name__)
    records what was done. Returns the model. The tests match two error messages, both written by
    these helpers: a target that matches no layer -> the message must contain the names of the
    layers that do exist, such as q_proj (replace_modules lists them); a second apply -> the
    message must contain 'already' (refuse_second_adapter, once mark_adapted has run).
    """
    refuse_second_adapter(model, __name__)  # before touching the model
    if config.use_dora or config.init != "default" or config.loraplus_ratio != 1.0:
        from . import lora_variants  # notebook 15: it calls this function, then changes what it asks
        return lora_variants.apply(model, config)
    if config.target_modules is None:
        config = replace(config, target_modules=default_targets(model))
    # BEGIN SOLUTION 5.6
    replace_modules(model, match_names(config.target_modules),
                    lambda name, layer: LoRALinear(layer, config.r, config.alpha, config.dropout,
                                                   config.use_rslora),
                    what=f"LoRA target_modules {list(config.target_modules)}")
    mark_only_lora_as_trainable(model, config.modules_to_save)
    mark_adapted(model, config, __name__)
    return model
    # END SOLUTION


def merge(model: nn.Module) -> nn.Module:
    """Merge every LoRA layer: same outputs, no extra inference cost (the model keeps its adapters)."""
    for _, layer in lora_layers(model):
        layer.merge()
    return model


def unmerge(model: nn.Module) -> nn.Module:
    """Undo `merge` on every LoRA layer, so training can go on."""
    for _, layer in lora_layers(model):
        layer.unmerge()
    return model


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Merge, then put the plain base layers back: a base-shaped model with the update baked in."""
    for name, layer in lora_layers(merge(model)):
        parent, child = get_submodule_parent(model, name)
        setattr(parent, child, layer.base_layer)
    model.__dict__.pop("labs_adapter", None)  # no adapter left to save; it may be adapted afresh
    return model


# ---------------------------------------------------------------------------------------------
# The PEFT two-file format (adapter_config.json + adapter_model.safetensors)
# ---------------------------------------------------------------------------------------------
def peft_name(name: str) -> str:
    """peft names a factor `<layer>.lora_A.default.weight` in memory, `<layer>.lora_A.weight` on disk."""
    return name + ".weight" if name.endswith((".lora_A", ".lora_B")) else name


def our_name(name: str) -> str:
    return name.removesuffix(".weight") if name.endswith((".lora_A.weight", ".lora_B.weight")) else name


def to_peft(model: nn.Module) -> tuple[dict, dict[str, torch.Tensor]]:
    """(adapter_config dict, tensors under peft's key names) for the LoRA adapter on `model`."""
    record = prepared_by(model, __name__)
    config, state = record.config, trained_tensors(model, rename=peft_name)
    conv1d = any(not isinstance(layer.base_layer, nn.Linear) for _, layer in lora_layers(model))
    return {**config_fields(model, record),
            "r": config.r, "lora_alpha": config.alpha, "lora_dropout": config.dropout,
            # peft reads "all-linear" as a keyword only when it is the whole string, not a list item
            "target_modules": ("all-linear" if "all-linear" in config.target_modules
                               else list(config.target_modules)), "use_rslora": config.use_rslora,
            "bias": config.bias, "modules_to_save": modules_to_save(state),
            "fan_in_fan_out": conv1d,  # peft's flag for weights stored (in, out), as in GPT-2's Conv1D
            "init_lora_weights": True if config.init == "default" else config.init,
            "use_dora": config.use_dora}, state


UNSUPPORTED = {"rank_pattern": {}, "alpha_pattern": {}, "layers_to_transform": None,
               "target_parameters": None, "lora_bias": False, "layer_replication": None}


def config_from_peft(config_dict: dict, tensors: dict[str, torch.Tensor], model: nn.Module) -> LoRAConfig:
    """Our LoRAConfig from peft's adapter_config fields (refusing features this module lacks)."""
    check_peft_type(config_dict, __name__)
    for key, plain in UNSUPPORTED.items():
        if config_dict.get(key, plain) not in (plain, None):
            raise ValueError(f"adapter_config has {key}={config_dict[key]!r}; only plain LoRA "
                             f"({key}={plain!r}) is supported here")
    odd = [n for n in tensors if ".lora_" in n and not n.endswith((".lora_A", ".lora_B", ".lora_magnitude_vector"))]
    if odd:
        raise ValueError(f"adapter tensor {odd[0]!r} is not a LoRA factor (lora_A / lora_B of a linear layer, "
                         "or DoRA's lora_magnitude_vector)")
    init = config_dict.get("init_lora_weights", True)
    if init not in (True, False, "gaussian") and not PISSA_INIT.match(str(init)):
        raise ValueError(f"adapter_config has init_lora_weights={init!r}; this course reads adapters started "
                         "as plain LoRA (true, false, 'gaussian') or with PiSSA ('pissa', 'pissa_niter_K')")
    adapted = sorted({n.rsplit(".lora_", 1)[0] for n in tensors if ".lora_" in n})
    # The tensors say exactly which layers were adapted; keep the file's short names if they agree.
    targets = config_dict.get("target_modules")
    if not (isinstance(targets, list) and targets and adapted == sorted(
            n for n, m in model.named_modules() if match_names(targets)(n, m))):
        targets = adapted
    return LoRAConfig(r=config_dict.get("r", 8), alpha=config_dict.get("lora_alpha", 8),  # peft's defaults
                      dropout=config_dict.get("lora_dropout") or 0.0, target_modules=tuple(targets),
                      use_rslora=bool(config_dict.get("use_rslora")), bias=config_dict.get("bias", "none"),
                      use_dora=bool(config_dict.get("use_dora")), init=init if isinstance(init, str)
                      and init.startswith("pissa") else "default",
                      modules_to_save=tuple(sorted({n.rsplit(".", 1)[0] for n in tensors if ".lora_" not in n})))


def check_shapes(model: nn.Module, tensors: dict[str, torch.Tensor], r: int) -> None:
    """Before the model changes: A must be (r, in) and B (out, r) for its layer; others as in the model."""
    for name, tensor in tensors.items():
        layer, lora, factor = name.rpartition(".lora_")
        try:
            if lora:
                in_features, out_features = linear_dims(model.get_submodule(layer))
                want = {"A": (r, in_features), "B": (out_features, r)}.get(factor, (out_features,))
            else:
                want = tuple(model.get_parameter(name).shape)
        except (AttributeError, TypeError) as err:
            raise ValueError(f"the adapter was made for another base model: it has {name!r}, "
                             f"which names no matching layer in {type(model).__name__}") from err
        if tuple(tensor.shape) != want:
            raise ValueError(f"the adapter was made for another base model: {name} has shape "
                             f"{tuple(tensor.shape)}, this model needs {want}")


def from_peft(model: nn.Module, config_dict: dict, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """Apply the LoRA adapter described by peft's config and tensors to the base `model`."""
    bad = [k for k in state_dict if not k.startswith(KEY_PREFIX)]
    if bad:
        raise ValueError(f"tensor {bad[0]!r} does not start with {KEY_PREFIX!r}: not a peft adapter file")
    tensors = tensors_under(state_dict, rename=our_name)
    config = config_from_peft(config_dict, tensors, model)
    check_shapes(model, tensors, config.r)
    apply(model, config)
    load_tensors(model, tensors)
    require_all(model, tensors)
    return model


# ---------------------------------------------------------------------------------------------
# What `labs finetune --method lora` calls
# ---------------------------------------------------------------------------------------------
def modules_for_options(options: dict) -> tuple[str, ...]:
    """The other technique modules these options run: lora_variants for DoRA, PiSSA or LoRA+ (their
    values are checked here, before any model loads)."""
    config = config_from_options(LoRAConfig, options)
    return ("lora_variants",) if config.use_dora or config.init != "default" or config.loraplus_ratio != 1.0 else ()


def prepare_for_finetune(model: nn.Module, task, options: dict | None = None) -> nn.Module:
    """LoRA with r=8, alpha=16 on the family's usual targets; `options` override LoRAConfig fields.

    The task does not change the choice (labs.methods unfreezes a new classification head).
    """
    return apply(model, config_from_options(LoRAConfig, options))
