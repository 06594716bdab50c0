"""Your own data as a task (labs/user_data.py): every shape, the hash split, and every bad input."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from labs import cli, user_data
from labs.data import IGNORE, SPLITS, collate, get_task, load_examples
from labs.presets import get_preset
from labs.user_data import DataError


@pytest.fixture(scope="module")
def smol_tokenizer():
    from labs.models import _tokenizer_from, cache_path, is_cached
    if not is_cached("smollm2-135m"):
        pytest.skip("smollm2-135m is not converted yet (labs assets)")
    return _tokenizer_from(cache_path("smollm2-135m"))


def chat(i: int) -> dict:
    return {"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                         {"role": "assistant", "content": f"{2 * i}."},
                         {"role": "user", "content": "And doubled?"},
                         {"role": "assistant", "content": f"{4 * i}."}]}


ROWS = {
    "chat": [chat(i) for i in range(40)],
    "pair": [{"prompt": f"Name {i}", "response": f"Number {i}"} for i in range(40)],
    "instruction": [{"instruction": f"Say {i}", "input": f"in words {i}", "output": f"word {i}"} for i in range(40)],
    "question": [{"question": f"Is {i} even?", "answer": "yes" if i % 2 == 0 else "no"} for i in range(40)],
    "labelled": [{"text": f"row {i} is {'good' if i % 2 else 'bad'}", "label": "good" if i % 2 else "bad"}
                 for i in range(60)],
    "text": [{"text": f"Paragraph {i} of my own writing."} for i in range(40)],
}
KINDS = {"chat": "generate", "pair": "generate", "instruction": "generate", "question": "generate",
         "labelled": "classify", "text": "lm"}


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.mark.parametrize("shape", list(ROWS))
def test_every_jsonl_shape_gives_its_kind_and_all_rows(tmp_path, shape):
    path = write_jsonl(tmp_path / f"{shape}.jsonl", ROWS[shape])
    task = get_task(str(path))
    assert task.kind == KINDS[shape]
    got = [ex for split in SPLITS for ex in load_examples(str(path), split)]
    assert len(got) == len(ROWS[shape])
    assert load_examples(str(path), "train") and load_examples(str(path), "validation")
    if shape == "labelled":
        assert task.labels == ("bad", "good") and {ex["label"] for ex in got} == {0, 1}
    if shape == "instruction":
        assert all(ex["prompt"].startswith("Say") and "in words" in ex["prompt"] for ex in got)


def test_json_and_csv_read_like_jsonl(tmp_path):
    rows = ROWS["labelled"]
    (tmp_path / "a.json").write_text(json.dumps(rows))
    lines = ["text,label"] + [f"\"{r['text']}\",{r['label']}" for r in rows]
    (tmp_path / "a.csv").write_text("\n".join(lines) + "\n")
    jsonl = write_jsonl(tmp_path / "a.jsonl", rows)
    want = {s: load_examples(str(jsonl), s, seed=1) for s in SPLITS}
    for other in ("a.json", "a.csv"):
        assert {s: load_examples(str(tmp_path / other), s, seed=1) for s in SPLITS} == want


def test_txt_file_and_folder_are_corpora(tmp_path):
    par = "A line of my own prose, long enough to count. " * 4
    (tmp_path / "book").mkdir()
    for i in range(3):
        (tmp_path / "book" / f"ch{i}.txt").write_text("\n\n".join(f"{par} {i}.{j}" for j in range(30)))
    one = tmp_path / "book" / "ch0.txt"
    assert get_task(str(one)).kind == "lm" and get_task(str(tmp_path / "book")).kind == "lm"
    n_one = sum(len(load_examples(str(one), s)) for s in SPLITS)
    n_all = sum(len(load_examples(str(tmp_path / "book"), s)) for s in SPLITS)
    assert 0 < n_one < n_all
    assert all(len(ex["text"]) <= 600 for s in SPLITS for ex in load_examples(str(one), s))


def test_split_is_by_row_hash_so_adding_rows_moves_none(tmp_path):
    small = write_jsonl(tmp_path / "small.jsonl", ROWS["pair"][:30])
    big = write_jsonl(tmp_path / "big.jsonl", ROWS["pair"][:30] + [{"prompt": f"x{i}", "response": "y"}
                                                                 for i in range(50)])
    for split in SPLITS:
        before = {ex["prompt"] for ex in load_examples(str(small), split)}
        after = {ex["prompt"] for ex in load_examples(str(big), split)}
        assert before <= after
        assert not before & {ex["prompt"] for s in SPLITS if s != split for ex in load_examples(str(big), s)}


def test_chat_loss_is_on_assistant_turns_only(tmp_path, smol_tokenizer):
    path = write_jsonl(tmp_path / "chat.jsonl", ROWS["chat"])
    ex = load_examples(str(path), "train", n=1)[0]
    batch = collate([ex], smol_tokenizer, get_task(str(path)), seq_len=256)
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    trained = smol_tokenizer.decode([i for i, lab in zip(ids, labels) if lab != IGNORE])
    answers = [t["content"] for t in ex["messages"] if t["role"] == "assistant"]
    assert trained == "".join(f"{a}<|im_end|>\n" for a in answers)
    assert "plus" not in trained and "doubled" not in trained


def test_report_gives_sizes_and_truncation(tmp_path, smol_tokenizer):
    rows = [{"prompt": f"Question {i}", "response": ("long answer " * 40 if i % 2 else "short")} for i in range(40)]
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    text = user_data.report(get_task(str(path)), smol_tokenizer, get_preset("quick"))
    sizes = {s: len(load_examples(str(path), s)) for s in SPLITS}
    assert f"train {sizes['train']}, validation {sizes['validation']}, test {sizes['test']}" in text
    assert "20 of 40 answers cut short (50%)" in text
    roomy = user_data.report(get_task(str(path)), smol_tokenizer, get_preset("gpu"))
    assert "nothing is cut" in roomy


def test_a_row_too_long_for_every_preset_is_named(tmp_path, smol_tokenizer):
    rows = ROWS["pair"][:39] + [{"prompt": "Tell me everything.", "response": "word " * 400}]
    path = write_jsonl(tmp_path / "long.jsonl", rows)
    with pytest.raises(DataError, match=r"long\.jsonl, line 40: \d+ tokens, longer than any preset"):
        user_data.report(get_task(str(path)), smol_tokenizer, get_preset("quick"))


BAD = {
    "malformed": ('{"prompt": "a", "response": "b"}\n{"prompt": "c", "response": \n',
                  r"bad\.jsonl, line 2: malformed JSON"),
    "no fields": ('{"prompt": "a", "response": "b"}\n{"question": "c"}\n',
                  r"bad\.jsonl, line 2: a row without the expected fields \(it has: question\); accepted shapes"),
    "mixed": ('{"prompt": "a", "response": "b"}\n{"text": "c"}\n',
              r"bad\.jsonl, line 2: a text row, but line 1 is a pair row"),
    "empty": ("\n\n", r"bad\.jsonl: the file is empty; accepted shapes"),
    "not an object": ('["a", "b"]\n', r"bad\.jsonl, line 1: a row must be a JSON object"),
    "empty field": ('{"prompt": "a", "response": ""}\n', r"bad\.jsonl, line 1: 'response' must be non-empty text"),
    "chat without answer": ('{"messages": [{"role": "user", "content": "hi"}]}\n',
                            r"line 1: the chat has no assistant turn"),
    "bad turn": ('{"messages": [{"role": "bot", "content": "hi"}]}\n', r"line 1: turn 1 of 'messages' must be"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_names_file_line_and_problem(tmp_path, case):
    text, message = BAD[case]
    path = tmp_path / "bad.jsonl"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataError, match=message):
        get_task(str(path))


def test_non_utf8_names_the_line(tmp_path):
    path = tmp_path / "latin.jsonl"
    path.write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"latin\.jsonl, line 2: not UTF-8 text \(byte 0xe9\)"):
        get_task(str(path))


def test_label_unseen_in_training_is_named(tmp_path):
    rows = ROWS["labelled"]
    held = next(i for i, r in enumerate(rows)
                if user_data.split_of({"text": r["text"], "label": "rare"}) != "train")
    rows = [dict(r) for r in rows]
    rows[held]["label"] = "rare"
    path = write_jsonl(tmp_path / "labels.jsonl", rows)
    with pytest.raises(DataError, match=rf"labels\.jsonl, line {held + 1}: label 'rare' \(a (validation|test) row\) "
                                        r"is in no training row"):
        get_task(str(path))


def test_too_few_rows_for_a_validation_split(tmp_path):
    path = write_jsonl(tmp_path / "tiny.jsonl", ROWS["pair"][:3])
    with pytest.raises(DataError, match=r"3 rows, and the hash split gave none to validation"):
        get_task(str(path))


def test_cli_reports_bad_data_in_one_line_before_loading(tmp_path, capsys):
    path = tmp_path / "bad.jsonl"
    path.write_text(BAD["mixed"][0])
    out = tmp_path / "run"
    assert cli.main(["finetune", "--method", "lora", "--task", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "line 2: a text row, but line 1 is a pair row" in err
    assert not out.exists(), "nothing is written for bad data"
    assert cli.main(["compare", "--methods", "lora", "--task", str(path), "--out", str(out)]) == 2
    assert not out.exists()


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.jsonl not found; accepted shapes"):
        get_task(str(tmp_path / "nope.jsonl"))
