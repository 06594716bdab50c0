"""Shared test set-up: the `impl` fixture, the exercise marker, the exercise report, and the
tiny models every test file builds (`from conftest import tiny_llama, tiny_bert, tiny_gpt2`).

Graded tests reach technique code only through `impl("lora")`, never a top-level import, so a
broken student file fails its own tests instead of stopping collection of the whole suite.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Child processes (labs check, notebooks, compare runs) inherit this: one thread each on shared cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")


# ---------------------------------------------------------------------------------------------
# Tiny models: random weights, seeded, built offline in milliseconds. One place builds them; a
# test file passes only what its tests need to differ (a width, a vocabulary, tied embeddings).
# ---------------------------------------------------------------------------------------------
def tiny_llama(vocab: int = 100, hidden: int = 64, intermediate: int = 128, layers: int = 2, heads: int = 4,
               kv_heads: int = 2, *, seed: int = 0, eval_mode: bool = True, **config):
    """A Llama-architecture causal LM (RMSNorm, gated MLP, grouped-query attention, no biases).

    Seeded with torch.manual_seed(seed) just before it is built; in eval mode unless asked
    (eval: no dropout, outputs deterministic). `config`: any other LlamaConfig field.
    """
    from transformers import LlamaConfig, LlamaForCausalLM
    torch_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
                                         num_hidden_layers=layers, num_attention_heads=heads,
                                         num_key_value_heads=kv_heads, **config))
    return model.eval() if eval_mode else model


# A word-level vocabulary that covers the `define` task's prompt words: enough for a real run.
DEFINE_WORDS = ["<pad>", "<unk>", "<s>", "</s>", "the", "a", "of", "to", "and", "define", "word", "is", "in",
                "or", "that", "an", ":", ",", ".", "Define", "Question", "Answer", "?", "for", "with", "as", "by"]


def save_tiny_llama_folder(folder: Path, **config) -> Path:
    """A tiny random Llama (seed 0) with a word-level tokenizer over DEFINE_WORDS, saved as a local
    model folder that labs.models.load_model and `labs finetune --model FOLDER` accept."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(DEFINE_WORDS)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>", bos_token="<s>",
                            eos_token="</s>").save_pretrained(folder)
    torch_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(DEFINE_WORDS), hidden_size=32, intermediate_size=64,
                                 num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                 max_position_embeddings=256, pad_token_id=0, bos_token_id=2, eos_token_id=3,
                                 **config)).save_pretrained(folder)
    return folder


def tiny_bert(vocab: int = 100, hidden: int = 32, intermediate: int = 64, layers: int = 2, heads: int = 2,
              labels: int = 2, *, seed: int = 0, **config):
    """A BERT encoder with a classification head (biases and LayerNorms everywhere), in eval mode."""
    from transformers import BertConfig, BertForSequenceClassification
    torch_seed(seed)
    config.setdefault("max_position_embeddings", 32)
    return BertForSequenceClassification(BertConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=heads, num_labels=labels, **config)).eval()


def tiny_gpt2(vocab: int = 100, hidden: int = 32, layers: int = 2, heads: int = 2, *, seed: int = 0, **config):
    """A GPT-2 causal LM: its projections are Conv1D (weights stored transposed), in eval mode."""
    from transformers import GPT2Config, GPT2LMHeadModel
    torch_seed(seed)
    config.setdefault("n_positions", 32)
    return GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_embd=hidden, n_layer=layers, n_head=heads,
                                      **config)).eval()


def torch_seed(seed: int) -> None:
    import torch
    torch.manual_seed(seed)


def _default_impl() -> str:
    if os.environ.get("LABS_IMPL"):
        return os.environ["LABS_IMPL"]
    return "solutions" if (ROOT / "solutions").is_dir() else "labs"


def pytest_addoption(parser):
    parser.addoption("--impl", default=None, choices=("labs", "solutions"),
                     help="which implementation graded tests run against (default: $LABS_IMPL, "
                          "else solutions when present)")
    parser.addoption("--exercise", default=None,
                     help="run only graded tests of one exercise ('5.2') or one notebook ('5')")
    parser.addoption("--exercise-report", default=None,
                     help="write a JSON report of graded test outcomes to this path")


def pytest_configure(config):
    impl = config.getoption("--impl") or _default_impl()
    config.option.impl = impl
    os.environ["LABS_IMPL"] = impl  # subprocesses and notebooks follow the same switch
    config._exercise_results = []


def pytest_sessionstart(session):
    import torch
    # Two cores shared by parallel workers: one thread each, or steps slow down many times over.
    torch.set_num_threads(1)


def exercise_of(item) -> tuple[str, float] | None:
    marker = item.get_closest_marker("exercise")
    if marker is None:
        return None
    return str(marker.args[0]), float(marker.kwargs.get("points", 1))


# The longest notebooks, longest first (seconds on 2 cores, quick preset, from a run's --durations:
# 05 445, 07 400, 03 308, 01 242, 06 239, 04 180; 15 about 250 s of CPU on one thread). The test
# workers take tests in collection order, one at a time, so a long notebook collected last would
# run alone at the end while the other worker waits; run first, the hundreds of short tests even
# the two workers out behind them.
LONGEST_NOTEBOOKS = ("05_lora", "07_prompt_tuning", "03_bitfit", "15_lora_deeper", "01_full_finetuning",
                     "06_prefix_tuning", "04_adapters", "08_qlora", "11_forgetting", "14_when_finetuning_goes_wrong",
                     "13_your_own_finetune", "09_memory")


def _run_order(item) -> tuple[int, int]:
    if item.get_closest_marker("notebook") is None:
        return (1, 0)
    name = getattr(getattr(item, "callspec", None), "id", "")
    return (0, LONGEST_NOTEBOOKS.index(name) if name in LONGEST_NOTEBOOKS else len(LONGEST_NOTEBOOKS))


def pytest_collection_modifyitems(config, items):
    items.sort(key=_run_order)   # stable: the rest keep their order
    wanted = config.getoption("--exercise")
    for item in items:
        markers = [m for m in item.iter_markers("exercise")]
        if len(markers) > 1:
            raise pytest.UsageError(f"{item.nodeid} carries {len(markers)} exercise markers; one each")
    if not wanted:
        return
    keep = []
    for item in items:
        ex = exercise_of(item)
        if ex and (ex[0] == wanted or ex[0].split(".")[0] == wanted):
            keep.append(item)
    deselected = [i for i in items if i not in keep]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
    items[:] = keep


@pytest.fixture
def impl(request):
    """impl("lora") -> the lora module of the implementation under test (labs or solutions)."""
    from labs.impl import technique
    chosen = request.config.getoption("--impl")
    return lambda name: technique(name, chosen)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    ex = exercise_of(item)
    if ex is None or report.when not in ("setup", "call"):
        return report
    if report.when == "call" or report.outcome != "passed":
        results = item.config._exercise_results
        hint = ""
        if call.excinfo is not None:  # the values compared and a common mistake's cause (labs/check.py)
            from labs.check import hint_of
            hint = hint_of(call.excinfo, ex[0], item.path)
        results.append({"nodeid": item.nodeid, "exercise": ex[0], "points": ex[1],
                        "outcome": report.outcome, "error": call.excinfo.typename if call.excinfo else None,
                        "hint": hint})
    return report


def pytest_sessionfinish(session, exitstatus):
    """Write the graded outcomes as JSON; under xdist each worker writes a part, the main merges."""
    path = session.config.getoption("--exercise-report")
    if not path:
        return
    results = session.config._exercise_results
    worker = getattr(session.config, "workerinput", {}).get("workerid")
    if worker:
        Path(f"{path}.{worker}").write_text(json.dumps(results))
        return
    for part in sorted(Path(path).parent.glob(Path(path).name + ".gw*")):
        results = results + json.loads(part.read_text())
        part.unlink()
    from labs.files import write_atomically
    write_atomically(path, json.dumps(results, indent=1))
