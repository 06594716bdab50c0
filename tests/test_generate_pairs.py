"""labs generate --pair ADAPTER=PROMPT / --pairs FILE.jsonl (labs/generate.py): every pair answered in
ONE batch through its own LoRA adapter (labs.serving.MultiAdapterServer). Greedy, each row's answer
equals that adapter loaded alone (`labs generate FOLDER --prompt`), base rows equal the base; the
pairs are parsed and refused with errors that name the bad value; open exercises are named."""
from __future__ import annotations

import json

import pytest
import torch

from labs import generate
from labs.generate import Sampling, load_tuned, mixed_replies, parse_pair, read_pairs, reply

MODEL = "smollm2-135m"
BASE_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"   # what adapters of the embedded model record as their base
GREEDY = Sampling(max_new_tokens=8)


@pytest.fixture
def impl_name(request) -> str:
    return request.config.getoption("--impl")


@pytest.fixture
def embedded():
    from labs.models import is_cached
    if not is_cached(MODEL):
        pytest.skip("smollm2-135m is not converted yet (labs assets)")


def save_lora(folder, impl_name: str, seed: int, r: int):
    """A LoRA adapter folder of the embedded model, its factors moved off their initial values (as after training)."""
    from labs.data import get_task
    from labs.methods import prepare
    from labs.models import load_model
    from labs.peft_format import save_adapter
    torch.manual_seed(seed)
    model = prepare("lora", load_model(MODEL)[0], get_task("define"), {"r": r}, impl_name)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    return save_adapter(model, folder)


def fake_adapter(folder, base: str | None = BASE_ID):
    """An adapter folder with its config only: enough for every check made before a model loads."""
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "base_model_name_or_path": base}))
    return folder


# ---------------------------------------------------------------------------------------------
# Parity: one mixed batch == each adapter alone, greedy
# ---------------------------------------------------------------------------------------------
def test_each_row_answers_as_its_adapter_alone_and_base_rows_as_the_base(tmp_path, impl_name, embedded):
    from labs.models import load_model
    from labs.serving import MultiAdapterServer
    a, b = save_lora(tmp_path / "a", impl_name, 1, r=8), save_lora(tmp_path / "b", impl_name, 2, r=4)
    # prompts of different lengths (left padding), an adapter twice, two base rows
    pairs = [(str(a), 'Define the word "lantern".'), (None, "Say hello."),
             (str(b), "Convert 3 hours to minutes, and show the steps."), (None, 'Define the word "lantern".'),
             (str(a), "Name a colour.")]
    want = {}
    base, tokenizer = load_model(MODEL)
    for folder in (None, str(a), str(b)):
        model = base if folder is None else load_tuned(folder, impl=impl_name).model
        for adapter, prompt in pairs:
            if adapter == folder:
                want[adapter, prompt] = reply(model, tokenizer, prompt, GREEDY)
    server = MultiAdapterServer(load_model(MODEL)[0], impl=impl_name)
    server.add(str(a), a)
    server.add(str(b), b)
    for mode in ("gather", "group"):
        server.mode = mode
        got = mixed_replies(server, tokenizer, pairs, GREEDY)
        for (adapter, prompt), answer in zip(pairs, got):
            assert answer == want[adapter, prompt], f"{mode}: {adapter or 'base'} on {prompt!r}"
    # and the check can fail: the adapter really changes the answer the base gives to the same prompt
    assert want[str(a), 'Define the word "lantern".'].text != want[None, 'Define the word "lantern".'].text


def test_cli_answers_pairs_from_flags_and_a_file_in_one_batch(tmp_path, impl_name, embedded, capsys):
    a = save_lora(tmp_path / "a", impl_name, 1, r=8)
    run = tmp_path / "run"   # a LoRA run folder of labs finetune: its adapter/ is served
    save_lora(run / "adapter", impl_name, 2, r=4)
    (run / "metrics.json").write_text(json.dumps({"method": "lora", "model": MODEL}))
    (tmp_path / "pairs.jsonl").write_text(json.dumps({"adapter": str(run), "prompt": "Say hello."}) + "\n\n"
                                          + json.dumps({"prompt": "Say hello."}) + "\n")
    code = generate.main(["--pair", f"{a}=Name a colour.", "--pair", "base=Name a colour.",
                          "--pairs", str(tmp_path / "pairs.jsonl"), "--max-new-tokens", "4", "--impl", impl_name])
    captured = capsys.readouterr()
    assert code == 0
    for header in (f"[{a}] > Name a colour.", "[base] > Name a colour.",
                   f"[{run}] > Say hello.", "[base] > Say hello."):
        assert header in captured.out, captured.out
    assert "4 prompts in one batch: 2 adapter(s)" in captured.err


# ---------------------------------------------------------------------------------------------
# Parsing and the errors that name the bad value
# ---------------------------------------------------------------------------------------------
def test_a_pair_splits_at_its_first_equals_sign_and_base_means_no_adapter():
    assert parse_pair("runs/a=Define the word \"cat\".") == ("runs/a", 'Define the word "cat".')
    assert parse_pair("base=What is 2+2=?") == (None, "What is 2+2=?")
    assert parse_pair("=Hi") == (None, "Hi") and parse_pair(" base = Hi ") == (None, "Hi")
    with pytest.raises(ValueError, match=r"--pair 'Hi' has no '='.*ADAPTER=PROMPT.*base"):
        parse_pair("Hi")
    with pytest.raises(ValueError, match=r"--pair 'runs/a=  ' has an empty prompt"):
        parse_pair("runs/a=  ")


def test_a_pairs_file_is_read_line_by_line_and_a_bad_line_is_named(tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text('{"adapter": "runs/a", "prompt": "Hi"}\n\n{"adapter": null, "prompt": "Yo"}\n'
                    '{"prompt": "Hey"}\n{"adapter": "base", "prompt": "Ho"}\n')
    assert read_pairs(str(good)) == [("runs/a", "Hi"), (None, "Yo"), (None, "Hey"), (None, "Ho")]
    for line, message in (("not json", r"line 2 is not JSON"),
                          ('{"adaptor": "runs/a", "prompt": "Hi"}',
                           r'line 2 is .*adaptor.*keys "prompt" and.*"adapter"'),
                          ('{"adapter": "runs/a"}', r'line 2 is .*keys "prompt"'),
                          ('{"adapter": "runs/a", "prompt": ""}', r"line 2 has an empty prompt"),
                          ('{"adapter": 3, "prompt": "Hi"}', r"line 2: the adapter 3 is not a folder name")):
        bad = tmp_path / "bad.jsonl"
        bad.write_text('{"prompt": "fine"}\n' + line + "\n")
        with pytest.raises(ValueError, match=message):
            read_pairs(str(bad))
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="holds no pairs"):
        read_pairs(str(tmp_path / "empty.jsonl"))


def test_bad_adapters_are_refused_before_any_model_loads(tmp_path, impl_name):
    with pytest.raises(FileNotFoundError, match=r"adapter folder '.*nope' does not exist.*ADAPTER=PROMPT"):
        generate.main(["--pair", f"{tmp_path / 'nope'}=Hi", "--impl", impl_name])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"'.*empty' is neither an adapter folder"):
        generate.main(["--pair", f"{tmp_path / 'empty'}=Hi", "--impl", impl_name])
    ours, theirs = fake_adapter(tmp_path / "ours"), fake_adapter(tmp_path / "theirs", "HuggingFaceTB/SmolLM2-360M")
    with pytest.raises(ValueError, match=r"'.*theirs' was trained on base model 'HuggingFaceTB/SmolLM2-360M', "
                                         r"but this batch runs on 'smollm2-135m' \(the base of '.*ours'\)"):
        generate.main(["--pair", f"{ours}=Hi", "--pair", f"{theirs}=Hi", "--impl", impl_name])
    with pytest.raises(ValueError, match=r"'.*ours' was trained on base model 'smollm2-135m'.*\(--base\)"):
        generate.main(["--pair", f"{ours}=Hi", "--base", "HuggingFaceTB/SmolLM2-360M", "--impl", impl_name])
    run = tmp_path / "prefix-run"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"method": "prefix", "model": MODEL}))
    with pytest.raises(ValueError, match=r"is a prefix run; a mixed batch serves LoRA adapters"):
        generate.main(["--pair", f"{run}=Hi", "--impl", impl_name])
    with pytest.raises(ValueError, match=r"no adapter of these pairs names its base model.*--base"):
        generate.main(["--pair", "base=Hi", "--impl", impl_name])
    with pytest.raises(ValueError, match=r"leave out --prompt, --compare-base"):
        generate.main(["--pair", f"{ours}=Hi", "--prompt", "Yo", "--compare-base"])
    with pytest.raises(ValueError, match=r"--device cuda: the mixed batch runs on the CPU"):
        generate.main(["--pair", f"{ours}=Hi", "--device", "cuda"])


def test_the_cli_reports_a_bad_pair_in_one_line(tmp_path, capsys):
    from labs import cli
    capsys.readouterr()
    assert cli.main(["generate", "--pair", f"{tmp_path / 'nope'}=Hi"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("labs generate: error: adapter folder") and "does not exist" in err and "\n" not in err


# ---------------------------------------------------------------------------------------------
# The student edition: a mixed batch runs exercises 10.1-10.3 and LoRA
# ---------------------------------------------------------------------------------------------
def test_open_exercises_are_named_with_their_notebooks_before_loading(tmp_path):
    from labs.prerequisites import describe, missing
    todo = missing(generate.MIXED_NEEDS, "labs")
    if not todo:
        pytest.skip("every exercise a mixed batch needs is done in labs/")
    with pytest.raises(NotImplementedError) as err:
        generate.main(["--pair", f"{fake_adapter(tmp_path / 'a')}=Hi", "--pair", "base=Hi", "--impl", "labs"])
    message = str(err.value)
    for part in ("labs/multi_lora.py", "labs/lora.py", describe(todo, "labs"), "still open"):
        assert part in message, f"{part!r} missing from: {message}"
    if any(ex.startswith("10.") for ex in todo):
        assert "(notebooks/10_storage.ipynb)" in message, message
