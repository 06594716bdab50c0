"""One switch picks which implementation of the technique modules runs.

Students work in `labs/<technique>.py` (generated stubs they fill in); instructors and CI run the
reference in `solutions/<technique>.py`. Everything that needs technique code -- notebooks, the
command line, the tests -- goes through `technique(name)`, so one environment variable decides.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
from types import ModuleType

IMPLEMENTATIONS = ("labs", "solutions")
ENV_VAR = "LABS_IMPL"


def current_impl() -> str:
    """The implementation selected by LABS_IMPL (default: the student's `labs`)."""
    impl = os.environ.get(ENV_VAR, "labs").strip() or "labs"
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"{ENV_VAR}={impl!r} is not valid; use one of {', '.join(IMPLEMENTATIONS)}")
    return impl


def has_reference() -> bool:
    """Whether this edition holds the reference solutions (the student edition does not)."""
    return importlib.util.find_spec("solutions") is not None


def technique(name: str, impl: str | None = None) -> ModuleType:
    """Import technique module `name` (e.g. "lora") from the selected implementation."""
    impl = impl or current_impl()
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"implementation {impl!r} is not valid; use one of {', '.join(IMPLEMENTATIONS)}")
    try:
        return importlib.import_module(f"{impl}.{name}")
    except ModuleNotFoundError as err:
        if impl == "solutions" and err.name in ("solutions", f"solutions.{name}"):
            raise ModuleNotFoundError(
                f"the reference solutions are not part of this edition; set {ENV_VAR}=labs "
                "to run your own implementation") from err
        raise
