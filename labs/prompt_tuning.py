# GENERATED from solutions/prompt_tuning.py by tools/make_stubs.py: the reference lives there.
# Your exercises: replace each `raise NotImplementedError(...)` below with your code.
"""Prompt tuning (Lester, Al-Rfou & Constant, 2021): train only a few input embeddings.

A frozen language model reads a sequence of token embeddings (B, T, D). Prompt tuning puts P
"virtual tokens" in front of it: the rows of one trainable matrix `prompt_embeddings` (P, D),
which need not be the embedding of any word. Only those P x D numbers train. On T5-XXL the paper
needed 5 tokens x 4096 = 20,480 parameters per task to match fine-tuning all 11 billion.

The model's code stays untouched: a forward pre-hook rewrites the inputs of every call.

    input_ids (B, T) -> embeddings (B, T, D) -> [prompt; embeddings]       (B, P+T, D)
    attention_mask   -> [1 ... 1; mask]     labels -> [-100 ... -100; labels]  (B, P+T)

`generate()` calls forward once on the whole prompt (the prefill: its cache is still empty), then
once per new token with only that token. The virtual tokens go in on the prefill, land in the
key/value cache like real tokens, and must not be added again: later calls only widen the mask
and shift the position ids by P. A forward hook trims the logits back to the T real positions,
so `logits[:, t]` still belongs to `input_ids[:, t]`.

    model = apply(model, PromptTuningConfig(num_virtual_tokens=20, init="text"), tokenizer)
    model(**batch).loss.backward()        # only soft_prompt.prompt_embeddings gets a gradient
    model.generate(**enc, max_new_tokens=20)
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import torch
from torch import nn

from labs.surgery import freeze, mark_adapted

NOTEBOOK = "notebooks/07_prompt_tuning.ipynb"
METHOD = "prompt"
PEFT_TYPE = "PROMPT_TUNING"
INITS = ("random", "vocab", "text")
PEFT_INITS = {"random": "RANDOM", "vocab": "SAMPLE_VOCAB", "text": "TEXT"}  # ours -> peft's names
COMMON_TOKENS = 5000  # "vocab" samples the first ids: Lester et al. drew from the 5,000 most common


@dataclass(frozen=True)
class PromptTuningConfig:
    num_virtual_tokens: int = 20        # P: soft-prompt length; the paper's gains flatten past ~20
    init: str = "vocab"                 # "random": Gaussian at the vocabulary's scale; "vocab": P sampled
                                        # word embeddings; "text": the embeddings of init_text
    init_text: str = "Classify the sentiment of this review:"  # init="text": repeated or cut to P tokens
    tokenizer_name_or_path: str | None = None  # which tokenizer read init_text (peft records it)
    seed: int = 0                       # makes "random" and "vocab" initialisation reproducible

    def __post_init__(self):
        if isinstance(self.num_virtual_tokens, bool) or not isinstance(self.num_virtual_tokens, int) \
                or self.num_virtual_tokens < 1:
            raise ValueError(f"num_virtual_tokens must be a whole number >= 1, got {self.num_virtual_tokens!r}")
        if self.init not in INITS:
            raise ValueError(f"init {self.init!r} is not valid; use one of {', '.join(INITS)}")
        if self.init == "text" and not (isinstance(self.init_text, str) and self.init_text.strip()):
            raise ValueError(f"init='text' needs a non-empty init_text, got {self.init_text!r}")


# ---------------------------------------------------------------------------------------------
# Shared by both editions (outside the exercises)
# ---------------------------------------------------------------------------------------------
def check_context(model_config, length: int) -> None:
    """Refuse P + T positions beyond the model's context (max_position_embeddings, GPT-2's n_positions)."""
    limit = getattr(model_config, "max_position_embeddings", None) or getattr(model_config, "n_positions", None)
    if limit is not None and length > limit:
        raise ValueError(f"virtual tokens + input tokens = {length} positions, but the model has only {limit} "
                         "(max_position_embeddings): shorten the input or use fewer virtual tokens")


def positions_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """(B, T) 0/1 mask -> (B, T) positions counting only real tokens (left padding skipped)."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def bind_inputs(args: tuple, kwargs: dict) -> dict:
    """The hook sees model(ids) as args=(ids,): name it, so every call looks like model(input_ids=ids)."""
    kwargs = dict(kwargs)
    if len(args) > 1:
        raise TypeError("prompt tuning reads the model's inputs by name: call model(input_ids=..., "
                        "attention_mask=..., ...)")
    if args:
        kwargs["input_ids"] = args[0]
    if "past_key_values" in kwargs:  # the name transformers 5 is retiring in favour of `cache`
        kwargs["cache"] = kwargs.pop("past_key_values")
    return kwargs


# ---------------------------------------------------------------------------------------------
# Exercises: initialisation
# ---------------------------------------------------------------------------------------------
def text_init_ids(token_ids: list[int], num_virtual_tokens: int) -> list[int]:
    """The token ids of an init text fitted to P: cut when longer, repeated when shorter (as peft)."""
    raise NotImplementedError("Exercise 7.1: text_init_ids - see notebooks/07_prompt_tuning.ipynb")


def init_prompt(embedding: nn.Embedding, config: PromptTuningConfig, tokenizer=None) -> torch.Tensor:
    """The initial soft prompt, (P, D) in float32, by config.init.

    "random": N(0, s^2) with s the standard deviation of the embedding matrix (peft uses N(0, 1),
    far off the scale of real embeddings); "vocab": the rows of P token ids drawn uniformly from the
    first COMMON_TOKENS ids with a torch.Generator seeded by config.seed; "text": the rows of the
    tokens of config.init_text (tokenizer(text)["input_ids"], as peft), fitted with text_init_ids.
    """
    raise NotImplementedError("Exercise 7.2: init_prompt - see notebooks/07_prompt_tuning.ipynb")


# ---------------------------------------------------------------------------------------------
# Exercises: putting the prompt in front
# ---------------------------------------------------------------------------------------------
def prepend(prompt: torch.Tensor, embeds: torch.Tensor) -> torch.Tensor:
    """(P, D) prompt and (B, T, D) embeddings -> (B, P+T, D), the prompt first in every row."""
    raise NotImplementedError("Exercise 7.3: prepend - see notebooks/07_prompt_tuning.ipynb")


def extend_mask_and_labels(mask: torch.Tensor, labels: torch.Tensor | None, num_virtual_tokens: int):
    """(B, T) mask -> (B, P+T) with ones in front: every row sees the virtual tokens.

    Token labels (B, T) -> (B, P+T) with -100 in front: no loss on virtual positions. Class labels
    (B,) of a classifier and None pass through unchanged. Returns (mask, labels).
    """
    raise NotImplementedError("Exercise 7.4: extend_mask_and_labels - see notebooks/07_prompt_tuning.ipynb")


class SoftPrompt(nn.Module):
    """The trainable virtual tokens, and the hooks that put them in front of every input."""

    def __init__(self, prompt: torch.Tensor):
        super().__init__()
        self.prompt_embeddings = nn.Parameter(prompt.detach().float().clone())  # (P, D)
        self.real_length = None  # T of the current call: after_forward trims the logits to it

    @property
    def num_virtual_tokens(self) -> int:
        return self.prompt_embeddings.shape[0]

    def fresh_inputs(self, model: nn.Module, kwargs: dict) -> dict:
        """The keyword arguments of a fresh call (training, or generate's prefill), prompt in front.

        1. Pop input_ids / inputs_embeds; embed the ids with model.get_input_embeddings() -> (B, T, D);
           check_context(model.config, P + T).
        2. attention_mask (ones (B, T) when missing) and labels: extend_mask_and_labels.
        3. position_ids (B, P+T): positions_from_mask(extended mask) when none were given, else
           0 .. P-1 for the prompt followed by the given ones + P.
        4. Put inputs_embeds = prepend(self.prompt_embeddings, embeds), the mask, labels and positions
           into kwargs; set self.real_length = T (the forward hook trims the logits to it). Return kwargs.
        """
        raise NotImplementedError("Exercise 7.5: SoftPrompt.fresh_inputs - see notebooks/07_prompt_tuning.ipynb")

    def decode_inputs(self, kwargs: dict) -> dict:
        """A decode step of generate(): the prompt is in the cache already; count it in mask and positions."""
        P = self.num_virtual_tokens
        if kwargs.get("attention_mask") is not None:
            kwargs["attention_mask"] = extend_mask_and_labels(kwargs["attention_mask"], None, P)[0]
        if kwargs.get("position_ids") is not None:
            kwargs["position_ids"] = kwargs["position_ids"] + P
        self.real_length = None
        return kwargs

    def before_forward(self, model: nn.Module, args: tuple, kwargs: dict):
        """Forward pre-hook: a call with an empty (or no) cache is fresh and gets the prompt."""
        kwargs = bind_inputs(args, kwargs)
        cache = kwargs.get("cache")
        if cache is not None and cache.get_seq_length() > 0:
            return (), self.decode_inputs(kwargs)
        kwargs = self.fresh_inputs(model, kwargs)
        if kwargs.get("token_type_ids") is not None:  # BERT: the virtual tokens are of segment 0
            tt = kwargs["token_type_ids"]
            kwargs["token_type_ids"] = torch.cat([tt.new_zeros(tt.shape[0], self.num_virtual_tokens), tt], dim=1)
        return (), kwargs

    def after_forward(self, model: nn.Module, args: tuple, kwargs: dict, output):
        """Forward hook: keep the logits of the T real positions, aligned with input_ids."""
        logits = getattr(output, "logits", None)
        if self.real_length and logits is not None and logits.dim() == 3 and logits.shape[1] > self.real_length:
            output.logits = logits[:, -self.real_length:]                # (B, T, V)
        return output


# ---------------------------------------------------------------------------------------------
# The technique-module protocol
# ---------------------------------------------------------------------------------------------
def attach(model: nn.Module, config: PromptTuningConfig, prompt: torch.Tensor) -> nn.Module:
    """Freeze `model`, hang a SoftPrompt holding `prompt` (P, D) on it, and hook it in."""
    width = model.get_input_embeddings().weight.shape[1]
    if tuple(prompt.shape) != (config.num_virtual_tokens, width):
        raise ValueError(f"the soft prompt has shape {tuple(prompt.shape)} but this model needs "
                         f"({config.num_virtual_tokens}, {width}) (P, D): it was made for another base model")
    mark_adapted(model, METHOD, config, __name__)   # refuses a model that already carries an adapter
    freeze(model)
    model.soft_prompt = SoftPrompt(prompt).to(model.get_input_embeddings().weight.device)
    model.register_forward_pre_hook(model.soft_prompt.before_forward, with_kwargs=True)
    model.register_forward_hook(model.soft_prompt.after_forward, with_kwargs=True)
    return model


def apply(model: nn.Module, config: PromptTuningConfig = PromptTuningConfig(), tokenizer=None) -> nn.Module:
    """Prompt-tune `model` in place: only `soft_prompt.prompt_embeddings` (P, D) trains."""
    if not isinstance(config, PromptTuningConfig):
        raise TypeError(f"config must be a PromptTuningConfig, got {type(config).__name__}")
    prompt = init_prompt(model.get_input_embeddings(), config, tokenizer)
    if config.tokenizer_name_or_path is None and getattr(tokenizer, "name_or_path", None):
        config = replace(config, tokenizer_name_or_path=tokenizer.name_or_path)
    return attach(model, config, prompt)


def _task_type(model: nn.Module) -> str:
    return "SEQ_CLS" if type(model).__name__.endswith("ForSequenceClassification") else "CAUSAL_LM"


HEAD_PREFIX = "base_model."  # peft's key prefix for the other trained tensors (a classifier head)


def head_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """A classifier's head (new, random: the logits need it) and any other trained tensor besides
    ours, under peft's key names."""
    return {HEAD_PREFIX + n: p.detach().clone() for n, p in model.named_parameters()
            if not n.startswith("soft_prompt.") and (p.requires_grad or n.split(".")[0] in ("classifier", "score"))}


def load_head_tensors(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Copy saved head tensors (peft's modules_to_save) into `model` and let them train."""
    params = dict(model.named_parameters())
    for key, tensor in state_dict.items():
        if not key.startswith(HEAD_PREFIX):
            continue
        name = key[len(HEAD_PREFIX):]
        if name not in params or tuple(params[name].shape) != tuple(tensor.shape):
            raise ValueError(f"adapter tensor {key!r} {tuple(tensor.shape)} does not fit this model "
                             f"({tuple(params[name].shape) if name in params else 'no such parameter'}): "
                             "the adapter was made for another base model")
        with torch.no_grad():
            params[name].copy_(tensor.to(params[name].dtype))
        params[name].requires_grad_(True)


def to_peft(model: nn.Module) -> tuple[dict, dict[str, torch.Tensor]]:
    """(adapter_config.json dict, {"prompt_embeddings": (P, D)}) in peft's PROMPT_TUNING layout."""
    record = getattr(model, "labs_adapter", None)
    if record is None or record.method != METHOD:
        raise ValueError(f"to_peft needs a model prepared with {__name__}.apply; this one carries "
                         f"{record.method if record else 'no adapter'!r}")
    cfg, mc = record.config, model.config
    base_name = getattr(mc, "name_or_path", "") or ""
    config = {"peft_type": PEFT_TYPE, "task_type": _task_type(model), "base_model_name_or_path": base_name,
              "num_virtual_tokens": cfg.num_virtual_tokens, "token_dim": model.soft_prompt.prompt_embeddings.shape[1],
              "num_transformer_submodules": 1, "num_attention_heads": mc.num_attention_heads,
              "num_layers": mc.num_hidden_layers, "prompt_tuning_init": PEFT_INITS[cfg.init],
              "prompt_tuning_init_text": cfg.init_text if cfg.init == "text" else None,
              # peft refuses a TEXT config without a tokenizer name, even when it never loads it
              "tokenizer_name_or_path": cfg.tokenizer_name_or_path or (base_name if cfg.init == "text" else None),
              "tokenizer_kwargs": None, "inference_mode": True, "revision": None}
    heads = head_tensors(model)
    config["modules_to_save"] = sorted({k[len(HEAD_PREFIX):].split(".")[0] for k in heads}) or None
    return config, {"prompt_embeddings": model.soft_prompt.prompt_embeddings.detach().clone(), **heads}


def from_peft(model: nn.Module, config_dict: dict, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """Prompt-tune `model` with the soft prompt saved by to_peft or by peft."""
    if config_dict.get("peft_type") != PEFT_TYPE:
        raise ValueError(f"peft_type {config_dict.get('peft_type')!r} is not {PEFT_TYPE!r}")
    if config_dict.get("num_transformer_submodules", 1) != 1:
        raise ValueError("this adapter is for an encoder-decoder model (num_transformer_submodules="
                         f"{config_dict['num_transformer_submodules']}); only decoder or encoder models are supported")
    if "prompt_embeddings" not in state_dict:
        raise ValueError(f"the adapter file has no 'prompt_embeddings' tensor (it has {sorted(state_dict)})")
    init = {v: k for k, v in PEFT_INITS.items()}.get(str(config_dict.get("prompt_tuning_init", "RANDOM")), "random")
    config = PromptTuningConfig(num_virtual_tokens=int(config_dict["num_virtual_tokens"]), init=init,
                                init_text=config_dict.get("prompt_tuning_init_text") or PromptTuningConfig.init_text,
                                tokenizer_name_or_path=config_dict.get("tokenizer_name_or_path"))
    attach(model, config, state_dict["prompt_embeddings"])
    load_head_tensors(model, state_dict)
    return model


def prepare_for_finetune(model: nn.Module, task, options: dict | None = None) -> nn.Module:
    """What `labs finetune --method prompt` runs: 20 virtual tokens from sampled vocabulary.

    `options` override PromptTuningConfig fields (command-line strings are converted), e.g.
    {"num_virtual_tokens": "8"}; init="text" also needs {"tokenizer": tokenizer}.
    """
    options = dict(options or {})
    tokenizer, types = options.pop("tokenizer", None), {f.name: f.type for f in fields(PromptTuningConfig)}
    unknown = sorted(set(options) - set(types))
    if unknown:
        raise ValueError(f"unknown prompt option(s) {', '.join(unknown)}; accepted: {', '.join(types)}")
    for name, value in options.items():
        if isinstance(value, str) and types[name] == "int":
            if not value.strip().lstrip("-").isdigit():
                raise ValueError(f"prompt option {name}={value!r} is not valid; use a whole number")
            options[name] = int(value)
    return apply(model, PromptTuningConfig(**options), tokenizer)
