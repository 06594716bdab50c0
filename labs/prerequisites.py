"""What a notebook needs from earlier exercises, said at its top, and sections that wait for them.

A notebook that runs your own modules starts with

    prerequisites({"sections 1-7, NF4 from scratch": ["quantization"],
                   "sections 8-9, QLoRA training": ["quantization", "lora"]})

which prints, before anything heavy runs, the exercises each part needs that are still open, with
the notebook that teaches them, and which parts run without them. A cell that needs them starts with

    %%needs lora

and, while an exercise it needs is open, prints one line saying so instead of running (no
traceback halfway down the notebook); once they are done it runs as a plain cell. A need is a
method of the registry ("lora", "prompt", "qlora"), a technique module ("quantization",
"scaling"), an exercise id ("8.1") or a run of them ("8.1-8.6"). `ready(...)` answers the same question in Python.

An exercise is open while its stub's `raise NotImplementedError("Exercise N.k: ...")` is still in
the module file (the implementation LABS_IMPL selects: the reference has none).
"""
from __future__ import annotations

import importlib
import re
from pathlib import Path

from labs.impl import current_impl

STUB = re.compile(r'raise NotImplementedError\(\s*"Exercise (\d+\.\d+):[^"]*?see (notebooks/[\w.-]+\.ipynb)')
EXERCISE_ID = re.compile(r"^(\d+)\.(\d+)(?:-\1\.(\d+))?$")  # "8.1", or a run in one notebook: "8.1-8.6"
MAGIC = "needs"  # the cell line `%%needs lora`


def stubs_open(impl: str | None = None) -> dict[str, tuple[str, str]]:
    """Every open exercise of the implementation: {"5.6": ("lora", "notebooks/05_lora.ipynb"), ...}."""
    package = Path(importlib.import_module(impl or current_impl()).__file__).parent
    found = {}
    for path in sorted(package.glob("*.py")):
        for exercise, notebook in STUB.findall(path.read_text(encoding="utf-8")):
            found[exercise] = (path.stem, notebook)
    return found


def _modules_of(need: str) -> tuple[str, ...] | None:
    """The technique modules a need names: a method's module and what it uses, or the module itself."""
    from labs.methods import METHODS
    if need in METHODS:
        spec = METHODS[need]
        return () if spec.infrastructure else (spec.module, *spec.uses)
    return None


def missing(needs, impl: str | None = None) -> list[str]:
    """The open exercise ids among `needs` (methods, modules or exercise ids), in course order."""
    found = stubs_open(impl)
    modules = {module for module, _ in found.values()}
    todo = set()
    for need in needs:
        run = EXERCISE_ID.match(need)
        if run:
            notebook, first, last = int(run[1]), int(run[2]), int(run[3] or run[2])
            todo |= {f"{notebook}.{k}" for k in range(first, last + 1)} & set(found)
            continue
        names = _modules_of(need)
        if names is None and need not in modules and not _is_module(need, impl):
            raise ValueError(f"need {need!r} is not a method, a technique module or an exercise id like 5.2 or 5.1-5.4; "
                             "methods: see labs.methods.METHODS")
        todo |= {ex for ex, (module, _) in found.items() if module in (names if names is not None else (need,))}
    return sorted(todo, key=lambda ex: tuple(int(p) for p in ex.split(".")))


def _is_module(name: str, impl: str | None) -> bool:
    package = Path(importlib.import_module(impl or current_impl()).__file__).parent
    return (package / f"{name}.py").is_file()


def describe(exercises: list[str], impl: str | None = None) -> str:
    """'exercises 5.1-5.6 (notebooks/05_lora.ipynb) and 8.2 (notebooks/08_qlora.ipynb)'."""
    found = stubs_open(impl)
    by_notebook: dict[str, list[str]] = {}
    for ex in exercises:
        by_notebook.setdefault(found[ex][1] if ex in found else "?", []).append(ex)
    parts = [f"{_span(ids)} ({notebook})" for notebook, ids in by_notebook.items()]
    word = "exercise" if len(exercises) == 1 else "exercises"
    return f"{word} {' and '.join(parts)}"


def _span(ids: list[str]) -> str:
    """'5.1-5.6' for a run without gaps in one notebook, else '5.1, 5.3'."""
    nums = [int(ex.split(".")[1]) for ex in ids]
    if len(ids) > 2 and len({ex.split(".")[0] for ex in ids}) == 1 and nums == list(range(nums[0], nums[0] + len(nums))):
        return f"{ids[0]}-{ids[-1]}"
    return ", ".join(ids)


def skip_message(todo: list[str], impl: str | None = None) -> str:
    return f"skipped until you finish {describe(todo, impl)}; the cells that do not need them still run"


def ready(*needs: str) -> bool:
    """True when every exercise `needs` names is done; otherwise print why the code waits, and False."""
    todo = missing(needs)
    if todo:
        print(f"{' '.join(needs)}: {skip_message(todo)}")
    return not todo


def report(parts: dict[str, list[str]], impl: str | None = None) -> str:
    """The text prerequisites() prints: per part of the notebook, whether it runs and what it waits for."""
    impl = impl or current_impl()
    waiting = {label: missing(needs, impl) for label, needs in parts.items()}
    every = sorted({ex for todo in waiting.values() for ex in todo}, key=lambda ex: tuple(map(int, ex.split("."))))
    if not every:
        return f"Everything this notebook runs is ready (impl={impl}): all its exercises are done."
    lines = [f"This notebook runs your own code (impl={impl}); still open: {describe(every, impl)}."]
    for label, todo in waiting.items():
        lines.append(f"  {label}: " + (f"waits for {describe(todo, impl)}" if todo else "runs"))
    runs = [label for label, todo in waiting.items() if not todo]
    lines.append(f"Runs now: {'; '.join(runs) if runs else 'only the set-up'}. A cell that waits prints one line "
                 "and the notebook goes on (finish the exercises, then restart the kernel and run it again).")
    return "\n".join(lines)


def prerequisites(parts: dict[str, list[str]]) -> None:
    """Print what each part of the notebook needs (report) and enable `%%needs ...` cells."""
    print(report(parts))
    _enable_cell_guard()


# ---------------------------------------------------------------------------------------------
# %%needs: a cell whose exercises are open is replaced by a print before it runs
# ---------------------------------------------------------------------------------------------
def guard_cell(lines: list[str]) -> list[str]:
    """An IPython input transformer: a cell starting `%%needs a b` runs without that line when its
    needs are met, and otherwise becomes one print of the skip message. Rewriting the source (rather
    than running the cell from inside a magic) keeps errors, outputs and the last value as in any cell."""
    if not lines or not lines[0].startswith(f"%%{MAGIC}"):
        return lines
    needs = lines[0][len(MAGIC) + 2:].split("#")[0].split()
    todo = missing(needs)
    if todo:
        return [f"print({skip_message(todo)!r})\n"]
    return ["\n", *lines[1:]]  # an empty first line: the line numbers of a traceback stay those of the cell


def _enable_cell_guard() -> None:
    try:
        from IPython import get_ipython
    except ImportError:  # plain Python: no cells to guard
        return
    shell = get_ipython()
    if shell is not None and guard_cell not in shell.input_transformers_cleanup:
        shell.input_transformers_cleanup.append(guard_cell)
