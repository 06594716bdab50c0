# GENERATED from solutions/lora_variants.py by tools/make_stubs.py: the reference lives there.
# Your exercises: replace each `raise NotImplementedError(...)` below with your code.
"""LoRA, deeper: four changes to LoRA that practitioners meet next, built on your labs/lora.py.

LoRA computes h = W x + s * B A x with s = alpha / r, B = 0 at the start and one learning rate.
Each variant changes exactly one of those choices:

    rsLoRA  (Kalajdzievski 2023)  the scale: s = alpha / sqrt(r), so large ranks still learn
    LoRA+   (Hayou et al. 2024)   the learning rates: B learns `ratio` times faster than A
    PiSSA   (Meng et al. 2024)    the start: A, B = the top-r singular directions of W, and the
                                  frozen weight becomes the residual W - s * B A
    DoRA    (Liu et al. 2024)     the update: a trained length per output row (magnitude m)
                                  times the direction of W + s * B A

Read top to bottom: rsLoRA's scale, LoRA+'s two parameter groups, PiSSA's SVD start and
residual (and why a PiSSA adapter is shared as a plain LoRA adapter of rank 2r), DoRA's layer,
and `apply`, which `lora.apply` hands a config to when it asks for DoRA, PiSSA or LoRA+.
The files these variants save are peft's: `use_dora`, `init_lora_weights="pissa"` and the
tensor `lora_magnitude_vector` mean here what they mean there.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from labs.peft_format import KEY_PREFIX, write_adapter
from labs.surgery import AdapterRecord, get_submodule_parent, linear_weight, unfreeze

from . import lora

NOTEBOOK = "notebooks/15_lora_deeper.ipynb"
PISSA = re.compile(r"^pissa(_niter_(?P<niter>[1-9][0-9]*))?$")  # "pissa" or "pissa_niter_4", as in peft


# ---------------------------------------------------------------------------------------------
# rsLoRA: the scale
# ---------------------------------------------------------------------------------------------
def rslora_scaling(alpha: float, r: int) -> float:
    """alpha / sqrt(r): the rank-stabilised scale.

    Why not alpha / r: after training, B A of rank r behaves like a sum of r random-ish
    rank-one terms, whose size grows like sqrt(r), not like r. Dividing by r therefore shrinks
    the update as r grows (at r = 256 it is 16 times smaller than at r = 1 for the same alpha),
    and large ranks learn slowly. Dividing by sqrt(r) keeps the update's size independent of r.
    """
    raise NotImplementedError("Exercise 15.1: rslora_scaling - see notebooks/15_lora_deeper.ipynb")


# ---------------------------------------------------------------------------------------------
# LoRA+: two learning rates
# ---------------------------------------------------------------------------------------------
def loraplus_param_groups(model: nn.Module, lr: float, ratio: float) -> list[dict]:
    """Two optimizer parameter groups: [{"params": [...], "lr": lr}, {"params": [...], "lr": lr * ratio}].

    The second ("fast") group holds every trainable lora_B factor and every trainable 1-D
    tensor (DoRA's magnitudes, as peft's create_loraplus_optimizer does); the first holds every
    other trainable parameter (the lora_A factors, a task head). Frozen parameters are in neither.
    Why: B starts at zero and its gradient is A x times the error, while A's is B^T times the
    error; with one learning rate the two move at badly matched speeds in wide layers.
    """
    raise NotImplementedError("Exercise 15.2: loraplus_param_groups - see notebooks/15_lora_deeper.ipynb")


def mark_loraplus(model: nn.Module, ratio: float) -> int:
    """Tag each trainable parameter with the learning-rate multiplier of its LoRA+ group.

    labs.train builds one optimizer group per multiplier (`lr_scale`), so `labs finetune` trains
    LoRA+ with its usual schedule. Returns how many parameters learn `ratio` times faster.
    """
    slow, fast = loraplus_param_groups(model, 1.0, ratio)
    for group in (slow, fast):
        for p in group["params"]:
            p.lr_scale = group["lr"]
    return len(fast["params"])


# ---------------------------------------------------------------------------------------------
# PiSSA: start from the principal singular directions
# ---------------------------------------------------------------------------------------------
def principal_factors(weight: torch.Tensor, r: int, scaling: float,
                      niter: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(A (r, in), B (out, r)) with scaling * B @ A = the best rank-r approximation of `weight` (out, in).

    W = U S V^T (singular values S in decreasing order). Keep the top r: U_r (out, r), S_r (r,),
    V_r^T (r, in). Split S_r / scaling evenly between the two factors:
        A = diag(sqrt(S_r / scaling)) @ V_r^T,   B = U_r @ diag(sqrt(S_r / scaling)),
    so that scaling * B @ A = U_r diag(S_r) V_r^T. The SVD runs in float32 whatever `weight`'s dtype.
    niter=None: the exact SVD (torch.linalg.svd, full_matrices=False); niter=k: torch.svd_lowrank
    with k subspace iterations (fast and approximate for large layers; it returns V, not V^T).
    """
    raise NotImplementedError("Exercise 15.3: principal_factors - see notebooks/15_lora_deeper.ipynb")


@torch.no_grad()
def pissa_init(layer: lora.LoRALinear, niter: int | None = None) -> None:
    """Start `layer`'s factors from principal_factors of its base weight and freeze the residual.

    Copy A and B into layer.lora_A / layer.lora_B (in their dtype), then replace the base
    weight, in place and in its own dtype, by W_res = W - scaling * B @ A (labs.surgery.linear_weight
    gives the (out, in) view for nn.Linear and Conv1D alike). The layer's output is unchanged, but
    training now moves the principal part of W while the small residual stays frozen.
    """
    raise NotImplementedError("Exercise 15.4: pissa_init - see notebooks/15_lora_deeper.ipynb")


def pissa_niter(init: str) -> int | None:
    """"pissa" -> None (exact SVD); "pissa_niter_4" -> 4; anything else is an error."""
    found = PISSA.match(init)
    if found is None:
        raise ValueError(f"init={init!r} is not a PiSSA init; use 'pissa' or 'pissa_niter_K' (K >= 1)")
    return int(found["niter"]) if found["niter"] else None


def to_rank_2r(model: nn.Module) -> tuple[dict, dict[str, torch.Tensor]]:
    """A trained PiSSA adapter as a plain LoRA adapter of rank 2r for the ORIGINAL base weights.

    Why rank 2r. PiSSA changed the base: it trains on W_res = W - s B0 A0, and after training
    the model computes W_res + s B A. Anyone else holds W, not W_res, so the adapter they can use
    must carry the whole change relative to W:
        W_res + s B A - W = s B A - s B0 A0 = s [B | -B0] [A ; A0].
    That is a product of an (out, 2r) and a (2r, in) matrix: a LoRA adapter of rank 2r, which no
    rank-r adapter can equal in general (B A and B0 A0 span different subspaces). The scale must
    stay s: alpha doubles with alpha / r, and grows by sqrt(2) with rsLoRA's alpha / sqrt(r).
    peft makes the same conversion (save_pretrained's path_initial_model_for_weight_conversion).
    """
    config_dict, state = lora.to_peft(model)
    if not str(config_dict["init_lora_weights"]).startswith("pissa"):
        raise ValueError("to_rank_2r converts a PiSSA adapter; this model's LoRA was not started with init='pissa'")
    start = {}
    for name, layer in lora.lora_layers(model):
        start[f"{KEY_PREFIX}{name}.lora_A.weight"] = layer.pissa_A0                  # (r, in)
        start[f"{KEY_PREFIX}{name}.lora_B.weight"] = -layer.pissa_B0                 # (out, r)
    tensors = {key: (torch.cat([t, start[key]], dim=0 if key.endswith("lora_A.weight") else 1)
                     if key in start else t) for key, t in state.items()}
    alpha = config_dict["lora_alpha"] * (math.sqrt(2) if config_dict["use_rslora"] else 2)
    return {**config_dict, "r": 2 * config_dict["r"], "lora_alpha": alpha, "init_lora_weights": True}, tensors


def save_as_lora(model: nn.Module, path: str | os.PathLike) -> Path:
    """Save a trained PiSSA adapter as plain LoRA of rank 2r (to_rank_2r), loadable on the original base."""
    return write_adapter(path, *to_rank_2r(model))


# ---------------------------------------------------------------------------------------------
# DoRA: magnitude and direction
# ---------------------------------------------------------------------------------------------
class DoRALinear(lora.LoRALinear):
    """LoRA on the direction of each output row, with the row's length learned separately.

    Write the adapted weight row by row as  W' = m * (W + s B A) / ||W + s B A||  (one norm per
    output row, one trained magnitude m per output row, shape (out,)). m starts at ||W||, so
    W' = W at step 0. The norm is treated as a constant in the backward (detached), as the
    paper suggests (section 4.3): gradients then reach m and B A but not through the norm,
    which saves memory and changes little.
    """

    def __init__(self, base_layer: nn.Module, r: int, alpha: float, dropout: float = 0.0,
                 use_rslora: bool = False):
        super().__init__(base_layer, r, alpha, dropout, use_rslora)
        # peft's name for it: adapters move between peft and the course unchanged
        self.lora_magnitude_vector = nn.Parameter(self.weight_norm().detach())   # (out,): ||W|| per row

    def weight_norm(self) -> torch.Tensor:
        """||W + scaling * B @ A|| per output row, shape (out,), in float32 (the factors' dtype).

        Use the unmerged base weight (labs.surgery.linear_weight(self.base_layer), (out, in))
        and the L2 norm over the input dimension (torch.linalg.norm(..., dim=1)).
        """
        raise NotImplementedError("Exercise 15.5: DoRALinear.weight_norm - see notebooks/15_lora_deeper.ipynb")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """base_layer(x) while merged; else the output of the weight m * (W + s B A) / ||W + s B A||.

        Without building W': with scale = m / weight_norm().detach() (out,), and y = W x the base
        output without its bias, the layer returns base_layer(x) + (scale - 1) * y + scale * s * B A x
        (dropout on the LoRA path's input only, as in LoRALinear; computed in the factors' dtype and
        cast back to the base output's dtype).
        """
        raise NotImplementedError("Exercise 15.6: DoRALinear.forward - see notebooks/15_lora_deeper.ipynb")

    def delta_weight(self) -> torch.Tensor:
        """What merging adds to W: m * (W + s B A) / ||W + s B A|| - W, shape (out, in).

        While merged, W holds the update and no longer gives the norm back, so the value last
        computed before merging is returned: LoRALinear's unmerge then subtracts exactly what its
        merge added.
        """
        if self.merged:
            return self.unmerged_delta
        weight = linear_weight(self.base_layer).to(self.lora_A.dtype)
        adapted = weight + self.scaling * (self.lora_B @ self.lora_A)
        delta = (self.lora_magnitude_vector / self.weight_norm()).unsqueeze(1) * adapted - weight
        self.unmerged_delta = delta.detach()
        return delta


# ---------------------------------------------------------------------------------------------
# Applying a variant: LoRA first, then the variant's change
# ---------------------------------------------------------------------------------------------
def to_dora(model: nn.Module) -> list[str]:
    """Replace every LoRALinear by a DoRALinear with the same base and factors; return the names."""
    names = []
    for name, layer in lora.lora_layers(model):
        dropout = layer.dropout.p if isinstance(layer.dropout, nn.Dropout) else 0.0
        dora = DoRALinear(layer.base_layer, layer.r, layer.alpha, dropout, layer.use_rslora)
        with torch.no_grad():
            dora.lora_A.copy_(layer.lora_A)
            dora.lora_B.copy_(layer.lora_B)
            dora.lora_magnitude_vector.copy_(dora.weight_norm())  # ||W + s B A||: W' = W for any start
        parent, child = get_submodule_parent(model, name)
        setattr(parent, child, dora)
        names.append(name)
    return names


def apply(model: nn.Module, config: lora.LoRAConfig) -> nn.Module:
    """LoRA with the variants `config` asks for: your lora.apply first, then PiSSA's start,
    DoRA's layers and LoRA+'s learning-rate tags (rsLoRA is LoRAConfig.use_rslora, exercise 5.1)."""
    lora.apply(model, replace(config, use_dora=False, init="default", loraplus_ratio=1.0))
    if config.init != "default":
        niter = pissa_niter(config.init)
        for _, layer in lora.lora_layers(model):
            pissa_init(layer, niter)
            # the start, kept to share the trained adapter as plain LoRA (to_rank_2r)
            layer.register_buffer("pissa_A0", layer.lora_A.detach().clone(), persistent=False)
            layer.register_buffer("pissa_B0", layer.lora_B.detach().clone(), persistent=False)
    if config.use_dora:
        to_dora(model)
        unfreeze(model, lambda name: name.endswith("lora_magnitude_vector"))
    if config.loraplus_ratio != 1.0:
        mark_loraplus(model, config.loraplus_ratio)
    # the record says what was applied: lora.to_peft writes use_dora and init_lora_weights from it
    record = model.labs_adapter   # lora.apply resolved the default targets: keep them
    model.labs_adapter = AdapterRecord(record.method, replace(config, target_modules=record.config.target_modules),
                                       record.module)
    return model
