"""The course as the instructor's checkout defines it: technique stubs, exercises, graded tests.

Shared by grading (labs/instructor/grade.py) and the gradebook, which only reads it.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from labs.instructor import screen

ROOT = Path(__file__).resolve().parents[2]
GENERATED = "# GENERATED from solutions/"


# ---------------------------------------------------------------------------------------------
# The course as the instructor's checkout defines it
# ---------------------------------------------------------------------------------------------
@dataclass
class Course:
    root: Path
    stubs: dict[str, str]              # technique -> generated stub source
    exercises: dict[str, str]          # exercise id -> technique
    qualnames: dict[str, str]          # exercise id -> function it lives in
    items: list[dict] = field(default_factory=list)  # collected graded tests: nodeid, exercise, points

    @classmethod
    def load(cls, root: Path = ROOT) -> "Course":
        stubs = {p.stem: p.read_text() for p in sorted((root / "labs").glob("*.py"))
                 if p.read_text().startswith(GENERATED)}
        if not stubs:
            raise FileNotFoundError(f"no generated technique modules in {root / 'labs'}")
        exercises, qualnames = {}, {}
        for name, text in stubs.items():
            for qualname, ex in screen.stub_exercises(text).items():
                exercises[ex], qualnames[ex] = name, qualname
        return cls(root, stubs, exercises, qualnames)

    def test_files(self) -> list[str]:
        """Graded test files (public and hidden), relative to the root."""
        found = [*(self.root / "tests").glob("test_*.py"), *(self.root / "tests" / "hidden").rglob("test_*.py")]
        graded = [str(p.relative_to(self.root)) for p in found if is_graded_test(p)]
        return sorted(graded, key=lambda f: (self.is_hidden(f), f))  # public tests first

    @cached_property
    def api(self) -> dict[str, frozenset[str]]:
        """What student modules may reach through the modules they import: screen.MODULE_API, the
        public names of labs.{surgery,presets} and of each technique module, and whatever else of
        the infrastructure the stubs themselves import (those names only)."""
        sources = {name: (self.root / "labs" / f"{name}.py").read_text() for name in sorted(screen.LABS_INFRA)
                   if (self.root / "labs" / f"{name}.py").is_file()}
        return screen.course_api(self.stubs, sources)

    def policy(self) -> dict:
        """What the children enforce while student modules run (see labs/instructor/sandbox.py)."""
        return {"techniques": sorted(self.stubs), "refused_names": sorted(screen.REFUSED_NAMES),
                "refused_attrs": sorted(screen.DANGEROUS_ATTRS | screen.MODULE_ATTRS),
                "allowed_dunders": sorted(screen.ALLOWED_DUNDERS),
                "api": {module: sorted(names) for module, names in self.api.items()}}

    def is_hidden(self, nodeid: str) -> bool:
        return nodeid.startswith("tests/hidden/")

    @cached_property
    def hidden_text(self) -> frozenset[str]:
        """What a visible test's message must not quote: every QUOTE-character window of the hidden
        tests' string constants (their assertion messages; whitespace folded) that neither a public
        graded test nor the course's own code holds. The child imports the hidden tests beside the
        student's code, so code that gets past the screen can read those constants (the files are
        gone, their source is not in memory) and put them, whole or in part, in a visible message."""
        public = [self.root / f for f in self.test_files() if not self.is_hidden(f)]
        known = [*public, self.root / "tests" / "conftest.py", *(self.root / "labs").rglob("*.py")]
        return _windows(self.root.glob("tests/hidden/**/*.py"), strings_only=True) - _windows(known)

    def quotes_hidden(self, message: str) -> bool:
        return not _windows_of(str(message)).isdisjoint(self.hidden_text)


QUOTE = 20  # characters: a window this long of a hidden test in a message is a quote, not chance


def _windows_of(text: str) -> set[str]:
    folded = " ".join(text.split())
    return {folded[i:i + QUOTE] for i in range(max(0, len(folded) - QUOTE + 1))}


def _windows(paths, strings_only: bool = False) -> frozenset[str]:
    """The QUOTE-character windows of these files' string constants and (unless strings_only) source."""
    found: set[str] = set()
    for path in sorted(paths):
        try:
            text = path.read_text()
            strings = [n.value for n in ast.walk(ast.parse(text)) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
        except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for chunk in strings if strings_only else [text, *strings]:
            found |= _windows_of(chunk)
    return frozenset(found)


def is_graded_test(path: Path) -> bool:
    """A test file with at least one function or class decorated @pytest.mark.exercise(...)."""
    try:
        tree = ast.parse(path.read_text())
    except SyntaxError:
        return False
    return any(isinstance(d, ast.Call) and isinstance(d.func, ast.Attribute) and d.func.attr == "exercise"
               for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.ClassDef))
               for d in node.decorator_list)
