"""Text a submission produced, made safe to show the student and the instructor.

A failing test's message, an exception's class name, a zip entry's name, a tampering reason
sent by a grading child: all of it is chosen by the student's code, and it ends up in
feedback.md (Markdown, often rendered as HTML), in results.json (Gradescope renders it), in
instructor.md, in grades.csv and on the instructor's terminal. Each such text is:

- cleaned (`clean`): control characters go (a "\\r" that starts a fake table row, ANSI escapes
  that clear or recolour a terminal, bidirectional overrides that reorder what is read), and the
  length is capped, saying how much was cut;
- then quoted for where it goes: `code_span` puts it in Markdown code whose backtick fence is
  longer than any run of backticks inside, so the content cannot close it, and Markdown and HTML
  inside are shown as typed (`**189 of 189 points.**`, `<script>`, `[x](javascript:...)` stay
  text); `markdown_text` escapes a name for a heading; results.json says "output_format": "text".
"""
from __future__ import annotations

import re
import unicodedata

MAX_CHARS = 500  # one message: a first line and some context, not a traceback
# An ANSI escape sequence (CSI ... final byte, OSC ... BEL/ST, or a lone two-byte escape): removed whole.
ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-Z\\-_]|\x9b[0-?]*[ -/]*[@-~]")


def clean(text: object, limit: int = MAX_CHARS, keep_newlines: bool = False) -> str:
    """`text` as a string without ANSI escapes or control/format characters (tabs become spaces;
    newlines too unless keep_newlines), at most `limit` characters plus a note of what was cut."""
    text = ANSI.sub("", str(text))
    kept = []
    for char in text:
        if char == "\n" and keep_newlines:
            kept.append(char)
        elif char in "\t\n\r\v\f":
            kept.append(" ")
        elif unicodedata.category(char) not in ("Cc", "Cf", "Cs", "Co", "Zl", "Zp"):
            kept.append(char)
    text = "".join(kept)
    if len(text) > limit:
        text = f"{text[:limit]}... ({len(text) - limit:,} more characters)"
    return text


def one_line(text: object, limit: int = MAX_CHARS) -> str:
    """`clean`, on one line with runs of spaces folded: for the terminal and grades.csv."""
    return " ".join(clean(text, limit).split())


def _fence_for(text: str, minimum: int) -> str:
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    return "`" * max(minimum, longest + 1)


def code_span(text: object, limit: int = MAX_CHARS, in_table: bool = False) -> str:
    """Markdown inline code holding `text` as typed (cleaned, on one line). In a table cell a "|"
    still ends the cell even inside code, so there it is escaped (GitHub shows it as "|")."""
    body = one_line(text, limit)
    if in_table:  # GitHub splits cells before reading code; a backslash run before "|" is doubled too
        body = re.sub(r"(\\*)\|", lambda m: m.group(1) * 2 + "\\|", body)
    if not body:
        return ""
    fence = _fence_for(body, 1)
    pad = " " if body.startswith(("`", " ")) or body.endswith(("`", " ")) else ""
    return f"{fence}{pad}{body}{pad}{fence}"


def markdown_text(text: object, limit: int = MAX_CHARS) -> str:
    """Plain Markdown text with every character that Markdown or HTML would read inside a line
    escaped: for a heading's text, where a code span would read badly ("-" and "." matter only at
    the start of a line, which a heading's text never is)."""
    return re.sub(r"([\\`*_{}\[\]()<>#+!|~&\"'])", r"\\\1", one_line(text, limit))
