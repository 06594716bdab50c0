"""Find exercise answers that the student edition would ship outside their solution regions.

The rule the course keeps: infrastructure, other techniques, tests and tools may CALL an exercise
function, never re-implement it. The stubs hide each answer; a second copy elsewhere in the
edition (say `norm_parameter_names` written out again in another module, or a test helper that
spells out the cache layout an exercise asks for) hands it to every student.

How a copy is recognised, even when it was rewritten a little:

1. Each answer (the solution region of exercise N.k in solutions/) and each shipped function (every
   function and method in the edition's .py files, the module-level code of each file, and each
   notebook code cell) becomes a set of *operations*: calls with their arity, keyword names and
   small constant arguments (`.permute(1,2,3,0,4)`, `.named_parameters(recurse=False)`), index
   and slice shapes, arithmetic between kinds of operand, comparisons, loop sources and filters
   (a `for` loop and a comprehension look the same), raised exceptions and their messages.
   Local names are abstracted away: renaming variables changes nothing.
2. Operations common in the shipped code (`model.parameters()`, `p.requires_grad`) say little;
   each is weighted by its rarity there (inverse document frequency over shipped statements,
   squared), so the answer's distinctive steps dominate.
3. A function leaks exercise N.k when it holds most of the answer's weight and the answer is most
   of the matched code (both >= CLOSE), or when it holds a good part of it (>= RELATED) and also
   bears the exercise function's own name or repeats one of its error messages word for word.

Answers too small to tell apart from an idiom (below MIN_STATEMENTS statements, or below
MIN_WEIGHT of distinctive weight: freezing every parameter is one line any test may need) are not
compared; the generated stub and the tests already cover them.

    python -m labs.instructor.answer_leaks [edition-folder] [--explain]
"""
from __future__ import annotations

import argparse
import ast
import builtins
import json
import math
import re
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# The region markers of tools/make_stubs.py, spelled in two parts: no marker may appear in labs/.
BEGIN = re.compile(r"^\s*# BEGIN" r" SOLUTION (?P<id>\d+\.\d+)\s*$")
END = re.compile(r"^\s*# END" r" SOLUTION\s*$")
# Names kept as themselves: builtins and the modules every technique imports under a fixed name.
KEPT_NAMES = frozenset(dir(builtins)) | {"torch", "nn", "F", "math"}
MIN_STATEMENTS = 3    # answers with fewer statements are not compared (a bare `return x` not counted)
MIN_WEIGHT = 500.0    # ... nor answers whose operations are this common in the shipped code
CLOSE = 0.55          # share of the answer found, and share of the match that is the answer
RELATED = 0.3         # share of the answer found, enough together with the same name or message
MIN_MESSAGE = 20      # characters of an error message that count as "word for word"
WINDOW = 8            # statements per window when a long function holds a copy among other code


@dataclass(frozen=True)
class Answer:
    """One exercise's reference body."""
    exercise: str      # "3.2"
    qualname: str      # "norm_parameter_names", "LoRALinear.forward"
    module: str        # "bitfit"
    statements: int    # statements in the body, a trailing bare `return name` not counted
    ops: Counter       # operation -> count


@dataclass(frozen=True)
class Leak:
    exercise: str
    qualname: str      # the exercise function
    module: str        # its technique module
    path: str          # where the copy is, relative to the edition
    function: str      # the function holding it ("<module>" for top-level code, "cell N" in a notebook)
    line: int
    found: float       # share of the answer's weight present there
    why: str

    def __str__(self) -> str:
        where = f"{self.path} {self.function}" if self.path.endswith(".ipynb") else \
            f"{self.path}:{self.line} {self.function}"
        return (f"{where} computes the answer to exercise {self.exercise} "
                f"({self.module}.{self.qualname}): {self.why}; infrastructure may call an exercise "
                "function, never re-implement it")


# ---------------------------------------------------------------------------------------------
# Operations
# ---------------------------------------------------------------------------------------------
def _callee(func: ast.expr, local: set[str]) -> str:
    if isinstance(func, ast.Attribute):
        base = func.value
        if isinstance(base, ast.Name) and base.id in KEPT_NAMES and base.id not in local:
            return f"{base.id}.{func.attr}"
        if (isinstance(base, ast.Attribute) and isinstance(base.value, ast.Name)
                and base.value.id in KEPT_NAMES and base.value.id not in local):
            return f"{base.value.id}.{base.attr}.{func.attr}"
        return "." + func.attr
    if isinstance(func, ast.Name):
        return func.id if func.id in KEPT_NAMES and func.id not in local else "N"
    return "?"


def _atom(node: ast.expr | None, local: set[str]) -> str:
    """A short label for an operand: its kind, never a local name."""
    if node is None:
        return ""
    if isinstance(node, ast.Name):
        return node.id if node.id in KEPT_NAMES and node.id not in local else "N"
    if isinstance(node, ast.Attribute):
        return "." + node.attr
    if isinstance(node, ast.Constant):
        value = node.value
        if isinstance(value, bool) or value is None or (isinstance(value, int) and abs(value) <= 8):
            return repr(value)
        return "S" if isinstance(value, str) else "K"
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant):
        return "-" + _atom(node.operand, local)
    if isinstance(node, ast.Call):
        return "call" + _callee(node.func, local)
    if isinstance(node, ast.BinOp):
        return type(node.op).__name__
    if isinstance(node, (ast.ListComp, ast.GeneratorExp, ast.SetComp, ast.DictComp)):
        return "comprehension"
    return type(node).__name__


def _index(node: ast.expr, local: set[str]) -> str:
    if isinstance(node, ast.Slice):
        return f"{_atom(node.lower, local)}:{_atom(node.upper, local)}"
    if isinstance(node, ast.Tuple):
        return ",".join(_index(e, local) for e in node.elts)
    return _atom(node, local)


def _message(node: ast.expr) -> str:
    """The text of an error message, placeholders as {}."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _message(node.left) + _message(node.right)
    return ""


def _stored_names(nodes: list[ast.AST]) -> set[str]:
    names = set()
    for top in nodes:
        for node in ast.walk(top):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.arg):
                names.add(node.arg)
    return names


def operations(statements: list[ast.stmt], outer: set[str] = frozenset()) -> Counter:
    """The operations of a block of code, local names abstracted (see the module docstring)."""
    local = set(outer) | _stored_names(statements)
    ops: Counter = Counter()
    for top in statements:
        for node in ast.walk(top):
            if isinstance(node, ast.Call):
                callee = _callee(node.func, local)
                args = ",".join(_atom(a, local) for a in node.args)
                keywords = ",".join(sorted(f"{k.arg}={_atom(k.value, local)}" for k in node.keywords))
                ops[f"call {callee}({args};{keywords})"] += 1
                ops[f"call {callee}/{len(node.args)}"] += 1
                ops[f"call {callee}"] += 1
                for k in node.keywords:
                    ops[f"keyword {k.arg}={_atom(k.value, local)}"] += 1
            elif isinstance(node, ast.Subscript):
                index = _index(node.slice, local)
                ops[f"index {_atom(node.value, local)}[{index}]"] += 1
                ops[f"index [{index}]"] += 1
            elif isinstance(node, ast.BinOp):
                ops[f"{_atom(node.left, local)} {type(node.op).__name__} {_atom(node.right, local)}"] += 1
            elif isinstance(node, ast.AugAssign):
                ops[f"{type(node.op).__name__}= {_atom(node.value, local)}"] += 1
            elif isinstance(node, ast.Compare):
                ops[f"compare {_atom(node.left, local)} {','.join(type(o).__name__ for o in node.ops)} "
                    f"{','.join(_atom(c, local) for c in node.comparators)}"] += 1
            elif isinstance(node, ast.UnaryOp):
                ops[f"{type(node.op).__name__} {_atom(node.operand, local)}"] += 1
            elif isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
                ops[f"raise {_callee(node.exc.func, local)}"] += 1
                message = " ".join(_message(a) for a in node.exc.args).strip()
                if len(message.replace("{}", "")) >= MIN_MESSAGE:
                    ops[f"message {message}"] += 1
            elif isinstance(node, (ast.For, ast.AsyncFor, ast.comprehension)):
                target = node.target
                arity = len(target.elts) if isinstance(target, ast.Tuple) else 1
                ops[f"loop{arity} over {_atom(node.iter, local)}"] += 1
                tests = node.ifs if isinstance(node, ast.comprehension) else [
                    s.test for s in node.body if isinstance(s, ast.If)]
                for test in tests:
                    ops[f"filter {_atom(test, local)}"] += 1
            elif isinstance(node, ast.IfExp):
                ops[f"choose {_atom(node.test, local)} {_atom(node.body, local)} {_atom(node.orelse, local)}"] += 1
            elif isinstance(node, ast.Attribute):
                ops[f"attribute .{node.attr}"] += 1
            elif isinstance(node, ast.JoinedStr):
                ops["text " + _message(node)] += 1
            elif isinstance(node, ast.Return) and node.value is not None:
                ops[f"return {_atom(node.value, local)}"] += 1
    return ops


def _count_statements(statements: list[ast.stmt]) -> int:
    count = sum(isinstance(n, ast.stmt) for s in statements for n in ast.walk(s))
    last = statements[-1] if statements else None
    if isinstance(last, ast.Return) and isinstance(last.value, (ast.Name, ast.Tuple, type(None))):
        count -= 1  # `return names` only hands back what the body computed
    return count


# ---------------------------------------------------------------------------------------------
# The answers (solutions/) and the shipped code (the edition)
# ---------------------------------------------------------------------------------------------
def _enclosing(tree: ast.Module) -> dict[int, tuple[str, ast.AST]]:
    """line -> (qualname, node) of the innermost function holding it."""
    where: dict[int, tuple[str, ast.AST]] = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = prefix + child.name
                if not isinstance(child, ast.ClassDef):
                    for line in range(child.lineno, child.end_lineno + 1):
                        where[line] = (name, child)
                visit(child, name + ".")
    visit(tree, "")
    return where


def answers(root: Path = ROOT) -> list[Answer]:
    """Every solution region of root/solutions/, as operations."""
    found = []
    for path in sorted((root / "solutions").glob("*.py")):
        source = path.read_text()
        tree, lines = ast.parse(source), source.splitlines()
        where = _enclosing(tree)
        begin = None
        for number, line in enumerate(lines, start=1):
            if (match := BEGIN.match(line)) and begin is None:
                begin = (number, match["id"])
            elif END.match(line) and begin is not None:
                qualname, function = where.get(begin[0], ("<module>", tree))
                body = [s for n in ast.walk(function) for s in _blocks(n)
                        if begin[0] < s.lineno and s.end_lineno < number]
                body = [s for s in body if not any(o is not s and _inside(s, o) for o in body)]
                arguments = _stored_names([function.args]) if hasattr(function, "args") else set()
                found.append(Answer(begin[1], qualname, path.stem, _count_statements(body),
                                    operations(body, arguments)))
                begin = None
    return found


def _definitions(root: Path) -> Counter:
    """How many solution modules define each function or method (by qualified name)."""
    count: Counter = Counter()
    for path in sorted((root / "solutions").glob("*.py")):
        names = {name for name, _ in _enclosing(ast.parse(path.read_text())).values()}
        count.update(names)
    return count


def _blocks(node: ast.AST):
    for field in ("body", "orelse", "finalbody"):
        block = getattr(node, field, None)
        if isinstance(block, list):
            yield from (s for s in block if isinstance(s, ast.stmt))


def _inside(inner: ast.stmt, outer: ast.stmt) -> bool:
    return outer.lineno <= inner.lineno and inner.end_lineno <= outer.end_lineno and any(
        n is inner for n in ast.walk(outer))


@dataclass
class _Unit:
    """A piece of shipped code compared with the answers: a function, top-level code, a cell."""
    path: str
    function: str
    line: int
    ops: Counter
    windows: list[Counter]   # runs of up to WINDOW statements inside it
    statements: list[set]    # the operations of each statement, at every depth (for rarity)


def _is_definition(statement: ast.stmt) -> bool:
    return isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Import,
                                  ast.ImportFrom))


def _without_docstring(body: list[ast.stmt]) -> list[ast.stmt]:
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
            and isinstance(body[0].value.value, str):
        return body[1:]
    return body


def _windows(statements: list[ast.stmt], outer: set[str]) -> list[Counter]:
    """Operations of every run of up to WINDOW consecutive statements, at every depth."""
    out = []
    blocks = [statements] + [b for s in statements for n in ast.walk(s)
                             for b in (getattr(n, f, None) for f in ("body", "orelse", "finalbody"))
                             if isinstance(b, list) and b and isinstance(b[0], ast.stmt)
                             and not isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
    for block in blocks:
        block = [s for s in block if not _is_definition(s)]
        per = [operations([s], outer) for s in block]
        for start in range(len(block)):
            acc = Counter()
            for stop in range(start, min(len(block), start + WINDOW)):
                acc = acc + per[stop]
                out.append(acc)
    return out


def _units_of_source(path: str, source: str, line_offset: int = 0, label: str | None = None) -> list[_Unit]:
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    units = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                body = [s for s in _without_docstring(child.body) if not _is_definition(s)]
                arguments = _stored_names([child.args])
                if body:
                    units.append(_Unit(path, prefix + child.name, child.lineno + line_offset,
                                       operations(body, arguments), _windows(body, arguments), []))
                visit(child, prefix + child.name + ".")
            elif isinstance(child, ast.ClassDef):
                visit(child, prefix + child.name + ".")
    visit(tree, "")
    top = [s for s in tree.body if not _is_definition(s)]
    if top:
        units.append(_Unit(path, label or "<module>", top[0].lineno + line_offset, operations(top),
                           _windows(top, set()), []))
    if units:
        units[-1].statements = [set(operations([s])) for s in ast.walk(tree)
                                if isinstance(s, ast.stmt) and not _is_definition(s)]
    return units


def _notebook_cells(text: str) -> list[str]:
    try:
        cells = json.loads(text).get("cells", [])
    except ValueError:
        return []
    sources = []
    for cell in cells:
        if cell.get("cell_type") == "code":
            source = "".join(cell.get("source", ""))
            # IPython magics and shell lines are not Python: blank them, keeping line numbers
            sources.append("\n".join("" if l.lstrip().startswith(("%", "!")) else l for l in source.split("\n")))
        else:
            sources.append("")
    return sources


def shipped_units(files: dict[str, bytes]) -> list[_Unit]:
    """Every function, top-level block and notebook cell of an edition's Python and notebooks."""
    units = []
    for name, data in sorted(files.items()):
        if not name.endswith((".py", ".ipynb")):
            continue
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            continue
        if name.endswith(".py"):
            units += _units_of_source(name, text)
        else:
            for number, cell in enumerate(_notebook_cells(text), start=1):
                units += _units_of_source(name, cell, label=f"cell {number}")
    return units


# ---------------------------------------------------------------------------------------------
# Comparing
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Comparison:
    """One answer against one piece of shipped code that holds at least RELATED of it."""
    answer: Answer
    path: str
    function: str
    line: int
    found: float         # share of the answer's weight present in the function
    share: float         # Dice overlap of the closest window: how much of the match is the answer
    same_name: bool      # the function bears the exercise function's (non-conventional) name
    same_message: bool   # it raises one of the answer's error messages word for word

    def verdict(self) -> str | None:
        """Why this is a leak, or None."""
        if self.found >= CLOSE and self.share >= CLOSE:
            return f"{self.found:.0%} of the answer's distinctive steps are there"
        if self.same_name:
            return f"a function of the same name holds {self.found:.0%} of the answer's distinctive steps"
        if self.same_message:
            return f"it repeats the answer's error message and {self.found:.0%} of its distinctive steps"
        return None


def compare(files: dict[str, bytes], root: Path = ROOT) -> list[Comparison]:
    """Every (answer, shipped function) pair where the function holds at least RELATED of the answer."""
    units = shipped_units(files)
    frequency: Counter = Counter()
    for unit in units:
        for statement in unit.statements:
            frequency.update(statement)
    n = sum(len(unit.statements) for unit in units)

    def weight(op: str) -> float:
        return math.log((n + 1) / (frequency[op] + 1)) ** 2

    # A name several technique modules define by convention (apply, to_peft, forward) says nothing.
    conventional = {name for name, count in _definitions(root).items() if count > 1}
    found = []
    for answer in answers(root):
        weights = {op: weight(op) for op in answer.ops}
        total = sum(weights.values())
        if answer.statements < MIN_STATEMENTS or total < MIN_WEIGHT:
            continue
        messages = {op for op in answer.ops if op.startswith("message ")}
        for unit in units:
            if unit.path == f"labs/{answer.module}.py" and unit.function == answer.qualname:
                continue  # the stub's own function: what it keeps outside the region is given
            shared = sum(w for op, w in weights.items() if op in unit.ops)
            if shared < RELATED * total:
                continue
            share = max(2 * sum(w for op, w in weights.items() if op in ops) / (total + sum(map(weight, ops)))
                        for ops in [unit.ops, *unit.windows])
            found.append(Comparison(
                answer, unit.path, unit.function, unit.line, shared / total, share,
                same_name=(answer.qualname not in conventional
                           and unit.function.split(".")[-1] == answer.qualname.split(".")[-1]),
                same_message=bool(messages & set(unit.ops))))
    return sorted(found, key=lambda c: -c.found)


def find(files: dict[str, bytes], root: Path = ROOT) -> list[Leak]:
    """Leaks of root/solutions/ answers into the edition `files` (path -> bytes)."""
    return [Leak(c.answer.exercise, c.answer.qualname, c.answer.module, c.path, c.function, c.line,
                 round(c.found, 2), why) for c in compare(files, root) if (why := c.verdict())]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("edition", nargs="?", type=Path, help="a built student edition (default: build one)")
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout whose solutions/ holds the answers")
    parser.add_argument("--explain", action="store_true", help="print every comparison above RELATED")
    args = parser.parse_args(argv)
    from labs.instructor import release
    if args.edition is None:
        with tempfile.TemporaryDirectory() as tmp:
            release.build_student(Path(tmp) / "edition", args.root)
            files = release.folder_files(Path(tmp) / "edition")
    else:
        files = release.folder_files(args.edition)
    if args.explain:
        for c in compare(files, args.root):
            print(f"found {c.found:.2f} share {c.share:.2f} {c.answer.exercise:>4} {c.path}:{c.line} {c.function}"
                  f"{' (same name)' if c.same_name else ''}{' (same message)' if c.same_message else ''}")
    found = find(files, args.root)
    for leak in found:
        print(leak)
    print(f"answer leaks: {len(found)}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
