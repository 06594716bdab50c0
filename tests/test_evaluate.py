"""Measurements: probe scoring, perplexity bookkeeping, batched generation, accuracy."""
from __future__ import annotations

import math
from functools import partial
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import conftest
from labs import evaluate

WORDS = ["<pad>", "<unk>", "<s>", "</s>", "Question", "Answer", ":", "?", "what", "colour", "is", "the",
         "sky", "grass", "red", "green", "blue", "a", "cat", "dog", "sat", "on", "mat", "and", "ran"]


def tiny_tokenizer():
    """A word-level tokenizer over WORDS, built offline (no model hub)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>",
                                   bos_token="<s>", eos_token="</s>", padding_side="left")


tiny_llama = partial(conftest.tiny_llama, len(WORDS), 32, 64, max_position_embeddings=128,
                     pad_token_id=0, bos_token_id=2, eos_token_id=3)  # the shared tiny Llama over WORDS


class UnigramModel(nn.Module):
    """Predicts the same next-token distribution everywhere: log-likelihoods are easy to compute."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.bias = nn.Parameter(logits.clone())  # (V,)

    def forward(self, input_ids, attention_mask=None, labels=None, **unused):
        logits = self.bias.expand(*input_ids.shape, -1)  # (B, T, V)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                                   ignore_index=-100)
        return SimpleNamespace(logits=logits, loss=loss, past_key_values=None)  # no cache: whole rows


def unigram(**word_logprob) -> UnigramModel:
    """Logits whose softmax gives each named word the given probability (rest shared equally)."""
    probs = torch.full((len(WORDS),), 0.0)
    for word, p in word_logprob.items():
        probs[WORDS.index(word)] = p
    rest = (1 - probs.sum()) / (probs == 0).sum()
    return UnigramModel(torch.where(probs > 0, probs, rest).log())


# ---------------------------------------------------------------------------------------------
# Probe
# ---------------------------------------------------------------------------------------------
def test_choice_logprobs_are_the_continuation_tokens_only():
    tok, model = tiny_tokenizer(), unigram(red=0.1, green=0.3, blue=0.3)
    scores = evaluate.choice_logprobs(model, tok, "what colour is the sky ?", ["red", "green blue"], normalize=False)
    assert scores == pytest.approx([math.log(0.1), 2 * math.log(0.3)], rel=1e-5)


def test_probe_picks_the_likeliest_choice_per_token():
    tok = tiny_tokenizer()
    # "green blue" has the higher probability per token (0.3 vs 0.2) but the lower total (0.09 vs 0.2)
    model = unigram(red=0.2, green=0.3, blue=0.3)
    item = {"question": "what colour is the grass ?", "choices": ["red", "green blue"], "answer": 1}
    assert evaluate.probe_accuracy(model, tok, [item]) == 1.0
    assert evaluate.probe_accuracy(model, tok, [item], normalize=False) == 0.0
    by_text = dict(item, answer="green blue")
    assert evaluate.probe_accuracy(model, tok, [by_text, dict(item, answer=0)]) == 0.5


@pytest.mark.parametrize("share_context", [False, True])
def test_probe_scoring_is_independent_of_padding(share_context):
    tok, model = tiny_tokenizer(), tiny_llama()
    choices = ["red", "green blue a cat", "dog"]
    together = evaluate.choice_logprobs(model, tok, "what is the sky ?", choices, share_context=share_context)
    alone = [evaluate.choice_logprobs(model, tok, "what is the sky ?", [c], share_context=share_context)[0]
             for c in choices]
    assert together == pytest.approx(alone, abs=1e-5)


@pytest.mark.parametrize("normalize", [False, True])
def test_shared_context_cache_gives_the_same_scores(normalize):
    tok, model = tiny_tokenizer(), tiny_llama(seed=1)
    args = (model, tok, "Question : what colour is the grass ? Answer :", ["green", "red a blue", "the mat"])
    shared = evaluate.choice_logprobs(*args, normalize=normalize, share_context=True)
    whole = evaluate.choice_logprobs(*args, normalize=normalize, share_context=False)
    assert shared == pytest.approx(whole, abs=1e-5)


QUESTIONS = [("what colour is the sky ?", ["blue", "red", "green a cat"]),
             ("Question : the cat sat on the mat and ran ? Answer :", ["dog", "the mat"]),
             ("is the grass green ?", ["green", "blue", "red", "a dog sat on the mat"])] * 4  # 12 > PROBE_BATCH


@pytest.mark.parametrize("share_context", [False, True])
@pytest.mark.parametrize("opening", ["", "Question : the cat sat on the mat and the dog ran ."],
                         ids=["different openings", "a shared opening"])  # like a chat template's system prompt
def test_questions_scored_together_score_as_one_at_a_time(share_context, opening):
    tok, model = tiny_tokenizer(), tiny_llama(seed=2)
    questions = [(f"{opening} {context}".strip(), choices) for context, choices in QUESTIONS]
    together = evaluate.score_choices(model, tok, questions, share_context=share_context)
    alone = [evaluate.choice_logprobs(model, tok, context, choices, share_context=False)
             for context, choices in questions]
    assert [len(s) for s in together] == [len(c) for _, c in QUESTIONS]
    for got, want in zip(together, alone):
        assert got == pytest.approx(want, abs=1e-5)
    items = [{"question": context, "choices": choices, "answer": 0} for context, choices in QUESTIONS]
    hits = evaluate.probe_correct(model, tok, items)
    contexts = [evaluate.probe_context(tok, item["question"]) for item in items]
    assert hits == [max(range(len(s)), key=s.__getitem__) == 0
                    for s in evaluate.score_choices(model, tok, list(zip(contexts, [i["choices"] for i in items])))]


@pytest.mark.parametrize("method, shared", [("lora", True), ("prefix", False), ("prompt", False)])
def test_only_virtual_token_adapters_make_the_probe_read_whole_rows(method, shared):
    from labs.surgery import AdapterRecord
    tok, model = tiny_tokenizer(), tiny_llama()
    model.labs_adapter = AdapterRecord(method, None, f"labs.{method}")
    cached = []
    model.register_forward_pre_hook(lambda m, args, kwargs: cached.append(bool(kwargs.get("use_cache"))),
                                    with_kwargs=True)
    evaluate.choice_logprobs(model, tok, "what is the sky ?", ["red", "blue"])
    assert any(cached) == shared   # the context read once with its cache, then the choices from it


def test_probe_correct_is_per_question_and_averages_to_the_accuracy():
    tok, model = tiny_tokenizer(), unigram(red=0.2, green=0.3, blue=0.3)
    item = {"question": "what colour is the grass ?", "choices": ["red", "green blue"], "answer": 1}
    items = [item, dict(item, answer=0), dict(item, answer="green blue")]
    assert evaluate.probe_correct(model, tok, items) == [True, False, True]
    assert evaluate.probe_accuracy(model, tok, items) == pytest.approx(2 / 3)


def test_paired_change_counts_the_discordant_questions_and_gives_mcnemars_exact_p():
    before = [True] * 10 + [False] * 10 + [True] * 6 + [False] * 1
    after = [True] * 10 + [False] * 10 + [False] * 6 + [True] * 1   # 6 lost, 1 gained, 20 unchanged
    change = evaluate.paired_change(before, after)
    assert (change.n, change.gained, change.lost, change.unchanged) == (27, 1, 6, 20)
    assert change.accuracy_change == pytest.approx(-5 / 27)
    # two-sided exact binomial on 7 discordant questions: 2 * P(X <= 1) = 2 * (1 + 7) / 2**7
    assert change.p_value == pytest.approx(2 * 8 / 128)
    assert evaluate.paired_change([1, 0, 1], [1, 0, 1]).p_value == 1.0      # nothing changed
    assert evaluate.paired_change([1, 0], [0, 1]).p_value == 1.0            # a balanced swap
    assert evaluate.paired_change([True] * 12, [False] * 12).p_value == pytest.approx(2 / 2 ** 12)


@pytest.mark.parametrize("before, after", [([True], [True, False]), ([], []), ([True, None], [True, True])])
def test_paired_change_rejects_unpaired_or_non_boolean_results(before, after):
    with pytest.raises(ValueError, match="scored twice|True/False"):
        evaluate.paired_change(before, after)


# ---------------------------------------------------------------------------------------------
# Perplexity
# ---------------------------------------------------------------------------------------------
TEXT = "the cat sat on the mat and the dog ran on the grass and the cat ran"


def test_perplexity_is_exp_of_the_mean_token_loss():
    tok, model = tiny_tokenizer(), tiny_llama()
    ids = torch.tensor([tok(TEXT)["input_ids"]])  # (1, T)
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss.item()
    ppl = evaluate.perplexity(model, tok, TEXT, seq_len=64)
    assert math.isfinite(ppl) and ppl == pytest.approx(math.exp(loss), rel=1e-5)


@pytest.mark.parametrize("seq_len,stride", [(4, 4), (5, 2), (8, 3), (64, 64)])
def test_sliding_windows_score_every_token_once(seq_len, stride):
    # a context-free model: the perplexity is the same whatever the windows, if the bookkeeping is right
    tok = tiny_tokenizer()
    model = unigram(the=0.2, cat=0.05, ran=0.1, on=0.02)
    ids = tok(TEXT)["input_ids"]
    logp = F.log_softmax(model.bias.detach(), -1)
    expected = math.exp(-sum(logp[i].item() for i in ids[1:]) / (len(ids) - 1))
    assert evaluate.perplexity(model, tok, TEXT, seq_len=seq_len, stride=stride) == pytest.approx(expected, rel=1e-5)


def test_perplexity_rejects_a_bad_stride():
    with pytest.raises(ValueError, match="stride"):
        evaluate.perplexity(tiny_llama(), tiny_tokenizer(), TEXT, seq_len=8, stride=0)


# ---------------------------------------------------------------------------------------------
# Generation and accuracy
# ---------------------------------------------------------------------------------------------
def test_left_padded_batch_generation_equals_one_by_one():
    tok, model = tiny_tokenizer(), tiny_llama(seed=3)
    prompts = ["the cat", "what colour is the sky ?", "a dog sat on the mat and ran", "red"]
    together = evaluate.generate(model, tok, prompts, max_new_tokens=8)
    alone = [evaluate.generate(model, tok, [p], max_new_tokens=8)[0] for p in prompts]
    assert together == alone
    assert all(isinstance(t, str) for t in together) and any(together)
    assert tok.padding_side == "left" and not model.training


def test_evaluation_restores_training_mode():
    tok, model = tiny_tokenizer(), tiny_llama()
    model.train()
    evaluate.perplexity(model, tok, TEXT, seq_len=16)
    assert model.training


def test_accuracy_counts_argmax_hits():
    from transformers import BertConfig, BertForSequenceClassification
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=len(WORDS), hidden_size=32, num_hidden_layers=2,
                                                     num_attention_heads=2, intermediate_size=64, num_labels=2)).eval()
    tok = tiny_tokenizer()
    texts = ["the cat sat", "the dog ran on the mat", "red", "green blue", "what is the sky ?"]
    with torch.no_grad():
        preds = [model(**tok([t], return_tensors="pt")).logits.argmax(-1).item() for t in texts]
    examples = [{"text": t, "label": p if i % 2 else 1 - p} for i, (t, p) in enumerate(zip(texts, preds))]
    assert evaluate.accuracy(model, tok, examples, seq_len=16, batch_size=2) == pytest.approx(2 / 5)


# ---------------------------------------------------------------------------------------------
# Per-example losses and paired differences
# ---------------------------------------------------------------------------------------------
PAIRS = [{"prompt": "what colour is the sky", "response": "blue"},
         {"prompt": "what colour is the grass", "response": "green and red"},
         {"prompt": "the cat sat on the mat", "response": "a dog ran on the mat"}]


def test_example_losses_are_each_examples_own_eval_loss_whatever_the_batch():
    tok, model = tiny_tokenizer(), tiny_llama()
    one_by_one = [evaluate.eval_loss(model, tok, "define", [ex], seq_len=32) for ex in PAIRS]
    batched = evaluate.example_losses(model, tok, "define", PAIRS, seq_len=32, batch_size=3)
    assert batched == pytest.approx(one_by_one, rel=1e-5)  # padding a row changes nothing
    assert len(set(round(x, 4) for x in batched)) == 3       # three different numbers, not one mean


OPENED = [{"prompt": "Question : the cat sat on the mat . " + ex["prompt"], "response": ex["response"]}
          for ex in PAIRS]  # rows that start alike, as a chat template's system prompt makes them


def tokens_read(model) -> list[int]:
    """Counts the input tokens of every forward of `model` (its embedding sees each one)."""
    seen = []
    model.get_input_embeddings().register_forward_hook(lambda m, args, out: seen.append(args[0].numel()))
    return seen


@pytest.mark.parametrize("method, shared", [(None, True), ("lora", True), ("prompt", False)])
def test_held_out_scoring_reads_a_shared_opening_once_with_the_same_numbers(monkeypatch, method, shared):
    from labs.surgery import AdapterRecord
    tok, model = tiny_tokenizer(), tiny_llama(seed=3)
    if method:
        model.labs_adapter = AdapterRecord(method, None, f"labs.{method}")
    seen = tokens_read(model)
    scores = evaluate.score_examples(model, tok, "define", OPENED, seq_len=32, batch_size=3)
    loss = evaluate.eval_loss(model, tok, "define", OPENED, seq_len=32, batch_size=3)
    read, width = sum(seen), max(len(tok(f"{ex['prompt']} {ex['response']}").input_ids) for ex in OPENED)
    assert (read < 2 * 3 * width) == shared      # two passes over 3 rows: fewer tokens when the opening is shared
    monkeypatch.setattr(evaluate, "_reads_cache", lambda model: False)
    whole = evaluate.score_examples(model, tok, "define", OPENED, seq_len=32, batch_size=3)
    assert scores.losses == pytest.approx(whole.losses, abs=1e-5) and scores.targets == whole.targets
    assert loss == pytest.approx(evaluate.eval_loss(model, tok, "define", OPENED, seq_len=32, batch_size=3), abs=1e-5)


def test_example_losses_of_a_classifier_are_per_row_cross_entropies():
    from transformers import BertConfig, BertForSequenceClassification
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=len(WORDS), hidden_size=32, num_hidden_layers=2,
                                                     num_attention_heads=2, intermediate_size=64, num_labels=2)).eval()
    tok = tiny_tokenizer()
    examples = [{"text": "the cat sat", "label": 0}, {"text": "the dog ran on the mat", "label": 1}]
    losses = evaluate.example_losses(model, tok, "sentiment", examples, seq_len=16, batch_size=2)
    single = [evaluate.eval_loss(model, tok, "sentiment", [ex], seq_len=16) for ex in examples]
    assert losses == pytest.approx(single, rel=1e-5)


def test_one_scoring_pass_gives_the_pooled_loss_and_accuracy_of_evaluate_task():
    from transformers import BertConfig, BertForSequenceClassification
    from labs.presets import get_preset
    tok, model = tiny_tokenizer(), tiny_llama()
    scores = evaluate.score_examples(model, tok, "define", PAIRS, seq_len=32, batch_size=2)
    assert scores.correct is None and 0 < scores.targets[0] < scores.targets[1] < scores.targets[2]  # 1, 3, 6 words
    assert scores.loss == pytest.approx(evaluate.eval_loss(model, tok, "define", PAIRS, seq_len=32), rel=1e-5)
    preset = get_preset("quick", seq_len=32, batch_size=2)
    assert evaluate.evaluate_task(model, tok, "define", PAIRS, preset)["loss"] == pytest.approx(scores.loss)
    torch.manual_seed(0)
    classifier = BertForSequenceClassification(BertConfig(vocab_size=len(WORDS), hidden_size=32, num_hidden_layers=2,
                                                          num_attention_heads=2, intermediate_size=64, num_labels=2)).eval()
    examples = [{"text": "the cat sat", "label": 0}, {"text": "the dog ran on the mat", "label": 1},
                {"text": "the mat", "label": 1}]
    scored = evaluate.score_examples(classifier, tok, "sentiment", examples, seq_len=16, batch_size=2)
    assert sum(scored.correct) / 3 == evaluate.accuracy(classifier, tok, examples, seq_len=16)
    assert scored.loss == pytest.approx(evaluate.eval_loss(classifier, tok, "sentiment", examples, seq_len=16), rel=1e-5)


def test_paired_difference_is_the_mean_difference_and_its_standard_error():
    mean, se = evaluate.paired_difference([1.0, 2.0, 3.0], [0.0, 2.0, 1.0])  # differences 1, 0, 2
    assert mean == pytest.approx(1.0) and se == pytest.approx(1.0 / math.sqrt(3))
    with pytest.raises(ValueError, match="same examples"):
        evaluate.paired_difference([1.0, 2.0], [1.0])
