"""Graded tests for notebook 06 (prefix tuning), exercises 6.1-6.6, and its invariants.

A tiny random Llama with grouped-query attention (D=64, 4 query heads, 2 key/value heads of 16,
2 layers, 32 positions) and a tiny BERT classifier. Expected values come from the base model
run with peft's own prefix cache, from greedy decoding by full forward passes, or from peft itself.
"""
from __future__ import annotations

import copy
import json
import warnings
from functools import partial

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import DynamicCache, LlamaConfig

import conftest

V, D, H, KV, L, MAX_POS = 100, 64, 4, 2, 2, 32
HD = D // H                      # head_dim 16
WIDTH = L * 2 * KV * HD          # numbers per virtual token: 128
P = 3


# The shared tiny models (tests/conftest.py): a Llama with MAX_POS positions and wider initial
# weights (initializer_range 0.2, so a prefix or a prompt visibly moves the outputs), and the
# default BERT classifier (32 wide, 2 heads, MAX_POS positions).
tiny_llama = partial(conftest.tiny_llama, V, D, 2 * D, L, H, KV, max_position_embeddings=MAX_POS,
                     pad_token_id=0, bos_token_id=1, eos_token_id=2, initializer_range=0.2)
tiny_bert = partial(conftest.tiny_bert, V, 32, 64, L, 2, max_position_embeddings=MAX_POS)


class WordTokenizer:
    """Enough of a tokenizer for init="text": one id per word, fixed by the word's letters."""
    name_or_path = "word-tokenizer"

    def __call__(self, text: str) -> dict:
        return {"input_ids": [3 + sum(map(ord, w)) % (V - 3) for w in text.split()]}


def batch(rows: int = 2, tokens: int = 6, left_pad: int = 0):
    """(B, T) ids, a mask with `left_pad` padding positions in row 0, and LM labels."""
    ids = torch.randint(3, V, (rows, tokens), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(rows, tokens, dtype=torch.long)
    mask[0, :left_pad] = 0
    ids[0, :left_pad] = 0
    return ids, mask, ids.masked_fill(mask == 0, -100)


def prefixed(impl, model=None, num_virtual_tokens: int = P, **kw):
    pt = impl("prefix_tuning")
    kw.setdefault("init", "random")
    model = model if model is not None else tiny_llama()
    return pt.apply(model, pt.PrefixTuningConfig(num_virtual_tokens=num_virtual_tokens, **kw), WordTokenizer())


def greedy_without_cache(model, ids, mask, new_tokens: int) -> torch.Tensor:
    """Greedy decoding by a full forward pass over the whole sequence for every new token."""
    for _ in range(new_tokens):
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits[:, -1]     # (B, V)
        ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
    return ids


def write_adapter(folder, config: dict, tensors: dict) -> None:
    (folder / "adapter_config.json").write_text(json.dumps(config))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "adapter_model.safetensors"))


def peft_prefix_model(base, task_type: str = "CAUSAL_LM", **kw):
    from peft import PrefixTuningConfig, get_peft_model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return get_peft_model(base, PrefixTuningConfig(task_type=task_type, num_virtual_tokens=P, **kw))


def peft_with_prefix(base, flat: torch.Tensor, task_type: str = "CAUSAL_LM"):
    """peft's prefix-tuned copy of `base` holding the flat prefix `flat` (P, L*2*kv_heads*head_dim)."""
    theirs = peft_prefix_model(copy.deepcopy(base), task_type)
    with torch.no_grad():
        theirs.prompt_encoder["default"].embedding.weight.copy_(flat)
    return theirs


def peft_cache(base, flat: torch.Tensor, batch_size: int, task_type: str = "CAUSAL_LM") -> DynamicCache:
    """peft's own cache for prefix `flat` (its get_prompt): the reference our layout is held against."""
    return peft_with_prefix(base, flat, task_type).get_prompt(batch_size=batch_size)


def quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # peft still passes the retired `past_key_values` name
        return fn(*args, **kwargs)


# ---------------------------------------------------------------------------------------------
# 6.1 kv_shape
# ---------------------------------------------------------------------------------------------
@pytest.mark.exercise("6.1", points=1)
def test_kv_shape_under_grouped_query_attention(impl):
    pt = impl("prefix_tuning")
    shape = pt.kv_shape(tiny_llama().config)
    assert (shape.layers, shape.kv_heads, shape.head_dim) == (L, KV, HD), \
        f"expected (L, kv_heads, head_dim) = ({L}, {KV}, {HD}): keys have {KV} heads, not the {H} query heads; got {shape}"
    assert shape.width == WIDTH, f"L * 2 * kv_heads * head_dim = {WIDTH}"


@pytest.mark.exercise("6.1", points=1)
def test_kv_shape_of_bert_and_explicit_head_dim(impl):
    pt = impl("prefix_tuning")
    bert = pt.kv_shape(tiny_bert().config)
    assert (bert.layers, bert.kv_heads, bert.head_dim) == (L, 2, 16), f"BERT has no kv heads: all 2 heads of 32/2; got {bert}"
    wide = LlamaConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=1, head_dim=32, num_hidden_layers=3)
    shape = pt.kv_shape(wide)
    assert (shape.layers, shape.kv_heads, shape.head_dim) == (3, 1, 32), f"use the config's head_dim when it is set; got {shape}"


# ---------------------------------------------------------------------------------------------
# 6.2 prefix_to_cache
# ---------------------------------------------------------------------------------------------
@pytest.mark.exercise("6.2", points=2)
def test_model_reading_the_cache_gives_peft_s_logits(impl):
    pt, base = impl("prefix_tuning"), tiny_llama()
    flat = torch.randn(P, WIDTH, generator=torch.Generator().manual_seed(4))
    cache = pt.prefix_to_cache(flat, pt.kv_shape(base.config), 3, DynamicCache(config=base.config))
    assert cache.get_seq_length() == P, f"the cache should hold P={P} positions, holds {cache.get_seq_length()}"
    for layer in range(L):
        keys, values = cache.layers[layer].keys, cache.layers[layer].values
        assert keys.shape == values.shape == (3, KV, P, HD), \
            f"layer {layer}: expected (B, kv_heads, P, head_dim) keys and values, got {tuple(keys.shape)}"
        assert torch.equal(keys[0], keys[2]) and torch.equal(values[0], values[1]), "every row gets the same prefix"
    ids, mask, _ = batch(rows=3)
    ext = torch.cat([torch.ones(3, P, dtype=torch.long), mask], dim=1)             # (B, P+T)
    with torch.no_grad():
        ours = base(input_ids=ids, attention_mask=ext, position_ids=P + torch.arange(6).expand(3, -1),
                    cache=cache).logits
        theirs = quiet(lambda: peft_with_prefix(base, flat)(input_ids=ids, attention_mask=mask).logits)
    assert torch.allclose(ours, theirs, atol=1e-5), \
        "the base model reading your cache should give the logits peft gives with the same flat prefix"


@pytest.mark.exercise("6.2", points=2)
def test_cache_layout_matches_peft(impl):
    pt, base = impl("prefix_tuning"), tiny_llama()
    theirs = peft_prefix_model(copy.deepcopy(base))
    flat = theirs.prompt_encoder["default"].embedding.weight.detach()
    peft_cache = theirs.get_prompt(batch_size=2)
    ours = pt.prefix_to_cache(flat, pt.kv_shape(base.config), 2, DynamicCache(config=base.config))
    for layer in range(L):
        assert torch.equal(ours.layers[layer].keys, peft_cache.layers[layer].keys), f"layer {layer} keys differ from peft's"
        assert torch.equal(ours.layers[layer].values, peft_cache.layers[layer].values), f"layer {layer} values differ from peft's"


# ---------------------------------------------------------------------------------------------
# 6.3 prefix (plain or through the MLP)
# ---------------------------------------------------------------------------------------------
@pytest.mark.exercise("6.3", points=1)
def test_plain_prefix_is_the_parameter(impl):
    pt = impl("prefix_tuning")
    encoder = pt.PrefixEncoder(pt.KVShape(L, KV, HD), P)
    assert encoder.prefix() is encoder.prefix_kv, "without an MLP the prefix is prefix_kv itself"


@pytest.mark.exercise("6.3", points=2)
def test_reparameterised_prefix_is_the_mlp_output(impl):
    pt = impl("prefix_tuning")
    encoder = pt.PrefixEncoder(pt.KVShape(L, KV, HD), P, encoder_hidden_size=8)
    flat = encoder.prefix()
    assert flat.shape == (P, WIDTH), f"expected (P, L*2*kv_heads*head_dim) = ({P}, {WIDTH}), got {tuple(flat.shape)}"
    assert torch.equal(flat, encoder.prefix_mlp(encoder.prefix_embedding)), "the prefix is prefix_mlp(prefix_embedding)"
    flat.sum().backward()
    assert encoder.prefix_embedding.grad is not None, "gradients must reach the embedding through the MLP"


# ---------------------------------------------------------------------------------------------
# 6.4 the forward pre-hook: forward, generate, peft parity, training
# ---------------------------------------------------------------------------------------------
@pytest.mark.exercise("6.4", points=2)
def test_forward_equals_the_base_model_with_peft_s_prefix_cache(impl):
    base = tiny_llama()
    model = prefixed(impl, model=copy.deepcopy(base))
    ids, mask, _ = batch(left_pad=2)
    flat = model.prefix_encoder.prefix_kv
    ext = torch.cat([torch.ones(2, P, dtype=torch.long), mask], dim=1)              # (B, P+T)
    positions = (ext.cumsum(-1) - 1)[:, P:]                                           # P .. P+T-1 for real tokens
    with torch.no_grad():
        expected = base(input_ids=ids, attention_mask=ext, position_ids=positions,
                        cache=peft_cache(base, flat.detach(), 2)).logits
        got = model(input_ids=ids, attention_mask=mask).logits
        plain = base(input_ids=ids, attention_mask=mask).logits
    assert got.shape == (2, 6, V), f"logits keep the input's T positions, got {tuple(got.shape)}"
    real = mask.bool()
    assert not torch.allclose(got[real], plain[real], atol=1e-3), "the prefix should change the logits"
    assert torch.allclose(got[real], expected[real], atol=1e-5), \
        "logits differ from the base model given the prefix cache, a mask with P ones in front and positions from P"


@pytest.mark.exercise("6.4", points=1)
def test_positional_call_missing_mask_and_no_config_cache(impl):
    model = prefixed(impl)
    ids, mask, _ = batch()
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask).logits
        model.config.use_cache = False    # what labs.train sets: the prefix must still be used
        got = model(ids).logits
    assert torch.allclose(got, expected, atol=1e-6), "model(ids) with no mask and use_cache=False must still see the prefix"


@pytest.mark.exercise("6.4", points=2)
def test_generate_equals_greedy_decoding_without_cache(impl):
    model = prefixed(impl)
    ids, mask, _ = batch(rows=3, tokens=7, left_pad=3)          # batched, left-padded
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
    expected = greedy_without_cache(model, ids, mask, 6)
    assert out.shape == (3, 13), f"generate returns the input and 6 new tokens per row, got {tuple(out.shape)}"
    assert torch.equal(out, expected), ("generate() (prefix put into generate's cache on the prefill) must equal "
                                        "greedy decoding by full forward passes")
    again = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(out, again), "every generate() call needs a fresh cache: a second call must give the same result"


@pytest.mark.exercise("6.4", points=1)
def test_generate_several_sequences_beams_and_no_cache(impl):
    model = prefixed(impl)
    ids, mask, _ = batch(rows=2, tokens=5, left_pad=2)
    greedy = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=0)
    many = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, do_sample=True, top_k=1,
                          num_return_sequences=3, pad_token_id=0)
    assert many.shape == (6, 9) and torch.equal(many[::3], greedy), "the prefix cache must cover B x num_return_sequences rows"
    beams = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, num_beams=2, do_sample=False, pad_token_id=0)
    assert beams.shape == (2, 9), "beam search must run with the prefix"
    no_cache = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, do_sample=False,
                              pad_token_id=0, use_cache=False)
    assert torch.equal(no_cache, greedy), "generate(use_cache=False) must give the greedy tokens too"


@pytest.mark.exercise("6.4", points=1)
def test_one_step_moves_only_the_prefix(impl):
    model = prefixed(impl)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids, mask, labels = batch()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
    optimizer.step()
    for name, p in model.named_parameters():
        if name == "prefix_encoder.prefix_kv":
            assert not torch.equal(p, before[name]), "the prefix should move in a training step"
        else:
            assert torch.equal(p, before[name]), f"frozen weight {name} changed"


@pytest.mark.exercise("6.4", points=1)
def test_longer_than_the_context_is_refused(impl):
    model = prefixed(impl, num_virtual_tokens=8)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model(input_ids=torch.randint(3, V, (1, MAX_POS - 4)))


@pytest.mark.exercise("6.4", points=1)
def test_our_adapter_loads_in_peft_with_the_same_logits(impl, tmp_path):
    from peft import PeftModel
    pt, base = impl("prefix_tuning"), tiny_llama()
    model = prefixed(impl, model=copy.deepcopy(base))
    write_adapter(tmp_path, *pt.to_peft(model))
    ids, mask, _ = batch()
    mask[1, -2:] = 0   # right padding: peft counts positions without the mask, so compare real positions
    with torch.no_grad():
        theirs = quiet(lambda: PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path))(
            input_ids=ids, attention_mask=mask).logits)
        ours = model(input_ids=ids, attention_mask=mask).logits
    real = mask.bool()
    assert torch.allclose(ours[real], theirs[real], atol=1e-5), "peft reads our prefix into different logits"


@pytest.mark.exercise("6.4", points=1)
def test_peft_adapter_loads_here_with_the_same_logits(impl, tmp_path):
    pt, base = impl("prefix_tuning"), tiny_llama()
    theirs = peft_prefix_model(copy.deepcopy(base))
    with torch.no_grad():
        theirs.prompt_encoder["default"].embedding.weight.normal_(0, 1, generator=torch.Generator().manual_seed(3))
    theirs.save_pretrained(str(tmp_path))
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    model = pt.from_peft(copy.deepcopy(base), config, load_file(str(tmp_path / "adapter_model.safetensors")))
    ids, mask, _ = batch()
    with torch.no_grad():
        expected = quiet(lambda: theirs(input_ids=ids, attention_mask=mask).logits)
        got = model(input_ids=ids, attention_mask=mask).logits
    assert torch.allclose(got, expected, atol=1e-5), "a peft-made prefix gives different logits here"


@pytest.mark.exercise("6.4", points=1)
@pytest.mark.parametrize("projection", [False, True])
def test_same_loss_gradient_and_step_as_peft(impl, projection):
    base = tiny_llama()
    kw = {"prefix_projection": True, "encoder_hidden_size": 8} if projection else {}
    model, theirs = prefixed(impl, model=copy.deepcopy(base), **kw), peft_prefix_model(copy.deepcopy(base), **kw)
    enc, their_enc = model.prefix_encoder, theirs.prompt_encoder["default"]
    if projection:
        pairs = [(enc.prefix_embedding, their_enc.embedding.weight)] + [
            (getattr(enc.prefix_mlp[i], n), getattr(their_enc.transform[i], n)) for i in (0, 2) for n in ("weight", "bias")]
    else:
        pairs = [(enc.prefix_kv, their_enc.embedding.weight)]
    with torch.no_grad():
        for ours_p, their_p in pairs:
            their_p.copy_(ours_p)
    ids, mask, labels = batch()
    ours_loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    their_loss = quiet(lambda: theirs(input_ids=ids, attention_mask=mask, labels=labels).loss)
    ours_loss.backward()
    their_loss.backward()
    assert torch.allclose(ours_loss, their_loss, atol=1e-5), f"loss {ours_loss.item():.5f} vs peft's {their_loss.item():.5f}"
    for ours_p, their_p in pairs:
        assert torch.allclose(ours_p.grad, their_p.grad, atol=1e-5), "a prefix gradient differs from peft's"
    for params in ([a for a, _ in pairs], [b for _, b in pairs]):
        torch.optim.SGD(params, lr=0.5).step()
    with torch.no_grad():
        after = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        their_after = quiet(lambda: theirs(input_ids=ids, attention_mask=mask, labels=labels).loss)
    assert torch.allclose(after, their_after, atol=1e-5), "after one step the losses should still agree with peft"


@pytest.mark.exercise("6.4", points=1)
def test_bert_encoder_attends_to_the_prefix(impl):
    base = tiny_bert()
    model = prefixed(impl, model=copy.deepcopy(base))
    ids, mask, _ = batch()
    mask[1, -2:] = 0
    ext = torch.cat([torch.ones(2, P, dtype=torch.long), mask], dim=1)
    positions = (ext.cumsum(-1) - 1).clamp(min=0)[:, P:]
    flat = model.prefix_encoder.prefix_kv
    with torch.no_grad():
        expected = base(input_ids=ids, attention_mask=ext, position_ids=positions,
                        cache=peft_cache(base, flat.detach(), 2, "SEQ_CLS")).logits
        got = model(input_ids=ids, attention_mask=mask, labels=torch.tensor([0, 1]))
        plain = base(input_ids=ids, attention_mask=mask).logits
    assert got.logits.shape == (2, 2) and got.loss is not None, "a classifier keeps its (B, labels) logits and class loss"
    assert not torch.allclose(got.logits, plain, atol=1e-4), "BERT's self-attention should see the prefix"
    assert torch.allclose(got.logits, expected, atol=1e-5), "BERT logits differ from the base model given peft's prefix cache"


# ---------------------------------------------------------------------------------------------
# 6.5 fold
# ---------------------------------------------------------------------------------------------
@pytest.mark.exercise("6.5", points=2)
def test_fold_keeps_logits_and_drops_the_mlp(impl):
    pt = impl("prefix_tuning")
    model = prefixed(impl, prefix_projection=True, encoder_hidden_size=8)
    ids, mask, _ = batch(left_pad=1)
    with torch.no_grad():
        before = model(input_ids=ids, attention_mask=mask).logits
    pt.fold(model)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names == ["prefix_encoder.prefix_kv"], f"after fold only the plain prefix remains, got {names}"
    assert model.prefix_encoder.prefix_kv.shape == (P, WIDTH), "the folded prefix is (P, L*2*kv_heads*head_dim)"
    with torch.no_grad():
        after = model(input_ids=ids, attention_mask=mask).logits
    assert torch.allclose(before, after, atol=1e-6), "folding must not change the logits"


@pytest.mark.exercise("6.5", points=1)
def test_fold_without_mlp_changes_nothing(impl):
    pt = impl("prefix_tuning")
    model = prefixed(impl)
    kv = model.prefix_encoder.prefix_kv
    pt.fold(model)
    assert model.prefix_encoder.prefix_kv is kv, "a plain prefix has nothing to fold"
    encoder = prefixed(impl, prefix_projection=True, encoder_hidden_size=8).prefix_encoder
    encoder.fold()  # ...while a reparameterised one really is folded
    assert not hasattr(encoder, "prefix_mlp") and isinstance(getattr(encoder, "prefix_kv", None), torch.nn.Parameter), \
        "fold() replaces prefix_mlp (and prefix_embedding) by a plain prefix_kv parameter"


# ---------------------------------------------------------------------------------------------
# 6.6 prefix_from_tokens (initialise from real tokens' keys and values)
# ---------------------------------------------------------------------------------------------
@pytest.mark.exercise("6.6", points=1)
def test_prefix_from_tokens_shape(impl):
    pt = impl("prefix_tuning")
    model = tiny_llama()
    flat = pt.prefix_from_tokens(model, torch.tensor([5, 6, 7, 8]), pt.kv_shape(model.config))
    assert flat.shape == (4, WIDTH) and flat.dtype == torch.float32, f"expected (4, {WIDTH}) float32, got {tuple(flat.shape)}"


@pytest.mark.exercise("6.6", points=3)
def test_text_init_equals_typing_the_text_in_front(impl):
    base, tok = tiny_llama(), WordTokenizer()
    text = "once upon a"                                     # 3 words = P tokens
    model = prefixed(impl, model=copy.deepcopy(base), init="text", init_text=text)
    ids, _, _ = batch()
    text_ids = torch.tensor(tok(text)["input_ids"]).expand(2, -1)
    with torch.no_grad():
        expected = base(input_ids=torch.cat([text_ids, ids], dim=1)).logits[:, P:]
        got = model(input_ids=ids).logits
    assert torch.allclose(got, expected, atol=1e-5), \
        "a prefix made of a text's keys and values must act exactly like the text typed in front"


@pytest.mark.exercise("6.6", points=1)
def test_vocab_init_is_seeded(impl):
    a = prefixed(impl, init="vocab").prefix_encoder.prefix_kv
    b = prefixed(impl, init="vocab").prefix_encoder.prefix_kv
    c = prefixed(impl, init="vocab", seed=1).prefix_encoder.prefix_kv
    assert torch.equal(a, b) and not torch.equal(a, c), "init='vocab' draws its tokens with the config's seed"


# ---------------------------------------------------------------------------------------------
# Invariants of the shared code (run on the reference)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [0, -2, True, 1.5])
def test_bad_prefix_length_refused(impl, bad):
    pt = impl("prefix_tuning")
    with pytest.raises(ValueError, match="num_virtual_tokens"):
        pt.PrefixTuningConfig(num_virtual_tokens=bad)


def test_bad_config_refused(impl):
    pt = impl("prefix_tuning")
    with pytest.raises(ValueError, match="init"):
        pt.PrefixTuningConfig(init="zeros")
    with pytest.raises(ValueError, match="prefix_projection"):
        pt.PrefixTuningConfig(init="vocab", prefix_projection=True)
    with pytest.raises(ValueError, match="encoder_hidden_size"):
        pt.PrefixTuningConfig(encoder_hidden_size=0)


def test_gradient_checkpointing_is_refused(impl):
    pt = impl("prefix_tuning")
    from labs.train import enable_gradient_checkpointing
    model = pt.attach(tiny_llama(), pt.PrefixTuningConfig(num_virtual_tokens=P, init="random"), torch.zeros(P, WIDTH))
    with pytest.raises(ValueError, match="gradient checkpointing"):
        model.gradient_checkpointing_enable()
    with pytest.raises(ValueError, match="gradient checkpointing"):
        enable_gradient_checkpointing(model)
    for layer in model.model.layers:          # switched on behind our back: refused at the next training step
        layer.gradient_checkpointing = True
    model.train()
    with pytest.raises(ValueError, match="gradient checkpointing"):
        model(input_ids=torch.tensor([[5, 6]]), labels=torch.tensor([[5, 6]]))
    checkpointed = tiny_llama()
    checkpointed.activation_checkpointing_enable()
    with pytest.raises(ValueError, match="gradient checkpointing"):
        pt.attach(checkpointed, pt.PrefixTuningConfig(num_virtual_tokens=P, init="random"), torch.zeros(P, WIDTH))


def test_prefix_for_another_model_refused(impl):
    pt = impl("prefix_tuning")
    with pytest.raises(ValueError, match="another base model"):
        pt.from_peft(tiny_llama(), {"peft_type": "PREFIX_TUNING", "num_virtual_tokens": P},
                     {"prompt_embeddings": torch.zeros(P, L * 2 * H * HD)})   # query heads, not kv heads
    with pytest.raises(ValueError, match="another base model"):
        pt.from_peft(tiny_llama(), {"peft_type": "PREFIX_TUNING", "num_virtual_tokens": P, "num_layers": 3,
                                    "num_attention_heads": KV, "token_dim": KV * HD},
                     {"prompt_embeddings": torch.zeros(P, WIDTH)})


def test_a_second_technique_is_refused(impl):
    pt = impl("prefix_tuning")
    model = pt.attach(tiny_llama(), pt.PrefixTuningConfig(num_virtual_tokens=P, init="random"), torch.zeros(P, WIDTH))
    with pytest.raises(ValueError, match="already carries"):
        pt.attach(model, pt.PrefixTuningConfig(num_virtual_tokens=P, init="random"), torch.zeros(P, WIDTH))


def test_round_trip_through_the_adapter_files(impl, tmp_path):
    from labs.peft_format import load_adapter, save_adapter
    pt = impl("prefix_tuning")
    prefix = torch.randn(P, WIDTH, generator=torch.Generator().manual_seed(2))
    model = pt.attach(tiny_llama(), pt.PrefixTuningConfig(num_virtual_tokens=P, init="random"), prefix)
    save_adapter(model, tmp_path / "adapter")
    loaded = load_adapter(tiny_llama(), tmp_path / "adapter", impl=pt.__name__.split(".")[0])
    assert torch.equal(loaded.prefix_encoder.prefix_kv, prefix)
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "PREFIX_TUNING" and config["task_type"] == "CAUSAL_LM"
    assert (config["num_layers"], config["num_attention_heads"], config["token_dim"]) == (L, KV, KV * HD)


def test_prepare_for_finetune_reads_options(impl):
    pt = impl("prefix_tuning")
    model = pt.prepare_for_finetune(tiny_llama(), None, {"num_virtual_tokens": "5", "prefix_projection": "true",
                                                         "encoder_hidden_size": "8"})
    assert model.prefix_encoder.prefix().shape == (5, WIDTH)
    assert model.labs_adapter.method == "prefix"
    with pytest.raises(ValueError, match="unknown prefix option"):
        pt.prepare_for_finetune(tiny_llama(), None, {"rank": 4})
