"""PEFT Lab: parameter-efficient fine-tuning built from scratch and measured on real models.

Infrastructure lives in labs.surgery, labs.train, labs.memory, labs.models, labs.data, ...;
each technique is one module (labs.lora, labs.adapters, ...) generated from the reference.
Top-level names are loaded lazily so `import labs` stays fast.
"""
from __future__ import annotations

import importlib
import logging

__version__ = "0.1.0"

_LAZY = {
    "load_model": "labs.models",
    "pick_device": "labs.models",
    "supports_bf16": "labs.models",
    "prepare_assets": "labs.assets",
    "save_adapter": "labs.peft_format",
    "load_adapter": "labs.peft_format",
    "get_preset": "labs.presets",
    "technique": "labs.impl",
    "check": "labs.check",
}

# bitsandbytes 0.50, on a CPU with AVX512-BF16, logs at import that it could not fetch an optional
# fused 4-bit matmul ("Failed to load CPU gemm_4bit_forward from kernels-community: No module named
# 'kernels'"). Nothing is missing: it falls back to its compiled CPU library, the one the course
# measures. The notice is dropped so that no learner installs packages to chase it.
logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(lambda record: "kernels-community" not in record.getMessage())


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'labs' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
