"""Talking to what you trained: `labs generate RUN_OR_ADAPTER_FOLDER --prompt "..."`.

    tuned = load_tuned("runs/lora-smollm2-135m-sample_chat-...")   # a run, an adapter or a model folder
    print(reply(tuned.model, tuned.tokenizer, "Convert 3 hours to minutes.").text)

What a folder can be:
    a run folder of `labs finetune` (metrics.json + adapter/ or model.safetensors): every method,
        QLoRA on its 4-bit base as it trained, full fine-tunes as their saved weights
    an adapter folder (adapter_config.json + adapter_model.safetensors), the course's or peft's:
        its base is `base_model_name_or_path` (the embedded copy when it names an embedded model)
    a plain transformers model folder (config.json), e.g. one `labs export --merged` wrote

Prompts go through the model's chat template (a model without one gets "Question: ...\\nAnswer:");
decoding is greedy unless --temperature > 0, and stops at the end-of-turn token. Many tokenizers
(SmolLM2's among them) pad with their EOS token: the answer is cut at the first stop token, so
padding after it is never shown. Several LoRA adapters on one base (`--adapter name=FOLDER`, repeated)
are served by labs.serving.AdapterServer, as in notebook 10.

Many (adapter, prompt) pairs in ONE batch, each row through its own LoRA adapter (notebook 10,
section 5: labs.serving.MultiAdapterServer, your exercises 10.1-10.3):

    labs generate --pair runs/lora-units="Convert 3 hours to minutes." --pair base="Say hi."
    labs generate --pairs pairs.jsonl        # lines {"adapter": "runs/lora-units", "prompt": "..."}

An adapter is an adapter folder or a LoRA run folder of `labs finetune`; "base", an empty name or
a missing/null "adapter" means the base model alone. Every adapter must share one base model.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "</s>")  # chat families' turn ends


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int = 128   # new tokens at most, per answer
    temperature: float = 0.0    # 0: greedy, the same answer every time; > 0 samples (higher: more random)
    top_p: float = 1.0          # sample from the smallest set of tokens whose probabilities reach top_p
    seed: int = 0               # the sampling seed (a sampled answer is reproducible)

    def __post_init__(self):
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an int >= 1, got {self.max_new_tokens!r}")
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")


@dataclass
class Tuned:
    model: nn.Module            # the tuned model, in eval mode
    tokenizer: object
    base: str                   # what load_model loads as its base ("smollm2-135m", a folder, a Hub name)
    method: str | None          # the method that trained it (None: a plain model folder)
    folder: Path


@dataclass(frozen=True)
class Reply:
    text: str                   # the answer, stop token and padding removed
    tokens: int                 # new tokens generated up to the stop (or the limit)
    stopped: bool               # True when the model ended its turn (False: cut at max_new_tokens)


# ---------------------------------------------------------------------------------------------
# Loading what was trained
# ---------------------------------------------------------------------------------------------
def base_name(hub_id: str | None) -> str:
    """The embedded model that a Hub name belongs to (so it loads offline), else the name itself."""
    from labs.models import MODELS, cache_path
    if not hub_id:
        raise ValueError("the adapter does not name its base model (base_model_name_or_path); "
                         "pass --base NAME")
    # peft records the folder it loaded the base from: the embedded model's cache folder here
    return next((name for name, spec in MODELS.items()
                 if hub_id in (spec.hf_id, str(cache_path(name)))), hub_id)


def load_tuned(folder, impl: str | None = None, device: str | None = None, base: str | None = None) -> Tuned:
    """The model that `folder` holds, ready to generate (see the module docstring for what folders work)."""
    from labs.models import load_model
    from labs.peft_format import CONFIG_NAME, load_adapter
    folder = Path(folder)
    if (folder / "metrics.json").is_file():
        return _load_run(folder, impl, device)
    if (folder / CONFIG_NAME).is_file():
        config = json.loads((folder / CONFIG_NAME).read_text())
        name = base or base_name(config.get("base_model_name_or_path"))
        model, tokenizer = load_model(name, device=device)
        return Tuned(load_adapter(model, folder, impl=impl).eval(), tokenizer, name, config.get("peft_type"), folder)
    if (folder / "config.json").is_file() or folder.suffix == ".gguf":
        model, tokenizer = load_model(str(folder), device=device)
        return Tuned(model, tokenizer, str(folder), None, folder)
    raise FileNotFoundError(f"{folder} is neither a run folder (metrics.json), an adapter folder "
                            f"({CONFIG_NAME}) nor a model folder (config.json)")


def _load_run(folder: Path, impl, device) -> Tuned:
    """A `labs finetune` output folder: its base, prepared as the run prepared it, with what it saved."""
    from labs.impl import technique
    from labs.models import load_model
    from labs.peft_format import load_adapter
    metrics = json.loads((folder / "metrics.json").read_text())
    method, name = metrics["method"], metrics["model"]
    if metrics.get("task_kind") == "classify":
        raise ValueError(f"{folder} is a {method} run of a classification task ({metrics['task']}): it "
                         "predicts labels, it does not write text")
    model, tokenizer = load_model(name, device=device)
    if method == "full":
        load_full_weights(model, folder / "model.safetensors")
    else:
        if method == "qlora":   # the adapter learned on the 4-bit base: serve it on the same base
            options = {k: v for k, v in metrics.get("options", {}).items()
                       if k in ("backend", "block_size", "double_quant", "compute_dtype")}
            qlora = technique("qlora", impl)
            config = qlora.config_from_options(qlora.QLoRAConfig, options)
            qlora.quantize_model(model, config.backend, config.block_size, config.double_quant,
                                 qlora.DTYPES[config.compute_dtype])
        model = load_adapter(model, folder / "adapter", impl=impl)
    return Tuned(model.eval(), tokenizer, name, method, folder)


def load_full_weights(model: nn.Module, path: Path) -> None:
    """Load a full fine-tune's state dict (tied weights were stored once: their partner must be absent)."""
    from safetensors.torch import load_file
    state = load_file(path)
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {n for n in missing if n.endswith("lm_head.weight")}
    if unexpected or set(missing) - tied:
        raise ValueError(f"{path} does not fit the base model: missing {sorted(set(missing) - tied)[:3]}, "
                         f"unexpected {sorted(unexpected)[:3]}")


# ---------------------------------------------------------------------------------------------
# Generating
# ---------------------------------------------------------------------------------------------
def stop_ids(tokenizer, model: nn.Module | None = None) -> list[int]:
    """Token ids that end an answer: EOS, the generation config's EOS ids, and the chat family's turn end."""
    ids = {tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids |= set(configured) if isinstance(configured, (list, tuple)) else {configured}
    vocab = tokenizer.get_vocab()
    ids |= {vocab[t] for t in END_OF_TURN if t in vocab}
    return sorted(i for i in ids if i is not None)


def until_stop(new: list[int], stops) -> tuple[list[int], bool]:
    """The new tokens before the first stop token, and whether there was one. With pad == EOS the
    padding after a finished answer is EOS too: it is cut with the stop."""
    for i, token in enumerate(new):
        if token in stops:
            return new[:i], True
    return new, False


def render(tokenizer, messages: list[dict]) -> str:
    """The text the model reads before answering: its chat template, or the course's plain format."""
    from labs.data import _has_template, format_prompt
    if _has_template(tokenizer):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if len(messages) == 1:
        return format_prompt(tokenizer, messages[0]["content"])
    return "".join(f"{t['role'].capitalize()}: {t['content']}\n" for t in messages) + "Assistant:"


@torch.no_grad()
def reply(model: nn.Module, tokenizer, conversation: str | list[dict], sampling: Sampling = Sampling()) -> Reply:
    """The model's answer to a prompt (str) or to a conversation (list of {"role", "content"})."""
    messages = [{"role": "user", "content": conversation}] if isinstance(conversation, str) else conversation
    enc = tokenizer(render(tokenizer, messages), add_special_tokens=False, return_tensors="pt")
    device = next(model.parameters()).device
    stops = stop_ids(tokenizer, model)
    out = model.generate(**{k: v.to(device) for k, v in enc.items()}, max_new_tokens=sampling.max_new_tokens,
                         eos_token_id=stops, pad_token_id=tokenizer.pad_token_id, **decoding(sampling))
    return answer(tokenizer, out[0, enc["input_ids"].shape[1]:].tolist(), stops)   # (new tokens,)


def decoding(sampling: Sampling) -> dict:
    """generate()'s knobs for `sampling` (seeding the sampler when it samples)."""
    if sampling.temperature > 0:
        torch.manual_seed(sampling.seed)
        return {"do_sample": True, "temperature": sampling.temperature, "top_p": sampling.top_p}
    return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}


def answer(tokenizer, new: list[int], stops) -> Reply:
    """The Reply for one row's new tokens: cut at the first stop token, decoded."""
    new, stopped = until_stop(new, set(stops))
    return Reply(tokenizer.decode(new, skip_special_tokens=True).strip(), len(new), stopped)


@torch.no_grad()
def mixed_replies(server, tokenizer, pairs: list[tuple[str | None, str]],
                  sampling: Sampling = Sampling()) -> list[Reply]:
    """Every pair's answer, all from ONE batch: row n reads prompt pairs[n][1] through the adapter
    the server (labs.serving.MultiAdapterServer) serves as pairs[n][0] (None: the base alone).

    The prompts go through the chat template as in reply(), left-padded so that all rows take their
    next token together; the server's plan (which adapter each row uses) holds for the prompt's
    forward and for every token after it. Greedy, each row's answer is the one reply() gives with
    that adapter loaded alone.
    """
    from labs.serving import encode_pairs
    texts = [(name, render(tokenizer, [{"role": "user", "content": prompt}])) for name, prompt in pairs]
    names, inputs = encode_pairs(tokenizer, texts, add_special_tokens=False)   # (N, T) each, left-padded
    model = server.model
    device = next(model.parameters()).device
    stops = stop_ids(tokenizer, model)
    server.plan(names)
    out = model.generate(**{k: v.to(device) for k, v in inputs.items()}, max_new_tokens=sampling.max_new_tokens,
                         eos_token_id=stops, pad_token_id=tokenizer.pad_token_id, **decoding(sampling))
    prompt_tokens = inputs["input_ids"].shape[1]
    return [answer(tokenizer, row, stops) for row in out[:, prompt_tokens:].tolist()]   # (N, new) -> N replies


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="labs generate", description="Answers from what you trained: a run "
                                "folder of labs finetune, an adapter folder (ours or peft's), or a model folder.")
    p.add_argument("folder", nargs="?", help="run, adapter or model folder (leave out with --adapter)")
    p.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    p.add_argument("--prompts", metavar="FILE", help="a file of prompts, one a line ('-': standard input)")
    p.add_argument("--chat", action="store_true", help="a conversation, turn by turn, on the terminal")
    p.add_argument("--compare-base", action="store_true", help="print the base model's answer beside the tuned one")
    p.add_argument("--adapter", action="append", default=[], metavar="NAME=FOLDER",
                   help="a LoRA adapter served by name on one base (repeatable; notebook 10's server)")
    p.add_argument("--pair", action="append", default=[], metavar="ADAPTER=PROMPT",
                   help="one row of a mixed batch: an adapter (or LoRA run) folder and its prompt, answered "
                        "with every other --pair in ONE batch; base=PROMPT: the base model (repeatable)")
    p.add_argument("--pairs", metavar="FILE", help='rows of a mixed batch from a JSONL file, one '
                   '{"adapter": FOLDER, "prompt": TEXT} a line ("adapter" "base", "" or left out: the base; '
                   "'-': standard input)")
    p.add_argument("--mode", default="gather", choices=("gather", "group"),
                   help="how the mixed batch computes each row's update (exercise 10.1, or 10.2-10.3)")
    p.add_argument("--base", default=None, help="the base model of --adapter or --pair (default: the first "
                   "adapter's own)")
    p.add_argument("--max-new-tokens", type=int, default=Sampling.max_new_tokens)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); > 0 samples")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold (with --temperature)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu, cuda, mps (default: cpu)")
    p.add_argument("--impl", default=None, choices=("labs", "solutions"), help="whose technique modules load "
                   "course adapters (default: $LABS_IMPL, else labs)")
    return p


def _prompts(args) -> list[str]:
    prompts = list(args.prompt)
    if args.prompts:
        text = sys.stdin.read() if args.prompts == "-" else Path(args.prompts).read_text(encoding="utf-8")
        prompts += [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts and not args.chat and not sys.stdin.isatty():
        prompts = [line.strip() for line in sys.stdin.read().splitlines() if line.strip()]
    if not prompts and not args.chat:
        raise ValueError("nothing to answer: give --prompt TEXT, --prompts FILE, --chat, or prompts on standard input")
    return prompts


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from transformers.utils import logging
    logging.disable_progress_bar()      # answers only, no loading bars
    sampling = Sampling(args.max_new_tokens, args.temperature, args.top_p, args.seed)
    if args.pair or args.pairs:
        return _serve_pairs(args, sampling)
    if args.adapter:
        return _serve_adapters(args, sampling)
    if not args.folder:
        raise ValueError("labs generate needs a folder (a run, an adapter or a model), or --adapter NAME=FOLDER")
    prompts = _prompts(args)
    tuned = load_tuned(args.folder, args.impl, args.device)
    base = None
    if args.compare_base:
        from labs.models import load_model
        base = load_model(tuned.base, device=args.device)[0]
    if args.chat:
        return _chat(tuned, sampling)
    for prompt in prompts:
        print(f"> {prompt}")
        print(f"tuned: {reply(tuned.model, tuned.tokenizer, prompt, sampling).text}")
        if base is not None:
            print(f"base:  {reply(base, tuned.tokenizer, prompt, sampling).text}")
        print()
    return 0


def _chat(tuned: Tuned, sampling: Sampling) -> int:
    """Turn by turn: each answer joins the conversation; an empty line or Ctrl-D ends it."""
    messages = []
    print("Chatting with the tuned model; an empty line ends.", file=sys.stderr)
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            break
        if not line:
            break
        messages.append({"role": "user", "content": line})
        answer = reply(tuned.model, tuned.tokenizer, messages, sampling).text
        messages.append({"role": "assistant", "content": answer})
        print(f"model> {answer}")
    return 0


def adapter_folder(folder) -> Path:
    """A run folder's adapter/ (or the folder itself when it is an adapter folder)."""
    folder = Path(folder)
    return folder / "adapter" if (folder / "metrics.json").is_file() else folder


def _serve_adapters(args, sampling: Sampling) -> int:
    """Each prompt answered by every named adapter, all on one base held once (labs.serving)."""
    from labs.models import load_model
    from labs.peft_format import CONFIG_NAME
    from labs.serving import AdapterServer
    pairs = []
    for item in args.adapter:
        name, sep, folder = item.partition("=")
        if not sep or not name or not folder:
            raise ValueError(f"--adapter {item!r} is not NAME=FOLDER (for example --adapter units=runs/lora-...)")
        pairs.append((name, adapter_folder(folder)))
    first = json.loads((pairs[0][1] / CONFIG_NAME).read_text()) if (pairs[0][1] / CONFIG_NAME).is_file() else {}
    model, tokenizer = load_model(args.base or base_name(first.get("base_model_name_or_path")), device=args.device)
    server = AdapterServer(model, impl=args.impl)
    for name, folder in pairs:
        server.add(name, folder)
    for prompt in _prompts(args):
        print(f"> {prompt}")
        for name in server.names:
            server.use(name)
            print(f"[{name}] {reply(server.model, tokenizer, prompt, sampling).text}")
        print()
    return 0


# ---------------------------------------------------------------------------------------------
# Many adapters in one batch: --pair ADAPTER=PROMPT (repeated), --pairs FILE.jsonl
# ---------------------------------------------------------------------------------------------
BASE_WORDS = ("", "base")   # an adapter named so is no adapter: the row runs on the base model alone
PAIR_FORM = ("ADAPTER=PROMPT, where ADAPTER is an adapter folder (adapter_config.json) or a LoRA run "
             "folder of labs finetune, or base (or nothing before '=') for the base model")
MIXED_NEEDS = ("lora", "10.1-10.3")   # the exercises a mixed batch runs (labs/lora.py, labs/multi_lora.py)


def parse_pair(text: str) -> tuple[str | None, str]:
    """One --pair: 'runs/lora-units=Convert 3 hours.' -> ("runs/lora-units", "Convert 3 hours."),
    'base=Hi' -> (None, "Hi"). The first '=' splits: a prompt may hold more of them."""
    adapter, sep, prompt = text.partition("=")
    if not sep:
        raise ValueError(f"--pair {text!r} has no '='; write --pair {PAIR_FORM}")
    return checked_pair(adapter, prompt, f"--pair {text!r}")


def checked_pair(adapter, prompt, where: str) -> tuple[str | None, str]:
    """(adapter folder or None for the base, prompt), or a clear error naming `where` the pair came from."""
    if adapter is not None and not isinstance(adapter, str):
        raise ValueError(f"{where}: the adapter {adapter!r} is not a folder name; give a folder, \"base\" or \"\"")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"{where} has an empty prompt {prompt!r}; every pair needs a prompt to answer")
    adapter = None if adapter is None or adapter.strip() in BASE_WORDS else adapter.strip()
    return adapter, prompt.strip()


def read_pairs(path: str) -> list[tuple[str | None, str]]:
    """The pairs of a JSONL file ('-': standard input), one {"adapter": ..., "prompt": ...} a line;
    blank lines are skipped."""
    text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    pairs = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where} is not JSON ({err.msg}): {line.strip()[:60]!r}; each line is "
                             '{"adapter": "runs/lora-...", "prompt": "..."}') from None
        if not isinstance(row, dict) or "prompt" not in row or set(row) - {"adapter", "prompt"}:
            raise ValueError(f"{where} is {line.strip()[:60]!r}; each line is an object with the keys "
                             '"prompt" and, optionally, "adapter" (left out, null, "" or "base": the base model)')
        pairs.append(checked_pair(row.get("adapter"), row["prompt"], where))
    if not pairs:
        raise ValueError(f"{path} holds no pairs; write one {{\"adapter\": ..., \"prompt\": ...}} a line")
    return pairs


def lora_folder(adapter: str) -> Path:
    """The LoRA adapter folder that `adapter` (as typed) names: the folder itself, or a run's adapter/."""
    from labs.peft_format import CONFIG_NAME
    folder = Path(adapter)
    if not folder.is_dir():
        raise FileNotFoundError(f"adapter folder {adapter!r} does not exist; a pair is {PAIR_FORM}")
    if (folder / "metrics.json").is_file():
        method = json.loads((folder / "metrics.json").read_text()).get("method")
        if method != "lora":
            raise ValueError(f"{adapter!r} is a {method} run; a mixed batch serves LoRA adapters (runs of "
                             f"--method lora) on the plain base: answer it alone with labs generate {adapter}")
        folder = folder / "adapter"
    if not (folder / CONFIG_NAME).is_file():
        raise FileNotFoundError(f"{adapter!r} is neither an adapter folder ({CONFIG_NAME}) nor a run folder "
                                f"(metrics.json); a pair is {PAIR_FORM}")
    return folder


def shared_base(folders: dict[str, Path], base: str | None) -> str:
    """The one base model of the batch: --base, else the base the adapters record; an adapter that
    records another base is refused (its factors would meet weights they were not trained with)."""
    from labs.peft_format import CONFIG_NAME
    recorded = {}
    for adapter, folder in folders.items():
        hub_id = json.loads((folder / CONFIG_NAME).read_text()).get("base_model_name_or_path")
        if hub_id:
            recorded[adapter] = _base_key(hub_id)
    want = _base_key(base) if base else next(iter(recorded.values()), None)
    if want is None:
        raise ValueError("no adapter of these pairs names its base model: say which with --base "
                         "(for example --base smollm2-135m)")
    source = "--base" if base else f"the base of {next(iter(recorded))!r}"
    for adapter, name in recorded.items():
        if name != want:
            raise ValueError(f"adapter {adapter!r} was trained on base model {name!r}, but this batch runs on "
                             f"{want!r} ({source}); one batch serves adapters of one base: answer it in a batch "
                             "of its own")
    return want


def _base_key(name: str) -> str:
    """One spelling per base: the embedded model's name for its Hub name or cache folder, a local
    folder's absolute path, else the name as given."""
    name = base_name(name)
    return str(Path(name).resolve()) if Path(name).is_dir() else name


def require_mixed_ready(impl: str | None) -> None:
    """A clear NotImplementedError, before any model loads, while the exercises a mixed batch runs are open."""
    from labs.impl import current_impl, has_reference
    from labs.prerequisites import describe, missing
    impl = impl or current_impl()
    todo = missing(MIXED_NEEDS, impl)
    if todo:
        other = ", or run the reference with --impl solutions (or LABS_IMPL=solutions)" if has_reference() else ""
        raise NotImplementedError(
            f"--pair and --pairs answer every pair in one batch with your own labs/lora.py and labs/multi_lora.py, "
            f"where {describe(todo, impl)} {'is' if len(todo) == 1 else 'are'} still open; finish "
            f"{'it' if len(todo) == 1 else 'them'}{other}")


def _serve_pairs(args, sampling: Sampling) -> int:
    """Every (adapter, prompt) pair answered in ONE batch on one base (labs.serving.MultiAdapterServer)."""
    from labs.models import load_model
    from labs.serving import MultiAdapterServer
    others = [flag for flag, used in (("a folder", args.folder), ("--adapter", args.adapter), ("--prompt", args.prompt),
                                      ("--prompts", args.prompts), ("--chat", args.chat),
                                      ("--compare-base", args.compare_base)) if used]
    if others:
        raise ValueError(f"--pair / --pairs bring their own prompts and adapters; leave out {', '.join(others)} "
                         "(a base row is base=PROMPT)")
    if args.device not in (None, "cpu"):   # MultiLoRALinear keeps the adapters' factors on the CPU
        raise ValueError(f"--device {args.device}: the mixed batch runs on the CPU for now; leave out --device")
    pairs = [parse_pair(text) for text in args.pair] + (read_pairs(args.pairs) if args.pairs else [])
    folders = {adapter: lora_folder(adapter) for adapter, _ in pairs if adapter is not None}
    base = shared_base(folders, args.base)
    if folders:
        require_mixed_ready(args.impl)
    model, tokenizer = load_model(base)
    server = MultiAdapterServer(model.eval(), impl=args.impl, mode=args.mode)
    for adapter, folder in folders.items():
        server.add(adapter, folder)
    print(f"{len(pairs)} prompts in one batch: {len(folders)} adapter(s) on {base}"
          f"{' and rows on the base alone' if any(a is None for a, _ in pairs) else ''} "
          f"(mode {args.mode})", file=sys.stderr)
    for (adapter, prompt), got in zip(pairs, mixed_replies(server, tokenizer, pairs, sampling)):
        print(f"[{adapter or 'base'}] > {prompt}")
        print(got.text)
        print()
    return 0
