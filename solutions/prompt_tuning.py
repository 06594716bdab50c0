"""Prompt tuning (Lester, Al-Rfou & Constant, 2021): train only a few input embeddings.

A frozen language model reads a sequence of token embeddings (B, T, D). Prompt tuning puts P
"virtual tokens" in front of it: the rows of one trainable matrix `prompt_embeddings` (P, D),
which need not be the embedding of any word. Only those P x D numbers train. On LM-adapted T5-XXL
(11 billion parameters) the paper's default prompt of 100 tokens x 4096 = 409,600 numbers per task
matched fine-tuning all the weights (section 3.1); its often-quoted 20,480 (5 tokens x 4096, Figure
2) only illustrates what storing a 5-token prompt would cost.

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

from dataclasses import dataclass, replace

import torch
from torch import nn
from torch.nn import functional as F

from labs.options import config_from_options
from labs.peft_format import config_fields, prepared_by
from labs.surgery import freeze, mark_adapted
from labs.virtual_tokens import (INITS, bind_inputs, check_context, hook_in, init_token_ids, load_head_tensors,
                                 positions_from_mask, prompt_tensors, read_prompt_tensors)

NOTEBOOK = "notebooks/07_prompt_tuning.ipynb"
PEFT_INITS = {"random": "RANDOM", "vocab": "SAMPLE_VOCAB", "text": "TEXT"}  # ours -> peft's names


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
# Exercises: the start, and what it is near
# ---------------------------------------------------------------------------------------------
def nearest_tokens(prompt: torch.Tensor, embedding_weight: torch.Tensor, k: int = 1):
    """For each of the P virtual tokens, the k vocabulary tokens whose embeddings point the most
    the same way: cosine similarity of (P, D) prompt rows and (V, D) embedding rows.

    Returns (similarity, token_ids), both (P, k), most similar first (torch.topk). k must be
    between 1 and V, else ValueError: the message must contain k=<the bad value>, e.g. k=0.
    """
    # BEGIN SOLUTION 7.1
    if not 1 <= k <= embedding_weight.shape[0]:
        raise ValueError(f"k={k!r} is not valid; use 1 .. {embedding_weight.shape[0]} (the vocabulary size)")
    rows = F.normalize(prompt.detach().float(), dim=-1)                   # (P, D), unit length
    words = F.normalize(embedding_weight.detach().float(), dim=-1)         # (V, D)
    similarity, token_ids = (rows @ words.T).topk(k, dim=-1)             # (P, V) -> (P, k)
    return similarity, token_ids
    # END SOLUTION


def init_prompt(embedding: nn.Embedding, config: PromptTuningConfig, tokenizer=None) -> torch.Tensor:
    """The initial soft prompt, (P, D) in float32, by config.init.

    "random": N(0, s^2) with s the standard deviation of the embedding matrix (peft uses N(0, 1),
    far off the scale of real embeddings), drawn with a torch.Generator seeded by config.seed;
    "vocab" and "text": the embedding rows of the P token ids init_token_ids(config, V, tokenizer)
    gives (sampled common tokens, or the text's tokens fitted to P).
    """
    # BEGIN SOLUTION 7.2
    weight = embedding.weight.detach()                                   # (V, D)
    if config.init == "random":
        generator = torch.Generator().manual_seed(config.seed)
        noise = torch.randn(config.num_virtual_tokens, weight.shape[1], generator=generator)
        return noise * weight.float().std().item()                       # (P, D)
    ids = init_token_ids(config, weight.shape[0], tokenizer)             # (P,)
    return weight[ids.to(weight.device)].float().cpu().clone()            # (P, D)
    # END SOLUTION


# ---------------------------------------------------------------------------------------------
# Exercises: putting the prompt in front
# ---------------------------------------------------------------------------------------------
def prepend(prompt: torch.Tensor, embeds: torch.Tensor) -> torch.Tensor:
    """(P, D) prompt and (B, T, D) embeddings -> (B, P+T, D), the prompt first in every row."""
    # BEGIN SOLUTION 7.3
    B = embeds.shape[0]
    prompt = prompt.to(embeds.dtype).unsqueeze(0).expand(B, -1, -1)       # (B, P, D)
    return torch.cat([prompt, embeds], dim=1)                            # (B, P+T, D)
    # END SOLUTION


def extend_mask_and_labels(mask: torch.Tensor, labels: torch.Tensor | None, num_virtual_tokens: int):
    """(B, T) mask -> (B, P+T) with ones in front: every row sees the virtual tokens.

    Token labels (B, T) -> (B, P+T) with -100 in front: no loss on virtual positions. Class labels
    (B,) of a classifier and None pass through unchanged. Returns (mask, labels).
    """
    # BEGIN SOLUTION 7.4
    B, P = mask.shape[0], num_virtual_tokens
    mask = torch.cat([mask.new_ones(B, P), mask], dim=1)                 # (B, P+T)
    if labels is not None and labels.dim() == 2:
        labels = torch.cat([labels.new_full((B, P), -100), labels], dim=1)  # (B, P+T)
    return mask, labels
    # END SOLUTION


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
           check_context(model.config, P + T) (too long: a ValueError whose message must contain
           max_position_embeddings, as its does).
        2. attention_mask (ones (B, T) when missing) and labels: extend_mask_and_labels.
        3. position_ids (B, P+T): positions_from_mask(extended mask) when none were given, else
           0 .. P-1 for the prompt followed by the given ones + P.
        4. Put inputs_embeds = prepend(self.prompt_embeddings, embeds), the mask, labels and positions
           into kwargs; set self.real_length = T (the forward hook trims the logits to it). Return kwargs.
        """
        # BEGIN SOLUTION 7.5
        P, ids, embeds = self.num_virtual_tokens, kwargs.pop("input_ids", None), kwargs.pop("inputs_embeds", None)
        if embeds is None:
            embeds = model.get_input_embeddings()(ids)                    # (B, T, D)
        B, T = embeds.shape[:2]
        check_context(model.config, P + T)
        mask = kwargs.get("attention_mask")
        if mask is None:
            mask = torch.ones(B, T, dtype=torch.long, device=embeds.device)
        mask, labels = extend_mask_and_labels(mask, kwargs.get("labels"), P)
        positions = kwargs.get("position_ids")
        if positions is None:
            positions = positions_from_mask(mask)                        # (B, P+T)
        else:
            first = torch.arange(P, device=positions.device).expand(positions.shape[0], P)
            positions = torch.cat([first, positions + P], dim=1)         # (B, P+T)
        kwargs.update(inputs_embeds=prepend(self.prompt_embeddings, embeds), attention_mask=mask,
                      position_ids=positions, labels=labels)
        self.real_length = T
        return kwargs
        # END SOLUTION

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
    mark_adapted(model, config, __name__)   # refuses a model that already carries an adapter
    freeze(model)
    return hook_in(model, "soft_prompt", SoftPrompt(prompt).to(model.get_input_embeddings().weight.device))


def apply(model: nn.Module, config: PromptTuningConfig = PromptTuningConfig(), tokenizer=None) -> nn.Module:
    """Prompt-tune `model` in place: only `soft_prompt.prompt_embeddings` (P, D) trains."""
    if not isinstance(config, PromptTuningConfig):
        raise TypeError(f"config must be a PromptTuningConfig, got {type(config).__name__}")
    prompt = init_prompt(model.get_input_embeddings(), config, tokenizer)
    if config.tokenizer_name_or_path is None and getattr(tokenizer, "name_or_path", None):
        config = replace(config, tokenizer_name_or_path=tokenizer.name_or_path)
    return attach(model, config, prompt)


def to_peft(model: nn.Module) -> tuple[dict, dict[str, torch.Tensor]]:
    """(adapter_config.json dict, {"prompt_embeddings": (P, D)}) in peft's PROMPT_TUNING layout."""
    record = prepared_by(model, __name__)
    cfg, mc, header = record.config, model.config, config_fields(model, record)
    heads, state = prompt_tensors(model, model.soft_prompt.prompt_embeddings, own="soft_prompt.")
    return {**header, "num_virtual_tokens": cfg.num_virtual_tokens, "token_dim": state["prompt_embeddings"].shape[1],
            "num_transformer_submodules": 1, "num_attention_heads": mc.num_attention_heads,
            "num_layers": mc.num_hidden_layers, "prompt_tuning_init": PEFT_INITS[cfg.init],
            "prompt_tuning_init_text": cfg.init_text if cfg.init == "text" else None,
            # peft refuses a TEXT config without a tokenizer name, even when it never loads it
            "tokenizer_name_or_path": cfg.tokenizer_name_or_path or (
                header["base_model_name_or_path"] or "" if cfg.init == "text" else None),
            "tokenizer_kwargs": None, "revision": None, "modules_to_save": heads}, state


def from_peft(model: nn.Module, config_dict: dict, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """Prompt-tune `model` with the soft prompt saved by to_peft or by peft."""
    prompt = read_prompt_tensors(config_dict, state_dict, __name__)
    init = {v: k for k, v in PEFT_INITS.items()}.get(str(config_dict.get("prompt_tuning_init", "RANDOM")), "random")
    config = PromptTuningConfig(num_virtual_tokens=int(config_dict["num_virtual_tokens"]), init=init,
                                init_text=config_dict.get("prompt_tuning_init_text") or PromptTuningConfig.init_text,
                                tokenizer_name_or_path=config_dict.get("tokenizer_name_or_path"))
    attach(model, config, prompt)
    load_head_tensors(model, state_dict)
    return model


def prepare_for_finetune(model: nn.Module, task, options: dict | None = None) -> nn.Module:
    """What `labs finetune --method prompt` runs: 20 virtual tokens from sampled vocabulary.

    `options` override PromptTuningConfig fields (command-line strings are converted), e.g.
    {"num_virtual_tokens": "8"}; init="text" also needs {"tokenizer": tokenizer}.
    """
    options = dict(options or {})
    tokenizer = options.pop("tokenizer", None)
    return apply(model, config_from_options(PromptTuningConfig, options), tokenizer)
