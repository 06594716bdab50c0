"""Runs for the failure clinic's tests: healthy and broken fine-tunes of a tiny Llama, recorded.

Each run trains a tiny random Llama (conftest.save_tiny_llama_folder: word-level tokenizer over the
define task's words, pad 0, EOS 3) for STEPS steps on one batch of the define task, with the
Recorder of labs/run_record.py watching, and returns the record `labs finetune` would write. A
broken run differs from a healthy one by one mistake (labs/failures.py). Runs are made once per
test process (a fraction of a second each) and shared.

The recorded comparison of notebook 12 (notebooks/recorded/compare-*/*/metrics.json, SmolLM2-135M)
gives the loss detectors real healthy runs of every method: `recorded_loss_records()`; the recorded
quick fine-tunes of notebooks/recorded/clinic-quick give every detector one: `recorded_run_records()`.
"""
from __future__ import annotations

import copy
import json
import tempfile
from functools import lru_cache
from pathlib import Path

import torch

from conftest import ROOT, save_tiny_llama_folder

STEPS = 12
SEQ_LEN = 48
ROWS = 8
# Learning rates at which each method clearly learns the one batch in STEPS steps on the tiny model
HEALTHY_LR = {"full": 3e-3, "lora": 3e-2, "adapter": 3e-2, "prefix": 1e-1, "bitfit": 3e-1, "prompt": 1.0,
              "qlora": 3e-2}
# A chat template written in the tiny vocabulary: the user's words, then "</s> <s> Answer :"
CHAT_TEMPLATE = ("{% for m in messages %}Question : {{ m['content'] }} </s>{% endfor %}"
                 "{% if add_generation_prompt %} <s> Answer :{% endif %}")


@lru_cache(maxsize=1)
def tiny_folder() -> Path:
    return save_tiny_llama_folder(Path(tempfile.mkdtemp(prefix="clinic-tiny-")) / "tiny")


def tokenizer(chat: bool = False):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny_folder())
    if chat:
        tok.chat_template = CHAT_TEMPLATE
    return tok


def batch(tok) -> dict:
    from labs.data import collate, load_examples
    return collate(load_examples("define", "train", n=ROWS), tok, "define", SEQ_LEN)


def record_run(method: str = "lora", impl: str = "solutions", *, lr: float | None = None, options: dict | None = None,
               tok=None, inference_tok=None, break_model=None, break_batch=None, stale_optimizer: bool = False,
               steps: int = STEPS) -> dict:
    """One recorded run of the tiny Llama; the keyword arguments make one mistake each."""
    from transformers import AutoModelForCausalLM

    from labs.data import get_task
    from labs.methods import prepare
    from labs.run_record import Recorder, inference_prompt_end
    from labs.train import TrainConfig, batch_loss, train
    torch.manual_seed(0)
    tok = tok or tokenizer()
    data = batch(tok)
    data = break_batch(data) if break_batch else data
    model = AutoModelForCausalLM.from_pretrained(tiny_folder())
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr or HEALTHY_LR[method]) if stale_optimizer else None
    model = prepare(method, model, get_task("define"), options or {}, impl)
    if break_model:
        break_model(model)
    lr = lr or HEALTHY_LR[method]
    with torch.no_grad():
        before = batch_loss(model.eval(), data).item()
    recorder = Recorder(model, method=method, task_kind="generate", lr=lr, usual_lr=HEALTHY_LR[method], tokenizer=tok,
                        targets=(options or {}).get("target_modules"),
                        inference_end=inference_prompt_end(inference_tok or tok, "generate"))
    try:
        train(model, [data], TrainConfig(lr=lr, max_steps=steps), progress=False, observe=recorder,
              optimizer=optimizer)
    except ValueError as err:          # the loss became nan: the record keeps what came before
        if "the loss became" not in str(err):
            raise
    with torch.no_grad():
        after = batch_loss(model.eval(), data).item()
    return copy.deepcopy(recorder.finish(before, after))


def pad_is_eos():
    tok = tokenizer()
    tok.pad_token = tok.eos_token
    return tok


@lru_cache(maxsize=None)
def broken(name: str, impl: str = "solutions") -> dict:
    """The record of a run with one classic mistake, by the detector that should find it."""
    from labs import failures
    if name == "optimizer_misses_trainable":     # the optimizer was built before LoRA wrapped the model
        return record_run(impl=impl, stale_optimizer=True)
    if name == "no_gradient":                    # reentrant checkpointing, frozen embeddings, trained head
        def checkpointed(model):
            failures.checkpoint_reentrant(model)
            model.lm_head.weight.requires_grad_(True)
        return record_run(impl=impl, break_model=checkpointed)
    if name == "adapter_unchanged":              # A zero as well as B
        return record_run(impl=impl, break_model=failures.zero_lora_a)
    if name == "targets_not_found":              # GPT-2's c_attn named on a Llama, beside q_proj
        return record_run(impl=impl, options={"target_modules": ["q_proj", "c_attn"]})
    if name == "never_stops":                    # pad = EOS, then labels[labels == pad] = -100
        tok = pad_is_eos()
        return record_run(impl=impl, tok=tok, break_batch=lambda b: failures.mask_by_token_id(b, tok.pad_token_id))
    if name == "loss_on_prompt":                 # labels = input_ids
        return record_run(impl=impl, break_batch=failures.label_everything)
    if name == "template_mismatch":              # trained on plain text, answered with the chat template
        chat = tokenizer(chat=True)
        return record_run(impl=impl, tok=failures.without_chat_template(chat), inference_tok=chat)
    if name == "loss_flat":                      # full fine-tuning at a rate 30,000x too low
        return record_run("full", impl, lr=1e-7)
    if name == "loss_rising":                    # full fine-tuning at a rate 300x too high
        return record_run("full", impl, lr=1.0)
    raise ValueError(f"no broken run for {name!r}")


@lru_cache(maxsize=None)
def healthy(method: str, impl: str = "solutions", chat: bool = False) -> dict:
    """A healthy run of `method` (chat: with the tiny chat template, used for training and inference)."""
    return record_run(method, impl, tok=tokenizer(chat=chat) if chat else None)


def recorded_loss_records() -> dict[str, dict]:
    """What the loss detectors read, from the recorded comparisons' healthy SmolLM2-135M runs."""
    from labs.methods import get_method
    found = {}
    for path in sorted((ROOT / "notebooks" / "recorded").glob("compare-*/*/metrics.json")):
        metrics = json.loads(path.read_text())
        found[f"{path.parent.parent.name}/{path.parent.name}"] = {
            "method": metrics["method"], "task_kind": metrics["task_kind"], "lr": metrics["lr"],
            "usual_lr": get_method(metrics["method"]).lr.get(metrics["preset"]),
            "losses": metrics["history"]["losses"], "eval_loss_before": metrics["eval_before"]["loss"],
            "eval_loss_after": metrics["eval_after"]["loss"]}
    return found


RECORDED_RUNS = ROOT / "notebooks" / "recorded" / "clinic-quick"


def recorded_run_records() -> dict[str, tuple[dict, dict]]:
    """method -> (run_record.json, metrics.json) of the recorded healthy SmolLM2-135M quick runs."""
    return {path.parent.name: (json.loads(path.read_text()), json.loads((path.parent / "metrics.json").read_text()))
            for path in sorted(RECORDED_RUNS.glob("*/run_record.json"))}
