# GENERATED from solutions/prefix_tuning.py by tools/make_stubs.py: the reference lives there.
# Your exercises: replace each `raise NotImplementedError(...)` below with your code.
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

from dataclasses import dataclass, fields

import torch
from torch import nn
from transformers import DynamicCache

from labs.surgery import freeze, mark_adapted

NOTEBOOK = "notebooks/06_prefix_tuning.ipynb"
METHOD = "prefix"
PEFT_TYPE = "PREFIX_TUNING"
INITS = ("random", "vocab", "text")
BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
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
    encoder_hidden_size: int = 512      # hidden width of that MLP (the paper used 512)
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


# ---------------------------------------------------------------------------------------------
# Shared by both editions (outside the exercises)
# ---------------------------------------------------------------------------------------------
def check_context(model_config, length: int) -> None:
    limit = getattr(model_config, "max_position_embeddings", None) or getattr(model_config, "n_positions", None)
    if limit is not None and length > limit:
        raise ValueError(f"prefix + input tokens = {length} positions, but the model has only {limit} "
                         "(max_position_embeddings): shorten the input or use a shorter prefix")


def positions_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """(B, T) 0/1 mask -> (B, T) positions counting only real tokens (left padding skipped)."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def uses_checkpointing(model: nn.Module) -> bool:
    return any(getattr(m, "gradient_checkpointing", False) for m in model.modules())


def refuse_checkpointing(*args, **kwargs):
    raise ValueError(CHECKPOINTING_REFUSED)


def bind_inputs(args: tuple, kwargs: dict) -> dict:
    """The hook sees model(ids) as args=(ids,): name it, so every call looks like model(input_ids=ids)."""
    kwargs = dict(kwargs)
    if len(args) > 1:
        raise TypeError("prefix tuning reads the model's inputs by name: call model(input_ids=..., "
                        "attention_mask=..., ...)")
    if args:
        kwargs["input_ids"] = args[0]
    if "past_key_values" in kwargs:  # the name transformers 5 is retiring in favour of `cache`
        kwargs["cache"] = kwargs.pop("past_key_values")
    return kwargs


# ---------------------------------------------------------------------------------------------
# Exercises
# ---------------------------------------------------------------------------------------------
def kv_shape(model_config) -> KVShape:
    """The key/value geometry of a model from its config.

    kv_heads is `num_key_value_heads` when the config has it (grouped-query attention), else
    `num_attention_heads`; head_dim is `head_dim` when set, else hidden_size // num_attention_heads.
    """
    raise NotImplementedError("Exercise 6.1: kv_shape - see notebooks/06_prefix_tuning.ipynb")


def prefix_to_cache(prefix: torch.Tensor, shape: KVShape, batch_size: int, cache: DynamicCache) -> DynamicCache:
    """Put a flat prefix (P, L*2*kv_heads*head_dim) into an empty cache, for batch_size rows.

    View it as (P, L, 2, kv_heads, head_dim) -- index 0 of the "2" is the key, 1 the value -- and
    give layer l keys and values of shape (B, kv_heads, P, head_dim) with cache.update(k, v, l).
    Every row of the batch gets the same prefix (expand, no copy). Returns the cache.
    """
    raise NotImplementedError("Exercise 6.2: prefix_to_cache - see notebooks/06_prefix_tuning.ipynb")


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
        raise NotImplementedError("Exercise 6.3: PrefixEncoder.prefix - see notebooks/06_prefix_tuning.ipynb")

    def fold(self) -> None:
        """Replace the MLP by its output: prefix_kv = prefix(), then drop prefix_embedding and prefix_mlp.

        Logits stay identical; the adapter shrinks to P x width numbers. No-op without an MLP.
        """
        raise NotImplementedError("Exercise 6.5: PrefixEncoder.fold - see notebooks/06_prefix_tuning.ipynb")

    def model_inputs(self, model: nn.Module, kwargs: dict) -> dict:
        """The keyword arguments of one forward call (T tokens), rewritten to carry the prefix.

        1. No cache, or an empty one (training, generate's prefill): check_context(model.config, P+T),
           fill the cache -- a new DynamicCache(config=model.config) when there is none -- with
           prefix_to_cache(self.prefix() in the model's dtype, self.shape, B, cache), and put it in
           kwargs["cache"]. A cache that holds tokens already (a decode step) holds the prefix too.
        2. attention_mask: when missing, ones for every token the model will see besides the
           prefix (cache length - P + T); then P ones in front of it.
        3. position_ids: the given ones + P; when none, positions_from_mask(mask)[:, -T:].
        Returns kwargs.
        """
        raise NotImplementedError("Exercise 6.4: PrefixEncoder.model_inputs - see notebooks/06_prefix_tuning.ipynb")

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
    raise NotImplementedError("Exercise 6.6: prefix_from_tokens - see notebooks/06_prefix_tuning.ipynb")


# ---------------------------------------------------------------------------------------------
# The technique-module protocol
# ---------------------------------------------------------------------------------------------
def _init_tokens(model: nn.Module, config: PrefixTuningConfig, tokenizer) -> torch.Tensor:
    """The P real tokens whose keys and values start the prefix ("vocab" or "text" init)."""
    P = config.num_virtual_tokens
    if config.init == "vocab":  # common tokens: low ids in BPE vocabularies (as prompt tuning's "vocab")
        vocab = model.get_input_embeddings().weight.shape[0]
        return torch.randint(0, min(vocab, 5000), (P,), generator=torch.Generator().manual_seed(config.seed))
    if tokenizer is None:
        raise ValueError("init='text' needs the tokenizer: apply(model, config, tokenizer)")
    ids = tokenizer(config.init_text)["input_ids"]
    if not ids:
        raise ValueError("init_text gave no tokens: choose a text with at least one word")
    return torch.tensor((ids * -(-P // len(ids)))[:P])


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
    mark_adapted(model, METHOD, config, __name__)   # refuses a model that already carries an adapter
    freeze(model)
    with torch.random.fork_rng(devices=[]):  # seeded MLP weights, the caller's random stream untouched
        torch.manual_seed(config.seed)
        encoder = PrefixEncoder(shape, config.num_virtual_tokens,
                                config.encoder_hidden_size if prefix is None else None)
    if prefix is not None:
        encoder.prefix_kv.data.copy_(prefix.float())
    model.prefix_encoder = encoder.to(next(model.parameters()).device)
    model.register_forward_pre_hook(model.prefix_encoder.before_forward, with_kwargs=True)
    model.register_forward_hook(model.prefix_encoder.after_forward, with_kwargs=True)
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
            prefix = prefix_from_tokens(model, _init_tokens(model, config, tokenizer).to(device), shape).cpu()
        finally:
            model.train(was_training)
    return attach(model, config, prefix)


def fold(model: nn.Module) -> nn.Module:
    """Fold the reparameterisation MLP of a prefix-tuned model into a plain prefix (see PrefixEncoder.fold)."""
    model.prefix_encoder.fold()
    return model


def _task_type(model: nn.Module) -> str:
    return "SEQ_CLS" if type(model).__name__.endswith("ForSequenceClassification") else "CAUSAL_LM"


HEAD_PREFIX = "base_model."  # peft's key prefix for the other trained tensors (a classifier head)


def head_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """A classifier's head (new, random: the logits need it) and any other trained tensor besides
    ours, under peft's key names."""
    return {HEAD_PREFIX + n: p.detach().clone() for n, p in model.named_parameters()
            if not n.startswith("prefix_encoder.") and (p.requires_grad or n.split(".")[0] in ("classifier", "score"))}


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
    """(adapter_config.json dict, {"prompt_embeddings": (P, L*2*kv_heads*head_dim)}), peft's layout.

    Like peft, an MLP-computed prefix is saved as its output (what inference needs).
    """
    record = getattr(model, "labs_adapter", None)
    if record is None or record.method != METHOD:
        raise ValueError(f"to_peft needs a model prepared with {__name__}.apply; this one carries "
                         f"{record.method if record else 'no adapter'!r}")
    cfg, shape = record.config, model.prefix_encoder.shape
    config = {"peft_type": PEFT_TYPE, "task_type": _task_type(model),
              "base_model_name_or_path": getattr(model.config, "name_or_path", "") or "",
              "num_virtual_tokens": cfg.num_virtual_tokens, "num_layers": shape.layers,
              "token_dim": shape.token_dim, "num_attention_heads": shape.kv_heads,  # peft's GQA convention
              "num_transformer_submodules": 1, "prefix_projection": cfg.prefix_projection,
              "encoder_hidden_size": cfg.encoder_hidden_size if cfg.prefix_projection else shape.token_dim,
              "init_weights": None, "inference_mode": True, "revision": None}
    heads = head_tensors(model)
    config["modules_to_save"] = sorted({k[len(HEAD_PREFIX):].split(".")[0] for k in heads}) or None
    with torch.no_grad():
        prefix = model.prefix_encoder.prefix().detach().clone()
    return config, {"prompt_embeddings": prefix, **heads}


def from_peft(model: nn.Module, config_dict: dict, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """Prefix-tune `model` with the prefix saved by to_peft or by peft (always loaded folded)."""
    if config_dict.get("peft_type") != PEFT_TYPE:
        raise ValueError(f"peft_type {config_dict.get('peft_type')!r} is not {PEFT_TYPE!r}")
    if config_dict.get("num_transformer_submodules", 1) != 1:
        raise ValueError("this adapter is for an encoder-decoder model (num_transformer_submodules="
                         f"{config_dict['num_transformer_submodules']}); only decoder or encoder models are supported")
    if "prompt_embeddings" not in state_dict:
        raise ValueError(f"the adapter file has no 'prompt_embeddings' tensor (it has {sorted(state_dict)})")
    shape = kv_shape(model.config)
    saved = (config_dict.get("num_layers"), config_dict.get("num_attention_heads"), config_dict.get("token_dim"))
    if None not in saved and saved != (shape.layers, shape.kv_heads, shape.token_dim):
        raise ValueError(f"the adapter was made for another base model: it has (num_layers, kv heads, "
                         f"token_dim) = {saved}, this model {(shape.layers, shape.kv_heads, shape.token_dim)}")
    config = PrefixTuningConfig(num_virtual_tokens=int(config_dict["num_virtual_tokens"]), init="random",
                                prefix_projection=bool(config_dict.get("prefix_projection", False)),
                                encoder_hidden_size=int(config_dict.get("encoder_hidden_size") or shape.token_dim))
    attach(model, config, state_dict["prompt_embeddings"])
    load_head_tensors(model, state_dict)
    return model


def prepare_for_finetune(model: nn.Module, task, options: dict | None = None) -> nn.Module:
    """What `labs finetune --method prefix` runs: 10 virtual tokens started from common tokens' keys/values.

    `options` override PrefixTuningConfig fields (command-line strings are converted), e.g.
    {"num_virtual_tokens": "20"}; {"prefix_projection": "true"} trains through the MLP from a random start.
    """
    options = dict(options or {})
    tokenizer, types = options.pop("tokenizer", None), {f.name: f.type for f in fields(PrefixTuningConfig)}
    unknown = sorted(set(options) - set(types))
    if unknown:
        raise ValueError(f"unknown prefix option(s) {', '.join(unknown)}; accepted: {', '.join(types)}")
    for name, value in options.items():
        if isinstance(value, str) and types[name] in ("int", "bool"):
            valid = value.strip().lstrip("-").isdigit() if types[name] == "int" else value.lower() in BOOLEANS
            if not valid:
                raise ValueError(f"prefix option {name}={value!r} is not valid; use "
                                 f"{'a whole number' if types[name] == 'int' else 'true or false'}")
            options[name] = int(value) if types[name] == "int" else BOOLEANS[value.lower()]
    if options.get("prefix_projection"):
        options.setdefault("init", "random")
    return apply(model, PrefixTuningConfig(**options), tokenizer)
