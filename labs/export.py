"""Taking what you trained out of the course: `labs export RUN [--merged OUT] [--gguf OUT.gguf]`.

    report = export_merged("runs/lora-...", "exported/units")     # a plain transformers folder
    write_gguf("exported/units", "exported/units.gguf", "q8_0")   # + Modelfile beside it, for Ollama

--merged writes the base with the update baked in (W + scale * B @ A for LoRA), as any transformers
user expects: model.safetensors, config.json, generation_config.json, the tokenizer and a model card
(README.md). AutoModelForCausalLM.from_pretrained(OUT) then gives the tuned model's logits, with
no adapter code. QLoRA merges onto its dequantized 4-bit base (B @ A is not on the NF4 grid).
Prefix tuning, prompt tuning and bottleneck adapters do not change weights that exist, so there is
nothing to merge them into: they are refused with what to use instead.

--gguf writes one file llama.cpp and Ollama load: the metadata and tokenizer (chat template
included) copied from the embedded model's own GGUF, the tensors from the merged model, in f16 or
q8_0 (8-bit blocks of 32 weights with one f16 scale: 8.5 bits per weight). Written with the `gguf`
package (llama.cpp's own writer); the Llama family only (SmolLM2 is one).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

from labs.files import dir_bytes, write_atomically

UNMERGEABLE = {
    "prefix": "prefix tuning adds trained key/value vectors in front of every layer's attention; no weight of "
              "the base changes, so there is nothing to merge them into",
    "prompt": "prompt tuning adds trained input embeddings in front of the prompt; no weight of the base "
              "changes, so there is nothing to merge them into",
    "adapter": "a bottleneck adapter is a new layer (down-projection, nonlinearity, up-projection); the "
               "nonlinearity cannot be folded into the base's linear layers",
}
INSTEAD = ("use `labs generate RUN` to talk to it, or ship its adapter folder (RUN/adapter), which "
           "Hugging Face peft loads where peft has the method")
PROBE_TEXT = "Convert 3 hours to minutes. 3 hours = 180 minutes."   # any text: logits compared on it
GGUF_TYPES = ("f16", "q8_0")


def method_of(tuned) -> str | None:
    """The course's method name of what load_tuned loaded (a peft_type for bare adapter folders)."""
    from labs.methods import METHODS, method_for_peft_type
    if tuned.method is None or tuned.method in METHODS:
        return tuned.method
    return method_for_peft_type(tuned.method).name


def merge(tuned, impl: str | None = None) -> nn.Module:
    """A plain transformers model computing what the tuned model computes (ValueError where impossible)."""
    from labs.impl import technique
    method = method_of(tuned)
    if method in UNMERGEABLE:
        raise ValueError(f"cannot merge a {method} run: {UNMERGEABLE[method]}; {INSTEAD}")
    if method in ("lora", "qlora"):
        return technique(method, impl).merge_and_unload(tuned.model)
    return tuned.model      # full fine-tuning, BitFit (trained values of existing weights), a plain model


@torch.no_grad()
def logits(model: nn.Module, tokenizer) -> torch.Tensor:
    ids = tokenizer(PROBE_TEXT, return_tensors="pt")["input_ids"]      # (1, T)
    return model(input_ids=ids.to(next(model.parameters()).device)).logits.float().cpu()   # (1, T, V)


def export_merged(run, out, impl: str | None = None) -> dict:
    """Merge `run` (a run or adapter folder) into a plain transformers folder `out`; returns what was
    measured: the largest logit difference merged vs tuned (and, for QLoRA, vs the fp32 base)."""
    from labs.generate import adapter_folder, load_tuned
    out = Path(out)
    if out.exists():
        raise ValueError(f"{out} exists; export into a new folder (or remove it first)")
    tuned = load_tuned(run, impl)
    method = method_of(tuned)
    if method in UNMERGEABLE:   # before any work
        merge(tuned, impl)
    before = logits(tuned.model, tuned.tokenizer)
    merged = merge(tuned, impl).eval()
    after = logits(merged, tuned.tokenizer)
    report = {"method": method, "base": tuned.base, "max_logit_diff": float((after - before).abs().max())}
    if method == "qlora":   # what the 4-bit rounding of the base changed: the same adapter on the fp32 base
        plain = load_tuned(adapter_folder(run), impl)
        report["max_logit_diff_vs_fp32_base"] = float((after - logits(plain.model, plain.tokenizer)).abs().max())
        del plain
    _save_folder(merged, tuned, out, report)
    report.update(folder=str(out), bytes=dir_bytes(out))
    return report


def _save_folder(model: nn.Module, tuned, out: Path, report: dict) -> None:
    """Everything into a temporary folder beside `out`, then one rename: never a half-written folder."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        model.save_pretrained(tmp, safe_serialization=True)
        tuned.tokenizer.save_pretrained(tmp)
        write_atomically(tmp / "README.md", model_card(tuned, report))
        for file in tmp.iterdir():      # mkdtemp and some writers make private files: these are ordinary ones
            file.chmod(0o644)
        tmp.chmod(0o755)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def model_card(tuned, report: dict) -> str:
    """README.md of the exported folder: what it was tuned on, how, and what the merge measured."""
    metrics_file = Path(tuned.folder) / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    lines = [f"# {tuned.base}, fine-tuned with {report['method'] or 'PEFT Lab'} and merged", "",
             f"Base model: `{getattr(tuned.model.config, 'name_or_path', tuned.base)}`. Exported by PEFT Lab's "
             "`labs export --merged` from " + f"`{tuned.folder}`.", ""]
    if metrics:
        before, after = metrics.get("eval_before", {}), metrics.get("eval_after", {})
        lines += [f"- Tuned on: `{metrics.get('task')}` ({metrics.get('task_kind')} task)",
                  f"- How: {metrics.get('method')}, options {metrics.get('options') or 'default'}, "
                  f"{metrics.get('steps')} steps of {metrics.get('batch_size')} rows x {metrics.get('seq_len')} "
                  f"tokens, learning rate {metrics.get('lr')} ({metrics.get('preset')} preset, seed {metrics.get('seed')})",
                  f"- Held-out loss: {before.get('loss', float('nan')):.3f} before, {after.get('loss', float('nan')):.3f} after", ""]
    lines += [f"Merged: the largest logit difference from the tuned model on a test sentence is "
              f"{report['max_logit_diff']:.2e} (float rounding of W + B A)."]
    if "max_logit_diff_vs_fp32_base" in report:
        lines += ["", "QLoRA: merged onto the dequantized 4-bit base, as it trained. The same adapter on the "
                  f"original fp32 base gives logits up to {report['max_logit_diff_vs_fp32_base']:.3f} away: "
                  "the rounding of the 4-bit base."]
    lines += ["", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
              "model = AutoModelForCausalLM.from_pretrained('path/to/this/folder')",
              "tokenizer = AutoTokenizer.from_pretrained('path/to/this/folder')", "```", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# GGUF, for llama.cpp and Ollama
# ---------------------------------------------------------------------------------------------
def source_gguf(base: str) -> Path:
    """The embedded base model's own GGUF file: its metadata and tokenizer are what llama.cpp expects."""
    from labs.models import MODELS, package_path
    spec = MODELS.get(base)
    if spec is None or not spec.is_gguf:
        raise ValueError(f"GGUF export copies the metadata and tokenizer of the base model's own GGUF file; "
                         f"{base!r} has none here (embedded GGUF models: "
                         f"{', '.join(n for n, s in MODELS.items() if s.is_gguf)})")
    return package_path(base)


def _permute(w: torch.Tensor, heads: int) -> torch.Tensor:
    """llama.cpp's rotary layout for q/k rows: each head's two halves interleaved (what its converter does)."""
    rows = w.shape[0]
    return w.reshape(heads, 2, rows // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)  # (rows, D)


def gguf_tensors(model: nn.Module, n_blocks: int, heads: int, kv_heads: int):
    """(GGUF name, fp32 numpy array) of every tensor, in llama.cpp's names and layout."""
    import gguf
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_blocks)
    tied = getattr(model.config, "tie_word_embeddings", False)
    for name, tensor in model.state_dict().items():
        if tied and name == "lm_head.weight":
            continue    # llama.cpp reuses token_embd when the file has no output.weight
        target = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if target is None:
            raise ValueError(f"no GGUF name for tensor {name!r}: GGUF export knows the Llama family only")
        w = tensor.detach().float().cpu()
        if name.endswith("q_proj.weight"):
            w = _permute(w, heads)
        elif name.endswith("k_proj.weight"):
            w = _permute(w, kv_heads)
        yield target, w.numpy()


def write_gguf(folder, out, qtype: str = "f16", base: str = "smollm2-135m") -> dict:
    """A GGUF file of the merged model in `folder` (from export_merged), and an Ollama Modelfile beside it."""
    import gguf
    from transformers import AutoModelForCausalLM
    if qtype not in GGUF_TYPES:
        raise ValueError(f"--type {qtype!r} is not one of {', '.join(GGUF_TYPES)}")
    out, source = Path(out), gguf.GGUFReader(source_gguf(base))
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    arch = source.fields["general.architecture"].contents()
    if arch != "llama":
        raise ValueError(f"GGUF export knows the Llama family only; the base is {arch!r}")
    c = model.config

    def write(tmp: str) -> None:
        writer = gguf.GGUFWriter(tmp, arch)
        for field in source.fields.values():
            if field.name.startswith("GGUF.") or field.name in ("general.architecture", "general.file_type",
                                                                "general.quantization_version", "general.name"):
                continue
            sub = field.types[1] if len(field.types) > 1 else None
            writer.add_key_value(field.name, field.contents(), field.types[0], sub_type=sub)
        writer.add_name(f"{Path(folder).name} (PEFT Lab export)")
        writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if qtype == "f16" else gguf.LlamaFileType.MOSTLY_Q8_0)
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        for name, w in gguf_tensors(model, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads):
            if w.ndim == 1:                        # norms stay f32, as llama.cpp keeps them
                writer.add_tensor(name, w)
            elif qtype == "f16":
                writer.add_tensor(name, w.astype("float16"))
            else:
                kind = gguf.GGMLQuantizationType.Q8_0
                writer.add_tensor(name, gguf.quants.quantize(w, kind), raw_dtype=kind)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    write_atomically(out, write)
    modelfile = write_atomically(out.parent / "Modelfile", ollama_modelfile(out.name, source))
    return {"gguf": str(out), "type": qtype, "bytes": out.stat().st_size, "modelfile": str(modelfile)}


def ollama_modelfile(gguf_name: str, source) -> str:
    """Ollama's recipe: the file, the chat template in Ollama's Go template syntax, the stop token."""
    template = source.fields["tokenizer.chat_template"].contents() if "tokenizer.chat_template" in source.fields else ""
    lines = [f"# ollama create my-model -f Modelfile && ollama run my-model", f"FROM ./{gguf_name}"]
    if "<|im_start|>" in template:      # ChatML (SmolLM2, Qwen): written out in Ollama's template language
        system = re.search(r"<\|im_start\|>system\n(.*?)<\|im_end\|>", template)
        lines += ['TEMPLATE """{{- if .System }}<|im_start|>system', "{{ .System }}<|im_end|>", "{{ end }}",
                  "{{- range .Messages }}<|im_start|>{{ .Role }}", "{{ .Content }}<|im_end|>", "{{ end }}",
                  '<|im_start|>assistant', '"""']
        if system:
            lines.append(f'SYSTEM """{system.group(1)}"""')
        lines.append('PARAMETER stop "<|im_end|>"')
    else:
        lines.append("# the chat template travels inside the GGUF file (tokenizer.chat_template)")
    lines.append("PARAMETER temperature 0")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="labs export", description="Merge a run into a plain transformers "
                                "folder (--merged), and write a GGUF file for llama.cpp / Ollama (--gguf).")
    p.add_argument("run", help="a run folder of labs finetune, or an adapter folder")
    p.add_argument("--merged", default=None, metavar="OUT", help="the merged folder to write (must not exist)")
    p.add_argument("--gguf", default=None, metavar="FILE.gguf", help="also a GGUF file (and a Modelfile beside it)")
    p.add_argument("--type", default="f16", choices=GGUF_TYPES, help="GGUF tensor type (default: f16)")
    p.add_argument("--impl", default=None, choices=("labs", "solutions"))
    args = p.parse_args(argv)
    if not args.merged and not args.gguf:
        raise ValueError("nothing to export: give --merged OUT, --gguf FILE.gguf, or both")
    from transformers.utils import logging
    logging.disable_progress_bar()
    if args.merged:
        return _export(args, args.merged, keep=True)
    Path(args.gguf).parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=Path(args.gguf).parent, prefix=".merged-") as tmp:  # --gguf alone
        return _export(args, Path(tmp) / "merged", keep=False)


def _export(args, merged, keep: bool) -> int:
    report = export_merged(args.run, merged, args.impl)
    where = f"into {report['folder']} ({report['bytes'] / 2**20:.1f} MiB)" if keep else "(for the GGUF file only)"
    print(f"merged {report['method']} {where}; largest logit difference from the tuned model: "
          f"{report['max_logit_diff']:.2e}")
    if "max_logit_diff_vs_fp32_base" in report:
        print(f"  QLoRA: merged onto the dequantized 4-bit base; the same adapter on the fp32 base differs by "
              f"up to {report['max_logit_diff_vs_fp32_base']:.3f} in the logits (the 4-bit rounding)")
    if args.gguf:
        written = write_gguf(merged, args.gguf, args.type, report["base"])
        print(f"wrote {written['gguf']} ({written['type']}, {written['bytes'] / 2**20:.1f} MiB) and "
              f"{written['modelfile']}")
    return 0
