"""Graded tests for notebook 07 (prompt tuning), exercises 7.1-7.5, and its invariants.

A tiny random Llama with grouped-query attention (D=64, 4 heads, 2 key/value heads, 2 layers,
32 positions) and a tiny BERT classifier. Expected values are computed here from the base model
(prepending embeddings by hand, greedy decoding by full forward passes) or from peft itself.
"""
from __future__ import annotations

import copy
import json
import warnings
from functools import partial

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch.nn import functional as F

import conftest

V, D, H, KV, L, MAX_POS = 100, 64, 4, 2, 2, 32
P = 4


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
    labels = ids.masked_fill(mask == 0, -100)
    return ids, mask, labels


def prompted(impl, init: str = "random", num_virtual_tokens: int = P, model=None, **kw):
    pt = impl("prompt_tuning")
    model = model if model is not None else tiny_llama()
    cfg = pt.PromptTuningConfig(num_virtual_tokens=num_virtual_tokens, init=init, **kw)
    return pt.apply(model, cfg, WordTokenizer())


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


def peft_prompt_model(base, num_virtual_tokens: int = P):
    from peft import PromptTuningConfig, get_peft_model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return get_peft_model(base, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=num_virtual_tokens))


# ---------------------------------------------------------------------------------------------
# 7.1 nearest_tokens
# ---------------------------------------------------------------------------------------------
@pytest.mark.exercise("7.1", points=1)
def test_a_word_embedding_is_nearest_to_itself(impl):
    pt = impl("prompt_tuning")
    weight = tiny_llama().get_input_embeddings().weight                  # (V, D)
    prompt = 3.0 * weight[[7, 42, 7]].detach()                           # (3, D): longer, same directions
    similarity, token_ids = pt.nearest_tokens(prompt, weight)
    assert token_ids.shape == (3, 1) and similarity.shape == (3, 1), \
        f"k=1 gives (P, 1) similarities and ids, got {tuple(similarity.shape)} and {tuple(token_ids.shape)}"
    assert token_ids[:, 0].tolist() == [7, 42, 7], "each row is nearest to the word whose embedding it copies"
    assert torch.allclose(similarity, torch.ones(3, 1), atol=1e-5), "same direction: cosine 1, whatever the length"


@pytest.mark.exercise("7.1", points=1)
def test_top_k_by_cosine_not_by_dot_product(impl):
    pt = impl("prompt_tuning")
    weight = torch.tensor([[1.0, 0.0], [10.0, 10.0], [0.0, -1.0], [0.6, 0.8]])   # V=4 words, D=2
    similarity, token_ids = pt.nearest_tokens(torch.tensor([[1.0, 0.1]]), weight, k=3)
    assert token_ids.tolist() == [[0, 1, 3]], \
        f"most similar first, by cosine (word 1 only wins a dot product by its length); got {token_ids.tolist()}"
    assert similarity[0].tolist() == pytest.approx([0.995, 0.774, 0.677], abs=1e-3)
    for bad in (0, 5):
        with pytest.raises(ValueError, match=f"k={bad}"):
            pt.nearest_tokens(torch.tensor([[1.0, 0.1]]), weight, k=bad)


# ---------------------------------------------------------------------------------------------
# 7.2 init_prompt
# ---------------------------------------------------------------------------------------------
@pytest.mark.exercise("7.2", points=1)
def test_vocab_init_rows_are_word_embeddings(impl):
    pt = impl("prompt_tuning")
    emb = tiny_llama().get_input_embeddings()
    prompt = pt.init_prompt(emb, pt.PromptTuningConfig(num_virtual_tokens=6, init="vocab"))
    assert prompt.shape == (6, D) and prompt.dtype == torch.float32, f"expected (P, D) float32, got {tuple(prompt.shape)} {prompt.dtype}"
    for row in prompt:
        assert (emb.weight == row).all(-1).any(), "every 'vocab' row must be the embedding of some token"
    again = pt.init_prompt(emb, pt.PromptTuningConfig(num_virtual_tokens=6, init="vocab"))
    other = pt.init_prompt(emb, pt.PromptTuningConfig(num_virtual_tokens=6, init="vocab", seed=1))
    assert torch.equal(prompt, again), "the same seed must give the same prompt (use a seeded torch.Generator)"
    assert not torch.equal(prompt, other), "another seed should draw other tokens"


@pytest.mark.exercise("7.2", points=1)
def test_text_init_uses_the_text_tokens(impl):
    pt = impl("prompt_tuning")
    emb, tok = tiny_llama().get_input_embeddings(), WordTokenizer()
    cfg = pt.PromptTuningConfig(num_virtual_tokens=5, init="text", init_text="good or bad")
    prompt = pt.init_prompt(emb, cfg, tok)
    ids = tok("good or bad")["input_ids"]
    expected = emb.weight[torch.tensor((ids * 2)[:5])]
    assert torch.equal(prompt, expected.detach()), "init='text': rows are the embeddings of the text's tokens, repeated to P"
    with pytest.raises(ValueError):
        pt.init_prompt(emb, cfg, None)


@pytest.mark.exercise("7.2", points=1)
def test_random_init_at_the_vocabulary_scale(impl):
    pt = impl("prompt_tuning")
    emb = tiny_llama().get_input_embeddings()
    prompt = pt.init_prompt(emb, pt.PromptTuningConfig(num_virtual_tokens=20, init="random"))
    ratio = (prompt.std() / emb.weight.std()).item()
    assert prompt.shape == (20, D), f"expected (20, {D}), got {tuple(prompt.shape)}"
    assert 0.8 < ratio < 1.25, f"random init should have the embeddings' standard deviation (ratio {ratio:.2f})"
    assert not any((emb.weight == row).all(-1).any() for row in prompt), "random rows should not be copies of words"


@pytest.mark.exercise("7.2", points=1)
def test_apply_trains_exactly_p_times_d(impl):
    from labs.surgery import count_parameters
    model = prompted(impl, init="vocab")
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["soft_prompt.prompt_embeddings"], f"only the soft prompt should train, got {trainable}"
    assert count_parameters(model).trainable == P * D, "a soft prompt has P x D parameters"


# ---------------------------------------------------------------------------------------------
# 7.3 prepend
# ---------------------------------------------------------------------------------------------
@pytest.mark.exercise("7.3", points=1)
def test_prepend_puts_the_prompt_first_in_every_row(impl):
    pt = impl("prompt_tuning")
    prompt, embeds = torch.randn(P, D), torch.randn(3, 5, D)
    out = pt.prepend(prompt, embeds)
    assert out.shape == (3, P + 5, D), f"expected (B, P+T, D) = (3, {P + 5}, {D}), got {tuple(out.shape)}"
    assert all(torch.equal(out[b, :P], prompt) for b in range(3)), "every row starts with the P prompt rows"
    assert torch.equal(out[:, P:], embeds), "the input embeddings follow the prompt unchanged"


@pytest.mark.exercise("7.3", points=1)
def test_prepend_follows_the_input_dtype(impl):
    pt = impl("prompt_tuning")
    out = pt.prepend(torch.randn(P, D), torch.randn(2, 3, D, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16, "cast the (float32) prompt to the dtype of the embeddings"


# ---------------------------------------------------------------------------------------------
# 7.4 extend_mask_and_labels
# ---------------------------------------------------------------------------------------------
@pytest.mark.exercise("7.4", points=1)
def test_mask_gets_ones_in_front(impl):
    pt = impl("prompt_tuning")
    _, mask, _ = batch(left_pad=2)
    new_mask, _ = pt.extend_mask_and_labels(mask, None, P)
    assert new_mask.shape == (2, P + 6), f"expected (B, P+T), got {tuple(new_mask.shape)}"
    assert (new_mask[:, :P] == 1).all(), "every row must see the virtual tokens: ones in front"
    assert torch.equal(new_mask[:, P:], mask) and new_mask.dtype == mask.dtype, "the input's mask follows unchanged"


@pytest.mark.exercise("7.4", points=1)
def test_labels_masked_on_virtual_positions(impl):
    pt = impl("prompt_tuning")
    _, mask, labels = batch()
    _, new_labels = pt.extend_mask_and_labels(mask, labels, P)
    assert new_labels.shape == (2, P + 6), f"expected (B, P+T), got {tuple(new_labels.shape)}"
    assert (new_labels[:, :P] == -100).all(), "virtual positions carry label -100: no loss there"
    assert torch.equal(new_labels[:, P:], labels), "the real labels follow unchanged"


@pytest.mark.exercise("7.4", points=1)
def test_class_labels_and_none_pass_through(impl):
    pt = impl("prompt_tuning")
    _, mask, _ = batch()
    classes = torch.tensor([0, 1])
    assert pt.extend_mask_and_labels(mask, classes, P)[1] is classes, "class labels (B,) are not per token: leave them"
    assert pt.extend_mask_and_labels(mask, None, P)[1] is None, "no labels stay None"


# ---------------------------------------------------------------------------------------------
# 7.5 the forward pre-hook: forward, loss, generate, peft parity
# ---------------------------------------------------------------------------------------------
@pytest.mark.exercise("7.5", points=2)
def test_forward_equals_prepending_by_hand(impl):
    base = tiny_llama()
    model = prompted(impl, model=copy.deepcopy(base))
    ids, mask, _ = batch()
    prompt = model.soft_prompt.prompt_embeddings.detach()
    embeds = torch.cat([prompt.expand(2, -1, -1), base.get_input_embeddings()(ids)], dim=1)  # (B, P+T, D)
    with torch.no_grad():
        expected = base(inputs_embeds=embeds, attention_mask=torch.ones(2, P + 6)).logits[:, P:]
        got = model(input_ids=ids, attention_mask=mask).logits
    assert got.shape == (2, 6, V), f"logits should cover the T real positions, aligned with input_ids: got {tuple(got.shape)}"
    assert torch.allclose(got, expected, atol=1e-5), "logits differ from the base model run on [prompt; embeddings]"


@pytest.mark.exercise("7.5", points=1)
def test_positional_call_and_missing_mask(impl):
    model = prompted(impl)
    ids, mask, _ = batch()
    with torch.no_grad():
        a = model(ids).logits
        b = model(input_ids=ids, attention_mask=mask).logits
    assert torch.allclose(a, b, atol=1e-6), "model(ids) without a mask should equal a call with an all-ones mask"


@pytest.mark.exercise("7.5", points=1)
def test_loss_ignores_virtual_positions(impl):
    base = tiny_llama()
    model = prompted(impl, model=copy.deepcopy(base))
    ids, mask, labels = batch()
    prompt = model.soft_prompt.prompt_embeddings.detach()
    embeds = torch.cat([prompt.expand(2, -1, -1), base.get_input_embeddings()(ids)], dim=1)
    with torch.no_grad():
        logits = base(inputs_embeds=embeds).logits                                   # (B, P+T, V)
        full_labels = torch.cat([torch.full((2, P), -100), labels], dim=1)           # (B, P+T)
        expected = F.cross_entropy(logits[:, :-1].reshape(-1, V), full_labels[:, 1:].reshape(-1), ignore_index=-100)
        got = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    assert torch.allclose(got, expected, atol=1e-5), f"loss {got.item():.5f}, expected {expected.item():.5f} (labels -100 on the prompt)"


@pytest.mark.exercise("7.5", points=2)
def test_text_init_equals_prepending_the_text(impl):
    base, tok = tiny_llama(), WordTokenizer()
    text = "classify this review now"                        # 4 words = P tokens
    model = prompted(impl, init="text", model=copy.deepcopy(base), init_text=text)
    ids, mask, _ = batch()
    text_ids = torch.tensor(tok(text)["input_ids"]).expand(2, -1)
    with torch.no_grad():
        expected = base(input_ids=torch.cat([text_ids, ids], dim=1)).logits[:, P:]
        got = model(input_ids=ids, attention_mask=mask).logits
    assert torch.allclose(got, expected, atol=1e-5), "a prompt initialised from a text must act exactly like that text typed in front"


@pytest.mark.exercise("7.5", points=2)
def test_generate_equals_greedy_decoding_without_cache(impl):
    model = prompted(impl)
    ids, mask, _ = batch(rows=3, tokens=7, left_pad=3)          # batched, left-padded
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
    expected = greedy_without_cache(model, ids, mask, 6)
    assert out.shape == (3, 13), f"generate returns the input and 6 new tokens per row, got {tuple(out.shape)}"
    assert torch.equal(out, expected), ("generate() (prompt added once, on the prefill, then the cache) must equal "
                                        "greedy decoding by full forward passes")
    again = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(out, again), "a second generate() call must give the same result"


@pytest.mark.exercise("7.5", points=1)
def test_generate_without_cache_and_several_sequences(impl):
    model = prompted(impl)
    ids, mask, _ = batch(rows=2, tokens=5, left_pad=2)
    greedy = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=0)
    no_cache = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, do_sample=False,
                              pad_token_id=0, use_cache=False)
    assert torch.equal(greedy, no_cache), "generate(use_cache=False) must give the same tokens"
    many = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, do_sample=True, top_k=1,
                          num_return_sequences=2, pad_token_id=0)
    assert many.shape == (4, 9) and torch.equal(many[::2], greedy), "num_return_sequences=2 with top_k=1 repeats the greedy rows"


@pytest.mark.exercise("7.5", points=1)
def test_prompt_changes_the_output(impl):
    base = tiny_llama()
    model = prompted(impl, model=copy.deepcopy(base))
    ids, mask, _ = batch()
    with torch.no_grad():
        assert not torch.allclose(model(input_ids=ids).logits, base(input_ids=ids).logits, atol=1e-3), \
            "the soft prompt should change the logits"


@pytest.mark.exercise("7.5", points=1)
def test_one_step_moves_only_the_prompt(impl):
    base = tiny_llama()
    model = prompted(impl, model=copy.deepcopy(base))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids, mask, labels = batch()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
    optimizer.step()
    for name, p in model.named_parameters():
        if name == "soft_prompt.prompt_embeddings":
            assert not torch.equal(p, before[name]), "the soft prompt should move in a training step"
        else:
            assert torch.equal(p, before[name]), f"frozen weight {name} changed"


@pytest.mark.exercise("7.5", points=1)
def test_longer_than_the_context_is_refused(impl):
    model = prompted(impl, num_virtual_tokens=8)
    ids = torch.randint(3, V, (1, MAX_POS - 4))
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model(input_ids=ids)


@pytest.mark.exercise("7.5", points=1)
def test_our_adapter_loads_in_peft_with_the_same_logits(impl, tmp_path):
    from peft import PeftModel
    pt, base = impl("prompt_tuning"), tiny_llama()
    model = prompted(impl, model=copy.deepcopy(base))
    write_adapter(tmp_path, *pt.to_peft(model))
    ids, mask, _ = batch()
    mask[1, -2:] = 0   # right padding: peft counts positions without the mask, so compare real positions
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        theirs = PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path))(input_ids=ids, attention_mask=mask).logits
        ours = model(input_ids=ids, attention_mask=mask).logits
    assert theirs.shape == (2, P + 6, V), "peft returns logits for the virtual positions too"
    real = mask.bool()
    assert torch.allclose(ours[real], theirs[:, P:][real], atol=1e-5), "peft reads our adapter into different logits"


@pytest.mark.exercise("7.5", points=1)
def test_peft_adapter_loads_here_with_the_same_logits(impl, tmp_path):
    pt, base = impl("prompt_tuning"), tiny_llama()
    theirs = peft_prompt_model(copy.deepcopy(base))
    with torch.no_grad():
        theirs.prompt_encoder["default"].embedding.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(3))
    theirs.save_pretrained(str(tmp_path))
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    model = pt.from_peft(copy.deepcopy(base), config, load_file(str(tmp_path / "adapter_model.safetensors")))
    ids, mask, _ = batch()
    with torch.no_grad():
        expected = theirs(input_ids=ids, attention_mask=mask).logits[:, P:]
        got = model(input_ids=ids, attention_mask=mask).logits
    assert torch.allclose(got, expected, atol=1e-5), "a peft-made soft prompt gives different logits here"


@pytest.mark.exercise("7.5", points=1)
def test_same_loss_gradient_and_step_as_peft(impl):
    base = tiny_llama()
    model, theirs = prompted(impl, model=copy.deepcopy(base)), peft_prompt_model(copy.deepcopy(base))
    ours_p, their_p = model.soft_prompt.prompt_embeddings, theirs.prompt_encoder["default"].embedding.weight
    with torch.no_grad():
        their_p.copy_(ours_p)
    ids, mask, labels = batch()
    ours_opt, their_opt = torch.optim.SGD([ours_p], lr=0.5), torch.optim.SGD([their_p], lr=0.5)
    ours_loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    their_loss = theirs(input_ids=ids, attention_mask=mask, labels=labels).loss
    ours_loss.backward()
    their_loss.backward()
    assert torch.allclose(ours_loss, their_loss, atol=1e-5), f"loss {ours_loss.item():.5f} vs peft's {their_loss.item():.5f}"
    assert torch.allclose(ours_p.grad, their_p.grad, atol=1e-5), "the soft prompt's gradient differs from peft's"
    ours_opt.step()
    their_opt.step()
    with torch.no_grad():
        after = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        their_after = theirs(input_ids=ids, attention_mask=mask, labels=labels).loss
    assert torch.allclose(after, their_after, atol=1e-5), "after one step the losses should still agree with peft"


@pytest.mark.exercise("7.5", points=1)
def test_classifier_sees_the_prompt_like_peft(impl, tmp_path):
    from peft import PeftModel
    pt, base = impl("prompt_tuning"), tiny_bert()
    model = prompted(impl, model=copy.deepcopy(base))
    ids, mask, _ = batch()
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, labels=torch.tensor([0, 1]))
    assert out.logits.shape == (2, 2) and out.loss is not None, "a classifier keeps its (B, labels) logits and class loss"
    write_adapter(tmp_path, *pt.to_peft(model))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        theirs = PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path))(input_ids=ids, attention_mask=mask).logits
    assert torch.allclose(out.logits, theirs, atol=1e-5), "peft reads our classifier adapter into different logits"


# ---------------------------------------------------------------------------------------------
# Invariants of the shared code (run on the reference)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [0, -3, True, 2.0, "4"])
def test_bad_prompt_length_refused(impl, bad):
    pt = impl("prompt_tuning")
    with pytest.raises(ValueError, match="num_virtual_tokens"):
        pt.PromptTuningConfig(num_virtual_tokens=bad)


def test_bad_init_refused(impl):
    pt = impl("prompt_tuning")
    with pytest.raises(ValueError, match="init"):
        pt.PromptTuningConfig(init="zeros")
    with pytest.raises(ValueError, match="init_text"):
        pt.PromptTuningConfig(init="text", init_text="  ")


def test_a_second_technique_is_refused(impl):
    pt = impl("prompt_tuning")
    model = pt.attach(tiny_llama(), pt.PromptTuningConfig(num_virtual_tokens=P), torch.zeros(P, D))
    with pytest.raises(ValueError, match="already carries"):
        pt.attach(model, pt.PromptTuningConfig(num_virtual_tokens=P), torch.zeros(P, D))


def test_prompt_for_another_model_refused(impl):
    pt = impl("prompt_tuning")
    config = {"peft_type": "PROMPT_TUNING", "num_virtual_tokens": P, "token_dim": D + 8}
    with pytest.raises(ValueError, match="another base model"):
        pt.from_peft(tiny_llama(), config, {"prompt_embeddings": torch.zeros(P, D + 8)})


def test_round_trip_through_the_adapter_files(impl, tmp_path):
    from labs.peft_format import load_adapter, save_adapter
    pt = impl("prompt_tuning")
    prompt = torch.randn(P, D, generator=torch.Generator().manual_seed(2))
    model = pt.attach(tiny_llama(), pt.PromptTuningConfig(num_virtual_tokens=P), prompt)
    save_adapter(model, tmp_path / "adapter")
    loaded = load_adapter(tiny_llama(), tmp_path / "adapter", impl=pt.__name__.split(".")[0])
    assert torch.equal(loaded.soft_prompt.prompt_embeddings, model.soft_prompt.prompt_embeddings)
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "PROMPT_TUNING" and config["task_type"] == "CAUSAL_LM"
    assert (config["num_virtual_tokens"], config["token_dim"]) == (P, D)


def test_prepare_for_finetune_reads_options(impl):
    pt = impl("prompt_tuning")
    model = pt.prepare_for_finetune(tiny_llama(), None, {"num_virtual_tokens": "6"})
    assert model.soft_prompt.prompt_embeddings.shape == (6, D)
    assert model.labs_adapter.method == "prompt"
    with pytest.raises(ValueError, match="unknown prompt option"):
        pt.prepare_for_finetune(tiny_llama(), None, {"rank": 4})


def test_gradient_checkpointing_gives_the_same_gradient(impl):
    from labs.train import enable_gradient_checkpointing
    pt = impl("prompt_tuning")
    prompt = torch.randn(P, D, generator=torch.Generator().manual_seed(4))
    grads = []
    for checkpointing in (False, True):
        model = pt.attach(tiny_llama(), pt.PromptTuningConfig(num_virtual_tokens=P), prompt).train()
        if checkpointing:
            enable_gradient_checkpointing(model)
        ids, mask, labels = batch()
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        grads.append(model.soft_prompt.prompt_embeddings.grad)
    assert torch.allclose(grads[0], grads[1], atol=1e-6), "prompt tuning must train the same under gradient checkpointing"
