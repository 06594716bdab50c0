"""What prefix tuning and prompt tuning share: P virtual tokens in front of every input.

Both methods leave the model's code alone and rewrite its inputs in a forward pre-hook, so
`model(**batch)` and `model.generate()` work unchanged. The hook needs the same few helpers in
both: the inputs by name, positions that skip left padding, a check of the context length, the
real tokens a prefix or prompt starts from, and, for the adapter files, peft's "prompt learning"
layout (one `prompt_embeddings` tensor, plus a classification head when there is one).
"""
from __future__ import annotations

import torch
from torch import nn

from labs.peft_format import check_peft_type, load_tensors, modules_to_save, tensors_under, trained_tensors
from labs.surgery import check_attribute_name, check_module

INITS = ("random", "vocab", "text")  # where the virtual tokens start: noise, sampled words, a text
COMMON_TOKENS = 5000  # "vocab" samples the first ids: Lester et al. drew from the 5,000 most common
HEAD_PREFIX = "base_model."  # peft's key prefix for other trained tensors (a classification head)


# ---------------------------------------------------------------------------------------------
# Inside the forward pre-hook
# ---------------------------------------------------------------------------------------------
def bind_inputs(args: tuple, kwargs: dict) -> dict:
    """The hook sees model(ids) as args=(ids,): name it, so every call looks like model(input_ids=ids)."""
    kwargs = dict(kwargs)
    if len(args) > 1:
        raise TypeError("a model with virtual tokens reads its inputs by name: call model(input_ids=..., "
                        "attention_mask=..., ...)")
    if args:
        kwargs["input_ids"] = args[0]
    if "past_key_values" in kwargs:  # the name transformers 5 is retiring in favour of `cache`
        kwargs["cache"] = kwargs.pop("past_key_values")
    return kwargs


def positions_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """(B, T) 0/1 mask -> (B, T) positions counting only real tokens (left padding skipped)."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def check_context(model_config, length: int) -> None:
    """Refuse P + T positions beyond the model's context (max_position_embeddings, GPT-2's n_positions)."""
    limit = getattr(model_config, "max_position_embeddings", None) or getattr(model_config, "n_positions", None)
    if limit is not None and length > limit:
        raise ValueError(f"virtual tokens + input tokens = {length} positions, but the model has only {limit} "
                         "(max_position_embeddings): shorten the input or use fewer virtual tokens")


def hook_in(model: nn.Module, name: str, module: nn.Module) -> nn.Module:
    """Hang `module` on the model as `name` and run its before_forward / after_forward around every call.
    All three are checked: the attribute is set on whatever the caller hands in."""
    check_module(model, "model")
    check_module(module, "module")
    setattr(model, check_attribute_name(name), module)
    model.register_forward_pre_hook(module.before_forward, with_kwargs=True)
    model.register_forward_hook(module.after_forward, with_kwargs=True)
    return model


# ---------------------------------------------------------------------------------------------
# Where the virtual tokens start
# ---------------------------------------------------------------------------------------------
def init_token_ids(config, vocab_size: int, tokenizer=None) -> torch.Tensor:
    """The P real token ids a "vocab" or "text" start copies, (P,) int64.

    "vocab": P ids drawn uniformly from the first COMMON_TOKENS (in a BPE vocabulary the low ids are
    the early, frequent merges) with a generator seeded by config.seed. "text": the tokens of
    config.init_text, repeated when shorter than P and cut when longer (as peft does).
    """
    P = config.num_virtual_tokens
    if config.init == "vocab":
        generator = torch.Generator().manual_seed(config.seed)
        return torch.randint(0, min(vocab_size, COMMON_TOKENS), (P,), generator=generator)
    if config.init != "text":
        raise ValueError(f"init {config.init!r} starts from no tokens; 'vocab' and 'text' do")
    if tokenizer is None:
        raise ValueError("init='text' needs the tokenizer: apply(model, config, tokenizer)")
    ids = list(tokenizer(config.init_text)["input_ids"])
    if not ids:
        raise ValueError(f"init_text {config.init_text!r} gave no tokens: choose a text with at least one word")
    return torch.tensor((ids * -(-P // len(ids)))[:P])


# ---------------------------------------------------------------------------------------------
# peft's prompt-learning files: {"prompt_embeddings": (P, width), "base_model.<head>...": ...}
# ---------------------------------------------------------------------------------------------
def prompt_tensors(model: nn.Module, prompt: torch.Tensor, own: str) -> tuple[list | None, dict]:
    """(modules_to_save, tensors): the prompt, and the head and any other trained tensor outside
    the technique's own module `own` (e.g. "soft_prompt.")."""
    state = {"prompt_embeddings": prompt.detach().clone(), **trained_tensors(model, HEAD_PREFIX, skip=own)}
    return modules_to_save(state, HEAD_PREFIX), state


def read_prompt_tensors(config_dict: dict, state_dict: dict, module: str) -> torch.Tensor:
    """The saved `prompt_embeddings`, after checking the file is of `module`'s kind and for one stack."""
    check_peft_type(config_dict, module)
    if config_dict.get("num_transformer_submodules", 1) != 1:
        raise ValueError("this adapter is for an encoder-decoder model (num_transformer_submodules="
                         f"{config_dict['num_transformer_submodules']}); only decoder or encoder models are supported")
    if "prompt_embeddings" not in state_dict:
        raise ValueError(f"the adapter file has no 'prompt_embeddings' tensor (it has {sorted(state_dict)})")
    return state_dict["prompt_embeddings"]


def load_head_tensors(model: nn.Module, state_dict: dict) -> None:
    """Copy saved head tensors (peft's modules_to_save) into `model` and let them train."""
    load_tensors(model, tensors_under(state_dict, HEAD_PREFIX))
