"""QLoRA: LoRA on a frozen base stored in 4-bit NF4 (Dettmers et al. 2023), two ways, one file.

LoRA already freezes the base; QLoRA also shrinks it. Every linear layer of the base is stored as
NF4 codes with double-quantized block constants (about 4.13 bits per weight instead of 32) and
read back to the compute dtype on the fly, one layer at a time, inside its forward. Gradients flow
through the dequantized weight to the LoRA factors beside it; the codes never change.

    scratch        NF4Linear: the codes made by your exercises in labs/quantization.py (notebook 08)
    bitsandbytes   bitsandbytes' Linear4bit (NF4, double quantization): the production path

Either way your LoRA from labs/lora.py (notebook 05) goes on top, unchanged. The adapter it
saves is a plain LoRA adapter: it loads onto the full-precision base in peft.
"""
from __future__ import annotations

import copy

from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

from labs.options import config_from_options
from labs.surgery import get_submodule_parent, is_linear, linear_dims, refuse_second_adapter, replace_modules

from . import lora, quantization

NOTEBOOK = "notebooks/08_qlora.ipynb"
BACKENDS = ("scratch", "bitsandbytes")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
HEADS = ("lm_head", "classifier", "score")  # output layers stay in full precision, as in the paper


@dataclass(frozen=True)
class QLoRAConfig(lora.LoRAConfig):
    backend: str = "scratch"          # "scratch" (NF4Linear, our code) or "bitsandbytes" (Linear4bit)
    block_size: int = 64              # weights per absmax block
    double_quant: bool = True         # store the absmax values in 8 bits too (4.127 instead of 4.5 bits)
    compute_dtype: str = "float32"    # dtype the weights are read back to: bfloat16 where the device has it

    def __post_init__(self):
        super().__post_init__()
        if self.use_dora or self.init != "default":  # both read or rewrite W, which is 4-bit codes here
            raise ValueError(f"use_dora={self.use_dora!r}, init={self.init!r}: DoRA and PiSSA are not "
                             "supported with qlora; use --method lora for them")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend={self.backend!r} is not valid; use one of {', '.join(BACKENDS)}")
        if self.compute_dtype not in DTYPES:
            raise ValueError(f"compute_dtype={self.compute_dtype!r} is not valid; use one of {', '.join(DTYPES)}")
        if self.block_size not in (32, 64, 128, 256, 512, 1024, 2048, 4096):  # what bitsandbytes accepts
            raise ValueError(f"block_size={self.block_size!r} is not valid; use a power of two from 32 to 4096, e.g. 64")


class FrozenMatMul(torch.autograd.Function):
    """x @ W^T with W read back (layer.dequantized_weight()) in the forward and again in the backward.

    Plain F.linear would keep the dequantized W for the backward: a full-precision copy of every
    layer alive at once, the very memory QLoRA saves. W is frozen, so the backward needs only
    grad @ W (nothing of x), and W can be rebuilt from the codes then.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, layer: "NF4Linear") -> torch.Tensor:
        ctx.layer = layer
        return x @ layer.dequantized_weight().T          # (B, T, in) @ (in, out) -> (B, T, out)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        # Autocast does not reach a custom backward: under bf16 autocast the forward's output, so
        # `grad`, is bf16 while W comes back in the compute dtype. Multiply in grad's dtype.
        weight = ctx.layer.dequantized_weight().to(grad.dtype)
        return grad @ weight, None                            # (B, T, out) @ (out, in) -> (B, T, in)


class NF4Linear(nn.Linear):
    """A frozen linear layer stored in NF4: packed codes plus block constants, read back per forward.

    It subclasses nn.Linear only as bitsandbytes' Linear4bit does, so that whatever looks for linear
    layers (LoRA's targets, its PEFT export) finds one; it never allocates a full weight. `weight`
    holds the packed uint8 codes, two per byte (a frozen parameter, like Linear4bit's); the block
    constants are buffers. labs.surgery.count_parameters counts it as in x out weights.
    """

    def __init__(self, linear: nn.Module, block_size: int = 64, double_quant: bool = True,
                 compute_dtype: torch.dtype = torch.float32):
        nn.Module.__init__(self)  # not nn.Linear.__init__: that would allocate an fp32 weight
        self.in_features, self.out_features = linear_dims(linear)
        w = linear.weight.detach() if isinstance(linear, nn.Linear) else linear.weight.detach().T  # (out, in)
        q = quantization.quantize_nf4(w, block_size, double_quant)
        self.weight = nn.Parameter(q.packed, requires_grad=False)   # (out * in / 2,) uint8
        self.register_buffer("absmax", q.absmax)                    # (blocks,) fp32, or uint8 codes
        self.register_buffer("absmax2", q.absmax2)                  # (blocks / 256,) fp32, or None
        self.register_buffer("offset", torch.tensor(q.offset))
        self.block_size, self.compute_dtype = block_size, compute_dtype
        bias = getattr(linear, "bias", None)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    def nf4(self) -> quantization.NF4Tensor:
        return quantization.NF4Tensor(self.weight.data, self.absmax, (self.out_features, self.in_features),
                                      self.block_size, self.absmax2, float(self.offset))

    def dequantized_weight(self) -> torch.Tensor:
        """(out, in) in the compute dtype, built afresh: nothing of it is kept after the forward."""
        return quantization.dequantize_nf4(self.nf4(), self.compute_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = FrozenMatMul.apply(x.to(self.compute_dtype), self)   # (B, T, out)
        if self.bias is not None:
            out = out + self.bias.to(self.compute_dtype)
        return out.to(x.dtype)

    def extra_repr(self) -> str:
        dq = ", double_quant" if self.absmax2 is not None else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, nf4, "
                f"block_size={self.block_size}{dq}, compute_dtype={str(self.compute_dtype).replace('torch.', '')}")


# ---------------------------------------------------------------------------------------------
# The production path: bitsandbytes
# ---------------------------------------------------------------------------------------------
def require_bitsandbytes():
    """bitsandbytes, checked to quantize 4-bit NF4 on this platform; a clear error when it cannot."""
    try:
        import bitsandbytes
        import bitsandbytes.functional as bnb_functional
    except ImportError as err:
        raise ImportError("backend='bitsandbytes' needs the bitsandbytes package (pip install 'bitsandbytes>=0.45'); "
                          "backend='scratch' needs nothing beyond torch") from err
    try:
        bnb_functional.quantize_4bit(torch.ones(64), blocksize=64, quant_type="nf4")
    except Exception as err:  # an old version or a platform without 4-bit kernels
        raise RuntimeError(f"bitsandbytes {getattr(bitsandbytes, '__version__', '?')} cannot quantize to 4-bit NF4 "
                           f"here ({type(err).__name__}: {err}); use backend='scratch'") from err
    return bitsandbytes


def bnb_linear4bit(linear: nn.Module, block_size: int = 64, double_quant: bool = True,
                   compute_dtype: torch.dtype = torch.float32) -> nn.Module:
    """bitsandbytes' Linear4bit (NF4; compress_statistics = double quantization) holding `linear`'s weight."""
    bnb = require_bitsandbytes()
    in_features, out_features = linear_dims(linear)
    w = linear.weight.detach() if isinstance(linear, nn.Linear) else linear.weight.detach().T  # (out, in)
    bias = getattr(linear, "bias", None)
    layer = bnb.nn.Linear4bit(in_features, out_features, bias=bias is not None, compute_dtype=compute_dtype,
                              compress_statistics=double_quant, quant_type="nf4", device="meta")
    layer.weight = bnb.nn.Params4bit(w.float().contiguous(), requires_grad=False, quant_type="nf4",
                                     blocksize=block_size, compress_statistics=double_quant)
    if bias is not None:
        layer.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
    return layer.to(w.device)  # moving the Params4bit is what quantizes it


def is_quantized(module: nn.Module) -> bool:
    return isinstance(module, NF4Linear) or type(module).__name__ == "Linear4bit"


def dequantized(layer: nn.Module) -> torch.Tensor:
    """The (out, in) fp32 weight a quantized layer stands for."""
    if isinstance(layer, NF4Linear):
        return quantization.dequantize_nf4(layer.nf4())
    import bitsandbytes.functional as bnb_functional
    packed, state = layer.weight.data, layer.weight.quant_state
    if getattr(state, "packing_format_for_cpu", False):
        # On a CPU with AVX512-BF16, Linear4bit's first eval forward repacks its codes in place for
        # its bf16 kernel (block scales kept in bf16 from then on). dequantize_4bit reads only the
        # original layout: undo the repacking on copies, as bitsandbytes does before saving (the
        # layer keeps its fast layout).
        packed, state = bnb_functional._convert_weight_packed_for_cpu_inverse(packed.clone(), copy.deepcopy(state))
    return bnb_functional.dequantize_4bit(packed, state).float()


# ---------------------------------------------------------------------------------------------
# Quantizing a model, and LoRA on top
# ---------------------------------------------------------------------------------------------
def quantize_model(model: nn.Module, backend: str = "scratch", block_size: int = 64, double_quant: bool = True,
                   compute_dtype: torch.dtype = torch.float32) -> list[str]:
    """Replace every linear layer but the output head by a 4-bit one; return the names replaced."""
    def wanted(name: str, module: nn.Module) -> bool:
        return is_linear(module) and not is_quantized(module) and name.rsplit(".", 1)[-1] not in HEADS

    if not any(wanted(n, m) for n, m in model.named_modules() if n):
        raise ValueError(f"{type(model).__name__} has no linear layer to quantize (nn.Linear or Conv1D, "
                         f"output heads {', '.join(HEADS)} excepted); QLoRA quantizes those")
    make = NF4Linear if backend == "scratch" else bnb_linear4bit
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not valid; use one of {', '.join(BACKENDS)}")
    return replace_modules(model, wanted, lambda name, layer: make(layer, block_size, double_quant, compute_dtype),
                           what="linear layers to quantize")


def apply(model: nn.Module, config: QLoRAConfig) -> nn.Module:
    """Quantize the base's linear layers to NF4 (config.backend), unless it came 4-bit from the
    loader, then apply LoRA on top."""
    refuse_second_adapter(model, lora.__name__)  # before the base changes
    if not any(is_quantized(m) for m in model.modules()):  # labs.nf4_loading loads a base already in 4 bits
        quantize_model(model, config.backend, config.block_size, config.double_quant, DTYPES[config.compute_dtype])
    lora_fields = {f.name for f in fields(lora.LoRAConfig)}
    return lora.apply(model, lora.LoRAConfig(**{k: v for k, v in asdict(config).items() if k in lora_fields}))


def dequantize_model(model: nn.Module) -> nn.Module:
    """Put fp32 nn.Linear layers back where 4-bit ones are (inside LoRA wrappers too)."""
    for name, layer in [(n, m) for n, m in model.named_modules() if is_quantized(m)]:
        plain = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None, device="meta")
        plain.weight = nn.Parameter(dequantized(layer), requires_grad=False)
        if layer.bias is not None:
            plain.bias = nn.Parameter(layer.bias.detach().float().clone(), requires_grad=False)
        parent, child = get_submodule_parent(model, name)
        setattr(parent, child, plain)
    return model


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Dequantize the base, then merge LoRA into it: one fp32 model with the update baked in.

    Merging into 4-bit codes is impossible (B A is not on the NF4 grid); the merged fp32 model is
    what gets served or re-quantized, and re-quantizing brings a new rounding error (notebook 08).
    """
    return lora.merge_and_unload(dequantize_model(model))


# ---------------------------------------------------------------------------------------------
# What `labs finetune --method qlora` calls
# ---------------------------------------------------------------------------------------------
def prepare_for_finetune(model: nn.Module, task, options: dict | None = None) -> nn.Module:
    """QLoRA with LoRA's defaults (r=8, alpha=16, the family's usual targets) on an NF4 base;
    `options` override QLoRAConfig fields, e.g. {"backend": "bitsandbytes", "target_modules": "all-linear"}."""
    return apply(model, config_from_options(QLoRAConfig, options))
