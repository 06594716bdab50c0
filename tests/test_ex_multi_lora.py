"""Graded tests for exercises 10.1-10.3 (notebooks/10_storage.ipynb): many LoRA adapters in one
batch, each row's update from its own factors, gathered per row or grouped by adapter.

The reference for every row is the plain LoRA formula on that row alone, written out here with
the factors of the row's adapter: scaling * x @ A^T @ B^T."""
from __future__ import annotations

import pytest
import torch
from torch import nn

IN, OUT = 12, 10  # the layer's input and output widths


def factors(seed: int, r: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """One adapter's (A (r, in), B (out, r), scaling), random and non-zero."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(r, IN, generator=g), torch.randn(OUT, r, generator=g), 0.5 + seed


ADAPTERS = {"a": factors(1, 4), "b": factors(2, 2), "c": factors(3, 4)}


def x_in(rows: int = 5, tokens: int = 3) -> torch.Tensor:
    return torch.randn(rows, tokens, IN, generator=torch.Generator().manual_seed(7))  # (N, T, in)


def one_row(x_row: torch.Tensor, name: str | None) -> torch.Tensor:
    """The update of one row (T, in) with adapter `name`: (T, out), zeros for the base."""
    if name is None:
        return torch.zeros(x_row.shape[0], OUT)
    A, B, scaling = ADAPTERS[name]
    return scaling * (x_row @ A.T) @ B.T


def stacked(names=("a", "b", "c")):
    """The adapters' factors stacked, zero-padded to rank 4 (b has rank 2)."""
    A = torch.zeros(len(names), 4, IN)
    B = torch.zeros(len(names), OUT, 4)
    for k, name in enumerate(names):
        a, b, _ = ADAPTERS[name]
        A[k, :a.shape[0]], B[k, :, :a.shape[0]] = a, b
    return A, B, torch.tensor([ADAPTERS[n][2] for n in names])


@pytest.mark.exercise("10.1", 2)
def test_gathered_update_gives_each_row_its_own_adapters_update(impl):
    multi = impl("multi_lora")
    x, rows = x_in(), ["b", "a", "c", "a", "b"]
    A, B, scaling = stacked()
    index = torch.tensor([{"a": 0, "b": 1, "c": 2}[n] for n in rows])
    got = multi.gathered_update(x, A, B, scaling, index)
    assert isinstance(got, torch.Tensor) and got.shape == (5, 3, OUT), "the update is (N, T, out)"
    for n, name in enumerate(rows):
        assert torch.allclose(got[n], one_row(x[n], name), atol=1e-5), f"row {n} (adapter {name!r})"


@pytest.mark.exercise("10.1", 1)
def test_gathered_update_uses_each_adapters_scale_and_builds_no_full_matrix(impl):
    multi = impl("multi_lora")
    x = x_in(rows=2)
    A, B, scaling = stacked()
    index = torch.tensor([2, 2])
    got = multi.gathered_update(x, A, B, scaling, index)
    doubled = multi.gathered_update(x, A, B, scaling * torch.tensor([1.0, 1.0, 2.0]), index)
    assert torch.allclose(doubled, 2 * got, atol=1e-5), "row n is multiplied by scaling[index[n]]"
    assert torch.allclose(got[1], one_row(x[1], "c"), atol=1e-5)


@pytest.mark.exercise("10.2", 2)
def test_group_rows_lists_each_adapters_rows_in_first_appearance_order(impl):
    groups = impl("multi_lora").group_rows(["b", None, "a", "b", None, "c", "a"])
    assert isinstance(groups, dict) and list(groups) == ["b", "a", "c"], "adapters in order of their first row"
    for name, want in {"b": [0, 3], "a": [2, 6], "c": [5]}.items():
        rows = groups[name]
        assert isinstance(rows, torch.Tensor) and rows.dtype == torch.long, "rows are a LongTensor"
        assert rows.tolist() == want, f"rows of {name!r}"


@pytest.mark.exercise("10.2", 1)
def test_group_rows_of_a_batch_without_adapters_is_empty(impl):
    multi = impl("multi_lora")
    assert multi.group_rows([None, None]) == {}
    groups = multi.group_rows(["x"] * 3)
    assert list(groups) == ["x"] and groups["x"].tolist() == [0, 1, 2]


@pytest.mark.exercise("10.3", 2)
def test_grouped_update_gives_each_row_its_own_adapters_update(impl):
    multi = impl("multi_lora")
    x, rows = x_in(rows=6), ["c", None, "b", "c", "a", None]
    groups = {"c": torch.tensor([0, 3]), "b": torch.tensor([2]), "a": torch.tensor([4])}
    got = multi.grouped_update(x, groups, ADAPTERS, OUT)
    assert isinstance(got, torch.Tensor) and got.shape == (6, 3, OUT), "the update is (N, T, out)"
    for n, name in enumerate(rows):
        assert torch.allclose(got[n], one_row(x[n], name), atol=1e-5), f"row {n} (adapter {name!r})"


@pytest.mark.exercise("10.3", 1)
def test_grouped_update_runs_one_pair_of_products_per_adapter(impl):
    """Grouping is the point: 2 adapters over 6 rows -> 4 thin products, not 2 per row."""
    from labs.timing import count_matrix_products
    multi = impl("multi_lora")
    x = x_in(rows=6)
    groups = {"a": torch.tensor([0, 1, 2, 5]), "b": torch.tensor([3, 4])}
    got = {}
    products = count_matrix_products(lambda: got.setdefault("u", multi.grouped_update(x, groups, ADAPTERS, OUT)))
    assert products == 4, f"{products} matrix products for 2 adapters; one pair per adapter is 4"
    assert torch.allclose(got["u"][3], one_row(x[3], "b"), atol=1e-5)


@pytest.mark.exercise("10.1", 1)
def test_a_multi_lora_layer_mixes_adapters_and_base_rows(impl):
    """The layer around exercise 10.1: the base product once, then each row's gathered update."""
    multi = impl("multi_lora")
    torch.manual_seed(0)
    base = nn.Linear(IN, OUT)
    layer = multi.MultiLoRALinear(base)
    for name, (A, B, scaling) in ADAPTERS.items():
        layer.add(name, A, B, scaling)
    x, rows = x_in(rows=5), ["a", None, "b", "c", "a"]
    layer.plan(rows, "gather")
    with torch.no_grad():
        got = layer(x)
        for n, name in enumerate(rows):
            want = base(x[n]) + one_row(x[n], name)
            assert torch.allclose(got[n], want, atol=1e-5), f"row {n} (adapter {name!r})"
