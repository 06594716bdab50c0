"""Your own data as a task: `labs finetune --task my_data.jsonl`, or task="my_data.jsonl" in Python.

One file holds rows of one shape; the shape decides the kind of task:

    chat      {"messages": [{"role": "user", "content": ...}, {"role": "assistant", ...}, ...]}
              -> generate: formatted with the model's chat template, the loss on assistant turns only
    pair      prompt/response, instruction/output (+ input), question/answer  -> generate
    labelled  text + label                                                    -> classify
    text      text                                                            -> lm (chunked like a corpus)

Files: .jsonl (one JSON object a line), .json (a list of objects), .csv (a header row naming the
same columns; no chats), .txt or a folder of .txt files (a corpus: language modelling).
Rows split into train / validation / test by a hash of each row (labs.data's 80/10/10), so adding
rows never moves the others. Every problem is a DataError naming the file, the line and what is
wrong; nothing is written before the whole file has been read and checked.
"""
from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

SUFFIXES = (".jsonl", ".json", ".csv", ".txt")
PAIRS = (("prompt", "response"), ("instruction", "output"), ("question", "answer"))
ROLES = ("system", "user", "assistant")
KINDS = {"chat": "generate", "pair": "generate", "labelled": "classify", "text": "lm"}
SHAPES = ('accepted shapes: a chat {"messages": [{"role": "user", "content": ...}, {"role": "assistant", '
          '"content": ...}]}; a pair (prompt/response, instruction/output (+input), question/answer); '
          '"text" (language modelling); "text" + "label" (classification); in .jsonl, .json, .csv, '
          'or plain .txt files (a corpus)')
MIN_ROWS_HINT = "about 10% of rows go to validation, so a file needs some 20 rows or more"


class DataError(ValueError):
    """A problem in a learner's data file, said with the file, the line and what is wrong."""


@dataclass(frozen=True)
class Parsed:
    shape: str                           # chat | pair | labelled | text
    labels: tuple[str, ...] | None       # class names (labelled), in sorted order
    splits: dict                         # split -> [(where, example)], where = "line 12" etc.


def looks_like_data(name) -> bool:
    """A task name that names a data file or folder (rather than a built-in task or a Hub dataset)."""
    if not isinstance(name, (str, os.PathLike)):
        return False
    path = Path(name)
    return path.suffix.lower() in SUFFIXES or path.is_dir()


def user_task(name):
    """The Task of the data file `name`; the file is read and checked now (DataError if it is bad)."""
    from labs.data import Task
    path = Path(name)
    parsed = parse(path)
    n = sum(len(rows) for rows in parsed.splits.values())
    return Task(str(name), KINDS[parsed.shape], parsed.labels, f"your data: {path.name} ({n} {parsed.shape} rows)",
                str(path))


def is_user_task(task) -> bool:
    from labs.data import TASKS
    return task.name not in TASKS and looks_like_data(task.source)


def user_examples(task, split: str) -> list[dict]:
    """The examples of one split (copies: callers may change them)."""
    return [dict(ex) for _, ex in parse(Path(task.source)).splits[split]]


def source_files(path) -> list[Path]:
    """The files a data task reads: the file, or the .txt files of a folder, sorted."""
    path = Path(path)
    return sorted(path.glob("*.txt")) if path.is_dir() else [path]


def parse(path: Path) -> Parsed:
    """Read, check and split `path` (cached until the file changes)."""
    if not path.exists():
        raise FileNotFoundError(f"data file {path} not found; {SHAPES}")
    stamp = tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in source_files(path))
    return _parse(str(path), stamp)


@lru_cache(maxsize=16)
def _parse(name: str, stamp) -> Parsed:
    path = Path(name)
    rows = _text_rows(path) if path.is_dir() or path.suffix.lower() == ".txt" else _rows(path)
    if not rows:
        raise DataError(f"{path}: no rows (the file holds nothing but blank lines); {SHAPES}")
    shape = _common_shape(path, rows)
    examples = [(where, _example(path, where, shape, row)) for where, row in rows]
    if shape == "text":     # long texts become corpus-sized chunks, as the course's own corpora do
        from labs.data import _pack
        examples = [(where, {"text": chunk}) for where, ex in examples for chunk in _pack([ex["text"]])]
    return _split(path, shape, examples)


# ------------------------------------------------------------------ reading the file

def _decoded(path: Path) -> str:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise DataError(f"{path}, line {line}: not UTF-8 text (byte 0x{data[err.start]:02x}); save the file "
                        "as UTF-8 (most editors offer it under 'Save as' / 'Encoding')") from None
    if not text.strip():
        raise DataError(f"{path}: the file is empty; {SHAPES}")
    return text


def _rows(path: Path) -> list[tuple[str, dict]]:
    """(where, row) for every row of a .jsonl, .json or .csv file."""
    text, suffix = _decoded(path), path.suffix.lower()
    if suffix == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        rows = []
        for row in reader:
            rows.append((f"line {reader.line_num}", {k.strip(): v for k, v in row.items() if k and v not in (None, "")}))
        return rows
    if suffix == ".json":
        try:
            items = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}, line {err.lineno}: malformed JSON ({err.msg}, column {err.colno})") from None
        if not isinstance(items, list):
            raise DataError(f"{path}: a .json file must hold a list of rows [{{...}}, ...], not a "
                            f"{type(items).__name__}; {SHAPES}")
        return [_object(path, f"item {i}", item) for i, item in enumerate(items, 1)]
    rows = []
    for i, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(_object(path, f"line {i}", json.loads(line)))
            except json.JSONDecodeError as err:
                raise DataError(f"{path}, line {i}: malformed JSON ({err.msg}, column {err.colno}); a .jsonl "
                                "file holds one JSON object per line") from None
    return rows


def _object(path: Path, where: str, item) -> tuple[str, dict]:
    if not isinstance(item, dict):
        raise DataError(f"{path}, {where}: a row must be a JSON object {{...}}, not a {type(item).__name__}")
    return where, item


def _text_rows(path: Path) -> list[tuple[str, dict]]:
    """A .txt file, or every .txt file of a folder: paragraphs packed into chunks like the course's corpora."""
    from labs.data import _pack
    files = source_files(path)
    if not files:
        raise DataError(f"{path}: the folder holds no .txt files; {SHAPES}")
    rows = []
    for file in files:
        paragraphs = [p.strip() for p in _decoded(file).split("\n\n") if p.strip()]
        rows += [(f"{file.name}, chunk {i}", {"text": chunk}) for i, chunk in enumerate(_pack(paragraphs), 1)]
    return rows


# ------------------------------------------------------------------ shapes and examples

def shape_of(row: dict) -> str | None:
    if "messages" in row:
        return "chat"
    if any(p in row and r in row for p, r in PAIRS):
        return "pair"
    if "text" in row:
        return "labelled" if "label" in row else "text"
    return None


def _common_shape(path: Path, rows: list[tuple[str, dict]]) -> str:
    first_where, first = rows[0]
    for where, row in rows:
        shape = shape_of(row)
        if shape is None:
            raise DataError(f"{path}, {where}: a row without the expected fields (it has: "
                            f"{', '.join(sorted(row)) or 'nothing'}); {SHAPES}")
        if shape != shape_of(first):
            raise DataError(f"{path}, {where}: a {shape} row, but {first_where} is a {shape_of(first)} row; "
                            "one file holds rows of one shape")
    return shape_of(first)


def _text(path: Path, where: str, row: dict, field: str) -> str:
    value = row.get(field)
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{path}, {where}: {field!r} must be non-empty text, got {value!r}")
    return value


def _example(path: Path, where: str, shape: str, row: dict) -> dict:
    if shape == "chat":
        return _chat_example(path, where, row["messages"])
    if shape == "pair":
        p, r = next((p, r) for p, r in PAIRS if p in row and r in row)
        prompt = _text(path, where, row, p)
        if row.get("input"):
            prompt += "\n\n" + _text(path, where, row, "input")
        return {"prompt": prompt, "response": _text(path, where, row, r)}
    text = _text(path, where, row, "text")
    if shape == "text":
        return {"text": text}
    label = row["label"]
    if isinstance(label, bool) or not isinstance(label, (str, int)) or not str(label).strip():
        raise DataError(f"{path}, {where}: 'label' must be a class name or a whole number, got {label!r}")
    return {"text": text, "label": str(label).strip()}


def _chat_example(path: Path, where: str, messages) -> dict:
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{path}, {where}: 'messages' must be a non-empty list of turns "
                        '{"role": ..., "content": ...}')
    for i, turn in enumerate(messages, 1):
        if not isinstance(turn, dict) or turn.get("role") not in ROLES or not isinstance(turn.get("content"), str):
            raise DataError(f"{path}, {where}: turn {i} of 'messages' must be {{\"role\": one of {', '.join(ROLES)}, "
                            f"\"content\": text}}, got {turn!r}")
    roles = [t["role"] for t in messages]
    if "assistant" not in roles:
        raise DataError(f"{path}, {where}: the chat has no assistant turn, so there is nothing to learn")
    if roles[0] == "assistant" or roles[:2] == ["system", "assistant"]:
        raise DataError(f"{path}, {where}: the chat starts with the assistant; it must start with a user "
                        "(or system) turn")
    last = max(i for i, r in enumerate(roles) if r == "assistant")
    prompt = next(t["content"] for t in reversed(messages[:last]) if t["role"] == "user")
    # prompt/response: the last exchange, for generations shown before and after training
    return {"messages": [dict(role=t["role"], content=t["content"]) for t in messages[:last + 1]],
            "prompt": prompt, "response": messages[last]["content"]}


def split_of(example: dict) -> str:
    """The split of one example, from a hash of all it holds: the same row always lands in the same split."""
    from labs.data import _split_of
    return _split_of(json.dumps(example, sort_keys=True, ensure_ascii=False))


def _split(path: Path, shape: str, examples: list[tuple[str, dict]]) -> Parsed:
    from labs.data import SPLITS
    splits = {s: [] for s in SPLITS}
    for where, ex in examples:
        splits[split_of(ex)].append((where, ex))
    n = len(examples)
    for split in SPLITS[:2]:
        if not splits[split]:
            raise DataError(f"{path}: {n} rows, and the hash split gave none to {split}; {MIN_ROWS_HINT}")
    labels = None
    if shape == "labelled":
        labels = tuple(sorted({ex["label"] for _, ex in splits["train"]}))
        if len(labels) < 2:
            raise DataError(f"{path}: every training row has label {labels[0]!r}; classification needs two "
                            "labels or more")
        for split in SPLITS[1:]:
            for where, ex in splits[split]:
                if ex["label"] not in labels:
                    raise DataError(f"{path}, {where}: label {ex['label']!r} (a {split} row) is in no training "
                                    f"row; the training rows have {', '.join(map(repr, labels))}. Add training "
                                    "rows with it, or fix the label")
        for rows in splits.values():
            for _, ex in rows:
                ex["label"] = labels.index(ex["label"])
    return Parsed(shape, labels, splits)


# ------------------------------------------------------------------ tokens: chats, lengths, truncation

def chat_ids(tokenizer, messages: list[dict], seq_len: int) -> tuple[list[int], list[int]]:
    """(input ids, labels) of one chat: labels on assistant turns (their end-of-turn included), the
    rest -100; at most seq_len tokens (the end is cut)."""
    from labs.data import IGNORE
    ids, labels = [], []
    for text, trained in _chat_segments(tokenizer, messages):
        piece = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += piece
        labels += piece if trained else [IGNORE] * len(piece)
    return ids[:seq_len], labels[:seq_len]


def _chat_segments(tokenizer, messages: list[dict]) -> list[tuple[str, bool]]:
    """The chat as (text, trained) pieces, in order: what the template puts before each assistant
    turn is not trained, the turn itself is."""
    if not getattr(tokenizer, "chat_template", None):
        eos = tokenizer.eos_token or ""
        return [(f"{t['role'].capitalize()}: {t['content']}\n", False) if t["role"] != "assistant"
                else (f"Assistant: {t['content']}{eos}\n", True) for t in messages]
    render = lambda turns, cue=False: tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=cue)
    segments, done = [], ""
    for i, turn in enumerate(messages):
        if turn["role"] != "assistant":
            continue
        head, whole = render(messages[:i], True), render(messages[:i + 1])
        if not head.startswith(done) or not whole.startswith(head):
            raise ValueError("this tokenizer's chat template does not render a conversation turn by turn; "
                             "give the rows as prompt/response pairs instead")
        segments += [(head[len(done):], False), (whole[len(head):], True)]
        done = whole
    return segments


def token_lengths(task, tokenizer) -> dict[str, list[int]]:
    """Tokens of each example, by split, as training would see them uncut."""
    from labs.data import _has_template, format_prompt
    out = {}
    for split, rows in parse(Path(task.source)).splits.items():
        lengths = []
        for _, ex in rows:
            if "messages" in ex:
                lengths.append(len(chat_ids(tokenizer, ex["messages"], 10**9)[0]))
            elif "response" in ex:
                text = format_prompt(tokenizer, ex["prompt"]) + (ex["response"] if _has_template(tokenizer)
                                                                 else " " + ex["response"].strip())
                lengths.append(len(tokenizer(text, add_special_tokens=False)["input_ids"]) + 1)   # + EOS
            else:
                lengths.append(len(tokenizer(ex["text"])["input_ids"]))
        out[split] = lengths
    return out


def report(task, tokenizer, preset) -> str:
    """Split sizes and how many rows the preset's length cuts; DataError for a row no preset can hold."""
    from labs.presets import PRESETS
    parsed, lengths = parse(Path(task.source)), token_lengths(task, tokenizer)
    longest = max(PRESETS.values(), key=lambda p: p.seq_len)
    if parsed.shape != "text":      # text is chunked to fit; other rows are cut at the end
        for split, rows in parsed.splits.items():
            for (where, _), n in zip(rows, lengths[split]):
                if n > longest.seq_len:
                    raise DataError(f"{task.source}, {where}: {n} tokens, longer than any preset trains on "
                                    f"(the {longest.name} preset's {longest.seq_len}); shorten the row or split "
                                    "it into several")
    sizes = ", ".join(f"{split} {len(rows)}" for split, rows in parsed.splits.items())
    lines = [f"{task.source}: {sum(map(len, lengths.values()))} {parsed.shape} rows ({task.kind} task); "
             f"split by a hash of each row: {sizes}"]
    if parsed.labels:
        lines.append(f"  labels: {', '.join(parsed.labels)}")
    every = [n for split in lengths.values() for n in split]
    cut = [n - preset.seq_len for n in every if n > preset.seq_len]
    what = "answers cut short" if task.kind == "generate" else "rows cut"
    lines.append(f"  tokens per row: median {sorted(every)[len(every) // 2]}, longest {max(every)}; the "
                 f"{preset.name} preset keeps {preset.seq_len}: " +
                 (f"{len(cut)} of {len(every)} {what} ({100 * len(cut) / len(every):.0f}%), by "
                  f"{sum(cut) / len(cut):.0f} tokens on average, {max(cut)} at most" if cut else "nothing is cut"))
    return "\n".join(lines)
