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
    # BEGIN SOLUTION 14.1
    held, trainable = record["optimizer_trainable_params"], record["trainable_params"]
    if held >= trainable:
        return None
    return Diagnosis(
        "the optimizer does not hold the trainable parameters",
        f"the optimizer holds {record['optimizer_params']:,} numbers, {held:,} of them trainable; "
        f"the model has {trainable:,} trainable numbers, so {trainable - held:,} never move",
        "build the optimizer after the method has wrapped and frozen the model, from the parameters "
        "with requires_grad=True (labs.train.make_optimizer does)")
    # END SOLUTION


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
    # BEGIN SOLUTION 14.2
    missing = record["grads_missing"][0] if record["grads_missing"] else 0
    if not missing:
        return None
    groups = sorted(g for g, norm in record["grad_norms"][0].items() if norm is None)
    checkpointing = ", with gradient checkpointing on" if record.get("gradient_checkpointing") else ""
    return Diagnosis(
        "no gradient reaches trainable tensors",
        f"after the first backward pass {missing} of {record['trainable_tensors']} trainable tensors had no "
        f"gradient (groups {', '.join(groups) or '?'}){checkpointing}",
        "checkpoint with use_reentrant=False (labs.train does), or make the embeddings' output require "
        "grad (model.enable_input_require_grads()) when they are frozen; check that every trainable "
        "tensor is used in the forward pass")
    # END SOLUTION


def adapter_unchanged(record: dict) -> Diagnosis | None:
    """LoRA's B is still zero after the first steps: the adapter adds nothing to the model.

    record["lora_b_norms"]  the norm of all lora_B tensors together before step 1 and after each
                            recorded step ([] for a method without LoRA)
    A Diagnosis when there are readings after at least two steps and every reading is zero
    (below 1e-12), else None.
    """
    # BEGIN SOLUTION 14.3
    norms = record.get("lora_b_norms") or []
    if len(norms) < 3 or max(norms) > 1e-12:
        return None
    return Diagnosis(
        "LoRA's B is still zero: the adapter changes nothing",
        f"the norm of every lora_B together stayed {max(norms):g} over {len(norms) - 1} steps",
        "B starts at zero, so A must start random: with A = 0 too, B gets no gradient and A none "
        "either; initialise A as LoRA does (Kaiming uniform), and check the optimizer holds A and B")
    # END SOLUTION


def targets_not_found(record: dict) -> Diagnosis | None:
    """Target module names that match no linear layer of this model (GPT-2's c_attn on a Llama).

    record["targets"]       the target_modules asked for (None: the method's default)
    record["linear_names"]  the short names of the base model's linear layers ("q_proj", ...)
    A target matches when its last dotted part is one of the short names; "all-linear" matches
    always. A Diagnosis naming the targets that match nothing and the names there are, else None.
    """
    # BEGIN SOLUTION 14.4
    names = set(record.get("linear_names") or [])
    missing = [t for t in record.get("targets") or [] if t != "all-linear" and t.rsplit(".", 1)[-1] not in names]
    if not missing:
        return None
    return Diagnosis(
        "target modules not found",
        f"{', '.join(missing)} match no layer of this model, whose linear layers are named "
        f"{', '.join(sorted(names))}; only the other targets were adapted",
        "name this architecture's layers in target_modules (Llama: q_proj, k_proj, v_proj, o_proj, "
        "gate_proj, up_proj, down_proj; GPT-2: c_attn, c_proj, c_fc), or leave the default")
    # END SOLUTION


def never_stops(record: dict) -> Diagnosis | None:
    """The model is never shown where an answer ends, so it never stops generating.

    record["task_kind"]            "generate", "lm" or "classify"
    record["rows_with_eos_label"]  share of the first batch's rows whose labels hold the EOS token
    record["eos_token_id"], record["pad_token_id"]
    A Diagnosis for a generate task in which no row's labels hold the EOS (say in the evidence when
    pad == eos: masking padding by token id masked each answer's end too), else None.
    """
    # BEGIN SOLUTION 14.5
    share = record.get("rows_with_eos_label")
    if record["task_kind"] != "generate" or share is None or share > 0:
        return None
    eos, pad = record["eos_token_id"], record["pad_token_id"]
    same = f"; the pad token is the EOS (id {pad}), so masking padding by token id masked the end of every answer" \
        if pad == eos else ""
    return Diagnosis(
        "the model is never taught to stop",
        f"no row of the first batch has the end token (id {eos}) among its labels{same}",
        "keep the EOS that ends each response as a label: mask padding by the attention mask, not by "
        "token id, or give the tokenizer a pad token that is not the EOS")
    # END SOLUTION


def loss_on_prompt(record: dict) -> Diagnosis | None:
    """The loss is computed on the prompt too: the model learns to write questions.

    record["task_kind"], record["label_share"] (labelled tokens / attended tokens, first batch)
    A Diagnosis for a generate task whose label share is at least PROMPT_SHARE_MAX, else None.
    (A language-modelling task labels every token on purpose.)
    """
    # BEGIN SOLUTION 14.6
    share = record.get("label_share")
    if record["task_kind"] != "generate" or share is None or share < PROMPT_SHARE_MAX:
        return None
    return Diagnosis(
        "the loss is computed on the prompt too",
        f"{share:.0%} of the attended tokens carry a label in a prompt/response task: the prompt is scored",
        "set the labels of the prompt's tokens to -100 so only the response is scored (labs.data.collate does)")
    # END SOLUTION


def template_mismatch(record: dict) -> Diagnosis | None:
    """Training formatted prompts one way, inference formats them another.

    record["prompt_end"]  None, or {"train": the end of the first training row's prompt as decoded,
                          "inference": what inference puts after the user's words (labs.data.format_prompt):
                          "\\nAnswer:" without a chat template, the turn's end and assistant header with one}
    With every space and newline left out of both, the training prompt must end with the inference
    text; a Diagnosis quoting both ends when it does not, else None.
    """
    # BEGIN SOLUTION 14.7
    ends = record.get("prompt_end")
    if not ends:
        return None
    train, inference = ("".join(ends[k].split()) for k in ("train", "inference"))
    if train.endswith(inference):
        return None
    return Diagnosis(
        "the prompt format of training is not the one of inference",
        f"training prompts end {ends['train'][-40:]!r}; inference prompts end {ends['inference'][-40:]!r}",
        "format training rows with the template inference uses: the tokenizer's chat template for a chat "
        "model (labs.data.format_prompt), or generate with the format you trained on")
    # END SOLUTION


def loss_flat(record: dict) -> Diagnosis | None:
    """The held-out loss barely moved: a learning rate far too low for the method (prompt tuning
    at LoRA's rate), or too few steps.

    record["eval_loss_before"], record["eval_loss_after"]  held-out loss (None: not measured)
    record["lr"], record["usual_lr"] (the method's rate for the preset; None if unknown)
    A Diagnosis when the loss fell by less than FLAT_DROP of its value and did not rise by more
    (a rise is loss_rising's), else None.
    """
    # BEGIN SOLUTION 14.8
    before, after = record.get("eval_loss_before"), record.get("eval_loss_after")
    if before is None or after is None:
        return None
    drop = (before - after) / before
    if drop >= FLAT_DROP or drop < -FLAT_DROP:
        return None
    usual = record.get("usual_lr")
    low = usual is not None and record["lr"] < usual / 3
    return Diagnosis(
        "the loss is flat" + (": the learning rate is too low for this method" if low else ""),
        f"held-out loss {before:.3f} -> {after:.3f} ({-drop:+.1%}) at lr {record['lr']:g}"
        + (f"; this method's usual rate is {usual:g}" if usual else ""),
        "raise the learning rate to the method's own (prompt tuning needs about 10x LoRA's, LoRA about 40x "
        "full fine-tuning's)" if low else "the rate is the method's own: look for what keeps the weights from "
        "moving (the other diagnoses), or train longer")
    # END SOLUTION


def loss_rising(record: dict) -> Diagnosis | None:
    """The loss rises or blows up: a learning rate far too high (full fine-tuning at LoRA's rate).

    record["losses"]  training loss per step so far; record["eval_loss_before"/"_after"] (or None)
    A Diagnosis when a loss is not finite, or (4 losses or more) the mean of the second half is
    above RISE times the mean of the first half, or the held-out loss rose by more than FLAT_DROP
    of its value; else None.
    """
    # BEGIN SOLUTION 14.9
    losses = record["losses"]
    before, after = record.get("eval_loss_before"), record.get("eval_loss_after")
    half = len(losses) // 2
    diverged = any(not math.isfinite(x) for x in losses)
    rising = len(losses) >= 4 and sum(losses[half:]) / (len(losses) - half) > RISE * sum(losses[:half]) / half
    worse = before is not None and after is not None and after > before * (1 + FLAT_DROP)
    if not (diverged or rising or worse):
        return None
    signs = []
    if diverged or rising:
        signs.append(f"training loss {losses[0]:.3f} at the first step, {losses[-1]:.3f} at step {len(losses)}")
    if worse:
        signs.append(f"held-out loss {before:.3f} -> {after:.3f}")
    return Diagnosis(
        "the loss rises: the learning rate is too high for this method",
        f"{'; '.join(signs)} at lr {record['lr']:g}",
        "lower the learning rate to the method's own (full fine-tuning takes about 40x less than LoRA)")
    # END SOLUTION
