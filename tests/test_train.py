"""The training loop: only trainable weights move, accumulation is exact, runs are reproducible."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import conftest
from labs.surgery import freeze, unfreeze
from labs.train import History, TrainConfig, batch_loss, lr_at, make_optimizer, train

VOCAB = 64


def tiny_llama(dropout: float = 0.0, seed: int = 0):
    """The shared tiny Llama, 32 wide over VOCAB ids, untied, in training mode (dropout as given)."""
    return conftest.tiny_llama(VOCAB, 32, 64, max_position_embeddings=64, attention_dropout=dropout,
                               tie_word_embeddings=False, seed=seed, eval_mode=False)


def lm_batch(rows: int = 8, tokens: int = 12, seed: int = 0) -> dict:
    ids = torch.randint(0, VOCAB, (rows, tokens), generator=torch.Generator().manual_seed(seed))  # (B, T)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def split(batch: dict, parts: int) -> list[dict]:
    return [dict(zip(batch, chunk)) for chunk in zip(*(v.chunk(parts) for v in batch.values()))]


def test_optimizer_holds_only_trainable_parameters():
    model = tiny_llama()
    freeze(model)
    unfreeze(model, lambda name: "q_proj" in name or name.startswith("model.norm"))
    optimizer = make_optimizer(model, TrainConfig(weight_decay=0.1))
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert in_optimizer == trainable and len(trainable) == 3
    decayed = [g for g in optimizer.param_groups if g["weight_decay"] > 0]
    assert all(p.dim() >= 2 for g in decayed for p in g["params"]), "norm gains must not be decayed"


def test_nothing_trainable_is_a_clear_error():
    model = freeze(tiny_llama())
    with pytest.raises(ValueError, match="no trainable parameters"):
        train(model, [lm_batch()], TrainConfig(max_steps=1), progress=False)


def test_frozen_weights_stay_bit_identical():
    model = tiny_llama()
    freeze(model)
    unfreeze(model, lambda name: "v_proj" in name)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train(model, [lm_batch()], TrainConfig(lr=1e-2, max_steps=3, weight_decay=0.1), progress=False)
    for name, p in model.named_parameters():
        if "v_proj" in name:
            assert not torch.equal(p, before[name]), f"{name} is trainable but did not move"
        else:
            assert torch.equal(p, before[name]), f"frozen {name} changed"


def test_loss_falls_when_overfitting_one_batch():
    model = tiny_llama()
    history = train(model, [lm_batch()], TrainConfig(lr=1e-2, max_steps=30), progress=False)
    assert len(history.losses) == 30 and history.steps == list(range(1, 31))
    assert history.final_loss < 0.5 * history.losses[0], history.losses


def test_accumulating_two_halves_equals_one_full_batch():
    batch = lm_batch(rows=8)
    cfg = dict(lr=1.0, max_steps=1, optimizer="sgd", max_grad_norm=None)
    start = tiny_llama()
    whole, halves = copy.deepcopy(start), copy.deepcopy(start)
    train(whole, [batch], TrainConfig(grad_accum=1, **cfg), progress=False)
    train(halves, split(batch, 2), TrainConfig(grad_accum=2, **cfg), progress=False)
    # plain SGD with lr 1: the change of each weight is exactly minus its gradient
    for (name, p0), p1, p2 in zip(start.named_parameters(), whole.parameters(), halves.parameters()):
        torch.testing.assert_close(p0 - p2, p0 - p1, atol=1e-6, rtol=1e-5, msg=name)


def test_same_seed_same_run_and_seed_matters():
    start = tiny_llama(dropout=0.3)
    batches = [lm_batch(seed=s) for s in range(3)]

    def run(seed):
        model = copy.deepcopy(start)
        history = train(model, batches, TrainConfig(lr=1e-2, max_steps=4, seed=seed), progress=False)
        return history.losses, [p.detach().clone() for p in model.parameters()]

    losses_a, params_a = run(seed=1)
    losses_b, params_b = run(seed=1)
    losses_c, _ = run(seed=2)
    assert losses_a == losses_b
    assert all(torch.equal(a, b) for a, b in zip(params_a, params_b))
    assert losses_a != losses_c, "dropout masks should depend on the seed"


def test_history_records_every_step_and_restores_mode():
    model = tiny_llama()
    model.eval()
    calls = []
    history = train(model, [lm_batch()], TrainConfig(lr=1e-3, max_steps=5, eval_every=2, warmup_steps=2),
                    eval_fn=lambda m: calls.append(m.training) or {"loss": 1.0}, progress=False)
    assert [step for step, _ in history.evals] == [2, 4, 5]
    assert len(history.step_times) == len(history.lr) == 5 and history.step_time_median > 0
    assert history.lr[:2] == [lr_at(1, TrainConfig(lr=1e-3, max_steps=5, warmup_steps=2)), 1e-3]
    assert not model.training, "train() must leave the model in the mode it found it in"
    assert isinstance(history, History) and history.to_dict()["steps"] == [1, 2, 3, 4, 5]


def test_one_shot_iterator_stops_early():
    model = tiny_llama()
    history = train(model, iter([lm_batch(), lm_batch(seed=1)]), TrainConfig(max_steps=5), progress=False)
    assert history.steps == [1, 2]


def test_gradient_checkpointing_gives_the_same_step():
    batch = lm_batch()
    start = tiny_llama()
    plain, ckpt = copy.deepcopy(start), copy.deepcopy(start)
    cfg = dict(lr=1e-2, max_steps=2)
    h1 = train(plain, [batch], TrainConfig(**cfg), progress=False)
    h2 = train(ckpt, [batch], TrainConfig(gradient_checkpointing=True, **cfg), progress=False)
    assert ckpt.is_activation_checkpointing
    assert h1.losses == pytest.approx(h2.losses, rel=1e-5)


def test_gradient_checkpointing_refused_clearly():
    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(2))

    with pytest.raises(ValueError, match="does not support gradient checkpointing"):
        train(Plain(), [{}], TrainConfig(gradient_checkpointing=True), progress=False)


def prompt_masked_batch() -> dict:
    """A batch shaped like a generate task's: no loss on each row's prompt (of 5 to 8 tokens)."""
    batch = lm_batch(rows=4, tokens=12)
    for row, prompt in enumerate((6, 8, 5, 7)):
        batch["labels"][row, :prompt] = -100
    return batch


class PrependedPositions(nn.Module):
    """A causal LM that puts P trained vectors in front of every row and returns logits for them
    too (B, P+T, V), as prompt tuning does. It takes `logits_to_keep`, counted from the end."""

    def __init__(self, lm: nn.Module, virtual: int = 3):
        super().__init__()
        self.lm, self.front = lm, nn.Parameter(torch.randn(virtual, lm.config.hidden_size))

    def forward(self, input_ids, attention_mask=None, logits_to_keep=0):  # rows here have no padding
        embeds = self.lm.get_input_embeddings()(input_ids)                           # (B, T, D)
        embeds = torch.cat([self.front.expand(len(embeds), -1, -1), embeds], dim=1)  # (B, P+T, D)
        return self.lm(inputs_embeds=embeds, logits_to_keep=logits_to_keep)


def loss_from_every_logit(model: nn.Module, batch: dict) -> torch.Tensor:
    """The definition: position t of the T real positions predicts token t+1; mean over the labels."""
    labels = batch["labels"]                                                         # (B, T)
    logits = model(input_ids=batch["input_ids"]).logits[:, -labels.shape[1]:]       # (B, T, V)
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)


@pytest.mark.parametrize("make, shape", [(tiny_llama, "prompt masked"), (tiny_llama, "every token"),
                                         (lambda: PrependedPositions(tiny_llama()), "prompt masked")],
                         ids=["llama-prompt-masked", "llama-every-token", "prepended-prompt-masked"])
def test_batch_loss_is_the_full_loss_from_fewer_logits(make, shape):
    model, batch = make(), prompt_masked_batch() if shape == "prompt masked" else lm_batch(rows=4, tokens=12)
    full = loss_from_every_logit(model, batch)
    full.backward()
    full_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    widths = []
    lm = model.lm if isinstance(model, PrependedPositions) else model
    lm.lm_head.register_forward_hook(lambda module, args, out: widths.append(out.shape[1]))
    loss = batch_loss(model, batch)
    loss.backward()
    torch.testing.assert_close(loss, full, atol=1e-6, rtol=1e-6)
    for p, g in zip(model.parameters(), full_grads):
        torch.testing.assert_close(p.grad, g, atol=1e-6, rtol=1e-5)
    # The shortest prompt is 5 tokens: position 4 predicts the first label, so 12 - 4 = 8 positions
    # need logits. With every token a label, the model computes its own loss, on all 12.
    assert widths == [8 if shape == "prompt masked" else 12]


def test_missing_labels_is_a_clear_error():
    batch = lm_batch()
    del batch["labels"]
    with pytest.raises(ValueError, match="labels"):
        train(tiny_llama(), [batch], TrainConfig(max_steps=1), progress=False)


@pytest.mark.parametrize("bad", [dict(lr=0), dict(max_steps=0), dict(grad_accum=0), dict(optimizer="adam"),
                                 dict(max_grad_norm=0), dict(warmup_steps=-1)])
def test_bad_config_names_the_value(bad):
    field, value = next(iter(bad.items()))
    with pytest.raises(ValueError, match=field):
        TrainConfig(**bad)


def test_lr_schedule_warms_up_then_decays_to_a_tenth():
    cfg = TrainConfig(lr=1.0, max_steps=10, warmup_steps=4)
    lrs = [lr_at(s, cfg) for s in range(1, 11)]
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0] and lrs[4] == 1.0
    assert lrs[-1] == pytest.approx(0.1) and all(a >= b for a, b in zip(lrs[4:], lrs[5:]))


def test_sgd_keeps_no_optimizer_state():
    model = tiny_llama()
    optimizer = make_optimizer(model, TrainConfig(optimizer="sgd"))
    model(**lm_batch()).loss.backward()
    optimizer.step()
    assert not any(optimizer.state[p] for g in optimizer.param_groups for p in g["params"])


def test_adamw8bit_trains_through_bitsandbytes():
    bnb = pytest.importorskip("bitsandbytes")
    model = tiny_llama()
    optimizer = make_optimizer(model, TrainConfig(optimizer="adamw8bit"))
    assert isinstance(optimizer, bnb.optim.AdamW8bit)
    history = train(model, [lm_batch()], TrainConfig(lr=1e-2, max_steps=5, optimizer="adamw8bit"), progress=False)
    assert history.final_loss < history.losses[0]


def test_loss_curves_draws_one_line_per_run():
    from labs.viz import loss_curves
    runs = {"a": History(steps=[1, 2, 3], losses=[3.0, 2.0, 1.5]), "b": History(steps=[1, 2], losses=[3.0, 2.5])}
    fig = loss_curves(runs)
    ax = fig.axes[0]
    assert [line.get_label() for line in ax.get_lines()] == ["a", "b"]
    assert "step" in ax.get_xlabel() and "loss" in ax.get_ylabel()
    assert fig._repr_png_().startswith(b"\x89PNG")
