"""Where training memory goes: an analytic model, and measurements to hold it against.

Training memory has four parts:
  weights      every parameter of the model, at its storage precision
  gradients    one per *trainable* parameter (frozen weights have none)
  optimizer    AdamW keeps two fp32 moments per trainable parameter (+ an fp32 master copy
               under mixed precision)
  activations  what the forward pass keeps for the backward pass; grows with B x T

PEFT attacks gradients and optimizer states (few trainable parameters); QLoRA also shrinks the
weights (4-bit). Activations grow with the input (B x T) and depend on where the trainable
parameters sit: nothing below the lowest trainable parameter is kept, and a frozen linear layer
keeps nothing of its own (measure_activations counts it; estimate_memory assumes every parameter
trains). Gradient checkpointing trades them for recomputation. Several GPUs: `per_gpu` (DDP
replicates all of it, FSDP shards weights, gradients and optimizer state). Nothing here prints;
everything returns numbers or dataclasses.
"""
from __future__ import annotations

import multiprocessing
import sys
import traceback
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from labs.methods import get_method
from labs.train import batch_loss

# Bytes per parameter. NF4 stores 4 bits plus one fp32 absmax per block of 64 (0.5 + 4/64);
# double quantization stores that absmax in 8 bits plus one fp32 per 256 blocks (Dettmers et al. 2023).
BYTES_PER_PARAM = {
    "fp32": 4.0, "float32": 4.0, "bf16": 2.0, "bfloat16": 2.0, "fp16": 2.0, "float16": 2.0,
    "int8": 1.0, "nf4": 0.5 + 4 / 64, "nf4-dq": 0.5 + 1 / 64 + 4 / (64 * 256),
}
OPTIMIZER_BYTES = {"adamw": 8.0, "adamw8bit": 2.0, "sgd": 0.0}  # state bytes per trainable parameter
# Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer Models":
# one transformer layer keeps about T*B*D*(34 + 5*H*T/D) bytes in 16-bit. The 5*H*T/D term is the
# attention-score matrix, which fused (flash) attention never stores, so we keep the 34. With full
# recomputation (checkpointing) a layer keeps only its 16-bit input: 2*B*T*D bytes.
ACTIVATION_CONSTANT = 34.0
CHECKPOINT_CONSTANT = 2.0
GB = 1e9


@dataclass(frozen=True)
class MemoryEstimate:
    weights: float       # bytes of parameters (base + any new trainable ones)
    gradients: float     # bytes of gradients, trainable parameters only
    optimizer: float     # bytes of optimizer states (and master weights when counted)
    activations: float   # bytes kept by the forward pass for the backward pass

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations

    def gb(self, part: str = "total") -> float:
        """One part ("weights", "gradients", "optimizer", "activations" or "total") in GB (1e9 B)."""
        if part not in ("weights", "gradients", "optimizer", "activations", "total"):
            raise ValueError(f"part {part!r} is not valid; use weights, gradients, optimizer, activations or total")
        return getattr(self, part) / GB


def _bytes_per_param(value, what: str) -> float:
    if isinstance(value, str):
        if value not in BYTES_PER_PARAM:
            raise ValueError(f"{what} {value!r} is not known; use a number or one of {', '.join(BYTES_PER_PARAM)}")
        return BYTES_PER_PARAM[value]
    if not isinstance(value, (int, float)) or value <= 0:
        raise ValueError(f"{what} must be a positive number of bytes or a precision name, not {value!r}")
    return float(value)


def _trainable(n_params: int, method: str, trainable_params: int | None) -> int:
    spec = get_method(method)  # ValueError naming the registry's methods
    if trainable_params is None:
        if not spec.trains_all:
            raise ValueError(f"method {method!r} needs trainable_params (the count of parameters it trains)")
        return n_params
    if trainable_params < 0 or (not spec.adds_params and trainable_params > n_params):
        raise ValueError(f"trainable_params={trainable_params} is not valid for {method!r} with n_params={n_params}")
    return trainable_params


def activation_bytes(batch_size: int, seq_len: int, hidden: int, layers: int, *,
                     checkpointing: bool = False, vocab: int | None = None,
                     bytes_per_value: float = 2.0) -> float:
    """Activation memory of a decoder stack after Korthikanti et al. (no attention scores stored).

    Without checkpointing: 34*B*T*D bytes per layer (16-bit). With checkpointing every layer keeps
    its input (2*B*T*D bytes) and one layer at a time is recomputed in full during the backward.
    `vocab` adds the fp32 logits the loss keeps (4*B*T*V bytes), large for small models.
    """
    btd = batch_size * seq_len * hidden * bytes_per_value / 2.0   # the constants assume 2 bytes
    if checkpointing:
        total = CHECKPOINT_CONSTANT * btd * layers + ACTIVATION_CONSTANT * btd
    else:
        total = ACTIVATION_CONSTANT * btd * layers
    return total + (4.0 * batch_size * seq_len * vocab if vocab else 0.0)


def estimate_memory(n_params: int, method: str = "full", *, trainable_params: int | None = None,
                    weight_bytes: float | str | None = None, grad_bytes: float | str | None = None,
                    optimizer: str = "adamw", master_weights: bool = False, batch_size: int = 1,
                    seq_len: int = 512, hidden: int | None = None, layers: int | None = None,
                    vocab: int | None = None, checkpointing: bool = False,
                    activation_bytes_per_value: float = 2.0) -> MemoryEstimate:
    """Bytes to train a model of `n_params` parameters with `method`; a rough, honest model.

    n_params          parameters of the base model
    method            a method of the registry (labs/methods.py)
    trainable_params  what the method trains (required except for "full"). For methods that add
                      weights (lora, adapter, prefix, prompt) these are NEW weights added to the
                      model; for full and bitfit they are a subset of the base.
    weight_bytes      base precision, bytes or a name: default 2 (16-bit); QLoRA is LoRA with
                      weight_bytes="nf4-dq" (the frozen base in 4-bit NF4, double-quantised)
    grad_bytes        bytes per gradient (and per new trainable weight): default 4 for fp32
                      bases, else 2
    optimizer         "adamw" (two fp32 moments: 8 B/param), "adamw8bit" (2), "sgd" (0, no momentum)
    master_weights    add the fp32 master copy mixed precision keeps (4 B per trainable param;
                      with AdamW this gives ZeRO's 2+2+12 bytes per parameter)
    hidden, layers    D and L: activations are 0 unless both are given (see activation_bytes)

    Not modelled: framework overhead, temporary buffers, fragmentation, frozen layers that skip
    saving their inputs (PEFT activations are lower: about 30% for q and v training in a SmolLM2
    block, notebook 00), prefix tokens lengthening T.
    """
    trainable = _trainable(n_params, method, trainable_params)
    wb = _bytes_per_param(2.0 if weight_bytes is None else weight_bytes, "weight_bytes")
    gb = _bytes_per_param((4.0 if wb >= 4 else 2.0) if grad_bytes is None else grad_bytes, "grad_bytes")
    if optimizer not in OPTIMIZER_BYTES:
        raise ValueError(f"optimizer {optimizer!r} is not valid; use one of {', '.join(OPTIMIZER_BYTES)}")
    new = trainable if get_method(method).adds_params else 0
    opt = trainable * (OPTIMIZER_BYTES[optimizer] + (4.0 if master_weights else 0.0))
    acts = 0.0
    if hidden and layers:
        acts = activation_bytes(batch_size, seq_len, hidden, layers, checkpointing=checkpointing,
                                vocab=vocab, bytes_per_value=activation_bytes_per_value)
    return MemoryEstimate(weights=n_params * wb + new * gb, gradients=trainable * gb,
                          optimizer=opt, activations=acts)


STRATEGIES = ("ddp", "fsdp")


def per_gpu(estimate: MemoryEstimate, gpus: int, strategy: str = "fsdp", *,
            layers: int | None = None) -> MemoryEstimate:
    """Memory on each of `gpus` GPUs when the run of `estimate` (one GPU, its own batch) is spread out.

    ddp   every GPU keeps a full replica of weights, gradients and optimizer state; only the data
          is split. Each GPU needs what one GPU alone needs: DDP buys speed, not room (its
          gradient buckets, one more gradient-sized buffer, are not modelled).
    fsdp  FULL_SHARD (ZeRO-3): weights, gradients and optimizer state are cut into `gpus` equal
          shards. To compute a layer each GPU gathers that layer's full weights for a moment:
          with `layers` (L) given, one layer's worth (weights / L) is added (prefetching the
          next layer, as configs/accelerate/fsdp_*.yaml do, holds a second one).
    Activations belong to each GPU's own batch and are never sharded, under either strategy.
    """
    if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 1:
        raise ValueError(f"gpus must be an integer >= 1, got {gpus!r}")
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy {strategy!r} is not valid; use one of {', '.join(STRATEGIES)}")
    if layers is not None and (isinstance(layers, bool) or not isinstance(layers, int) or layers < 1):
        raise ValueError(f"layers must be an integer >= 1 or None, got {layers!r}")
    if strategy == "ddp" or gpus == 1:
        return estimate
    gathered = estimate.weights / layers if layers else 0.0
    return MemoryEstimate(weights=estimate.weights / gpus + gathered, gradients=estimate.gradients / gpus,
                          optimizer=estimate.optimizer / gpus, activations=estimate.activations)


# ---------------------------------------------------------------------------------------------
# Measurement: real tensors, in process (cheap, deterministic)
# ---------------------------------------------------------------------------------------------
def _unique_bytes(tensors) -> int:
    """Bytes of distinct storages: tied weights and views are counted once."""
    seen = {}
    for t in tensors:
        if t is not None and t.device.type != "meta":
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def weight_bytes(model: nn.Module, *, exclude_trainable: bool = False) -> int:
    """Bytes the model's weights hold as loaded: parameters at their storage dtype, buffers (a 4-bit
    layer's block constants), and bitsandbytes' 4-bit quantization states, which live outside both.
    exclude_trainable leaves out trainable parameters (the new weights of an adapter method)."""
    params = [p for p in model.parameters() if not (exclude_trainable and p.requires_grad)]
    states = [getattr(p, "quant_state", None) for p in params]
    extra = [t for s in states if s is not None
             for t in (s.absmax, getattr(getattr(s, "state2", None), "absmax", None))]
    return _unique_bytes([*params, *model.buffers(), *extra])


def _optimizer_tensors(optimizer: torch.optim.Optimizer):
    for state in optimizer.state.values():
        yield from (v for v in state.values() if torch.is_tensor(v))


def measure_activations(model: nn.Module, batch: dict) -> int:
    """Bytes the forward pass of `model(**batch)` saves for backward, parameters excluded; with
    labels in the batch, the forward of the loss train() takes (labs.train.batch_loss).

    Counts every distinct storage autograd keeps (saved-tensor hooks). Only what trainable
    parameters need is saved, so a frozen model saves nothing. Non-reentrant gradient
    checkpointing keeps each checkpointed block's input outside these hooks: add B*T*D bytes
    per block for the full picture.
    """
    with saved_tensor_bytes(model) as kept:
        batch_loss(model, batch) if "labels" in batch else model(**batch)
    return sum(kept.values())


@contextmanager
def saved_tensor_bytes(model: nn.Module):
    """Within: {storage: bytes} of every distinct non-parameter storage autograd saves for backward."""
    param_ptrs = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in param_ptrs:
            kept[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield kept


def measure_components(model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *,
                       batch: dict | None = None) -> MemoryEstimate:
    """Real bytes held by parameters, gradients, optimizer states (and activations for `batch`).

    Weights are parameters only (buffers such as rotary tables are left out); gradients are the
    .grad tensors that exist now (call after backward); optimizer states exist after the first
    step. Activations are counted only when `batch` is given (see measure_activations).
    """
    params = list(model.parameters())
    return MemoryEstimate(
        weights=_unique_bytes(params),
        gradients=_unique_bytes(p.grad for p in params),
        optimizer=_unique_bytes(_optimizer_tensors(optimizer)) if optimizer is not None else 0,
        activations=measure_activations(model, batch) if batch is not None else 0)


# ---------------------------------------------------------------------------------------------
# Measurement: peak memory of a whole run
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MemoryMeasurement:
    peak_bytes: int                    # highest memory seen while `fn` ran
    device: str                        # "cpu" or "cuda:N"
    how: str                           # what was read, so a reader can judge the number
    baseline_bytes: int | None = None  # same reading for a run that does nothing (CPU: Python + torch)

    @property
    def above_baseline(self) -> int | None:
        """peak - baseline: the memory `fn` itself added (None without a baseline)."""
        return None if self.baseline_bytes is None else self.peak_bytes - self.baseline_bytes

    @property
    def gb(self) -> float:
        return self.peak_bytes / GB


def idle() -> None:
    """Does nothing: a child process running it shows the Python + torch baseline."""


# ---------------------------------------------------------------------------------------------
# Peak-memory readers for a run in this process (labs finetune, notebooks)
# ---------------------------------------------------------------------------------------------
def _proc_status_bytes(field: str) -> int | None:
    """A memory line of /proc/self/status (Linux) in bytes, or None elsewhere."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def peak_rss_bytes() -> int:
    """Peak resident memory of this process (since start, or since reset_peak where Linux allows)."""
    hwm = _proc_status_bytes("VmHWM")
    if hwm is not None:
        return hwm
    try:
        import resource  # POSIX only
    except ImportError:  # Windows: no peak reading without extra packages
        return 0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # macOS reports bytes, Linux KiB


def current_rss_bytes() -> int:
    """Resident memory of this process now (Linux), else its peak so far."""
    rss = _proc_status_bytes("VmRSS")
    return rss if rss is not None else peak_rss_bytes()


def reset_peak(device: torch.device) -> bool:
    """Start a new peak-memory window; False where only the whole process's peak can be read.

    CUDA resets the allocator's counter. On Linux, writing 5 to /proc/self/clear_refs resets the
    process's peak resident memory, so several runs in one notebook each get their own peak.
    """
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_memory_bytes(device: torch.device) -> int:
    """CUDA: the allocator's peak since reset_peak. CPU/MPS: the process's peak resident memory.

    The resident figure includes the runtime's baseline (interpreter, torch, the model, data),
    so compare it with the resident memory before training to see what training itself added.
    """
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return peak_rss_bytes()


def _child(conn, fn, args, kwargs, threads):
    try:
        torch.set_num_threads(threads)
        fn(*args, **kwargs)
        conn.send(("ok", peak_rss_bytes()))
    except BaseException:  # the parent re-raises it with the child's traceback
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


def _run_in_child(fn: Callable, args, kwargs) -> int:
    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no memory inherited
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(send, fn, args, kwargs, torch.get_num_threads()))
    proc.start()
    send.close()
    try:
        status, value = receive.recv()
    except EOFError:
        proc.join()
        raise RuntimeError(f"the measuring process died (exit code {proc.exitcode}); out of memory?") from None
    proc.join()
    if status != "ok":
        raise RuntimeError(f"{getattr(fn, '__name__', fn)} failed in the measuring process:\n{value}")
    return value


def _measure_cuda(fn: Callable, args, kwargs, device: torch.device) -> MemoryMeasurement:
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn(*args, **kwargs)
    torch.cuda.synchronize(device)
    return MemoryMeasurement(torch.cuda.max_memory_allocated(device), str(device),
                             "torch.cuda.max_memory_allocated (tensors only)", before)


def measure_peak(fn: Callable, *args, device: str | torch.device | None = None,
                 baseline: Callable | None = idle, **kwargs) -> MemoryMeasurement:
    """Peak memory while `fn(*args, **kwargs)` runs.

    CUDA: the allocator's peak in this process; baseline = memory already allocated before.
    CPU (default): `fn` runs in a fresh child process and its peak resident memory is read.
    That peak includes the interpreter and torch (a few hundred MB), so `baseline` (a function
    run the same way; default `idle`) is measured too: pass e.g. a function that only loads the
    model to isolate what training adds, or None to skip. `fn`, `baseline` and the arguments
    must be picklable: module-level functions, not lambdas or notebook-defined functions.
    """
    device = torch.device(device or "cpu")
    if device.type == "cuda":
        return _measure_cuda(fn, args, kwargs, device)
    if device.type != "cpu":
        raise ValueError(f"device {str(device)!r} is not supported for peak memory; use 'cpu' or 'cuda'")
    peak = _run_in_child(fn, args, kwargs)
    base = _run_in_child(baseline, (), {}) if baseline is not None else None
    return MemoryMeasurement(peak, "cpu", "peak resident memory (VmHWM) of a child process", base)


# ---------------------------------------------------------------------------------------------
# One training step, measured part by part (notebook 09)
# ---------------------------------------------------------------------------------------------
# Why StepMemory's peaks can be None: this process cannot start a new peak window (reset_peak).
NO_PEAK_WINDOW = ("peaks by phase are measured only where a process can reset its peak counter: Linux "
                  "(/proc/self/clear_refs) or a CUDA GPU; not on this system (macOS or Windows), so added, "
                  "peak and other are None. The four parts are counted on real tensors everywhere")


@dataclass(frozen=True)
class StepMemory:
    """Where one training step's memory went, each part counted on real tensors, and its peak.

    Each phase's peak is read against the memory held just before the step (CPU: the process's
    peak resident memory, windowed by reset_peak; CUDA: the allocator's peak): one window over the
    forward and backward, one over the optimizer step. The step's peak training memory is weights
    + what was held before the step (optimizer state from earlier steps, any gradients) + the
    larger of the two. The four parts need not coexist: gradients are allocated during the
    backward while the activations are being freed, and the activations are gone before the
    optimizer step, which holds gradients, state and its own temporaries at once.
    """
    weights: int          # bytes of the model's weights as held (weight_bytes)
    gradients: int        # bytes of .grad after the backward (trainable parameters only)
    optimizer: int        # bytes of optimizer state after the step
    activations: int      # bytes the forward saved for the backward (saved-tensor hooks)
    held_before: int      # gradients and optimizer state that existed before the step
    added_backward: int | None   # peak during forward + backward minus memory before the step
    added_optimizer: int | None  # peak during optimizer.step() minus memory before the step
                                 # (None, both: no windowed peak on this system)

    @property
    def added(self) -> int | None:
        """What the step added at its peak, over both phases (None if not windowed)."""
        return None if self.added_backward is None else max(self.added_backward, self.added_optimizer)

    @property
    def peak_phase(self) -> str | None:
        """"backward" or "optimizer step": the phase that set the peak (None if not windowed)."""
        if self.added_backward is None:
            return None
        return "backward" if self.added_backward >= self.added_optimizer else "optimizer step"

    @property
    def peak(self) -> int | None:
        """Peak training memory of the step: weights + held_before + added (None if not windowed)."""
        return None if self.added is None else self.weights + self.held_before + self.added

    @property
    def why_no_peak(self) -> str | None:
        """Why added, peak, peak_phase and other are None (NO_PEAK_WINDOW); None when they were measured."""
        return NO_PEAK_WINDOW if self.added_backward is None else None

    @property
    def parts_total(self) -> int:
        """weights + gradients + optimizer + activations: what the analytic model adds up."""
        return self.weights + self.gradients + self.optimizer + self.activations

    @property
    def other(self) -> int | None:
        """peak - parts_total: temporaries none of the parts names (positive), or parts that were
        never held at the same time (negative). None if the peak was not windowed."""
        return None if self.peak is None else self.peak - self.parts_total


def format_measured(value: float | None, spec: str, scale: float = 1.0) -> str:
    """One table cell: format(value / scale, spec), e.g. bytes as MiB with ("8.1f", 2**20) or a
    fraction with "+7.1%". A figure not measured on this system (None, as StepMemory's peaks without
    a peak window) reads "n/a" at the same width, so a None never reaches a format string."""
    if value is None:
        return "n/a".rjust(len(format(0.0, spec)))
    return format(value / scale, spec)


M_MMAP_THRESHOLD = -3        # glibc mallopt parameter
MMAP_THRESHOLD = 128 * 1024  # glibc's default: blocks above it get their own pages, returned when freed


def release_freed_memory() -> bool:
    """Give memory that was freed but is still resident back to the system (glibc's malloc_trim).

    Without it, a resident-memory window can start on top of freed pages that the next
    allocations quietly reuse, and the window sees less than was allocated. It also pins glibc's
    mmap threshold at its 128 KiB default (glibc raises it, up to 32 MiB, after large blocks are
    freed), so every tensor above it is handed back the moment it is freed: resident memory then
    follows live tensors closely, and repeated windows agree within a few MiB. False where this C
    library has neither (macOS, Windows, musl): there the window can read low or noisy.
    """
    import ctypes
    import ctypes.util
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
        libc.malloc_trim(0)
        return True
    except (OSError, AttributeError):
        return False


def init_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Create the optimizer's state as its first step would, without changing any weight.

    One step on zero gradients with the learning rate at 0: the moments AdamW keeps exist
    afterwards (all zeros), the weights are bit-identical, and the gradients are freed again.
    A step measured after this is a steady-state step, without paying a forward and backward.
    """
    params = [p for group in optimizer.param_groups for p in group["params"]]
    lrs = [group["lr"] for group in optimizer.param_groups]
    for p in params:
        p.grad = torch.zeros_like(p)
    for group in optimizer.param_groups:
        group["lr"] = 0.0
    try:
        optimizer.step()
    finally:
        for group, lr in zip(optimizer.param_groups, lrs):
            group["lr"] = lr
        optimizer.zero_grad(set_to_none=True)


def measure_step(model: nn.Module, batch: dict, optimizer: torch.optim.Optimizer, *,
                 context: Callable | None = None) -> StepMemory:
    """Run one training step (forward, backward, optimizer step, gradients freed) and measure it.

    Activations are counted on the step's own forward (saved-tensor hooks, as measure_activations);
    gradients before they are freed; optimizer state after the step. The peak is windowed
    (release_freed_memory, reset_peak) over forward + backward, then over the optimizer step;
    where reset_peak cannot open a window (macOS, Windows) the parts are still counted and the
    peaks are None (StepMemory.why_no_peak says why). `context`: a factory of the context the
    forward runs in (e.g. lambda: torch.autocast("cpu", dtype=torch.bfloat16)).
    """
    device = next(model.parameters()).device
    params = list(model.parameters())
    held = _unique_bytes(p.grad for p in params) + _unique_bytes(_optimizer_tensors(optimizer))
    release_freed_memory()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device) if device.type == "cuda" else current_rss_bytes()
    windowed = reset_peak(device)
    with saved_tensor_bytes(model) as kept, (context or nullcontext)():
        loss = batch_loss(model, batch)   # the loss train() takes
    loss.backward()
    del loss
    gradients = _unique_bytes(p.grad for p in params)
    backward = peak_memory_bytes(device) - before if windowed else None
    release_freed_memory()                  # the forward's temporaries go back before the next window opens
    reset_peak(device)                      # a second window: the optimizer step alone
    optimizer.step()
    stepped = peak_memory_bytes(device) - before if windowed else None
    optimizer.zero_grad(set_to_none=True)
    return StepMemory(weights=weight_bytes(model), gradients=gradients,
                      optimizer=_unique_bytes(_optimizer_tensors(optimizer)),
                      activations=sum(kept.values()), held_before=held,
                      added_backward=backward, added_optimizer=stepped)
