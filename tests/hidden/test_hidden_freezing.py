"""Hidden graded tests for notebook 02 (freeze and add) on plain torch modules instead of the
transformer models of the public tests."""
from __future__ import annotations

import pytest
import torch
from torch import nn


def shared_mlp() -> nn.Sequential:
    torch.manual_seed(0)
    shared = nn.Linear(8, 8)
    return nn.Sequential(shared, nn.ReLU(), shared, nn.Linear(8, 3))  # `shared` appears twice


@pytest.mark.exercise("2.1", points=1)
def test_freeze_all_leaves_no_gradient_after_backward(impl):
    freezing = impl("freezing")
    model = freezing.freeze_all(shared_mlp())
    x = torch.randn(4, 8, requires_grad=True)
    model(x).sum().backward()
    assert x.grad is not None, "gradients should still flow to the input through a frozen model"
    assert all(p.grad is None for p in model.parameters()), "a frozen parameter must receive no .grad"


@pytest.mark.exercise("2.2", points=1)
def test_a_module_used_twice_counts_once(impl):
    freezing = impl("freezing")
    model = shared_mlp()
    total = (8 * 8 + 8) + (8 * 3 + 3)  # the shared Linear once, the last Linear once
    assert freezing.count_trainable(model) == (total, total), \
        "a module that appears twice holds one set of parameters: count it once"
    model[3].requires_grad_(False)
    assert freezing.count_trainable(model) == (8 * 8 + 8, total), "frozen parameters count in total only"


@pytest.mark.exercise("2.3", points=1)
def test_only_the_frozen_module_loses_its_gradients(impl):
    freezing = impl("freezing")
    model = shared_mlp()
    model(torch.randn(4, 8)).sum().backward()
    model[0].requires_grad_(False)  # the shared Linear, reachable as [0] and [2]
    assert freezing.drop_stale_gradients(model) == ["0.weight", "0.bias"], \
        "the shared Linear's two tensors, each named once"
    assert model[0].weight.grad is None and model[3].weight.grad is not None, \
        "drop the frozen gradients only; the last layer still trains"


@pytest.mark.exercise("2.4", points=1)
def test_head_hung_inside_a_sequential_trains_alone(impl):
    freezing = impl("freezing")
    model = shared_mlp()
    head = nn.Linear(8, 5)
    params = freezing.add_trainable_head(model, "3", head)
    assert model[3] is head, "the head should replace the module at the given path"
    assert {id(p) for p in params} == {id(p) for p in head.parameters()}, "return the head's parameters"
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in head.parameters()}, "only the head should train"
    assert model(torch.randn(2, 8)).shape == (2, 5), "the model should now end in the new head"
