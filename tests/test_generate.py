"""labs generate (labs/generate.py): every method's saved run reloads to the logits it was saved with,
peft's own adapter folders load too, answers stop at the end of the turn even when the tokenizer pads
with its EOS token, and several adapters are answered from one base."""
from __future__ import annotations

import json

import pytest
import torch

from labs import generate
from labs.data import IGNORE, collate, get_task
from labs.finetune import save_trained
from labs.generate import Sampling, load_tuned, reply, until_stop
from labs.methods import METHODS, prepare

MODEL = "smollm2-135m"


@pytest.fixture(scope="module", autouse=True)
def embedded():
    from labs.models import is_cached
    if not is_cached(MODEL):
        pytest.skip("smollm2-135m is not converted yet (labs assets)")


@pytest.fixture
def impl_name(request) -> str:
    return request.config.getoption("--impl")


def ids() -> torch.Tensor:
    return torch.tensor([[1, 504, 3458, 314, 260, 1345, 30]])  # (B, T)


def make_run(method: str, folder, impl_name: str, seed: int = 0):
    """A run folder as `labs finetune` leaves it, with trained weights moved off their initial values."""
    from labs.models import load_model
    torch.manual_seed(seed)
    model, _ = load_model(MODEL)
    model = prepare(method, model, get_task("define"), {}, impl_name)
    with torch.no_grad():
        trained = [p for p in model.parameters() if p.requires_grad]
        for p in trained[-6:] if method == "full" else trained:
            p.add_(0.05 * torch.randn_like(p))
    folder.mkdir(parents=True)
    save_trained(method, model, folder)
    (folder / "metrics.json").write_text(json.dumps({"method": method, "model": MODEL, "task": "define",
                                                     "task_kind": "generate", "options": {}}))
    return model.eval()


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_run_reloads_to_its_logits_and_answers(tmp_path, method, impl_name):
    trained = make_run(method, tmp_path / method, impl_name)
    with torch.no_grad():
        want = trained(input_ids=ids()).logits                                    # (B, T, V)
    del trained
    tuned = load_tuned(tmp_path / method, impl=impl_name)
    assert tuned.method == method and tuned.base == MODEL
    with torch.no_grad():
        got = tuned.model(input_ids=ids()).logits
    assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()
    answer = reply(tuned.model, tuned.tokenizer, "Define the word \"cat\".", Sampling(max_new_tokens=6))
    assert answer.tokens <= 6 and isinstance(answer.text, str)


def test_peft_adapter_folder_loads_with_its_base(tmp_path, impl_name):
    peft = pytest.importorskip("peft")
    from labs.models import load_model
    base, _ = load_model(MODEL)
    model = peft.get_peft_model(base, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                      init_lora_weights=False))
    with torch.no_grad():
        want = model(input_ids=ids()).logits                                      # (B, T, V)
    model.save_pretrained(tmp_path / "peft")
    tuned = load_tuned(tmp_path / "peft", impl=impl_name)
    assert tuned.base == MODEL
    with torch.no_grad():
        assert torch.allclose(tuned.model(input_ids=ids()).logits, want, atol=1e-4)


def test_answer_stops_at_end_of_turn_when_pad_is_eos():
    from labs.models import load_model
    model, tokenizer = load_model(MODEL)
    assert tokenizer.pad_token_id == tokenizer.eos_token_id, "the case under test: SmolLM2 pads with EOS"
    answer = reply(model, tokenizer, "Say hello in one word.", Sampling(max_new_tokens=60))
    assert answer.stopped and answer.tokens < 60
    assert "<|im_end|>" not in answer.text and answer.text
    # and a pad == EOS tokenizer still trains the EOS: it is a label, not masked as padding
    for ex in ({"prompt": "Hi", "response": "Hello."},
               {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}],
                "prompt": "Hi", "response": "Hello."}):
        batch = collate([ex, {"prompt": "A much longer prompt " * 3, "response": "Ok."}], tokenizer, "qa", 64)
        labels = batch["labels"][0]
        assert (labels == tokenizer.eos_token_id).sum() == 1 and (labels != IGNORE).sum() >= 2


def test_until_stop_cuts_at_the_first_stop_and_the_padding_after_it():
    eos = 2
    assert until_stop([5, 6, eos, eos, eos], {eos}) == ([5, 6], True)
    assert until_stop([5, 6, 7], {eos}) == ([5, 6, 7], False)
    assert until_stop([eos], {eos, 9}) == ([], True)


def test_sampling_is_seeded_and_checked():
    from labs.models import load_model
    model, tokenizer = load_model(MODEL)
    hot = Sampling(max_new_tokens=8, temperature=1.5, top_p=0.9, seed=3)
    assert reply(model, tokenizer, "Name a colour.", hot) == reply(model, tokenizer, "Name a colour.", hot)
    for bad in ({"temperature": -1}, {"top_p": 0}, {"max_new_tokens": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            Sampling(**bad)


def test_cli_answers_prompts_from_a_file_and_compares_base(tmp_path, impl_name, capsys):
    make_run("lora", tmp_path / "run", impl_name)
    (tmp_path / "prompts.txt").write_text("Define the word \"dog\".\n\nDefine the word \"tree\".\n")
    code = generate.main([str(tmp_path / "run"), "--prompts", str(tmp_path / "prompts.txt"), "--compare-base",
                          "--max-new-tokens", "4", "--impl", impl_name])
    out = capsys.readouterr().out
    assert code == 0 and out.count("> Define") == 2 and out.count("tuned: ") == 2 and out.count("base:  ") == 2


def test_cli_serves_several_adapters_on_one_base(tmp_path, impl_name, capsys):
    make_run("lora", tmp_path / "a", impl_name, seed=1)
    make_run("lora", tmp_path / "b", impl_name, seed=2)
    code = generate.main(["--adapter", f"a={tmp_path / 'a'}", "--adapter", f"b={tmp_path / 'b' / 'adapter'}",
                          "--prompt", "Hi", "--max-new-tokens", "4", "--impl", impl_name])
    out = capsys.readouterr().out
    assert code == 0 and "[a] " in out and "[b] " in out
    with pytest.raises(ValueError, match="is not NAME=FOLDER"):
        generate.main(["--adapter", "nofolder", "--prompt", "Hi"])


def test_a_folder_that_is_none_of_the_three_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a run folder"):
        load_tuned(tmp_path)


def test_chat_keeps_the_conversation_turn_by_turn(tmp_path, impl_name, monkeypatch, capsys):
    make_run("lora", tmp_path / "run", impl_name)
    tuned = load_tuned(tmp_path / "run", impl=impl_name)
    lines = iter(["Hi", "And again?"])

    def fake_input(prompt=""):
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None
    seen = []
    real_reply = generate.reply
    monkeypatch.setattr("builtins.input", fake_input)
    monkeypatch.setattr(generate, "reply", lambda m, t, conv, s: seen.append(list(conv)) or real_reply(m, t, conv, s))
    assert generate._chat(tuned, Sampling(max_new_tokens=4)) == 0
    assert capsys.readouterr().out.count("model> ") == 2
    assert [t["role"] for t in seen[1]] == ["user", "assistant", "user"], "the second turn sees the first answer"


def test_cli_delegates_and_reports_a_bad_folder_in_one_line(tmp_path, capsys):
    from labs import cli
    capsys.readouterr()
    assert cli.main(["generate", str(tmp_path), "--prompt", "Hi"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("labs generate: error:") and "neither a run folder" in err and "\n" not in err
