"""Read a student's technique module before any of it runs, and refuse what reaches outside it.

Grading runs student code in the same process as the tests that judge it, so this screen is the
first of several walls (see labs/instructor/sandbox.py for the others). It reads the syntax tree only:

- Code identical to the generated stub (the instructor's own file) is trusted as it stands: whole
  functions, module and class statements, and the opening statements of an exercise function
  that come before the student's part. Everything else is the student's and is screened.
- Allowed, not denied: every chain of attributes that starts at an imported module
  (`torch.nn.functional.linear`, `from transformers import DynamicCache`, `import torch.utils`)
  must be in `MODULE_API`, what the exercises need: torch's tensor, nn and optimiser APIs, math
  and a few standard-library helpers, the listed transformers classes, the course's public
  infrastructure and its technique modules. `transformers.utils.generic.np` (numpy, with its
  file functions), `torch.utils.data.datapipes` or `torch.SymInt` are refused with the reason.
  A module may not be used as a value (passed, stored, returned), only as the start of a chain.
- Refused (the whole module is not run; its exercises score zero with the reason): chains
  outside the allowlist, exec/eval/open/globals/license and friends, dunder attributes and names,
  private attributes except on `self`/`cls` inside a method of a class the module defines (and
  binding `self`/`cls` to anything else, or running a method through its class on another object),
  getattr/setattr with a name built by an expression (a plain variable is allowed: its value is
  checked while the module runs), defining dunder methods such as __eq__ or __torch_function__,
  metaclasses (a class keyword, or `type(x)` used as anything but a comparison, an attribute read
  or a call of x's own class), helpers that read attributes by a name held in data (str.format
  fields, dataclasses.fields/replace/asdict, a Field outside its class body), and assigning into
  imported modules or classes.
- From scratch (the module runs, but that one exercise scores zero): an exercise whose code
  uses peft or the reference solutions, directly or through a helper it calls, wherever the
  module imports them (top level, if/try/with/loop, class body or function).
- Bounded cost: a module over MAX_SOURCE_BYTES or MAX_FUNCTIONS is refused unread; the
  from-scratch analysis is linear in the module's size (one call graph, one worklist); and
  `labs grade` screens each submission under a time limit (time_limit, SCREEN_SECONDS).

The screen is a fence, not a proof: Python cannot be fully sandboxed by reading it, so the
grader also isolates the process and watches for tampering while the tests run.
"""
from __future__ import annotations

import ast
import math
import re
import signal
import string
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Mapping

# What one module may hold. The largest reference module is 18 KB with 23 functions; ten times
# that and more is not a submission, and screening it would only cost the grader's time.
MAX_SOURCE_BYTES = 200_000
MAX_FUNCTIONS = 500       # def, async def and lambda, nested ones too
SCREEN_SECONDS = 30.0     # the screen's time for all the modules of one submission (see time_limit)


def _names(text: str) -> frozenset[str]:
    return frozenset(text.split())


# What a technique module may reach through the modules it imports. A name that is itself a key
# (torch -> nn -> "torch.nn") is a module the chain continues into; any other name is an object
# (function, class, dtype, constant) whose own attributes are checked like any attribute. The
# course adds its infrastructure and technique modules and whatever its stubs use (course.py).
# Keep it to what exercises need; tests/test_grade.py checks every reference solution passes.
MODULE_API: dict[str, frozenset[str]] = {
    "__future__": _names("annotations"),
    "torch": _names("""
        nn optim linalg random autograd special
        Tensor Size Generator device dtype finfo iinfo
        float float16 half bfloat16 float32 float64 double int int8 int16 short int32 int64 long
        uint8 bool complex64 inf nan pi e
        tensor as_tensor zeros ones empty full zeros_like ones_like empty_like full_like eye
        arange linspace logspace rand randn randint rand_like randn_like randint_like randperm
        normal bernoulli multinomial manual_seed
        cat concat stack hstack vstack split chunk tensor_split unbind reshape flatten squeeze
        unsqueeze transpose permute movedim swapaxes t narrow gather scatter index_select
        masked_select masked_fill where take take_along_dim roll flip repeat_interleave
        broadcast_to broadcast_tensors meshgrid tril triu tril_indices triu_indices diag diagonal
        einsum matmul mm bmm mv dot outer addmm baddbmm kron trace
        sum mean std var prod cumsum cumprod max min amax amin argmax argmin maximum minimum
        clamp clip abs sign sqrt rsqrt exp log log2 log10 log1p expm1 pow square sin cos tan
        tanh sigmoid relu softmax log_softmax erf floor ceil round trunc frac fmod remainder
        div mul add sub neg reciprocal lerp allclose isclose equal eq ne lt le gt ge isnan isinf
        isfinite logical_and logical_or logical_not logical_xor all any count_nonzero nonzero
        sort argsort topk kthvalue median quantile nanquantile unique bucketize searchsorted
        histc norm dist cdist numel is_tensor is_floating_point is_complex
        no_grad enable_grad inference_mode set_grad_enabled is_grad_enabled
        promote_types result_type get_default_dtype svd_lowrank"""),
    "torch.nn": _names("""
        functional init utils Module Parameter Buffer Linear Bilinear Identity Embedding
        EmbeddingBag LayerNorm RMSNorm GroupNorm BatchNorm1d Dropout GELU ReLU SiLU Tanh Sigmoid
        Softmax LogSoftmax Softplus LeakyReLU ELU Sequential ModuleList ModuleDict ParameterList
        ParameterDict Flatten Unflatten Conv1d CrossEntropyLoss MSELoss NLLLoss BCEWithLogitsLoss"""),
    "torch.nn.functional": _names("""
        linear bilinear relu gelu silu tanh sigmoid softmax log_softmax softplus leaky_relu elu
        glu dropout layer_norm rms_norm group_norm embedding cross_entropy mse_loss nll_loss
        binary_cross_entropy_with_logits kl_div pad normalize cosine_similarity one_hot
        scaled_dot_product_attention"""),
    "torch.nn.init": _names("""
        kaiming_uniform_ kaiming_normal_ xavier_uniform_ xavier_normal_ zeros_ ones_ normal_
        uniform_ constant_ trunc_normal_ orthogonal_ eye_ calculate_gain"""),
    "torch.nn.utils": _names("clip_grad_norm_ parameters_to_vector vector_to_parameters"),
    "torch.optim": _names("Optimizer AdamW Adam SGD"),
    "torch.linalg": _names("""
        norm vector_norm matrix_norm svd svdvals qr eigh eigvalsh solve inv pinv det
        matrix_rank lstsq cholesky"""),
    "torch.special": _names("ndtri ndtr erf erfc erfinv expit logit log_ndtr"),  # normal quantiles (NF4)
    "torch.random": _names("fork_rng manual_seed seed initial_seed get_rng_state set_rng_state"),
    "torch.autograd": _names("grad Function"),
    "math": frozenset(n for n in dir(math) if not n.startswith("_")),  # arithmetic only
    "dataclasses": _names("""
        dataclass field fields asdict astuple replace is_dataclass Field FrozenInstanceError
        InitVar KW_ONLY MISSING"""),
    "typing": _names("""
        Any Callable ClassVar Final Generic Iterable Iterator Generator List Dict Tuple Set
        FrozenSet Literal Mapping MutableMapping Sequence NamedTuple Optional Protocol TypeVar
        Union TYPE_CHECKING cast overload Type Hashable Sized Collection Container NoReturn Self"""),
    "functools": _names("partial reduce lru_cache cache cached_property total_ordering partialmethod wraps"),
    "itertools": _names("""
        accumulate chain combinations combinations_with_replacement compress count cycle
        dropwhile filterfalse groupby islice pairwise permutations product repeat starmap
        takewhile tee zip_longest"""),
    "collections": _names("OrderedDict defaultdict Counter deque namedtuple ChainMap abc"),
    "collections.abc": _names("Iterable Iterator Mapping MutableMapping Sequence Callable Sized Collection Hashable"),
    "copy": _names("copy deepcopy"),
    "re": _names("""
        compile search match fullmatch sub subn split findall finditer escape IGNORECASE I
        MULTILINE M DOTALL S VERBOSE X ASCII A Pattern Match error"""),
    "abc": _names("ABC abstractmethod"),
    "numbers": _names("Number Complex Real Rational Integral"),
    "transformers": _names("""
        DynamicCache Cache PreTrainedModel PretrainedConfig GenerationMixin pytorch_utils
        cache_utils modeling_outputs"""),
    "transformers.pytorch_utils": _names("Conv1D"),
    "transformers.cache_utils": _names("Cache DynamicCache"),
    "transformers.modeling_outputs": _names("""
        BaseModelOutput BaseModelOutputWithPast CausalLMOutput CausalLMOutputWithPast
        SequenceClassifierOutput"""),
    # peft is reachable only so that the from-scratch rule can zero the exercise that leans on it
    "peft": _names("""
        LoraConfig PromptTuningConfig PrefixTuningConfig PeftConfig PeftModel TaskType
        get_peft_model"""),
}
# Infrastructure a student module may import (besides what its stub imports); the rest read or
# write files (data, models, peft_format), start processes (check, memory) or import by name (impl).
LABS_INFRA = frozenset({"surgery", "presets"})
REFERENCE = frozenset({"peft", "solutions"})  # what the from-scratch policy keeps out of exercises
# Helpers that read or write attributes by a name held in data (a dataclass Field's name, which
# code can change): the stubs use them on their own configs; a student's code does not need them.
# (enum is not on the allowlist at all: Enum("E", {"__eq__": f}) builds a class from a dict.)
BY_FIELD_NAME = frozenset({"dataclasses.fields", "dataclasses.replace", "dataclasses.asdict",
                           "dataclasses.astuple", "dataclasses.Field"})
SELF_NAMES = ("self", "cls")
REFUSED_NAMES = frozenset({"exec", "eval", "compile", "open", "globals", "locals", "vars",
                           "breakpoint", "input", "exit", "quit", "help", "memoryview",
                           "license", "credits", "copyright"})  # site's printers read files
ATTR_BUILTINS = frozenset({"getattr", "setattr", "delattr", "hasattr"})
ALLOWED_DUNDERS = frozenset({"__init__", "__name__", "__qualname__", "__doc__", "__post_init__"})
DEFINABLE_DUNDERS = frozenset({"__init__", "__post_init__", "__repr__", "__str__"})
# Attribute names that lead to files, processes, code loading, interpreter internals or global
# hooks, whatever object they hang from (torch.os, torch.load, gen.gi_frame, ...).
MODULE_ATTRS = frozenset({
    "os", "sys", "subprocess", "builtins", "importlib", "inspect", "gc", "ctypes", "atexit",
    "signal", "threading", "_thread", "multiprocessing", "socket", "pathlib", "io", "shutil",
    "pickle", "pytest", "_pytest", "peft", "solutions", "types", "tempfile", "glob", "runpy",
    "code", "codeop", "pdb", "posix", "platform", "sysconfig", "site", "zipimport", "marshal",
    "traceback", "linecache", "tokenize", "ast", "dis", "faulthandler", "resource", "select",
    "selectors", "asyncio", "concurrent", "urllib", "http", "fcntl", "mmap", "pty", "termios",
    "copyreg", "operator", "string", "weakref", "zipfile", "tarfile", "logging", "warnings",
    "unittest", "doctest", "timeit", "trace", "tracemalloc", "shelve", "dbm"})
DANGEROUS_ATTRS = frozenset({
    "load", "loads", "save", "from_file", "hub", "cpp_extension", "load_inline", "load_library",
    "jit", "fx", "compile", "package", "library", "ops", "classes", "distributed", "serialization",
    "collect_env", "model_zoo", "overrides", "get_type_hints", "ForwardRef", "register",
    "singledispatch", "singledispatchmethod", "update_wrapper", "make_dataclass",
    "from_pretrained", "save_pretrained", "push_to_hub", "HfArgumentParser",
    "dynamic_module_utils", "get_class_from_dynamic_module", "hf_hub_download",
    "snapshot_download", "system", "popen", "environ", "getenv", "putenv", "spawn", "fork",
    "execv", "execve", "unlink", "rmdir", "rmtree", "write_text", "write_bytes",
    "read_text", "read_bytes", "open", "mkdir", "makedirs", "symlink", "chmod", "chown", "kill",
    "killpg", "abort", "settrace", "setprofile", "setrecursionlimit", "exit", "exec", "eval",
    "gi_frame", "gi_code", "gi_yieldfrom", "cr_frame", "cr_code", "cr_await", "ag_frame",
    "ag_code", "f_back", "f_globals", "f_locals", "f_builtins", "f_code", "f_trace", "tb_frame",
    "tb_next", "co_code", "co_consts", "func_globals",
    # helpers that do attribute access for the caller: functools.wraps(...).func is update_wrapper,
    # a partial's keywords; str.format / format_map read "{0.attr}" and "{0[key]}" fields
    "func", "keywords", "format_map", "vformat", "get_field",
    # numpy arrays (and their file functions) and raw storage, reached from a tensor
    "numpy", "tofile", "fromfile", "untyped_storage", "storage", "data_ptr", "share_memory_"})
DUNDER = re.compile(r"^__\w+__$")
SAFE_ANNOTATION = re.compile(r"^[A-Za-z_][\w.]*(\[[\w., \[\]|]*\])?( \| [\w.\[\], ]+)*$")


@dataclass(frozen=True)
class Finding:
    line: int                  # line number in the student's file
    what: str                  # what was refused, in words
    exercise: str | None = None  # None: the whole module; "5.2": only that exercise (from scratch)

    def __str__(self) -> str:
        return f"line {self.line}: {self.what}"


def stub_exercises(stub_source: str) -> dict[str, str]:
    """Qualified function name -> exercise id, read from a generated stub's NotImplementedError lines."""
    found = {}
    for qualname, node in _functions(ast.parse(stub_source)).items():
        for stmt in ast.walk(node):
            if (isinstance(stmt, ast.Raise) and isinstance(stmt.exc, ast.Call) and stmt.exc.args
                    and isinstance(stmt.exc.args[0], ast.Constant) and isinstance(stmt.exc.args[0].value, str)):
                match = re.match(r"Exercise (\d+\.\d+):", stmt.exc.args[0].value)
                if match:
                    found[qualname] = match.group(1)
    return found


def public_names(source: str) -> frozenset[str]:
    """Names a module defines at its top level (functions, classes, assigned names), not those it
    imports: what another module may reach through it."""
    found: set[str] = set()
    body = list(ast.parse(source).body)
    while body:
        node = body.pop(0)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            found.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            found.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
        elif isinstance(node, (ast.If, ast.Try)):
            body += [*node.body, *node.orelse, *getattr(node, "finalbody", []),
                     *(s for h in getattr(node, "handlers", []) for s in h.body)]
    return frozenset(n for n in found if not n.startswith("_"))


def course_api(stubs: Mapping[str, str], infrastructure: Mapping[str, str]) -> dict[str, frozenset[str]]:
    """MODULE_API plus the course: its infrastructure modules and technique modules (their public
    names), and every chain the instructor's own stubs use."""
    api = {k: set(v) for k, v in MODULE_API.items()}
    api["labs"] = set(infrastructure) | set(stubs)
    for name, source in [*infrastructure.items(), *stubs.items()]:
        api[f"labs.{name}"] = set(public_names(source))
    for source in stubs.values():
        tree = ast.parse(source)
        bound = bindings(tree, api)
        chains = [_path(n, bound) for n in ast.walk(tree) if isinstance(n, ast.Attribute)]
        chains += [bound[a.asname or a.name].split(".") for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                   for a in n.names if (a.asname or a.name) in bound]
        for chain in filter(None, chains):
            _allow(api, chain)
    return {k: frozenset(v) for k, v in api.items()}


def _allow(api: dict[str, set[str]], chain: list[str]) -> None:
    """Add a chain the course itself uses; a name not yet known and followed by more is a module."""
    if chain[0] not in api:
        api[chain[0]] = set()
    for i, name in enumerate(chain[1:], 1):
        module, known = ".".join(chain[:i]), name in api[".".join(chain[:i])]
        api[module].add(name)
        child = f"{module}.{name}"
        if child in api:
            continue
        if known or i == len(chain) - 1:
            return  # an object (or the chain's last name): what follows is ordinary attributes
        api[child] = set()


def screen_module(source: str, reference: str, techniques: frozenset[str] | set[str],
                  api: Mapping[str, frozenset[str]] | None = None) -> list[Finding]:
    """Findings for one student module; `reference` is the instructor's stub of the same module;
    `api` the allowlist of module chains (the course's, Course.api; MODULE_API alone by default)."""
    if len(source.encode()) > MAX_SOURCE_BYTES:
        return [Finding(1, f"file is {len(source.encode()):,} bytes; the limit is {MAX_SOURCE_BYTES:,}")]
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError) as err:
        return [Finding(getattr(err, "lineno", None) or 1, f"does not parse: {getattr(err, 'msg', err)}")]
    defined = sum(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) for n in ast.walk(tree))
    if defined > MAX_FUNCTIONS:
        return [Finding(1, f"file defines {defined:,} functions; the limit is {MAX_FUNCTIONS:,}")]
    api = MODULE_API if api is None else api
    visitor = _Screen(_protected_names(tree), _module_names(tree), frozenset(techniques), api, bindings(tree, api))
    visitor.chain_bases = _chain_bases(tree)
    visitor.parents = {id(child): node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    visitor.methods = _plain_methods(tree)
    visitor.annotations = {id(n) for a in _annotations(tree) for n in ast.walk(a)}
    for node in _untrusted(tree, ast.parse(reference)):
        visitor.visit(node)
    return visitor.findings + _imports_solutions(tree) + _from_scratch(tree, stub_exercises(reference))


class OutOfTime(Exception):
    """The screen took longer than its time limit (see time_limit)."""


@contextmanager
def time_limit(seconds: float):
    """Raise OutOfTime inside the block once `seconds` have passed: the screen runs in the grader's
    own process, so a module built to make it slow must not hold up the class. It uses SIGALRM, so
    it holds in the main thread only; elsewhere the block runs without a limit."""
    if seconds <= 0:
        raise OutOfTime("no time was left")
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def expire(signum, frame):
        raise OutOfTime(f"ran past {seconds:.3g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _plain_methods(tree: ast.Module) -> dict[str, set[str]]:
    """Class defined at the module's top level -> the methods that take an instance as `self`,
    its own and those it inherits from classes defined above it in the module."""
    found: dict[str, set[str]] = {}
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
        inherited = {m for b in cls.bases if isinstance(b, ast.Name) for m in found.get(b.id, ())}
        found[cls.name] = inherited | {f.name for f in cls.body if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                                       and not any(isinstance(d, ast.Name) and d.id in ("staticmethod", "classmethod")
                                                   for d in f.decorator_list)}
    return found


def _annotations(tree: ast.Module) -> list[ast.AST]:
    found: list[ast.AST] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.arg) and node.annotation is not None:
            found.append(node.annotation)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.returns is not None:
            found.append(node.returns)
        elif isinstance(node, ast.AnnAssign):
            found.append(node.annotation)
    return found


def _imports_solutions(tree: ast.Module) -> list[Finding]:
    """`import solutions` outside any function fails when the module loads: every exercise is lost."""
    scopes = [tree.body] + [n.body for n in tree.body if isinstance(n, ast.ClassDef)]
    return [Finding(node.lineno, "imports the reference solutions, which are not part of the grading")
            for body in scopes for node in body
            if _imports_reference(node) and "solutions" in ast.dump(node)]


# ---------------------------------------------------------------------------------------------
# What is trusted: code identical to the instructor's stub
# ---------------------------------------------------------------------------------------------
def _functions(tree: ast.AST, prefix: str = "") -> dict[str, ast.AST]:
    """Qualified name -> function node, for functions and methods (not nested functions)."""
    found = {}
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            found[prefix + node.name] = node
        elif isinstance(node, ast.ClassDef):
            found.update(_functions(node, f"{prefix}{node.name}."))
    return found


def _untrusted(tree: ast.Module, ref: ast.Module) -> list[ast.AST]:
    """The nodes of `tree` that are not copies of the reference and so must be screened."""
    return _untrusted_body(tree.body, ref.body, "")


def _untrusted_body(body: list[ast.stmt], ref_body: list[ast.stmt], prefix: str) -> list[ast.AST]:
    ref_stmts = [ast.dump(s) for s in ref_body]
    ref_defs = {s.name: s for s in ref_body if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
    out: list[ast.AST] = []
    for stmt in body:
        dumped = ast.dump(stmt)
        if dumped in ref_stmts:
            ref_stmts.remove(dumped)  # each reference statement vouches for one copy only
            continue
        twin = ref_defs.get(getattr(stmt, "name", None))
        if isinstance(stmt, ast.ClassDef) and isinstance(twin, ast.ClassDef):
            out += _untrusted_class(stmt, twin, prefix)
        elif isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)) and type(twin) is type(stmt):
            out += _untrusted_function(stmt, twin)
        else:
            out.append(stmt)
    return out


def _untrusted_class(node: ast.ClassDef, twin: ast.ClassDef, prefix: str) -> list[ast.AST]:
    header = [*node.bases, *node.keywords, *node.decorator_list]
    same_header = [ast.dump(n) for n in header] == [ast.dump(n) for n in [*twin.bases, *twin.keywords,
                                                                          *twin.decorator_list]]
    found = [] if same_header else [_Header(node)]
    return found + _untrusted_body(node.body, twin.body, f"{prefix}{node.name}.")


def _untrusted_function(node: ast.FunctionDef, twin: ast.FunctionDef) -> list[ast.AST]:
    """A changed function: its signature and everything after the statements it shares, in order,
    with the reference's opening (those run exactly as the instructor wrote them)."""
    same_signature = (ast.dump(node.args) == ast.dump(twin.args) and node.name == twin.name
                      and [ast.dump(d) for d in node.decorator_list] == [ast.dump(d) for d in twin.decorator_list]
                      and ast.dump(node.returns or ast.Pass()) == ast.dump(twin.returns or ast.Pass()))
    if not same_signature:
        return [node]
    shared = 0
    for mine, theirs in zip(node.body, twin.body):
        if ast.dump(mine) != ast.dump(theirs):
            break
        shared += 1
    return node.body[shared:]


class _Header(ast.AST):
    """A class statement's bases, keywords and decorators, screened without its body."""
    _fields = ("node",)

    def __init__(self, node: ast.ClassDef):
        super().__init__()
        self.node = node
        self.lineno = node.lineno


# ---------------------------------------------------------------------------------------------
# The screen proper
# ---------------------------------------------------------------------------------------------
def _protected_names(tree: ast.Module) -> frozenset[str]:
    """Names that stand for imported modules or classes (and aliases of them): never assigned into."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.update(a.asname or a.name for a in node.names)
    changed = True
    while changed:  # x = torch.nn.functional makes x protected too
        changed = False
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and _root_name(node.value, chain_only=True) in names:
                for target in node.targets:
                    if isinstance(target, ast.Name) and target.id not in names:
                        names.add(target.id)
                        changed = True
    import builtins as _builtins  # the builtin types and functions are shared by every module
    return frozenset(names | set(dir(_builtins)))


def _module_names(tree: ast.Module) -> frozenset[str]:
    """Names bound by `import x` (certainly modules, wherever the import is)."""
    return frozenset((a.asname or a.name).split(".")[0] for node in ast.walk(tree)
                     if isinstance(node, ast.Import) for a in node.names)


def _root_name(node: ast.AST, chain_only: bool = False) -> str | None:
    """`torch` for torch.nn.functional.linear (and, unless chain_only, for torch.x[0].y)."""
    while isinstance(node, (ast.Attribute, ast.Subscript)) or (not chain_only and isinstance(node, ast.Call)):
        if chain_only and isinstance(node, ast.Subscript):
            return None
        node = node.func if isinstance(node, ast.Call) else node.value
    return node.id if isinstance(node, ast.Name) else None


def refused_prefix(chain: list[str], api: Mapping[str, frozenset[str]]) -> str | None:
    """The first prefix of a chain from a module that the allowlist does not hold; None when it
    holds all of it (past an allowed object the chain goes on as ordinary attributes)."""
    if chain[0] not in api:
        return chain[0]
    module = chain[0]
    for i, name in enumerate(chain[1:], 1):
        if name not in api[module]:
            return ".".join(chain[:i + 1])
        module = f"{module}.{name}"
        if module not in api:
            return None
    return None


def _allowed_depth(chain: list[str], api: Mapping[str, frozenset[str]]) -> int:
    """How many names of an allowed chain the allowlist itself vouched for."""
    module = chain[0]
    for i, name in enumerate(chain[1:], 1):
        module = f"{module}.{name}"
        if module not in api:
            return i + 1
    return len(chain)


def bindings(tree: ast.Module, api: Mapping[str, frozenset[str]]) -> dict[str, str]:
    """Name -> the dotted path it stands for: names bound by imports (`from . import lora` is
    labs.lora), and names assigned a module (`F = torch.nn.functional`). peft and solutions are
    left to the from-scratch rule."""
    found: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] != "solutions":
                    found[alias.asname or alias.name.split(".")[0]] = alias.name if alias.asname else alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] != "solutions":
            base = "labs" + (f".{node.module}" if node.module else "") if node.level else node.module or ""
            for alias in node.names:
                found[alias.asname or alias.name] = f"{base}.{alias.name}"
    changed = True
    while changed:  # x = torch.nn.functional: x is that module too
        changed = False
        for node in ast.walk(tree):
            if (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                    and node.targets[0].id not in found):
                path = _path(node.value, found)
                if path and ".".join(path) in api:
                    found[node.targets[0].id], changed = ".".join(path), True
    return found


def _path(node: ast.AST, bound: Mapping[str, str]) -> list[str] | None:
    """torch.nn.functional.linear -> ["torch", "nn", "functional", "linear"] through `bound`."""
    attrs = []
    while isinstance(node, ast.Attribute):
        attrs.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name) or node.id not in bound:
        return None
    return bound[node.id].split(".") + attrs[::-1]


def _chain_bases(tree: ast.Module) -> set[int]:
    """Names that stand where a module may: the start of an attribute chain, or `alias = module`."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            found.add(id(node.value))
        elif (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
              and isinstance(node.value, ast.Name)):
            found.add(id(node.value))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ATTR_BUILTINS
              and node.args and isinstance(node.args[0], ast.Name)):
            found.add(id(node.args[0]))  # getattr(torch, "name"): checked as the chain torch.name
    return found


class _Screen(ast.NodeVisitor):
    def __init__(self, protected: frozenset[str], module_names: frozenset[str], techniques: frozenset[str],
                 api: Mapping[str, frozenset[str]], bound: dict[str, str]):
        self.protected, self.module_names, self.techniques = protected, module_names, techniques
        self.api, self.bound = api, bound
        self.chain_bases: set[int] = set()
        self.format_calls: set[int] = set()   # .format attributes that are called (their template checked)
        self.parents: dict[int, ast.AST] = {}  # id(node) -> its parent, over the whole student module
        self.methods: dict[str, set[str]] = {}  # the module's classes -> their instance methods
        self.annotations: set[int] = set()     # ids of nodes inside annotations
        self.findings: list[Finding] = []

    def refuse(self, node: ast.AST, what: str) -> None:
        self.findings.append(Finding(getattr(node, "lineno", 0), what))

    def visit__Header(self, node: _Header) -> None:
        cls = node.node
        for part in [*cls.bases, *cls.decorator_list]:
            self.visit(part)
        for keyword in cls.keywords:
            self.refuse(cls, f"class {cls.name} takes keyword {keyword.arg!r} (metaclasses are not allowed)")

    # imports -------------------------------------------------------------------------------
    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.visit_alias(alias)
            self._check_import(node, alias.name, level=0)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        self._check_import(node, node.module or "", node.level, [a.name for a in node.names])
        for alias in node.names:
            self.visit_alias(alias)
        if node.level or (node.module or "").split(".")[0] == "solutions":
            for alias in node.names:  # absolute imports: the allowlist already vouched for each name
                self._check_attr_name(node, alias.name)

    def _check_import(self, node: ast.AST, module: str, level: int, names: list[str] = ()) -> None:
        parts = module.split(".") if module else []
        if level:
            targets = parts[:1] or list(names)
            if level > 1 or any(t not in self.techniques for t in targets):
                self.refuse(node, f"relative import of {'.' * level}{module or ', '.join(names)}: only "
                                  f"other technique modules ({', '.join(sorted(self.techniques))})")
            elif module:
                self._check_chain(node, ["labs", *parts, *names[:1]] if len(names) == 1 else ["labs", *parts])
            return
        if parts[:1] == ["solutions"]:
            return  # the from-scratch check decides which exercises this costs
        if not names:  # import a.b.c: every step must be allowed
            self._check_chain(node, parts)
        for name in names:
            self._check_chain(node, [*parts, name])

    def _check_chain(self, node: ast.AST, chain: list[str]) -> None:
        refused = refused_prefix(chain, self.api)
        if refused:
            self._refuse_chain(node, refused)

    def _refuse_chain(self, node: ast.AST, refused: str) -> None:
        parent, _, name = refused.rpartition(".")
        if not parent:
            allowed = sorted(m for m in self.api if "." not in m and m != "__future__")
            return self.refuse(node, f"import of {refused}: allowed are {', '.join(allowed)}")
        names = sorted(self.api.get(parent, ()))
        listed = f"allowed: {', '.join(names)}" if len(names) <= 12 else f"{len(names)} names are allowed"
        self.refuse(node, f"{refused} is not something exercises may use from {parent} ({listed}; "
                          "ask your instructor if an exercise needs another)")

    # names and attributes ------------------------------------------------------------------
    def visit_Name(self, node: ast.Name) -> None:
        if node.id in self.bound and self.bound[node.id] in self.api and id(node) not in self.chain_bases \
                and isinstance(node.ctx, ast.Load):
            self.refuse(node, f"uses the module {node.id} as a value (only `{node.id}.name` is allowed)")
        if self.bound.get(node.id) in BY_FIELD_NAME:
            self.refuse(node, f"{self.bound[node.id]} in your own code (it reads and writes attributes by a "
                              "field name that code can change; exercises do not need it)")
        elif self.bound.get(node.id) == "dataclasses.field":
            self._check_field(node)
        if node.id in SELF_NAMES and isinstance(node.ctx, (ast.Store, ast.Del)):
            self.refuse(node, f"assigns to {node.id} (self and cls name the instance or class of a method)")
        if node.id == "type" and isinstance(node.ctx, ast.Load):
            self._check_type(node)
        if node.id in REFUSED_NAMES:
            self.refuse(node, f"use of {node.id}")
        elif node.id in ATTR_BUILTINS:
            self.refuse(node, f"{node.id} used other than as getattr(obj, \"literal_name\")")
        elif DUNDER.match(node.id) and node.id != "__name__":
            self.refuse(node, f"use of {node.id}")

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if node.attr == "format" and id(node) not in self.format_calls:
            self.refuse(node, ".format taken without calling it on a literal template")
        path = _path(node, self.bound)
        dotted = ".".join(path or ())
        if dotted in BY_FIELD_NAME:
            self.refuse(node, f"{dotted} in your own code (it reads and writes attributes by a field name "
                              "that code can change; exercises do not need it)")
        elif dotted == "dataclasses.field":
            self._check_field(node)
        self._check_method_through_class(node, node.value, node.attr)
        if isinstance(node.ctx, (ast.Store, ast.Del)) and _root_name(node.value) in self.protected:
            self.refuse(node, f"assigns into {_root_name(node.value)} (.{node.attr}): imported modules and "
                              "classes are shared with the tests and must not be changed")
        if path is not None:  # a chain from an imported module: the allowlist decides
            refused = refused_prefix(path, self.api)
            if refused is not None and len(refused.split(".")) == len(path):
                self._refuse_chain(node, refused)
            if refused is not None or len(path) <= _allowed_depth(path, self.api):
                return self.generic_visit(node)
        self._check_attr_name(node, node.attr, base=node.value)
        self.generic_visit(node)

    def _check_attr_name(self, node: ast.AST, attr: str, base: ast.AST | None = None) -> None:
        if DUNDER.match(attr):
            if attr not in ALLOWED_DUNDERS:
                self.refuse(node, f"dunder attribute .{attr}")
        elif attr.startswith("_") and not self._own_instance(base):
            self.refuse(node, f"private attribute .{attr} (only self._name and cls._name, inside the methods "
                              "of a class this module defines)")
        elif attr in MODULE_ATTRS or attr in DANGEROUS_ATTRS or attr.startswith("register_module_"):
            self.refuse(node, f"attribute .{attr}")

    def visit_Subscript(self, node: ast.Subscript) -> None:
        if isinstance(node.ctx, (ast.Store, ast.Del)) and _root_name(node.value) in self.protected:
            self.refuse(node, f"assigns into {_root_name(node.value)}[...]: imported modules and classes "
                              "are shared with the tests and must not be changed")
        self.generic_visit(node)

    def visit_MatchClass(self, node: ast.MatchClass) -> None:
        for attr in node.kwd_attrs:  # `case C(attr=...)` reads obj.attr
            self._check_attr_name(node, attr)
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, str) and DUNDER.match(node.value) and node.value not in ALLOWED_DUNDERS:
            self.refuse(node, f"string {node.value!r} (dunder names are not allowed)")

    # calls ---------------------------------------------------------------------------------
    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        if isinstance(func, ast.Name) and func.id in ATTR_BUILTINS:
            self._check_attr_builtin(node, func.id)
            for part in [*node.args, *node.keywords]:
                self.visit(part)
            return
        if isinstance(func, ast.Name) and func.id == "type" and len(node.args) + len(node.keywords) != 1:
            self.refuse(node, "type(...) with more than one argument (it builds classes)")
        if isinstance(func, ast.Attribute) and func.attr == "format":
            self._check_format(node, func.value)
            self.format_calls.add(id(func))
        if (isinstance(func, ast.Attribute) and func.attr == "wraps") and len(node.args) + len(node.keywords) > 1:
            self.refuse(node, "functools.wraps with more than one argument")
        for keyword in node.keywords:
            if keyword.arg in ("trust_remote_code", "namespace"):
                self.refuse(node, f"keyword argument {keyword.arg}=")
        self._check_module_arguments(node)
        self.generic_visit(node)

    def _parent(self, node: ast.AST) -> ast.AST | None:
        return self.parents.get(id(node))

    def _check_type(self, node: ast.Name) -> None:
        """`type` may be called on one value, and what it returns only compared, asked for an
        attribute, or called like the class of the value (at most 2 arguments): for a class,
        type(C) is its metaclass, and M(name, bases, namespace) builds a class with any methods."""
        parent = self._parent(node)
        if isinstance(parent, ast.Call) and parent.func is node:
            if len(parent.args) + len(parent.keywords) == 1 and not self._type_result_ok(parent):
                self.refuse(node, "type(x) used as a value (assigned, passed, returned or called with 3 "
                                  "arguments): for a class it is the metaclass, which builds classes; compare "
                                  "it, read its attributes, or call it as x's class with at most 2 arguments")
            return
        while isinstance(parent, ast.Tuple):
            parent = self._parent(parent)
        if id(node) in self.annotations or (isinstance(parent, ast.Call) and isinstance(parent.func, ast.Name)
                                            and parent.func.id in ("isinstance", "issubclass")):
            return
        self.refuse(node, "type used as a value (it builds classes): call type(x) directly")

    def _type_result_ok(self, call: ast.Call) -> bool:
        parent = self._parent(call)
        if isinstance(parent, (ast.Attribute, ast.Compare, ast.FormattedValue)):
            return True
        if isinstance(parent, ast.Call) and parent.func is call:  # type(self)(config): the value's own class
            return len(parent.args) <= 2 and not any(isinstance(a, ast.Starred) for a in parent.args) \
                and all(k.arg is not None for k in parent.keywords)
        return isinstance(parent, ast.Call) and isinstance(parent.func, ast.Name) \
            and parent.func.id in ("isinstance", "issubclass")

    def _check_field(self, node: ast.AST) -> None:
        """dataclasses.field(...) only as `name: type = field(...)` in a class body: a Field kept in a
        variable can have its name changed after the class is built."""
        call, where = self._parent(node), None
        if isinstance(call, ast.Call) and call.func is node:
            assign = self._parent(call)
            if isinstance(assign, ast.AnnAssign) and assign.value is call:
                where = self._parent(assign)
        if not isinstance(where, ast.ClassDef):
            self.refuse(node, "dataclasses.field other than as `name: type = field(...)` in a class body")

    def _enclosing_method(self, node: ast.AST, name: str | None = None) -> ast.AST | None:
        """The method (a def directly in a class body) that binds `name` as its first parameter and
        encloses `node`, or, name None, the nearest enclosing method; None if there is none."""
        parent = self._parent(node)
        while parent is not None and not isinstance(parent, ast.ClassDef):
            if isinstance(parent, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                args = parent.args
                params = [a.arg for a in [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg] if a]
                is_method = not isinstance(parent, ast.Lambda) and isinstance(self._parent(parent), ast.ClassDef) \
                    and not any(isinstance(d, ast.Name) and d.id == "staticmethod" for d in parent.decorator_list)
                if name is None and is_method:
                    return parent
                if name is not None and name in params:  # the innermost binding decides
                    first = [*args.posonlyargs, *args.args][:1]
                    return parent if is_method and first and first[0].arg == name else None
            parent = self._parent(parent)
        return None

    def _own_instance(self, base: ast.AST | None) -> bool:
        """`self` / `cls` as the first parameter of a method of a class this module defines, or
        super() (super(C, self)) inside one: the only bases a private attribute may hang from."""
        if isinstance(base, ast.Name):
            return base.id in SELF_NAMES and self._enclosing_method(base, base.id) is not None
        if isinstance(base, ast.Call) and isinstance(base.func, ast.Name) and base.func.id == "super":
            if not base.args and not base.keywords:
                return self._enclosing_method(base) is not None
            return len(base.args) == 2 and not base.keywords and self._own_instance(base.args[1])
        return False

    def _check_method_through_class(self, node: ast.AST, base: ast.AST, attr: str) -> None:
        """C.method(x) runs C's method with any object as self (and so its self._private reads on
        it): only C.method(self, ...) is allowed, as a subclass calls its base."""
        through_type = isinstance(base, ast.Call) and isinstance(base.func, ast.Name) and base.func.id == "type"
        names_class = isinstance(base, ast.Name) and base.id in self.methods
        methods = set().union(*self.methods.values()) if through_type else self.methods.get(getattr(base, "id", None), set())
        if not (through_type or names_class) or attr not in methods:
            return
        call = self._parent(node)
        if isinstance(call, ast.Call) and call.func is node and call.args and self._own_instance(call.args[0]):
            return
        owner = base.id if names_class else "type(...)"
        self.refuse(node, f"{owner}.{attr} taken through the class: call it on an instance, or as "
                          f"{owner}.{attr}(self, ...) from a method")

    def _check_format(self, node: ast.Call, template: ast.AST) -> None:
        """str.format reads attributes and items of its arguments ("{0.__traceback__}", "{0[k]}"):
        only a literal template with plain fields ("{}", "{0}", "{name:.3f}") is allowed."""
        if not (isinstance(template, ast.Constant) and isinstance(template.value, str)):
            return self.refuse(node, ".format on a template that is not a string literal (use an f-string)")
        try:
            fields, specs = [], [template.value]
            while specs:  # a spec may hold fields of its own: "{0:{1.x}}"
                parsed = [(f, spec) for _, f, spec, _ in string.Formatter().parse(specs.pop()) if f is not None]
                fields += [f for f, _ in parsed]
                specs += [spec for _, spec in parsed if spec]
        except ValueError as err:
            return self.refuse(node, f".format template {template.value[:40]!r} does not parse ({err})")
        for field_name in fields:
            if "." in field_name or "[" in field_name:
                self.refuse(node, f".format field {{{field_name[:40]}}} reads an attribute or item (use an f-string)")

    def _check_attr_builtin(self, node: ast.Call, name: str) -> None:
        """getattr(obj, "name") or getattr(obj, variable); a variable's value is checked as it runs."""
        attr = node.args[1] if len(node.args) >= 2 else None
        base = _path(node.args[0], self.bound) if node.args else None
        if base is not None and ".".join(base) in self.api:  # on a module: the allowlist decides
            if name in ("setattr", "delattr"):
                self.refuse(node, f"{name} on {'.'.join(base)}: imported modules and classes are shared with "
                                  "the tests and must not be changed")
            elif isinstance(attr, ast.Constant) and isinstance(attr.value, str):
                self._check_chain(node, [*base, attr.value])
            else:
                self.refuse(node, f"{name} with a computed attribute name on the module {'.'.join(base)} "
                                  f"(write {'.'.join(base)}.name)")
            return
        if isinstance(attr, ast.Constant) and isinstance(attr.value, str):
            self._check_attr_name(node, attr.value, base=node.args[0])
            self._check_method_through_class(node, node.args[0], attr.value)
        elif not isinstance(attr, ast.Name):
            self.refuse(node, f"{name} with a computed attribute name (write obj.name, or pass a variable)")
            return
        if name in ("setattr", "delattr") and _root_name(node.args[0]) in self.protected:
            self.refuse(node, f"{name} on {_root_name(node.args[0])}: imported modules and classes are "
                              "shared with the tests and must not be changed")

    def _check_module_arguments(self, node: ast.Call) -> None:
        for arg in [*node.args, *(k.value for k in node.keywords)]:
            if isinstance(arg, ast.Name) and arg.id in self.module_names:
                self.refuse(node, f"passes the module {arg.id} itself as an argument")

    # definitions ---------------------------------------------------------------------------
    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._check_binding(node, node.name)
        if DUNDER.match(node.name) and node.name not in DEFINABLE_DUNDERS:
            self.refuse(node, f"defines {node.name} (allowed: {', '.join(sorted(DEFINABLE_DUNDERS))})")
        self._check_annotations(node)
        self.generic_visit(node)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> None:
        self._check_binding(node, node.name)
        self.generic_visit(node)

    def visit_alias(self, node: ast.alias) -> None:
        self._check_binding(node, (node.asname or node.name).split(".")[0])

    def visit_Global(self, node: ast.Global) -> None:
        for name in node.names:
            self._check_binding(node, name)

    visit_Nonlocal = visit_Global

    def visit_MatchAs(self, node) -> None:
        self._check_binding(node, node.name)
        self.generic_visit(node)

    def visit_MatchStar(self, node) -> None:
        self._check_binding(node, node.name)

    def _check_binding(self, node: ast.AST, name: str | None) -> None:
        if name in SELF_NAMES:
            self.refuse(node, f"binds the name {name} (self and cls name the instance or class of a method)")

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self._check_binding(node, node.name)
        for keyword in node.keywords:
            self.refuse(node, f"class {node.name} takes keyword {keyword.arg!r} (metaclasses are not allowed)")
        self.generic_visit(node)

    def visit_Assign(self, node: ast.Assign) -> None:
        for target in node.targets:
            for name in ast.walk(target):
                if isinstance(name, ast.Name) and DUNDER.match(name.id):
                    self.refuse(node, f"assigns to {name.id}")
        self.generic_visit(node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        self._check_annotation(node.annotation)
        self.generic_visit(node)

    def _check_annotations(self, node: ast.FunctionDef) -> None:
        args = node.args
        for arg in [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]:
            if arg is not None and arg.annotation is not None:
                self._check_annotation(arg.annotation)
        if node.returns is not None:
            self._check_annotation(node.returns)

    def _check_annotation(self, annotation: ast.AST) -> None:
        """String annotations are code that some library may evaluate later: keep them to type names."""
        for part in ast.walk(annotation):
            if isinstance(part, ast.Constant) and isinstance(part.value, str) and not SAFE_ANNOTATION.match(part.value):
                self.refuse(part, f"annotation string {part.value[:40]!r} is not a plain type name")


# ---------------------------------------------------------------------------------------------
# From scratch: exercises must not lean on peft or the reference
# ---------------------------------------------------------------------------------------------
def _from_scratch(tree: ast.Module, exercises: dict[str, str]) -> list[Finding]:
    """One finding per exercise whose function reaches peft or solutions (directly or via helpers).

    Linear in the size of the module: the call graph is built once (one walk of each function),
    then taint spreads backwards from each tainted helper to its callers (a worklist: each edge
    is followed at most once). An exercise answers for itself: calling another exercise that
    uses peft does not taint the caller."""
    tainted = _reference_names(tree)
    functions = _functions(tree)
    callers = call_graph(functions)
    uses = {name: None for name in callers} | {name: _reach(node, tainted) for name, node in functions.items()}
    root = {name: hit[1] for name, hit in uses.items() if hit}  # the direct use each taint goes back to
    work = [name for name, hit in uses.items() if hit and name not in exercises]
    while work:
        callee = work.pop()
        for caller, line in callers.get(callee, ()):
            if uses.get(caller) is None:
                uses[caller], root[caller] = (line, f"{callee}, which uses {root[callee]}"), root[callee]
                if caller not in exercises:
                    work.append(caller)
    return [Finding(uses[q][0], f"exercise {ex} ({q}) uses {uses[q][1]}: exercises are written from "
                                f"scratch, without peft or the reference", exercise=ex)
            for q, ex in exercises.items() if uses.get(q)]


def call_graph(functions: dict[str, ast.AST]) -> dict[str, list[tuple[str, int]]]:
    """Callee -> [(caller, line)], over functions and the classes that hold them. A function uses
    another it names (`helper`), a method it reaches as `self.name` / `cls.name`, or a class it
    names (`Cls`, which uses each of its methods: one edge per method, not one per method and
    caller). Each function is walked once and each name looked up in a dict: linear in the size."""
    callers: dict[str, list[tuple[str, int]]] = {}
    for name, function in functions.items():  # a class uses its methods (and an outer class its inner ones)
        child = name
        while "." in child:
            parent = child.rsplit(".", 1)[0]
            callers.setdefault(child, []).append((parent, function.lineno))
            if parent in callers:
                break  # the rest of this chain of classes is already linked
            callers[parent] = []
            child = parent
    for qualname, function in functions.items():
        cls = qualname.rsplit(".", 1)[0] + "." if "." in qualname else ""
        first: dict[str, int] = {}  # each name mentioned, with the line of its first mention
        for node in ast.walk(function):
            if isinstance(node, ast.Name):
                first.setdefault(node.id, node.lineno)
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                first.setdefault(cls + node.attr, node.lineno)
        for callee, line in first.items():
            if callee != qualname and (callee in functions or callee in callers):
                callers.setdefault(callee, []).append((qualname, line))
    return callers


def _reference_names(tree: ast.Module) -> set[str]:
    """Names bound to peft / solutions anywhere in the module (an import inside an if, try, with,
    loop, class body or function binds them as much as one at the top), and names and attributes
    assigned from them, followed through every assignment: `self.g = peft.get_peft_model` in one
    method taints `.g` wherever it is read."""
    names: set[str] = set()
    feeds: dict[str, list[ast.AST]] = {}  # name -> the assignment targets its value flows into
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)) and _imports_reference(node):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        targets, value = _assignment(node)
        for name in {_read_name(n) for n in ast.walk(value)} - {None} if value is not None else ():
            feeds.setdefault(name, []).extend(targets)
    work = list(names)
    while work:  # a worklist: each name is followed once
        for target in feeds.get(work.pop(), ()):
            for bound in _bound_names(target):
                if bound not in names:
                    names.add(bound)
                    work.append(bound)
    return names


def _assignment(node: ast.AST) -> tuple[list[ast.AST], ast.AST | None]:
    """(targets, value) of a statement or expression that binds names from a value."""
    if isinstance(node, ast.Assign):
        return node.targets, node.value
    if isinstance(node, (ast.AnnAssign, ast.AugAssign, ast.NamedExpr)) and node.value is not None:
        return [node.target], node.value
    if isinstance(node, (ast.For, ast.AsyncFor, ast.comprehension)):
        return [node.target], node.iter
    if isinstance(node, ast.withitem) and node.optional_vars is not None:
        return [node.optional_vars], node.context_expr
    return [], None


def _bound_names(target: ast.AST) -> list[str]:
    """What an assignment target binds: x, obj.x (the attribute x), d[k] (d), a, *b (a and b)."""
    if isinstance(target, (ast.Tuple, ast.List)):
        return [n for t in target.elts for n in _bound_names(t)]
    if isinstance(target, ast.Starred):
        return _bound_names(target.value)
    if isinstance(target, ast.Subscript):
        return _bound_names(target.value)
    return [n for n in [_read_name(target)] if n]


def _read_name(node: ast.AST) -> str | None:
    """The name a Name node reads or binds, or the attribute name of an Attribute node."""
    return node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else None


def _imports_reference(node: ast.AST) -> bool:
    if isinstance(node, ast.Import):
        return any(a.name.split(".")[0] in REFERENCE for a in node.names)
    return isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").split(".")[0] in REFERENCE


def _reach(function: ast.AST, tainted: set[str]) -> tuple[int, str] | None:
    for node in ast.walk(function):
        if _imports_reference(node):
            return node.lineno, "an import of " + ("peft" if "peft" in ast.dump(node) else "the reference solutions")
        if _read_name(node) in tainted:
            return node.lineno, f"{_read_name(node)} (imported from peft or the reference)"
    return None
