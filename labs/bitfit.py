# GENERATED from solutions/bitfit.py by tools/make_stubs.py: the reference lives there.
# Your exercises: replace each `raise NotImplementedError(...)` below with your code.
"""BitFit: fine-tune only the bias terms (Ben Zaken, Goldberg & Ravfogel, 2021).

Every linear layer computes y = W x + b. BitFit freezes every weight matrix W and trains only
the bias vectors b: on BERT-base that is about 0.08% of the parameters, and the paper reports
GLUE scores close to full fine-tuning. An even smaller subset -- the query bias of attention and
the bias of the first MLP layer ("intermediate" in BERT) -- already recovers most of the gain.

Models in the Llama family (SmolLM2 included) have no bias terms at all, so BitFit has nothing to
train there. The closest analog trains the only other per-channel vectors these models have: the
gains of their normalisation layers (RMSNorm / LayerNorm weights), `BitFitConfig(norms=True)`.

    cfg = BitFitConfig(subset="all")
    model = apply(model, cfg)               # only biases have requires_grad=True
    count_parameters(model)                 # trainable / total / percent
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

from labs.surgery import ParamCount, freeze, mark_adapted, unfreeze

NOTEBOOK = "notebooks/03_bitfit.ipynb"
METHOD = "bitfit"
PEFT_TYPE = "LABS_BITFIT"   # peft has no BitFit: same two-file layout, our own type name
KEY_PREFIX = "base_model.model."  # peft's prefix for every tensor key in adapter_model.safetensors

SUBSETS = ("all", "query_mlp")
# The paper's small subset: the query bias and the first MLP layer's bias, per architecture.
QUERY_MLP_SUFFIXES = (
    "attention.self.query.bias", "intermediate.dense.bias",   # BERT
    "self_attn.q_proj.bias", "mlp.up_proj.bias",              # Llama-style models that keep biases (e.g. Qwen2 q_proj)
    "mlp.c_fc.bias",                                          # GPT-2 (its query bias is fused into c_attn)
)


@dataclass(frozen=True)
class BitFitConfig:
    subset: str = "all"          # which biases train: "all" or "query_mlp" (the paper's query + MLP-in subset)
    norms: bool = False          # also train the normalisation weights (LayerNorm / RMSNorm gains):
                                 # on a bias-free model this alone is the norm-only analog
    norm_fallback: bool = False  # on a model with no bias terms, train the norm weights instead of raising

    def __post_init__(self):
        if self.subset not in SUBSETS:
            raise ValueError(f"subset {self.subset!r} is not valid; use one of {', '.join(SUBSETS)}")
        for name in ("norms", "norm_fallback"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")


def is_norm(module: nn.Module) -> bool:
    """LayerNorm, RMSNorm and the models' own norm classes (LlamaRMSNorm, T5LayerNorm, ...)."""
    return isinstance(module, (nn.LayerNorm, nn.RMSNorm)) or type(module).__name__.endswith("Norm")


def no_bias_error(model: nn.Module, subset: str) -> ValueError:
    """The error for a model that has nothing BitFit could train."""
    return ValueError(
        f"{type(model).__name__} has no bias terms in subset {subset!r}, so BitFit has nothing to train "
        "(Llama-family models such as SmolLM2 drop every bias). Train the normalisation weights "
        "instead, the norm-only analog: BitFitConfig(norms=True), or BitFitConfig(norm_fallback=True) "
        "to fall back to them only when there are no biases.")


# ---------------------------------------------------------------------------------------------
# Exercises
# ---------------------------------------------------------------------------------------------
def bias_parameter_names(model: nn.Module, subset: str = "all") -> list[str]:
    """Names of the bias parameters BitFit trains, in model order.

    subset "all": every parameter whose own name is `bias` (linear layers and LayerNorm shifts).
    subset "query_mlp": only those ending with one of QUERY_MLP_SUFFIXES.
    """
    raise NotImplementedError("Exercise 3.1: bias_parameter_names - see notebooks/03_bitfit.ipynb")


def norm_parameter_names(model: nn.Module) -> list[str]:
    """Names of every parameter that belongs directly to a normalisation layer (see is_norm)."""
    raise NotImplementedError("Exercise 3.2: norm_parameter_names - see notebooks/03_bitfit.ipynb")


def apply(model: nn.Module, config: BitFitConfig) -> nn.Module:
    """Freeze the model, then make only the selected biases (and norms, if asked) trainable.

    Raise no_bias_error(model, config.subset) when nothing would train. A refused call (no
    biases, or a model that already carries an adapter) must leave the model unchanged.
    """
    raise NotImplementedError("Exercise 3.3: apply - see notebooks/03_bitfit.ipynb")


def count_without(model: nn.Module, exclude: tuple[str, ...] = ("classifier",)) -> ParamCount:
    """Trainable and total counts over the parameters whose names start with none of `exclude`.

    A classification model's new head (`classifier.*`) trains in every method; leaving it out
    shows the share BitFit itself adds, the figure the paper reports.
    """
    raise NotImplementedError("Exercise 3.4: count_without - see notebooks/03_bitfit.ipynb")


# ---------------------------------------------------------------------------------------------
# The technique-module protocol: PEFT two-file format and the command line
# ---------------------------------------------------------------------------------------------
def _task_type(model: nn.Module) -> str:
    name = type(model).__name__
    if name.endswith("ForSequenceClassification"):
        return "SEQ_CLS"
    return "CAUSAL_LM" if name.endswith("ForCausalLM") else "FEATURE_EXTRACTION"


def to_peft(model: nn.Module) -> tuple[dict, dict[str, torch.Tensor]]:
    """(adapter_config.json dict, tensors): every trainable tensor under peft's key names.

    Besides the biases this stores whatever else trains (a classification head unfrozen for the
    task), listed in `modules_to_save` as peft does, so a reload gives the same logits.
    """
    record = getattr(model, "labs_adapter", None)
    if record is None or record.method != METHOD:
        raise ValueError(f"to_peft needs a model prepared with {__name__}.apply; this one carries "
                         f"{record.method if record else 'no adapter'!r}")
    ours = set(bias_parameter_names(model, record.config.subset)) | set(norm_parameter_names(model))
    state = {KEY_PREFIX + n: p.detach().clone().contiguous()
             for n, p in model.named_parameters() if p.requires_grad}
    extra = sorted({n.rsplit(".", 1)[0] for n, p in model.named_parameters() if p.requires_grad and n not in ours})
    config = {"peft_type": PEFT_TYPE, "task_type": _task_type(model),
              "base_model_name_or_path": getattr(getattr(model, "config", None), "name_or_path", "") or "",
              "inference_mode": True, "modules_to_save": extra or None, **asdict(record.config)}
    return config, state


def from_peft(model: nn.Module, config_dict: dict, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """Apply BitFit as `config_dict` describes and load the saved tensors (strict on shapes)."""
    if config_dict.get("peft_type") != PEFT_TYPE:
        raise ValueError(f"peft_type {config_dict.get('peft_type')!r} is not {PEFT_TYPE!r}: "
                         "this file was not written by bitfit.to_peft")
    config = BitFitConfig(**{f.name: config_dict[f.name] for f in fields(BitFitConfig) if f.name in config_dict})
    apply(model, config)
    params = dict(model.named_parameters())
    expected = {n for n, p in params.items() if p.requires_grad}
    loaded = _load_tensors(params, state_dict)
    missing = sorted(expected - loaded)
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
    """What `labs finetune --method bitfit` runs: all biases, falling back to norms on bias-free models.

    `options` are command-line overrides of BitFitConfig fields, e.g. {"subset": "query_mlp"}.
    The task does not change the choice (a classification head is unfrozen by labs.methods).
    """
    options = _parse_options(options or {})
    return apply(model, BitFitConfig(**{"norm_fallback": True, **options}))


def _parse_options(options: dict) -> dict:
    """Check option names against BitFitConfig and turn command-line strings into ints and bools."""
    types = {f.name: f.type for f in fields(BitFitConfig)}
    unknown = sorted(set(options) - set(types))
    if unknown:
        raise ValueError(f"unknown bitfit option(s) {', '.join(unknown)}; accepted: {', '.join(types)}")
    parsed = {}
    for name, value in options.items():
        if types[name] == "bool" and isinstance(value, str):
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(f"bitfit option {name}={value!r} is not valid; use true or false")
            value = value.lower() in ("true", "1", "yes")
        elif types[name] == "int" and isinstance(value, str):
            if not value.strip().isdigit():
                raise ValueError(f"bitfit option {name}={value!r} is not valid; use a whole number")
            value = int(value)
        parsed[name] = value
    return parsed
