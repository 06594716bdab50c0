"""`labs release`: build the student edition, or a Gradescope autograder, from this checkout.

    labs release ../peft-lab-student                   the student edition, a folder
    labs release ../autograder.zip --gradescope        a Gradescope autograder zip

The student edition holds labs/ (infrastructure and the generated stubs, no grading code),
notebooks/ (outputs cleared), the public tests (not tests/hidden/, not tests that need the
reference), tools/ and benchmarks/ that run without the reference, data/, and the Makefile,
pyproject.toml, environment.yml, README.md and .gitignore. Its Makefile's `make test` runs the
infrastructure tests (a test waiting for an exercise is skipped, see labs/pending.py) and then
`labs check`, so it passes on untouched stubs.

The Gradescope zip holds setup.sh (pinned dependencies, torch first), run_autograder (which runs
`labs grade` on /autograder/submission into /autograder/results), the grading code and every
graded test, the hidden ones too. Neither edition holds solutions/: every text file is scanned,
and a solution marker line or an import of `solutions` anywhere stops the release. Nor may the
student edition hold an exercise's answer outside its stub: a function that re-implements one
(see labs/instructor/answer_leaks.py) stops the release, naming the file, function and exercise.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import re
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

from labs.instructor import answer_leaks

ROOT = Path(__file__).resolve().parents[2]
INSTRUCTOR_PACKAGE = "instructor"  # labs/instructor/: grading and release, never in the student edition
INSTRUCTOR_TOOLS = ("make_stubs.py", "check_exercises.py")
INSTRUCTOR_TESTS = ("test_release.py", "test_grade.py", "test_grade_shards.py", "test_exercise_machinery.py")
INSTRUCTOR_BENCHMARKS = ("grade_class.py",)
# Makefile targets that only serve instructor tools: the release itself, bubblewrap for `labs grade`,
# Chromium for tests/test_browser.py (held back: it runs the notebooks on the reference).
INSTRUCTOR_TARGETS = ("release", "sandbox", "browser")
TOP_FILES = ("Makefile", "pyproject.toml", "environment.yml", "README.md", ".gitignore")
SKIP = shutil.ignore_patterns("__pycache__", "*.pyc", ".ipynb_checkpoints", ".pytest_cache")
MARKER_LINE = re.compile(r"^\s*#\s*(BEGIN|END) SOLUTION\b", re.M)
# Notebook tooling the autograder does not need (and that would slow its setup).
AUTOGRADER_SKIPS = ("jupyterlab", "ipywidgets", "ipykernel", "playwright", "nbclient", "nbformat")
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"


# ---------------------------------------------------------------------------------------------
# What goes in
# ---------------------------------------------------------------------------------------------
# What a script may not import to ship in the edition: the reference, and what the edition holds back.
HELD_MODULES = ("solutions", "labs.instructor", "make_stubs", "check_exercises")


def needs_reference(path: Path) -> bool:
    """A script that imports solutions or an instructor-only module (labs.instructor, the stub tools),
    or names the "solutions" implementation, needs what only the course repository has."""
    try:
        tree = ast.parse(path.read_text())
    except SyntaxError:
        return True

    def held(module: str) -> bool:
        return any(module == m or module.startswith(m + ".") for m in HELD_MODULES)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(held(a.name) for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and held(node.module or ""):
            return True
        if isinstance(node, ast.Constant) and node.value == "solutions":
            return True
    return False


def public_tests(root: Path = ROOT) -> tuple[list[Path], list[Path]]:
    """(shipped, held back): graded tests always ship; other tests ship unless they need the reference."""
    shipped, held = [], []
    for path in sorted((root / "tests").glob("*.py")):
        graded = path.name.startswith("test_ex_")
        instructor = path.name in INSTRUCTOR_TESTS or (path.name.startswith("test_") and not graded
                                                       and needs_reference(path))
        (held if instructor else shipped).append(path)
    return shipped, held


def check_stubs(root: Path = ROOT) -> None:
    """Refuse to release stubs that are older than their reference."""
    sys.path.insert(0, str(root / "tools"))
    try:
        import make_stubs
    finally:
        sys.path.remove(str(root / "tools"))
    for path in make_stubs.solution_modules(root):
        target = root / "labs" / path.name
        if not target.exists() or target.read_text() != make_stubs.stub_source(path)[0]:
            raise ValueError(f"labs/{path.name} is out of date: run python tools/make_stubs.py first")


def clear_outputs(notebook: Path, target: Path) -> None:
    data = json.loads(notebook.read_text())
    for cell in data.get("cells", []):
        if cell.get("cell_type") == "code":
            cell["outputs"], cell["execution_count"] = [], None
        cell.get("metadata", {}).pop("execution", None)
    data.get("metadata", {}).pop("widgets", None)
    target.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")


# ---------------------------------------------------------------------------------------------
# The student edition
# ---------------------------------------------------------------------------------------------
def build_student(out: Path, root: Path = ROOT) -> list[str]:
    """Write the student edition into `out` (a new folder); return what was held back, for the record."""
    held = []
    (out / "labs").mkdir(parents=True)
    for src in sorted((root / "labs").iterdir()):
        if src.name == INSTRUCTOR_PACKAGE:
            held.append(f"labs/{src.name}/")
        elif src.name == "__pycache__":
            continue
        elif src.is_dir():
            shutil.copytree(src, out / "labs" / src.name, ignore=SKIP)
        else:
            shutil.copyfile(src, out / "labs" / src.name)
    _copy_notebooks(root, out)
    shipped, held_tests = public_tests(root)
    (out / "tests").mkdir()
    for path in shipped:
        shutil.copyfile(path, out / "tests" / path.name)
    held += [f"tests/{p.name}" for p in held_tests] + ["tests/hidden/"]
    held += _copy_scripts(root / "tools", out / "tools", INSTRUCTOR_TOOLS)
    held += _copy_scripts(root / "benchmarks", out / "benchmarks", INSTRUCTOR_BENCHMARKS)
    if (root / "data").is_dir():
        shutil.copytree(root / "data", out / "data", ignore=SKIP)
    if (root / "configs").is_dir():  # accelerate configs: README, Scaling out
        shutil.copytree(root / "configs", out / "configs", ignore=SKIP)
    for name in TOP_FILES:
        if (root / name).is_file():
            shutil.copyfile(root / name, out / name)
    (out / "Makefile").write_text(student_makefile((root / "Makefile").read_text()))
    (out / "pyproject.toml").write_text(_student_pyproject((root / "pyproject.toml").read_text()))
    return held


def _copy_notebooks(root: Path, out: Path) -> None:
    if not (root / "notebooks").is_dir():
        return
    shutil.copytree(root / "notebooks", out / "notebooks", ignore=SKIP)
    for notebook in (out / "notebooks").rglob("*.ipynb"):
        clear_outputs(notebook, notebook)


def _copy_scripts(src: Path, dst: Path, instructor: tuple[str, ...]) -> list[str]:
    """Copy a folder of scripts, holding back the instructor's and any that needs the reference."""
    held = []
    if not src.is_dir():
        return held
    shutil.copytree(src, dst, ignore=SKIP)
    for path in sorted(dst.rglob("*.py")):
        if path.name in instructor or needs_reference(path):
            held.append(str(path.relative_to(dst.parent)))
            path.unlink()
    if not any(dst.rglob("*")):
        dst.rmdir()
    return held


def student_makefile(text: str) -> str:
    """The Makefile with `make test` (and test-fast) run against the student's own code, its help
    saying so, and without the targets that serve only the instructor's tools (INSTRUCTOR_TARGETS)."""
    text = text.replace("LABS_IMPL=solutions", "LABS_IMPL=labs").replace("--impl solutions", "--impl labs")
    student_test = "the infrastructure tests, then your exercises (labs check)"
    text = re.sub(r"(?m)^(#\s+make test\s+).*$", rf"\1{student_test}", text)
    text = re.sub(r'(?m)^(\t@echo "make test\s+).*"$', rf'\1{student_test}"', text)
    for target in INSTRUCTOR_TARGETS:
        text = _drop_rule(text, target)
    recipes = {
        "test": ['@echo "== the infrastructure tests (a test waiting for one of your exercises is skipped)"',
                 '$(TEST_ENV) $(PY) -m pytest tests -m "not exercise" -p labs.pending $(PYTEST_ARGS)',
                 '@echo "== your exercises: what passes so far"',
                 "$(TEST_ENV) $(PY) -m labs check || true"],
        "test-fast": ['$(TEST_ENV) $(PY) -m pytest tests -p labs.pending '
                      '-m "not notebook and not browser and not slow" $(PYTEST_ARGS)']}
    for target, lines in recipes.items():
        text = _replace_recipe(text, target, lines)
    return text


def _replace_recipe(text: str, target: str, recipe: list[str]) -> str:
    lines = text.split("\n")
    heads = [i for i, line in enumerate(lines) if re.match(rf"^{re.escape(target)}\s*:", line)]
    if len(heads) != 1:
        raise ValueError(f"the Makefile has {len(heads)} '{target}:' rules; the release rewrites exactly one")
    end = heads[0] + 1
    while end < len(lines) and lines[end].startswith("\t"):
        end += 1
    return "\n".join(lines[:heads[0] + 1] + ["\t" + r for r in recipe] + lines[end:])


def _drop_rule(text: str, target: str) -> str:
    """Remove a rule (its comment block above, its head and recipe) and every mention of it as a
    prerequisite or in .PHONY; a Makefile without the rule is returned unchanged."""
    lines = text.split("\n")
    heads = [i for i, line in enumerate(lines) if re.match(rf"^{re.escape(target)}\s*:(?!=)", line)]
    if not heads:
        return text
    start, end = heads[0], heads[0] + 1
    while end < len(lines) and lines[end].startswith("\t"):
        end += 1
    while start > 0 and lines[start - 1].startswith("#"):
        start -= 1
    if end < len(lines) and not lines[end].strip():
        end += 1  # the blank line after it
    lines = lines[:start] + lines[end:]
    word = re.compile(rf"(?<=\s){re.escape(target)}(?=\s|$)")
    return "\n".join(word.sub("", line).replace("  ", " ") if re.match(r"^[\w.-]+\s*:(?!=)", line) else line
                     for line in lines)


def _student_pyproject(text: str) -> str:
    return re.sub(r',\s*"solutions\*"', "", text)


# ---------------------------------------------------------------------------------------------
# The Gradescope autograder
# ---------------------------------------------------------------------------------------------
def pinned_requirements(pyproject: str) -> list[str]:
    block = re.search(r"(?ms)^dependencies\s*=\s*\[(.*?)\]", pyproject)
    if block is None:
        raise ValueError("pyproject.toml has no dependencies list")
    return re.findall(r'"([^"]+)"', block.group(1))


def setup_sh(requirements: list[str]) -> str:
    torch = next((r for r in requirements if re.match(r"torch\b", r)), "torch")
    return f"""#!/usr/bin/env bash
# Gradescope autograder set-up: Python dependencies, pinned. torch comes first, from the CPU index,
# so the rest finds its pin met and never pulls a multi-GB CUDA build.
set -euo pipefail
cd /autograder/source
if ! command -v python3 >/dev/null || ! python3 -m pip --version >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-pip >/dev/null
fi
python3 -m pip install --quiet --upgrade pip
python3 -m pip install --quiet "{torch}" --index-url {TORCH_CPU_INDEX} --extra-index-url https://pypi.org/simple
python3 -m pip install --quiet -r requirements.txt
"""


RUN_AUTOGRADER = """#!/usr/bin/env bash
# Gradescope runs this for each submission: grade it with the course's own grader (isolated child
# processes, resource limits, hidden tests) and leave results.json where Gradescope reads it.
set -uo pipefail
cd /autograder/source
mkdir -p /autograder/results
python3 -m labs grade /autograder/submission --out /autograder/results --gradescope-single --jobs 1
if [ ! -s /autograder/results/results.json ]; then
  python3 - <<'EOF'
import json
json.dump({"score": 0, "output": "The autograder could not grade this submission; please tell your instructor."},
          open("/autograder/results/results.json", "w"))
EOF
fi
"""


def build_gradescope(zip_path: Path, root: Path = ROOT) -> list[str]:
    """Write the autograder zip; return its member names."""
    requirements = [r for r in pinned_requirements((root / "pyproject.toml").read_text())
                    if not r.startswith(("torch",) + AUTOGRADER_SKIPS)]
    from labs.instructor.course import is_graded_test
    graded = [p for p in (root / "tests").rglob("*.py") if "__pycache__" not in p.parts
              and (p.name in ("conftest.py", "__init__.py") or p.name.startswith("test_") and is_graded_test(p)
                   or p.parent == root / "tests" and not p.name.startswith("test_"))]   # helpers graded tests import
    code = [*(root / "labs").glob("*.py"), *(root / "labs" / INSTRUCTOR_PACKAGE).glob("*.py")]
    files = {str(p.relative_to(root)): p.read_bytes() for p in sorted(code) if p.name != "release.py"}
    files.update({str(p.relative_to(root)): p.read_bytes() for p in sorted(graded)})
    if (root / "data").is_dir():
        files.update({str(p.relative_to(root)): p.read_bytes() for p in sorted((root / "data").rglob("*"))
                      if p.is_file()})
    files["pyproject.toml"] = _student_pyproject((root / "pyproject.toml").read_text()).encode()
    files["requirements.txt"] = ("\n".join(requirements) + "\n").encode()
    scripts = {"setup.sh": setup_sh(pinned_requirements((root / "pyproject.toml").read_text())),
               "run_autograder": RUN_AUTOGRADER}
    _write_zip(zip_path, files, {k: v.encode() for k, v in scripts.items()})
    return sorted([*files, *scripts])


def _write_zip(path: Path, files: dict[str, bytes], executables: dict[str, bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
            for name, data in files.items():
                archive.writestr(name, data)
            for name, data in executables.items():
                info = zipfile.ZipInfo(name)
                info.external_attr = 0o100755 << 16  # a regular file, executable
                info.compress_type = zipfile.ZIP_DEFLATED
                archive.writestr(info, data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------------------------
# The leak check, on whatever was built
# ---------------------------------------------------------------------------------------------
def leaks(files: dict[str, bytes]) -> list[str]:
    """Problems in a release: a solutions/ folder, a solution marker line, an import of solutions."""
    problems = [f"{name}: the reference solutions are included" for name in files
                if name.split("/")[0] == "solutions"]
    for name, data in sorted(files.items()):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            continue  # binary data (compressed data files) cannot hold a marker line
        if name.endswith(".ipynb"):
            text = _notebook_code(text)
        if MARKER_LINE.search(text):
            problems.append(f"{name}: contains a solution marker line")
        if (name.endswith((".py", ".ipynb")) and re.search(r"(?m)^\s*(from\s+solutions\b|import\s+solutions\b)", text)):
            problems.append(f"{name}: imports the reference solutions")
    return problems


def _notebook_code(text: str) -> str:
    try:
        cells = json.loads(text).get("cells", [])
    except ValueError:
        return text
    return "\n".join("".join(c.get("source", "")) for c in cells)


def folder_files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*")
            if p.is_file() and not p.is_symlink() and ".venv" not in p.relative_to(folder).parts}


def zip_files(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist() if not name.endswith("/")}


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------
def release_student(out: Path, root: Path = ROOT) -> list[str]:
    """Build the student edition in a temporary sibling folder, check it, then move it into place."""
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} already exists and is not empty; give a new folder")
    check_stubs(root)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        held = build_student(staging, root)
        files = folder_files(staging)
        problems = leaks(files) + [str(leak) for leak in answer_leaks.find(files, root)]
        if problems:
            raise ValueError("the release would leak the reference:\n  " + "\n  ".join(problems))
        if out.exists():
            out.rmdir()
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return held


def release_gradescope(out: Path, root: Path = ROOT) -> Path:
    zip_path = out if out.suffix == ".zip" else out / "gradescope_autograder.zip"
    check_stubs(root)
    build_gradescope(zip_path, root)
    problems = leaks(zip_files(zip_path))
    if problems:
        zip_path.unlink()
        raise ValueError("the autograder would leak the reference:\n  " + "\n  ".join(problems))
    return zip_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="labs release", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="a new folder (student edition) or a .zip path (--gradescope)")
    parser.add_argument("--gradescope", action="store_true", help="write a Gradescope autograder zip instead")
    args = parser.parse_args(argv)
    if args.gradescope:
        path = release_gradescope(args.out)
        print(f"wrote the Gradescope autograder: {path} (upload it as the assignment's autograder)")
        return 0
    held = release_student(args.out)
    print(f"wrote the student edition: {args.out}")
    print("held back (instructor only): " + ", ".join(held))
    return 0
