"""Several processes train as one: train() under accelerate launch and torchrun (DDP on 2 CPU processes, gloo).

- Without a launcher train() is plain PyTorch, bit for bit (and so is a one-process Accelerator).
- Two processes with batch B give the loss curve and the trained LoRA adapter of one process with
  batch 2B, within float tolerance (LOSS_RTOL, ADAPTER_ATOL): DDP averages the two gradients,
  where one process takes the mean over all 2B rows; the sums are rounded in another order.
- labs finetune under a launcher writes its adapter and metrics.json once, from the main process.
- A process that dies fails the run, the launcher names it, and nothing half-written is left.

This file is also the script each launched process runs: `python tests/test_distributed.py MODE OUT MODEL_DIR`.
"""
from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
if __name__ == "__main__":  # a launched process: make `import conftest` and `import labs` work
    sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]

import conftest  # noqa: E402
from labs import distributed  # noqa: E402
from labs.train import TrainConfig, lr_at, make_optimizer, train  # noqa: E402

VOCAB, ROWS, TOKENS = 64, 4, 12      # ROWS = B: rows per process per micro-batch
CFG = TrainConfig(lr=1e-2, max_steps=4, grad_accum=2, weight_decay=0.1)
LOSS_RTOL = 1e-6                     # relative, per step's loss (measured: 6e-8)
ADAPTER_ATOL = 1e-6                  # absolute, per LoRA weight of size up to 0.2 (measured: 4e-8)
LAUNCH_TIMEOUT = 150                 # seconds: a launch takes 15-40 s on 2 busy cores


# ---------------------------------------------------------------------------------------------
# What every process builds: the same tiny Llama with the same LoRA, and the same batches
# ---------------------------------------------------------------------------------------------
def lora_model(dropout: float = 0.0):
    from labs.impl import technique
    lora = technique("lora", "solutions")
    model = conftest.tiny_llama(VOCAB, 32, 64, max_position_embeddings=64, tie_word_embeddings=False,
                                attention_dropout=dropout, seed=0, eval_mode=False)
    torch.manual_seed(1)  # LoRA's A matrices: the same start in every process
    return lora.apply(model, lora.LoRAConfig(r=4, alpha=8, target_modules=("q_proj", "v_proj")))


def whole_batches(n: int = CFG.max_steps * CFG.grad_accum) -> list[dict]:
    """The micro-batches of one process with 2B rows, every row the same length (equal token counts)."""
    out = []
    for seed in range(n):
        ids = torch.randint(0, VOCAB, (2 * ROWS, TOKENS), generator=torch.Generator().manual_seed(seed))  # (2B, T)
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()})
    return out


def half_batches() -> list[dict]:
    """The same rows as B-row batches, in the order two processes share them (rank r takes every
    other one from r): process 0 gets the first half of each whole batch, process 1 the second."""
    return [{k: v[i * ROWS:(i + 1) * ROWS] for k, v in whole.items()} for whole in whole_batches() for i in (0, 1)]


def lora_weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


# ---------------------------------------------------------------------------------------------
# One process, no launcher: exactly what the loop always did
# ---------------------------------------------------------------------------------------------
def plain_pytorch_loop(model, batches: list[dict], cfg: TrainConfig) -> list[float]:
    """The loop as plain PyTorch: the reference a one-process run must match bit for bit."""
    torch.manual_seed(cfg.seed)
    optimizer = make_optimizer(model, cfg)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    model.train()
    stream, losses = iter(batches * cfg.max_steps), []
    for step in range(1, cfg.max_steps + 1):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        total = 0.0
        for _ in range(cfg.grad_accum):
            loss = model(**next(stream)).loss
            (loss / cfg.grad_accum).backward()
            total += loss.item() / cfg.grad_accum
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(total)
    return losses


def test_without_a_launcher_train_is_plain_pytorch_bit_for_bit():
    start = lora_model(dropout=0.2)  # dropout: the random stream must be consumed in the same order too
    a, b = copy.deepcopy(start), copy.deepcopy(start)
    expected = plain_pytorch_loop(a, whole_batches(), CFG)
    history = train(b, whole_batches(), CFG, progress=False)
    assert history.losses == expected and history.world_size == 1
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))


def test_an_accelerator_in_one_process_changes_nothing():
    from accelerate import Accelerator
    start = lora_model(dropout=0.2)
    a, b = copy.deepcopy(start), copy.deepcopy(start)
    plain = train(a, whole_batches(), CFG, progress=False)
    through = train(b, whole_batches(), CFG, progress=False, accelerator=Accelerator(cpu=True))
    assert plain.losses == through.losses
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    assert not distributed.launched(), "making an Accelerator must not make later runs look launched"


def test_each_process_draws_its_own_dropout():
    class SecondProcess(distributed.OneProcess):
        process_index = 1  # the seed is cfg.seed + rank

    start = lora_model(dropout=0.2)
    first = train(copy.deepcopy(start), whole_batches(), CFG, progress=False)
    second = train(copy.deepcopy(start), whole_batches(), CFG, progress=False,
                   accelerator=SecondProcess(torch.device("cpu")))
    assert first.losses != second.losses


def test_processes_that_did_not_join_up_are_refused(monkeypatch):
    from types import SimpleNamespace
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert distributed.launched()
    with pytest.raises(RuntimeError, match="started 2 processes but accelerate joined 1; each would train alone"):
        distributed._checked(SimpleNamespace(num_processes=1))


def test_each_process_takes_every_nth_batch():
    assert list(distributed.shard(range(7), 0, 2)) == [0, 2, 4, 6]
    assert list(distributed.shard(range(7), 1, 2)) == [1, 3, 5]
    assert list(distributed.shard(range(3), 0, 1)) == [0, 1, 2]


# ---------------------------------------------------------------------------------------------
# Two processes
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random Llama with a word-level tokenizer, as a local model folder for labs finetune."""
    return conftest.save_tiny_llama_folder(tmp_path_factory.mktemp("tiny-llama"))


def launch(launcher: list[str], mode: str, out: Path, model_dir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT),
           "LABS_IMPL": "solutions", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "MPLBACKEND": "Agg"}
    for name in distributed.LAUNCHER_VARIABLES:  # the launcher sets them, not whoever runs the tests
        env.pop(name, None)
    return subprocess.run([sys.executable, "-m", *launcher, __file__, mode, str(out), str(model_dir)], env=env,
                          cwd=ROOT, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT)


ACCELERATE_DDP = ["accelerate.commands.launch", "--config_file", str(ROOT / "configs/accelerate/ddp.yaml")]
TORCHRUN = ["torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def leftovers(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if p.name.endswith(".tmp")]


@pytest.mark.slow
def test_two_processes_train_as_one_with_twice_the_batch(tmp_path, tiny_model_dir):
    run = launch(ACCELERATE_DDP, "train", tmp_path, tiny_model_dir)
    assert run.returncode == 0, run.stderr[-3000:]
    # the loop: the same curve and the same adapter as one process with 2B rows per batch
    model = lora_model()
    one = train(model, whole_batches(), CFG, progress=False)
    two = json.loads((tmp_path / "train.json").read_text())
    assert two["world_size"] == 2 and one.world_size == 1
    assert two["losses"] == pytest.approx(one.losses, rel=LOSS_RTOL)
    trained = torch.load(tmp_path / "lora.pt")
    for name, weight in lora_weights(model).items():
        torch.testing.assert_close(trained[name], weight, atol=ADAPTER_ATOL, rtol=0, msg=name)
    # labs finetune: metrics.json and the adapter come from the main process alone
    metrics = json.loads((tmp_path / "finetune" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["steps"] == 2
    assert all((tmp_path / "finetune" / f).is_file() for f in metrics["saved_files"])
    assert run.stdout.count("lora fine-tune of") == 1, "the summary should be printed by one process"
    assert "rank 1 saved []" in run.stdout, run.stdout[-2000:]
    assert not leftovers(tmp_path)


@pytest.mark.slow
def test_a_process_that_dies_fails_the_run_and_leaves_nothing_half_written(tmp_path, tiny_model_dir):
    run = launch(TORCHRUN, "die", tmp_path, tiny_model_dir)
    assert run.returncode != 0
    assert "rank 1 dies mid-training" in run.stdout
    # torchrun's report names the process that died first, and how
    assert re.search(r"rank\s*:\s*1 ", run.stderr) and re.search(r"exitcode\s*:\s*3 ", run.stderr), run.stderr[-3000:]
    written = [p for p in (tmp_path / "finetune").rglob("*")] if (tmp_path / "finetune").exists() else []
    assert not written, f"a failed run left {written}"
    assert not leftovers(tmp_path)


def test_accelerate_configs_parse():
    from accelerate.commands.config.config_args import load_config_from_file
    folder = ROOT / "configs" / "accelerate"
    configs = {p.stem: load_config_from_file(str(p)) for p in sorted(folder.glob("*.yaml"))}
    assert {"ddp", "fsdp_lora", "fsdp_qlora"} <= set(configs)
    assert configs["ddp"].num_processes == 2 and str(configs["ddp"].distributed_type).endswith("MULTI_GPU")
    for name in ("fsdp_lora", "fsdp_qlora"):
        assert str(configs[name].distributed_type).endswith("FSDP"), name
    # FSDP2 shards each parameter alone; FSDP1 as the QLoRA recipes use it: no shared flat parameters
    assert configs["fsdp_lora"].fsdp_config.get("fsdp_version") == 2
    qlora = configs["fsdp_qlora"].fsdp_config
    assert qlora.get("fsdp_version") == 1 and qlora.get("fsdp_use_orig_params") is False


def flat_parameters(model, policy) -> list[set[bool]]:
    """The requires_grad values inside each FSDP1 flat parameter that `policy` would make: a unit
    (the root, or a module the policy wraps) holds the parameters no nested unit holds."""
    units = [model] + [m for m in model.modules() if m is not model
                       and policy(module=m, recurse=False, nonwrapped_numel=1)]
    inner = {id(u): [v for v in units if v is not u and any(v is d for d in u.modules())] for u in units}
    flats = []
    for unit in units:
        nested = {id(p) for v in inner[id(unit)] for p in v.parameters()}
        flats.append({p.requires_grad for p in unit.parameters() if id(p) not in nested})
    return flats


def test_fsdp1_wrap_policy_puts_lora_factors_in_units_of_their_own():
    import functools

    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy
    model = lora_model()
    layer_cls = {type(model.model.layers[0])}
    by_layer = flat_parameters(model, functools.partial(transformer_auto_wrap_policy, transformer_layer_cls=layer_cls))
    assert {True, False} in by_layer, "one unit per decoder layer mixes frozen and LoRA weights"
    flats = flat_parameters(model, distributed.trainable_units_policy(model))
    assert all(len(f) == 1 for f in flats if f), "every flat parameter all frozen or all trainable"
    assert sum(f == {True} for f in flats) == 2 * 2, "one LoRA unit per adapted layer (q and v, 2 layers)"


def test_labs_finetune_refuses_fsdp_clearly(monkeypatch):
    from labs.finetune import run_finetune
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what accelerate launch sets with an FSDP config
    with pytest.raises(ValueError, match="labs finetune does not run under FSDP yet.*ddp.yaml"):
        run_finetune("lora", "smollm2-135m", preset="quick", progress=False)


# ---------------------------------------------------------------------------------------------
# Memory per GPU: DDP replicates, FSDP shards
# ---------------------------------------------------------------------------------------------
def test_ddp_replicates_and_fsdp_shards_the_memory_per_gpu():
    from labs.memory import estimate_memory, per_gpu
    full = estimate_memory(7e9, "full", weight_bytes="bf16", master_weights=True,
                           batch_size=1, seq_len=512, hidden=4096, layers=32)  # 2 + 2 + 12 bytes per parameter
    assert per_gpu(full, 8, "ddp") == full, "DDP: every GPU holds everything one GPU would"
    sharded = per_gpu(full, 8, "fsdp", layers=32)
    assert sharded.gradients == full.gradients / 8 and sharded.optimizer == full.optimizer / 8
    assert sharded.weights == pytest.approx(7e9 * 2 / 8 + 7e9 * 2 / 32)  # a shard + one gathered layer
    assert sharded.activations == full.activations, "activations belong to each GPU's own batch"
    assert full.gb("weights") + full.gb("gradients") + full.gb("optimizer") == pytest.approx(112)
    assert per_gpu(full, 1, "fsdp", layers=32) == full
    # QLoRA on 70B: the 4-bit base is what FSDP shards; the LoRA states are small either way
    qlora = estimate_memory(70e9, "lora", trainable_params=100_000_000, weight_bytes="nf4-dq")
    assert per_gpu(qlora, 2, "fsdp").weights == pytest.approx(qlora.weights / 2)
    assert per_gpu(qlora, 2, "ddp").total == qlora.total > 35e9


def test_readme_per_gpu_table_is_what_the_memory_model_says():
    from labs.memory import estimate_memory, per_gpu
    runs = {"full fine-tuning of 7B": (estimate_memory(7e9, "full", weight_bytes="bf16", master_weights=True), 32),
            "LoRA r=16 on 7B": (estimate_memory(7e9, "lora", trainable_params=40_000_000, weight_bytes="bf16"), 32),
            "QLoRA r=16 on 70B": (estimate_memory(70e9, "lora", trainable_params=200_000_000, weight_bytes="nf4-dq"), 80),
            "full fine-tuning of 70B": (estimate_memory(70e9, "full", weight_bytes="bf16", master_weights=True), 80)}
    rows = [line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("| ") and "GPU" not in line]
    for name, (est, layers) in runs.items():
        row = next(r for r in rows if r.startswith(f"| {name}"))
        numbers = [float(cell) for cell in row.strip("|").split("|")[1:]]
        assert numbers == [round(est.gb(), 1), round(per_gpu(est, 8, "ddp").gb(), 1),
                           round(per_gpu(est, 2, "fsdp", layers=layers).gb(), 1),
                           round(per_gpu(est, 8, "fsdp", layers=layers).gb(), 1)], name


@pytest.mark.parametrize("bad, match", [(dict(gpus=0), "gpus"), (dict(gpus=2, strategy="zero"), "strategy"),
                                        (dict(gpus=2, layers=0), "layers")])
def test_per_gpu_refuses_bad_input_by_name(bad, match):
    from labs.memory import estimate_memory, per_gpu
    with pytest.raises(ValueError, match=match):
        per_gpu(estimate_memory(1e9, "full"), **bad)


# ---------------------------------------------------------------------------------------------
# The launched process
# ---------------------------------------------------------------------------------------------
def worker(mode: str, out: Path, model_dir: Path) -> None:
    from labs.files import write_atomically, write_json
    from labs.finetune import run_finetune
    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    if mode == "train":
        model = lora_model()
        history = train(model, half_batches(), CFG, progress=False)
        if distributed.is_main_process():
            write_atomically(out / "lora.pt", lambda tmp: torch.save(lora_weights(model), tmp))
            write_json(out / "train.json", {"losses": history.losses, "world_size": history.world_size})
    else:  # "die": process 1 exits mid-run, as a process killed for memory would
        import labs.data
        batches = labs.data.batches

        def dying(*args, **kwargs):
            for i, batch in enumerate(batches(*args, **kwargs)):
                if rank == 1 and i == 2:
                    print("rank 1 dies mid-training", flush=True)
                    os._exit(3)
                yield batch
        labs.data.batches = dying
    sys.path.insert(0, str(ROOT / "tests"))
    from test_finetune import tiny_preset
    metrics = run_finetune("lora", str(model_dir), task="define", preset=tiny_preset(max_steps=2),
                           out=out / "finetune", progress=False, impl="solutions")
    print(f"rank {rank} saved {metrics['saved_files'] if rank else '...'}", flush=True)


if __name__ == "__main__":
    worker(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]))
