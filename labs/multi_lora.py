# GENERATED from solutions/multi_lora.py by tools/make_stubs.py: the reference lives there.
# Your exercises: replace each `raise NotImplementedError(...)` below with your code.
"""Many LoRA adapters in one batch: every row of the batch brings its own A and B.

A server with one base and many adapters gets requests for *different* adapters at once. Running
them one adapter at a time (notebook 10's `AdapterServer`) repeats the big base products once per
adapter. Multi-LoRA servers (Punica, S-LoRA, LoRAX, vLLM, peft's `adapter_names=[...]`) run the
whole batch through one forward instead. In each adapted layer, for rows n = 0 .. N-1:

    h[n] = W x[n]  +  s[n] * B[n] A[n] x[n]      # W: once for the whole batch; A, B, s: row n's adapter

The base product W x is the expensive one (D x D per token) and is shared by every row; each
row's low-rank update costs r * (in + out) per token, whichever adapter it uses. Two ways to
compute the updates, both here:

- gather (exercise 10.1): stack every adapter's factors (zero-padded to one rank), pick each
  row's own A and B by index, and run one batched product over the rows. One call, whatever the
  number of adapters; each row reads its own copy of its factors.
- group (exercises 10.2 and 10.3): put the rows that name the same adapter together, and run
  one pair of thin products per adapter over its rows. Fewer, larger products when many rows
  share an adapter; a Python loop of as many steps as distinct adapters in the batch.

`MultiLoRALinear` wraps one frozen layer and holds every adapter's factors for it; `plan(names)`
tells it which adapter each row of the next batches names (None: the base alone).
labs.serving.MultiAdapterServer puts these layers into a model and reads adapters from disk.
"""
from __future__ import annotations

import torch
from torch import nn

from labs.surgery import linear_dims

NOTEBOOK = "notebooks/10_storage.ipynb"
MODES = ("gather", "group")  # how a MultiLoRALinear computes the rows' updates (see above)


# ---------------------------------------------------------------------------------------------
# Exercise 10.1: each row's update from its own factors, gathered by index
# ---------------------------------------------------------------------------------------------
def gathered_update(x: torch.Tensor, A: torch.Tensor, B: torch.Tensor, scaling: torch.Tensor,
                    index: torch.Tensor) -> torch.Tensor:
    """The low-rank update of every row, each with the adapter `index[n]` names.

    x (N, T, in): the layer's input, one row per request. A (K, r, in), B (K, out, r), scaling (K,):
    the factors and scales of K adapters stacked (an adapter of lower rank is padded with zeros up
    to r, which adds nothing). index (N,): which of the K adapters row n uses.
    Returns (N, T, out): row n is scaling[index[n]] * x[n] @ A[index[n]]^T @ B[index[n]]^T.
    Gather the rows' factors with `index`, then two batched products (torch.bmm); never build B A.
    """
    raise NotImplementedError("Exercise 10.1: gathered_update - see notebooks/10_storage.ipynb")


# ---------------------------------------------------------------------------------------------
# Exercise 10.2: which rows use which adapter
# ---------------------------------------------------------------------------------------------
def group_rows(names: list[str | None]) -> dict[str, torch.Tensor]:
    """Row indices per adapter: {name: LongTensor of the rows n with names[n] == name}.

    Adapters appear in the order of their first row, each row index once and in increasing
    order; rows whose name is None (the base alone) belong to no group.
    Example: ["a", None, "b", "a"] -> {"a": tensor([0, 3]), "b": tensor([2])}.
    """
    raise NotImplementedError("Exercise 10.2: group_rows - see notebooks/10_storage.ipynb")


# ---------------------------------------------------------------------------------------------
# Exercise 10.3: the update, one adapter (one group of rows) at a time
# ---------------------------------------------------------------------------------------------
def grouped_update(x: torch.Tensor, groups: dict[str, torch.Tensor],
                   factors: dict[str, tuple[torch.Tensor, torch.Tensor, float]], out_features: int) -> torch.Tensor:
    """The low-rank update of every row, computed adapter by adapter over that adapter's rows.

    x (N, T, in); groups: {name: rows} as group_rows returns; factors: {name: (A (r, in),
    B (out, r), scaling)}, each adapter with its own rank r. Returns (N, T, out_features): for
    the rows of adapter `name`, scaling * x[rows] @ A^T @ B^T; zeros for rows in no group.
    One pair of products per adapter, over all its rows at once.
    """
    raise NotImplementedError("Exercise 10.3: grouped_update - see notebooks/10_storage.ipynb")


# ---------------------------------------------------------------------------------------------
# The layer: one frozen base layer, the factors of every adapter that adapts it
# ---------------------------------------------------------------------------------------------
class MultiLoRALinear(nn.Module):
    """A frozen linear layer plus any number of LoRA adapters, each row of a batch using its own.

    `add(name, A, B, scaling)` keeps an adapter's factors (any rank). `plan(names, mode)` says,
    before a forward, which adapter each row names (None or an adapter this layer lacks: the
    base alone); it stays in force for every forward until the next plan (a prompt, then each
    generated token). The base weight is never written.
    """

    def __init__(self, base_layer: nn.Module):
        super().__init__()
        self.in_features, self.out_features = linear_dims(base_layer)  # TypeError for non-linear layers
        self.base_layer = base_layer
        self.factors: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = {}  # name -> (A, B, scaling)
        self._stack: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # (K, r, in), (K, out, r), (K,)
        self._plan: tuple | None = None  # what the next forwards compute (set by plan)
        self._rows: int | None = None    # how many rows the plan is for

    def add(self, name: str, A: torch.Tensor, B: torch.Tensor, scaling: float) -> None:
        """Keep adapter `name`'s factors A (r, in) and B (out, r) for this layer."""
        if tuple(A.shape[1:]) != (self.in_features,) or tuple(B.shape) != (self.out_features, A.shape[0]):
            raise ValueError(f"adapter {name!r}: A {tuple(A.shape)} and B {tuple(B.shape)} do not fit this "
                             f"layer; need A (r, {self.in_features}) and B ({self.out_features}, r)")
        self.factors[name] = (A.detach(), B.detach(), float(scaling))
        self._stack, self._plan = None, None  # rebuilt on the next plan

    def stacked(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every adapter's factors in one tensor each, zero-padded to the largest rank (for gathering)."""
        if self._stack is None:
            r = max(A.shape[0] for A, _, _ in self.factors.values())
            A_all = torch.zeros(len(self.factors), r, self.in_features)      # (K, r, in)
            B_all = torch.zeros(len(self.factors), self.out_features, r)     # (K, out, r)
            for k, (A, B, _) in enumerate(self.factors.values()):
                A_all[k, :A.shape[0]], B_all[k, :, :A.shape[0]] = A, B       # zero rows/columns: no update
            scales = torch.tensor([s for _, _, s in self.factors.values()])  # (K,)
            self._stack = (A_all, B_all, scales)
        return self._stack

    def plan(self, names: list[str | None], mode: str = "gather") -> None:
        """Which adapter each row of the coming batches uses, and how to compute the updates."""
        if mode not in MODES:
            raise ValueError(f"mode {mode!r} is not valid; use one of {', '.join(MODES)}")
        mine = [n if n in self.factors else None for n in names]   # adapters of other layers: base here
        rows = [i for i, n in enumerate(mine) if n is not None]
        self._rows = len(names)
        if not rows:
            self._plan = None
        elif mode == "group":
            self._plan = ("group", group_rows(mine))
        else:
            slot = {name: k for k, name in enumerate(self.factors)}
            index = torch.tensor([slot[mine[i]] for i in rows])        # (n,): each adapted row's adapter
            every = len(rows) == len(names)                            # no base row: skip the row selection
            self._plan = ("gather", None if every else torch.tensor(rows), index, self.stacked())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._rows is not None and x.shape[0] != self._rows:
            raise ValueError(f"this batch has {x.shape[0]} rows but the adapter plan names {self._rows}; "
                             "plan one adapter name (or None) per row")
        base = self.base_layer(x)                    # (N, T, out): the base product, once for the batch
        # The factors are float32 (as LoRA trains them): the updates see x in float32 too.
        return base if self._plan is None else self.add_updates(base, x.float())

    def add_updates(self, base: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """base + every planned row's update from x (N, T, in), computed as the plan says."""
        if self._plan[0] == "group":
            return base + grouped_update(x, self._plan[1], self.factors, self.out_features).to(base.dtype)
        _, rows, index, (A_all, B_all, scales) = self._plan
        if rows is None:                             # every row has an adapter here: no selection
            return base + gathered_update(x, A_all, B_all, scales, index).to(base.dtype)
        updates = gathered_update(x[rows], A_all, B_all, scales, index)   # (n, T, out): adapted rows only
        return base.index_add(0, rows, updates.to(base.dtype))

    def extra_repr(self) -> str:
        return f"adapters={list(self.factors)}"
