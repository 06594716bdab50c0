"""What every notebook builder shares: cells from (kind, source) pairs, and an atomic write.

Each nbNN_*.py holds one notebook's CELLS and ends with `main(CELLS, "<id-prefix>", OUT)`.
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = Path(__file__).resolve().parents[2]


def build(cells: list[tuple[str, str]], id_prefix: str) -> nbformat.NotebookNode:
    """A notebook from ("md" | "code", source) pairs, with fixed cell ids."""
    nb_cells = [new_markdown_cell(src.strip()) if kind == "md" else new_code_cell(src.strip()) for kind, src in cells]
    for i, cell in enumerate(nb_cells):  # fixed ids: rebuilding an unchanged notebook changes nothing
        cell.id = f"{id_prefix}-{i:02d}"
    nb = new_notebook(cells=nb_cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def write(nb: nbformat.NotebookNode, path: Path) -> None:
    """Validate, then write atomically (a temporary file in the same folder, then a rename)."""
    nbformat.validate(nb)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".ipynb.tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        nbformat.write(nb, f)
    os.chmod(tmp, 0o644)  # mkstemp makes it private; a notebook is an ordinary readable file
    os.replace(tmp, path)


def main(cells: list[tuple[str, str]], id_prefix: str, out: Path) -> None:
    write(build(cells, id_prefix), out)
    print(f"wrote {out.relative_to(ROOT)}", file=sys.stderr)
