"""The IR's types: per-element nodes, weights, GEMM groups and the lowered cell."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping

from ..spec import CellSpec

GENERATOR_VERSION = "0.1.0"

LEAF_OPS = ("const", "bias", "xprod", "xval", "state", "started")
# computed by a backend's frame between the elementwise loops of a step: products
# (a GEMM per group) and means over the units of a sample (a reduction per group)
PRODUCTS = ("matmul", "mean")
STEP_LEAVES = ("state", "started") + PRODUCTS


@dataclass(eq=False)
class Node:
    id: int
    op: str          # const bias xprod state started matmul neg add sub mul div call assign
    args: tuple
    attr: object     # const: float; bias/xprod/matmul: weight name; state: (state, lag);
                     # started: lag; call: function name; assign: state name
    varying: bool    # depends on the state (computed inside the time loop)
    label: str = ""  # a readable C-safe name
    origin: str = "" # the left-hand side of the equation that first made it

    @property
    def is_const(self):
        return self.op == "const"

    @property
    def hoisted(self):
        return not self.varying and self.op != "const"

    def __repr__(self):
        return f"Node({self.id}:{self.op}:{self.label})"


@dataclass(frozen=True)
class Weight:
    name: str          # concrete name (family members are NAME_k)
    role: str          # "input matrix" | "recurrent matrix" | "vector"
    shape: tuple       # of "input_dim"/"output_dim"
    init: str          # concrete init name
    line: int

    def dims(self, input_dim: int, output_dim: int) -> tuple:
        m = {"input_dim": input_dim, "output_dim": output_dim}
        return tuple(m[d] for d in self.shape)


@dataclass(frozen=True, eq=False)
class Group:
    """One GEMM of a step: operand @ [U_1 | U_2 | ...]; or (mean=True) the mean of the
    operand over the units of each sample, broadcast to every unit (matmuls = the one
    mean node)."""
    name: str
    phase: int
    operand: Node
    matmuls: tuple     # Node(op=matmul), column block k is matmuls[k]
    mean: bool = False

    @property
    def width(self):
        return len(self.matmuls)


@dataclass(frozen=True)
class CellIR:
    """The lowered cell: frozen, with tuples and read-only mappings.  Nodes are
    identified by object (their labels are fixed before the IR is made)."""
    spec: CellSpec
    name: str                  # C-safe lower-case cell name
    params: Mapping            # concrete parameter values
    weights: tuple             # of Weight, in weights= order
    states: tuple              # of str
    output: str
    lags: Mapping              # state -> number of registers kept (max lag, >= 1)
    nodes: tuple               # reachable nodes in topological order
    assigns: Mapping           # state -> assign node
    xprods: tuple              # xprod nodes, column blocks of the input product x @ [W...]
    roots: tuple               # hoisted nodes read by step nodes, column blocks of XP
    hoisted: tuple             # every hoisted node in topological order
    phases: Mapping            # node -> phase (step nodes)
    nphases: int               # loops 0..nphases-1
    loops: tuple               # loop p -> tuple of step nodes computed in it (topological)
    groups: tuple              # of Group, ordered by phase
    slots: tuple               # nodes whose per-step value is stored
    needed: frozenset          # step nodes whose value a backward partial reads
    owner: Mapping             # node -> loop index that owns its adjoint
    buffered: tuple            # nodes whose adjoint lives in a [B, H] buffer
    users: Mapping             # node -> tuple of the nodes that read it
    equations: Mapping         # equation target -> the node of its value (a state's: its
                               # assign node)

    def weight(self, name):
        return next(w for w in self.weights if w.name == name)

    @property
    def x_elementwise(self) -> bool:
        """x is read elementwise (not only as x @ W): input_dim must equal output_dim."""
        return any(n.op == "xval" for n in self.nodes)

    def groups_of_phase(self, p):
        return [g for g in self.groups if g.phase == p]

    def group_of(self, matmul: Node):
        for g in self.groups:
            if matmul in g.matmuls:
                return g, g.matmuls.index(matmul)
        raise KeyError(matmul)


def c_name(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", s).lower()
