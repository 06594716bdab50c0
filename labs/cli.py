"""The command line: `labs <command>` or `python -m labs <command>`.

    labs assets                                   prepare models and data for offline use
    labs finetune --method lora --task define     one method, one model, one task
    labs compare --methods full,lora,bitfit       several methods side by side: table + Pareto plot
    labs generate RUN --prompt "..."              talk to what you trained (--chat, --compare-base)
    labs generate --pair ADAPTER=PROMPT ...       many adapters, one batch (--pairs FILE.jsonl)
    labs export RUN --merged OUT [--gguf F.gguf]  a plain transformers folder, a GGUF file for llama.cpp
    labs doctor RUN                               what went wrong in a run, by the detectors of notebook 14
    labs check [5 | 5.2]                          your exercises, pass or fail, with a hint
    labs grade ... / labs release ...             instructor tools (where this edition has them)
    labs merge-grades --out grades.csv DIR...     join the grades of `labs grade --shard i/n` runs

Imports are lazy so that `labs --help` answers at once. A mistake in the input (an unknown
model, task, method or preset, an option a method does not take, an exercise not done yet)
prints one line to stderr and exits with status 2; set LABS_DEBUG=1 to see the traceback.
"""
from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import os
import sys

# command -> the module whose main(argv) runs it ("module:function" for another function)
DELEGATED = {"check": "labs.check", "grade": "labs.instructor.grade", "release": "labs.instructor.release",
             "merge-grades": "labs.instructor.grade:merge_main", "generate": "labs.generate",
             "export": "labs.export", "doctor": "labs.doctor"}
USER_ERRORS = (ValueError, NotImplementedError, FileNotFoundError, ModuleNotFoundError)
RUN_COMMANDS = ("finetune", "compare")


class UserError(Exception):
    """Bad input on the command line: reported as one line, exit status 2."""


# ---------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------
def _choices() -> dict[str, list[str]]:
    """Models, tasks, presets and methods this edition accepts (imports the registries)."""
    from labs.data import TASKS
    from labs.methods import METHODS
    from labs.models import MODELS
    from labs.presets import PRESETS
    return {"model": list(MODELS), "task": list(TASKS), "preset": list(PRESETS), "method": list(METHODS)}


def _run_arguments(parser: argparse.ArgumentParser, choices: dict | None) -> None:
    """Arguments shared by finetune and compare; `choices` (if known) are listed in --help."""
    def listed(kind: str) -> str:
        return f" (one of: {', '.join(choices[kind])})" if choices else ""

    parser.add_argument("--model", default="smollm2-135m",
                        help="embedded model" + listed("model") + ", a local folder, or a Hub name when "
                             "online (default: smollm2-135m)")
    parser.add_argument("--task", default=None,
                        help="task" + listed("task") + ", or your own data file (.jsonl, .json, .csv, .txt, a folder "
                             "of .txt; see labs/user_data.py) (default: define for decoders, sentiment for minilm-l6)")
    parser.add_argument("--preset", default=os.environ.get("LABS_PRESET", "quick"),
                        help="run size" + listed("preset") + " (default: $LABS_PRESET, else quick)")
    parser.add_argument("--max-steps", type=int, default=None, help="override the preset's optimizer steps")
    parser.add_argument("--lr", type=float, default=None,
                        help="learning rate (default: each method's own for the preset, from labs/methods.py)")
    parser.add_argument("--gradient-checkpointing", action="store_true",
                        help="recompute activations in the backward pass: less memory, slower steps "
                             "(methods that cannot, such as prefix tuning, train without it)")
    parser.add_argument("--impl", default=None, choices=("labs", "solutions"),
                        help="whose technique modules run: labs = your own labs/<module>.py, solutions = "
                             "the reference where this edition has it (default: $LABS_IMPL, else labs)")
    parser.add_argument("--out", default=None, help="output folder (default: runs/<method>-<model>-<task>-<time>)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def build_parser(choices: dict | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="labs", description="PEFT Lab: parameter-efficient fine-tuning, "
                                     "built from scratch and measured on real models.")
    sub = parser.add_subparsers(dest="command", metavar="command")
    assets = sub.add_parser("assets", help="prepare the models and data for offline use")
    assets.add_argument("--models", default=None, help="comma-separated embedded models (default: all)")
    assets.add_argument("--force", action="store_true", help="convert the models again even when cached")
    assets.add_argument("--no-progress", action="store_true", help="no progress bars")

    methods = f" (one of: {', '.join(choices['method'])})" if choices else ""
    ft = sub.add_parser("finetune", help="fine-tune one model on one task with one method",
                        description="Fine-tune one model on one task with one method; writes metrics.json, "
                                    "plots and the adapter (or model) to --out.")
    ft.add_argument("--method", default="full", help="method" + methods + " (default: full)")
    _run_arguments(ft, choices)
    ft.add_argument("--device", default=None, help="cpu, cuda, mps (default: the best available)")
    ft.add_argument("--rank", "--r", dest="rank", type=int, default=None, help="rank r (LoRA); same as --option r=N")
    ft.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                    help="a method option, repeatable (e.g. --option alpha=16 --option target_modules=q_proj,v_proj)")

    cmp = sub.add_parser("compare", help="run several methods on one task: table and Pareto plot",
                         description="Run several methods on one task, each in its own process; writes "
                                     "compare.md, compare.csv and pareto.png to --out.")
    cmp.add_argument("--methods", default=None, help="comma-separated methods" + methods + " (default: all); a method may "
                     "carry options joined by ':', e.g. lora,lora:use_dora=true,lora:init=pissa")
    _run_arguments(cmp, choices)

    for name, text in (("generate", "answers from a run, an adapter or a model folder: labs generate RUN --prompt ...; "
                                    "many adapters in one batch: --pair ADAPTER=PROMPT (repeated) or --pairs FILE.jsonl"),
                       ("export", "merge a run into a plain transformers folder (--merged) or a GGUF file (--gguf)"),
                       ("doctor", "diagnose a finished run with the detectors of notebook 14: labs doctor RUN"),
                       ("check", "run your exercise tests: labs check [5 | 5.2]"),
                       ("grade", "grade a folder of submissions (instructors)"),
                       ("release", "build the student edition (instructors)"),
                       ("merge-grades", "join the grades.csv of labs grade --shard runs (instructors)")):
        if available(name):  # the student edition has no labs/instructor/: no grade, no release
            sub.add_parser(name, help=text, add_help=False)
    return parser


def available(command: str) -> bool:
    """Whether this edition has the module a delegated command runs (without importing it)."""
    name = DELEGATED.get(command, "labs").partition(":")[0]
    if name in sys.modules:
        return True
    try:
        return importlib.util.find_spec(name) is not None
    except (ModuleNotFoundError, ValueError):  # a parent package is missing, or a spec-less module
        return False


def parse_options(pairs: list[str], rank: int | None = None) -> dict:
    """["alpha=16", "targets=q_proj,v_proj"] -> {"alpha": 16, "targets": ["q_proj", "v_proj"]}."""
    options = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--option {pair!r} is not KEY=VALUE (for example --option alpha=16)")
        options[key.strip().replace("-", "_")] = _value(text.strip())
    if rank is not None:
        options["r"] = rank
    return options


def _value(text: str):
    """A number, bool or None when the text reads as one; a list when it has commas; else the text."""
    if "," in text:
        return [_value(part.strip()) for part in text.split(",") if part.strip()]
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return {"true": True, "false": False, "none": None}.get(text.lower(), text)


def _check_choice(kind: str, value: str, choices: dict) -> None:
    if value not in choices[kind]:
        raise UserError(f"unknown {kind} {value!r}; choose one of: {', '.join(choices[kind])}")


def _check_task(value: str | None, choices: dict) -> None:
    """A task name, or a data file of your own: read and checked now, before anything loads."""
    from labs.data import get_task
    from labs.user_data import looks_like_data
    if value is not None and looks_like_data(value):
        get_task(value)
    elif value is not None:
        _check_choice("task", value, choices)


def _check_model(value: str, choices: dict) -> None:
    """Embedded names, existing local paths and Hub-style names ("org/model") are accepted."""
    if value in choices["model"] or os.path.exists(value) or value.count("/") == 1 and not value.startswith("."):
        return
    raise UserError(f"unknown model {value!r}; choose one of: {', '.join(choices['model'])} "
                    "(or a local model folder, or a Hub name such as HuggingFaceTB/SmolLM2-360M when online)")


def _preset(args):
    from labs.presets import get_preset
    overrides = {"max_steps": args.max_steps, "lr": args.lr, "gradient_checkpointing": args.gradient_checkpointing or None}
    return get_preset(args.preset, **{k: v for k, v in overrides.items() if v is not None})


# ---------------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------------
def cmd_assets(args) -> int:
    from labs.assets import prepare_assets
    kwargs = {"models": [m.strip() for m in args.models.split(",") if m.strip()]} if args.models else {}
    prepare_assets(progress=not args.no_progress, force=args.force, **kwargs)
    return 0


def cmd_finetune(args, choices: dict) -> int:
    _check_choice("method", args.method, choices)
    _check_model(args.model, choices)
    _check_task(args.task, choices)
    _check_choice("preset", args.preset, choices)
    from labs.finetune import run_finetune
    if args.no_progress:
        _quiet_progress()
    run_finetune(args.method, args.model, task=args.task, preset=_preset(args), out=args.out,
                 options=parse_options(args.option, args.rank), progress=not args.no_progress,
                 seed=args.seed, device=args.device, impl=args.impl)
    return 0


def cmd_compare(args, choices: dict) -> int:
    methods = [m.strip() for m in (args.methods or ",".join(choices["method"])).split(",") if m.strip()]
    for method in methods:  # a method may carry options: lora:use_dora=true
        _check_choice("method", method.partition(":")[0].strip(), choices)
    _check_model(args.model, choices)
    _check_task(args.task, choices)
    _check_choice("preset", args.preset, choices)
    from labs.compare import CompareFailed, run_compare
    try:
        rows = run_compare(methods, args.model, task=args.task, preset=args.preset, out=args.out,
                           seed=args.seed, progress=not args.no_progress, max_steps=args.max_steps,
                           impl=args.impl, lr=args.lr, gradient_checkpointing=args.gradient_checkpointing)
    except CompareFailed as err:
        print(f"labs compare: {len(err.rows) - len(err.failed)} of {len(err.rows)} methods finished; {err}",
              file=sys.stderr)
        return 1
    print(f"all {len(rows)} methods finished")
    return 0


def _quiet_progress() -> None:
    """--no-progress also silences the library's own bars (loading weights)."""
    from transformers.utils import logging
    logging.disable_progress_bar()


def delegate(command: str, argv: list[str]) -> int:
    """check / grade / release live in their own modules, each with its own main(argv)."""
    if not available(command):  # grade and release: the student edition has no labs/instructor/
        print(f"labs {command}: not available in this edition (it is an instructor tool of the course "
              "repository)", file=sys.stderr)
        return 2
    module, _, function = DELEGATED[command].partition(":")
    return int(getattr(importlib.import_module(module), function or "main")(argv) or 0)


def _one_line(err: BaseException) -> str:
    text = " ".join(line.strip() for line in str(err).strip().splitlines() if line.strip())
    return text or type(err).__name__


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in DELEGATED:
        return _guarded(lambda: delegate(argv[0], argv[1:]), argv[0])
    choices = _choices() if argv and argv[0] in RUN_COMMANDS else None
    args = build_parser(choices).parse_args(argv)
    if args.command is None:
        build_parser().print_help()
        return 0
    if args.command == "assets":
        return _guarded(lambda: cmd_assets(args), "assets")
    run = cmd_finetune if args.command == "finetune" else cmd_compare
    return _guarded(lambda: run(args, choices), args.command)


def _guarded(fn, command: str) -> int:
    """Run a command; bad input becomes one line on stderr and exit status 2."""
    try:
        return fn()
    except KeyboardInterrupt:
        print(f"labs {command}: interrupted", file=sys.stderr)
        return 130
    except (UserError, *USER_ERRORS) as err:
        if os.environ.get("LABS_DEBUG"):
            raise
        print(f"labs {command}: error: {_one_line(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
