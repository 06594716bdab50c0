"""Writing files so that a reader never sees half of one, and measuring what is on disk.

Every file the course writes (metrics, tables, plots, adapters, notebooks, reports) goes through
`write_atomically`: the data goes to a temporary file in the same folder, then one rename puts it
in place. A crash or Ctrl-C mid-write leaves the old file (or none), never a truncated one.
"""
from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

Writer = Callable[[str], None]  # writes the whole content to the temporary path it is given


def write_atomically(path: str | os.PathLike, content: str | bytes | Writer, mode: int = 0o644) -> Path:
    """Write `content` (text, bytes, or a function that writes to a path) to `path` atomically."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        if callable(content):
            os.close(fd)
            content(tmp)
        else:
            data = content.encode("utf-8") if isinstance(content, str) else content
            with os.fdopen(fd, "wb") as file:
                file.write(data)
        os.chmod(tmp, mode)  # mkstemp makes the file private; course files are ordinary readable files
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def write_json(path: str | os.PathLike, data, **dumps) -> Path:
    """JSON, atomically; torch dtypes/devices, paths and 0-d tensors become plain values."""
    return write_atomically(path, json.dumps(data, indent=1, default=_jsonable, **dumps) + "\n")


def _jsonable(value):
    if isinstance(value, os.PathLike) or type(value).__module__ == "torch" and not hasattr(value, "item"):
        return str(value)  # Path, torch.dtype, torch.device
    if hasattr(value, "item"):
        return value.item()  # a 0-d tensor or numpy scalar
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def dir_bytes(path: str | os.PathLike) -> int:
    """Bytes on disk of a file, or of every file under a folder."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def scratch_folder(prefix: str) -> Path:
    """A new empty folder under the system's temporary directory, removed when this Python process
    (a notebook's kernel) ends, however the code before ended: a notebook that stops halfway on an
    error leaves nothing behind once its kernel stops. Removing it earlier yourself is fine."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder
