"""The command line: help lists what it accepts, bad input is one clear line and exit status 2."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from labs import cli

ROOT = Path(__file__).resolve().parent.parent


def run_labs(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    env.pop("LABS_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "labs", *args], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=120)


def test_finetune_help_lists_models_tasks_presets_and_methods():
    from labs.data import TASKS
    from labs.methods import METHODS
    from labs.models import MODELS
    from labs.presets import PRESETS
    proc = run_labs("finetune", "--help")
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())  # argparse wraps lines
    for name in [*MODELS, *TASKS, *PRESETS, *METHODS]:
        assert name in text, f"{name!r} missing from `labs finetune --help`"


def test_top_level_help_names_every_command():
    proc = run_labs("--help")
    assert proc.returncode == 0, proc.stderr
    for command in ("assets", "finetune", "compare", "check", "doctor", "grade", "release"):
        assert command in proc.stdout


@pytest.mark.parametrize("args,bad,valid", [
    (["--model", "no-such-model"], "no-such-model", "smollm2-135m"),
    (["--task", "no-such-task"], "no-such-task", "define"),
    (["--method", "no-such-method"], "no-such-method", "lora"),
    (["--preset", "huge"], "huge", "quick"),
])
def test_unknown_choice_is_one_line_and_exit_2(args, bad, valid):
    proc = run_labs("finetune", *args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert bad in lines[0] and valid in lines[0] and "Traceback" not in proc.stderr


def test_stub_exercise_message_passes_through_as_one_line(monkeypatch, capsys):
    import labs.finetune

    def stub(*args, **kwargs):
        raise NotImplementedError("Exercise 5.2: LoRALinear.forward - see notebooks/05_lora.ipynb")

    monkeypatch.setattr(labs.finetune, "run_finetune", stub)
    monkeypatch.delenv("LABS_DEBUG", raising=False)
    assert cli.main(["finetune", "--method", "lora"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "labs finetune: error: Exercise 5.2: LoRALinear.forward - see notebooks/05_lora.ipynb"


def test_options_reach_the_run(monkeypatch):
    import labs.finetune
    seen = {}
    monkeypatch.setattr(labs.finetune, "run_finetune", lambda *a, **k: seen.update(args=a, **k))
    code = cli.main(["finetune", "--method", "lora", "--r", "4", "--option", "alpha=16",
                     "--option", "target_modules=q_proj,v_proj", "--option", "dropout=0.1",
                     "--max-steps", "3", "--preset", "quick", "--no-progress"])
    assert code == 0
    assert seen["options"] == {"r": 4, "alpha": 16, "target_modules": ["q_proj", "v_proj"], "dropout": 0.1}
    assert seen["preset"].name == "quick" and seen["preset"].max_steps == 3 and seen["progress"] is False


def test_malformed_option_is_a_user_error(capsys):
    assert cli.main(["finetune", "--option", "alpha"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err


def test_missing_edition_module_says_so(monkeypatch, capsys):
    monkeypatch.setitem(cli.DELEGATED, "grade", "labs.no_such_module_here")
    assert cli.main(["grade", "submissions/"]) == 2
    assert "not available in this edition" in capsys.readouterr().err


def test_check_is_delegated_with_its_arguments(monkeypatch):
    import types
    fake = types.ModuleType("fake_check")
    fake.main = lambda argv: 7 if argv == ["5.2"] else 0
    monkeypatch.setitem(sys.modules, "fake_check", fake)
    monkeypatch.setitem(cli.DELEGATED, "check", "fake_check")
    assert cli.main(["check", "5.2"]) == 7
