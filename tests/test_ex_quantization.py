"""Graded tests for notebook 08 (NF4 from scratch): exercises 8.1-8.8, checked against bitsandbytes.

bitsandbytes' own `quantize_4bit(x, blocksize=64, quant_type="nf4")` is the reference for the
bytes: the same code book, the same absmax per block, the same packed bytes, byte for byte. One
stated exception: double quantization's 8-bit codes. bitsandbytes' CPU kernel searches its
256-level code book with a binary search that can stop one level early when a value lies close to
the midpoint of two levels; we take the nearest level. So those codes may differ by one level, on a
few per cent of the values at most, and ours are never farther from the value than theirs.
"""
from __future__ import annotations

import math

import pytest
import torch

F = pytest.importorskip("bitsandbytes.functional")


def weights(*shape: int, seed: int = 0, std: float = 0.02) -> torch.Tensor:
    """Normal like pretrained weights, with a few outliers so blocks have different absmax."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g) * std
    x.view(-1)[:: 97] *= 4
    return x


def bnb_nf4(x: torch.Tensor, double_quant: bool = False):
    """bitsandbytes' packed bytes (flat) and quant state for x in NF4, blocks of 64."""
    packed, state = F.quantize_4bit(x, blocksize=64, quant_type="nf4", compress_statistics=double_quant)
    return packed.reshape(-1), state


def codes_of(q, x: torch.Tensor, block_size: int = 64) -> torch.Tensor:
    scaled, _ = q.blockwise_absmax(x, block_size)
    return q.nearest_code(scaled, q.nf4_code_book())


# ---------------------------------------------------------------------------------------------
# 8.1 the NF4 code book
# ---------------------------------------------------------------------------------------------
@pytest.mark.exercise("8.1", points=1)
def test_code_book_equals_bitsandbytes_table(impl):
    q = impl("quantization")
    book = q.nf4_code_book()
    assert isinstance(book, torch.Tensor) and book.shape == (16,), "the code book is a tensor of 16 levels"
    assert book.dtype == torch.float32, f"the levels are float32, got {book.dtype}"
    want = F.quantize_4bit(torch.ones(64), blocksize=64, quant_type="nf4")[1].code.float()
    gap = (book - want).abs()                                                  # (16,)
    i = int(gap.argmax())
    assert gap[i] <= 1e-7, (
        f"NF4 levels differ from bitsandbytes' table by up to {gap[i]:.2e} (tolerance 1e-7), at index {i}: "
        f"yours {book[i]:.9f}, bitsandbytes' {want[i]:.9f}; the probabilities are torch.linspace(...) in its "
        "default float32, only the quantiles (ndtri) are computed in float64")


@pytest.mark.exercise("8.1", points=1)
def test_code_book_is_sorted_with_exact_zero(impl):
    q = impl("quantization")
    book = q.nf4_code_book()
    assert book.shape == (16,), f"16 levels, got shape {tuple(book.shape)}"
    assert torch.all(book[1:] > book[:-1]), "levels must be sorted, strictly increasing"
    assert book[0] == -1.0 and book[-1] == 1.0, "after normalising by the max the ends are exactly -1 and 1"
    assert book[7] == 0.0, "index 7 must be an exact 0 (7 negative levels below it, 8 positive above)"
    assert (book > 0).sum() == 8 and (book < 0).sum() == 7, "8 positive levels and 7 negative ones"


@pytest.mark.exercise("8.1", points=1)
def test_code_book_follows_the_offset(impl):
    q = impl("quantization")
    wider = q.nf4_code_book(offset=0.99)
    assert wider.shape == (16,) and wider[-1] == 1.0
    assert wider[8] < q.nf4_code_book()[8], "a larger offset reaches further out, so the inner levels shrink"
    with pytest.raises(ValueError, match="offset"):
        q.nf4_code_book(offset=1.5)


# ---------------------------------------------------------------------------------------------
# 8.2 blockwise absmax
# ---------------------------------------------------------------------------------------------
@pytest.mark.exercise("8.2", points=1)
def test_absmax_per_block_equals_bitsandbytes(impl):
    q = impl("quantization")
    x = weights(24, 40)  # 960 = 15 blocks of 64
    scaled, absmax = q.blockwise_absmax(x, 64)
    _, state = bnb_nf4(x)
    assert absmax.shape == (15,), f"960 values in blocks of 64 give 15 absmax values, got {tuple(absmax.shape)}"
    assert torch.equal(absmax, state.absmax), "absmax should be each block's largest |value|, as bitsandbytes has it"
    assert scaled.shape == (960,) and scaled.dtype == torch.float32, "scaled is x flattened, float32"
    assert scaled.abs().max() == 1.0, "each block's largest magnitude scales to exactly 1"
    torch.testing.assert_close(scaled * absmax.repeat_interleave(64), x.reshape(-1), msg="scaled * absmax must give x back")


@pytest.mark.exercise("8.2", points=1)
def test_partial_last_block_has_its_own_absmax(impl):
    q = impl("quantization")
    x = weights(100, seed=1)
    x[64:] *= 0.01                      # a small last block: a shared absmax would crush it to zero
    scaled, absmax = q.blockwise_absmax(x, 64)
    assert absmax.shape == (2,), f"100 values in blocks of 64: 2 blocks, the last one partial; got {tuple(absmax.shape)}"
    assert absmax[1] == x[64:].abs().max(), "the partial last block needs its own absmax"
    assert scaled.shape == (100,) and scaled[64:].abs().max() == 1.0
    assert torch.equal(absmax, bnb_nf4(x)[1].absmax)


@pytest.mark.exercise("8.2", points=1)
def test_zero_block_and_bad_block_size(impl):
    q = impl("quantization")
    x = torch.cat([torch.zeros(32), weights(32, seed=2)])
    scaled, absmax = q.blockwise_absmax(x, 32)
    assert absmax[0] == 0 and torch.all(scaled[:32] == 0), "an all-zero block stays zero (no 0 / 0 = nan)"
    assert not torch.isnan(scaled).any()
    with pytest.raises(ValueError, match="block_size=63"):
        q.blockwise_absmax(x, 63)      # odd: two codes of one byte would straddle two blocks


# ---------------------------------------------------------------------------------------------
# 8.3 nearest level
# ---------------------------------------------------------------------------------------------
@pytest.mark.exercise("8.3", points=1)
def test_nearest_code_picks_the_closest_level(impl):
    q = impl("quantization")
    book = q.nf4_code_book()
    scaled = torch.linspace(-1, 1, 2001)
    codes = q.nearest_code(scaled, book)
    assert codes.dtype == torch.uint8 and codes.shape == (2001,), "one uint8 code per value"
    brute = (scaled[:, None] - book[None, :]).abs().min(dim=1).values  # distance to the closest level
    torch.testing.assert_close((scaled - book[codes.long()]).abs(), brute, msg="every code must name the nearest level")


@pytest.mark.exercise("8.3", points=1)
def test_ties_take_the_lower_level(impl):
    q = impl("quantization")
    book = torch.tensor([-1.0, 0.0, 0.5, 1.0])
    codes = q.nearest_code(torch.tensor([-0.5, 0.25, 0.75, -1.0, 1.0]), book)
    assert codes.tolist() == [0, 1, 2, 0, 3], f"halfway values take the lower index, as bitsandbytes does; got {codes.tolist()}"


# ---------------------------------------------------------------------------------------------
# 8.4 packing two codes per byte
# ---------------------------------------------------------------------------------------------
@pytest.mark.exercise("8.4", points=1)
def test_first_code_goes_to_the_high_nibble(impl):
    q = impl("quantization")
    packed = q.pack_nibbles(torch.tensor([1, 2, 10, 11], dtype=torch.uint8))
    assert packed.dtype == torch.uint8, f"packed bytes are uint8, got {packed.dtype}"
    assert packed.tolist() == [0x12, 0xAB], f"codes 1, 2, 10, 11 pack to 0x12, 0xAB; got {[hex(b) for b in packed.tolist()]}"
    assert q.pack_nibbles(torch.tensor([15, 0, 3], dtype=torch.uint8), pad=7).tolist() == [0xF0, 0x37], \
        "an odd count gets the pad code in the last low nibble"


@pytest.mark.exercise("8.4", points=2)
@pytest.mark.parametrize("shape", [(24, 40), (7, 9), (100,)])
def test_packed_bytes_equal_bitsandbytes(impl, shape):
    q = impl("quantization")
    x = weights(*shape, seed=3)
    want, _ = bnb_nf4(x)
    zero = int(q.nearest_code(torch.zeros(1), q.nf4_code_book()))
    packed = q.pack_nibbles(codes_of(q, x), pad=zero)
    assert packed.numel() == want.numel() == math.ceil(x.numel() / 2), \
        f"{x.numel()} codes need {math.ceil(x.numel() / 2)} bytes, got {packed.numel()}"
    assert torch.equal(packed, want), "the packed bytes differ from bitsandbytes' NF4 bytes"


@pytest.mark.exercise("8.4", points=1)
def test_pack_refuses_codes_above_15(impl):
    q = impl("quantization")
    assert q.pack_nibbles(torch.tensor([15, 15])).tolist() == [255]
    with pytest.raises(ValueError, match="16"):
        q.pack_nibbles(torch.tensor([3, 16]))


# ---------------------------------------------------------------------------------------------
# 8.5 unpacking
# ---------------------------------------------------------------------------------------------
@pytest.mark.exercise("8.5", points=1)
def test_unpack_reads_high_nibble_first(impl):
    q = impl("quantization")
    codes = q.unpack_nibbles(torch.tensor([0x12, 0xAB], dtype=torch.uint8), 4)
    assert codes.tolist() == [1, 2, 10, 11], f"0x12, 0xAB hold 1, 2, 10, 11; got {codes.tolist()}"
    assert q.unpack_nibbles(torch.tensor([0xF0, 0x37], dtype=torch.uint8), 3).tolist() == [15, 0, 3], \
        "an odd n drops the padding"


@pytest.mark.exercise("8.5", points=1)
def test_unpack_bitsandbytes_bytes_gives_our_codes(impl):
    q = impl("quantization")
    x = weights(7, 9, seed=4)
    packed, _ = bnb_nf4(x)
    codes = q.unpack_nibbles(packed, x.numel())
    assert codes.shape == (63,), f"63 codes from 32 bytes, got {tuple(codes.shape)}"
    assert torch.equal(codes.to(torch.uint8), codes_of(q, x)), "unpacked bitsandbytes bytes should be the NF4 codes"


@pytest.mark.exercise("8.5", points=1)
def test_unpack_refuses_a_count_the_bytes_cannot_hold(impl):
    q = impl("quantization")
    assert q.unpack_nibbles(torch.tensor([0x12], dtype=torch.uint8), 2).tolist() == [1, 2]
    with pytest.raises(ValueError, match="n=5"):
        q.unpack_nibbles(torch.tensor([0x12], dtype=torch.uint8), 5)


# ---------------------------------------------------------------------------------------------
# 8.6 dequantization
# ---------------------------------------------------------------------------------------------
@pytest.mark.exercise("8.6", points=1)
def test_dequantize_looks_up_and_scales(impl):
    q = impl("quantization")
    book = torch.tensor([-1.0, 0.0, 0.5, 1.0])
    out = q.dequantize_blocks(torch.tensor([0, 3, 2, 1, 2], dtype=torch.uint8), torch.tensor([2.0, 4.0, 8.0]), book, 2)
    assert out.dtype == torch.float32 and out.tolist() == [-2.0, 2.0, 2.0, 0.0, 4.0], \
        f"codes (0, 3 | 2, 1 | 2) with absmax (2 | 4 | 8) read -2, 2, 2, 0, 4; got {out.tolist()}"


@pytest.mark.exercise("8.6", points=2)
@pytest.mark.parametrize("shape", [(24, 40), (100,)])
def test_dequantize_equals_bitsandbytes(impl, shape):
    q = impl("quantization")
    x = weights(*shape, seed=5)
    packed, state = bnb_nf4(x)
    want = F.dequantize_4bit(packed.view(-1, 1), state).reshape(-1)
    got = q.dequantize_blocks(codes_of(q, x), state.absmax, q.nf4_code_book(), 64)
    assert got.shape == (x.numel(),)
    torch.testing.assert_close(got, want, atol=0, rtol=0, msg="dequantized values differ from bitsandbytes'")
    assert (got - x.reshape(-1)).abs().max() <= state.absmax.max() * 0.2, "NF4's worst error is ~0.14 x absmax"


@pytest.mark.exercise("8.6", points=1)
def test_dequantize_refuses_wrong_absmax_count(impl):
    q = impl("quantization")
    book = q.nf4_code_book()
    assert q.dequantize_blocks(torch.full((4,), 15), torch.tensor([3.0, 5.0]), book, 2).tolist() == [3, 3, 5, 5]
    with pytest.raises(ValueError, match="absmax has 3 values"):
        q.dequantize_blocks(torch.zeros(100, dtype=torch.uint8), torch.ones(3), book, 64)


# ---------------------------------------------------------------------------------------------
# 8.7 double quantization
# ---------------------------------------------------------------------------------------------
@pytest.mark.exercise("8.7", points=2)
def test_double_quantization_matches_bitsandbytes(impl):
    q = impl("quantization")
    x = weights(1024, 640, seed=6)  # 10,240 blocks of 64 -> 40 blocks of 256 absmax values
    _, state = bnb_nf4(x, double_quant=True)
    _, plain = bnb_nf4(x)
    absmax = plain.absmax
    codes, absmax2, offset = q.double_quantize(absmax)
    assert codes.dtype == torch.uint8 and codes.shape == absmax.shape, "one uint8 code per absmax value"
    assert offset == pytest.approx(float(state.offset), rel=1e-6), "the offset is the mean of the absmax values"
    assert absmax2.shape == (40,), f"10,240 absmax values in blocks of 256: 40 second-level absmax; got {tuple(absmax2.shape)}"
    torch.testing.assert_close(absmax2, state.state2.absmax, msg="second-level absmax should equal bitsandbytes'")
    step = (codes.long() - state.absmax.long()).abs()
    assert step.max() <= 1 and (step > 0).float().mean() < 0.03, \
        "8-bit codes should equal bitsandbytes' except, rarely, by one level near a midpoint"
    book = q.dynamic_code_book()
    scaled = (absmax - offset) / absmax2.repeat_interleave(256)[: absmax.numel()]
    ours, theirs = (scaled - book[codes.long()]).abs(), (scaled - book[state.absmax.long()]).abs()
    assert torch.all(ours <= theirs + 1e-7), "where the codes differ, ours must be the nearer level"


@pytest.mark.exercise("8.7", points=1)
def test_double_quantized_absmax_reads_back_closely(impl):
    q = impl("quantization")
    absmax = weights(1000, seed=7, std=1.0).abs() * 0.05 + 0.01   # positive, like block absmax values
    codes, absmax2, offset = q.double_quantize(absmax, 256)
    assert absmax2.shape == (4,), "1000 values in blocks of 256: 4 blocks, the last one partial"
    back = q.dequantize_blocks(codes, absmax2, q.dynamic_code_book(), 256) + offset
    assert (back - absmax).abs().max() < 0.01 * absmax.max(), "8 bits keep the absmax values within 1% of the largest"


# ---------------------------------------------------------------------------------------------
# 8.8 bits per parameter
# ---------------------------------------------------------------------------------------------
@pytest.mark.exercise("8.8", points=1)
def test_bits_per_parameter_arithmetic(impl):
    q = impl("quantization")
    assert q.bits_per_parameter(64) == pytest.approx(4.5), "4 bits + one fp32 absmax per 64 weights = 4.5"
    assert q.bits_per_parameter(64, double_quant=True) == pytest.approx(4 + 8 / 64 + 32 / (64 * 256)), \
        "4 + 8/64 + 32/(64*256) = 4.127 with double quantization"
    assert q.bits_per_parameter(128, double_quant=True, dq_block_size=128) == pytest.approx(4 + 8 / 128 + 32 / 128 ** 2)
    with pytest.raises(ValueError, match="dq_block_size=0"):
        q.bits_per_parameter(64, double_quant=True, dq_block_size=0)


@pytest.mark.exercise("8.8", points=1)
def test_bits_per_parameter_matches_bytes_held(impl):
    q = impl("quantization")
    x = weights(512, 512, seed=8)                       # 4,096 blocks of 64, 16 blocks of 256
    _, state = bnb_nf4(x, double_quant=True)
    held = (x.numel() // 2 + state.absmax.numel() + 4 * state.state2.absmax.numel()) * 8 / x.numel()
    assert q.bits_per_parameter(64, double_quant=True) == pytest.approx(held, abs=1e-9), \
        "bitsandbytes holds exactly this many bits per weight (its one offset aside)"
    assert q.bits_per_parameter(64, double_quant=False) == pytest.approx((x.numel() // 2 + 4 * x.numel() // 64) * 8 / x.numel())
