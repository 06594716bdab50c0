"""Bottleneck adapters (Houlsby et al., 2019, "Parameter-Efficient Transfer Learning for NLP").

An adapter is a tiny two-layer network with a skip connection, inserted after a sublayer:

    adapter(h) = h + W_up f(W_down h + b_down) + b_up        h: (B, T, D), W_down: (m, D), W_up: (D, m)

The bottleneck m << D keeps it small: 2 m D + m + D parameters per adapter. Houlsby puts two in
every block -- after the attention output projection and after the MLP -- each before the
residual add and LayerNorm, and trains the adapters plus the layer norms. Pfeiffer et al. (2021)
found one adapter per block, after the MLP, nearly as good and faster.

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
from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

from labs.surgery import freeze, is_linear, linear_dims, linear_weight, mark_adapted, replace_modules, unfreeze

NOTEBOOK = "notebooks/04_adapters.ipynb"
METHOD = "adapter"
PEFT_TYPE = "LABS_BOTTLENECK_ADAPTER"   # peft has no bottleneck adapter: same layout, our own type
KEY_PREFIX = "base_model.model."        # peft's prefix for every tensor key

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
    placement: str = "houlsby"    # "houlsby": after attention and after MLP (2 per block); "pfeiffer": after MLP only
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
        adapter_up: Linear(m, D) with weight and bias set to zero (identity at init)."""
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
    layers (labs.surgery.is_linear) count. Raise ValueError when nothing matches.
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


def _is_norm(module: nn.Module) -> bool:
    """LayerNorm, RMSNorm and the models' own norm classes (LlamaRMSNorm, ...)."""
    return isinstance(module, (nn.LayerNorm, nn.RMSNorm)) or type(module).__name__.endswith("Norm")


def norm_parameter_names(model: nn.Module) -> list[str]:
    """Names of the parameters that belong directly to a normalisation layer."""
    return [f"{mn}.{pn}" if mn else pn for mn, m in model.named_modules() if _is_norm(m)
            for pn, _ in m.named_parameters(recurse=False)]


def apply(model: nn.Module, config: AdapterConfig) -> nn.Module:
    """Insert adapters, freeze the base, train the adapters (and the norms if config.train_norms)."""
    if getattr(model, "labs_adapter", None) is not None:   # refuse before any surgery, not after it
        mark_adapted(model, METHOD, config, __name__)
    inject_adapters(model, config)
    freeze(model)
    norms = set(norm_parameter_names(model)) if config.train_norms else set()
    unfreeze(model, lambda name: ".adapter_down." in name or ".adapter_up." in name or name in norms)
    mark_adapted(model, METHOD, config, __name__)
    return model


# ---------------------------------------------------------------------------------------------
# The technique-module protocol: PEFT two-file format and the command line
# ---------------------------------------------------------------------------------------------
def _task_type(model: nn.Module) -> str:
    name = type(model).__name__
    if name.endswith("ForSequenceClassification"):
        return "SEQ_CLS"
    return "CAUSAL_LM" if name.endswith("ForCausalLM") else "FEATURE_EXTRACTION"


def to_peft(model: nn.Module) -> tuple[dict, dict[str, torch.Tensor]]:
    """(adapter_config.json dict, tensors): every trainable tensor, keys like
    base_model.model.<path>.adapter.adapter_down.weight; other trainable modules (norms, a
    classification head) are listed in `modules_to_save` so a reload gives the same logits."""
    record = getattr(model, "labs_adapter", None)
    if record is None or record.method != METHOD:
        raise ValueError(f"to_peft needs a model prepared with {__name__}.apply; this one carries "
                         f"{record.method if record else 'no adapter'!r}")
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    state = {KEY_PREFIX + n: p.detach().clone().contiguous() for n, p in trainable}
    extra = sorted({n.rsplit(".", 1)[0] for n, _ in trainable if ".adapter." not in n})
    targets = [n for n, m in model.named_modules() if isinstance(m, AdapterWrapped)]
    config = {"peft_type": PEFT_TYPE, "task_type": _task_type(model),
              "base_model_name_or_path": getattr(getattr(model, "config", None), "name_or_path", "") or "",
              "inference_mode": True, "target_modules": targets, "modules_to_save": extra or None,
              **asdict(record.config)}
    return config, state


def from_peft(model: nn.Module, config_dict: dict, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """Insert adapters as `config_dict` describes and load the saved tensors (strict on shapes)."""
    if config_dict.get("peft_type") != PEFT_TYPE:
        raise ValueError(f"peft_type {config_dict.get('peft_type')!r} is not {PEFT_TYPE!r}: "
                         "this file was not written by adapters.to_peft")
    config = AdapterConfig(**{f.name: config_dict[f.name] for f in fields(AdapterConfig) if f.name in config_dict})
    apply(model, config)
    params = dict(model.named_parameters())
    expected = {n for n, p in params.items() if p.requires_grad}
    missing = sorted(expected - _load_tensors(params, state_dict))
    if missing:
        raise ValueError(f"the adapter file lacks {len(missing)} tensors this model trains, e.g. {missing[0]!r}")
    return model


def _load_tensors(params: dict[str, nn.Parameter], state_dict: dict[str, torch.Tensor]) -> set[str]:
    """Copy each saved tensor into its parameter (and make it trainable); return the names loaded."""
    loaded = set()
    for key, tensor in state_dict.items():
        name = key[len(KEY_PREFIX):] if key.startswith(KEY_PREFIX) else key
        if name not in params:
            raise ValueError(f"adapter tensor {key!r} has no parameter {name!r} in this model: "
                             "the adapter was made for another base model")
        if tuple(params[name].shape) != tuple(tensor.shape):
            raise ValueError(f"the adapter was made for another base model: {name!r} has shape "
                             f"{tuple(tensor.shape)} in the file but {tuple(params[name].shape)} in this model")
        with torch.no_grad():
            params[name].copy_(tensor.to(params[name].dtype))
        params[name].requires_grad_(True)
        loaded.add(name)
    return loaded


def prepare_for_finetune(model: nn.Module, task, options: dict | None = None) -> nn.Module:
    """What `labs finetune --method adapter` runs: Houlsby placement, m = 64, norms trained.

    `options` are command-line overrides of AdapterConfig fields, e.g. {"bottleneck": 16}.
    The task does not change the choice (a classification head is unfrozen by labs.methods).
    """
    options = _parse_options(options or {})
    return apply(model, AdapterConfig(**options))


def _parse_options(options: dict) -> dict:
    """Check option names against AdapterConfig and turn command-line strings into ints and bools."""
    types = {f.name: f.type for f in fields(AdapterConfig)}
    unknown = sorted(set(options) - set(types))
    if unknown:
        raise ValueError(f"unknown adapter option(s) {', '.join(unknown)}; accepted: {', '.join(types)}")
    parsed = {}
    for name, value in options.items():
        if types[name] == "bool" and isinstance(value, str):
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(f"adapter option {name}={value!r} is not valid; use true or false")
            value = value.lower() in ("true", "1", "yes")
        elif types[name] == "int" and isinstance(value, str):
            if not value.strip().isdigit():
                raise ValueError(f"adapter option {name}={value!r} is not valid; use a whole number")
            value = int(value)
        parsed[name] = value
    return parsed
