"""Measuring a model: held-out loss, accuracy, perplexity, a general-knowledge probe, generations.

Every function runs under torch.no_grad with the model in eval mode (dropout off) and puts the
model back in the mode it was in, so it can be called in the middle of training.
"""
from __future__ import annotations

import functools
import inspect
import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from labs.train import batch_loss, keeps_logits, label_logits, model_device, scored_positions, to_device


def evaluation(fn):
    """Run `fn(model, ...)` under no_grad in eval mode, then restore the model's previous mode."""
    @functools.wraps(fn)
    def wrapper(model, *args, **kwargs):
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                return fn(model, *args, **kwargs)
        finally:
            model.train(was_training)
    return wrapper


def _task(task):
    from labs.data import get_task
    return get_task(task) if isinstance(task, str) else task


def _chunks(items: Sequence, size: int):
    if size < 1:
        raise ValueError(f"batch_size must be >= 1, got {size!r}")
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _target_count(labels: torch.Tensor) -> int:
    """How many targets a batch's mean loss averaged over: rows (classify) or shifted tokens (LM)."""
    if labels.dim() == 1:
        return labels.numel()
    return int((labels[:, 1:] != -100).sum())  # causal LMs predict token t+1 from tokens <= t


# ---------------------------------------------------------------------------------------------
# Loss, accuracy, perplexity
# ---------------------------------------------------------------------------------------------
@evaluation
def eval_loss(model: nn.Module, tokenizer, task, examples: Sequence[dict], seq_len: int,
              batch_size: int = 8) -> float:
    """Mean loss per target over `examples` (per token for generate/lm tasks, per row for classify)."""
    from labs.data import collate
    task, device = _task(task), model_device(model)
    total, count = 0.0, 0
    for chunk in _chunks(list(examples), batch_size):
        batch = to_device(collate(chunk, tokenizer, task, seq_len), device)
        n = _target_count(batch["labels"])
        if n:  # a batch whose responses were truncated away has nothing to score
            total += batch_loss(model, batch, logits_fn=_label_logits).float().item() * n
            count += n
    if not count:
        raise ValueError("no target tokens to score: raise seq_len or check the examples")
    return total / count


@dataclass(frozen=True)
class Scores:
    """One pass over held-out examples: each example's own loss and how many targets it averages."""
    losses: list[float]          # mean loss per target of each example
    targets: list[int]           # its targets: response tokens (generate), tokens (lm), 1 (classify)
    correct: list[bool] | None   # classify: is the highest logit the label? (None for the others)

    @property
    def loss(self) -> float:
        """The pooled loss per target over all examples, as eval_loss computes it."""
        return sum(l * n for l, n in zip(self.losses, self.targets)) / sum(self.targets)


@evaluation
def score_examples(model: nn.Module, tokenizer, task, examples: Sequence[dict], seq_len: int,
                   batch_size: int = 8) -> Scores:
    """Each example's loss (and, for classify, whether it is right) in one pass over `examples`."""
    from labs.data import collate
    task, device = _task(task), model_device(model)
    losses: list[float] = []
    targets: list[int] = []
    correct: list[bool] = []
    for chunk in _chunks(list(examples), batch_size):
        batch = to_device(collate(chunk, tokenizer, task, seq_len), device)
        if batch["labels"].dim() == 1:                          # classify: one target per row
            labels = batch.pop("labels")
            logits = model(**batch).logits.float()
            losses += F.cross_entropy(logits, labels, reduction="none").tolist()
            targets += [1] * len(chunk)
            correct += (logits.argmax(-1) == labels).tolist()
            continue
        logits, predicted = _label_logits(model, batch)         # (B, K, V), (B, K): the scored positions only
        per_token = F.cross_entropy(logits.float().transpose(1, 2), predicted, reduction="none")  # (B, K)
        counts = (predicted != -100).sum(dim=1)                 # (B,)
        if not bool((counts > 0).all()):
            raise ValueError("an example has no target tokens to score: raise seq_len or check the examples")
        losses += (per_token.sum(dim=1) / counts).tolist()  # ignored positions contribute 0 to the sum
        targets += counts.tolist()
    return Scores(losses, targets, correct if task.kind == "classify" else None)


def _label_logits(model: nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """label_logits, reading once what every row of the batch starts with, where the model keeps a
    key/value cache of it (see _reads_cache): the same numbers, for less compute.

    A chat template's system prompt is 28 of a definition's ~47 tokens on SmolLM2, so a batch of 8
    reads 28 + 8 x 27 tokens instead of 8 x 55. Only the opening before the first scored position
    is shared; the rest of each row is read as before, after the opening's cache copied per row.
    """
    ids, mask = batch["input_ids"], batch.get("attention_mask")            # (B, T), (B, T)
    if not _reads_cache(model):
        return label_logits(model, batch)
    first, targets = scored_positions(batch["labels"])                      # (B, K), K = T - first
    lengths = mask.sum(dim=1).tolist() if mask is not None else [ids.shape[1]] * len(ids)
    n = min(len(_common_prefix([row[:length] for row, length in zip(ids.tolist(), lengths)])), first)
    if n == 0 or (mask is not None and not bool(mask[:, :n].all())):       # nothing shared, or left padding
        return label_logits(model, batch)
    cache = _opening_cache(model, ids[:1, :n], len(ids))
    if cache is None:
        return label_logits(model, batch)
    keep = targets.shape[1]
    rest = {"input_ids": ids[:, n:], _cache_argument(model): cache}
    if keeps_logits(model):
        rest["logits_to_keep"] = keep
    if mask is not None:
        rest["attention_mask"] = mask                                       # the opening's columns, then the rest
    return model(**rest).logits[:, -keep:], targets                        # (B, K, V), (B, K)


def example_losses(model: nn.Module, tokenizer, task, examples: Sequence[dict], seq_len: int,
                   batch_size: int = 8) -> list[float]:
    """Each example's own loss: mean per response token (generate/lm), or its row's loss (classify).

    eval_loss pools every token; these per-example numbers are what a paired comparison of two
    models on the same examples needs (see paired_difference).
    """
    return score_examples(model, tokenizer, task, examples, seq_len, batch_size).losses


def paired_difference(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Mean of a_i - b_i over the same examples, and its standard error.

    Pairing removes what the examples share (a hard example is hard for both models), so a small
    difference can stand out that two separate error bars would hide.
    """
    a, b = list(a), list(b)
    if len(a) != len(b) or len(a) < 2:
        raise ValueError(f"need the same examples scored by both models, at least two: got {len(a)} and {len(b)}")
    diffs = torch.tensor(a, dtype=torch.float64) - torch.tensor(b, dtype=torch.float64)
    return float(diffs.mean()), float(diffs.std(unbiased=True) / math.sqrt(len(diffs)))


@evaluation
def accuracy(model: nn.Module, tokenizer, examples: Sequence[dict], seq_len: int,
             batch_size: int = 16) -> float:
    """Fraction of {"text", "label"} examples whose highest logit is the label."""
    device, correct = model_device(model), 0
    for chunk in _chunks(list(examples), batch_size):
        enc = tokenizer([ex["text"] for ex in chunk], truncation=True, max_length=seq_len,
                        padding=True, return_tensors="pt")
        logits = model(**to_device(dict(enc), device)).logits      # (B, num_labels)
        labels = torch.tensor([ex["label"] for ex in chunk], device=device)
        correct += int((logits.argmax(-1) == labels).sum())
    return correct / len(examples) if examples else float("nan")


@evaluation
def perplexity(model: nn.Module, tokenizer, text: str | Sequence[str], seq_len: int = 128,
               stride: int | None = None) -> float:
    """exp(mean negative log-likelihood per token) of `text`, read in sliding windows.

    Each window holds at most seq_len tokens and scores the `stride` tokens after the previous
    window (default and maximum seq_len - 1: a token needs at least one token before it); the
    rest of the window is context. Every token but the first is scored exactly once.
    """
    step = min(seq_len - 1 if stride is None else stride, seq_len - 1)
    if seq_len < 2 or step < 1:
        raise ValueError(f"need seq_len >= 2 and stride >= 1, got seq_len={seq_len!r}, stride={stride!r}")
    if not isinstance(text, str):
        text = "\n\n".join(text)
    ids = torch.tensor(tokenizer(text)["input_ids"], device=model_device(model))  # (N,)
    if ids.numel() < 2:
        raise ValueError("the text is shorter than 2 tokens: nothing to predict")
    nll, scored_to, end = 0.0, 1, min(seq_len, ids.numel())
    while True:
        start = max(0, end - seq_len)
        window = ids[start:end].unsqueeze(0)                                  # (1, T)
        labels = window.clone()
        labels[:, :scored_to - start] = -100        # context only: scored by an earlier window
        nll += batch_loss(model, {"input_ids": window, "labels": labels}).float().item() * (end - scored_to)
        if end == ids.numel():
            return math.exp(nll / (ids.numel() - 1))
        scored_to, end = end, min(end + step, ids.numel())


# ---------------------------------------------------------------------------------------------
# General-knowledge probe: multiple choice by likelihood
# ---------------------------------------------------------------------------------------------
def _right_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [pad_id] * (width - len(r)) for r in rows])           # (B, T)
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])    # (B, T)
    return ids, mask


def _left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids, mask = _right_pad([r[::-1] for r in rows], pad_id)
    return ids.flip(1), mask.flip(1)                                              # (B, T), (B, T)


@evaluation
def choice_logprobs(model: nn.Module, tokenizer, context: str, choices: Sequence[str],
                    normalize: bool = True, share_context: bool | None = None) -> list[float]:
    """Log-likelihood of each choice as the continuation of `context` (mean per token if normalize).

    `context` is the full text before the answer, special tokens included (see probe_context).
    Scoring the answer text itself, not a letter, works for base and instruct models alike; the
    per-token mean keeps long answers from losing just because they have more tokens.
    share_context: read the context once and reuse its key/value cache for every choice (about
    3x less compute). The default does so where the model's forward continues from a cache and no
    adapter adds virtual tokens (prefix and prompt tuning act through that cache or the input and
    must see whole rows): see _reads_cache.
    """
    return score_choices(model, tokenizer, [(context, choices)], normalize, share_context)[0]


@evaluation
def score_choices(model: nn.Module, tokenizer, questions: Sequence[tuple[str, Sequence[str]]],
                  normalize: bool = True, share_context: bool | None = None) -> list[list[float]]:
    """choice_logprobs of several (context, choices) questions in one batch: the same numbers, but
    each forward reads the weights once for all of them (on a CPU, a forward of a few tokens costs
    about as much as reading the weights: 0.14 s for SmolLM2-135M, one thread)."""
    space = "" if getattr(tokenizer, "chat_template", None) else " "  # as collate writes responses
    ctxs, conts = [], []
    for context, choices in questions:
        ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
        cs = [tokenizer(space + c.strip(), add_special_tokens=False)["input_ids"] for c in choices]
        if not ctx or not cs or not all(cs):
            raise ValueError(f"the context and every choice need at least one token: {context!r}, {list(choices)!r}")
        ctxs.append(ctx)
        conts.append(cs)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    if share_context is None:
        share_context = _reads_cache(model)
    score = _shared_context_logps if share_context else _whole_row_logps
    return [[(t.mean() if normalize else t.sum()).item() for t in per_choice]
            for per_choice in score(model, ctxs, conts, pad_id)]


def _reads_cache(model: nn.Module) -> bool:
    """Whether a forward can continue from a key/value cache of what a row starts with: a causal LM
    whose forward names its cache, without an adapter that adds virtual tokens (prefix and prompt
    tuning act through that cache or the input, so they read whole rows)."""
    parameters = inspect.signature(model.forward).parameters
    return ("cache" in parameters or "past_key_values" in parameters) and not _adds_virtual_tokens(model)


def _adds_virtual_tokens(model: nn.Module) -> bool:
    from labs.methods import get_method
    record = getattr(model, "labs_adapter", None)
    return record is not None and get_method(record.method).virtual_tokens


def _whole_row_logps(model, ctxs: list[list[int]], conts: list[list[list[int]]],
                     pad_id: int) -> list[list[torch.Tensor]]:
    """Per-token log-probs of each continuation, each row being its context + the continuation:
    the continuation is the row's label (label_logits scores only the positions that predict it)."""
    device = model_device(model)
    owners = [q for q, cs in enumerate(conts) for _ in cs]                         # row -> question
    ids, mask = _right_pad([ctxs[q] + c for q, c in zip(owners, (c for cs in conts for c in cs))], pad_id)  # (R, T)
    labels = ids.masked_fill(mask == 0, -100)
    for r, q in enumerate(owners):
        labels[r, :len(ctxs[q])] = -100                                          # the context is not scored
    logits, targets = label_logits(model, to_device({"input_ids": ids, "attention_mask": mask, "labels": labels},
                                                    device))                       # (R, K, V), (R, K)
    logp = F.log_softmax(logits.float(), dim=-1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (R, K)
    scores: list[list[torch.Tensor]] = [[] for _ in ctxs]
    for r, q in enumerate(owners):
        scores[q].append(logp[r][targets[r] != -100])
    return scores


def _shared_context_logps(model, ctxs: list[list[int]], conts: list[list[list[int]]],
                          pad_id: int) -> list[list[torch.Tensor]]:
    """Same numbers as _whole_row_logps, reading each context once and copying its cache per choice.

    What every context starts with (a chat template's system prompt: 25 of SmolLM2's 40 tokens) is
    read once. The rest of each context is padded on the left, so that every context ends in the
    last column; positions count real tokens only, so the padding changes nothing but which
    columns the mask hides.
    """
    device = model_device(model)
    shared = _common_prefix(ctxs)                                   # Tp tokens, read once
    ends, end_mask = _left_pad([ctx[len(shared):] for ctx in ctxs], pad_id)         # (Q, Te)
    ctx_mask = torch.cat([torch.ones(len(ctxs), len(shared), dtype=end_mask.dtype), end_mask], dim=1)  # (Q, Tc)
    cache = None
    if shared:
        cache = _opening_cache(model, torch.tensor([shared], device=device), len(ctxs))
        if cache is None:
            return _whole_row_logps(model, ctxs, conts, pad_id)
    keep = {"logits_to_keep": 1} if keeps_logits(model) else {}   # only the last position predicts a choice
    out = model(input_ids=ends.to(device), attention_mask=ctx_mask.to(device), use_cache=True,
                position_ids=_positions(ctx_mask)[:, len(shared):].to(device),
                **({_cache_argument(model): cache} if cache is not None else {}), **keep)
    cache = _output_cache(out)
    if cache is None or not hasattr(cache, "batch_select_indices"):
        return _whole_row_logps(model, ctxs, conts, pad_id)
    first = F.log_softmax(out.logits[:, -1].float(), dim=-1)        # (Q, V) the token after each context
    owner = torch.tensor([q for q, cs in enumerate(conts) for _ in cs])             # (R,) row -> question
    cache.batch_select_indices(owner.to(device))                    # (Q, ...) -> (R, ...) per layer
    ids, mask = _right_pad([c for cs in conts for c in cs], pad_id)                 # (R, Tn)
    lengths = torch.tensor([len(ctx) for ctx in ctxs])[owner]                       # (R,) real context tokens
    positions = lengths.unsqueeze(1) + torch.arange(ids.shape[1])                   # (R, Tn)
    logits = model(input_ids=ids.to(device), attention_mask=torch.cat([ctx_mask[owner], mask], dim=1).to(device),
                   position_ids=positions.to(device), **{_cache_argument(model): cache}).logits  # (R, Tn, V)
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1)            # position j predicts token j+1
    rest = logp.gather(-1, ids[:, 1:].to(device).unsqueeze(-1)).squeeze(-1)         # (R, Tn-1)
    scores: list[list[torch.Tensor]] = [[] for _ in ctxs]
    for r, (q, c) in enumerate((q, c) for q, cs in enumerate(conts) for c in cs):
        scores[q].append(torch.cat([first[q, c[0]].view(1), rest[r, :len(c) - 1]]))
    return scores


def _opening_cache(model, opening: torch.Tensor, rows: int):
    """The key/value cache of `opening` (1, n), read once and copied for `rows` rows (1 -> rows per
    layer); None where the model returns no cache that can be copied (then read whole rows)."""
    cache = _output_cache(model(input_ids=opening, use_cache=True))
    if cache is None or not hasattr(cache, "batch_repeat_interleave"):
        return None
    cache.batch_repeat_interleave(rows)
    return cache


def _common_prefix(rows: list[list[int]]) -> list[int]:
    """The tokens every row starts with, leaving each row at least one token of its own."""
    n = 0
    while n < min(len(r) for r in rows) - 1 and all(r[n] == rows[0][n] for r in rows):
        n += 1
    return rows[0][:n]


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids that count real tokens only: 0, 1, 2, ... from each row's first unmasked token."""
    return (mask.cumsum(dim=1) - 1).clamp(min=0)                                    # (B, T)


def _output_cache(out):
    """The key/value cache a forward returned (transformers 5 calls it `cache`, 4 `past_key_values`)."""
    for name in ("cache", "past_key_values"):
        cache = getattr(out, name, None)
        if cache is not None:
            return cache
    return None


def _cache_argument(model) -> str:
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def probe_context(tokenizer, question: str) -> str:
    """The question as the model sees a prompt in the generate tasks (chat template for instruct
    models), so that the probe and the fine-tuning data speak the same format."""
    from labs.data import format_prompt
    return format_prompt(tokenizer, question)


def _answer_index(item: dict) -> int:
    answer = item["answer"]
    return answer if isinstance(answer, int) else list(item["choices"]).index(answer)


def probe_correct(model: nn.Module, tokenizer, items: Sequence[dict], normalize: bool = True) -> list[bool]:
    """For each {"question", "choices", "answer"} item, whether the answer is the likeliest choice.

    Keep these per-question results when you score the same items before and after training:
    the change is a paired comparison (see paired_change), not two independent accuracies.
    """
    if not items:
        raise ValueError("no probe items to score")
    # Questions with choices of like length go together: each batch pads to its longest choice.
    order = sorted(range(len(items)), key=lambda i: max((len(c) for c in items[i]["choices"]), default=0))
    hits = [False] * len(items)
    for chunk in _chunks(order, PROBE_BATCH):
        questions = [(probe_context(tokenizer, items[i]["question"]), items[i]["choices"]) for i in chunk]
        for i, scores in zip(chunk, score_choices(model, tokenizer, questions, normalize)):
            hits[i] = max(range(len(scores)), key=scores.__getitem__) == _answer_index(items[i])
    return hits


PROBE_BATCH = 8   # questions scored together (about 32 rows of choices)


def probe_accuracy(model: nn.Module, tokenizer, items: Sequence[dict], normalize: bool = True) -> float:
    """Fraction of {"question", "choices", "answer"} items where the answer is the likeliest choice."""
    hits = probe_correct(model, tokenizer, items, normalize)
    return sum(hits) / len(hits)


@dataclass(frozen=True)
class PairedChange:
    n: int           # questions scored both times
    gained: int      # wrong before, right after
    lost: int        # right before, wrong after
    p_value: float   # exact two-sided McNemar test: how likely a split at least this uneven is by chance

    @property
    def unchanged(self) -> int:
        """Questions with the same verdict both times: they say nothing about the change."""
        return self.n - self.gained - self.lost

    @property
    def accuracy_change(self) -> float:
        """after - before, as a fraction of the questions."""
        return (self.gained - self.lost) / self.n


def paired_change(before_correct: Sequence[bool], after_correct: Sequence[bool]) -> PairedChange:
    """What changed between two scorings of the same questions, with McNemar's exact test.

    A question right both times, or wrong both times, says nothing about the change: only the
    discordant ones do. If training changed nothing systematic, each discordant question was as
    likely to go one way as the other, so `gained` is Binomial(gained + lost, 1/2); the p-value is
    the two-sided tail of that coin: 2 * P(X <= min(gained, lost)), at most 1 (1 when none changed).
    """
    before, after = list(before_correct), list(after_correct)
    if len(before) != len(after) or not before:
        raise ValueError(f"need the same questions scored twice: got {len(before)} results before and "
                         f"{len(after)} after (at least one each)")
    bad = [v for v in before + after if v not in (0, 1)]   # bool, 0/1, numpy or torch booleans
    if bad:
        raise ValueError(f"per-question results must be True/False (or 1/0), got {bad[:3]!r}")
    gained = sum(1 for b, a in zip(before, after) if not b and a)
    lost = sum(1 for b, a in zip(before, after) if b and not a)
    discordant = gained + lost
    tail = sum(math.comb(discordant, k) for k in range(min(gained, lost) + 1)) / 2 ** discordant
    return PairedChange(n=len(before), gained=gained, lost=lost, p_value=min(1.0, 2 * tail))


# ---------------------------------------------------------------------------------------------
# Greedy generation
# ---------------------------------------------------------------------------------------------
@evaluation
def generate(model: nn.Module, tokenizer, prompts: Sequence[str], max_new_tokens: int = 40,
             batch_size: int = 8) -> list[str]:
    """Greedy continuations of `prompts` (chat-formatted for instruct models), new text only.

    Rows are LEFT-padded so that every prompt ends at the same position and the new tokens of
    all rows are produced together; the attention mask hides the padding.
    """
    from labs.data import format_prompt
    device, outputs = model_device(model), []
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        for chunk in _chunks([format_prompt(tokenizer, p) for p in prompts], batch_size):
            enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False)
            out = model.generate(**to_device(dict(enc), device), max_new_tokens=max_new_tokens,
                                 do_sample=False, pad_token_id=tokenizer.pad_token_id)
            new = out[:, enc["input_ids"].shape[1]:]                          # (B, new tokens)
            outputs += [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
    finally:
        tokenizer.padding_side = side
    return outputs


# ---------------------------------------------------------------------------------------------
# One call per task
# ---------------------------------------------------------------------------------------------
def metric_name(task) -> str:
    """The headline metric of a task: accuracy (higher is better) or perplexity (lower is better)."""
    return "accuracy" if _task(task).kind == "classify" else "perplexity"


def evaluate_task(model: nn.Module, tokenizer, task, examples: Sequence[dict], preset,
                  scores: Scores | None = None) -> dict:
    """{"loss": ..., "accuracy" | "perplexity": ...} on held-out examples.

    For generate tasks the prompt is masked out of the labels, so the perplexity is that of the
    response tokens only: how well the model predicts the answers, not the questions. Pass the
    `scores` of score_examples on the same examples to reuse that pass.
    """
    task = _task(task)
    scores = scores or score_examples(model, tokenizer, task, examples, preset.seq_len, preset.batch_size)
    if task.kind == "classify":
        return {"loss": scores.loss, "accuracy": sum(scores.correct) / len(scores.correct)}
    return {"loss": scores.loss, "perplexity": math.exp(scores.loss)}
