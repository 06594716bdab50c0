"""Bottleneck adapters (Houlsby et al., 2019, "Parameter-Efficient Transfer Learning for NLP").

An adapter is a tiny two-layer network with a skip connection, inserted after a sublayer:

    adapter(h) = h + W_up f(W_down h + b_down) + b_up        h: (B, T, D), W_down: (m, D), W_up: (D, m)

The bottleneck m << D keeps it small: 2 m D + m + D parameters per adapter. Houlsby puts two in
every block -- after the attention output projection and after the MLP -- each before the
residual add and LayerNorm, and trains the adapters plus the layer norms. Pfeiffer et al. (2021)
use one adapter per block, after the MLP. Our "pfeiffer" placement takes that budget but keeps
Houlsby's position (on the MLP's output projection, before the residual add and LayerNorm);
AdapterHub's Pfeiffer configuration (SeqBnConfig) instead reads LN(h + x) after the block's residual
add and LayerNorm, and applies that residual and LayerNorm again afterwards (notebook 04, section 2).

Near-identity initialisation: we set W_up and b_up to exactly zero, so every adapter starts as
the identity and the adapted model computes exactly what the base model does (a test checks
equality, not closeness). Houlsby draws both projections from a tiny normal (std 1e-2, truncated)
instead, which is only approximately the identity; zero W_up is the limit of that choice, the one
LoRA makes for B, and it still learns: the gradient of W_up is the incoming gradient times
f(W_down h), which is not zero because W_down keeps its ordinary random initialisation.

Unlike LoRA, an adapter cannot be merged into the weights (f is non-linear), so it adds
sequential work to every forward pass: at batch 1 that shows up as latency.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from labs.options import config_from_options
from labs.peft_format import plain_from_peft, plain_to_peft
from labs.surgery import (freeze, is_linear, linear_dims, linear_weight, mark_adapted, norm_parameter_names,
                          refuse_second_adapter, replace_modules, unfreeze)

NOTEBOOK = "notebooks/04_adapters.ipynb"

PLACEMENTS = ("houlsby", "pfeiffer")
ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU}
# Each block's sublayer output projections, as patterns on full module names. The adapter wraps
# the projection, so it runs before the residual add (and, in BERT, before the LayerNorm).
ATTENTION_OUTPUTS = (r"attention\.output\.dense$",   # BERT: BertSelfOutput.dense
                     r"self_attn\.o_proj$",          # Llama, Mistral, Qwen2, Gemma
                     r"attn\.c_proj$")               # GPT-2 (Conv1D)
MLP_OUTPUTS = (r"layer\.\d+\.output\.dense$",        # BERT: BertOutput.dense (not attention.output)
               r"mlp\.down_proj$",                   # Llama family
               r"mlp\.c_proj$")                      # GPT-2


@dataclass(frozen=True)
class AdapterConfig:
    bottleneck: int = 64          # m, the adapter's inner width (Houlsby tried 8..256 on BERT-large, D=1024)
    reduction_factor: int = 0     # if > 0, m = D // reduction_factor (Pfeiffer's way), overriding bottleneck
    placement: str = "houlsby"    # "houlsby": after attention and after MLP (2 per block); "pfeiffer": after MLP
                                  # only, at Houlsby's position (not AdapterHub's post-LayerNorm one)
    activation: str = "gelu"      # the non-linearity f between the two projections: "gelu" or "relu"
    train_norms: bool = True      # also train the normalisation layers, as Houlsby does

    def __post_init__(self):
        for name, minimum in (("bottleneck", 1), ("reduction_factor", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
        if self.placement not in PLACEMENTS:
            raise ValueError(f"placement {self.placement!r} is not valid; use one of {', '.join(PLACEMENTS)}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation {self.activation!r} is not valid; use one of {', '.join(ACTIVATIONS)}")
        if not isinstance(self.train_norms, bool):
            raise ValueError(f"train_norms must be True or False, got {self.train_norms!r}")

    def width(self, d_model: int) -> int:
        """The bottleneck m for a model of width D."""
        m = d_model // self.reduction_factor if self.reduction_factor else self.bottleneck
        if m < 1:
            raise ValueError(f"reduction_factor {self.reduction_factor} leaves no bottleneck for width {d_model}")
        return m


# ---------------------------------------------------------------------------------------------
# The adapter and the wrapper
# ---------------------------------------------------------------------------------------------
class BottleneckAdapter(nn.Module):
    """h + up(f(down(h))), starting as the identity."""

    def __init__(self, d_model: int, bottleneck: int, activation: str = "gelu"):
        """adapter_down: Linear(D, m) with default init; activation: ACTIVATIONS[activation]();
        adapter_up: Linear(m, D) with weight and bias set to zero (identity at init).
        An activation not in ACTIVATIONS -> ValueError: the message must contain the bad name."""
        # BEGIN SOLUTION 4.1
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation {activation!r} is not valid; use one of {', '.join(ACTIVATIONS)}")
        self.adapter_down = nn.Linear(d_model, bottleneck)
        self.activation = ACTIVATIONS[activation]()
        self.adapter_up = nn.Linear(bottleneck, d_model)
        nn.init.zeros_(self.adapter_up.weight)  # up = 0: the adapter adds nothing until it learns
        nn.init.zeros_(self.adapter_up.bias)
        # END SOLUTION

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """h (B, T, D) -> h + up(f(down(h))), same shape."""
        # BEGIN SOLUTION 4.2
        z = self.activation(self.adapter_down(h))   # (B, T, m)
        return h + self.adapter_up(z)               # (B, T, D)
        # END SOLUTION


class AdapterWrapped(nn.Module):
    """A frozen sublayer output projection followed by an adapter: adapter(base_layer(x))."""

    def __init__(self, base_layer: nn.Module, adapter: BottleneckAdapter):
        super().__init__()
        self.base_layer = base_layer   # the original projection, frozen
        self.adapter = adapter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, D_in) -> adapter(base_layer(x)), (B, T, D)."""
        # BEGIN SOLUTION 4.3
        return self.adapter(self.base_layer(x))
        # END SOLUTION


# ---------------------------------------------------------------------------------------------
# Placement and injection
# ---------------------------------------------------------------------------------------------
def adapter_targets(model: nn.Module, placement: str = "houlsby") -> list[str]:
    """Names of the linear layers to wrap, in model order.

    "houlsby": every module matching ATTENTION_OUTPUTS or MLP_OUTPUTS (two per block);
    "pfeiffer": MLP_OUTPUTS only. Match with re.search on the full module name; only linear
    layers (labs.surgery.is_linear) count. Raise ValueError when nothing matches, and for an
    unknown placement (its message must contain the bad name).
    """
    # BEGIN SOLUTION 4.4
    if placement not in PLACEMENTS:
        raise ValueError(f"placement {placement!r} is not valid; use one of {', '.join(PLACEMENTS)}")
    patterns = MLP_OUTPUTS + (ATTENTION_OUTPUTS if placement == "houlsby" else ())
    names = [n for n, m in model.named_modules()
             if is_linear(m) and any(re.search(p, n) for p in patterns)]
    if not names:
        raise ValueError(f"no sublayer output projections found in {type(model).__name__} "
                         f"(looked for {', '.join(patterns)}); adapters know BERT, Llama-family and GPT-2 names")
    return names
    # END SOLUTION


def inject_adapters(model: nn.Module, config: AdapterConfig) -> list[str]:
    """Wrap each of adapter_targets(model, config.placement) in AdapterWrapped with a new
    BottleneckAdapter of width D (the layer's output features) and bottleneck config.width(D),
    on the layer's device and dtype. Return the wrapped names (labs.surgery.replace_modules)."""
    # BEGIN SOLUTION 4.5
    targets = set(adapter_targets(model, config.placement))

    def wrap(name: str, layer: nn.Module) -> AdapterWrapped:
        d_model = linear_dims(layer)[1]
        weight = linear_weight(layer)
        dtype = weight.dtype if weight.is_floating_point() else torch.float32
        adapter = BottleneckAdapter(d_model, config.width(d_model), config.activation)
        return AdapterWrapped(layer, adapter.to(device=weight.device, dtype=dtype))

    return replace_modules(model, lambda name, module: name in targets, wrap, what="adapter targets")
    # END SOLUTION


def adapter_parameter_count(d_model: int, n_layers: int, config: AdapterConfig) -> int:
    """Parameters the adapters add to a model of width D and L blocks (norms not included):
    2 m D + m + D per adapter, 2 adapters per block for "houlsby", 1 for "pfeiffer"."""
    # BEGIN SOLUTION 4.6
    m = config.width(d_model)
    per_adapter = 2 * m * d_model + m + d_model   # W_down (m, D) + b_down (m) + W_up (D, m) + b_up (D)
    per_block = 2 if config.placement == "houlsby" else 1
    return n_layers * per_block * per_adapter
    # END SOLUTION


def apply(model: nn.Module, config: AdapterConfig) -> nn.Module:
    """Insert adapters, freeze the base, train the adapters (and the norms if config.train_norms)."""
    refuse_second_adapter(model, __name__)   # before any surgery, not after it
    inject_adapters(model, config)
    freeze(model)
    norms = set(norm_parameter_names(model)) if config.train_norms else set()
    unfreeze(model, lambda name: ".adapter_down." in name or ".adapter_up." in name or name in norms)
    mark_adapted(model, config, __name__)
    return model


# ---------------------------------------------------------------------------------------------
# The technique-module protocol: PEFT two-file format and the command line
# ---------------------------------------------------------------------------------------------
def to_peft(model: nn.Module) -> tuple[dict, dict[str, torch.Tensor]]:
    """(adapter_config.json dict, tensors): AdapterConfig's fields and the wrapped layers' names; every
    trained tensor (adapters, norms, a classification head), so a reload gives the same logits."""
    targets = [n for n, m in model.named_modules() if isinstance(m, AdapterWrapped)]
    return plain_to_peft(model, __name__, target_modules=targets)


def from_peft(model: nn.Module, config_dict: dict, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """Insert adapters as `config_dict` describes and load the saved tensors (strict on shapes)."""
    return plain_from_peft(model, config_dict, state_dict, __name__, AdapterConfig, apply)


def prepare_for_finetune(model: nn.Module, task, options: dict | None = None) -> nn.Module:
    """What `labs finetune --method adapter` runs: Houlsby placement, m = 64, norms trained.

    `options` are command-line overrides of AdapterConfig fields, e.g. {"bottleneck": 16}.
    The task does not change the choice (a classification head is unfrozen by labs.methods).
    """
    return apply(model, config_from_options(AdapterConfig, options))
