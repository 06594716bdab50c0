"""Forgetting along training: each method's curve of learning against forgetting, compared at matched learning.

    plan = PLANS["laptop"]                    # the recorded experiment ("quick": notebook 11's live one)
    record(plan, "runs/forgetting")           # every run, one JSON each (atomic); rerun to resume
    runs = load_runs("runs/forgetting")
    compare_at(runs["lora r=8"], runs["full 5e-5"], "english")   # forgetting difference at matched learning

Comparing methods by what they forgot at the end of training is unfair to the one that learned more:
a method that barely moved forgets nothing. Biderman et al. 2024 ("LoRA Learns Less and Forgets
Less") compare at *matched learning*: each run is scored at checkpoints along training, so it
draws a curve of learning (the task's held-out gain) against forgetting, and runs are compared
where their curves reach the same learning.

The experiment: SmolLM2-135M learns King James English (`kjv`: Genesis, Ruth, Esther, Jonah,
Psalms: 17th-century biblical prose, "And it came to pass"), far from what the two instruments
measure: the general-knowledge probe (modern facts, right or wrong per question) and the loss on
fixed windows of modern English (12,752 movie-review sentences from Rotten Tomatoes, 2000s, never
trained on here), every window exactly `window_tokens` long. Both are paired: the same items at
every checkpoint.

Forgetting is measured against the full-precision base. A run whose prepared model is not the base
before training (QLoRA's quantized base, prefix and prompt tuning) is scored at step 0 too: that
point is where its curve starts, and QLoRA's forgetting can also be read against its own start.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from labs.files import write_json

# Methods whose prepared model, before any step, computes exactly what the base computes (the
# trainable part starts at zero, or nothing is added): their step 0 is the base's measurement.
IDENTITY_AT_START = ("full", "lora", "bitfit", "adapter")


@dataclass(frozen=True)
class Run:
    label: str              # its name in tables and plots, e.g. "lora r=8"
    method: str             # a method of labs.methods
    lr: float               # peak learning rate (warmup-free cosine decay to lr/10, labs.train)
    options: tuple = ()     # method options as (name, value) pairs, e.g. (("r", 64), ("alpha", 128))
    seed: int = 0           # data order and initialisation


@dataclass(frozen=True)
class Plan:
    name: str
    runs: tuple[Run, ...]
    steps: int              # optimizer steps per run
    checkpoint_every: int   # steps between checkpoints, each scored on every instrument
    batch_size: int         # rows per step
    seq_len: int            # tokens per training row and per held-out task row
    n_task_eval: int        # held-out chunks of the task (learning)
    english_windows: int    # windows of the English corpus (forgetting)
    window_tokens: int      # tokens per window: every window is exactly this long
    n_probe: int            # probe questions (forgetting); the probe holds 300
    model: str = "smollm2-135m"
    task: str = "kjv"
    english: str = "reviews"    # "reviews" (modern English), or a corpus of labs.data (austen, moby, ...)

    def run(self, label: str) -> Run:
        for run in self.runs:
            if run.label == label:
                return run
        raise ValueError(f"no run {label!r} in plan {self.name!r}; it has {', '.join(r.label for r in self.runs)}")


# Learning rates people use: the registry's laptop rates, and for full fine-tuning one 4x higher too;
# LoRA at a rate 3x lower as well, to see whether its rate rather than its rank sets its forgetting.
PLANS = {
    "laptop": Plan("laptop", runs=(   # the main comparison first, so a partial recording already shows it
        Run("full 5e-5", "full", 5e-5), Run("lora r=8", "lora", 1e-3), Run("full 2e-4", "full", 2e-4),
        Run("qlora r=8", "qlora", 1e-3), Run("lora r=64", "lora", 1e-3, (("r", 64), ("alpha", 128))),
        Run("full 5e-5 seed 1", "full", 5e-5, seed=1), Run("lora r=8 seed 1", "lora", 1e-3, seed=1),
        Run("bitfit", "bitfit", 5e-3), Run("adapter", "adapter", 1e-3), Run("prefix", "prefix", 5e-3),
        Run("prompt", "prompt", 1e-2), Run("lora r=8 3e-4", "lora", 3e-4)),
        steps=30, checkpoint_every=10, batch_size=8, seq_len=96, n_task_eval=48, english_windows=32,
        window_tokens=256, n_probe=300),
    "quick": Plan("quick", runs=(Run("full 2e-4", "full", 2e-4), Run("lora r=8", "lora", 2e-3)),
                  steps=12, checkpoint_every=6, batch_size=8, seq_len=64, n_task_eval=32, english_windows=16,
                  window_tokens=256, n_probe=60),
}
RECORDED = Path(__file__).resolve().parent.parent / "notebooks" / "recorded" / "forgetting-laptop"
RECORD_COMMAND = ("LABS_IMPL=solutions python -m labs.forgetting --plan laptop --out notebooks/recorded/forgetting-laptop"
                  " --share 0/2 & (the same with --share 1/2)")


# ---------------------------------------------------------------------------------------------
# Instruments
# ---------------------------------------------------------------------------------------------
def english_text(name: str) -> str:
    """The text of the English instrument: "reviews" (every Rotten Tomatoes sentence, one per line:
    modern English), or a public-domain corpus of labs.data."""
    from labs.data import SPLITS, load_corpus, load_examples
    if name == "reviews":
        return "\n".join(ex["text"] for split in SPLITS for ex in load_examples("sentiment", split))
    return load_corpus(name)


def english_windows(tokenizer, text: str, n: int, tokens: int) -> torch.Tensor:
    """n windows of exactly `tokens` tokens, evenly spaced over the whole tokenized text: (n, tokens)."""
    ids = tokenizer(text)["input_ids"]
    if len(ids) < n * tokens:
        raise ValueError(f"the text has {len(ids)} tokens, too few for {n} windows of {tokens}; "
                         f"ask for at most {len(ids) // tokens} windows")
    stride = len(ids) // n
    return torch.tensor([ids[i * stride:i * stride + tokens] for i in range(n)])


@torch.no_grad()
def window_losses(model, windows: torch.Tensor, batch_size: int = 8) -> list[float]:
    """Each window's mean loss per predicted token (tokens - 1 of them), with the model as it runs."""
    import torch.nn.functional as F
    from labs.train import label_logits, model_device
    losses = []
    for rows in windows.split(batch_size):
        rows = rows.to(model_device(model))                                  # (B, T)
        logits, targets = label_logits(model, {"input_ids": rows, "attention_mask": torch.ones_like(rows),
                                               "labels": rows})              # (B, T, V), (B, T)
        per_token = F.cross_entropy(logits.float().transpose(1, 2), targets, reduction="none")  # (B, T)
        losses += (per_token.sum(1) / (targets != -100).sum(1)).tolist()
    return losses


class Instruments:
    """The plan's items, fixed once: held-out task chunks, English windows, probe questions."""

    def __init__(self, plan: Plan, tokenizer):
        from labs.data import get_task, load_examples, load_probe
        self.plan, self.tokenizer, self.task = plan, tokenizer, get_task(plan.task)
        self.task_examples = load_examples(plan.task, "validation", n=plan.n_task_eval)
        self.windows = english_windows(tokenizer, english_text(plan.english), plan.english_windows, plan.window_tokens)
        self.probe = load_probe(n=plan.n_probe)

    @torch.no_grad()
    def score(self, model) -> dict:
        """{"task": loss per held-out chunk, "english": loss per window, "probe": 1/0 per question}."""
        from labs.evaluate import example_losses, probe_correct
        was_training = model.training
        model.eval()
        try:
            return {"task": example_losses(model, self.tokenizer, self.task, self.task_examples,
                                           self.plan.seq_len, self.plan.batch_size),
                    "english": window_losses(model, self.windows, self.plan.batch_size),
                    "probe": [int(hit) for hit in probe_correct(model, self.tokenizer, self.probe)]}
        finally:
            model.train(was_training)


# ---------------------------------------------------------------------------------------------
# Recording
# ---------------------------------------------------------------------------------------------
def run_one(plan: Plan, run: Run, base, tokenizer, instruments: Instruments, impl: str | None = None) -> dict:
    """Train one run on a copy of `base`, scoring the instruments at every checkpoint."""
    from labs.data import batches, load_examples
    from labs.methods import prepare
    from labs.train import TrainConfig, train
    torch.manual_seed(run.seed)
    model = prepare(run.method, _starting_model(plan, run, base, impl), instruments.task, dict(run.options), impl)
    start = None if run.method in IDENTITY_AT_START else instruments.score(model)
    stream = batches(load_examples(plan.task, "train", seed=run.seed), tokenizer, instruments.task,
                     plan.seq_len, plan.batch_size, seed=run.seed, epochs=None)
    cfg = TrainConfig(lr=run.lr, max_steps=plan.steps, seed=run.seed, eval_every=plan.checkpoint_every)
    clock = time.perf_counter()
    history = train(model, stream, cfg, eval_fn=instruments.score, progress=False)
    return {"run": asdict(run), "settings": settings_of(plan), "start": start, "checkpoints": [{"step": s, **scores} for s, scores in history.evals],
            "losses": history.losses, "wall_time_s": time.perf_counter() - clock}


def _starting_model(plan: Plan, run: Run, base, impl: str | None):
    """A copy of the base, or for QLoRA the base read again quantized layer by layer, as
    `labs finetune --method qlora` trains it (bf16 embedding and head, never an fp32 copy)."""
    import copy

    from labs.methods import get_method
    if not get_method(run.method).loads_quantized:
        return copy.deepcopy(base)
    from labs.impl import technique
    from labs.nf4_loading import load_quantized
    from labs.options import config_from_options
    config = config_from_options(technique("qlora", impl).QLoRAConfig, dict(run.options))
    return load_quantized(plan.model, config, impl=impl)[0]


def settings_of(plan: Plan) -> dict:
    """What every run of a plan shares (all but its name and runs): a recorded run is reused only
    under the same settings."""
    return {k: v for k, v in asdict(plan).items() if k not in ("name", "runs")}


def record(plan: Plan | str, out: str | Path, impl: str | None = None, say=print, share: tuple[int, int] = (0, 1)) -> Path:
    """Every run of the plan, resumable: base.json, then runs/<label>.json each as it finishes.

    share=(k, n): only the runs whose index is k modulo n, so that n processes can record one plan.
    """
    from labs.models import load_model
    plan = PLANS[plan] if isinstance(plan, str) else plan
    out = Path(out)
    torch.manual_seed(0)
    base, tokenizer = load_model(plan.model)
    instruments = Instruments(plan, tokenizer)
    write_json(out / "plan.json", asdict(plan))
    base_path = out / "base.json"
    if not (base_path.is_file() and json.loads(base_path.read_text()).get("settings") == settings_of(plan)):
        write_json(base_path, {"settings": settings_of(plan), **instruments.score(base)})
    for i, run in enumerate(plan.runs):
        if i % share[1] != share[0]:
            continue
        path = _run_path(out, run.label)
        if path.is_file() and _same_run(json.loads(path.read_text()), plan, run):
            say(f"[{i + 1}/{len(plan.runs)}] {run.label}: recorded already")
            continue
        say(f"[{i + 1}/{len(plan.runs)}] {run.label}: training {plan.steps} steps at lr {run.lr:g} ...")
        result = run_one(plan, run, base, tokenizer, instruments, impl)
        write_json(path, result)
        say(f"    done in {result['wall_time_s']:.0f} s")
    write_summary(out)
    return out


def write_summary(out: Path) -> None:
    """summary.json: when the recording finished, on what, and the training time of its runs."""
    import platform
    _, runs = load_runs(out)
    write_json(Path(out) / "summary.json", {
        "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "runs": len(runs),
        "wall_time_s": sum(r["wall_time_s"] for r in runs.values()), "torch_threads": torch.get_num_threads(),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "torch": torch.__version__})


def _same_run(recorded: dict, plan: Plan, run: Run) -> bool:
    as_json = json.loads(json.dumps({"run": asdict(run), "settings": settings_of(plan)}))
    return recorded.get("run") == as_json["run"] and recorded.get("settings") == as_json["settings"]


def _run_path(out: Path, label: str) -> Path:
    return out / "runs" / (label.replace(" ", "_").replace("=", "") + ".json")


def load_runs(out: str | Path) -> tuple[dict, dict]:
    """(base scores, {label: run}) from a folder `record` wrote, runs in the plan's order."""
    out = Path(out)
    plan = json.loads((out / "plan.json").read_text())
    runs = {}
    for spec in plan["runs"]:
        path = _run_path(out, spec["label"])
        if path.is_file():
            runs[spec["label"]] = json.loads(path.read_text())
    return json.loads((out / "base.json").read_text()), runs


# ---------------------------------------------------------------------------------------------
# Curves and the comparison at matched learning
# ---------------------------------------------------------------------------------------------
INSTRUMENTS = {"english": "English loss rise", "probe": "probe accuracy drop"}


def per_item(base: dict, scores: dict, instrument: str) -> list[float]:
    """Forgetting per item against `base`, positive = forgotten: loss rise, or 1 for a question lost."""
    b, s = base[instrument], scores[instrument]
    return [after - before for before, after in zip(b, s)] if instrument == "english" else \
           [before - after for before, after in zip(b, s)]


def curve(base: dict, run: dict, instrument: str, start_as_base: dict | None = None) -> list[dict]:
    """The run's points from step 0: {"step", "gain", "forgetting" (mean), "items" (per item)}.

    gain is the held-out task loss's mean fall from the base (positive = learned).
    start_as_base: measure against these scores instead of `base` (QLoRA against its own start).
    """
    ref = start_as_base or base
    points = [run["start"] or base] + run["checkpoints"]
    steps = [0] + [c["step"] for c in run["checkpoints"]]
    out = []
    for step, scores in zip(steps, points):
        gain = sum(b - a for b, a in zip(ref["task"], scores["task"])) / len(ref["task"])
        items = per_item(ref, scores, instrument)
        out.append({"step": step, "gain": gain, "forgetting": sum(items) / len(items), "items": items})
    return out


def at_gain(points: list[dict], gain: float) -> list[float] | None:
    """Forgetting per item where the curve first reaches `gain`, interpolated linearly between the two
    checkpoints around it; None if the curve never gets there."""
    for a, b in zip(points, points[1:]):
        if a["gain"] <= gain <= b["gain"] and b["gain"] > a["gain"]:
            t = (gain - a["gain"]) / (b["gain"] - a["gain"])
            return [(1 - t) * x + t * y for x, y in zip(a["items"], b["items"])]
    return next((p["items"] for p in points if p["gain"] == gain), None)


def matched_gain(*curves: list[dict]) -> float:
    """The most learning every curve reaches from its start: where they can all be compared."""
    return min(max(p["gain"] for p in c) for c in curves)


def compare_at(base: dict, run: dict, reference: dict, instrument: str, gain: float | None = None,
               own_start: bool = False) -> dict:
    """Forgetting of `run` minus that of `reference` at the same learning, paired over the items.

    Negative = `run` forgets less. Returns {"gain", "run", "reference", "difference", "se", "z"}; the
    standard error is over the instrument's items only (the seed's spread is seen from repeated seeds).
    own_start: `run`'s learning and forgetting counted from its own start (QLoRA's quantized base).
    """
    from labs.evaluate import paired_difference
    a = curve(base, run, instrument, start_as_base=run["start"] if own_start else None)
    b = curve(base, reference, instrument)
    gain = matched_gain(a, b) if gain is None else gain
    items_a, items_b = at_gain(a, gain), at_gain(b, gain)
    if items_a is None or items_b is None:
        raise ValueError(f"both curves must reach a gain of {gain:.3f}; they reach "
                         f"{max(p['gain'] for p in a):.3f} and {max(p['gain'] for p in b):.3f}")
    diff, se = paired_difference(items_a, items_b)
    return {"gain": gain, "run": sum(items_a) / len(items_a), "reference": sum(items_b) / len(items_b),
            "difference": diff, "se": se, "z": diff / se if se > 0 else math.copysign(math.inf, diff) if diff else 0.0}


def at_end(base: dict, run: dict, instrument: str) -> tuple[float, float]:
    """Forgetting at the last checkpoint against the base, paired over the items: (mean, standard error)."""
    from labs.evaluate import paired_difference
    items = curve(base, run, instrument)[-1]["items"]
    return paired_difference(items, [0.0] * len(items))


def verdict_line(label: str, reference: str, result: dict, instrument: str) -> str:
    """One sentence: who forgets less at this learning, by how much, and how sure."""
    d, se, z = result["difference"], result["se"], result["z"]
    head = f"at a gain of {result['gain']:.3f}, {label} vs {reference} ({INSTRUMENTS[instrument]}): "
    if abs(z) < 2:
        return head + f"cannot be told apart ({d:+.4f} ± {se:.4f}, {abs(z):.1f} SE)"
    who = label if d < 0 else reference
    return head + f"{who} forgets less, by {abs(d):.4f} ± {se:.4f} ({abs(z):.1f} SE)"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m labs.forgetting", description=__doc__.split("\n")[0])
    parser.add_argument("--plan", default="laptop", choices=sorted(PLANS))
    parser.add_argument("--out", required=True, help="folder for plan.json, base.json and runs/ (resumes)")
    parser.add_argument("--impl", default=None, help="labs (your modules) or solutions (default $LABS_IMPL)")
    parser.add_argument("--share", default="0/1", help="K/N: record only runs K, K+N, K+2N, ... (N processes at once)")
    args = parser.parse_args(argv)
    try:
        k, n = (int(x) for x in args.share.split("/"))
        assert 0 <= k < n
    except (ValueError, AssertionError):
        parser.error(f"--share {args.share!r}: expected K/N with 0 <= K < N, such as 0/2")
    torch.set_num_threads(1)
    record(args.plan, args.out, args.impl, share=(k, n))


if __name__ == "__main__":
    main()
