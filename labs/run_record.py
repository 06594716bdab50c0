"""What a run records for the failure clinic: run_record.json, beside metrics.json.

The detectors of notebook 14 (labs/clinic.py) read only this small record, so that `labs doctor`
can diagnose a finished run without loading its model. A `Recorder` is handed to
`labs.train.train(observe=...)`; the loop calls it after the backward pass of each step, while the
gradients are there. It reads:

    method, task_kind, lr, usual_lr       what was run (usual_lr: the method's rate for the preset)
    gradient_checkpointing                on or off
    trainable_params, trainable_tensors   numbers and tensors with requires_grad=True
    optimizer_params                      numbers the optimizer holds (at step 1)
    optimizer_trainable_params            of those, the ones that require grad
    grad_norms                            per recorded step: {group: gradient norm, None where no
                                          tensor of the group got a gradient} (groups: group_of)
    grads_missing                         per recorded step: trainable tensors whose grad is None
    lora_b_norms                          norm of every lora_B together, before step 1 and after
                                          each recorded step ([] without LoRA)
    label_share                           labelled tokens / attended tokens of the first batch
                                          (None: classification, one label per row)
    rows_with_eos_label                   share of the first batch's rows whose labels hold the EOS
    eos_token_id, pad_token_id
    prompt_end                            {"train": end of the first row's prompt, decoded,
                                          "inference": what inference puts after the user's words}
    targets, linear_names                 target_modules asked for; the base's linear layer names
    losses                                training loss per step
    eval_loss_before, eval_loss_after     held-out loss of the base and of the trained model

Only the first RECORDED_STEPS steps are read closely: enough to see a gradient that never
arrives or an adapter that never moves, and cheap (a norm per tensor).
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from labs.surgery import is_linear

RECORDED_STEPS = 4
FILENAME = "run_record.json"
# A trainable tensor's group: the first of these its name holds (adapter prefixes, then the usual
# parts of a transformer), else "other". Gradient norms are summed per group.
GROUPS = ("lora_A", "lora_B", "adapter", "prefix", "prompt", "bias", "norm", "embed", "lm_head",
          "classifier", "score", "attn", "mlp")
ADAPTER_PARTS = ("lora_", "adapter", "prefix", "prompt")  # names of layers a method adds, not the base's


def group_of(name: str) -> str:
    """'model.layers.0.self_attn.q_proj.lora_A' -> 'lora_A'; 'model.norm.weight' -> 'norm'."""
    return next((g for g in GROUPS if g in name), "other")


def linear_names(model: nn.Module) -> list[str]:
    """The short names of the model's own linear layers (q_proj, c_attn...), not of added adapters;
    a layer a method wrapped (q_proj.base_layer) by the name it had before."""
    names = set()
    for name, module in model.named_modules():
        parts = name.removesuffix(".base_layer").split(".")
        if name and is_linear(module) and not any(p in name for p in ADAPTER_PARTS):
            names.add(parts[-1])
    return sorted(names)


def _norm(tensors) -> float:
    return math.sqrt(sum(float(t.detach().float().pow(2).sum()) for t in tensors))


class Recorder:
    """Called by the training loop after each step's backward pass; `record` is what it read.

    live(record) is called once, after RECORDED_STEPS steps (or fewer, if the run is shorter: see
    finish), with the record so far: labs finetune prints its warnings from there.
    """

    def __init__(self, model: nn.Module, *, method: str, task_kind: str, lr: float, usual_lr: float | None = None,
                 tokenizer=None, targets=None, inference_end: str | None = None,
                 gradient_checkpointing: bool = False, steps: int = RECORDED_STEPS, live=None):
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.steps, self.live, self.tokenizer = steps, live, tokenizer
        self.inference_end = inference_end
        self.lora_b = [p for n, p in named if "lora_B" in n]
        self.record = {
            "method": method, "task_kind": task_kind, "lr": lr, "usual_lr": usual_lr,
            "gradient_checkpointing": gradient_checkpointing,
            "trainable_params": sum(p.numel() for _, p in named), "trainable_tensors": len(named),
            "optimizer_params": None, "optimizer_trainable_params": None,
            "grad_norms": [], "grads_missing": [],
            "lora_b_norms": [_norm(self.lora_b)] if self.lora_b else [],
            "label_share": None, "rows_with_eos_label": None,
            "eos_token_id": getattr(tokenizer, "eos_token_id", None),
            "pad_token_id": getattr(tokenizer, "pad_token_id", None),
            "prompt_end": None,
            "targets": list(targets) if isinstance(targets, (list, tuple)) else ([targets] if targets else None),
            "linear_names": linear_names(model), "losses": [],
            "eval_loss_before": None, "eval_loss_after": None}
        self._lived = False

    def __call__(self, step: int, model: nn.Module, optimizer, batch: dict, loss: float) -> None:
        self.record["losses"].append(float(loss))
        if step == 1:
            self._read_optimizer(optimizer)
            self._read_batch(batch)
        if step <= self.steps:
            self._read_gradients(model)
        if self.lora_b and 1 < step <= self.steps + 1:   # after step-1 optimizer steps
            self.record["lora_b_norms"].append(_norm(self.lora_b))
        if step == self.steps + 1:
            self._call_live()

    def _read_optimizer(self, optimizer) -> None:
        held = {id(p): p for group in optimizer.param_groups for p in group["params"]}.values()
        self.record["optimizer_params"] = sum(p.numel() for p in held)
        self.record["optimizer_trainable_params"] = sum(p.numel() for p in held if p.requires_grad)

    def _read_gradients(self, model: nn.Module) -> None:
        by_group: dict[str, list] = {}
        missing = 0
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            missing += p.grad is None
            by_group.setdefault(group_of(name), [])
            if p.grad is not None:
                by_group[group_of(name)].append(p.grad)
        self.record["grad_norms"].append({g: _norm(grads) if grads else None for g, grads in by_group.items()})
        self.record["grads_missing"].append(missing)

    def _read_batch(self, batch: dict) -> None:
        labels, mask = batch.get("labels"), batch.get("attention_mask")
        if labels is None or labels.dim() != 2:   # classification: one label per row
            return
        labelled = labels != -100                                                    # (B, T)
        attended = mask.bool() if mask is not None else torch.ones_like(labelled)
        self.record["label_share"] = float(labelled.sum()) / max(1, int(attended.sum()))
        eos = self.record["eos_token_id"]
        if eos is not None:
            self.record["rows_with_eos_label"] = float((labels == eos).any(dim=1).float().mean())
        first = labelled[0].nonzero()
        if self.tokenizer is not None and self.inference_end is not None and len(first) and int(first[0]) > 0:
            prompt_ids = batch["input_ids"][0, :int(first[0])].tolist()
            self.record["prompt_end"] = {"train": self.tokenizer.decode(prompt_ids)[-80:],
                                         "inference": self.inference_end}

    def _call_live(self) -> None:
        if self.live is not None and not self._lived:
            self._lived = True
            self.live(self.record)

    def finish(self, eval_loss_before: float | None = None, eval_loss_after: float | None = None) -> dict:
        """The record, with the held-out losses; a run shorter than RECORDED_STEPS calls live now."""
        self._call_live()
        self.record["eval_loss_before"], self.record["eval_loss_after"] = eval_loss_before, eval_loss_after
        return self.record


PLACEHOLDER = "PROMPTTEXT"


def inference_prompt_end(tokenizer, task) -> str | None:
    """What inference puts after the user's words in a generate task's prompt (labs.data.format_prompt):
    "\nAnswer:" without a chat template, the end of the turn and the assistant's header with one.
    None for other tasks."""
    if getattr(task, "kind", task) != "generate":
        return None
    from labs.data import format_prompt
    return format_prompt(tokenizer, PLACEHOLDER).rsplit(PLACEHOLDER, 1)[-1]


def read_record(run: str | Path) -> dict:
    """The record of a run folder (or of a run_record.json file itself)."""
    import json
    path = Path(run)
    path = path / FILENAME if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: a run folder written by labs finetune holds {FILENAME} "
                                "(runs from before the failure clinic do not)")
    return json.loads(path.read_text())


def recorded_run(model: nn.Module, batches, *, method: str, lr: float, steps: int, tokenizer=None,
                 task_kind: str = "generate", usual_lr: float | None = None, eval_batch: dict | None = None,
                 optimizer=None, targets=None, inference_end: str | None = None,
                 gradient_checkpointing: bool = False) -> dict:
    """Train a prepared `model` on `batches` for `steps` steps with a Recorder watching; return the record,
    with the loss on `eval_batch` before and after (notebook 14's runs: a few steps each).

    optimizer  one built elsewhere (labs.train.train's own by default)
    A loss that becomes nan ends the run early; the record keeps the steps before it.
    """
    from labs.train import TrainConfig, batch_loss, train

    def held_out() -> float | None:
        if eval_batch is None:
            return None
        was_training = model.training
        with torch.no_grad():
            loss = float(batch_loss(model.eval(), eval_batch))
        model.train(was_training)
        return loss

    before = held_out()
    recorder = Recorder(model, method=method, task_kind=task_kind, lr=lr, usual_lr=usual_lr, tokenizer=tokenizer,
                        targets=targets, inference_end=inference_end, gradient_checkpointing=gradient_checkpointing)
    try:
        train(model, batches, TrainConfig(lr=lr, max_steps=steps, gradient_checkpointing=gradient_checkpointing),
              progress=False, observe=recorder, optimizer=optimizer)
    except ValueError as err:
        if "the loss became" not in str(err):
            raise
    return recorder.finish(before, held_out())


def table(records: dict[str, dict], keys: list[str]) -> str:
    """Records side by side, one row per key: what notebook 14 prints as evidence."""
    def shown(value) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        if isinstance(value, list) and value and isinstance(value[0], float):
            return "[" + ", ".join(f"{v:.3g}" for v in value) + "]"
        if isinstance(value, list) and value and isinstance(value[0], dict):
            value = value[0]                                   # gradient norms: the first step's
        if isinstance(value, dict):
            return ", ".join(f"{k} {'none' if v is None else f'{v:.3g}'}" if not isinstance(v, str) else f"{k} {v!r}"
                             for k, v in value.items())
        return str(value)
    width = max(len(k) for k in keys)
    lines = [f"{'':{width}}  " + " | ".join(records)]
    lines += [f"{key:{width}}  " + " | ".join(shown(r.get(key)) for r in records.values()) for key in keys]
    return "\n".join(lines)
