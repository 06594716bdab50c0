"""labs.prerequisites on the untouched stubs (labs/) and on the reference: what a notebook says at
its top, and a `%%needs` cell that skips with that message instead of failing halfway."""
from __future__ import annotations

import pytest

from labs import prerequisites as pre

LORA = ["5.1", "5.2", "5.3", "5.4", "5.5", "5.6"]


def test_needs_resolve_to_the_open_exercises_of_methods_modules_and_ids():
    assert pre.missing(["lora"], "labs") == LORA
    assert pre.missing(["qlora"], "labs") == LORA + [f"8.{k}" for k in range(1, 9)]  # NF4 and the LoRA it runs
    assert pre.missing(["quantization"], "labs") == [f"8.{k}" for k in range(1, 9)]
    assert pre.missing(["8.2-8.4", "5.6"], "labs") == ["5.6", "8.2", "8.3", "8.4"]
    assert pre.missing(["full"], "labs") == []                    # infrastructure: nothing to wait for
    assert pre.missing(["qlora", "prompt", "8.1"], "solutions") == []
    with pytest.raises(ValueError, match="'loar'.*method, a technique module or an exercise id"):
        pre.missing(["loar"], "labs")


def test_the_report_names_each_open_exercise_with_its_notebook_and_what_runs_without():
    text = pre.report({"sections 1-7, NF4": ["quantization"], "section 8, QLoRA": ["qlora"],
                       "the full fine-tune": ["full"]}, "labs")
    assert "exercises 5.1-5.6 (notebooks/05_lora.ipynb) and 8.1-8.8 (notebooks/08_qlora.ipynb)" in text
    assert "  section 8, QLoRA: waits for exercises 5.1-5.6 (notebooks/05_lora.ipynb) and 8.1-8.8" in text
    assert "  the full fine-tune: runs" in text and "Runs now: the full fine-tune." in text
    assert "all its exercises are done" in pre.report({"section 8": ["qlora"]}, "solutions")


def test_describe_lists_what_is_not_a_run():
    assert pre.describe(["5.1", "5.3"], "labs") == "exercises 5.1, 5.3 (notebooks/05_lora.ipynb)"
    assert pre.describe(["8.8"], "labs") == "exercise 8.8 (notebooks/08_qlora.ipynb)"


@pytest.fixture
def shell(monkeypatch):
    from IPython.core.interactiveshell import InteractiveShell
    monkeypatch.setenv("LABS_IMPL", "labs")
    shell = InteractiveShell.instance()
    pre.prerequisites({"section 8": ["lora"]})
    yield shell
    shell.input_transformers_cleanup.remove(pre.guard_cell)
    InteractiveShell.clear_instance()


def test_a_cell_waiting_for_an_open_exercise_prints_why_and_runs_nothing(shell, capsys):
    capsys.readouterr()
    result = shell.run_cell("%%needs lora\nran = True\n1 / 0")
    assert result.success, "a waiting cell must not fail: the cells after it run"
    assert "ran" not in shell.user_ns
    assert "skipped until you finish exercises 5.1-5.6 (notebooks/05_lora.ipynb)" in capsys.readouterr().out


def test_a_cell_whose_needs_are_met_runs_as_a_plain_cell(shell):
    result = shell.run_cell("%%needs full  # nothing to wait for\n\nx = 41\nx + 1")
    assert result.success and result.result == 42, "the last value is shown, as in any cell"
    failed = shell.run_cell("%%needs full\n1 / 0")
    assert not failed.success and isinstance(failed.error_in_exec, ZeroDivisionError), \
        "an error in a guarded cell still stops the notebook"


def test_ready_says_why_it_waits(monkeypatch, capsys):
    monkeypatch.setenv("LABS_IMPL", "labs")
    assert pre.ready("full") and not pre.ready("prompt")
    assert "exercises 7.1" in capsys.readouterr().out
    monkeypatch.setenv("LABS_IMPL", "solutions")
    assert pre.ready("prompt", "qlora")
