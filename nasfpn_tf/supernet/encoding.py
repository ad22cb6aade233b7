"""A spec as tensors: what the supernet reads to take one path.

The supernet (``nasfpn_tf.supernet.neck``) holds every spec of a
``SearchSpace`` at once; a spec enters it as a few small integer arrays, not
as Python structure, so one traced graph serves every spec. ``encode`` turns
a ``NeckSpec`` into those arrays:

- ``inputs`` [cells, 2]: the node indices each cell merges;
- ``branch`` [cells]: the index of the cell's level among the levels its
  position may take (``SearchSpace``: the intermediate levels, or every
  output level), or ``dead_branch(position)`` for a cell that feeds no
  output (it is not computed, as the standalone neck builds no weights
  for it);
- ``op`` [cells]: ``SUM``, ``GATE_FIRST`` (``global_attention`` whose first
  input is at the coarser or equal level, so it gates) or ``GATE_SECOND``;
- ``extras`` [cells, nodes] float 0/1: the earlier nodes summed into an
  output cell (``NeckSpec.extra_inputs``);
- ``outputs`` [levels]: the node that is each output level.

Pure NumPy; the spec must belong to the space (checked by
``SearchSpace.from_spec``).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from nasfpn_tf.arch.space import SearchSpace
from nasfpn_tf.arch.spec import NeckSpec

SUM, GATE_FIRST, GATE_SECOND = range(3)
KEYS = ("inputs", "branch", "op", "extras", "outputs")


def position_levels(space: SearchSpace, position: int) -> tuple[int, ...]:
    """The levels the cell at ``position`` may take, in branch order."""
    if position < space.num_intermediate:
        return tuple(space.intermediate_levels)
    return tuple(range(space.min_level, space.max_level + 1))


def dead_branch(space: SearchSpace, position: int) -> int:
    """The branch index of a dead cell at ``position`` (after the levels)."""
    return len(position_levels(space, position))


@dataclasses.dataclass(frozen=True)
class ArchArrays:
    """One spec's path through the supernet (see the module docstring)."""

    inputs: np.ndarray
    branch: np.ndarray
    op: np.ndarray
    extras: np.ndarray
    outputs: np.ndarray

    def as_dict(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k) for k in KEYS}


def encode(space: SearchSpace, spec: NeckSpec) -> ArchArrays:
    """The arrays of ``spec``'s path; raises ``SpaceError`` for a spec
    outside ``space``."""
    space.from_spec(spec)  # validates membership
    cells = len(spec.cells)
    nodes = spec.num_inputs + cells
    levels = spec.node_levels()
    live = spec.live_cells()
    extras = spec.extra_inputs()
    inputs = np.zeros([cells, 2], np.int32)
    branch = np.zeros([cells], np.int32)
    op = np.zeros([cells], np.int32)
    extra = np.zeros([cells, nodes], np.float32)
    for i, cell in enumerate(spec.cells):
        a, b = cell.inputs
        inputs[i] = (a, b)
        if live[i]:
            branch[i] = position_levels(space, i).index(cell.level)
        else:
            branch[i] = dead_branch(space, i)
        if cell.op == "sum":
            op[i] = SUM
        else:
            op[i] = GATE_FIRST if levels[a] >= levels[b] else GATE_SECOND
        for j in extras[i]:
            extra[i, j] = 1.0
    output_nodes = spec.output_nodes()
    outputs = np.array([output_nodes[level] for level in spec.levels], np.int32)
    return ArchArrays(inputs, branch, op, extra, outputs)


def used_branches(space: SearchSpace, arrays: ArchArrays) -> np.ndarray:
    """[cells, max branches] bool: which (position, level) weights a path
    uses (dead cells use none)."""
    width = max(dead_branch(space, i) for i in range(space.num_cells))
    used = np.zeros([space.num_cells, width], bool)
    for i, b in enumerate(arrays.branch):
        if b < dead_branch(space, i):
            used[i, b] = True
    return used
