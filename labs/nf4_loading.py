"""Quantize while loading: a QLoRA base built layer by layer from its safetensors files.

The simple way to a 4-bit base (qlora.quantize_model) loads the whole model in fp32 and then replaces
its linear layers: for a while the full-precision model exists whole, so loading peaks at the fp32
model's size, the very memory QLoRA is meant to save. Here the model's skeleton is built with no
weights (accelerate's init_empty_weights: parameters on the meta device, buffers such as the rotary
frequencies real), and every tensor is read from the checkpoint on its own (safetensors' safe_open)
and put in its final form at once:

    linear layers          the course's NF4Linear (or bitsandbytes' Linear4bit), from one layer's weight
    input embedding and    16-bit (bf16), as the QLoRA reference code holds them (qlora.py casts
    output head            `embed_tokens` and `lm_head` to bf16 and keeps norms in fp32); a tied head
                           shares the embedding's table; both compute in the compute dtype
    everything else        fp32 (norms, biases of other layers)

At most one layer's weight is ever held in full precision. Causal language models only (a new
classification head has no weights in the checkpoint to read).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from labs.surgery import get_submodule_parent, is_linear

HEADS = ("lm_head", "classifier", "score")   # output layers: not quantized (as qlora.quantize_model)


class StoredEmbedding(nn.Embedding):
    """A frozen embedding table held in 16 bits whose lookups come out in the compute dtype."""

    def __init__(self, weight: torch.Tensor, padding_idx: int | None, compute_dtype: torch.dtype):
        nn.Module.__init__(self)   # not nn.Embedding.__init__: that would allocate an fp32 table
        self.num_embeddings, self.embedding_dim = weight.shape
        self.padding_idx, self.max_norm, self.norm_type = padding_idx, None, 2.0
        self.scale_grad_by_freq, self.sparse = False, False
        self.weight = nn.Parameter(weight, requires_grad=False)   # (V, D), 16-bit
        self.compute_dtype = compute_dtype

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return super().forward(ids).to(self.compute_dtype)        # (B, T) -> (B, T, D)


class StoredHead(nn.Module):
    """A frozen output projection held in 16 bits (shared with a tied embedding), computed in the
    compute dtype with the weight read back in the forward and again in the backward (qlora.FrozenMatMul):
    a full-precision copy of the (V, D) table is never kept for the backward."""

    def __init__(self, weight: nn.Parameter, compute_dtype: torch.dtype, matmul):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.weight, self.compute_dtype, self._matmul = weight, compute_dtype, matmul

    def dequantized_weight(self) -> torch.Tensor:
        return self.weight.to(self.compute_dtype)                 # (V, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._matmul.apply(x.to(self.compute_dtype), self)  # (B, T, D) -> (B, T, V)


def checkpoint_files(folder: Path) -> list[Path]:
    """The safetensors files of a saved model: one file, or the shards its index names."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [folder / s for s in shards]
    if (folder / "model.safetensors").is_file():
        return [folder / "model.safetensors"]
    raise ValueError(f"{folder} holds no model.safetensors (nor a model.safetensors.index.json): quantizing while "
                     "loading reads safetensors; load the model with labs.load_model and use qlora.quantize_model")


def model_folder(name_or_path: str | Path) -> Path:
    """The local folder of an embedded model (its converted cache) or of a saved model."""
    from labs.models import MODELS, prepare_cache
    if str(name_or_path) in MODELS:
        return Path(prepare_cache(str(name_or_path), progress=False))
    folder = Path(name_or_path).expanduser()
    if not (folder / "config.json").is_file():
        raise ValueError(f"{name_or_path!r} is not an embedded model ({', '.join(MODELS)}) nor a local folder with "
                         "a config.json; quantizing while loading needs the files on disk")
    return folder


def skeleton(folder: Path) -> nn.Module:
    """The causal LM of `folder`'s config with every parameter on the meta device (no memory)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM
    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    with init_empty_weights(include_buffers=False):
        return AutoModelForCausalLM.from_config(config)


def _quantized_layer_names(model: nn.Module) -> set[str]:
    return {n for n, m in model.named_modules() if n and is_linear(m) and n.rsplit(".", 1)[-1] not in HEADS}


def load_quantized(name_or_path: str | Path = "smollm2-135m", config=None, *, impl: str | None = None,
                   embedding_dtype: torch.dtype = torch.bfloat16, device: str | torch.device | None = None):
    """(model, tokenizer): a causal LM whose linear layers are quantized as they are read.

    config           a qlora.QLoRAConfig (backend, block_size, double_quant, compute_dtype); default QLoRAConfig()
    embedding_dtype  storage of the input embedding and output head (bf16, as the QLoRA reference;
                     torch.float32 gives exactly the model that load_model + qlora.quantize_model give)
    """
    from labs.impl import technique
    from labs.models import MODELS, _finish, _tokenizer_from
    qlora = technique("qlora", impl)
    config = config or qlora.QLoRAConfig()
    compute = qlora.DTYPES[config.compute_dtype]
    make = qlora.NF4Linear if config.backend == "scratch" else qlora.bnb_linear4bit
    folder = model_folder(name_or_path)
    files = checkpoint_files(folder)       # a clear error before anything is built
    model = skeleton(folder)
    quantize = _quantized_layer_names(model)
    embed, head = model.get_input_embeddings(), model.get_output_embeddings()
    sixteen = {id(m): embedding_dtype for m in (embed, head) if m is not None and getattr(m, "bias", None) is None}
    for file in files:
        _read_file(model, file, quantize, lambda layer: make(layer, config.block_size, config.double_quant, compute),
                   sixteen)
    _finish_embeddings(model, embed, head, embedding_dtype, compute, qlora.FrozenMatMul)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.device.type == "meta"]
    if left:
        raise ValueError(f"{folder} has no weights for {', '.join(left[:5])}{' ...' if len(left) > 5 else ''}: "
                         "it is not a complete causal language model checkpoint")
    model.requires_grad_(False)
    if str(name_or_path) in MODELS:
        model.config.name_or_path = MODELS[str(name_or_path)].hf_id   # as load_model records it
    if device is not None:
        model = model.to(device)
    return _finish(model.eval(), _tokenizer_from(folder), decoder=True)


def _read_file(model: nn.Module, file: Path, quantize: set[str], make, dtypes: dict) -> None:
    """Every tensor of one safetensors file into `model`; a layer to quantize is replaced as soon as
    all its tensors (weight, bias) are in, so only that one layer is ever held in full precision."""
    from safetensors import safe_open
    modules = dict(model.named_modules())
    with safe_open(str(file), framework="pt") as f:
        for key in f.keys():
            owner, _, leaf = key.rpartition(".")
            module = modules.get(owner)
            if module is None or leaf not in module._parameters:
                continue                                   # e.g. a buffer the skeleton computes itself
            tensor = f.get_tensor(key)
            dtype = torch.float32 if owner in quantize else dtypes.get(id(module), torch.float32)
            module._parameters[leaf] = nn.Parameter(tensor.to(dtype), requires_grad=False)
            done = all(p is None or p.device.type != "meta" for p in module._parameters.values())
            if owner in quantize and done:
                parent, child = get_submodule_parent(model, owner)
                setattr(parent, child, make(module))       # the fp32 weight is dropped here
                modules[owner] = getattr(parent, child)


def _finish_embeddings(model, embed, head, dtype: torch.dtype, compute: torch.dtype, matmul) -> None:
    """The input embedding and the output head: held in `dtype`, computing in `compute`; a tied head
    (no tensor of its own in the checkpoint) shares the embedding's table."""
    stored = StoredEmbedding(embed.weight.data, embed.padding_idx, compute)
    model.set_input_embeddings(stored)
    if head is None:
        return
    tied = head.weight.device.type == "meta" or head.weight is embed.weight
    weight = stored.weight if tied else head.weight
    model.set_output_embeddings(StoredHead(weight, compute, matmul) if getattr(head, "bias", None) is None else head)


def reload_quantized(setup, name_or_path, options: dict | None, impl: str | None = None) -> nn.Module:
    """`labs finetune --method qlora`: after the fp32 base has been measured (forgetting is judged
    against the full-precision model), release it and read the base again, quantized layer by layer,
    so training never holds a whole fp32 copy. A classification task (its new head is not in the
    checkpoint) or a checkpoint without safetensors keeps the loaded model: qlora.apply quantizes it."""
    import gc
    from labs.impl import technique
    from labs.memory import release_freed_memory
    from labs.options import config_from_options
    if setup.task.kind == "classify":
        return setup.model
    config = config_from_options(technique("qlora", impl).QLoRAConfig, options)
    try:
        checkpoint_files(model_folder(name_or_path))
    except ValueError:
        return setup.model
    setup.model = None            # the only reference: the fp32 model is freed before the NF4 one is built
    gc.collect()
    release_freed_memory()
    return load_quantized(name_or_path, config, impl=impl, device=setup.device)[0]
