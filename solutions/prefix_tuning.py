"""Prefix tuning (Li & Liang, 2021): trained keys and values in front of every attention layer.

In every layer each token attends to the keys and values of the tokens before it. Prefix tuning
adds P key/value pairs to every layer -- free parameters, computed from no token -- and trains only
those: every real token attends to them as if P tokens of chosen "context" came first.

Shapes: under grouped-query attention keys and values have fewer heads than queries (SmolLM2: 9
query heads, 3 key/value heads of 64), and a prefix must match the keys. All L layers are stored
flat, in peft's layout: (P, L * 2 * kv_heads * head_dim), viewed as (P, L, 2, kv_heads, head_dim).

The prefix reaches the model through the key/value cache (transformers' DynamicCache): a cache
that already holds P positions makes the model treat them as earlier tokens. A forward pre-hook
fills the cache on a fresh call (training, or the prefill of generate(), whose own empty cache it
fills), widens the attention mask by P and numbers the real tokens P .. P+T-1, where P real tokens
typed in front would put them (as peft and the paper's GPT-2 code do). So `model(**batch)` and
`model.generate()` work unchanged.

Reparameterisation (paper, section 4.3): while training, an MLP computes the prefix from a smaller
embedding; `fold()` then stores its output as a plain tensor. Gradient checkpointing is refused:
transformers drops the cache inside checkpointed layers, so the prefix would silently vanish.

    model = apply(model, PrefixTuningConfig(num_virtual_tokens=10))
    model(**batch).loss.backward()        # only prefix_encoder.prefix_* get gradients
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import DynamicCache

from labs.options import parse_options
from labs.peft_format import config_fields, prepared_by
from labs.surgery import freeze, mark_adapted
from labs.virtual_tokens import (INITS, bind_inputs, check_context, hook_in, init_token_ids, load_head_tensors,
                                 positions_from_mask, prompt_tensors, read_prompt_tensors)

NOTEBOOK = "notebooks/06_prefix_tuning.ipynb"
CHECKPOINTING_REFUSED = (
    "prefix tuning passes its prefix through the key/value cache, and gradient checkpointing "
    "drops the cache inside every checkpointed layer (transformers sets cache=None there), so the "
    "prefix would silently vanish from training: train without gradient checkpointing, or use "
    "prompt tuning or LoRA, which work with it")


@dataclass(frozen=True)
class PrefixTuningConfig:
    num_virtual_tokens: int = 10        # P: prefix length per layer (the paper: 10 for table-to-text, 200 for summaries)
    init: str = "vocab"                 # "vocab": keys/values of P sampled common tokens, as real context would
                                        # give (the paper's "real words" init); "text": those of init_text;
                                        # "random": N(0, 1), peft's default
    init_text: str = "Once upon a time"  # init="text": repeated or cut to P tokens
    prefix_projection: bool = False     # compute the prefix by an MLP while training (fold() removes it)
    encoder_hidden_size: int = 512      # hidden width of that MLP: this course's choice (the authors' code:
                                        # 512 for table-to-text; peft's default is the key/value width)
    seed: int = 0                       # makes the initialisation reproducible

    def __post_init__(self):
        for name in ("num_virtual_tokens", "encoder_hidden_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
        if self.init not in INITS:
            raise ValueError(f"init {self.init!r} is not valid; use one of {', '.join(INITS)}")
        if self.prefix_projection and self.init != "random":
            raise ValueError(f"init={self.init!r} sets the prefix itself, but with prefix_projection=True "
                             "an MLP computes it: use init='random' with the projection")
        if self.init == "text" and not (isinstance(self.init_text, str) and self.init_text.strip()):
            raise ValueError(f"init='text' needs a non-empty init_text, got {self.init_text!r}")


@dataclass(frozen=True)
class KVShape:
    layers: int     # L: attention layers, each gets its own prefix
    kv_heads: int   # key/value heads (fewer than query heads under grouped-query attention)
    head_dim: int   # width of one head

    @property
    def token_dim(self) -> int:  # one virtual token's key in one layer (peft's token_dim)
        return self.kv_heads * self.head_dim

    @property
    def width(self) -> int:      # one virtual token over all layers: L * 2 (key, value) * kv_heads * head_dim
        return self.layers * 2 * self.token_dim


def uses_checkpointing(model: nn.Module) -> bool:
    return any(getattr(m, "gradient_checkpointing", False) for m in model.modules())


def refuse_checkpointing(*args, **kwargs):
    raise ValueError(CHECKPOINTING_REFUSED)


# ---------------------------------------------------------------------------------------------
# Exercises
# ---------------------------------------------------------------------------------------------
def kv_shape(model_config) -> KVShape:
    """The key/value geometry of a model from its config.

    kv_heads is `num_key_value_heads` when the config has it (grouped-query attention), else
    `num_attention_heads`; head_dim is `head_dim` when set, else hidden_size // num_attention_heads.
    """
    # BEGIN SOLUTION 6.1
    heads = model_config.num_attention_heads
    kv_heads = getattr(model_config, "num_key_value_heads", None) or heads
    head_dim = getattr(model_config, "head_dim", None) or model_config.hidden_size // heads
    return KVShape(layers=model_config.num_hidden_layers, kv_heads=kv_heads, head_dim=head_dim)
    # END SOLUTION


def prefix_to_cache(prefix: torch.Tensor, shape: KVShape, batch_size: int, cache: DynamicCache) -> DynamicCache:
    """Put a flat prefix (P, L*2*kv_heads*head_dim) into an empty cache, for batch_size rows.

    View it as (P, L, 2, kv_heads, head_dim) -- index 0 of the "2" is the key, 1 the value -- and
    give layer l keys and values of shape (B, kv_heads, P, head_dim) with cache.update(k, v, l).
    Every row of the batch gets the same prefix (expand, no copy). Returns the cache.
    """
    # BEGIN SOLUTION 6.2
    P = prefix.shape[0]
    kv = prefix.view(P, shape.layers, 2, shape.kv_heads, shape.head_dim)  # (P, L, 2, Hkv, hd)
    kv = kv.permute(1, 2, 3, 0, 4)                                         # (L, 2, Hkv, P, hd)
    for layer in range(shape.layers):
        keys = kv[layer, 0].unsqueeze(0).expand(batch_size, -1, -1, -1)     # (B, Hkv, P, hd)
        values = kv[layer, 1].unsqueeze(0).expand(batch_size, -1, -1, -1)   # (B, Hkv, P, hd)
        cache.update(keys, values, layer)
    return cache
    # END SOLUTION


class PrefixEncoder(nn.Module):
    """The trainable prefix, plain (prefix_kv) or computed by an MLP (prefix_embedding -> prefix_mlp)."""

    def __init__(self, shape: KVShape, num_virtual_tokens: int, encoder_hidden_size: int | None = None):
        super().__init__()
        self.shape, P = shape, num_virtual_tokens
        if encoder_hidden_size is None:
            self.prefix_kv = nn.Parameter(torch.zeros(P, shape.width))            # (P, L*2*Hkv*hd)
        else:  # peft's layout: embedding (P, token_dim) -> Linear -> tanh -> Linear
            self.prefix_embedding = nn.Parameter(torch.randn(P, shape.token_dim))  # (P, E)
            self.prefix_mlp = nn.Sequential(nn.Linear(shape.token_dim, encoder_hidden_size), nn.Tanh(),
                                            nn.Linear(encoder_hidden_size, shape.width))

    @property
    def num_virtual_tokens(self) -> int:
        return (self.prefix_kv if hasattr(self, "prefix_kv") else self.prefix_embedding).shape[0]

    def prefix(self) -> torch.Tensor:
        """The flat prefix (P, L*2*kv_heads*head_dim): prefix_kv, or prefix_mlp(prefix_embedding)."""
        # BEGIN SOLUTION 6.3
        if hasattr(self, "prefix_kv"):
            return self.prefix_kv
        return self.prefix_mlp(self.prefix_embedding)                      # (P, E) -> (P, width)
        # END SOLUTION

    def fold(self) -> None:
        """Replace the MLP by its output: prefix_kv = prefix(), then drop prefix_embedding and prefix_mlp.

        Logits stay identical; the adapter shrinks to P x width numbers. No-op without an MLP.
        """
        # BEGIN SOLUTION 6.5
        if hasattr(self, "prefix_kv"):
            return
        with torch.no_grad():
            folded = self.prefix().detach().clone()
        del self.prefix_mlp, self.prefix_embedding
        self.prefix_kv = nn.Parameter(folded)
        # END SOLUTION

    def model_inputs(self, model: nn.Module, kwargs: dict) -> dict:
        """The keyword arguments of one forward call (T tokens), rewritten to carry the prefix.

        1. No cache, or an empty one (training, generate's prefill): check_context(model.config, P+T)
           (too long: a ValueError whose message must contain max_position_embeddings, as its does),
           fill the cache -- a new DynamicCache(config=model.config) when there is none -- with
           prefix_to_cache(self.prefix() in the model's dtype, self.shape, B, cache), and put it in
           kwargs["cache"]. A cache that holds tokens already (a decode step) holds the prefix too.
        2. attention_mask: when missing, ones for every token the model will see besides the
           prefix (cache length - P + T); then P ones in front of it.
        3. position_ids: the given ones + P; when none, positions_from_mask(mask)[:, -T:].
        Returns kwargs.
        """
        # BEGIN SOLUTION 6.4
        P, tokens = self.num_virtual_tokens, kwargs.get("input_ids")
        tokens = tokens if tokens is not None else kwargs["inputs_embeds"]
        B, T = tokens.shape[:2]
        cache = kwargs.get("cache")
        if cache is None or cache.get_seq_length() == 0:
            check_context(model.config, P + T)
            dtype = next(model.parameters()).dtype
            cache = cache if cache is not None else DynamicCache(config=model.config)
            kwargs["cache"] = prefix_to_cache(self.prefix().to(dtype), self.shape, B, cache)
        mask = kwargs.get("attention_mask")
        if mask is None:  # no padding: every cached token and every new one is visible
            mask = torch.ones(B, kwargs["cache"].get_seq_length() - P + T, dtype=torch.long, device=tokens.device)
        mask = torch.cat([mask.new_ones(B, P), mask], dim=1)               # (B, P + past + T)
        positions = kwargs.get("position_ids")
        kwargs["position_ids"] = positions + P if positions is not None else positions_from_mask(mask)[:, -T:]
        kwargs["attention_mask"] = mask
        return kwargs
        # END SOLUTION

    def before_forward(self, model: nn.Module, args: tuple, kwargs: dict):
        """Forward pre-hook: refuse checkpointing, then put the prefix in."""
        if model.training and torch.is_grad_enabled() and uses_checkpointing(model):
            raise ValueError(CHECKPOINTING_REFUSED)
        kwargs = bind_inputs(args, kwargs)
        # A cache we make only to carry the prefix is not handed back when the caller asked for none:
        # generate(use_cache=False) would otherwise feed it into the next call.
        self.drop_cache = kwargs.get("cache") is None and not kwargs.get(
            "use_cache", getattr(model.config, "use_cache", True))
        return (), self.model_inputs(model, kwargs)

    def after_forward(self, model: nn.Module, args: tuple, kwargs: dict, output):
        """Forward hook: drop the prefix-only cache from the output (see before_forward)."""
        if getattr(self, "drop_cache", False) and getattr(output, "cache", None) is not None:
            output["cache"] = None  # item, not attribute: ModelOutput keeps both
        return output


def prefix_from_tokens(model: nn.Module, token_ids: torch.Tensor, shape: KVShape) -> torch.Tensor:
    """The keys and values the frozen model computes for real tokens (P,), as a flat prefix.

    Run the model once on token_ids (as a batch of one) with an empty DynamicCache(config=...)
    passed as `cache=`, then read each layer's cache.layers[l].keys / .values (1, kv_heads, P,
    head_dim) and lay them out as prefix_to_cache expects: (P, L*2*kv_heads*head_dim), float32.
    """
    # BEGIN SOLUTION 6.6
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(input_ids=token_ids.view(1, -1), cache=cache, use_cache=True)
    layers = [torch.stack([layer.keys[0], layer.values[0]]) for layer in cache.layers[:shape.layers]]
    kv = torch.stack(layers)                                               # (L, 2, Hkv, P, hd)
    return kv.permute(3, 0, 1, 2, 4).reshape(token_ids.numel(), shape.width).float()  # (P, width)
    # END SOLUTION


# ---------------------------------------------------------------------------------------------
# The technique-module protocol
# ---------------------------------------------------------------------------------------------
def attach(model: nn.Module, config: PrefixTuningConfig, prefix: torch.Tensor | None) -> nn.Module:
    """Freeze `model`, hang a PrefixEncoder on it (holding `prefix`, or an MLP), and hook it in."""
    if uses_checkpointing(model):
        raise ValueError(CHECKPOINTING_REFUSED)
    shape = kv_shape(model.config)
    check_context(model.config, config.num_virtual_tokens)
    if prefix is not None and tuple(prefix.shape) != (config.num_virtual_tokens, shape.width):
        raise ValueError(f"the prefix has shape {tuple(prefix.shape)} but this model needs "
                         f"({config.num_virtual_tokens}, {shape.width}) = (P, L*2*kv_heads*head_dim) with "
                         f"L={shape.layers}, kv_heads={shape.kv_heads}, head_dim={shape.head_dim}: "
                         "the adapter was made for another base model")
    mark_adapted(model, config, __name__)   # refuses a model that already carries an adapter
    freeze(model)
    with torch.random.fork_rng(devices=[]):  # seeded MLP weights, the caller's random stream untouched
        torch.manual_seed(config.seed)
        encoder = PrefixEncoder(shape, config.num_virtual_tokens,
                                config.encoder_hidden_size if prefix is None else None)
    if prefix is not None:
        encoder.prefix_kv.data.copy_(prefix.float())
    hook_in(model, "prefix_encoder", encoder.to(next(model.parameters()).device))
    # the mistake is caught where it is made (labs.train tries both names)
    model.gradient_checkpointing_enable = model.activation_checkpointing_enable = refuse_checkpointing
    return model


def apply(model: nn.Module, config: PrefixTuningConfig = PrefixTuningConfig(), tokenizer=None) -> nn.Module:
    """Prefix-tune `model` in place: only prefix_encoder.prefix_* train."""
    if not isinstance(config, PrefixTuningConfig):
        raise TypeError(f"config must be a PrefixTuningConfig, got {type(config).__name__}")
    shape = kv_shape(model.config)
    if config.prefix_projection:
        prefix = None
    elif config.init == "random":
        prefix = torch.randn(config.num_virtual_tokens, shape.width, generator=torch.Generator().manual_seed(config.seed))
    else:  # in eval mode: dropout must not blur the keys and values we copy
        was_training, device = model.training, model.get_input_embeddings().weight.device
        model.eval()
        try:
            ids = init_token_ids(config, model.get_input_embeddings().weight.shape[0], tokenizer)
            prefix = prefix_from_tokens(model, ids.to(device), shape).cpu()
        finally:
            model.train(was_training)
    return attach(model, config, prefix)


def fold(model: nn.Module) -> nn.Module:
    """Fold the reparameterisation MLP of a prefix-tuned model into a plain prefix (see PrefixEncoder.fold)."""
    model.prefix_encoder.fold()
    return model


def to_peft(model: nn.Module) -> tuple[dict, dict[str, torch.Tensor]]:
    """(adapter_config.json dict, {"prompt_embeddings": (P, L*2*kv_heads*head_dim)}), peft's layout.

    Like peft, an MLP-computed prefix is saved as its output (what inference needs).
    """
    record = prepared_by(model, __name__)
    cfg, shape = record.config, model.prefix_encoder.shape
    with torch.no_grad():
        heads, state = prompt_tensors(model, model.prefix_encoder.prefix(), own="prefix_encoder.")
    return {**config_fields(model, record),
            "num_virtual_tokens": cfg.num_virtual_tokens, "num_layers": shape.layers,
            "token_dim": shape.token_dim, "num_attention_heads": shape.kv_heads,  # peft's GQA convention
            "num_transformer_submodules": 1, "prefix_projection": cfg.prefix_projection,
            "encoder_hidden_size": cfg.encoder_hidden_size if cfg.prefix_projection else shape.token_dim,
            "init_weights": None, "revision": None, "modules_to_save": heads}, state


def from_peft(model: nn.Module, config_dict: dict, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """Prefix-tune `model` with the prefix saved by to_peft or by peft (always loaded folded)."""
    prefix = read_prompt_tensors(config_dict, state_dict, __name__)
    shape = kv_shape(model.config)
    saved = (config_dict.get("num_layers"), config_dict.get("num_attention_heads"), config_dict.get("token_dim"))
    if None not in saved and saved != (shape.layers, shape.kv_heads, shape.token_dim):
        raise ValueError(f"the adapter was made for another base model: it has (num_layers, kv heads, "
                         f"token_dim) = {saved}, this model {(shape.layers, shape.kv_heads, shape.token_dim)}")
    config = PrefixTuningConfig(num_virtual_tokens=int(config_dict["num_virtual_tokens"]), init="random",
                                prefix_projection=bool(config_dict.get("prefix_projection", False)),
                                encoder_hidden_size=int(config_dict.get("encoder_hidden_size") or shape.token_dim))
    attach(model, config, prefix)
    load_head_tensors(model, state_dict)
    return model


def prepare_for_finetune(model: nn.Module, task, options: dict | None = None) -> nn.Module:
    """What `labs finetune --method prefix` runs: 10 virtual tokens started from common tokens' keys/values.

    `options` override PrefixTuningConfig fields (command-line strings are converted), e.g.
    {"num_virtual_tokens": "20"}; {"prefix_projection": "true"} trains through the MLP from a random start.
    """
    options = dict(options or {})
    tokenizer = options.pop("tokenizer", None)
    values = parse_options(PrefixTuningConfig, options)
    if values.get("prefix_projection"):
        values.setdefault("init", "random")
    return apply(model, PrefixTuningConfig(**values), tokenizer)
