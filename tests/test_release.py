"""labs release: the student edition holds no reference and works on untouched stubs; the
Gradescope autograder holds the hidden tests and grades without the reference."""
from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from labs.instructor import answer_leaks, release

ROOT = Path(__file__).resolve().parent.parent
MARKER = "# BEGIN" + " SOLUTION"  # spelled in two parts so this file never holds a marker line
# Runs pytest with the release first on sys.path and the editable install's finder removed, so
# nothing can fall back on this checkout's solutions/.
ISOLATED_PYTEST = ("import sys\nsys.meta_path[:] = [f for f in sys.meta_path if '__editable__' not in repr(f)]\n"
                   "sys.path.insert(0, '.')\nimport pytest\nsys.exit(pytest.main(sys.argv[1:]))\n")


@pytest.fixture(scope="module")
def edition(tmp_path_factory) -> tuple[Path, list[str]]:
    out = tmp_path_factory.mktemp("release") / "peft-lab"
    return out, release.release_student(out)


def run(cmd: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **env}
    full_env.pop("LABS_IMPL", None)
    return subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=600)


def test_edition_holds_no_reference_no_markers_and_no_hidden_tests(edition):
    out, held = edition
    assert not (out / "solutions").exists() and not (out / "tests" / "hidden").exists()
    assert release.leaks(release.folder_files(out)) == []
    assert not (out / "labs" / release.INSTRUCTOR_PACKAGE).exists(), "grading code is instructor-only"
    assert {"tests/hidden/", "tests/test_exercise_machinery.py", "tools/make_stubs.py"} <= set(held)
    for name in ("Makefile", "pyproject.toml", "environment.yml", "README.md", ".gitignore"):
        assert (out / name).is_file(), f"{name} is missing from the edition"


def test_edition_stubs_and_graded_tests_are_the_instructors(edition):
    out, _ = edition
    for stub in (ROOT / "labs").glob("*.py"):
        if stub.read_text().startswith("# GENERATED"):
            assert (out / "labs" / stub.name).read_text() == stub.read_text(), stub.name
    graded = sorted(p.name for p in (ROOT / "tests").glob("test_ex_*.py"))
    assert graded and sorted(p.name for p in (out / "tests").glob("test_ex_*.py")) == graded


def test_edition_notebooks_have_no_outputs(edition):
    out, _ = edition
    notebooks = list((out / "notebooks").glob("*.ipynb"))
    assert notebooks, "the edition has no notebooks"
    for path in notebooks:
        cells = json.loads(path.read_text())["cells"]
        assert all(not c.get("outputs") and c.get("execution_count") is None
                   for c in cells if c["cell_type"] == "code"), path.name


def test_leak_check_catches_marker_lines_and_imports_but_not_prose():
    files = {"labs/x.py": f"def f():\n    {MARKER} 1.1\n    return 1\n".encode(),
             "tools/y.py": b"from solutions import lora\n",
             "README.md": f"each region between `{MARKER} N.k` and the end marker".encode(),
             "data/blob.gz": bytes(range(256))}
    problems = release.leaks(files)
    assert len(problems) == 2 and any("labs/x.py" in p for p in problems) and any("tools/y.py" in p for p in problems)
    assert release.leaks({"solutions/lora.py": b"x = 1\n"}), "a solutions/ folder is a leak by itself"


# ---------------------------------------------------------------------------------------------
# Answers outside their stubs (labs/instructor/answer_leaks.py)
# ---------------------------------------------------------------------------------------------
def largest_answer(root: Path = ROOT) -> tuple[str, str, list[str]]:
    """(exercise id, qualname, body text) of the longest solution region."""
    best = max(answer_leaks.answers(root), key=lambda a: a.statements)
    module = root / "solutions" / f"{best.module}.py"
    lines = module.read_text().splitlines()
    start = next(i for i, l in enumerate(lines) if (m := answer_leaks.BEGIN.match(l)) and m["id"] == best.exercise)
    end = next(i for i in range(start, len(lines)) if answer_leaks.END.match(lines[i]))
    return best.exercise, best.qualname, textwrap.dedent("\n".join(lines[start + 1:end]))


class _Rename(ast.NodeTransformer):
    """Renames every local name (v0, v1, ...): a copy rarely keeps the reference's names."""

    def __init__(self, keep: set[str]):
        self.keep, self.names = keep, {}

    def visit_Name(self, node):
        if node.id not in self.keep:
            node.id = self.names.setdefault(node.id, f"v{len(self.names)}")
        return node


def planted(body: str) -> str:
    """The answer's body, locals renamed, as an infrastructure helper taking anything."""
    tree = ast.parse(body)
    stored = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    free = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} - stored
    renamed = ast.unparse(_Rename(keep=free - stored).visit(tree))  # parameters and globals keep their names
    return "\n\ndef tidy_helper(*args, **kwargs):\n" + textwrap.indent(renamed, "    ") + "\n"


def test_answer_check_finds_a_renamed_copy_and_allows_a_call(tmp_path):
    release.build_student(tmp_path / "edition")  # built without the checks: only the planted copy matters here
    files = release.folder_files(tmp_path / "edition")
    already = set(answer_leaks.find(files))
    exercise, qualname, body = largest_answer()
    copied = {**files, "labs/surgery.py": files["labs/surgery.py"] + planted(body).encode()}
    found = [f for f in answer_leaks.find(copied) if f not in already]
    assert [(f.path, f.function, f.exercise) for f in found] == [("labs/surgery.py", "tidy_helper", exercise)], found
    assert f"exercise {exercise}" in str(found[0]) and qualname in str(found[0])
    name = qualname.split(".")[-1]
    calling = {**files, "labs/surgery.py": files["labs/surgery.py"]
               + f"\n\ndef tidy_helper(x, **kwargs):\n    out = {name}(x, **kwargs)\n    return out\n".encode()}
    assert set(answer_leaks.find(calling)) == already, "calling an exercise function is what infrastructure should do"


def test_release_refuses_a_planted_answer_naming_file_function_and_exercise(tmp_path):
    root = tmp_path / "course"
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", ".ipynb_checkpoints", ".pytest_cache")
    for folder in ("labs", "solutions", "tests", "tools", "notebooks", "benchmarks", "data"):
        if (ROOT / folder).is_dir():
            shutil.copytree(ROOT / folder, root / folder, ignore=skip)
    for name in release.TOP_FILES:
        if (ROOT / name).is_file():
            shutil.copyfile(ROOT / name, root / name)
    exercise, qualname, body = largest_answer(root)
    with (root / "labs" / "train.py").open("a") as f:
        f.write(planted(body))
    with pytest.raises(ValueError) as refused:
        release.release_student(tmp_path / "edition", root)
    message = str(refused.value)
    assert "labs/train.py:" in message and "tidy_helper" in message and f"exercise {exercise}" in message, message
    assert not (tmp_path / "edition").exists(), "nothing is released"


def test_edition_holds_no_exercise_answer_outside_its_stub(edition):
    out, _ = edition  # release_student already refuses one; this names what it found
    assert [str(leak) for leak in answer_leaks.find(release.folder_files(out))] == []


def test_student_makefile_tests_the_students_own_code(edition):
    out, _ = edition
    text = (out / "Makefile").read_text()
    assert "LABS_IMPL=solutions" not in text and "--impl solutions" not in text
    assert "make_stubs" not in text and "check_exercises" not in text
    dry = run(["make", "-n", "test"], out)
    assert dry.returncode == 0, dry.stderr
    assert "-p labs.pending" in dry.stdout and "labs check || true" in dry.stdout and "LABS_IMPL=labs" in dry.stdout


def test_graded_tests_fail_and_infrastructure_tests_pass_in_the_edition(edition, tmp_path):
    out, _ = edition
    report, junit = tmp_path / "report.json", tmp_path / "junit.xml"
    proc = run([sys.executable, "-I", "-c", ISOLATED_PYTEST, "tests/test_surgery.py", "tests/test_environment.py",
                "tests/test_ex_scaling.py", "tests/test_ex_freezing.py", "-p", "labs.pending", "-q",
                "-p", "no:cacheprovider", f"--exercise-report={report}", f"--junitxml={junit}"], out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    rows = json.loads(report.read_text())
    assert rows and all(r["error"] == "NotImplementedError" and r["outcome"] != "passed" for r in rows), rows
    xml = junit.read_text()
    assert re.search(r'failures="0"', xml) and re.search(r'errors="0"', xml)
    assert 'classname="tests.test_surgery"' in xml, "the infrastructure tests ran"


def test_labs_check_works_in_the_edition(edition):
    out, _ = edition
    proc = run([sys.executable, "-m", "labs", "check", "0"], out)
    assert proc.returncode == 1, proc.stdout + proc.stderr  # 1: not every exercise passes yet
    header = proc.stdout.splitlines()[0].split()
    assert header == ["exercise", "status", "points", "hint"], proc.stdout
    assert re.search(r"^0\.1\s+not started\s+0/\d+\s+NotImplementedError", proc.stdout, re.M), proc.stdout


def fake_venv(out: Path) -> Path:
    """.venv in the edition that borrows this checkout's interpreter and site-packages (not its stamps)."""
    real = Path(sys.prefix)
    venv = out / ".venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(os.path.realpath(sys.executable))
    shutil.copyfile(real / "pyvenv.cfg", venv / "pyvenv.cfg")
    (venv / "lib").symlink_to(real / "lib")
    return venv


def test_make_setup_in_the_edition(edition):
    out, _ = edition
    dry = run(["make", "-n", "setup"], out)
    assert dry.returncode == 0, dry.stderr
    for step in ("-m venv .venv", "torch==2.13.0", "install -e .", "-m labs assets", "-m labs finetune"):
        assert step in dry.stdout, f"`make setup` would not run {step!r}:\n{dry.stdout}"
    venv = fake_venv(out)
    pinned = re.search(r"^TORCH_VERSION := (\S+)", (out / "Makefile").read_text(), re.M).group(1)
    found = run([str(venv / "bin" / "python"), "-c", "import torch; print(torch.__version__.split('+')[0])"], out)
    if found.stdout.strip() != pinned:  # the recipe would reinstall torch: never into the shared venv
        pytest.skip(f"this environment has torch {found.stdout.strip()}, the Makefile pins {pinned}")
    first = run(["make", ".venv/.stamp-torch"], out)
    assert first.returncode == 0 and "already installed" in first.stdout, first.stdout + first.stderr
    again = run(["make", ".venv/.stamp-torch"], out)
    assert again.returncode == 0 and "already installed" not in again.stdout, "a second run must do nothing"
    for stamp in (".stamp-deps", ".stamp-assets"):  # as a finished install leaves them, newest last
        (venv / stamp).touch()
    assert run(["make", "-q", "deps", "assets"], out).returncode == 0, "installed deps and assets are up to date"


def test_gradescope_autograder_grades_without_the_reference(tmp_path):
    zip_path = release.release_gradescope(tmp_path / "autograder.zip")
    files = release.zip_files(zip_path)
    assert {"setup.sh", "run_autograder", "requirements.txt", "labs/instructor/grade.py", "labs/instructor/sandbox.py",
            "tests/conftest.py", "tests/hidden/test_hidden_lora.py"} <= set(files)
    assert release.leaks(files) == [] and not [n for n in files if n.startswith("solutions/")]
    setup, runner = files["setup.sh"].decode(), files["run_autograder"].decode()
    assert setup.index("torch==") < setup.index("-r requirements.txt"), "torch goes first, from the CPU index"
    assert "labs grade /autograder/submission --out /autograder/results --gradescope-single" in runner
    with zipfile.ZipFile(zip_path) as archive:
        assert all(archive.getinfo(n).external_attr >> 16 & 0o111 for n in ("setup.sh", "run_autograder"))
        archive.extractall(tmp_path / "source")
    submission = tmp_path / "submission" / "labs"
    submission.mkdir(parents=True)
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        from test_grade import filled
    finally:
        sys.path.remove(str(ROOT / "tests"))
    (submission / "scaling.py").write_text(filled("scaling"))
    proc = run([sys.executable, "-m", "labs", "grade", str(submission.parent), "--out", str(tmp_path / "results"),
                "--gradescope-single", "--jobs", "1", "--timeout", "120"], tmp_path / "source")
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    result = json.loads((tmp_path / "results" / "results.json").read_text())
    scaling = [t for t in result["tests"] if t["number"].startswith("0.")]
    assert scaling and all(t["score"] == t["max_score"] for t in scaling), scaling
    assert result["score"] == sum(t["max_score"] for t in scaling), "only the scaling exercises were done"
    assert any(t["visibility"] == "after_published" for t in scaling), "hidden tests graded too"
