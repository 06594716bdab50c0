"""Training switches of the presets: the frozen base stored in bf16 (the gpu preset, where bf16
autocast runs) and gradient checkpointing where a method allows it. Every method of the registry is
checked on a tiny Llama with the reference implementation."""
import copy

import pytest
import torch

from conftest import tiny_llama
from labs.methods import METHODS, get_method, prepare
from labs.train import enable_gradient_checkpointing, make_optimizer, store_frozen_in, TrainConfig

PEFT_METHODS = [m for m in METHODS if not METHODS[m].trains_all]


def batch(vocab: int = 100):
    torch.manual_seed(1)
    ids = torch.randint(3, vocab, (2, 12))
    labels = ids.clone()
    labels[:, :4] = -100  # a prompt that is not scored
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def step(model, **autocast) -> float:
    """One optimizer step (inside CPU autocast when asked); returns the loss."""
    model.train()
    optimizer = make_optimizer(model, TrainConfig(lr=1e-2, max_steps=1))
    with torch.autocast("cpu", **autocast) if autocast else torch.autocast("cpu", enabled=False):
        loss = model(**batch()).loss
    loss.backward()
    optimizer.step()
    return loss.item()


def test_store_frozen_in_casts_only_frozen_weights_and_counts_a_tied_one_once():
    model = tiny_llama(tie_word_embeddings=True)
    model.model.layers[0].mlp.down_proj.weight.requires_grad_(False)
    for p in model.parameters():
        p.requires_grad_(False)
    model.model.norm.weight.requires_grad_(True)              # one trainable tensor stays fp32
    frozen = {id(p): p for p in model.parameters() if not p.requires_grad}
    fp32_bytes = sum(p.numel() * 4 for p in frozen.values())
    saved = store_frozen_in(model, torch.bfloat16)
    assert saved == fp32_bytes // 2
    assert all(p.dtype == torch.bfloat16 for p in model.parameters() if not p.requires_grad)
    assert model.model.norm.weight.dtype == torch.float32
    assert model.lm_head.weight is model.model.embed_tokens.weight  # still one tensor
    assert store_frozen_in(model, torch.bfloat16) == 0              # nothing left to cast


@pytest.mark.parametrize("method", PEFT_METHODS)
def test_every_peft_method_trains_on_a_bf16_frozen_base_under_autocast(method):
    model = prepare(method, tiny_llama(), "define", {}, impl="solutions")
    store_frozen_in(model, torch.bfloat16)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    loss = step(model, dtype=torch.bfloat16)
    assert torch.isfinite(torch.tensor(loss))
    for name, p in model.named_parameters():
        if p.requires_grad:   # the optimizer's weights and state stay in full precision
            assert p.dtype == torch.float32, name
        else:      # frozen floats now bf16; QLoRA's packed 4-bit codes (uint8) as they were
            assert p.dtype == (torch.bfloat16 if frozen[name].is_floating_point() else torch.uint8), name
            assert torch.equal(p, frozen[name]), name
    assert any(not torch.equal(p, trainable[n]) for n, p in model.named_parameters() if p.requires_grad)


@pytest.mark.parametrize("method", PEFT_METHODS)
def test_checkpointing_gives_the_same_step_wherever_the_registry_allows_it(method):
    model = prepare(method, tiny_llama(), "define", {}, impl="solutions")
    recomputed = copy.deepcopy(model)
    if not get_method(method).checkpointing:  # the registry says no: the method must refuse, clearly
        with pytest.raises(ValueError, match="checkpointing"):
            enable_gradient_checkpointing(recomputed)
            step(recomputed)
        return
    enable_gradient_checkpointing(recomputed)
    assert step(recomputed) == pytest.approx(step(model), rel=1e-6)
    for (name, p), q in zip(model.named_parameters(), recomputed.parameters()):
        assert torch.allclose(p, q, atol=1e-6), name


def test_the_gpu_preset_keeps_an_fp32_base_where_bf16_autocast_does_not_run():
    from types import SimpleNamespace
    from labs.finetune import store_frozen_base
    from labs.presets import get_preset
    assert get_preset("gpu").frozen_bf16 and not get_preset("quick").frozen_bf16
    model = prepare("lora", tiny_llama(), "define", {}, impl="solutions")
    context, saved = store_frozen_base(SimpleNamespace(model=model, device=torch.device("cpu")), get_preset("gpu"))
    assert saved == 0 and all(p.dtype == torch.float32 for p in model.parameters())  # a CPU: no bf16 autocast
    with context():
        assert not torch.is_autocast_enabled("cpu")
