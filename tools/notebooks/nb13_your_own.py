"""Build notebooks/13_your_own_finetune.ipynb (committed without outputs).

    python tools/notebooks/nb13_your_own.py
"""
from __future__ import annotations

from nbtools import ROOT, main

OUT = ROOT / "notebooks" / "13_your_own_finetune.ipynb"

CELLS = [
    ("md", r"""
# 13 · Your own fine-tune: your data, talking to the result, shipping it

Twelve notebooks trained on the course's own tasks. This one goes end to end with **your** data, the
way you would outside the course:

1. a data file in one of the shapes `labs finetune --task FILE` reads, checked and split;
2. a LoRA fine-tune on it (the quick preset: a few minutes on a laptop CPU);
3. the model's answers before and after, as `labs generate` prints them;
4. the adapter merged into a plain transformers folder, reloaded with no course code;
5. a GGUF file for llama.cpp and Ollama, in 16 and 8 bits, with its sizes and what the rounding costs.

The same from a terminal:

    labs finetune --method lora --task my_data.jsonl --out runs/mine
    labs generate runs/mine --prompt "Convert 3 hours to minutes." --compare-base
    labs export runs/mine --merged exported/mine --gguf exported/mine.gguf --type q8_0"""),
    ("code", r"""
import json
import shutil
import tempfile
from pathlib import Path

import torch

from labs.data import DATA_DIR, get_task, load_examples
from labs.export import export_merged, logits, write_gguf
from labs.finetune import run_finetune
from labs.generate import Sampling, load_tuned, reply
from labs.models import load_model
from labs.presets import get_preset
from labs.user_data import DataError, report

torch.manual_seed(0)
workdir = Path(tempfile.mkdtemp(prefix="nb13-"))      # everything this notebook writes; removed at the end
sample = DATA_DIR / "sample_chat.jsonl"
for line in sample.read_text().splitlines()[:3]:
    print(line)"""),
    ("md", r"""
## 1. Your data, checked and split

`data/sample_chat.jsonl` holds 60 chats in the shape most chat datasets use: a list of `messages`,
each with a `role` (system, user, assistant) and its `content`. Each chat is formatted with the
model's own chat template, and the loss counts **only the assistant's turns**: the model learns to
answer, not to ask. Other shapes work the same way: `prompt`/`response` pairs (or
`instruction`/`output`, `question`/`answer`), `text` alone (language modelling), `text` + `label`
(classification), in `.jsonl`, `.json`, `.csv`, or plain `.txt` files.

The split into train / validation / test comes from a hash of each row, so adding rows never moves
the others. Before training, look at how many tokens the rows have against what the preset keeps:
a row longer than that is cut, and a cut answer teaches the model to stop mid-sentence."""),
    ("code", r"""
task = get_task(str(sample))
preset = get_preset("quick", n_probe=0, n_english=0)   # forgetting is notebook 11's subject: skipped here
_, tokenizer = load_model("smollm2-135m")
print(report(task, tokenizer, preset))"""),
    ("md", r"""
A mistake in the file is named by file, line and what is wrong, before anything loads or trains.
Here are three bad files, written on the fly:"""),
    ("code", r"""
bad_files = {
    "malformed.jsonl": '{"prompt": "a", "response": "b"}\n{"prompt": "c", "response": \n',
    "mixed.jsonl": '{"prompt": "a", "response": "b"}\n{"text": "just text"}\n',
    "no_answer.jsonl": '{"messages": [{"role": "user", "content": "hi"}]}\n',
}
for name, text in bad_files.items():
    (workdir / name).write_text(text)
    try:
        get_task(str(workdir / name))
    except DataError as err:
        print(str(err).replace(str(workdir) + "/", "")[:150], "\n")"""),
    ("md", r"""
## 2. A LoRA fine-tune on it

`run_finetune` is what `labs finetune` runs: it measures the base on the validation rows, trains,
measures again and saves the adapter into `out`."""),
    ("code", r"""
run = workdir / "run"
metrics = run_finetune("lora", "smollm2-135m", task=str(sample), preset=preset, out=run, progress=False)
print(f"adapter on disk: {metrics['saved_bytes'] / 2**20:.1f} MiB: {metrics['saved_files']}")"""),
    ("md", r"""
## 3. Answers before and after

`load_tuned` reads any run folder (every method), adapter folder (ours or peft's) or model folder;
`reply` formats the prompt with the chat template, decodes greedily and stops at the end of the turn
(`<|im_end|>`, which SmolLM2 also uses as padding). The prompts are the test split's: rows training
never saw."""),
    ("code", r"""
tuned = load_tuned(run)
base, _ = load_model("smollm2-135m")
short = Sampling(max_new_tokens=40)
tests = load_examples(str(sample), "test")
exact = {"base": 0, "tuned": 0}
for i, ex in enumerate(tests):
    answers = {"base": reply(base, tokenizer, ex["prompt"], short).text,
               "tuned": reply(tuned.model, tuned.tokenizer, ex["prompt"], short).text}
    for who, text in answers.items():
        exact[who] += text == ex["response"]
    if i < 3:
        print(f"> {ex['prompt']}\n  base:      {answers['base']}\n  tuned:     {answers['tuned']}\n"
              f"  reference: {ex['response']}\n")
print(f"answers equal to the reference, of {len(tests)} test rows: base {exact['base']}, tuned {exact['tuned']}")
del base"""),
    ("md", r"""
Sixteen steps of 8 rows are enough to change the **format** of the answers (one line,
"N unit = M unit."); whether the numbers in it are right is another matter for a 135M-parameter
model: the count above says how many answers match the reference word for word. A real run uses
more steps, more rows and a larger model (section 6).

## 4. Merged: a plain transformers folder

Merging bakes `W + (alpha / r) B A` into each adapted layer (notebook 05), so the folder is an
ordinary model: `AutoModelForCausalLM.from_pretrained` loads it anywhere, without the course or
peft. The export measures the largest logit difference between the merged model and the tuned one;
reloading below checks it again from disk."""),
    ("code", r"""
from transformers import AutoModelForCausalLM, AutoTokenizer

tuned_logits = logits(tuned.model, tuned.tokenizer)          # before merging: the tuned model as trained
merged_report = export_merged(run, workdir / "merged")
plain = AutoModelForCausalLM.from_pretrained(workdir / "merged").eval()
plain_tok = AutoTokenizer.from_pretrained(workdir / "merged")
reloaded = (logits(plain, plain_tok) - tuned_logits).abs().max().item()
print(f"merged folder: {merged_report['bytes'] / 2**20:.0f} MiB: "
      f"{sorted(p.name for p in (workdir / 'merged').iterdir())}")
print(f"largest logit difference, reloaded plain model vs tuned model: {reloaded:.1e}")
print("plain transformers answers:", reply(plain, plain_tok, tests[0]["prompt"], short).text)"""),
    ("md", r"""
## 5. GGUF for llama.cpp and Ollama

llama.cpp (and Ollama, built on it) reads one GGUF file: the architecture's numbers, the tokenizer
and chat template, and every tensor. The course copies the metadata and tokenizer from the embedded
model's own GGUF and writes the merged tensors, in f16 (16 bits a weight) or q8_0 (blocks of 32
8-bit weights sharing one f16 scale: 8.5 bits). Reading the q8_0 file back with transformers' GGUF
loader shows what its rounding costs in the logits."""),
    ("code", r"""
sizes = {"merged safetensors (fp32)": (workdir / "merged" / "model.safetensors").stat().st_size}
for qtype in ("f16", "q8_0"):
    sizes[f"GGUF {qtype}"] = write_gguf(workdir / "merged", workdir / qtype / "model.gguf", qtype)["bytes"]
for name, size in sizes.items():
    print(f"{name:28s} {size / 2**20:7.1f} MiB")
q8 = AutoModelForCausalLM.from_pretrained(workdir / "q8_0", gguf_file="model.gguf", dtype=torch.float32).eval()
q8_logits = logits(q8, plain_tok)
plain_logits = logits(plain, plain_tok)
print(f"q8_0 read back: largest logit difference {(q8_logits - plain_logits).abs().max().item():.3f}, "
      f"same next-token choice at {q8_logits.argmax(-1).eq(plain_logits.argmax(-1)).float().mean().item():.0%} of positions")
print((workdir / "q8_0" / "Modelfile").read_text())"""),
    ("md", r"""
With the file and its `Modelfile` on a machine that has them (neither runs here: no llama.cpp or
Ollama binaries in this course's environment):

    ollama create units -f Modelfile && ollama run units "Convert 3 hours to minutes."
    llama-cli -m model.gguf -cnv            # llama.cpp's chat, with the template from the file

## 6. A real run

| change | how |
|---|---|
| more steps, longer rows | `--preset laptop` (120 steps, 128 tokens) or `--preset gpu` (600 steps, 256 tokens, bf16) |
| a bigger model | `--model HuggingFaceTB/SmolLM2-360M-Instruct` (online once), or any local folder |
| your hardware | `--device cuda` (or `mps` on Apple silicon); QLoRA (`--method qlora`) for a large base on a small GPU |
| more data | a few hundred rows or more; watch the truncation line of the report |
| talk to it | `labs generate RUN --chat` |"""),
    ("code", r"""
shutil.rmtree(workdir)"""),
]


if __name__ == "__main__":
    main(CELLS, "own", OUT)
