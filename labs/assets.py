"""Prepare everything the course needs offline: `labs assets` (or `python -m labs assets`).

Models: the embedded models are checked and SmolLM2's GGUF is converted once into the local
safetensors cache (labs.models.prepare_cache), so every later load takes about a second.
Data: the curated files in data/ (built by tools/build_data.py) are checked to be present.
Running it again does nothing that is already done.
"""
from __future__ import annotations

import time
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
DATA_FILES = (  # written by tools/build_data.py, except the hand-written probe
    "PROVENANCE.md", "probe_general_knowledge.jsonl", "rotten_tomatoes.jsonl.gz",
    "chatterbot_qa.jsonl.gz", "wordnet_define.jsonl.gz", "wordnet_topic.jsonl.gz",
    "austen.jsonl.gz", "moby_dick.jsonl.gz", "kjv.jsonl.gz", "hamlet.jsonl.gz",
)


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def prepare_model(name: str, progress: bool = True, force: bool = False) -> float:
    """Make embedded model `name` fast to load; return the seconds it took."""
    from labs.models import is_cached, model_info, prepare_cache

    start = time.perf_counter()
    spec = model_info(name)
    done = spec.is_gguf and is_cached(name) and not force
    folder = prepare_cache(name, progress=progress, force=force)
    seconds = time.perf_counter() - start
    if not spec.is_gguf:
        what = "ready in its package"
    else:
        what = "already cached" if done else f"converted in {seconds:.0f} s"
    print(f"model {name:<14} {what}: {folder} ({_size(folder) / 1e6:,.0f} MB)")
    return seconds


def check_data(data_dir: Path = DATA_DIR) -> float:
    """Check the curated data files exist; raise FileNotFoundError naming the missing ones."""
    start = time.perf_counter()
    missing = [name for name in DATA_FILES if not (data_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(f"missing in {data_dir}: {', '.join(missing)}; "
                                "rebuild them with `python tools/build_data.py`")
    total = sum((data_dir / name).stat().st_size for name in DATA_FILES)
    print(f"data  {len(DATA_FILES)} files present in {data_dir} ({total / 1e6:,.1f} MB)")
    return time.perf_counter() - start


def prepare_assets(models=("smollm2-135m", "minilm-l6"), progress: bool = True,
                   force: bool = False) -> dict[str, float]:
    """Prepare `models` and check the data; returns seconds per item ("data" for the files).

    `force` converts the models again even when a complete cache exists.
    """
    if isinstance(models, str):
        models = (models,)
    timings = {name: prepare_model(name, progress, force) for name in models}
    timings["data"] = check_data()
    return timings
