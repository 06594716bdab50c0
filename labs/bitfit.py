# GENERATED from solutions/bitfit.py by tools/make_stubs.py: the reference lives there.
# Your exercises: replace each `raise NotImplementedError(...)` below with your code.
"""BitFit: fine-tune only the bias terms (Ben Zaken, Goldberg & Ravfogel, 2021).

Every linear layer computes y = W x + b. BitFit freezes every weight matrix W and trains only
the bias vectors b: on BERT-base that is about 0.09% of the parameters (0.08% on BERT-large, the
model of the paper's main GLUE comparison), and the paper reports GLUE scores close to full
fine-tuning. An even smaller subset -- the query bias of attention and the bias of the first MLP
layer ("intermediate" in BERT), about 0.04% of the model -- already recovers most of the gain.

Models in the Llama family (SmolLM2 included) have no bias terms at all, so BitFit has nothing to
train there. The closest analog trains the only other per-channel vectors these models have: the
gains of their normalisation layers (RMSNorm / LayerNorm weights), `BitFitConfig(norms=True)`.

    cfg = BitFitConfig(subset="all")
    model = apply(model, cfg)               # only biases have requires_grad=True
    count_parameters(model)                 # trainable / total / percent
    bias_change(before, after)              # after training: how far each bias moved
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from labs.options import config_from_options
from labs.peft_format import plain_from_peft, plain_to_peft
from labs.surgery import ParamCount, freeze, mark_adapted, norm_parameter_names, unfreeze

NOTEBOOK = "notebooks/03_bitfit.ipynb"

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
    Any other subset -> ValueError: the message must contain the bad subset name.
    """
    raise NotImplementedError("Exercise 3.1: bias_parameter_names - see notebooks/03_bitfit.ipynb")


def bias_change(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> dict[str, float]:
    """How far each trained tensor moved: {name: mean |after - before|}, in the order of `after`.

    The mean absolute change (1/n) * ||after - before||_1 makes vectors of different lengths
    comparable (a query bias has D numbers, an MLP bias 4 D). A name of `after` that `before`
    lacks, or a tensor whose shape differs -> ValueError: the message must contain that name.
    """
    raise NotImplementedError("Exercise 3.2: bias_change - see notebooks/03_bitfit.ipynb")


def apply(model: nn.Module, config: BitFitConfig) -> nn.Module:
    """Freeze the model, then make only the selected biases (and norms, if asked) trainable.

    Raise no_bias_error(model, config.subset) when nothing would train. A refused call (no
    biases, or a model that already carries an adapter) must leave the model unchanged. The tests
    match the messages: with no biases the message must contain 'bias' (no_bias_error's does), for
    a second adapter it must contain 'already' (mark_adapted's does).
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
def to_peft(model: nn.Module) -> tuple[dict, dict[str, torch.Tensor]]:
    """(adapter_config.json dict, tensors): BitFitConfig's fields, every trained tensor (and the head)."""
    return plain_to_peft(model, __name__)


def from_peft(model: nn.Module, config_dict: dict, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """Apply BitFit as `config_dict` describes and load the saved tensors (strict on shapes)."""
    return plain_from_peft(model, config_dict, state_dict, __name__, BitFitConfig, apply)


def prepare_for_finetune(model: nn.Module, task, options: dict | None = None) -> nn.Module:
    """What `labs finetune --method bitfit` runs: all biases, falling back to norms on bias-free models.

    `options` are command-line overrides of BitFitConfig fields, e.g. {"subset": "query_mlp"}.
    The task does not change the choice (a classification head is unfrozen by labs.methods).
    """
    return apply(model, config_from_options(BitFitConfig, options, norm_fallback=True))
