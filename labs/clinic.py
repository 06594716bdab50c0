# GENERATED from solutions/clinic.py by tools/make_stubs.py: the reference lives there.
# Your exercises: replace each `raise NotImplementedError(...)` below with your code.
"""The failure clinic: detectors that read what a run recorded and name what went wrong.

Most fine-tunes that fail do not crash: they train, print falling numbers, save an adapter, and the
model comes out the same, or babbling, or never stopping. Each detector here looks at the evidence
a practitioner would look at, recorded by every `labs finetune` run in `run_record.json`
(labs/run_record.py writes it: the keys are listed there), and returns a `Diagnosis` naming the
cause, the evidence and the fix, or None when the run shows no sign of that failure.

    record = json.loads(Path("runs/mine/run_record.json").read_text())
    diagnosis = optimizer_misses_trainable(record)      # None on a healthy run
    print(diagnosis)                                     # name / evidence / fix

`labs doctor RUN` runs every detector over a finished run, and `labs finetune` runs the cheap ones
after its first steps (labs/doctor.py). No detector may raise an alarm on a healthy run of any
method: each one tests a sign that a healthy run never shows, not a guess from one number.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

NOTEBOOK = "notebooks/14_when_finetuning_goes_wrong.ipynb"

PROMPT_SHARE_MAX = 0.95   # labels on at least this share of the attended tokens: the prompt is scored too
FLAT_DROP = 0.05          # held-out loss falling by less than 5% over the run: nothing was learned
RISE = 1.25               # training loss of the second half above 1.25x the first half's: diverging


@dataclass(frozen=True)
class Diagnosis:
    name: str        # the failure, in a few words: "the optimizer does not hold the trainable parameters"
    evidence: str    # the numbers from the run that give it away
    fix: str         # what to change

    def __str__(self) -> str:
        return f"{self.name}\n  evidence: {self.evidence}\n  fix: {self.fix}"


# ---------------------------------------------------------------------------------------------
# Exercises
# ---------------------------------------------------------------------------------------------
def optimizer_misses_trainable(record: dict) -> Diagnosis | None:
    """The optimizer was built before the model was wrapped (or from the wrong parameters).

    record["trainable_params"]            numbers with requires_grad=True in the trained model
    record["optimizer_params"]            numbers the optimizer holds
    record["optimizer_trainable_params"]  of those, the ones with requires_grad=True
    A Diagnosis when the optimizer holds fewer trainable numbers than the model has (its evidence
    names the three counts), else None.
    """
    raise NotImplementedError("Exercise 14.1: optimizer_misses_trainable - see notebooks/14_when_finetuning_goes_wrong.ipynb")


def no_gradient(record: dict) -> Diagnosis | None:
    """No gradient reaches some trainable tensors (reentrant gradient checkpointing over frozen
    inputs is the classic cause: the checkpointed block's output does not require grad).

    record["grads_missing"]    per recorded step, how many trainable tensors had grad None
    record["trainable_tensors"] how many trainable tensors the model has
    record["grad_norms"]       per recorded step, {group: gradient norm, or None where no tensor
                               of the group got a gradient}
    A Diagnosis when at the first recorded step any trainable tensor had no gradient (the
    evidence names the groups without one), else None. A gradient of zeros is not missing: LoRA's
    A has exactly that at step 1, while B is still zero.
    """
    raise NotImplementedError("Exercise 14.2: no_gradient - see notebooks/14_when_finetuning_goes_wrong.ipynb")


def adapter_unchanged(record: dict) -> Diagnosis | None:
    """LoRA's B is still zero after the first steps: the adapter adds nothing to the model.

    record["lora_b_norms"]  the norm of all lora_B tensors together before step 1 and after each
                            recorded step ([] for a method without LoRA)
    A Diagnosis when there are readings after at least two steps and every reading is zero
    (below 1e-12), else None.
    """
    raise NotImplementedError("Exercise 14.3: adapter_unchanged - see notebooks/14_when_finetuning_goes_wrong.ipynb")


def targets_not_found(record: dict) -> Diagnosis | None:
    """Target module names that match no linear layer of this model (GPT-2's c_attn on a Llama).

    record["targets"]       the target_modules asked for (None: the method's default)
    record["linear_names"]  the short names of the base model's linear layers ("q_proj", ...)
    A target matches when its last dotted part is one of the short names; "all-linear" matches
    always. A Diagnosis naming the targets that match nothing and the names there are, else None.
    """
    raise NotImplementedError("Exercise 14.4: targets_not_found - see notebooks/14_when_finetuning_goes_wrong.ipynb")


def never_stops(record: dict) -> Diagnosis | None:
    """The model is never shown where an answer ends, so it never stops generating.

    record["task_kind"]            "generate", "lm" or "classify"
    record["rows_with_eos_label"]  share of the first batch's rows whose labels hold the EOS token
    record["eos_token_id"], record["pad_token_id"]
    A Diagnosis for a generate task in which no row's labels hold the EOS (say in the evidence when
    pad == eos: masking padding by token id masked each answer's end too), else None.
    """
    raise NotImplementedError("Exercise 14.5: never_stops - see notebooks/14_when_finetuning_goes_wrong.ipynb")


def loss_on_prompt(record: dict) -> Diagnosis | None:
    """The loss is computed on the prompt too: the model learns to write questions.

    record["task_kind"], record["label_share"] (labelled tokens / attended tokens, first batch)
    A Diagnosis for a generate task whose label share is at least PROMPT_SHARE_MAX, else None.
    (A language-modelling task labels every token on purpose.)
    """
    raise NotImplementedError("Exercise 14.6: loss_on_prompt - see notebooks/14_when_finetuning_goes_wrong.ipynb")


def template_mismatch(record: dict) -> Diagnosis | None:
    """Training formatted prompts one way, inference formats them another.

    record["prompt_end"]  None, or {"train": the end of the first training row's prompt as decoded,
                          "inference": what inference puts after the user's words (labs.data.format_prompt):
                          "\\nAnswer:" without a chat template, the turn's end and assistant header with one}
    With every space and newline left out of both, the training prompt must end with the inference
    text; a Diagnosis quoting both ends when it does not, else None.
    """
    raise NotImplementedError("Exercise 14.7: template_mismatch - see notebooks/14_when_finetuning_goes_wrong.ipynb")


def loss_flat(record: dict) -> Diagnosis | None:
    """The held-out loss barely moved: a learning rate far too low for the method (prompt tuning
    at LoRA's rate), or too few steps.

    record["eval_loss_before"], record["eval_loss_after"]  held-out loss (None: not measured)
    record["lr"], record["usual_lr"] (the method's rate for the preset; None if unknown)
    A Diagnosis when the loss fell by less than FLAT_DROP of its value and did not rise by more
    (a rise is loss_rising's), else None.
    """
    raise NotImplementedError("Exercise 14.8: loss_flat - see notebooks/14_when_finetuning_goes_wrong.ipynb")


def loss_rising(record: dict) -> Diagnosis | None:
    """The loss rises or blows up: a learning rate far too high (full fine-tuning at LoRA's rate).

    record["losses"]  training loss per step so far; record["eval_loss_before"/"_after"] (or None)
    A Diagnosis when a loss is not finite, or (4 losses or more) the mean of the second half is
    above RISE times the mean of the first half, or the held-out loss rose by more than FLAT_DROP
    of its value; else None.
    """
    raise NotImplementedError("Exercise 14.9: loss_rising - see notebooks/14_when_finetuning_goes_wrong.ipynb")
