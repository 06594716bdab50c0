"""Tasks and data: real, licensed, offline examples from data/, and the batches a model trains on.

    task = get_task("sentiment")                     # Task(kind="classify", labels=("negative", "positive"))
    train = load_examples("sentiment", "train", n=400)
    batch = collate(train[:8], tokenizer, task, seq_len=64)   # input_ids, attention_mask, labels

Examples by kind: classify {"text", "label" (int)}; generate {"prompt", "response"}; lm {"text"}.
Splits are fixed by a hash of each example's key (80% train, 10% validation, 10% test), so they
never change with n or seed and a key (a QA question, a defined word) lives in one split only.
Files and their licences: data/PROVENANCE.md ($LABS_DATA points elsewhere). When online with the
`datasets` package installed, a Hugging Face dataset name ("owner/name") works as a task name.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
from dataclasses import dataclass
from functools import lru_cache
from itertools import zip_longest
from pathlib import Path
from typing import Iterator

import torch

from labs import user_data

DATA_DIR = Path(os.environ.get("LABS_DATA", Path(__file__).resolve().parent.parent / "data"))
SPLITS = ("train", "validation", "test")
CHUNK_CHARS = 600       # lm chunks (characters): about 150 tokens, one row at the laptop preset
IGNORE = -100           # label value the loss skips (prompt tokens, padding)


@dataclass(frozen=True)
class Task:
    name: str                       # registry key: "sentiment", "define", "austen", ...
    kind: str                       # "classify" | "generate" | "lm": decides examples, collation, metric
    labels: tuple[str, ...] | None  # class names for classify tasks (label id = index), else None
    description: str                # one line for tables and --help
    source: str                     # a file in data/, or a Hugging Face dataset name for online tasks


TASKS = {t.name: t for t in (
    Task("sentiment", "classify", ("negative", "positive"),
         "Rotten Tomatoes review snippets, positive or negative (Pang & Lee)", "rotten_tomatoes.jsonl.gz"),
    Task("topic", "classify", ("animal", "artifact", "body", "food", "person", "plant"),
         "WordNet noun definitions by lexicographer class", "wordnet_topic.jsonl.gz"),
    Task("define", "generate", None, 'WordNet: Define the word "X". -> its first gloss',
         "wordnet_define.jsonl.gz"),
    Task("qa", "generate", None, "chatterbot-corpus question/answer pairs", "chatterbot_qa.jsonl.gz"),
    Task("austen", "lm", None, "Jane Austen's six novels (excerpts)", "austen.jsonl.gz"),
    Task("kjv", "lm", None, "King James Bible (Genesis, Ruth, Esther, Jonah, Psalms)", "kjv.jsonl.gz"),
    Task("moby", "lm", None, "Herman Melville, Moby Dick (opening chapters)", "moby_dick.jsonl.gz"),
    Task("hamlet", "lm", None, "William Shakespeare, Hamlet (whole play)", "hamlet.jsonl.gz"),
)}
CORPORA = tuple(name for name, t in TASKS.items() if t.kind == "lm")
OFFLINE = ", ".join(TASKS)


def get_task(name: str) -> Task:
    """The registered task `name`; a name with a slash is a Hugging Face dataset (online only)."""
    if isinstance(name, Task):
        return name
    if not isinstance(name, str):
        raise TypeError(f"task must be a task name (str), got {type(name).__name__}")
    if name in TASKS:
        return TASKS[name]
    if user_data.looks_like_data(name):  # your own file: labs/user_data.py
        return user_data.user_task(name)
    if "/" in name:
        return _hf_task(name)
    raise ValueError(f"unknown task {name!r}; offline tasks: {OFFLINE}; or a data file of your own "
                     "(.jsonl, .json, .csv, .txt or a folder of .txt); or a Hugging Face dataset name "
                     "such as 'owner/name' when online")


# ------------------------------------------------------------------ reading data/

@lru_cache(maxsize=None)
def _rows(filename: str) -> tuple[dict, ...]:
    """Every record of one data file, in file order (cached: files are small and read-only)."""
    path = DATA_DIR / filename
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; rebuild data/ with `python tools/build_data.py`")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return tuple(json.loads(line) for line in f if line.strip())


def _split_of(key: str) -> str:
    """Stable split from a hash of the key: buckets 0-7 train, 8 validation, 9 test."""
    bucket = int(hashlib.sha1(key.encode("utf-8")).hexdigest()[:8], 16) % 10
    return SPLITS[0] if bucket < 8 else SPLITS[bucket - 7]


def _cut(text: str, limit: int) -> int:
    """Where to cut an over-long paragraph: the last line end, else sentence end, else clause, else space."""
    for sep in ("\n", ". ", "; ", " "):
        at = text.rfind(sep, limit // 2, limit)
        if at > 0:
            return at + len(sep)
    return limit


def _pack(paragraphs: list[str], limit: int = CHUNK_CHARS) -> list[str]:
    """Consecutive paragraphs joined into chunks of at most `limit` characters."""
    pieces = []
    for par in paragraphs:
        while len(par) > limit:
            cut = _cut(par, limit)
            pieces.append(par[:cut].strip())
            par = par[cut:].strip()
        pieces.append(par)
    chunks, current = [], ""
    for piece in pieces:
        if current and len(current) + 2 + len(piece) > limit:
            chunks.append(current)
            current = ""
        current = f"{current}\n\n{piece}" if current else piece
    return chunks + ([current] if current else [])


def _examples(task: Task) -> list[tuple[str, dict]]:
    """(split key, example) for every example of an offline task, in file order."""
    rows = _rows(task.source)
    if task.name == "sentiment":
        return [(r["text"], {"text": r["text"], "label": task.labels.index(r["label"])}) for r in rows]
    if task.name == "topic":
        return [(r["word"], {"text": f"{r['word']}: {r['definition']}", "label": task.labels.index(r["label"])})
                for r in rows]
    if task.name == "define":
        return [(r["word"], {"prompt": f'Define the word "{r["word"]}".', "response": r["definition"]})
                for r in rows]
    if task.name == "qa":   # keyed by question: all answers of one question share a split
        return [(r["question"], {"prompt": r["question"], "response": r["answer"]}) for r in rows]
    return [(chunk, {"text": chunk}) for chunk in _pack([r["text"] for r in rows])]


def _check_split_n(split: str, n) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int)):
        raise TypeError(f"n must be an int or None, got {n!r}")
    if n is not None and n < 0:
        raise ValueError(f"n must be >= 0 (or None for all), got {n}")


def _order(examples: list[dict], kind: str, seed: int) -> list[dict]:
    """Seeded shuffle; classify tasks alternate labels so any first n is as balanced as the data allows."""
    rng = random.Random(seed)
    if kind != "classify":
        examples = list(examples)
        rng.shuffle(examples)
        return examples
    by_label = {}
    for ex in examples:
        by_label.setdefault(ex["label"], []).append(ex)
    for group in by_label.values():
        rng.shuffle(group)
    rounds = zip_longest(*(by_label[k] for k in sorted(by_label)))
    return [ex for rnd in rounds for ex in rnd if ex is not None]


def load_examples(task_name: str, split: str = "train", n: int | None = None, seed: int = 0) -> list[dict]:
    """The first n examples of `split` in a seeded shuffle (all when n is None or larger).

    Classify tasks come label-interleaved, so the first n are balanced while every label lasts.
    """
    _check_split_n(split, n)
    task = get_task(task_name)
    if user_data.is_user_task(task):
        pool = user_data.user_examples(task, split)
    elif task.name not in TASKS:
        pool = _hf_examples(task, split)
    else:
        pool = [dict(ex) for key, ex in _examples(task) if _split_of(key) == split]
    return _order(pool, task.kind, seed)[:n]


def load_corpus(name: str) -> str:
    """The whole text of one public-domain corpus (austen, kjv, moby, hamlet), paragraphs by blank lines."""
    if name not in CORPORA:
        raise ValueError(f"unknown corpus {name!r}; choose one of {', '.join(CORPORA)}")
    return "\n\n".join(r["text"] for r in _rows(TASKS[name].source))


def load_probe(n: int | None = None, seed: int = 0) -> list[dict]:
    """General-knowledge multiple-choice items {"id", "question", "choices", "answer", "topic"}.

    The first n of a seeded shuffle (all 300 when n is None or larger), so a small n mixes topics.
    """
    _check_split_n("train", n)
    items = [dict(item, choices=list(item["choices"])) for item in _rows("probe_general_knowledge.jsonl")]
    random.Random(seed).shuffle(items)
    return items[:n]


# ------------------------------------------------------------------ tokenizing and batching

def _has_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def format_prompt(tokenizer, prompt: str) -> str:
    """The full text a decoder sees before its answer, special tokens included.

    Chat models get their own template (user turn + assistant header); others get
    "Question: ...\\nAnswer:" (after BOS when the tokenizer adds one). Tokenize the result with
    add_special_tokens=False. The order (prompt, tokenizer) is accepted too.
    """
    if isinstance(tokenizer, str) and not isinstance(prompt, str):
        tokenizer, prompt = prompt, tokenizer
    if _has_template(tokenizer):
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                             add_generation_prompt=True, tokenize=False)
    bos = tokenizer.bos_token if getattr(tokenizer, "add_bos_token", False) and tokenizer.bos_token else ""
    return f"{bos}Question: {prompt.strip()}\nAnswer:"


def _prompt_response(tokenizer, ex: dict, seq_len: int) -> tuple[list[int], list[int]]:
    """(input ids, labels) of one generate example: the prompt masked, response + EOS supervised.

    Too long: the prompt loses its start (its end holds the answer cue) so that up to half of
    seq_len stays for the response.
    """
    if tokenizer.eos_token_id is None:
        raise ValueError("generate tasks need a tokenizer with an eos token to end the response")
    if "messages" in ex:    # a whole chat (your own data): every assistant turn is supervised
        return user_data.chat_ids(tokenizer, ex["messages"], seq_len)
    prompt = tokenizer(format_prompt(tokenizer, ex["prompt"]), add_special_tokens=False)["input_ids"]
    text = ex["response"] if _has_template(tokenizer) else " " + ex["response"].strip()
    response = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    if len(prompt) + len(response) > seq_len:
        prompt = prompt[-(seq_len - min(len(response), seq_len // 2)):]
        response = response[:seq_len - len(prompt)]
    return prompt + response, [IGNORE] * len(prompt) + response


def _pad(rows: list[list[int]], value: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([r + [value] * (width - len(r)) for r in rows], dtype=torch.long)  # (B, T)


def collate(examples: list[dict], tokenizer, task: Task | str, seq_len: int) -> dict[str, torch.Tensor]:
    """Right-padded training batch: input_ids (B, T), attention_mask (B, T), labels.

    classify: labels (B,) class ids. generate: labels (B, T), -100 on prompt and padding.
    lm: labels (B, T) = input_ids with -100 on padding. T <= seq_len (the longest row).
    """
    task = get_task(task)
    if not examples:
        raise ValueError("collate needs at least one example")
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 2:
        raise ValueError(f"seq_len must be an int >= 2, got {seq_len!r}")
    if tokenizer.pad_token_id is None:
        raise ValueError("the tokenizer has no pad token; set one (e.g. tokenizer.pad_token = tokenizer.eos_token)")
    if task.kind == "generate":
        ids, targets = map(list, zip(*(_prompt_response(tokenizer, ex, seq_len) for ex in examples)))
    else:
        ids = [tokenizer(ex["text"], truncation=True, max_length=seq_len)["input_ids"] for ex in examples]
        targets = ids
    input_ids = _pad(ids, tokenizer.pad_token_id)                         # (B, T)
    attention_mask = _pad([[1] * len(r) for r in ids], 0)                 # (B, T)
    if task.kind == "classify":
        labels = torch.tensor([ex["label"] for ex in examples], dtype=torch.long)   # (B,)
    else:
        labels = _pad(targets, IGNORE)                                    # (B, T)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def batches(examples: list[dict], tokenizer, task: Task | str, seq_len: int, batch_size: int,
            seed: int = 0, shuffle: bool = True, epochs: int | None = 1) -> Iterator[dict[str, torch.Tensor]]:
    """Collated batches of `batch_size` (the last may be smaller).

    Finite by default: `epochs` passes over the examples, each in a new seeded order when
    `shuffle`; epochs=None repeats forever (for a loop that stops at max_steps).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if not examples:
        raise ValueError("batches needs at least one example")
    rng, epoch = random.Random(seed), 0
    while epochs is None or epoch < epochs:
        order = list(examples)
        if shuffle:
            rng.shuffle(order)
        for i in range(0, len(order), batch_size):
            yield collate(order[i:i + batch_size], tokenizer, task, seq_len)
        epoch += 1


# ------------------------------------------------------------------ Hugging Face datasets (online)

@lru_cache(maxsize=None)
def _hf_dataset(name: str):
    try:
        import datasets
    except ImportError:
        raise ValueError(f"{name!r} looks like a Hugging Face dataset, which needs the `datasets` "
                         f"package and a network connection; offline tasks: {OFFLINE}") from None
    return datasets.load_dataset(name)


_PAIRS = (("instruction", "output"), ("question", "answer"), ("prompt", "response"), ("prompt", "completion"))
_TEXTS = ("text", "sentence", "review", "content")


def _hf_task(name: str) -> Task:
    """Infer kind and labels from the columns: a text + label -> classify, a pair -> generate, text -> lm."""
    ds = _hf_dataset(name)
    first = ds[next(iter(ds))]
    cols = set(first.column_names)
    text = next((c for c in _TEXTS if c in cols), None)
    if text and "label" in cols:
        names = getattr(first.features.get("label"), "names", None)   # a ClassLabel has names
        labels = tuple(names) if names else tuple(str(v) for v in sorted(set(first["label"])))
        return Task(name, "classify", labels, f"Hugging Face dataset {name}", name)
    if any(p in cols and r in cols for p, r in _PAIRS):
        return Task(name, "generate", None, f"Hugging Face dataset {name}", name)
    if text:
        return Task(name, "lm", None, f"Hugging Face dataset {name}", name)
    raise ValueError(f"cannot tell the task kind of {name!r} from its columns {sorted(cols)}; "
                     f"expected one of {_TEXTS} (+ label) or a pair such as {_PAIRS[0]}")


def _hf_row(task: Task, cols: set, row: dict) -> tuple[str, dict]:
    """(split key, example) of one dataset row, in the offline tasks' shape."""
    text = next((c for c in _TEXTS if c in cols), None)
    if task.kind == "classify":
        label = row["label"] if isinstance(row["label"], int) else task.labels.index(str(row["label"]))
        return row[text], {"text": row[text], "label": label}
    if task.kind == "lm":
        return row[text], {"text": row[text]}
    p, r = next((p, r) for p, r in _PAIRS if p in cols and r in cols)
    prompt = row[p] + (f"\n\n{row['input']}" if row.get("input") else "")
    return prompt, {"prompt": prompt, "response": row[r]}


def _hf_examples(task: Task, split: str) -> list[dict]:
    """The dataset's own split when it has all three, else a hash split of its train split."""
    ds = _hf_dataset(task.source)
    own = all(s in ds for s in SPLITS)
    part = ds[split if own else ("train" if "train" in ds else next(iter(ds)))]
    cols = set(part.column_names)
    pairs = (_hf_row(task, cols, row) for row in part)
    return [ex for key, ex in pairs if own or _split_of(key) == split]
