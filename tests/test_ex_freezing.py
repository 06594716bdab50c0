"""Graded tests for notebook 02 (freeze and add): exercises 2.1-2.4 on tiny random models."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import BertForSequenceClassification, LlamaForCausalLM

import conftest

V, D, F, L, H, KV = 100, 32, 64, 2, 4, 2  # vocabulary, width, MLP width, layers, heads, kv heads


def tiny_llama(tied: bool = True) -> LlamaForCausalLM:
    """The shared tiny Llama at this file's width, tied or not, in training mode."""
    return conftest.tiny_llama(V, D, F, L, H, KV, tie_word_embeddings=tied, eval_mode=False)


def llama_size(tied: bool = True) -> int:
    """Parameter count of tiny_llama from its shapes: the architecture's arithmetic, not a run."""
    kv_width = KV * (D // H)
    per_layer = 2 * D * D + 2 * D * kv_width + 3 * D * F + 2 * D  # q,o + k,v + gate,up,down + 2 norms
    return V * D * (1 if tied else 2) + L * per_layer + D  # embedding (+ head) + layers + final norm


def tiny_bert_classifier(num_labels: int = 2) -> BertForSequenceClassification:
    """The shared tiny BERT classifier at this file's width (eval: no dropout, steps deterministic)."""
    return conftest.tiny_bert(V, D, F, L, H, labels=num_labels)


def ids(batch: int = 2, tokens: int = 6) -> torch.Tensor:
    return torch.randint(0, V, (batch, tokens), generator=torch.Generator().manual_seed(1))  # (B, T)


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


# ---------------------------------------------------------------------------------------------
# 2.1 freeze_all
# ---------------------------------------------------------------------------------------------
@pytest.mark.exercise("2.1", points=1)
def test_freeze_all_freezes_every_parameter(impl):
    freezing = impl("freezing")
    model = tiny_llama()
    returned = freezing.freeze_all(model)
    assert returned is model, "freeze_all should return the model it was given (the same object)"
    still = [n for n, p in model.named_parameters() if p.requires_grad]
    assert not still, f"these parameters still require gradients after freeze_all: {still[:3]}"


@pytest.mark.exercise("2.1", points=1)
def test_frozen_model_builds_no_graph(impl):
    freezing = impl("freezing")
    model = freezing.freeze_all(tiny_llama(tied=False))
    logits = model(ids()).logits  # (B, T, V)
    assert not logits.requires_grad, \
        "after freeze_all the output should not require grad: some parameter is still trainable"


# ---------------------------------------------------------------------------------------------
# 2.2 count_trainable
# ---------------------------------------------------------------------------------------------
@pytest.mark.exercise("2.2", points=1)
def test_count_tied_embeddings_once(impl):
    freezing = impl("freezing")
    model = tiny_llama(tied=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight  # the test model really is tied
    trainable, total = freezing.count_trainable(model)
    assert total == llama_size(tied=True), \
        (f"total {total} != {llama_size(tied=True)}: the tied embedding / output head is one tensor "
         "and counts once (and buffers such as rotary frequencies do not count)")
    assert trainable == total, "a freshly built model has every parameter trainable"


@pytest.mark.exercise("2.2", points=1)
def test_count_untied_and_partly_frozen(impl):
    freezing = impl("freezing")
    model = tiny_llama(tied=False)
    model.model.embed_tokens.weight.requires_grad_(False)
    trainable, total = freezing.count_trainable(model)
    assert total == llama_size(tied=False), f"total {total} != {llama_size(tied=False)} for an untied model"
    assert trainable == total - V * D, \
        f"trainable {trainable} != {total - V * D}: frozen parameters (requires_grad=False) must not count"


@pytest.mark.exercise("2.2", points=1)
def test_count_module_registered_twice(impl):
    freezing = impl("freezing")
    shared = nn.Linear(4, 3)  # 15 parameters, reachable under two names
    model = nn.Sequential(shared, nn.ReLU(), shared)
    model.register_buffer("scale", torch.ones(1000))
    assert freezing.count_trainable(model) == (15, 15), \
        "a module reachable under two names is one set of tensors (count once); buffers do not count"


# ---------------------------------------------------------------------------------------------
# 2.3 drop_stale_gradients
# ---------------------------------------------------------------------------------------------
def trained_then_frozen() -> tuple[LlamaForCausalLM, list[str]]:
    """A model after one backward pass, then frozen but for its last layer; the frozen names."""
    model = tiny_llama()
    model(ids(), labels=ids()).loss.backward()  # every parameter now holds a gradient...
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith(f"model.layers.{L - 1}."))  # ...the frozen ones a stale one
    return model, [n for n, p in model.named_parameters() if not n.startswith(f"model.layers.{L - 1}.")]


@pytest.mark.exercise("2.3", points=1)
def test_stale_gradients_are_dropped_and_named(impl):
    freezing = impl("freezing")
    model, frozen = trained_then_frozen()
    kept = {n: p.grad.clone() for n, p in model.named_parameters() if n not in frozen}
    dropped = freezing.drop_stale_gradients(model)
    assert dropped == frozen, f"expected the {len(frozen)} frozen parameters' names, in model order; got {dropped}"
    still = [n for n in frozen if model.get_parameter(n).grad is not None]
    assert not still, f"these frozen parameters still hold a gradient (set .grad = None): {still[:3]}"
    for name, grad in kept.items():
        assert torch.equal(model.get_parameter(name).grad, grad), f"the trainable {name} must keep its gradient"


@pytest.mark.exercise("2.3", points=2)
def test_frozen_weights_bit_identical_after_a_step(impl):
    freezing = impl("freezing")
    model, frozen = trained_then_frozen()
    for name in frozen:
        model.get_parameter(name).grad.zero_()  # as zero_grad(set_to_none=False) leaves them: still gradients
    freezing.drop_stale_gradients(model)
    before = snapshot(model)
    torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1).step()  # handed every parameter
    moved = [n for n in frozen if not torch.equal(model.get_parameter(n), before[n])]
    assert not moved, \
        (f"frozen {moved[:3]} moved in the optimizer step: a zero gradient is still a gradient, and AdamW "
         "applies weight decay to it; only .grad = None makes AdamW skip a parameter")
    trained = [n for n in before if n not in frozen]
    assert any(not torch.equal(model.get_parameter(n), before[n]) for n in trained), \
        "the trainable parameters did not move: keep their gradients"


@pytest.mark.exercise("2.3", points=1)
def test_nothing_stale_nothing_dropped_and_a_tied_tensor_named_once(impl):
    freezing = impl("freezing")
    model = tiny_llama(tied=True)
    assert freezing.drop_stale_gradients(model) == [], "a model that never ran backward holds no gradient"
    model(ids(), labels=ids()).loss.backward()
    assert freezing.drop_stale_gradients(model) == [], "every parameter trains: no gradient is stale"
    model.model.embed_tokens.weight.requires_grad_(False)  # the same tensor as lm_head.weight
    assert freezing.drop_stale_gradients(model) == ["model.embed_tokens.weight"], \
        "the tied embedding / output head is one tensor: named once, by model.named_parameters()"
    assert model.lm_head.weight.grad is None and model.model.norm.weight.grad is not None


# ---------------------------------------------------------------------------------------------
# 2.4 add_trainable_head
# ---------------------------------------------------------------------------------------------
@pytest.mark.exercise("2.4", points=1)
def test_new_head_is_used_and_is_all_that_trains(impl):
    freezing = impl("freezing")
    model = tiny_bert_classifier(num_labels=2)
    head = nn.Linear(D, 3)
    params = freezing.add_trainable_head(model, "classifier", head)
    assert model.classifier is head, "the model's `classifier` should now be the head you were given"
    assert {id(p) for p in params} == {id(p) for p in head.parameters()} and len(params) == 2, \
        "return the head's parameters (weight and bias), as a list"
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert sorted(trainable) == ["classifier.bias", "classifier.weight"], \
        f"only the head should train; trainable now: {trainable[:4]}{'...' if len(trainable) > 4 else ''}"
    assert model(ids()).logits.shape == (2, 3), "the model's forward should now end in the 3-way head"


@pytest.mark.exercise("2.4", points=2)
def test_body_bit_identical_after_training_the_head(impl):
    freezing = impl("freezing")
    model = tiny_bert_classifier()
    params = freezing.add_trainable_head(model, "classifier", nn.Linear(D, 2))
    before = snapshot(model)
    opt = torch.optim.AdamW(params, lr=1e-2)
    model(ids(), labels=torch.tensor([0, 1])).loss.backward()
    opt.step()
    body = [n for n in before if not n.startswith("classifier.")]
    changed = [n for n in body if not torch.equal(dict(model.named_parameters())[n], before[n])]
    assert not changed, f"the frozen body moved: {changed[:3]}"
    frozen_grads = [n for n, p in model.named_parameters() if n in body and p.grad is not None]
    assert not frozen_grads, f"frozen parameters received gradients: {frozen_grads[:3]}"
    assert not torch.equal(model.classifier.weight, before["classifier.weight"]), "the head did not train"


@pytest.mark.exercise("2.4", points=1)
def test_replacing_a_tied_head_keeps_the_embedding_frozen(impl):
    freezing = impl("freezing")
    model = tiny_llama(tied=True)
    head = nn.Linear(D, V, bias=False)
    freezing.add_trainable_head(model, "lm_head", head)
    assert model.lm_head is head and head.weight.requires_grad, "the new lm_head should be trainable"
    assert not model.model.embed_tokens.weight.requires_grad, \
        "the input embedding (once tied to the old head) must stay frozen"
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert n_trainable == V * D, f"only the new head's {V * D} weights should train, found {n_trainable}"


@pytest.mark.exercise("2.4", points=1)
def test_dotted_path(impl):
    freezing = impl("freezing")
    model = tiny_bert_classifier()
    head = nn.Linear(D, D)
    freezing.add_trainable_head(model, "bert.pooler.dense", head)
    assert model.bert.pooler.dense is head, "a dotted name reaches a nested submodule: bert.pooler.dense"
    assert [n for n, p in model.named_parameters() if p.requires_grad] == \
        ["bert.pooler.dense.weight", "bert.pooler.dense.bias"], "only the new nested module should train"


def test_head_arguments_are_checked(impl):
    freezing = impl("freezing")
    model = tiny_bert_classifier()
    with pytest.raises(ValueError, match="at least one parameter"):
        freezing.add_trainable_head(model, "classifier", nn.ReLU())
    with pytest.raises(ValueError, match="no_such_block"):
        freezing.add_trainable_head(model, "no_such_block.head", nn.Linear(D, 2))
    with pytest.raises(ValueError, match="submodule path"):
        freezing.add_trainable_head(model, "", nn.Linear(D, 2))
