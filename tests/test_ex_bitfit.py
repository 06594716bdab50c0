"""Graded tests for notebook 03 (BitFit), exercises 3.1-3.4, and BitFit's invariants.

Tiny random models: a BERT classifier (D=32, 2 layers, has biases) and a Llama (D=64, 2 layers,
no biases at all). Expected counts come from the architectures' shapes, not from a run.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import tiny_bert, tiny_llama

V, L = 100, 2                       # vocabulary, layers
BD, BF, BH = 32, 64, 2              # BERT: width, MLP width, heads
LD, LF, LH, KV = 64, 128, 4, 2      # Llama: width, MLP width, heads, kv heads
LABELS = 2
# The shared tiny models (tests/conftest.py) at their defaults are exactly these shapes:
# BERT V x BD, MLP BF, BH heads, LABELS labels; Llama V x LD, MLP LF, LH heads, KV kv heads.


def bert_bias_count(with_head: bool = True) -> int:
    """Biases of tiny_bert from its shapes: q, k, v, attention-out, 2 LayerNorm shifts, MLP in and out."""
    per_layer = 4 * BD + 2 * BD + BF + BD
    return BD + L * per_layer + BD + (LABELS if with_head else 0)  # embedding LN + layers + pooler (+ head)


def bert_size() -> int:
    embeddings = (V + 32 + 2) * BD + 2 * BD                        # word, position, token type + LN
    per_layer = 4 * (BD * BD + BD) + 2 * (2 * BD) + 2 * BD * BF + BF + BD
    return embeddings + L * per_layer + (BD * BD + BD) + (BD * LABELS + LABELS)  # + pooler + head


def ids(vocab: int = V, batch: int = 2, tokens: int = 6) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, tokens), generator=torch.Generator().manual_seed(1))  # (B, T)


def trainable_names(model: nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def one_step(model: nn.Module, lr: float = 1e-2) -> None:
    """One AdamW step on a classification loss, over the trainable parameters only."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr)
    model(ids(), labels=torch.tensor([0, 1])).loss.backward()
    optimizer.step()


# ---------------------------------------------------------------------------------------------
# 3.1 bias_parameter_names
# ---------------------------------------------------------------------------------------------
@pytest.mark.exercise("3.1", points=1)
def test_all_biases_of_bert(impl):
    bitfit = impl("bitfit")
    model = tiny_bert()
    names = bitfit.bias_parameter_names(model, "all")
    params = dict(model.named_parameters())
    assert all(n.endswith(".bias") for n in names), f"not a bias: {[n for n in names if not n.endswith('.bias')][:3]}"
    assert len(set(names)) == len(names), "a bias is listed twice"
    assert sum(params[n].numel() for n in names) == bert_bias_count(), \
        "subset 'all' should list every bias: linear layers, LayerNorm shifts, pooler and head"


@pytest.mark.exercise("3.1", points=1)
def test_query_mlp_subset_of_bert(impl):
    bitfit = impl("bitfit")
    expected = [f"bert.encoder.layer.{i}.{part}.bias" for i in range(L)
                for part in ("attention.self.query", "intermediate.dense")]
    names = bitfit.bias_parameter_names(tiny_bert(), "query_mlp")
    assert names == expected, \
        f"subset 'query_mlp' should be the query and intermediate biases in model order, got {names}"


@pytest.mark.exercise("3.1", points=1)
def test_llama_has_no_biases_and_bad_subset(impl):
    bitfit = impl("bitfit")
    assert bitfit.bias_parameter_names(tiny_llama(), "all") == [], "a Llama model has no bias parameters at all"
    with pytest.raises(ValueError, match="everything"):
        bitfit.bias_parameter_names(tiny_bert(), "everything")


# ---------------------------------------------------------------------------------------------
# 3.2 bias_change
# ---------------------------------------------------------------------------------------------
@pytest.mark.exercise("3.2", points=1)
def test_bias_change_is_the_mean_absolute_change(impl):
    bitfit = impl("bitfit")
    before = {"a.bias": torch.zeros(4), "b.bias": torch.tensor([1.0, 2.0]), "c.weight": torch.ones(2, 2)}
    after = {"b.bias": torch.tensor([2.0, 0.0]), "a.bias": torch.tensor([0.4, -0.4, 0.0, 0.0])}
    change = bitfit.bias_change(before, after)
    assert list(change) == ["b.bias", "a.bias"], f"one entry per tensor of `after`, in its order; got {list(change)}"
    assert change["b.bias"] == pytest.approx(1.5) and change["a.bias"] == pytest.approx(0.2), \
        f"mean |after - before|: (1 + 2) / 2 = 1.5 and (0.4 + 0.4) / 4 = 0.2; got {change}"
    assert all(type(v) is float for v in change.values()), "give plain Python floats (tensor.item())"


@pytest.mark.exercise("3.2", points=1)
def test_bias_change_names_what_moved_and_refuses_a_mismatch(impl):
    bitfit = impl("bitfit")
    model = tiny_bert()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    moved = "bert.encoder.layer.1.intermediate.dense.bias"
    with torch.no_grad():
        model.get_parameter(moved).sub_(0.5)
    after = {n: p.detach() for n, p in model.named_parameters() if n.endswith(".bias")}
    change = bitfit.bias_change(before, after)
    assert change[moved] == pytest.approx(0.5), f"{moved} moved by 0.5 everywhere, got {change[moved]}"
    assert all(v == 0.0 for n, v in change.items() if n != moved), "the other biases did not move"
    with pytest.raises(ValueError, match="classifier.bias"):
        bitfit.bias_change({n: t for n, t in before.items() if n != "classifier.bias"}, after)
    with pytest.raises(ValueError, match="pooler.dense.bias"):
        bitfit.bias_change({**before, "bert.pooler.dense.bias": torch.zeros(3)}, after)


# ---------------------------------------------------------------------------------------------
# 3.3 apply
# ---------------------------------------------------------------------------------------------
@pytest.mark.exercise("3.3", points=2)
def test_apply_trains_exactly_the_biases(impl):
    bitfit = impl("bitfit")
    model = tiny_bert()
    returned = bitfit.apply(model, bitfit.BitFitConfig())
    assert returned is model, "apply should return the model it was given"
    params = dict(model.named_parameters())
    trainable = trainable_names(model)
    weights = sorted(n for n in trainable if not n.endswith(".bias"))
    assert not weights, f"only biases should train, but these weights do: {weights[:2]}"
    assert sum(params[n].numel() for n in trainable) == bert_bias_count(), "every bias should train"
    assert model.labs_adapter.method == "bitfit", "apply should record the technique with mark_adapted"


@pytest.mark.exercise("3.3", points=1)
def test_apply_query_mlp_subset(impl):
    bitfit = impl("bitfit")
    model = bitfit.apply(tiny_bert(), bitfit.BitFitConfig(subset="query_mlp"))
    params = dict(model.named_parameters())
    assert sum(params[n].numel() for n in trainable_names(model)) == L * (BD + BF), \
        "subset query_mlp trains one query bias (D) and one intermediate bias (MLP width) per layer"


@pytest.mark.exercise("3.3", points=2)
def test_apply_on_bias_free_llama_raises_and_leaves_model(impl):
    bitfit = impl("bitfit")
    model = tiny_llama()
    with pytest.raises(ValueError, match="(?i)bias") as err:
        bitfit.apply(model, bitfit.BitFitConfig())
    assert "norm" in str(err.value), "the error should point to the norm-only analog"
    assert all(p.requires_grad for p in model.parameters()), "a refused apply must not freeze the model"
    assert getattr(model, "labs_adapter", None) is None, "a refused apply must not mark the model"


@pytest.mark.exercise("3.3", points=1)
def test_apply_norm_only_analog_on_llama(impl):
    bitfit = impl("bitfit")
    for config in (bitfit.BitFitConfig(norms=True), bitfit.BitFitConfig(norm_fallback=True)):
        model = bitfit.apply(tiny_llama(), config)
        params = dict(model.named_parameters())
        assert sum(params[n].numel() for n in trainable_names(model)) == (2 * L + 1) * LD, \
            f"{config}: on Llama the norm weights (2 per layer + the final norm, D each) should train"


@pytest.mark.exercise("3.3", points=1)
def test_norm_fallback_keeps_biases_when_there_are_some(impl):
    bitfit = impl("bitfit")
    model = bitfit.apply(tiny_bert(), bitfit.BitFitConfig(norm_fallback=True))
    assert all(n.endswith(".bias") for n in trainable_names(model)), \
        "norm_fallback only matters on a model without biases: BERT trains its biases alone"


@pytest.mark.exercise("3.3", points=1)
def test_apply_twice_is_refused(impl):
    bitfit = impl("bitfit")
    model = bitfit.apply(tiny_bert(), bitfit.BitFitConfig())
    with pytest.raises(ValueError, match="already"):
        bitfit.apply(model, bitfit.BitFitConfig(subset="query_mlp"))


# ---------------------------------------------------------------------------------------------
# 3.4 count_without
# ---------------------------------------------------------------------------------------------
@pytest.mark.exercise("3.4", points=1)
def test_count_without_the_head(impl):
    bitfit = impl("bitfit")
    model = tiny_bert()
    for p in model.parameters():  # as after BitFit plus a trainable new head
        p.requires_grad_(False)
    for n, p in model.named_parameters():
        p.requires_grad_(n.endswith(".bias") or n.startswith("classifier."))
    count = bitfit.count_without(model, ("classifier",))
    head = BD * LABELS + LABELS
    assert (count.trainable, count.total) == (bert_bias_count(with_head=False), bert_size() - head), \
        "leave out every parameter whose name starts with 'classifier', from both counts"


@pytest.mark.exercise("3.4", points=1)
def test_count_without_nothing_counts_everything(impl):
    bitfit = impl("bitfit")
    model = tiny_bert()
    model.bert.embeddings.word_embeddings.weight.requires_grad_(False)
    count = bitfit.count_without(model, ())
    assert (count.trainable, count.total) == (bert_size() - V * BD, bert_size()), \
        "with nothing excluded, count every parameter (trainable: those with requires_grad)"


# ---------------------------------------------------------------------------------------------
# Invariants (not graded)
# ---------------------------------------------------------------------------------------------
def test_frozen_weights_bit_identical_after_a_step(impl):
    bitfit = impl("bitfit")
    model = bitfit.apply(tiny_bert(), bitfit.BitFitConfig())
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    one_step(model)
    for n, p in model.named_parameters():
        if n.endswith(".bias"):
            continue
        assert torch.equal(p, before[n]), f"frozen {n} changed"
    assert not torch.equal(model.bert.encoder.layer[0].intermediate.dense.bias, before[
        "bert.encoder.layer.0.intermediate.dense.bias"]), "a bias should move"


def test_norm_only_step_moves_only_norms(impl):
    bitfit = impl("bitfit")
    model = bitfit.apply(tiny_llama(), bitfit.BitFitConfig(norms=True))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    x = ids()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model(x, labels=x).loss.backward()
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == set(bitfit.norm_parameter_names(model))


def test_bad_config_values(impl):
    BitFitConfig = impl("bitfit").BitFitConfig
    for bad in ({"subset": "q"}, {"norms": "yes"}, {"norm_fallback": 1}):
        with pytest.raises(ValueError, match="|".join(map(str, bad.values()))):
            BitFitConfig(**bad)


def _trained_bitfit_bert(bitfit):
    from labs.methods import train_task_head
    model = bitfit.apply(tiny_bert(), bitfit.BitFitConfig())
    train_task_head(model)
    one_step(model, lr=5e-2)
    return model


def test_round_trip_gives_identical_logits(impl):
    bitfit = impl("bitfit")
    model = _trained_bitfit_bert(bitfit)
    config, state = bitfit.to_peft(model)
    assert config["peft_type"] == "LABS_BITFIT" and config["task_type"] == "SEQ_CLS"
    assert config["modules_to_save"] == ["classifier"], "the trained head is saved with the biases"
    assert all(k.startswith("base_model.model.") for k in state)
    assert "base_model.model.bert.encoder.layer.0.attention.self.query.bias" in state
    fresh = bitfit.from_peft(tiny_bert(), config, state)
    assert not torch.equal(fresh(ids()).logits, tiny_bert()(ids()).logits), "the adapter should change the model"
    assert torch.equal(fresh(ids()).logits, model(ids()).logits)
    assert trainable_names(fresh) == trainable_names(model)


def test_norm_only_round_trip_on_llama(impl):
    bitfit = impl("bitfit")
    model = bitfit.apply(tiny_llama(), bitfit.BitFitConfig(norm_fallback=True))
    with torch.no_grad():
        model.model.norm.weight.mul_(1.5)
    config, state = bitfit.to_peft(model)
    assert config["task_type"] == "CAUSAL_LM" and config["modules_to_save"] is None
    assert len(state) == 2 * L + 1, "only the norm gains are saved"
    fresh = bitfit.from_peft(tiny_llama(), config, state)
    assert torch.equal(fresh(ids()).logits, model(ids()).logits)


def test_round_trip_through_peft_format_files(impl, tmp_path):
    from labs import peft_format  # first-party: a broken module fails this test, never skips it
    bitfit = impl("bitfit")
    model = _trained_bitfit_bert(bitfit)
    peft_format.save_adapter(model, tmp_path / "bitfit")
    assert sorted(p.name for p in (tmp_path / "bitfit").iterdir()) == ["adapter_config.json",
                                                                       "adapter_model.safetensors"]
    fresh = peft_format.load_adapter(tiny_bert(), tmp_path / "bitfit")
    assert torch.equal(fresh(ids()).logits, model(ids()).logits)


def test_wrong_base_model_is_refused(impl):
    bitfit = impl("bitfit")
    config, state = bitfit.to_peft(_trained_bitfit_bert(bitfit))
    with pytest.raises(ValueError, match="another base model") as err:
        bitfit.from_peft(tiny_bert(intermediate=48), config, state)
    assert "(64,)" in str(err.value) and "(48,)" in str(err.value), "both shapes should be named"
    with pytest.raises(ValueError, match="LABS_BITFIT"):
        bitfit.from_peft(tiny_bert(), {**config, "peft_type": "LORA"}, state)


def test_from_peft_refuses_a_file_missing_tensors(impl):
    bitfit = impl("bitfit")
    config, state = bitfit.to_peft(_trained_bitfit_bert(bitfit))
    state.pop("base_model.model.bert.pooler.dense.bias")
    with pytest.raises(ValueError, match="lacks"):
        bitfit.from_peft(tiny_bert(), config, state)


def test_prepare_for_finetune_defaults_and_options(impl):
    bitfit = impl("bitfit")
    from labs.methods import prepare
    from types import SimpleNamespace
    classify, generate = SimpleNamespace(kind="classify"), SimpleNamespace(kind="generate")
    model = prepare("bitfit", tiny_bert(), classify, {"subset": "query_mlp"})
    assert {n for n in trainable_names(model) if not n.startswith("classifier.")} == \
        set(bitfit.bias_parameter_names(model, "query_mlp")), "CLI string options reach the config"
    assert {"classifier.weight", "classifier.bias"} <= trainable_names(model)
    llama = bitfit.prepare_for_finetune(tiny_llama(), generate, {})
    assert trainable_names(llama) == set(bitfit.norm_parameter_names(llama)), \
        "the command line falls back to the norm-only analog on a bias-free model"
    with pytest.raises(ValueError, match="rank"):
        bitfit.prepare_for_finetune(tiny_bert(), classify, {"rank": "8"})
    with pytest.raises(ValueError, match="maybe"):
        bitfit.prepare_for_finetune(tiny_bert(), classify, {"norms": "maybe"})


@pytest.mark.slow
def test_minilm_bias_share(impl):
    """On the real MiniLM, BitFit trains a fraction of a percent: its biases, counted from the config."""
    bitfit = impl("bitfit")
    from labs.models import load_model
    model, _ = load_model("minilm-l6", task_kind="classify", num_labels=2)
    bitfit.apply(model, bitfit.BitFitConfig())
    c = model.config
    per_layer = 7 * c.hidden_size + c.intermediate_size
    expected = c.hidden_size * 2 + c.num_hidden_layers * per_layer + 2   # embedding LN, pooler, head bias
    count = bitfit.count_without(model, ())
    assert count.trainable == expected
    assert bitfit.count_without(model).percent < 0.2
