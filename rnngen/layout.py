"""Stage 2b: where the values a step keeps live, and each backend's schedule choices.

A :class:`Layout` is decided once per cell and backend, in Python, and everything
downstream reads it (the step program, both frames, the weight-gradient GEMMs):

* ``slots``: the nodes whose per-step value forward saves for backward (and, in
  inference, the GEMM operands and values read by a later loop: ``inference_slots``).
* ``transient``: slots that forward needs within a step only (a mean's operand, a value
  read by a later loop) and backward never reads: training keeps them for two steps
  (t & 1), as inference keeps every slot, instead of writing T steps of them.
* ``recomputed``: values backward reads that are one sum, difference, product or
  negation of saved values, weights and constants (``a1 * (c - mean(c))``): backward
  recomputes them from those instead of reading a saved copy, and forward does not save
  them (they leave ``slots``).
* ``new_state_alias``: a slot that is a state's new value (``h = sigmoid(...)``)
  holds at step t < T-1 what the slot of that state's previous value holds at step
  t+1, so forward saves it at the last step only and backward reads the other slot.
* ``lag_alias``: without a mask every step is real, so the slot of ``h[-k]`` (k >= 2)
  at step t holds what the slot of ``h[-1]`` holds at step t-k+1: training without a
  mask saves it once (``lags_shared`` in the frames).  Step-major layouts only.
* ``xw_group``: the group whose dS equals dXW column for column (``x @ W`` and the
  group's product meet in sums only); backward then writes dS only and reads it as
  dXW, and dS and the slots are laid out like x (sample-major rows b*T + t) so that
  x @ W's gradient products can read dS.  Otherwise rows are step-major, t*B + b.

Each of these is an optimisation with a switch, so tests can force every choice.
:class:`Schedule` holds the C backend's run-time choices (the batch or unit thread
split, x @ W before the loop) as compile-time overrides of the runtime header's
defaults; ``Schedule()`` changes nothing.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping, Optional

from .ir import CellIR, Group, Node


@dataclass(frozen=True)
class Layout:
    slots: tuple                          # of Node, in slot order
    inference_slots: frozenset            # of Node
    transient: frozenset                  # of Node: kept for two steps in training too
    recomputed: frozenset                 # of Node: not saved, backward recomputes them
    new_state_alias: Mapping              # Node -> Node (the previous-state slot)
    lag_alias: Mapping                    # Node -> (Node of h[-1], k)
    xw_group: Optional[Group]

    @property
    def sample_major(self) -> bool:
        """Slots and dS rows are b*T + t (else t*B + b)."""
        return self.xw_group is not None

    def slot_index(self, n: Node) -> int:
        return self.slots.index(n)


def _xw_alias_group(ir: CellIR) -> Optional[Group]:
    """The group whose dS equals dXW, column for column, or None.  That is so when block
    k of x @ W and block k of the group's product are added into the same pre-activation
    through nothing but sums (`sigmoid(x @ W + b + h @ U)`): the adjoint of each is the
    adjoint of that sum."""
    def top(n):   # the sum that n reaches through sums it is added into once
        while len(ir.users[n]) == 1:
            u = ir.users[n][0]
            if u.op != "add" or sum(a is n for a in u.args) != 1:
                break
            n = u
        return n

    for g in ir.groups:
        if not g.mean and len(g.matmuls) == len(ir.xprods) > 0 and all(
                top(mm) is top(xp) for mm, xp in zip(g.matmuls, ir.xprods)):
            return g
    return None


def compute_layout(ir: CellIR, *, alias_new_state: bool = True, share_lags: bool = True,
                   xw_in_ds: bool = True, transient_slots: bool = True,
                   recompute: bool = True) -> Layout:
    """The layout of ``ir``'s saved values; each keyword turns one optimisation off."""
    operands = {g.operand for g in ir.groups}
    last = ir.nphases - 1
    inference = frozenset(
        n for n in ir.slots
        if n in operands or (n.op not in ("state", "started", "matmul", "mean") and not n.hoisted
                             and (any(ir.phases[u] != ir.phases[n] for u in ir.users[n])
                                  or (n.op == "assign" and ir.phases[n] != last))))
    slot_set = set(ir.slots)
    prev = {n.attr[0]: n for n in ir.slots if n.op == "state" and n.attr[1] == 1}
    new_state = {}
    if alias_new_state:
        new_state = {ir.assigns[st].args[0]: prev[st] for st in ir.states
                     if ir.assigns[st].args[0] in slot_set and st in prev
                     and ir.assigns[st].args[0] not in inference}
    xw_group = _xw_alias_group(ir) if xw_in_ds else None
    lags = {}
    if share_lags and xw_group is None:
        lags = {n: (prev[n.attr[0]], n.attr[1]) for n in ir.slots
                if n.op == "state" and n.attr[1] >= 2 and n.attr[0] in prev}
    gemm_operands = {g.operand for g in ir.groups if not g.mean}
    aliased = set(new_state) | set(new_state.values()) | set(lags) | {
        p for p, _ in lags.values()}
    transient = frozenset()
    if transient_slots:
        transient = frozenset(
            n for n in inference
            if n.op not in ("state", "started", "assign") and not n.hoisted
            and n not in ir.needed and n not in gemm_operands and n not in aliased)
    recomputed = set()
    if recompute:
        def saved(a):   # read by backward from a slot (or as a weight, a constant, started)
            return (not a.varying or a.op == "started"
                    or (a in slot_set and a not in transient and a not in recomputed))
        for n in ir.slots:
            if (n.op in ("add", "sub", "mul", "neg") and n not in inference
                    and n not in gemm_operands and n not in aliased
                    and all(saved(a) for a in n.args)):
                recomputed.add(n)
    return Layout(slots=tuple(n for n in ir.slots if n not in recomputed),
                  inference_slots=inference, transient=transient,
                  recomputed=frozenset(recomputed),
                  new_state_alias=MappingProxyType(new_state),
                  lag_alias=MappingProxyType(lags), xw_group=xw_group)


@dataclass(frozen=True)
class Schedule:
    """The C backend's schedule, forced at compile time (None: the runtime's choice).

    split: "batch" (each thread every unit of its samples) or "unit" (each thread its
        hidden units of every sample); None: batch when there are 8 samples per thread
        and the packed weights fit RNNGEN_SPLIT_MAX_BYTES.
    xw_first: True computes x @ W for all steps before the step loop, False per step;
        None: before the loop below RNNGEN_XW_FIRST_B samples.
    team_work: the work of a step (see rnngen_team in the runtime header) each thread of
        an automatic team must have in the unit split, at least 1, and 8 times that of
        the call's; None: the runtime's (RNNGEN_TEAM_WORK, RNNGEN_TEAM_CALL_WORK).  1 gives
        every call the whole team OpenMP offers.
    barrier_spins: how often a thread waiting at a barrier checks before it sleeps, at
        most (also the least it adapts down to, where that is below 16); None: the
        runtime's.  0 sleeps at every wait that has to wait at all."""
    split: Optional[str] = None
    xw_first: Optional[bool] = None
    team_work: Optional[int] = None
    barrier_spins: Optional[int] = None

    def __post_init__(self):
        if self.split not in (None, "batch", "unit"):
            raise ValueError(f"split must be None, 'batch' or 'unit', got {self.split!r}")
        if self.xw_first not in (None, True, False):
            raise ValueError(f"xw_first must be None, True or False, got {self.xw_first!r}")
        for name, least, most in (("team_work", 1, 2**30), ("barrier_spins", 0, 2**24)):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int)
                                  or not least <= v <= most):
                raise ValueError(f"{name} must be None or an int from {least} to {most}, "
                                 f"got {v!r}")

    def defines(self) -> tuple:
        """(name, value) pairs the generated source defines before the runtime header."""
        out = []
        if self.split == "batch":
            out += [("RNNGEN_SPLIT_MAX_BYTES", "((size_t)-1)"), ("RNNGEN_SPLIT_MIN_ROWS", "1")]
        elif self.split == "unit":
            out += [("RNNGEN_SPLIT_MAX_BYTES", "0")]
        if self.xw_first is not None:
            out += [("RNNGEN_XW_FIRST_B", "2147483647" if self.xw_first else "0")]
        if self.team_work is not None:
            out += [("RNNGEN_TEAM_WORK", str(self.team_work)),
                    ("RNNGEN_TEAM_CALL_WORK", str(8 * self.team_work))]
        if self.barrier_spins is not None:
            out += [("RNNGEN_BARRIER_SPINS", str(self.barrier_spins)),
                    ("RNNGEN_BARRIER_MIN_SPINS", str(min(self.barrier_spins, 16)))]
        return tuple(out)
