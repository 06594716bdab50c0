"""Generate the student stubs labs/<module>.py from the reference solutions/<module>.py.

Every exercise in a solution module is one function or method body between two markers:

        # BEGIN SOLUTION 5.2
        ...reference code...
        # END SOLUTION

The stub keeps everything else and replaces each marked region by
`raise NotImplementedError("Exercise 5.2: LoRALinear.forward - see notebooks/05_lora.ipynb")`.

    python tools/make_stubs.py           # regenerate labs/<module>.py for every solution module
    python tools/make_stubs.py --check   # exit 1 if regenerating would change a file, or a marker leaked
"""
from __future__ import annotations

import argparse
import ast
import re
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BEGIN = re.compile(r"^(?P<indent>\s*)# BEGIN SOLUTION (?P<id>\d+\.\d+)\s*$")
END = re.compile(r"^\s*# END SOLUTION\s*$")
LEAK = re.compile(r"(BEGIN|END) SOLUTION")
HEADER = ("# GENERATED from solutions/{name} by tools/make_stubs.py: the reference lives there.\n"
          '# Your exercises: replace each `raise NotImplementedError(...)` below with your code.\n')


@dataclass(frozen=True)
class Exercise:
    id: str          # "5.2": notebook 5, exercise 2
    qualname: str    # "LoRALinear.forward"
    module: str      # "lora"
    notebook: str    # "notebooks/05_lora.ipynb"


def _qualnames(source: str) -> dict[int, str]:
    """Map each line number to the qualified name of the innermost function containing it."""
    where: dict[int, str] = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    for line in range(child.lineno, child.end_lineno + 1):
                        where[line] = name
                visit(child, name + ".")
    visit(ast.parse(source), "")
    return where


def _notebook(source: str, path: Path) -> str:
    match = re.search(r'^NOTEBOOK\s*=\s*["\']([^"\']+)["\']', source, re.M)
    if not match:
        raise SystemExit(f"{path}: needs a module constant NOTEBOOK = \"notebooks/NN_name.ipynb\"")
    return match.group(1)


def stub_source(path: Path) -> tuple[str, list[Exercise]]:
    """The generated stub text of one solution module, and the exercises it holds."""
    source = path.read_text()
    notebook, where = _notebook(source, path), _qualnames(source)
    out, exercises, open_marker = [HEADER.format(name=path.name)], [], None
    for number, line in enumerate(source.splitlines(keepends=True), start=1):
        begin = BEGIN.match(line)
        if open_marker is None and begin:
            qualname = where.get(number)
            if qualname is None:
                raise SystemExit(f"{path}:{number}: exercise {begin['id']} is not inside a function")
            ex = Exercise(begin["id"], qualname, path.stem, notebook)
            exercises.append(ex)
            out.append(f'{begin["indent"]}raise NotImplementedError('
                       f'"Exercise {ex.id}: {ex.qualname} - see {ex.notebook}")\n')
            open_marker = (number, ex.id)
        elif open_marker is not None and END.match(line):
            open_marker = None
        elif open_marker is not None and BEGIN.match(line):
            raise SystemExit(f"{path}:{number}: BEGIN SOLUTION inside exercise {open_marker[1]}")
        elif open_marker is None:
            if LEAK.search(line):
                raise SystemExit(f"{path}:{number}: malformed solution marker: {line.strip()!r}")
            out.append(line)
    if open_marker is not None:
        raise SystemExit(f"{path}:{open_marker[0]}: exercise {open_marker[1]} has no END SOLUTION")
    return "".join(out), exercises


def solution_modules(root: Path = ROOT) -> list[Path]:
    return sorted(p for p in (root / "solutions").glob("*.py") if p.name != "__init__.py")


def all_exercises(root: Path = ROOT) -> list[Exercise]:
    """Every exercise declared in the reference solutions, in file order."""
    return [ex for path in solution_modules(root) for ex in stub_source(path)[1]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="fail if any stub is out of date or leaks a marker")
    parser.add_argument("--root", type=Path, default=ROOT)
    args = parser.parse_args(argv)
    problems, ids = [], {}
    for path in solution_modules(args.root):
        text, exercises = stub_source(path)
        for ex in exercises:
            if ex.id in ids:
                problems.append(f"exercise {ex.id} declared twice: {ids[ex.id]} and {path.name}")
            ids[ex.id] = path.name
        target = args.root / "labs" / path.name
        if args.check:
            if not target.exists() or target.read_text() != text:
                problems.append(f"{target.relative_to(args.root)} is out of date: run python tools/make_stubs.py")
        elif not target.exists() or target.read_text() != text:
            tmp = target.with_suffix(".py.tmp")
            tmp.write_text(text)
            tmp.replace(target)
            print(f"wrote {target.relative_to(args.root)} ({len(exercises)} exercises)")
    for path in sorted((args.root / "labs").rglob("*.py")):
        if LEAK.search(path.read_text()):
            problems.append(f"{path.relative_to(args.root)} contains a solution marker")
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
