"""Read student submissions (a folder or a .zip) safely: only the technique modules, never extracted.

A submission holds a student's copy of the course, at least `labs/`. We look for the shallowest
`labs/` folder in it and read `labs/<technique>.py` for each technique module of the course,
nothing else. A zip is read member by member in memory, with caps on size and count, so a zip
bomb, a path like `../../x` or a symbolic link never touches the disk. Problems that spoil the
whole submission become `error`; problems with one file become a note on that module.
"""
from __future__ import annotations

import re
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

MAX_FILE_BYTES = 400_000        # one technique module
MAX_ZIP_BYTES = 200 * 2**20     # declared uncompressed total of a zip: above it, a zip bomb
MAX_ZIP_MEMBERS = 20_000
MAX_DEPTH = 4                   # how deep `labs/` may sit inside a submission


@dataclass
class Submission:
    student: str                                          # from the folder or zip name
    source: Path                                          # where it came from
    files: dict[str, bytes] = field(default_factory=dict)  # technique -> labs/<technique>.py bytes
    notes: dict[str, str] = field(default_factory=dict)    # technique -> why its file is unusable
    warnings: list[str] = field(default_factory=list)      # harmless oddities (ignored entries)
    error: str | None = None                              # nothing can be graded, and why


def clean_name(path: Path) -> str:
    """alice.zip -> alice; characters outside [A-Za-z0-9._@-] become _ (and no leading = + - @, which
    spreadsheets read as formulas)."""
    name = path.name[:-4] if path.name.lower().endswith(".zip") else path.name
    return re.sub(r"[^A-Za-z0-9._@-]", "_", name).strip("._").lstrip("=+-@") or "submission"


def student_id(path: Path, taken: set[str]) -> str:
    """clean_name(path), with -2, -3, ... on a duplicate."""
    base = clean_name(path)
    candidate, n = base, 1
    while candidate in taken:
        n += 1
        candidate = f"{base}-{n}"
    taken.add(candidate)
    return candidate


def student_ids(paths: list[Path]) -> list[tuple[str, str]]:
    """(id, note) per path. A name already clean keeps it (the real `victim` beats `-victim.zip`);
    the others are cleaned and numbered after, and a cleaned name that collided says so in its note."""
    exact = {p: clean_name(p) for p in paths if clean_name(p) == (p.name[:-4] if p.name.lower().endswith(".zip") else p.name)}
    taken: set[str] = set()
    ids: dict[Path, str] = {}
    for path in paths:
        if path in exact and exact[path] not in taken:
            ids[path] = student_id(path, taken)
    out = []
    for path in paths:
        if path not in ids:
            ids[path] = student_id(path, taken)
        clash = ids[path] != clean_name(path)
        out.append((ids[path], f"{path.name!r} is filed as {ids[path]}: {clean_name(path)} was taken" if clash else ""))
    return out


def expand(paths: list[Path]) -> list[Path]:
    """Submissions from the command line. A folder that holds only zips and folders, and no labs/ of
    its own, is a class (one submission per entry) when none of it has a labs/ folder or when two or
    more entries are submissions (a zip, or a folder with labs/ inside): a student's folder may wrap
    its labs/ in one top folder, a class of student folders has several."""
    out = []
    for path in paths:
        if path.is_dir() and not (path / "labs").is_dir():
            entries = sorted(p for p in _children(path))
            submissions = [p for p in entries if p.suffix.lower() == ".zip" or _find_labs_dir(p) is not None]
            holds_any = any(p.is_dir() or p.suffix.lower() == ".zip" for p in entries)
            if holds_any and (len(submissions) >= 2 or _find_labs_dir(path) is None):
                out += entries  # a stray file (notes.txt, a .rar) is an entry too: it gets its own error row
                continue
        out.append(path)
    return out


def read_submission(path: Path, student: str, techniques: list[str]) -> Submission:
    """Never raises: any error reading this one submission becomes its error row."""
    try:
        return _read(path, student, techniques)
    except Exception as err:  # noqa: BLE001 - an unreadable file, a broken zip member, a permission
        sub = Submission(student, path)
        sub.error = f"could not be read ({type(err).__name__}: {str(err)[:200]})"
        return sub


def _read(path: Path, student: str, techniques: list[str]) -> Submission:
    sub = Submission(student, path)
    if path.is_symlink():
        sub.error = "the submission is a symbolic link"
    elif path.is_dir():
        _read_folder(sub, path, techniques)
    elif path.is_file() and path.suffix.lower() == ".zip":
        _read_zip(sub, path, techniques)
    elif path.exists():
        sub.error = f"not a folder or a .zip file: {path.name}"
    else:
        sub.error = f"no such file or folder: {path}"
    return sub


# ---------------------------------------------------------------------------------------------
# Folders
# ---------------------------------------------------------------------------------------------
def _find_labs_dir(root: Path) -> Path | None:
    """The shallowest folder named labs (holding .py files) within MAX_DEPTH, without following links."""
    for depth in range(MAX_DEPTH + 1):
        for folder in sorted(_dirs_at(root, depth)):
            if folder.name == "labs" and any(folder.glob("*.py")):
                return folder
    return None


def _dirs_at(root: Path, depth: int) -> list[Path]:
    level = [root]
    for _ in range(depth):
        level = [c for d in level for c in _children(d) if c.is_dir() and not c.is_symlink()]
    return level


def _children(folder: Path) -> list[Path]:
    try:
        return [c for c in folder.iterdir() if not c.name.startswith((".", "__MACOSX"))]
    except OSError:
        return []


def _read_folder(sub: Submission, root: Path, techniques: list[str]) -> None:
    labs = _find_labs_dir(root)
    if labs is None:
        sub.error = "no labs/ folder with .py files in the submission"
        return
    for name in techniques:
        path = labs / f"{name}.py"
        if path.is_symlink():
            sub.notes[name] = f"labs/{name}.py is a symbolic link; submit the file itself"
        elif not path.is_file():
            sub.notes[name] = f"labs/{name}.py is missing"
        elif path.stat().st_size > MAX_FILE_BYTES:
            sub.notes[name] = f"labs/{name}.py is {path.stat().st_size:,} bytes; the limit is {MAX_FILE_BYTES:,}"
        else:
            sub.files[name] = path.read_bytes()


# ---------------------------------------------------------------------------------------------
# Zips
# ---------------------------------------------------------------------------------------------
def _read_zip(sub: Submission, path: Path, techniques: list[str]) -> None:
    try:
        with zipfile.ZipFile(path) as archive:
            _read_archive(sub, archive, techniques)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as err:
        sub.error = f"not a readable zip file ({err})"


def _read_archive(sub: Submission, archive: zipfile.ZipFile, techniques: list[str]) -> None:
    infos = archive.infolist()
    if not infos:
        sub.error = "the zip file is empty"
        return
    declared = sum(i.file_size for i in infos)
    if len(infos) > MAX_ZIP_MEMBERS or declared > MAX_ZIP_BYTES:
        sub.error = (f"the zip file is too large ({len(infos):,} entries, {declared:,} bytes uncompressed; "
                     f"limits {MAX_ZIP_MEMBERS:,} and {MAX_ZIP_BYTES:,})")
        return
    safe = {}
    for info in infos:
        if _unsafe_name(info.filename):
            sub.warnings.append(f"ignored unsafe zip entry {info.filename!r}")
        elif _is_link(info):
            sub.warnings.append(f"ignored symbolic link {info.filename!r}")
        elif not info.is_dir() and not info.filename.startswith("__MACOSX/"):
            safe[info.filename] = info
    prefix = _labs_prefix(safe)
    if prefix is None:
        sub.error = "no labs/ folder with .py files in the zip"
        return
    for name in techniques:
        _read_member(sub, archive, safe.get(f"{prefix}{name}.py"), name)


def _unsafe_name(name: str) -> bool:
    parts = name.replace("\\", "/").split("/")
    return name.startswith(("/", "\\")) or ".." in parts or bool(re.match(r"^[A-Za-z]:", name)) or "\0" in name


def _is_link(info: zipfile.ZipInfo) -> bool:
    return (info.external_attr >> 16) & 0o170000 == 0o120000


def _labs_prefix(members: dict[str, zipfile.ZipInfo]) -> str | None:
    """'alice/labs/' for alice/labs/lora.py: the shallowest labs/ folder that holds .py files."""
    prefixes = {n.rsplit("/", 1)[0] + "/" for n in members
                if n.endswith(".py") and n.rsplit("/", 2)[-2:-1] == ["labs"] and n.count("/") <= MAX_DEPTH + 1}
    return min(prefixes, key=lambda p: (p.count("/"), p)) if prefixes else None


def _read_member(sub: Submission, archive: zipfile.ZipFile, info: zipfile.ZipInfo | None, name: str) -> None:
    if info is None:
        sub.notes[name] = f"labs/{name}.py is missing"
        return
    if info.file_size > MAX_FILE_BYTES:
        sub.notes[name] = f"labs/{name}.py is {info.file_size:,} bytes; the limit is {MAX_FILE_BYTES:,}"
        return
    try:
        with archive.open(info) as handle:
            data = handle.read(MAX_FILE_BYTES + 1)  # the declared size may lie: read no more than the cap
    except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, RuntimeError, zlib.error) as err:
        sub.notes[name] = f"labs/{name}.py could not be read from the zip ({err})"
        return
    if len(data) > MAX_FILE_BYTES:
        sub.notes[name] = f"labs/{name}.py is larger than {MAX_FILE_BYTES:,} bytes"
    else:
        sub.files[name] = data
