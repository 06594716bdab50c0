"""Many LoRA adapters in one batch (labs.serving.MultiAdapterServer) against the alternatives, on
SmolLM2-135M: throughput against the number of distinct adapters in the batch, and memory.

    python benchmarks/multi_lora.py --threads 1 --out notebooks/recorded/multi-lora   # the recorded run
    python benchmarks/multi_lora.py --quick                                          # a smoke run

What is served: a batch of N rows (N = max(16, adapters)), row i asking for adapter i mod n, each
row a prompt of --prompt tokens followed by --new greedy tokens. Every adapter is LoRA r=8 on
q_proj and v_proj with non-zero random B factors (as after training; the values do not change
the cost). Five ways to serve it, timed in turns (order reversed every other round, medians):
- merged       one model with one adapter merged in, the whole batch at once: the floor (it serves
               one adapter only, whatever the rows ask);
- gather       MultiAdapterServer, mode "gather": base products once, each row's factors gathered;
- group        MultiAdapterServer, mode "group": base products once, one pair of thin products per
               adapter over its rows;
- swap         AdapterServer: rows grouped by adapter; for each adapter copy its factors in, then
               run its rows (with one row per adapter, as at 16 rows / 16 adapters, this is
               swapping per request);
- copies       one merged model per adapter, each running its own rows: the time of a server that
               holds n full copies (timed with one merged model standing in for each copy: 64
               copies of 538 MB would not fit in this machine's memory); its memory is n copies.
Prompt processing: tokens/s over the prompt forward (logits of the last position only, as a
server needs). Generation: tokens/s over the --new token-by-token steps that follow (KV cache).
Memory: the bytes held for 64 adapters (base + factors, + the stacked copy gathering uses)
against 64 merged copies (counted, not allocated). The machine may be shared: compare ratios
measured in the same run, not absolute figures across runs.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

COUNTS = (1, 2, 4, 8, 16, 32, 64)
VARIANTS = ("merged", "gather", "group", "swap", "copies")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a smoke run: adapters 1, 4, 16, one repetition")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (default: all cores)")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--counts", default=",".join(map(str, COUNTS)), help="numbers of distinct adapters")
    p.add_argument("--rows", type=int, default=16, help="batch rows N (at least the number of adapters)")
    p.add_argument("--prompt", type=int, default=16, help="prompt tokens per row T")
    p.add_argument("--new", type=int, default=8, help="generated tokens per row")
    p.add_argument("--reps", type=int, default=3, help="timed repetitions per variant (after one warm-up)")
    p.add_argument("--out", type=Path, default=None, help="folder for multi_lora.json and multi_lora.png")
    args = p.parse_args(argv)
    args.counts = [int(c) for c in args.counts.split(",")]
    if args.quick:
        args.counts, args.reps, args.new = [1, 4, 16], 1, 4
    return args


def make_adapters(model, count: int, folder: Path) -> dict[str, Path]:
    """`count` LoRA adapters (r=8, q and v) saved in the PEFT layout, each with its own random factors."""
    from labs.impl import technique
    from labs.peft_format import save_adapter
    lora = technique("lora")
    adapted = lora.apply(copy.deepcopy(model), lora.LoRAConfig(r=8, alpha=16))
    folders = {}
    with torch.no_grad():
        for i in range(count):
            g = torch.Generator().manual_seed(i)
            for _, layer in lora.lora_layers(adapted):
                layer.lora_A.normal_(std=0.02, generator=g)
                layer.lora_B.normal_(std=0.02, generator=g)
            folders[f"task{i:02d}"] = save_adapter(adapted, folder / f"task{i:02d}")
    return folders


def run(model, ids, new: int) -> tuple[float, float]:
    """(prompt seconds, generation seconds): one prompt forward, then `new` greedy steps on the cache."""
    start = time.perf_counter()
    out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
    token = out.logits[:, -1].argmax(-1, keepdim=True)                       # (N, 1)
    prompt = time.perf_counter()
    for _ in range(new):
        out = model(input_ids=token, cache=out.cache, use_cache=True)
        token = out.logits[:, -1].argmax(-1, keepdim=True)
    return prompt - start, time.perf_counter() - prompt


def variants(merged, multi, swap, names, ids, new):
    """Each way of serving the batch, as a function returning (prompt seconds, generation seconds)."""
    from labs.impl import technique
    groups = technique("multi_lora").group_rows(names)       # {adapter: its rows}, exercise 10.2

    def mixed(server):
        def serve():
            start = time.perf_counter()
            server.plan(names)                                # counted: a real server plans each batch
            planned = time.perf_counter() - start
            prompt, gen = run(server.model, ids, new)
            return prompt + planned, gen
        return serve

    def one_per_adapter(switch, model):
        def serve():
            prompt = gen = 0.0
            for name, rows in groups.items():
                start = time.perf_counter()
                switch(name)                                  # counted with the prompt it precedes
                switched = time.perf_counter() - start
                p, g = run(model, ids[rows], new)
                prompt, gen = prompt + switched + p, gen + g
            return prompt, gen
        return serve

    return {"merged": lambda: run(merged, ids, new), "gather": mixed(multi["gather"]),
            "group": mixed(multi["group"]), "swap": one_per_adapter(swap.use, swap.model),
            "copies": one_per_adapter(lambda name: None, merged)}


def measure(fns: dict, reps: int) -> dict[str, tuple[float, float]]:
    """Median (prompt, generation) seconds per variant, taken in turns, order reversed every other round."""
    times = {name: [] for name in fns}
    order = list(fns)
    for i in range(reps + 1):                                  # round 0 is a warm-up
        for name in (order if i % 2 == 0 else order[::-1]):
            result = fns[name]()
            if i:
                times[name].append(result)
    return {name: (statistics.median(p for p, _ in t), statistics.median(g for _, g in t))
            for name, t in times.items()}


def memory(base_model, multi, count: int) -> dict[str, int]:
    from labs.memory import weight_bytes
    base = weight_bytes(base_model)
    factors = sum(multi.adapter_bytes().values())
    stacks = sum(t.numel() * t.element_size() for _, layer in multi.layers() for t in layer.stacked()[:2])
    return {"adapters": count, "base": base, "factors": factors, "gather_stacks": stacks,
            "multi_lora_total": base + factors + stacks, "merged_copies_total": count * base}


def plot(result: dict, path: Path) -> None:
    from matplotlib.ticker import NullFormatter, ScalarFormatter
    from labs import viz
    rows = result["rows"]
    counts = [r["adapters"] for r in rows]
    fig, axes = viz.new_figure(13, 4.2, ncols=3)
    for ax, phase in zip(axes[:2], ("prompt", "generation")):
        for variant in VARIANTS:
            ax.plot(counts, [r[f"{phase}_tokens_per_s"][variant] for r in rows], marker="o", label=variant)
        ax.set(xscale="log", yscale="log", xlabel="distinct adapters in the batch",
               ylabel="tokens / s", title=f"{phase} ({'prompt tokens' if phase == 'prompt' else 'new tokens'})")
        ax.set_xticks(counts, [str(c) for c in counts])
    ax = axes[2]
    for key, label in (("gather_vs_merged", "gather / merged time"), ("group_vs_merged", "group / merged time"),
                       ("swap_vs_best", "swap / best multi-LoRA time")):
        ax.plot(counts, [r["ratios"][key] for r in rows], marker="o", label=label)
    ax.axhline(1.3, color="grey", ls=":", lw=1)
    ax.axhline(4.0, color="grey", ls="--", lw=1)
    ax.set(xscale="log", yscale="log", xlabel="distinct adapters in the batch", ylabel="time ratio (prompt + generation)",
           title="ratios (targets at 16: <= 1.3, >= 4)")
    ax.set_xticks(counts, [str(c) for c in counts])
    for ax in axes:
        ax.legend(fontsize=7)
        ax.yaxis.set_major_formatter(ScalarFormatter())   # plain numbers on the log axes
        ax.yaxis.set_minor_formatter(NullFormatter())
    mem = result["memory"]
    fig.suptitle(f"SmolLM2-135M, {result['settings']['threads']} thread(s): memory for {mem['adapters']} adapters "
                 f"{mem['multi_lora_total'] / 1e9:.2f} GB vs {mem['merged_copies_total'] / 1e9:.1f} GB "
                 f"of merged copies", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    from labs.files import write_json
    from labs.impl import current_impl, technique
    from labs.models import load_model
    from labs.serving import AdapterServer, MultiAdapterServer
    model, _ = load_model(args.model)
    model.eval().requires_grad_(False)
    most = max(args.counts)
    with tempfile.TemporaryDirectory(prefix="multi-lora-") as tmp:
        folders = make_adapters(model, most, Path(tmp))
        multi = {mode: MultiAdapterServer(copy.deepcopy(model), mode=mode) for mode in ("gather", "group")}
        swap = AdapterServer(copy.deepcopy(model))
        for name, folder in folders.items():
            for server in (*multi.values(), swap):
                server.add(name, folder)
    lora = technique("lora")
    swap.use(next(iter(folders)))
    merged = lora.merge_and_unload(copy.deepcopy(swap.model))            # the first adapter, merged in
    mem = memory(model, multi["gather"], most)
    del model
    rows = []
    g = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for count in args.counts:
            n_rows = max(args.rows, count)
            names = [f"task{i % count:02d}" for i in range(n_rows)]
            ids = torch.randint(0, 49152, (n_rows, args.prompt), generator=g)     # (N, T)
            med = measure(variants(merged, multi, swap, names, ids, args.new), args.reps)
            row = {"adapters": count, "rows": n_rows, "seconds": {v: list(med[v]) for v in VARIANTS},
                   "prompt_tokens_per_s": {v: n_rows * args.prompt / med[v][0] for v in VARIANTS},
                   "generation_tokens_per_s": {v: n_rows * args.new / med[v][1] for v in VARIANTS}}
            total = {v: sum(med[v]) for v in VARIANTS}
            best = min(total["gather"], total["group"])
            row["ratios"] = {"gather_vs_merged": total["gather"] / total["merged"],
                             "group_vs_merged": total["group"] / total["merged"],
                             "swap_vs_best": total["swap"] / best, "copies_vs_best": total["copies"] / best,
                             "best_mode": "gather" if total["gather"] <= total["group"] else "group"}
            rows.append(row)
            print(f"{count:>3} adapters, {n_rows} rows | prompt tok/s " +
                  " ".join(f"{v} {row['prompt_tokens_per_s'][v]:7.0f}" for v in VARIANTS) +
                  " | gen tok/s " + " ".join(f"{v} {row['generation_tokens_per_s'][v]:6.1f}" for v in VARIANTS) +
                  " | " + " ".join(f"{k} {v:.2f}" for k, v in row["ratios"].items() if k != "best_mode"), flush=True)
    result = {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "command": f"LABS_IMPL={current_impl()} python " + " ".join(shlex.quote(a) for a in [f"benchmarks/{Path(__file__).name}",
                                                                        *(sys.argv[1:] if argv is None else argv)]),
              "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "machine": f"{os.cpu_count()} CPU cores (shared with other work), torch {torch.__version__}",
              "memory": mem, "rows": rows}
    print(f"memory for {most} adapters: base {mem['base'] / 1e6:.0f} MB + factors {mem['factors'] / 1e6:.1f} MB "
          f"+ gather stacks {mem['gather_stacks'] / 1e6:.1f} MB = {mem['multi_lora_total'] / 1e6:.0f} MB; "
          f"{most} merged copies {mem['merged_copies_total'] / 1e9:.1f} GB "
          f"({mem['merged_copies_total'] / mem['multi_lora_total']:.0f}x)")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        write_json(args.out / "multi_lora.json", result)
        plot(result, args.out / "multi_lora.png")
        print(f"wrote {args.out / 'multi_lora.json'} and {args.out / 'multi_lora.png'}")
    return result


if __name__ == "__main__":
    main()
