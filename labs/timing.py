"""Timing on one clock: the median wall time of repeated calls, taken in turns.

    medians = interleaved_medians({"base": lambda: base(ids), "LoRA": lambda: lora(ids)}, repeats=20)

Every latency the course reports (notebooks 04, 05, 07, benchmarks/) comes from here, so that the
numbers are comparable: wall-clock seconds (time.perf_counter, what a user waits), the median
of `repeats` calls after `warmup` untimed ones, the functions taking turns call by call, in an
order reversed every other round, so that a background hiccup on a shared machine hits them all
alike. Compare the ratios to a baseline timed in the same call, not absolute figures across runs.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch


def interleaved_times(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Wall seconds of each of `repeats` calls per function, timed in turns (after `warmup` rounds)."""
    if not fns:
        raise ValueError("give at least one function to time")
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    names = list(fns)
    times = {name: [] for name in names}
    for i in range(warmup + repeats):
        for name in (names if i % 2 == 0 else names[::-1]):
            start = time.perf_counter()
            fns[name]()
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def interleaved_medians(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median wall seconds per call of each function (see interleaved_times)."""
    return {name: statistics.median(t) for name, t in interleaved_times(fns, repeats, warmup).items()}


def count_matrix_products(fn: Callable[[], object]) -> int:
    """How many matrix products (linear layers, matmul, bmm, attention) one call of `fn` runs.

    A clock on a shared machine can hide a few percent; this count cannot. It is the work that
    LoRA's unmerged path adds per token (two thin products per adapted layer) and merging removes.
    """
    counter = _ProductCounter()
    with counter:
        fn()
    return counter.count


class _ProductCounter(torch.overrides.TorchFunctionMode):
    """Counts calls of the matrix-product functions while active (torch's function-mode hook)."""

    # by name: torch hands the mode its C functions (F.linear arrives as torch._C._nn.linear)
    PRODUCTS = {"linear", "matmul", "__matmul__", "mm", "bmm", "addmm", "baddbmm", "scaled_dot_product_attention"}

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.count += getattr(func, "__name__", "") in self.PRODUCTS
        return func(*args, **(kwargs or {}))
