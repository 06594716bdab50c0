"""What `labs export` writes for a LoRA run on SmolLM2-135M: bytes on disk and logit differences.

    python benchmarks/export_sizes.py                       # a fresh quick LoRA run on data/sample_chat.jsonl
    python benchmarks/export_sizes.py --run runs/mine       # an existing run folder

Printed: the merged safetensors folder and the GGUF files (f16, q8_0) in MiB, and the largest
absolute logit difference (and the share of positions whose next-token choice agrees) of the merged
model against the tuned one, and of each GGUF file (read back with transformers' GGUF loader)
against the merged model, on a few sentences.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

SENTENCES = ["Convert 3 hours to minutes.", "How many grams are in 15 kilograms?",
             "It is a truth universally acknowledged, that a single man in possession of a good fortune"]


@torch.no_grad()
def all_logits(model, tokenizer) -> list[torch.Tensor]:
    return [model(**tokenizer(s, return_tensors="pt")).logits.float() for s in SENTENCES]   # [(1, T, V)]


def compare(a: list[torch.Tensor], b: list[torch.Tensor]) -> str:
    diff = max((x - y).abs().max().item() for x, y in zip(a, b))
    same = torch.cat([x.argmax(-1).eq(y.argmax(-1)).flatten() for x, y in zip(a, b)]).float().mean().item()
    return f"largest logit difference {diff:.2e}, same next token at {same:.1%} of positions"


def main() -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from labs.export import export_merged, write_gguf
    from labs.finetune import run_finetune
    from labs.generate import load_tuned
    torch.set_num_threads(1)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default=None, help="a run folder (default: a fresh quick LoRA run)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="export-sizes-"))
    run = Path(args.run) if args.run else work / "run"
    if not args.run:
        run_finetune("lora", "smollm2-135m", task="data/sample_chat.jsonl", preset="quick", out=run, progress=False)
    tuned = load_tuned(run)
    tuned_logits = all_logits(tuned.model, tuned.tokenizer)
    export_merged(run, work / "merged")
    tok = AutoTokenizer.from_pretrained(work / "merged")
    merged = all_logits(AutoModelForCausalLM.from_pretrained(work / "merged").eval(), tok)
    size = (work / "merged" / "model.safetensors").stat().st_size
    print(f"merged safetensors (fp32): {size / 2**20:7.1f} MiB; vs tuned: {compare(merged, tuned_logits)}")
    for qtype in ("f16", "q8_0"):
        out = work / qtype / "model.gguf"
        written = write_gguf(work / "merged", out, qtype)
        back = AutoModelForCausalLM.from_pretrained(out.parent, gguf_file=out.name, dtype=torch.float32).eval()
        print(f"GGUF {qtype:4s}: {written['bytes'] / 2**20:7.1f} MiB ({written['bytes'] / size:.2f} of the merged "
              f"safetensors); vs merged: {compare(all_logits(back, tok), merged)}")
    print(f"files under {work}")


if __name__ == "__main__":
    main()
