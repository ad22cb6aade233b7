"""Architecture specs: the topology of one NAS-FPN repeat as immutable values.

A NAS-FPN neck (Ghiasi et al., CVPR 2019, arXiv:1904.07392) repeats one
feature pyramid network N times. Its topology is a list of merging cells.
Nodes ``0 .. num_inputs - 1`` are the input pyramid ``P{min_level} ..
P{max_level}``; each cell reads two existing nodes, resamples them to its
output level, merges them (``sum`` or ``global_attention``) and appends one
new node. Exactly one output cell per level forms the output pyramid.

The spec holds topology only: width, repeats and conv type are config.

About 500 lines, yet one concern: validation, the canonical form and
hash, and the JSON and Model Garden forms are the methods of one value
type; its format upgraders already live in `versions.py`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from nasfpn_tf.arch import versions
from nasfpn_tf.arch.versions import SPEC_VERSION
from nasfpn_tf.checks import is_int
from nasfpn_tf.errors import UserError

OPS = ("sum", "global_attention")
# Model Garden's name for the same op in its NASFPN_BLOCK_SPECS.
_MODEL_GARDEN_OPS = {"sum": "sum", "attention": "global_attention"}
MAX_CELLS = 64
MIN_LEVEL_BOUND = 1
MAX_LEVEL_BOUND = 10
# Cap on the orders of interchangeable cells tried by canonical_form.
MAX_TWIN_ORDERINGS = 5040


class SpecError(UserError, ValueError):
    """A spec is malformed; the message names the field at fault."""


@dataclasses.dataclass(frozen=True)
class CellSpec:
    """One merging cell: two existing nodes -> one new node.

    Attributes:
      inputs: indices of the two nodes merged; 0..num_inputs-1 are the
        input pyramid levels, later indices are earlier cells' outputs.
      level: pyramid level of the new node (stride ``2**level``).
      op: ``"sum"`` or ``"global_attention"``.
      is_output: whether the new node is the neck's output at ``level``.
    """

    inputs: tuple[int, int]
    level: int
    op: str
    is_output: bool = False

    def __post_init__(self):
        inputs = self.inputs
        if isinstance(inputs, list):
            object.__setattr__(self, "inputs", tuple(inputs))
            inputs = self.inputs
        if not isinstance(inputs, tuple) or len(inputs) != 2:
            raise SpecError(
                f"inputs: expected two node indices, got {inputs!r}"
            )
        for i, node in enumerate(inputs):
            if not is_int(node) or node < 0:
                raise SpecError(
                    f"inputs[{i}]: expected a node index >= 0, got {node!r}"
                )
        if inputs[0] == inputs[1]:
            raise SpecError(
                f"inputs: a cell merges two different nodes, got {inputs!r}"
            )
        if not is_int(self.level):
            raise SpecError(f"level: expected an int, got {self.level!r}")
        if self.op not in OPS:
            raise SpecError(f"op: expected one of {OPS}, got {self.op!r}")
        if not isinstance(self.is_output, bool):
            raise SpecError(
                f"is_output: expected a bool, got {self.is_output!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "inputs": list(self.inputs),
            "level": self.level,
            "op": self.op,
            "is_output": self.is_output,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CellSpec:
        if not isinstance(data, Mapping):
            raise SpecError(f"expected an object, got {type(data).__name__}")
        _check_keys(data, {"inputs", "level", "op"}, {"is_output"}, "")
        return cls(
            inputs=_as_pair(data["inputs"]),
            level=data["level"],
            op=data["op"],
            is_output=data.get("is_output", False),
        )


@dataclasses.dataclass(frozen=True)
class NeckSpec:
    """The topology of one NAS-FPN repeat.

    Attributes:
      cells: the merging cells in build order.
      min_level: the finest pyramid level (P3 for RetinaNet).
      max_level: the coarsest pyramid level (P7 for RetinaNet).
    """

    cells: tuple[CellSpec, ...]
    min_level: int = 3
    max_level: int = 7

    def __post_init__(self):
        if isinstance(self.cells, list):
            object.__setattr__(self, "cells", tuple(self.cells))
        _validate(self)

    # -- structure ---------------------------------------------------------

    @property
    def levels(self) -> tuple[int, ...]:
        """The output levels ``min_level .. max_level``."""
        return tuple(range(self.min_level, self.max_level + 1))

    @property
    def num_inputs(self) -> int:
        return self.max_level - self.min_level + 1

    def check_levels(self, min_level: int, max_level: int) -> None:
        """Raises `SpecError` unless the spec covers exactly the model's
        levels ``min_level .. max_level`` (``model.min_level/max_level``)."""
        if (self.min_level, self.max_level) != (min_level, max_level):
            raise SpecError(
                f"covers levels {self.min_level}..{self.max_level} but "
                f"model.min_level..max_level is {min_level}..{max_level}"
            )

    @property
    def num_nodes(self) -> int:
        return self.num_inputs + len(self.cells)

    def node_levels(self) -> tuple[int, ...]:
        """The level of every node, inputs first."""
        return self.levels + tuple(c.level for c in self.cells)

    def output_nodes(self) -> dict[int, int]:
        """Maps each output level to the node that produces it."""
        return {
            c.level: self.num_inputs + i
            for i, c in enumerate(self.cells)
            if c.is_output
        }

    def extra_inputs(self) -> tuple[tuple[int, ...], ...]:
        """Nodes summed into each cell besides its two inputs.

        Google's NAS-FPN sums into an output cell every earlier node at the
        same level that feeds nothing so far, so no computed node is wasted
        (Model Garden's ``_build_feature_pyramid`` does the same). Both the
        neck builder and the canonical form read this one definition.

        Returns:
          One tuple per cell of extra node indices (empty for most cells).
        """
        levels = self.node_levels()
        uses = [0] * self.num_nodes
        extras = []
        for i, cell in enumerate(self.cells):
            node = self.num_inputs + i
            for j in cell.inputs:
                uses[j] += 1
            added = []
            if cell.is_output:
                for j in range(node):
                    if uses[j] == 0 and levels[j] == cell.level:
                        uses[j] += 1
                        added.append(j)
            extras.append(tuple(added))
        return tuple(extras)

    def live_cells(self) -> tuple[bool, ...]:
        """Whether each cell contributes to an output (directly or not)."""
        extras = self.extra_inputs()
        live = [False] * self.num_nodes
        for node in self.output_nodes().values():
            live[node] = True
        for i in reversed(range(len(self.cells))):
            node = self.num_inputs + i
            if live[node]:
                for j in self.cells[i].inputs + extras[i]:
                    live[j] = True
        return tuple(live[self.num_inputs :])

    # -- canonical form ----------------------------------------------------

    def canonical_form(self) -> tuple:
        """A hashable form equal for specs that build the same computation.

        Dead cells are dropped, the operands of ``sum`` (including nodes
        summed into output cells) are unordered, and cells are renumbered in
        a canonical topological order, so swapped ``sum`` inputs, reordered
        independent cells and unused cells do not change it. For
        ``global_attention`` the gating (coarser) operand is kept distinct.
        Nodes summed into output cells come from :meth:`extra_inputs` of the
        whole spec, dead cells included (a dead cell's read counts as a use),
        exactly as the neck is built.
        """
        levels = self.node_levels()
        extras = self.extra_inputs()
        live = self.live_cells()
        signature: dict[int, str] = {}
        depth: dict[int, int] = {}
        for i in range(self.num_inputs):
            signature[i] = f"P{levels[i]}"
            depth[i] = 0
        operands: dict[int, tuple] = {}
        for i, cell in enumerate(self.cells):
            node = self.num_inputs + i
            if not live[i]:
                continue
            a, b = cell.inputs
            extra = tuple(sorted(extras[i], key=signature.__getitem__))
            if cell.op == "sum":
                ops = (tuple(sorted((a, b) + extra, key=signature.get)),)
            else:
                gate, other = (a, b) if levels[a] >= levels[b] else (b, a)
                ops = (gate, other, extra)
            operands[node] = ops
            depth[node] = 1 + max(depth[j] for j in cell.inputs + extras[i])
            signature[node] = _digest(
                (
                    cell.level,
                    cell.op,
                    cell.is_output,
                    _map_nodes(ops, signature),
                )
            )
        order = sorted(operands, key=lambda n: (depth[n], signature[n], n))
        # Twins (live cells with equal signatures) are interchangeable, so
        # their relative order must not leak the build order into the form:
        # try every order within each twin group and keep the smallest form.
        groups = [
            list(g)
            for _, g in itertools.groupby(
                order, key=lambda n: (depth[n], signature[n])
            )
        ]
        orderings = math.prod(math.factorial(len(g)) for g in groups)
        if orderings > MAX_TWIN_ORDERINGS:
            # Bounded work: past the cap the build order breaks ties, so
            # such specs may get distinct forms for one computation.
            candidates = [groups]
        else:
            candidates = itertools.product(
                *(itertools.permutations(g) for g in groups)
            )
        forms = (
            self._form_for_order([n for g in perm for n in g], operands)
            for perm in candidates
        )
        return (self.min_level, self.max_level, min(forms))

    def _form_for_order(
        self, order: Sequence[int], operands: Mapping[int, tuple]
    ) -> tuple:
        index = {i: i for i in range(self.num_inputs)}
        for k, node in enumerate(order):
            index[node] = self.num_inputs + k
        cells = []
        for node in order:
            cell = self.cells[node - self.num_inputs]
            ops = _map_nodes(operands[node], index)
            if cell.op == "sum":
                ops = (tuple(sorted(ops[0])),)
            else:
                ops = (ops[0], ops[1], tuple(sorted(ops[2])))
            cells.append((cell.level, cell.op, cell.is_output, ops))
        return tuple(cells)

    def canonical_key(self) -> str:
        """A short stable hash of :meth:`canonical_form` (hex, 16 chars)."""
        return _digest(self.canonical_form())[:16]

    # -- serialisation -----------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": SPEC_VERSION,
            "min_level": self.min_level,
            "max_level": self.max_level,
            "cells": [c.to_dict() for c in self.cells],
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NeckSpec:
        if not isinstance(data, Mapping):
            raise SpecError(
                f"spec: expected a JSON object, got {type(data).__name__}"
            )
        if "version" not in data:
            raise SpecError("spec.version: required field is missing")
        try:
            data = versions.upgrade(data)
        except versions.VersionError as e:
            raise SpecError(f"spec.version: {e}") from None
        _check_keys(
            data, {"version", "cells"}, {"min_level", "max_level"}, "spec."
        )
        raw_cells = data["cells"]
        if not isinstance(raw_cells, (list, tuple)):
            raise SpecError(
                f"spec.cells: expected a list, got {type(raw_cells).__name__}"
            )
        cells = []
        for i, raw in enumerate(raw_cells):
            if not isinstance(raw, Mapping):
                raise SpecError(
                    f"cells[{i}]: expected an object, got {type(raw).__name__}"
                )
            try:
                cells.append(CellSpec.from_dict(raw))
            except SpecError as e:
                raise SpecError(f"cells[{i}].{e}") from None
        kwargs = {k: data[k] for k in ("min_level", "max_level") if k in data}
        return cls(cells=tuple(cells), **kwargs)

    @classmethod
    def from_json(cls, text: str) -> NeckSpec:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise SpecError(f"spec: not valid JSON ({e})") from None
        return cls.from_dict(data)

    def save(self, path: str) -> None:
        """Writes the JSON spec to ``path`` atomically (local or GCS)."""
        from nasfpn_tf.files import write_atomic  # lazy: imports TF

        write_atomic(path, self.to_json() + "\n")

    @classmethod
    def load(cls, path: str) -> NeckSpec:
        """Reads a spec JSON file; errors name the file and the field."""
        import tensorflow as tf

        if not tf.io.gfile.exists(path):
            raise SpecError(f"{path}: no such spec file")
        with tf.io.gfile.GFile(path, "r") as f:
            text = f.read()
        try:
            return cls.from_json(text)
        except SpecError as e:
            raise SpecError(f"{path}: {e}") from None

    # -- Model Garden's list form ------------------------------------------

    def to_block_specs(self) -> list[tuple[int, str, tuple[int, int], bool]]:
        """Model Garden's ``NASFPN_BLOCK_SPECS`` list form of this spec.

        Model Garden takes the last ``num_inputs`` cells as the outputs, so a
        spec whose output cells are elsewhere has no such form.
        """
        tail = self.cells[len(self.cells) - self.num_inputs :]
        if len(tail) < self.num_inputs or not all(c.is_output for c in tail):
            raise SpecError(
                "Model Garden's NAS-FPN takes the last "
                f"{self.num_inputs} cells as outputs; this spec's output "
                "cells are elsewhere"
            )
        names = {v: k for k, v in _MODEL_GARDEN_OPS.items()}
        return [
            (c.level, names[c.op], tuple(c.inputs), c.is_output)
            for c in self.cells
        ]

    @classmethod
    def from_block_specs(
        cls,
        block_specs: Iterable[Sequence[Any]],
        min_level: int = 3,
        max_level: int = 7,
    ) -> NeckSpec:
        """Reads Model Garden's ``(level, combine_fn, inputs, is_output)``."""
        cells = []
        for i, block in enumerate(block_specs):
            try:
                level, combine_fn, inputs, is_output = block
            except (TypeError, ValueError):
                raise SpecError(
                    f"block_specs[{i}]: expected (level, combine_fn, "
                    f"(input0, input1), is_output), got {block!r}"
                ) from None
            if combine_fn not in _MODEL_GARDEN_OPS:
                raise SpecError(
                    f"block_specs[{i}].combine_fn: expected one of "
                    f"{tuple(_MODEL_GARDEN_OPS)}, got {combine_fn!r}"
                )
            try:
                cells.append(
                    CellSpec(
                        inputs=_as_pair(inputs),
                        level=level,
                        op=_MODEL_GARDEN_OPS[combine_fn],
                        is_output=is_output,
                    )
                )
            except SpecError as e:
                raise SpecError(f"block_specs[{i}].{e}") from None
        return cls(tuple(cells), min_level=min_level, max_level=max_level)


def _validate(spec: NeckSpec) -> None:
    for name in ("min_level", "max_level"):
        value = getattr(spec, name)
        if not is_int(value) or not (
            MIN_LEVEL_BOUND <= value <= MAX_LEVEL_BOUND
        ):
            raise SpecError(
                f"{name}: expected an int in [{MIN_LEVEL_BOUND}, "
                f"{MAX_LEVEL_BOUND}], got {value!r}"
            )
    if spec.min_level >= spec.max_level:
        raise SpecError(
            f"min_level ({spec.min_level}) must be below max_level "
            f"({spec.max_level})"
        )
    if not isinstance(spec.cells, tuple) or not spec.cells:
        raise SpecError("cells: a spec needs at least one cell per level")
    if len(spec.cells) > MAX_CELLS:
        raise SpecError(
            f"cells: {len(spec.cells)} cells is more than the limit of "
            f"{MAX_CELLS}"
        )
    outputs: dict[int, int] = {}
    for i, cell in enumerate(spec.cells):
        if not isinstance(cell, CellSpec):
            raise SpecError(
                f"cells[{i}]: expected a CellSpec, got {type(cell).__name__}"
            )
        if not spec.min_level <= cell.level <= spec.max_level:
            raise SpecError(
                f"cells[{i}].level: expected {spec.min_level}.."
                f"{spec.max_level}, got {cell.level}"
            )
        available = spec.num_inputs + i
        for k, node in enumerate(cell.inputs):
            if node >= available:
                raise SpecError(
                    f"cells[{i}].inputs[{k}]: node {node} does not exist yet; "
                    f"cell {i} may read nodes 0..{available - 1}"
                )
        if cell.is_output:
            if cell.level in outputs:
                raise SpecError(
                    f"cells[{i}].is_output: level {cell.level} is already "
                    f"output by cells[{outputs[cell.level]}]"
                )
            outputs[cell.level] = i
    missing = [lv for lv in spec.levels if lv not in outputs]
    if missing:
        raise SpecError(
            f"cells: no output cell for level(s) {missing}; each level "
            f"{spec.min_level}..{spec.max_level} needs exactly one"
        )


def _check_keys(
    data: Mapping[str, Any], required: set[str], optional: set[str], where: str
) -> None:
    missing = sorted(required - set(data))
    if missing:
        raise SpecError(f"{where}{missing[0]}: required field is missing")
    extra = sorted(set(data) - required - optional, key=str)
    if extra:
        allowed = ", ".join(sorted(required | optional))
        raise SpecError(
            f"{where}{extra[0]}: unknown field (allowed: {allowed})"
        )


def _as_pair(value: Any) -> tuple:
    if isinstance(value, (list, tuple)):
        return tuple(value)
    raise SpecError(f"inputs: expected two node indices, got {value!r}")


def _map_nodes(ops: tuple, mapping: Mapping[int, Any]) -> tuple:
    return tuple(
        _map_nodes(op, mapping) if isinstance(op, tuple) else mapping[op]
        for op in ops
    )


def _digest(value: Any) -> str:
    return hashlib.sha256(repr(value).encode()).hexdigest()
