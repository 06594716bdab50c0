"""labs.files.scratch_folder: a notebook's working folder goes when its process ends, even after an
error halfway (notebook 10 writes about 500 MiB there)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_a_process_that_fails_halfway_leaves_no_scratch_folder(tmp_path):
    code = ("from labs.files import scratch_folder\n"
            "folder = scratch_folder('nb10-')\n"
            "(folder / 'model.safetensors').write_bytes(b'x' * 1000)\n"
            "print(folder, flush=True)\n"
            "raise RuntimeError('a cell failed halfway')\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp_path)}
    ran = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert ran.returncode != 0 and "a cell failed halfway" in ran.stderr
    folder = Path(ran.stdout.strip())
    assert folder.parent == tmp_path and folder.name.startswith("nb10-")
    assert not folder.exists(), f"{folder} outlived its process"


def test_removing_it_early_is_fine(tmp_path, monkeypatch):
    import shutil
    import tempfile

    from labs.files import scratch_folder
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    folder = scratch_folder("nb10-")
    assert folder.is_dir() and not any(folder.iterdir())
    shutil.rmtree(folder)   # the atexit removal of a folder already gone raises nothing
