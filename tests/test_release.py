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


def test_every_shipped_test_imports_only_what_the_edition_has(edition):
    """A test that imports a held-back module (labs.instructor, solutions) would stop the student's
    `make test` at collection: such a test is held back with what it imports."""
    import ast
    out, _ = edition
    missing = []
    for test in sorted((out / "tests").glob("*.py")):
        for node in ast.walk(ast.parse(test.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else []
            for name in names:
                top, _, rest = name.partition(".")
                if top == "solutions" or (top == "labs" and rest and not (
                        (out / "labs" / f"{rest.split('.')[0]}.py").is_file() or (out / "labs" / rest.split(".")[0]).is_dir())):
                    missing.append(f"{test.name} imports {name}")
    assert not missing, missing


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


@pytest.mark.xdist_group("grade")   # grading runs one at a time: a root grader's children get uids of their own
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


# ---------------------------------------------------------------------------------------------
# The edition's own words: every command it names exists there, every mention of the reference
# says where it lives, and it installs without a deprecation warning
# ---------------------------------------------------------------------------------------------
ISOLATED_LABS = ("import sys\nsys.meta_path[:] = [f for f in sys.meta_path if '__editable__' not in repr(f)]\n"
                 "sys.path.insert(0, '.')\nfrom labs.cli import main\nsys.exit(main(sys.argv[1:]))\n")
# Words that claim the reference is at hand, and the qualifiers that make such a claim true anywhere.
REFERENCE_CLAIM = re.compile(r"\bsolutions\b|\bthe reference\b", re.I)
QUALIFIED = re.compile(r"course\s+repository|where (your|this) edition has it|\(instructors\)", re.I)


def edition_labs(out: Path, *args: str) -> subprocess.CompletedProcess:
    """`labs ...` run in the edition, this checkout's editable install out of reach."""
    return run([sys.executable, "-I", "-c", ISOLATED_LABS, *args], out, COLUMNS="250")


def make_targets(out: Path) -> set[str]:
    text = (out / "Makefile").read_text()
    return set(re.findall(r"(?m)^([\w.-]+)\s*:(?!=)", text))


def labs_commands(out: Path) -> set[str]:
    """The subcommands `labs --help` lists in the edition."""
    listed = edition_labs(out, "--help").stdout
    return set(re.findall(r"(?m)^ {4}(\w+) ", listed))


def test_edition_make_help_names_only_what_the_edition_has(edition):
    out, _ = edition
    helped = run(["make", "--no-print-directory", "help"], out)
    assert helped.returncode == 0, helped.stderr
    targets = make_targets(out)
    for line in helped.stdout.splitlines():
        named = re.match(r"make (\S+)", line)
        assert named and named[1] in targets, f"`make help` names a target the edition lacks: {line!r}"
        assert not REFERENCE_CLAIM.search(line), f"`make help` speaks of the reference, which the edition lacks: {line!r}"
    assert "make test    the infrastructure tests, then your exercises (labs check)" in helped.stdout
    assert not {"release", "sandbox", "browser"} & targets, "instructor-only targets stay in the course repository"
    text = (out / "Makefile").read_text()
    assert "labs grade" not in text and "test_browser" not in text, "no step serves a tool the edition lacks"


def test_edition_labs_help_lists_only_commands_that_work_there(edition):
    out, _ = edition
    commands = labs_commands(out)
    assert {"assets", "finetune", "compare", "check"} <= commands and not {"grade", "release"} & commands, commands
    for command in sorted(commands):
        helped = edition_labs(out, command, "--help")
        assert helped.returncode == 0, f"`labs {command} --help` fails in the edition: {helped.stderr[-500:]}"
        for line in helped.stdout.splitlines():
            prose = re.sub(r"\{[\w,]+\}", "", line)  # a choice list {labs,solutions} claims nothing
            assert not REFERENCE_CLAIM.search(prose) or QUALIFIED.search(prose), \
                f"`labs {command} --help` speaks of the reference without saying where it is: {line.strip()!r}"
    refused = edition_labs(out, "grade", "x")
    assert refused.returncode == 2 and "not available in this edition" in refused.stderr


def readme_blocks(text: str) -> list[tuple[str, str]]:
    """(section heading, block) for every paragraph, list, table row and code block of a README."""
    blocks, heading = [], ""
    for chunk in re.split(r"\n\s*\n", text):
        if chunk.startswith("#"):
            heading = chunk.splitlines()[0]
            chunk = "\n".join(chunk.splitlines()[1:])
        rows = chunk.splitlines() if chunk.lstrip().startswith("|") else [chunk]
        blocks += [(heading, row) for row in rows if row.strip()]
    return blocks


def test_edition_readme_claims_hold_in_the_edition(edition):
    out, _ = edition
    targets, commands = make_targets(out), labs_commands(out)
    false = []
    for heading, block in readme_blocks((out / "README.md").read_text()):
        if QUALIFIED.search(heading) or QUALIFIED.search(block):
            continue
        code = " ".join(re.findall(r"`([^`]+)`", block)) + (block if block.startswith("```") else "")
        for target in re.findall(r"(?:^|\s)make ([\w-]+)", code):
            if target not in targets:
                false.append(f"`make {target}`: no such target in the edition: {block[:120]!r}")
        for command in re.findall(r"(?:^|\s)labs ([a-z]+)\b", code):
            if command not in commands:
                false.append(f"`labs {command}`: not in the edition: {block[:120]!r}")
        if REFERENCE_CLAIM.search(block):
            false.append(f"speaks of the reference without saying where it is: {block[:120]!r}")
    assert not false, "the edition's README says what does not hold there:\n" + "\n".join(false)


def test_edition_pyproject_is_read_without_a_deprecation_warning(edition):
    out, _ = edition
    check = ("import sys\nfrom setuptools.config.pyprojecttoml import apply_configuration\n"
             "from setuptools.dist import Distribution\napply_configuration(Distribution(), 'pyproject.toml')\n")
    proc = run([sys.executable, "-W", "error", "-c", check], out)
    assert proc.returncode == 0, "setuptools warns about the edition's pyproject.toml:\n" + proc.stderr[-2000:]
    license = re.search(r'(?m)^license\s*=\s*"([^"]+)"', (out / "pyproject.toml").read_text())
    assert license and license[1] == "Apache-2.0", "license is an SPDX expression string"


# ---------------------------------------------------------------------------------------------
# Hints in the edition: a planted wrong answer gets the cause named, a wrong message its regex
# ---------------------------------------------------------------------------------------------
PLANTED = (("5.2", "h = self.dropout(x).to(self.lora_A.dtype)", "h = self.dropout(x)",
            "likely cause: the LoRA factors are float32 even on a bf16 base layer"),
           ("5.4", "weight = linear_weight(self.base_layer)", "weight = self.base_layer.weight",
            "likely cause: Conv1D stores its weight (in, out)"),
           ("5.6", "    mark_adapted(model, config, __name__)\n    return model", "    return model",
            "the error message must match the regex 'already'"))


def test_planted_mistakes_get_hints_that_name_their_cause_in_the_edition(edition, tmp_path):
    out, _ = edition
    mine = tmp_path / "peft-lab"
    shutil.copytree(out, mine, ignore=shutil.ignore_patterns("__pycache__", ".venv"))
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        from test_grade import filled
    finally:
        sys.path.remove(str(ROOT / "tests"))
    source = filled("lora")
    for _, right, wrong, _ in PLANTED:
        assert right in source, f"{right!r} is no longer in the reference: plant another mistake"
        source = source.replace(right, wrong, 1)
    (mine / "labs" / "lora.py").write_text(source)
    proc = run([sys.executable, "-m", "labs", "check", "5"], mine)
    assert proc.returncode == 1, proc.stdout + proc.stderr[-2000:]
    rows = {line.split()[0]: line for line in proc.stdout.splitlines() if re.match(r"5\.\d ", line)}
    for exercise, _, _, hint in PLANTED:
        assert "failing" in rows[exercise] and hint in rows[exercise], proc.stdout
    assert "likely cause: Conv1D stores" in rows["5.5"], "unmerge's tests merge first: the same cause shows"
    assert all("passed" in rows[ex] for ex in ("5.1", "5.3")), proc.stdout


def test_every_script_a_notebook_tells_the_learner_to_run_is_in_the_edition(edition):
    out, _ = edition
    named = set()
    for notebook in sorted((out / "notebooks").glob("*.ipynb")):
        cells = json.loads(notebook.read_text())["cells"]
        text = "\n".join("".join(cell["source"]) for cell in cells)
        named |= {(notebook.name, script) for script in re.findall(r"python ((?:benchmarks|tools)/[\w/]+\.py)", text)
                  if not script.startswith("tools/notebooks/")}
    assert any(script == "benchmarks/qlora.py" for _, script in named), "the scan finds notebook 08's benchmark"
    absent = sorted((nb, script) for nb, script in named if not (out / script).is_file())
    assert not absent, f"notebooks name scripts the edition lacks: {absent}"


def test_an_edition_benchmark_runs_the_learners_modules_and_names_open_exercises(edition):
    out, _ = edition
    ran = run([sys.executable, "-I", "-c", ISOLATED_PYTEST.replace("import pytest\nsys.exit(pytest.main(sys.argv[1:]))",
                                                                   "import runpy\nsys.argv = sys.argv[1:]\n"
                                                                   "runpy.run_path(sys.argv[0], run_name='__main__')"),
               "benchmarks/qlora.py"], out)
    assert ran.returncode != 0 and "5.1-5.6 (notebooks/05_lora.ipynb)" in ran.stderr, ran.stderr[-800:]


def test_qlora_with_lora_open_names_notebook_05_and_no_way_the_edition_lacks(edition):
    out, _ = edition
    ran = edition_labs(out, "finetune", "--method", "qlora", "--preset", "quick", "--out", "runs/never")
    message = ran.stderr + ran.stdout
    assert ran.returncode != 0 and "5.1-5.6 (notebooks/05_lora.ipynb)" in message, message[-800:]
    assert "8.1-8.8 (notebooks/08_qlora.ipynb)" in message
    assert "solutions" not in message, f"the edition has no reference to offer: {message[-800:]}"
    assert not (out / "runs" / "never").exists()


def test_notebook_prerequisites_name_open_exercises_in_the_edition(edition):
    out, _ = edition
    code = ("import sys\nsys.meta_path[:] = [f for f in sys.meta_path if '__editable__' not in repr(f)]\n"
            "sys.path.insert(0, '.')\nfrom labs.prerequisites import report\n"
            "print(report({'sections 8-9': ['qlora'], 'the rest': ['full']}))\n")
    ran = run([sys.executable, "-I", "-c", code], out)
    assert ran.returncode == 0, ran.stderr[-800:]
    assert "sections 8-9: waits for exercises 5.1-5.6 (notebooks/05_lora.ipynb) and 8.1-8.8" in ran.stdout, ran.stdout
    assert "Runs now: the rest." in ran.stdout
