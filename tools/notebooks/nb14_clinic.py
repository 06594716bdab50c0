"""Build notebooks/14_when_finetuning_goes_wrong.ipynb (committed without outputs).

    python tools/notebooks/nb14_clinic.py
"""
from __future__ import annotations

from nbtools import ROOT, main

OUT = ROOT / "notebooks" / "14_when_finetuning_goes_wrong.ipynb"

CELLS = [
    ("md", r"""
# 14 · When fine-tuning goes wrong

Most fine-tunes that fail do not crash. They train, print falling numbers, save an adapter, and the
model comes out unchanged, or never stops talking, or answers a format it was never trained on.
The questions people ask most about PEFT are of this kind: *why did my run do nothing?*

This notebook reproduces nine classic failures on SmolLM2-135M, each in a few steps beside the
healthy run, and looks at the evidence a practitioner would look at: the loss, gradient norms per
parameter group, what the optimizer holds, the trainable count, the labels. For each one **you write
the detector** (exercises 14.1-14.9 in `labs/clinic.py`): a function that reads what a run records
and returns a `Diagnosis` (name, evidence, fix), or None. Your detectors are then what runs in

    labs doctor runs/mine        # every detector over a finished run
    labs finetune ...            # the cheap ones live, after the first steps: a warning, the run goes on

Every `labs finetune` run writes what they read into `run_record.json` (the keys: `labs/run_record.py`).

| § | failure | the evidence |
|---|---|---|
| 1 | the optimizer was built before the model was wrapped | optimizer holds 0 trainable numbers |
| 2 | no gradient reaches the trainable tensors | grad None under reentrant checkpointing |
| 3 | LoRA's B still zero: the adapter changes nothing | norm of B stays 0 |
| 4 | target modules not found | a target name no layer has |
| 5 | the model never learns to stop | no EOS among the labels |
| 6 | the loss is computed on the prompt too | labels on ~100% of tokens |
| 7 | the chat template of training is not the one of inference | the prompts end differently |
| 8 | a learning rate too low for the method | held-out loss flat |
| 9 | a learning rate too high for the method | loss rising |"""),
    ("code", r"""
import matplotlib.pyplot as plt
import torch

from labs import failures
from labs.check import check
from labs.data import collate, get_task, load_examples
from labs.impl import technique
from labs.methods import get_method, prepare
from labs.models import load_model
from labs.prerequisites import prerequisites
from labs.run_record import inference_prompt_end, recorded_run, table

prerequisites({"the runs of sections 1-7 (LoRA) and 8-9 (prompt tuning)": ["lora", "prompt"],
               "the detectors": ["14.1-14.9"]})
torch.manual_seed(0)
clinic = technique("clinic")          # your labs/clinic.py (the reference with LABS_IMPL=solutions)
task = get_task("define")
_, tokenizer = load_model("smollm2-135m")
train_batch = collate(load_examples("define", "train", n=4), tokenizer, task, 48)        # (B, T) = (4, <=48)
held_batch = collate(load_examples("define", "validation", n=4), tokenizer, task, 48)
STEPS = 5                     # a healthy run's loss falls clearly by then; the first ones are recorded closely
LORA_LR = get_method("lora").lr["quick"]


def fresh(method="lora", options=None):
    # The pretrained model, prepared for `method` (a new copy each time: every run starts from the same base).
    model, _ = load_model("smollm2-135m")
    return prepare(method, model, task, options or {})


def run(model, method="lora", lr=LORA_LR, batch=train_batch, steps=STEPS, held_out=True, **kwargs):
    # A few recorded steps on one batch; held_out=False skips the held-out loss (sections that read the labels)
    return recorded_run(model, [batch], method=method, lr=lr, steps=steps, tokenizer=kwargs.pop("tok", tokenizer),
                        usual_lr=get_method(method).lr["quick"], eval_batch=held_batch if held_out else None,
                        inference_end=kwargs.pop("inference_end", inference_prompt_end(tokenizer, task)), **kwargs)"""),
    ("md", r"""
## 0. The healthy run

LoRA on the define task, five steps on one batch of four rows, held-out loss measured before and
after on four other rows. Every section compares its broken run with this one (or with the fix
applied, when the fix is not simply "do what `labs` does")."""),
    ("code", r"""
%%needs lora
healthy = run(fresh())
print(table({"healthy LoRA": healthy}, ["trainable_params", "optimizer_trainable_params", "grad_norms",
                                       "lora_b_norms", "label_share", "rows_with_eos_label", "losses",
                                       "eval_loss_before", "eval_loss_after"]))"""),
    ("md", r"""
## 1. The optimizer was built before the model was wrapped

    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)   # every base weight
    model = get_peft_model(model, config)                         # freezes them, adds A and B

The optimizer holds the base weights, now frozen (their gradient is None, so AdamW skips them), and
none of the new A and B. Training runs, the loss printed is the base's, nothing changes. The
evidence: what the optimizer holds against what requires grad.

**Exercise 14.1**: `optimizer_misses_trainable(record)` in `labs/clinic.py`."""),
    ("code", r"""
%%needs lora
model, _ = load_model("smollm2-135m")
stale = torch.optim.AdamW(model.parameters(), lr=LORA_LR)          # built first...
stale_run = run(prepare("lora", model, task, {}), optimizer=stale, steps=3)  # ...then the model is wrapped
print(table({"optimizer first": stale_run, "healthy": healthy},
            ["trainable_params", "optimizer_params", "optimizer_trainable_params", "lora_b_norms", "eval_loss_after"]))"""),
    ("code", r"""check("14.1")"""),
    ("code", r"""
%%needs 14.1
print(clinic.optimizer_misses_trainable(stale_run))
print("healthy:", clinic.optimizer_misses_trainable(healthy))"""),
    ("md", r"""
The fix is the healthy run: build the optimizer from `requires_grad=True` parameters after the
method has wrapped the model (`labs.train.make_optimizer`)."""),
    ("md", r"""
## 2. No gradient reaches the trainable tensors

Gradient checkpointing recomputes each layer in the backward pass. The old, *reentrant* form
(`torch.utils.checkpoint(..., use_reentrant=True)`, long the default) gives its output a gradient
only when one of its inputs requires grad. With the embeddings frozen none does: with nothing
trainable after the layers, the backward pass fails with "element 0 of tensors does not require
grad"; with something (here the final norm), it runs, and the LoRA factors inside the layers
silently get no gradient at all. The evidence: gradient norms per group at the first step.

**Exercise 14.2**: `no_gradient(record)`."""),
    ("code", r"""
%%needs lora
model = fresh()
failures.checkpoint_reentrant(model)
try:
    run(model, steps=1, held_out=False)
except RuntimeError as err:
    print("nothing trainable after the layers:", str(err).splitlines()[0])
model.model.norm.weight.requires_grad_(True)                  # the final norm trains too: the run goes on
checkpointed = run(model, steps=3, held_out=False)
fixed = fresh()
fixed.model.norm.weight.requires_grad_(True)
non_reentrant = run(fixed, steps=3, held_out=False, gradient_checkpointing=True)     # labs.train: use_reentrant=False
print(table({"reentrant": checkpointed, "use_reentrant=False": non_reentrant},
            ["grads_missing", "grad_norms", "lora_b_norms", "losses"]))"""),
    ("code", r"""check("14.2")"""),
    ("code", r"""
%%needs 14.2
print(clinic.no_gradient(checkpointed))
print("fixed:", clinic.no_gradient(non_reentrant))"""),
    ("md", r"""
## 3. LoRA's B is still zero: the adapter changes nothing

LoRA starts with B = 0 so that the adapted model equals the base, and A random so that B gets a
gradient (it is the gradient times A). A hand-written LoRA that starts A at zero too leaves both
gradients zero forever: the loss never moves and the saved adapter is all zeros. The evidence: the
norm of B after each step.

**Exercise 14.3**: `adapter_unchanged(record)`."""),
    ("code", r"""
%%needs lora
model = fresh()
failures.zero_lora_a(model)
zero_a = run(model, steps=3, held_out=False)
print(table({"A = 0 too": zero_a, "healthy": healthy}, ["lora_b_norms", "grad_norms", "losses"]))"""),
    ("code", r"""check("14.3")"""),
    ("code", r"""
%%needs 14.3
print(clinic.adapter_unchanged(zero_a))
print("healthy:", clinic.adapter_unchanged(healthy))"""),
    ("md", r"""
## 4. Target modules not found

A recipe written for GPT-2 names its fused attention `c_attn`; a Llama has `q_proj`, `k_proj`,
`v_proj`. When no name matches, the course (like peft) refuses. When one matches and another does
not, the run goes on with fewer layers adapted than you think. The evidence: the targets against
the names of the model's linear layers.

**Exercise 14.4**: `targets_not_found(record)`."""),
    ("code", r"""
%%needs lora
try:
    fresh(options={"target_modules": ["c_attn"]})
except ValueError as err:
    print("only c_attn:", err)
wrong = {"target_modules": ["q_proj", "c_attn"]}
partly = run(fresh(options=wrong), targets=wrong["target_modules"], steps=1, held_out=False)
print(table({"q_proj + c_attn": partly, "default (q_proj, v_proj)": healthy}, ["targets", "linear_names", "trainable_params"]))"""),
    ("code", r"""check("14.4")"""),
    ("code", r"""
%%needs 14.4
print(clinic.targets_not_found(partly))
print("healthy:", clinic.targets_not_found(healthy))"""),
    ("md", r"""
## 5. The model never learns to stop

SmolLM2 pads with its end-of-turn token `<|im_end|>`, as many models pad with their EOS. The usual
one-liner `labels[labels == tokenizer.pad_token_id] = -100` then masks the EOS that ends every answer
along with the padding: the model is never shown where an answer stops, and after enough training
it runs on to the token limit. The evidence: whether any row's labels hold the EOS.

**Exercise 14.5**: `never_stops(record)`."""),
    ("code", r"""
%%needs lora
print("pad", tokenizer.pad_token, tokenizer.pad_token_id, "| eos", tokenizer.eos_token, tokenizer.eos_token_id)
masked = failures.mask_by_token_id(train_batch, tokenizer.pad_token_id)
row = train_batch["labels"][0]
print("labels of row 0 end:", repr(tokenizer.decode(row[row != -100][-4:])))
row = masked["labels"][0]
print("after masking pad ids:", repr(tokenizer.decode(row[row != -100][-4:])))
no_eos = run(fresh(), batch=masked, steps=1, held_out=False)
print(table({"pad ids masked": no_eos, "healthy": healthy}, ["eos_token_id", "pad_token_id", "rows_with_eos_label"]))"""),
    ("code", r"""check("14.5")"""),
    ("code", r"""
%%needs 14.5
print(clinic.never_stops(no_eos))
print("healthy:", clinic.never_stops(healthy))"""),
    ("md", r"""
A step does not undo what the pretrained model knows about stopping; a longer run does. The labels
show the cause before any text does, which is why the detector reads them.

## 6. The loss is computed on the prompt too

`labels = input_ids.clone()` scores every token: the model spends its updates learning to write the
questions, and the loss reported mixes the two. The evidence: the share of attended tokens that
carry a label, near 100% where only the answers should.

**Exercise 14.6**: `loss_on_prompt(record)`."""),
    ("code", r"""
%%needs lora
everything = failures.label_everything(train_batch)
on_prompt = run(fresh(), batch=everything, steps=1, held_out=False)
print(table({"labels = input_ids": on_prompt, "healthy": healthy}, ["label_share"]))"""),
    ("code", r"""check("14.6")"""),
    ("code", r"""
%%needs 14.6
print(clinic.loss_on_prompt(on_prompt))
print("healthy:", clinic.loss_on_prompt(healthy))"""),
    ("md", r"""
## 7. The chat template of training is not the one of inference

A chat model is asked through its template (`<|im_start|>user ... <|im_end|><|im_start|>assistant`),
and `labs generate` does so. A training script that formats rows as plain `Question: ... Answer:`
teaches a format nobody will use. The evidence: how the prompts end, in training and at inference.

**Exercise 14.7**: `template_mismatch(record)`."""),
    ("code", r"""
%%needs lora
plain = failures.without_chat_template(tokenizer)
plain_batch = collate(load_examples("define", "train", n=4), plain, task, 48)
plain_run = run(fresh(), batch=plain_batch, tok=plain, steps=1, held_out=False)
print("trained on:", repr(plain_run["prompt_end"]["train"][-30:]), "| inference:", repr(plain_run["prompt_end"]["inference"]))
print("healthy:   ", repr(healthy["prompt_end"]["train"][-30:]))"""),
    ("code", r"""check("14.7")"""),
    ("code", r"""
%%needs 14.7
print(clinic.template_mismatch(plain_run))
print("healthy:", clinic.template_mismatch(healthy))"""),
    ("md", r"""
## 8 and 9. A learning rate right for one method, wrong for another

Learning rates do not travel between methods. Prompt tuning moves a few embeddings at the input and
needs about ten times LoRA's rate; full fine-tuning moves every weight and needs about forty times
less. Copy LoRA's `2e-3` to both: prompt tuning learns almost nothing, full fine-tuning blows up.
The evidence: the loss, held-out and during training.

**Exercises 14.8** `loss_flat(record)` and **14.9** `loss_rising(record)`."""),
    ("code", r"""
%%needs lora prompt
runs = {"prompt at LoRA's rate": run(fresh("prompt"), "prompt"),
        "prompt at its own": run(fresh("prompt"), "prompt", lr=get_method("prompt").lr["quick"]),
        "full at LoRA's rate": run(fresh("full"), "full", steps=3),     # every weight moves: three steps tell
        "full at its own": run(fresh("full"), "full", lr=get_method("full").lr["quick"], steps=3)}
print(table(runs, ["lr", "usual_lr", "eval_loss_before", "eval_loss_after"]))
for name, record in runs.items():
    plt.plot(range(1, len(record["losses"]) + 1), record["losses"], marker="o", label=name)
plt.xlabel("step"); plt.ylabel("training loss on the batch it trains on"); plt.legend(); plt.title("one batch, a few steps")
plt.show()"""),
    ("code", r"""check("14.8")"""),
    ("code", r"""check("14.9")"""),
    ("code", r"""
%%needs 14.8 14.9
for name, record in runs.items():
    print(f"{name}: flat -> {clinic.loss_flat(record)}\n    rising -> {clinic.loss_rising(record)}")"""),
    ("md", r"""
## Your detectors, at work

`labs doctor RUN` runs them all over a finished run (a detector still open is skipped, and named),
and `labs finetune` runs the cheap ones after its first steps, printing a warning with the cause and
the fix while training goes on. Here is the doctor's report on two of the runs above:"""),
    ("code", r"""
%%needs 14.1-14.9
from labs.doctor import diagnose, report
for name, record in {"optimizer first": stale_run, "healthy": healthy}.items():
    print(f"--- {name}\n{report(diagnose(record))}")"""),
    ("md", r"""
## What gives each failure away

| failure | evidence | on the broken run | on the healthy one |
|---|---|---|---|
| optimizer built before wrapping | trainable numbers in the optimizer vs the model | 0 of them | all |
| no gradient (reentrant checkpointing) | trainable tensors with grad None at step 1 | every LoRA tensor | none |
| LoRA's B still zero | norm of B after each step | stays 0 | grows from step 1 |
| target modules not found | targets vs the linear layers' names | `c_attn` is none of them | all found |
| never stops | rows whose labels hold the EOS | none | all |
| loss on the prompt | labelled share of the attended tokens | 100% | the answers only |
| template mismatch | how training and inference prompts end | `Answer:` vs the assistant header | the same |
| learning rate too low | held-out loss over the run | flat | falls |
| learning rate too high | training and held-out loss | rise | fall |

Each detector must stay silent on healthy runs of every method: the course's tests run them over
healthy runs of all seven methods on a tiny model, and the loss detectors over the recorded
comparison of notebook 12 (every method on SmolLM2-135M)."""),
]


if __name__ == "__main__":
    main(CELLS, "clinic", OUT)
