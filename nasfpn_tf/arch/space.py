"""The NAS-FPN search space: what the controller can choose.

Ghiasi et al., "NAS-FPN: Learning Scalable Feature Pyramid Architecture for
Object Detection", CVPR 2019 (arXiv:1904.07392), Section 3.1: a feature
pyramid network is a sequence of merging cells. Here ``num_intermediate``
cells produce hidden nodes at one of ``intermediate_levels``, then one output
cell per level ``min_level .. max_level`` follows in a searched order (a
permutation). Each cell makes four decisions, in this order:

  1. ``input0``: any node built so far (``num_inputs + cell`` choices);
  2. ``input1``: the same choices, masked to differ from ``input0``;
  3. ``level``: an intermediate level, or for output cells any level
     ``min_level .. max_level`` masked to those not yet output;
  4. ``op``: one of ``ops``.

Actions are the chosen indices, one per step. Every action sequence that
respects the masks is one distinct :class:`NeckSpec`, and back.

The module is pure Python: the controller sees only :attr:`num_choices` and
:meth:`mask`, the proxy only the :class:`NeckSpec` from :meth:`to_spec`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import random
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from nasfpn_tf.arch import spec as spec_lib
from nasfpn_tf.arch.spec import CellSpec, NeckSpec
from nasfpn_tf.checks import is_int
from nasfpn_tf.errors import UserError

# The decisions of one cell, in the order the controller makes them.
CELL_DECISIONS = ("input0", "input1", "level", "op")
STEPS_PER_CELL = len(CELL_DECISIONS)
_INPUT0, _INPUT1, _LEVEL, _OP = range(STEPS_PER_CELL)
# Brute-force counts above this many action sequences are refused.
DEFAULT_MAX_ENUMERATION = 200_000


class SpaceError(UserError, ValueError):
    """Bad space settings, actions outside the masks, or a foreign spec."""


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """Google's NAS-FPN search space (see the module docstring).

    Attributes:
      num_intermediate: number of hidden cells before the output cells.
      intermediate_levels: levels a hidden cell may choose.
      min_level: the finest pyramid level (input and output).
      max_level: the coarsest pyramid level (input and output).
      ops: the merge operations a cell may choose (subset of ``spec.OPS``).
    """

    num_intermediate: int = 2
    intermediate_levels: tuple[int, ...] = (4, 5, 6, 7)
    min_level: int = 3
    max_level: int = 7
    ops: tuple[str, ...] = spec_lib.OPS

    def __post_init__(self):
        for name in ("intermediate_levels", "ops"):
            value = getattr(self, name)
            if isinstance(value, (list, tuple)):
                object.__setattr__(self, name, tuple(value))
        self._validate()

    def _validate(self) -> None:
        if not is_int(self.num_intermediate) or self.num_intermediate < 0:
            raise SpaceError(
                "num_intermediate: expected an int >= 0, got "
                f"{self.num_intermediate!r}"
            )
        for name in ("min_level", "max_level"):
            value = getattr(self, name)
            if not is_int(value) or not (
                spec_lib.MIN_LEVEL_BOUND <= value <= spec_lib.MAX_LEVEL_BOUND
            ):
                raise SpaceError(
                    f"{name}: expected an int in [{spec_lib.MIN_LEVEL_BOUND},"
                    f" {spec_lib.MAX_LEVEL_BOUND}], got {value!r}"
                )
        if self.min_level >= self.max_level:
            raise SpaceError(
                f"min_level ({self.min_level}) must be below max_level "
                f"({self.max_level})"
            )
        levels = self.intermediate_levels
        # Without hidden cells the levels are never used, so a config's
        # default list need not fit a narrower pyramid.
        hidden = self.num_intermediate > 0
        if not isinstance(levels, tuple) or (hidden and not levels):
            raise SpaceError(
                "intermediate_levels: expected a non-empty list of levels, "
                f"got {levels!r}"
            )
        for level in levels:
            if not is_int(level) or (
                hidden and not self.min_level <= level <= self.max_level
            ):
                raise SpaceError(
                    "intermediate_levels: expected levels in "
                    f"{self.min_level}..{self.max_level}, got level {level!r}"
                )
        if len(set(levels)) != len(levels):
            raise SpaceError(
                f"intermediate_levels: repeated level in {levels!r}"
            )
        if not isinstance(self.ops, tuple) or not self.ops:
            raise SpaceError(
                f"ops: expected a non-empty list of ops, got {self.ops!r}"
            )
        for op in self.ops:
            if op not in spec_lib.OPS:
                raise SpaceError(
                    f"ops: expected ops among {spec_lib.OPS}, got {op!r}"
                )
        if len(set(self.ops)) != len(self.ops):
            raise SpaceError(f"ops: repeated op in {self.ops!r}")
        if self.num_cells > spec_lib.MAX_CELLS:
            raise SpaceError(
                f"num_intermediate: {self.num_cells} cells in all is more "
                f"than a spec's limit of {spec_lib.MAX_CELLS}"
            )

    @classmethod
    def from_config(cls, cfg: Any, **overrides: Any) -> SearchSpace:
        """Builds a space from any object or mapping with the field names.

        Args:
          cfg: an object with (some of) this class's field names as
            attributes, e.g. ``config.SpaceConfig``, or a mapping; missing
            fields keep their defaults. ``None`` gives the default space.
          **overrides: fields that win over ``cfg`` (e.g. the model's
            ``min_level``/``max_level``).
        """
        names = [f.name for f in dataclasses.fields(cls)]
        if cfg is None:
            values = {}
        elif isinstance(cfg, Mapping):
            unknown = sorted(set(cfg) - set(names), key=str)
            if unknown:
                raise SpaceError(
                    f"{unknown[0]}: unknown search space field (known: "
                    f"{', '.join(names)})"
                )
            values = dict(cfg)
        else:
            values = {n: getattr(cfg, n) for n in names if hasattr(cfg, n)}
        unknown = sorted(set(overrides) - set(names))
        if unknown:
            raise SpaceError(
                f"{unknown[0]}: unknown search space field (known: "
                f"{', '.join(names)})"
            )
        values.update(overrides)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON-ready values (lists for tuples)."""
        return {
            "num_intermediate": self.num_intermediate,
            "intermediate_levels": list(self.intermediate_levels),
            "min_level": self.min_level,
            "max_level": self.max_level,
            "ops": list(self.ops),
        }

    # -- shape of the decision sequence ------------------------------------

    @property
    def levels(self) -> tuple[int, ...]:
        """The pyramid levels ``min_level .. max_level``."""
        return tuple(range(self.min_level, self.max_level + 1))

    @property
    def num_inputs(self) -> int:
        """Input nodes, one per pyramid level."""
        return self.max_level - self.min_level + 1

    @property
    def num_cells(self) -> int:
        """Cells per spec: the hidden ones, then one output cell per level."""
        return self.num_intermediate + self.num_inputs

    @property
    def num_steps(self) -> int:
        """Decisions per spec."""
        return self.num_cells * STEPS_PER_CELL

    @functools.cached_property
    def num_choices(self) -> tuple[int, ...]:
        """The number of choices at each step, before masking."""
        counts = []
        for cell in range(self.num_cells):
            nodes = self.num_inputs + cell
            counts += [nodes, nodes, self._num_levels(cell), len(self.ops)]
        return tuple(counts)

    @functools.cached_property
    def step_names(self) -> tuple[str, ...]:
        """A name per step, e.g. ``"cell2.input1"``."""
        return tuple(
            f"cell{cell}.{decision}"
            for cell in range(self.num_cells)
            for decision in CELL_DECISIONS
        )

    def _num_levels(self, cell: int) -> int:
        if cell < self.num_intermediate:
            return len(self.intermediate_levels)
        return self.num_inputs

    def _level(self, cell: int, choice: int) -> int:
        if cell < self.num_intermediate:
            return self.intermediate_levels[choice]
        return self.min_level + choice

    # -- masks -------------------------------------------------------------

    def mask(self, step: int, prefix: Sequence[int]) -> tuple[bool, ...]:
        """Which choices are valid at ``step`` given the earlier actions.

        Args:
          step: the step index, ``0 <= step < num_steps``.
          prefix: the actions of steps ``0 .. step - 1`` (longer sequences
            are cut to that length); they must respect their own masks.

        Returns:
          ``num_choices[step]`` booleans, True where the choice is valid.
        """
        if not is_int(step) or not 0 <= step < self.num_steps:
            raise SpaceError(
                f"step: expected an int in [0, {self.num_steps}), got {step!r}"
            )
        if len(prefix) < step:
            raise SpaceError(
                f"prefix: step {step} needs the {step} earlier actions, got "
                f"{len(prefix)}"
            )
        prefix = self._check_actions(prefix[:step])
        return self._mask(step, prefix)

    def masks(self, actions: Sequence[int]) -> tuple[tuple[bool, ...], ...]:
        """The mask of every step of a (possibly partial) action sequence."""
        actions = self._check_actions(actions)
        return tuple(self._mask(s, actions) for s in range(len(actions)))

    def _mask(self, step: int, prefix: Sequence[int]) -> tuple[bool, ...]:
        # ``prefix`` holds at least ``step`` checked actions.
        cell, decision = divmod(step, STEPS_PER_CELL)
        count = self.num_choices[step]
        if decision == _INPUT1:
            taken = prefix[step - 1]
            return tuple(c != taken for c in range(count))
        if decision == _LEVEL and cell >= self.num_intermediate:
            first_output = self.num_intermediate * STEPS_PER_CELL + _LEVEL
            taken = set(prefix[first_output:step:STEPS_PER_CELL])
            return tuple(c not in taken for c in range(count))
        return (True,) * count

    def _check_actions(self, actions: Sequence[int]) -> list[int]:
        """Returns ``actions`` as ints; raises naming the first bad step."""
        if isinstance(actions, (str, bytes)) or not isinstance(
            actions, Sequence
        ):
            try:
                actions = list(actions)
            except TypeError:
                raise SpaceError(
                    f"actions: expected a sequence of ints, got {actions!r}"
                ) from None
        if len(actions) > self.num_steps:
            raise SpaceError(
                f"actions: expected at most {self.num_steps} actions, got "
                f"{len(actions)}"
            )
        names = self.step_names
        checked: list[int] = []
        for step, action in enumerate(actions):
            if not isinstance(action, numbers.Integral) or isinstance(
                action, bool
            ):
                raise SpaceError(
                    f"actions[{step}] ({names[step]}): expected an int, got "
                    f"{action!r}"
                )
            action = int(action)
            valid = self._mask(step, checked)
            if not 0 <= action < len(valid):
                raise SpaceError(
                    f"actions[{step}] ({names[step]}): choice {action} is out "
                    f"of range [0, {len(valid)})"
                )
            if not valid[action]:
                raise SpaceError(
                    f"actions[{step}] ({names[step]}): choice {action} is "
                    "masked (a cell's inputs differ; an output level is "
                    "produced once)"
                )
            checked.append(action)
        return checked

    # -- actions <-> specs -------------------------------------------------

    def to_spec(self, actions: Sequence[int]) -> NeckSpec:
        """The spec chosen by a full action sequence.

        Raises:
          SpaceError: naming the first step whose action is out of range or
            masked, or when the sequence is not ``num_steps`` long.
        """
        actions = self._check_actions(actions)
        if len(actions) != self.num_steps:
            raise SpaceError(
                f"actions: expected {self.num_steps} actions, got "
                f"{len(actions)}"
            )
        cells = []
        for cell in range(self.num_cells):
            in0, in1, level, op = actions[
                cell * STEPS_PER_CELL : (cell + 1) * STEPS_PER_CELL
            ]
            cells.append(
                CellSpec(
                    inputs=(in0, in1),
                    level=self._level(cell, level),
                    op=self.ops[op],
                    is_output=cell >= self.num_intermediate,
                )
            )
        return NeckSpec(
            tuple(cells), min_level=self.min_level, max_level=self.max_level
        )

    def from_spec(self, spec: NeckSpec) -> list[int]:
        """The action sequence that :meth:`to_spec` maps to ``spec``.

        Raises:
          SpaceError: naming what puts ``spec`` outside this space.
        """
        if not isinstance(spec, NeckSpec):
            raise SpaceError(
                f"spec: expected a NeckSpec, got {type(spec).__name__}"
            )
        where = "spec is outside the search space"
        if (spec.min_level, spec.max_level) != (self.min_level, self.max_level):
            raise SpaceError(
                f"{where}: levels {spec.min_level}..{spec.max_level}, the "
                f"space has {self.min_level}..{self.max_level}"
            )
        if len(spec.cells) != self.num_cells:
            raise SpaceError(
                f"{where}: {len(spec.cells)} cells, the space has "
                f"{self.num_intermediate} intermediate + {self.num_inputs} "
                f"output = {self.num_cells}"
            )
        actions = []
        for i, cell in enumerate(spec.cells):
            hidden = i < self.num_intermediate
            if cell.is_output == hidden:
                kind = "an intermediate" if hidden else "an output"
                raise SpaceError(
                    f"{where}: cells[{i}].is_output is {cell.is_output}; "
                    f"cell {i} is {kind} cell"
                )
            if hidden and cell.level not in self.intermediate_levels:
                raise SpaceError(
                    f"{where}: cells[{i}].level {cell.level} is not among "
                    f"intermediate_levels {self.intermediate_levels}"
                )
            if cell.op not in self.ops:
                raise SpaceError(
                    f"{where}: cells[{i}].op {cell.op!r} is not among "
                    f"{self.ops}"
                )
            level = (
                self.intermediate_levels.index(cell.level)
                if hidden
                else cell.level - self.min_level
            )
            actions += [*cell.inputs, level, self.ops.index(cell.op)]
        # The spec's own checks (inputs exist and differ, one output per
        # level) are this space's masks, so the sequence is valid.
        return actions

    def contains(self, spec: NeckSpec) -> bool:
        """Whether ``spec`` is one of this space's specs."""
        try:
            self.from_spec(spec)
        except SpaceError:
            return False
        return True

    # -- counting and sampling ---------------------------------------------

    def size(self) -> int:
        """The exact number of valid action sequences (= distinct specs).

        Cell ``c`` reads an ordered pair of distinct nodes among
        ``n_c = num_inputs + c`` and picks an op; hidden cells pick one of
        the intermediate levels and the output cells a permutation of the
        levels::

          prod_c n_c (n_c - 1) * |ops|^cells * |inter|^hidden * levels!
        """
        pairs = math.prod(
            (self.num_inputs + c) * (self.num_inputs + c - 1)
            for c in range(self.num_cells)
        )
        return (
            pairs
            * len(self.ops) ** self.num_cells
            * len(self.intermediate_levels) ** self.num_intermediate
            * math.factorial(self.num_inputs)
        )

    def all_actions(self) -> Iterator[list[int]]:
        """Every valid action sequence, in lexicographic order."""

        def extend(prefix: list[int]) -> Iterator[list[int]]:
            if len(prefix) == self.num_steps:
                yield list(prefix)
                return
            for choice, ok in enumerate(self._mask(len(prefix), prefix)):
                if ok:
                    prefix.append(choice)
                    yield from extend(prefix)
                    prefix.pop()

        return extend([])

    def num_distinct_computations(
        self, max_size: int = DEFAULT_MAX_ENUMERATION
    ) -> int:
        """The number of distinct canonical forms, by brute force.

        Specs that differ only in the order of ``sum`` operands, of
        independent cells, or of ``global_attention`` operands at different
        levels build the same computation (``NeckSpec.canonical_key``).

        Raises:
          SpaceError: when :meth:`size` exceeds ``max_size``.
        """
        if self.size() > max_size:
            raise SpaceError(
                f"max_size: the space has {self.size()} specs, more than "
                f"{max_size} to enumerate"
            )
        return len(
            {self.to_spec(a).canonical_key() for a in self.all_actions()}
        )

    def random_actions(self, rng: random.Random) -> list[int]:
        """Samples each step uniformly among its valid choices.

        The number of valid choices at a step does not depend on the earlier
        actions, so this is also uniform over all specs of the space.
        """
        actions: list[int] = []
        for step in range(self.num_steps):
            valid = [c for c, ok in enumerate(self._mask(step, actions)) if ok]
            actions.append(rng.choice(valid))
        return actions

    def random_spec(self, rng: random.Random) -> NeckSpec:
        """A spec drawn uniformly from the space."""
        return self.to_spec(self.random_actions(rng))
