"""Stage 2: lower a checked spec plus concrete parameter values to a typed IR.

The IR is a DAG of per-element nodes (one value per sample and hidden unit),
hash-consed so that a sub-expression written twice is computed once.  From it
this package derives the structure fast RNN kernels use:

* *hoisted* nodes depend on the input and the weights only (``x @ W``, biases,
  elementwise functions of them).  All ``x @ W`` products of a step are one
  product with the W matrices side by side, which depends on no state (so it
  can run anywhere in the step); the hoisted nodes that step nodes read (the
  *roots*) are computed from it inside the step loops.
* *step* nodes depend on the state.  A product ``e @ U`` of a step value needs
  ``e`` first, so each node gets a *phase*: phase(e @ U) = phase(e) + 1.  Per
  step, phase p runs the GEMMs of phase p (products that share an operand are
  one GEMM, the U matrices side by side) and then one fused elementwise loop.
* the backward pass is derived from the same nodes by reverse-mode
  differentiation; the forward pass saves (in *slots*, one [B, H] block per
  step) every value the backward partials read and every GEMM operand.

Everything here is plain data; :mod:`rnngen.render` turns it into C.

The stage is three modules: :mod:`.nodes` (the IR's types), :mod:`.lowering` (equations
to hash-consed nodes, with located errors) and :mod:`.analysis` (names, phases, groups,
saved values and adjoint owners, from which every backend's kernels are printed).
"""
from .analysis import compute_ir
from .lowering import resolve_params
from .nodes import (GENERATOR_VERSION, LEAF_OPS, PRODUCTS, STEP_LEAVES, CellIR, Group, Node,
                    Weight, c_name)

__all__ = ["GENERATOR_VERSION", "LEAF_OPS", "PRODUCTS", "STEP_LEAVES", "CellIR", "Group", "Node",
           "Weight", "c_name", "compute_ir", "resolve_params"]
