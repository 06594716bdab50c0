"""What every notebook builder shares: cells from (kind, source) pairs, and an atomic write.

Each nbNN_*.py holds one notebook's CELLS and ends with `main(CELLS, "<id-prefix>", OUT)`.

    python tools/notebooks/nb05_lora.py          rebuild one notebook
    python tools/notebooks/nbtools.py --all      rebuild every notebook
    python tools/notebooks/nbtools.py --check    exit 1 if a committed notebook is not, byte for
                                                 byte, what its builder writes today
"""
from __future__ import annotations

import argparse
import runpy
import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
if str(ROOT) not in sys.path:  # labs, for the shared atomic write, before `pip install -e .` too
    sys.path.insert(0, str(ROOT))
from labs.files import write_atomically  # noqa: E402

# While set (a list), main() appends (out, text) here instead of writing: how --check rebuilds.
_captured: list[tuple[Path, str]] | None = None


SETUP_CELL = HERE / "setup_cell.py"  # every notebook's first code cell: finds `labs`, or says what to run


def build(cells: list[tuple[str, str]], id_prefix: str) -> nbformat.NotebookNode:
    """A notebook from ("md" | "code", source) pairs, with fixed cell ids; the setup cell goes
    before the first code cell."""
    nb_cells = [new_markdown_cell(src.strip()) if kind == "md" else new_code_cell(src.strip()) for kind, src in cells]
    for i, cell in enumerate(nb_cells):  # fixed ids: rebuilding an unchanged notebook changes nothing
        cell.id = f"{id_prefix}-{i:02d}"
    setup = new_code_cell(SETUP_CELL.read_text().strip())
    setup.id = f"{id_prefix}-setup"
    first_code = next((i for i, cell in enumerate(nb_cells) if cell.cell_type == "code"), len(nb_cells))
    nb_cells.insert(first_code, setup)
    nb = new_notebook(cells=nb_cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def render(nb: nbformat.NotebookNode) -> str:
    """The file text of a notebook, exactly as nbformat.write would put it on disk."""
    nbformat.validate(nb)
    text = nbformat.writes(nb)
    return text if text.endswith("\n") else text + "\n"


def write(nb: nbformat.NotebookNode, path: Path) -> None:
    """Validate, then write atomically (labs.files.write_atomically)."""
    write_atomically(path, render(nb))


def main(cells: list[tuple[str, str]], id_prefix: str, out: Path) -> None:
    nb = build(cells, id_prefix)
    if _captured is not None:
        _captured.append((Path(out), render(nb)))
        return
    write(nb, out)
    print(f"wrote {_shown(Path(out))}", file=sys.stderr)


def _shown(path: Path) -> Path:
    return path.relative_to(ROOT) if path.resolve().is_relative_to(ROOT) else path


def builders(folder: Path = HERE) -> list[Path]:
    return sorted(folder.glob("nb[0-9][0-9]_*.py"))


def rebuilt(builder: Path) -> list[tuple[Path, str]]:
    """Run one builder without writing: the (notebook path, text) pairs it would write."""
    if str(builder.parent) not in sys.path:
        sys.path.insert(0, str(builder.parent))
    import nbtools as shared  # the module the builders import (this file is __main__ when run as a script)
    shared._captured = []
    try:
        runpy.run_path(str(builder), run_name="__main__")
        return shared._captured
    finally:
        shared._captured = None


def check(folder: Path = HERE) -> list[str]:
    """Problems: a committed notebook that differs from its builder's output, or has no builder."""
    problems, built = [], set()
    for builder in builders(folder):
        outputs = rebuilt(builder)
        if not outputs:
            problems.append(f"{builder.name} wrote no notebook (it should end with main(CELLS, prefix, OUT))")
        for path, text in outputs:
            built.add(path.resolve())
            where = _shown(path)
            if not path.exists():
                problems.append(f"{where} is missing: run python tools/notebooks/{builder.name}")
            elif path.read_bytes() != text.encode("utf-8"):
                problems.append(f"{where} is not what {builder.name} builds: run python "
                                f"tools/notebooks/{builder.name} (edit the builder, not the notebook)")
    for notebook in sorted((folder.parents[1] / "notebooks").glob("*.ipynb")):
        if notebook.resolve() not in built:
            problems.append(f"notebooks/{notebook.name} has no builder in {folder.relative_to(folder.parents[1])}/")
    return problems


def _cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--check", action="store_true", help="compare every committed notebook with its builder")
    what.add_argument("--all", action="store_true", help="rebuild every notebook")
    args = parser.parse_args(argv)
    if args.all:
        for builder in builders():
            runpy.run_path(str(builder), run_name="__main__")
        return 0
    problems = check()
    for problem in problems:
        print(problem, file=sys.stderr)
    print(f"notebooks: {len(builders())} builders, " + ("FAILED" if problems else "every notebook is what its builder writes"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(_cli())
