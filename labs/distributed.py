"""Several processes, one training loop: the glue between labs/train.py and Hugging Face accelerate.

    accelerate launch --config_file configs/accelerate/ddp.yaml --num_processes 2 -m labs finetune --method lora
    torchrun --nproc_per_node 2 -m labs finetune --method lora

The course never builds a distributed engine. The loop in labs/train.py speaks a few methods of
`accelerate.Accelerator` (prepare, backward, no_sync, clip_grad_norm_, reduce, gather and the
attributes device, process_index, num_processes, is_main_process). Under a launcher it gets a real
Accelerator, which wraps the model in DDP or FSDP and averages the gradients of all processes.
Without a launcher it gets `OneProcess`: the same methods in plain PyTorch, doing exactly what the
loop did before there was any launcher to think of, so a notebook's run stays bit for bit the same.

Data: every process walks the same stream of batches and keeps every N-th one, from its own rank
(`shard`): two processes with batch B each take one step on 2B rows, as accelerate's own data
loader sharding does.
"""
from __future__ import annotations

import itertools
import os
from contextlib import contextmanager, nullcontext
from typing import Iterable, Iterator

import torch
from torch import nn

# Set by every launcher we support: torchrun and `accelerate launch` with several processes set
# WORLD_SIZE; `accelerate launch` always sets ACCELERATE_MIXED_PRECISION, even for one process.
LAUNCHER_VARIABLES = ("WORLD_SIZE", "ACCELERATE_MIXED_PRECISION")


def launched() -> bool:
    """Whether a launcher (accelerate launch, torchrun) started this process."""
    return any(name in os.environ for name in LAUNCHER_VARIABLES)


class OneProcess:
    """The part of `accelerate.Accelerator` that train() uses, for one process without a launcher.

    Plain PyTorch: nothing is wrapped, nothing is moved, nothing is reduced.
    """
    num_processes, process_index, is_main_process = 1, 0, True
    distributed_type = "NO"

    def __init__(self, device: torch.device):
        self.device = device

    def prepare(self, model: nn.Module, optimizer: torch.optim.Optimizer):
        return model, optimizer

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def no_sync(self, model: nn.Module):
        return nullcontext()

    def clip_grad_norm_(self, parameters, max_norm: float) -> torch.Tensor:
        return torch.nn.utils.clip_grad_norm_(parameters, max_norm)

    def reduce(self, tensor: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
        return tensor

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor


def accelerator_for(model: nn.Module):
    """A real Accelerator under a launcher (it reads the launcher's settings), else OneProcess."""
    if not launched():
        from labs.train import model_device
        return OneProcess(model_device(model))
    from accelerate import Accelerator
    return _checked(Accelerator(cpu=_no_gpu()))


def _no_gpu() -> bool:
    """accelerate joins processes on the CPU (gloo) only when told to, and torchrun on a machine
    without a GPU does not tell it: each process would then train alone, on its own."""
    return not torch.cuda.is_available()


def _checked(state):
    """Refuse to go on when the launcher started N processes but they did not join up."""
    expected = int(os.environ.get("WORLD_SIZE", "1"))
    if state.num_processes != expected:
        raise RuntimeError(f"the launcher started {expected} processes but accelerate joined "
                           f"{state.num_processes}; each would train alone. Launch with "
                           "accelerate launch --config_file configs/accelerate/ddp.yaml or torchrun")
    return state


def is_fsdp(accelerator) -> bool:
    return str(getattr(accelerator, "distributed_type", "NO")).endswith("FSDP")


def trainable_units_policy(model: nn.Module):
    """An FSDP1 auto-wrap policy that gives trainable weights units of their own.

    With `use_orig_params: false` FSDP1 flattens each unit's own parameters into one FlatParameter,
    which must be all trainable or all frozen (and only then do frozen weights get no gradient). The
    policy of the published QLoRA-with-FSDP recipes (peft's fsdp_auto_wrap_policy) wraps each decoder
    layer and, apart, every leaf layer whose `weight` trains; the course's LoRA keeps its factors
    `lora_A`, `lora_B` on the wrapping layer itself, so this policy wraps every module that holds a
    trainable parameter of its own, and each frozen child of it (its base_layer) apart.
    """
    import functools

    from torch.distributed.fsdp.wrap import _or_policy, lambda_auto_wrap_policy, transformer_auto_wrap_policy

    owners = {id(m) for m in model.modules() if any(p.requires_grad for p in m.parameters(recurse=False))}
    frozen_children = {id(c) for m in model.modules() if id(m) in owners for c in m.children()
                       if not any(p.requires_grad for p in c.parameters())}
    layers = {type(m) for m in model.modules() if type(m).__name__ in (getattr(model, "_no_split_modules", None) or ())}
    return functools.partial(_or_policy, policies=[
        functools.partial(lambda_auto_wrap_policy, lambda_fn=lambda m: id(m) in owners | frozen_children),
        functools.partial(transformer_auto_wrap_policy, transformer_layer_cls=layers)])


def use_trainable_units(accelerator, model: nn.Module) -> None:
    """Under FSDP1 with use_orig_params false (configs/accelerate/fsdp_qlora.yaml), wrap with
    trainable_units_policy, as transformers' Trainer sets peft's policy for a peft model."""
    plugin = getattr(getattr(accelerator, "state", None), "fsdp_plugin", None)
    if is_fsdp(accelerator) and plugin is not None and getattr(plugin, "fsdp_version", 1) == 1 \
            and not plugin.use_orig_params:
        plugin.auto_wrap_policy = trainable_units_policy(model)


def shard(stream: Iterable[dict], rank: int, world_size: int) -> Iterator[dict]:
    """Batches rank, rank + N, rank + 2N, ... of `stream`: each process its own share of the data."""
    if world_size == 1:
        return iter(stream)
    return itertools.islice(stream, rank, None, world_size)


def all_agree(accelerator, flag: bool) -> bool:
    """True only where every process says True: all of them stop together, none waits forever."""
    if accelerator.num_processes == 1:
        return flag
    votes = accelerator.gather(torch.tensor([int(flag)], device=accelerator.device))
    return bool(votes.min().item())


@contextmanager
def say_who_stopped(accelerator, step: int):
    """A collective that fails (another process died, or lost its connection) says so in words.

    The run cannot go on: every process stops, and since files are written only after training,
    by the main process, atomically, nothing half-written is left behind.
    """
    try:
        yield
    except RuntimeError as err:
        if accelerator.num_processes == 1:
            raise
        raise RuntimeError(f"process {accelerator.process_index} of {accelerator.num_processes} stopped at "
                           f"step {step}: {str(err).splitlines()[0] if str(err) else type(err).__name__}. "
                           "If another process died first, the launcher's 'Root Cause' names it; "
                           "nothing was written") from err


def mean_across(accelerator, value: float) -> float:
    """The mean of a number over all processes (each process's loss -> the step's loss)."""
    if accelerator.num_processes == 1:
        return value  # no tensor round trip: one process keeps its float exactly
    tensor = torch.tensor(value, dtype=torch.float64, device=accelerator.device)
    return accelerator.reduce(tensor, reduction="mean").item()


# ---------------------------------------------------------------------------------------------
# For the code around the loop (labs finetune): who writes, and on which device
# ---------------------------------------------------------------------------------------------
def refuse_fsdp(what: str) -> None:
    """Refuse to run code that reads the whole model in one process when FSDP has sharded it.

    Under FSDP each process holds a shard of every weight: evaluating or saving "the model" on the
    main process would read a shard as if it were the whole. train() itself is fine under FSDP.
    """
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true":
        raise ValueError(f"{what} does not run under FSDP yet: it evaluates and saves the model in one "
                         "process, and FSDP leaves each process only a shard. Use configs/accelerate/ddp.yaml, "
                         "or call labs.train.train() from your own script and save what "
                         "accelerator.get_state_dict(model) gathers (README, Scaling out)")


def _state():
    from accelerate import PartialState
    return _checked(PartialState(cpu=_no_gpu()))


def world_size() -> int:
    return _state().num_processes if launched() else 1


def is_main_process() -> bool:
    """Only the main process writes files, prints summaries and draws plots."""
    return _state().is_main_process if launched() else True


def local_device() -> str | None:
    """This process's own device under a launcher (cuda:LOCAL_RANK, or cpu); None without one."""
    return str(_state().device) if launched() else None
