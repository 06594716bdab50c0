"""NF4: 4-bit NormalFloat quantization from scratch (Dettmers et al. 2023, "QLoRA"), all of it in one file.

Pretrained weights look normally distributed around zero. NF4 spends its 16 levels where such
numbers are dense: the levels are quantiles of N(0, 1), scaled to [-1, 1]. A weight tensor is cut
into blocks of 64; each block is divided by its largest magnitude (absmax), every scaled value is
replaced by the index (0..15) of its nearest level, and two 4-bit indices share one byte. To read
the weight back, look each index up and multiply by its block's absmax.

The 4 bits are not all: one fp32 absmax per 64 weights adds 32/64 = 0.5 bit. Double quantization
stores those absmax values in 8 bits (blocks of 256, their mean subtracted first), adding only
8/64 + 32/(64 * 256) bit. The byte layout is bitsandbytes' own (`quantize_4bit(..., quant_type="nf4")`):
the tests compare our bytes with theirs.

Exercises (notebook 08):
    8.1 nf4_code_book       the 16 NF4 levels from normal quantiles
    8.2 blockwise_absmax    scale blocks of 64 into [-1, 1]; a partial last block has its own absmax
    8.3 nearest_code        the index of the nearest level for every scaled value
    8.4 pack_nibbles        two 4-bit codes per byte, the FIRST in the HIGH nibble
    8.5 unpack_nibbles      and back
    8.6 dequantize_blocks   look the codes up, multiply by their block's absmax
    8.7 double_quantize     the absmax values in 8 bits, blocks of 256, mean as offset
    8.8 bits_per_parameter  what the storage costs per weight: 4.5 bits, or 4.127 with double quantization
Given (they call your exercises): `quantize_nf4` / `dequantize_nf4` on whole tensors, `NF4Tensor`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

NOTEBOOK = "notebooks/08_qlora.ipynb"

NF4_OFFSET = 0.9677083   # the outermost quantile bitsandbytes uses: the largest level sits at N^-1(0.9677)
BLOCK_SIZE = 64          # weights per absmax block (QLoRA's choice)
DQ_BLOCK_SIZE = 256      # absmax values per block of the second quantization

# bitsandbytes' FP4 levels (1 sign, 2 exponent, 1 mantissa bit), sorted: the 4-bit float NF4 is compared with.
FP4_LEVELS = (-1.0, -0.6667, -0.5, -0.3333, -0.25, -0.1667, -0.0052, 0.0,
              0.0, 0.0052, 0.1667, 0.25, 0.3333, 0.5, 0.6667, 1.0)


def _check_block_size(block_size, what: str = "block_size") -> None:
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size <= 0 or block_size % 2:
        raise ValueError(f"{what}={block_size!r} is not valid; use a positive even integer such as 64, so "
                         "that 2 divides it and every byte holds two codes of the same block")


def nf4_code_book(offset: float = NF4_OFFSET) -> torch.Tensor:
    """The 16 NF4 levels, sorted, float32, from -1.0 to 1.0 with an exact 0.0 (index 7).

    8 positive levels: the normal quantiles N^-1(p) at p = linspace(offset, 0.5, 9)[:-1] (float32);
    7 negative ones: -N^-1(p) at p = linspace(offset, 0.5, 8)[:-1]; and 0. Compute the quantiles in
    float64 with torch.special.ndtri, convert to float32, sort, divide by the largest value.
    (8 positive and 7 negative: 0 must be exact, so one side gets the extra level.)
    An offset outside (0.5, 1) raises ValueError (given code); its message must contain 'offset'.
    """
    if not 0.5 < offset < 1.0:
        raise ValueError(f"offset={offset!r} is not valid; it is a probability in (0.5, 1), e.g. {NF4_OFFSET}")
    # BEGIN SOLUTION 8.1
    positive = torch.special.ndtri(torch.linspace(offset, 0.5, 9)[:-1].double())    # (8,)
    negative = -torch.special.ndtri(torch.linspace(offset, 0.5, 8)[:-1].double())   # (7,)
    levels = torch.cat([negative, torch.zeros(1, dtype=torch.float64), positive]).float()
    levels = levels.sort().values                                                 # (16,)
    return levels / levels.max()
    # END SOLUTION


def blockwise_absmax(x: torch.Tensor, block_size: int = BLOCK_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """(scaled, absmax): x flattened to (N,) float32 and divided, block by block, by its block's absmax.

    Blocks are consecutive runs of `block_size` elements of x.flatten(); the last block may be
    shorter and gets its own absmax. absmax has ceil(N / block_size) float32 values. An all-zero
    block must not divide by zero: its values stay 0 (bitsandbytes clamps absmax at 1e-38 when dividing).
    A block_size that is not a positive even integer raises ValueError (given code); its message must
    contain the name and value, e.g. 'block_size=63'.
    """
    _check_block_size(block_size)
    # BEGIN SOLUTION 8.2
    flat = x.detach().reshape(-1).float()                                     # (N,)
    n_blocks = math.ceil(flat.numel() / block_size)
    padded = torch.nn.functional.pad(flat, (0, n_blocks * block_size - flat.numel()))  # zeros never win absmax
    absmax = padded.view(n_blocks, block_size).abs().amax(dim=1)              # (n_blocks,)
    scaled = padded.view(n_blocks, block_size) * (1.0 / absmax.clamp(min=1e-38))[:, None]
    return scaled.reshape(-1)[:flat.numel()].clamp(-1, 1), absmax
    # END SOLUTION


def nearest_code(scaled: torch.Tensor, code_book: torch.Tensor) -> torch.Tensor:
    """uint8 index of the nearest level of the sorted `code_book` for every value of `scaled`.

    A value exactly halfway between two levels takes the lower index (as bitsandbytes does).
    Hint: torch.bucketize against the midpoints between neighbouring levels.
    """
    if code_book.numel() > 256:
        raise ValueError(f"a code book of {code_book.numel()} levels does not fit uint8 codes; use at most 256")
    # BEGIN SOLUTION 8.3
    midpoints = (code_book[:-1] + code_book[1:]) / 2          # (levels - 1,)
    return torch.bucketize(scaled, midpoints).to(torch.uint8)
    # END SOLUTION


def pack_nibbles(codes: torch.Tensor, pad: int = 0) -> torch.Tensor:
    """(ceil(N / 2),) uint8: codes[0] in the HIGH 4 bits of byte 0, codes[1] in its low 4 bits, ...

    An odd count gets one `pad` code appended (quantize_nf4 pads with NF4's zero, as bitsandbytes
    does). A code outside 0..15 raises ValueError; the message must contain that code (e.g. 16).
    """
    # BEGIN SOLUTION 8.4
    codes = codes.reshape(-1).to(torch.int64)
    bad = codes[(codes < 0) | (codes > 15)]
    if bad.numel():
        raise ValueError(f"code {int(bad[0])} does not fit 4 bits; codes must lie in 0..15")
    if codes.numel() % 2:
        codes = torch.cat([codes, codes.new_full((1,), pad)])
    return ((codes[0::2] << 4) | codes[1::2]).to(torch.uint8)
    # END SOLUTION


def unpack_nibbles(packed: torch.Tensor, n: int) -> torch.Tensor:
    """The first `n` uint8 codes held by `packed`, high nibble first (the inverse of pack_nibbles).

    `n` must be 2 * len(packed) or one less; otherwise raise ValueError, and the message must contain
    'n=' and the value, e.g. 'n=5'.
    """
    # BEGIN SOLUTION 8.5
    packed = packed.reshape(-1)
    if n not in (2 * packed.numel(), 2 * packed.numel() - 1):
        raise ValueError(f"n={n} codes cannot come from {packed.numel()} bytes; they hold "
                         f"{2 * packed.numel()} or {2 * packed.numel() - 1}")
    codes = torch.stack([packed >> 4, packed & 0x0F], dim=1)  # (bytes, 2): high nibble first
    return codes.reshape(-1)[:n]
    # END SOLUTION


def dequantize_blocks(codes: torch.Tensor, absmax: torch.Tensor, code_book: torch.Tensor,
                      block_size: int = BLOCK_SIZE) -> torch.Tensor:
    """(N,) float32: code_book[codes], each block of `block_size` multiplied by its absmax.

    absmax must hold ceil(N / block_size) values; otherwise raise ValueError, and the message must
    contain 'absmax has <count> values', e.g. 'absmax has 3 values'.
    """
    _check_block_size(block_size)
    # BEGIN SOLUTION 8.6
    codes = codes.reshape(-1)
    n_blocks = math.ceil(codes.numel() / block_size)
    if absmax.numel() != n_blocks:
        raise ValueError(f"absmax has {absmax.numel()} values, but {codes.numel()} codes in blocks of "
                         f"{block_size} need {n_blocks}")
    values = code_book.float().index_select(0, codes.int())        # (N,): faster than code_book[codes.long()]
    pad = n_blocks * block_size - codes.numel()                       # the partial last block, if any
    if pad:
        values = torch.nn.functional.pad(values, (0, pad))
    values = values.view(n_blocks, block_size) * absmax.float()[:, None]   # (blocks, block_size)
    return values.view(-1)[:codes.numel()]
    # END SOLUTION


def dynamic_code_book() -> torch.Tensor:
    """bitsandbytes' signed 8-bit "dynamic" code book (256 sorted levels in [-1, 1]), used for the absmax values.

    Its levels are dense near zero and sparse near +-1, like a float: 7 decades of magnitudes,
    each with twice the levels of the one below (Dettmers 2015, "8-bit approximations").
    """
    levels = [0.0, 1.0]
    for i in range(7):
        bounds = torch.linspace(0.1, 1, 2 ** i + 1, dtype=torch.float32)
        means = (bounds[:-1] + bounds[1:]) / 2.0
        levels += ((10 ** (i - 6)) * means).tolist() + (-(10 ** (i - 6)) * means).tolist()
    return torch.tensor(sorted(levels), dtype=torch.float32)


def double_quantize(absmax: torch.Tensor, block_size: int = DQ_BLOCK_SIZE
                    ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(codes, absmax2, offset): the fp32 absmax values stored in 8 bits.

    offset = absmax.mean(); absmax - offset is quantized blockwise (blocks of `block_size`, with
    blockwise_absmax) to the nearest level of dynamic_code_book(): uint8 codes, one per absmax,
    and one fp32 absmax2 per block. All absmax values are positive, so subtracting their mean
    centres them on zero and uses both halves of the signed code book.
    """
    # BEGIN SOLUTION 8.7
    offset = absmax.float().mean()
    scaled, absmax2 = blockwise_absmax(absmax.float() - offset, block_size)
    return nearest_code(scaled, dynamic_code_book()), absmax2, float(offset)
    # END SOLUTION


def bits_per_parameter(block_size: int = BLOCK_SIZE, double_quant: bool = False,
                       dq_block_size: int = DQ_BLOCK_SIZE) -> float:
    """Storage bits per weight: 4 for the code, plus the block constants spread over their weights.

    Without double quantization: one fp32 absmax per block. With it: one 8-bit code per block, and one
    fp32 absmax2 per dq_block_size blocks (the offset, one number per tensor, is left out).
    A bad block size raises ValueError (given code); its message must contain the name and value,
    e.g. 'dq_block_size=0'.
    """
    _check_block_size(block_size)
    _check_block_size(dq_block_size, "dq_block_size")
    # BEGIN SOLUTION 8.8
    if not double_quant:
        return 4 + 32 / block_size
    return 4 + 8 / block_size + 32 / (block_size * dq_block_size)
    # END SOLUTION


# ---------------------------------------------------------------------------------------------
# Whole tensors (given): they call the exercises above
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NF4Tensor:
    """A weight in NF4: packed codes plus what it takes to read them back."""
    packed: torch.Tensor           # (ceil(N / 2),) uint8, two codes per byte, first in the high nibble
    absmax: torch.Tensor           # (blocks,) float32, or uint8 codes when double-quantized
    shape: tuple[int, ...]         # the original shape, e.g. (out, in)
    block_size: int = BLOCK_SIZE   # weights per absmax block
    absmax2: torch.Tensor | None = None  # double quantization: (ceil(blocks / 256),) float32, else None
    offset: float = 0.0            # double quantization: the mean subtracted from absmax

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def storage_bytes(self) -> int:
        """Bytes held: packed codes, block constants, and the offset (fp32) when double-quantized."""
        second = 0 if self.absmax2 is None else self.absmax2.numel() * 4 + 4
        return self.packed.numel() + self.absmax.numel() * self.absmax.element_size() + second


def quantize_nf4(x: torch.Tensor, block_size: int = BLOCK_SIZE, double_quant: bool = True) -> NF4Tensor:
    """x in NF4 (8.2, 8.3, 8.4), with its absmax double-quantized (8.7) unless asked not to."""
    if not x.is_floating_point():
        raise TypeError(f"only floating-point tensors can be quantized, not {x.dtype}")
    scaled, absmax = blockwise_absmax(x, block_size)
    book = nf4_code_book()
    zero = int(nearest_code(torch.zeros(1), book))  # the pad of an odd count: NF4's exact 0.0
    packed = pack_nibbles(nearest_code(scaled, book), pad=zero)
    if not double_quant:
        return NF4Tensor(packed, absmax, tuple(x.shape), block_size)
    codes, absmax2, offset = double_quantize(absmax)
    return NF4Tensor(packed, codes, tuple(x.shape), block_size, absmax2, offset)


def block_constants(t: NF4Tensor) -> torch.Tensor:
    """The fp32 absmax per block, read back from 8 bits where it was double-quantized (8.6)."""
    if t.absmax2 is None:
        return t.absmax
    return dequantize_blocks(t.absmax, t.absmax2, dynamic_code_book(), DQ_BLOCK_SIZE) + t.offset


def dequantize_nf4(t: NF4Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The weight back in `dtype`, shape t.shape (8.5, 8.6)."""
    codes = unpack_nibbles(t.packed, t.numel)
    return dequantize_blocks(codes, block_constants(t), nf4_code_book(), t.block_size).view(t.shape).to(dtype)


def round_trip(x: torch.Tensor, levels: torch.Tensor, block_size: int = BLOCK_SIZE) -> torch.Tensor:
    """x quantized to the sorted `levels` with blockwise absmax and read back (no packing): any code book."""
    scaled, absmax = blockwise_absmax(x, block_size)
    return dequantize_blocks(nearest_code(scaled, levels), absmax, levels, block_size).view(x.shape)


def code_books() -> dict[str, torch.Tensor]:
    """The code books notebook 08 compares: 4-bit float, NormalFloat, and symmetric 8-bit integers."""
    return {"fp4": torch.tensor(sorted(set(FP4_LEVELS))), "nf4": nf4_code_book(),
            "int8": torch.arange(-127, 128, dtype=torch.float32) / 127}
