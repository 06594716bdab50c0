"""labs.timing: interleaved medians on one clock, and the count of matrix products."""
import pytest
import torch

from labs.timing import count_matrix_products, interleaved_medians, interleaved_times


def test_functions_take_turns_and_each_gets_its_repeats():
    calls = []
    times = interleaved_times({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3, warmup=1)
    assert calls == ["a", "b", "b", "a", "a", "b", "b", "a"], "turns alternate their order every round"
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3}
    assert all(t >= 0 for v in times.values() for t in v)
    assert set(interleaved_medians({"a": lambda: None}, repeats=2)) == {"a"}


@pytest.mark.parametrize("kwargs", [{"repeats": 0}, {"repeats": 2, "warmup": -1}])
def test_bad_counts_are_named(kwargs):
    with pytest.raises(ValueError, match="repeats"):
        interleaved_times({"a": lambda: None}, **kwargs)


def test_counts_each_matrix_product_once():
    layer, x = torch.nn.Linear(4, 3), torch.randn(2, 4)
    a, b = torch.randn(2, 4), torch.randn(4, 4)
    assert count_matrix_products(lambda: layer(x)) == 1
    assert count_matrix_products(lambda: (x @ b) @ b.T + torch.relu(x)) == 2
    assert count_matrix_products(lambda: a + b[0]) == 0
