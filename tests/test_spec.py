"""Tests for nasfpn_tf.arch.spec and nasfpn_tf.arch.known."""

import copy
import dataclasses
import json
import pathlib
import random

import pytest

from nasfpn_tf.arch import known
from nasfpn_tf.arch.space import SearchSpace
from nasfpn_tf.arch.spec import (
    MAX_CELLS,
    OPS,
    SPEC_VERSION,
    CellSpec,
    NeckSpec,
    SpecError,
)

DATA = pathlib.Path(__file__).parent / "data"
PINNED_SPEC = DATA / "specs" / f"v{SPEC_VERSION}_nasfpn.json"
# History files and reward caches are keyed on this; a change must be
# deliberate (and bump SPEC_VERSION if old keys become wrong).
PUBLISHED_KEY = "2a167da4e1f641ff"
# Nodes 0..4 are P3..P7, so the published cells are nodes 5..11.
P3, P4, P5, P6, P7 = range(5)


def _sum(a, b, level, out=False):
    return CellSpec((a, b), level, "sum", out)


def _gp(a, b, level, out=False):
    return CellSpec((a, b), level, "global_attention", out)


def _insert(spec, position, cell):
    """Inserts ``cell`` before cell ``position``, renumbering later reads."""
    node = spec.num_inputs + position

    def shift(c):
        inputs = tuple(j + 1 if j >= node else j for j in c.inputs)
        return dataclasses.replace(c, inputs=inputs)

    cells = list(spec.cells[:position]) + [cell]
    cells += [shift(c) for c in spec.cells[position:]]
    return NeckSpec(tuple(cells), spec.min_level, spec.max_level)


def _replace_cell(spec, index, **changes):
    cells = list(spec.cells)
    cells[index] = dataclasses.replace(cells[index], **changes)
    return NeckSpec(tuple(cells), spec.min_level, spec.max_level)


# -- serialisation -----------------------------------------------------------


def test_published_spec_shape():
    spec = known.NASFPN_SPEC
    assert spec.num_inputs == 5
    assert spec.num_nodes == 12
    assert spec.levels == (3, 4, 5, 6, 7)
    assert spec.output_nodes() == {3: 7, 4: 8, 5: 9, 7: 10, 6: 11}
    assert spec.node_levels() == (3, 4, 5, 6, 7, 4, 4, 3, 4, 5, 7, 6)
    assert known.get("nasfpn") is spec
    with pytest.raises(KeyError, match="unknown architecture 'nope'"):
        known.get("nope")


def test_json_round_trip_published_and_random():
    specs = [known.NASFPN_SPEC]
    space = SearchSpace()
    rng = random.Random(1)
    specs += [space.random_spec(rng) for _ in range(50)]
    for spec in specs:
        assert NeckSpec.from_json(spec.to_json()) == spec
        assert NeckSpec.from_json(spec.to_json(indent=None)) == spec
        assert NeckSpec.from_dict(spec.to_dict()) == spec
        assert NeckSpec.from_dict(json.loads(spec.to_json())) == spec
        assert hash(NeckSpec.from_json(spec.to_json())) == hash(spec)


def test_to_dict_is_plain_json():
    data = known.NASFPN_SPEC.to_dict()
    assert data["version"] == SPEC_VERSION
    assert list(data) == ["version", "min_level", "max_level", "cells"]
    assert data["cells"][0] == {
        "inputs": [1, 3],
        "level": 4,
        "op": "global_attention",
        "is_output": False,
    }
    assert json.loads(json.dumps(data)) == data


def test_pinned_json_file_still_loads():
    text = PINNED_SPEC.read_text()
    assert NeckSpec.from_json(text) == known.NASFPN_SPEC
    # Written once; the current writer must still produce the same bytes.
    assert known.NASFPN_SPEC.to_json() + "\n" == text


def test_is_output_defaults_to_false_when_absent():
    data = known.NASFPN_SPEC.to_dict()
    del data["cells"][0]["is_output"]
    assert NeckSpec.from_dict(data) == known.NASFPN_SPEC


def test_levels_default_when_absent():
    data = known.NASFPN_SPEC.to_dict()
    del data["min_level"], data["max_level"]
    assert NeckSpec.from_dict(data) == known.NASFPN_SPEC


def test_save_load_round_trip(tmp_path):
    path = str(tmp_path / "best_spec.json")
    known.NASFPN_SPEC.save(path)
    assert NeckSpec.load(path) == known.NASFPN_SPEC
    assert not (tmp_path / "best_spec.json.tmp").exists()
    assert NeckSpec.load(str(PINNED_SPEC)) == known.NASFPN_SPEC


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(SpecError, match="no such spec file"):
        NeckSpec.load(str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text('{"version": 1, "cells": [], "colour": 1}')
    with pytest.raises(SpecError, match=r"bad\.json: spec\.colour"):
        NeckSpec.load(str(bad))


def test_list_inputs_are_stored_as_tuples():
    cell = CellSpec([1, 3], 4, "sum")
    assert cell.inputs == (1, 3)
    assert cell == CellSpec((1, 3), 4, "sum")
    spec = NeckSpec(list(known.NASFPN_SPEC.cells))
    assert spec == known.NASFPN_SPEC


def test_specs_are_immutable():
    with pytest.raises(dataclasses.FrozenInstanceError):
        known.NASFPN_SPEC.min_level = 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        known.NASFPN_SPEC.cells[0].level = 5


# -- Model Garden's list form -------------------------------------------------


def _model_garden_nasfpn():
    from official.vision.modeling.decoders import nasfpn

    return nasfpn


def test_block_specs_round_trip_equals_model_garden():
    mg = _model_garden_nasfpn().NASFPN_BLOCK_SPECS
    assert known.NASFPN_SPEC.to_block_specs() == mg
    assert list(known.NASFPN_BLOCK_SPECS) == mg
    assert NeckSpec.from_block_specs(mg) == known.NASFPN_SPEC
    assert NeckSpec.from_block_specs(mg).to_block_specs() == mg


def test_to_block_specs_needs_outputs_last():
    spec = _insert(known.NASFPN_SPEC, 7, _sum(P3, P4, 5))  # dead tail cell
    with pytest.raises(SpecError, match="last 5 cells as outputs"):
        spec.to_block_specs()


@pytest.mark.parametrize(
    "blocks, match",
    [
        ([(4, "max", (1, 3), False)], r"block_specs\[0\]\.combine_fn"),
        ([(4, "sum", (1, 3))], r"block_specs\[0\]: expected"),
        ([(4, "sum", (1, 1), False)], r"block_specs\[0\]\.inputs"),
        ([(4, "sum", 7, False)], r"block_specs\[0\]\.inputs"),
    ],
)
def test_from_block_specs_errors(blocks, match):
    with pytest.raises(SpecError, match=match):
        NeckSpec.from_block_specs(blocks)


class _Node:
    """A symbolic tensor: records how Model Garden combines nodes."""

    def __init__(self, kind, parts=(), index=None):
        self.kind, self.parts, self.index = kind, parts, index

    def __add__(self, other):
        return _Node("add", (self, other))

    def terms(self):
        if self.kind == "add":
            return self.parts[0].terms() + self.parts[1].terms()
        return [self]


class _SymbolicNasFpn:
    """Stands in for ``self`` of Model Garden's ``_build_feature_pyramid``.

    Resampling, activation, conv and norm are identities, so each new node
    is the merge expression Model Garden builds from node indices.
    """

    def __init__(self, block_specs, min_level, max_level):
        nasfpn = _model_garden_nasfpn()
        self._block_specs = nasfpn.build_block_specs(block_specs)
        self._min_level, self._max_level = min_level, max_level
        self._config_dict = {"num_filters": 8}
        self._conv_kwargs, self._norm_kwargs = {}, {}
        self.expressions = []
        self._next = max_level - min_level + 1

    def _resample_feature_map(self, x, input_level, target_level, *args):
        del input_level, target_level, args
        return x

    def _global_attention(self, feat0, feat1):
        return _Node("gp", (feat0, feat1))

    def _activation(self, x):
        return x

    def _conv_op(self, **kwargs):
        del kwargs
        return lambda x: x

    def _norm_op(self, **kwargs):
        del kwargs

        def name_node(expr):
            self.expressions.append(expr)
            self._next += 1
            return _Node("node", index=self._next - 1)

        return name_node


def _model_garden_graph(spec):
    """Per cell: (op, ordered operands, summed-in nodes) as MG builds it."""
    nasfpn = _model_garden_nasfpn()
    fake = _SymbolicNasFpn(
        spec.to_block_specs(), spec.min_level, spec.max_level
    )
    feats = [_Node("node", index=i) for i in range(spec.num_inputs)]
    outputs = nasfpn.NASFPN._build_feature_pyramid(fake, feats)
    graph = []
    for expr in fake.expressions:
        merge, *extra = expr.terms()
        if merge.kind == "gp":
            op, operands = "global_attention", merge.parts
        else:
            op, operands = "sum", (merge, extra.pop(0))
        graph.append(
            (op, tuple(n.index for n in operands), {n.index for n in extra})
        )
    return graph, {level: node.index for level, node in outputs.items()}


def _our_graph(spec):
    levels = spec.node_levels()
    graph = []
    for cell, extra in zip(spec.cells, spec.extra_inputs()):
        a, b = cell.inputs
        if cell.op == "global_attention" and levels[a] < levels[b]:
            a, b = b, a  # the coarser operand gates
        graph.append((cell.op, (a, b), set(extra)))
    return graph


def test_extra_inputs_of_published_spec_match_model_garden():
    spec = known.NASFPN_SPEC
    # P5 is summed into the P5 output cell, P7 into the P7 output cell.
    assert spec.extra_inputs() == ((), (), (), (), (P5,), (P7,), ())
    graph, outputs = _model_garden_graph(spec)
    assert graph == _our_graph(spec)
    assert outputs == spec.output_nodes()


def test_random_specs_build_model_gardens_graph():
    # The space puts output cells last, so every sample has a block form.
    space = SearchSpace()
    rng = random.Random(7)
    summed_in = 0
    for _ in range(200):
        spec = space.random_spec(rng)
        graph, outputs = _model_garden_graph(spec)
        assert graph == _our_graph(spec), spec
        assert outputs == spec.output_nodes()
        summed_in += sum(map(len, spec.extra_inputs()))
    assert summed_in > 100  # the rule was exercised, not vacuous


# -- invalid specs ---------------------------------------------------------------


def _published_dict():
    return copy.deepcopy(known.NASFPN_SPEC.to_dict())


def _set(path, value):
    def mutate(data):
        target = data
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        return data

    return mutate


def _delete(path):
    def mutate(data):
        target = data
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]
        return data

    return mutate


def _extra_cells(count):
    def mutate(data):
        tail = {"inputs": [0, 1], "level": 3, "op": "sum", "is_output": False}
        data["cells"] += [dict(tail) for _ in range(count)]
        return data

    return mutate


INVALID = {
    "wrong version": (_set(["version"], 2), r"spec\.version"),
    "version as bool": (_set(["version"], True), r"spec\.version"),
    "version as float": (_set(["version"], 1.0), r"spec\.version"),
    "missing cells": (_delete(["cells"]), r"spec\.cells: required"),
    "missing version": (_delete(["version"]), r"spec\.version: required"),
    "missing op": (_delete(["cells", 0, "op"]), r"cells\[0\]\.op: required"),
    "missing inputs": (
        _delete(["cells", 3, "inputs"]),
        r"cells\[3\]\.inputs: required",
    ),
    "extra field": (_set(["colour"], "red"), r"spec\.colour: unknown"),
    "extra cell field": (
        _set(["cells", 1, "weights"], []),
        r"cells\[1\]\.weights: unknown",
    ),
    "level as string": (_set(["cells", 0, "level"], "4"), r"cells\[0\]\.level"),
    "level as float": (_set(["cells", 0, "level"], 4.0), r"cells\[0\]\.level"),
    "level as bool": (_set(["cells", 0, "level"], True), r"cells\[0\]\.level"),
    "inputs as string": (
        _set(["cells", 0, "inputs"], "13"),
        r"cells\[0\]\.inputs",
    ),
    "three inputs": (
        _set(["cells", 0, "inputs"], [1, 3, 4]),
        r"cells\[0\]\.inputs",
    ),
    "input as float": (
        _set(["cells", 0, "inputs"], [1, 3.0]),
        r"cells\[0\]\.inputs\[1\]",
    ),
    "is_output as string": (
        _set(["cells", 2, "is_output"], "yes"),
        r"cells\[2\]\.is_output",
    ),
    "min_level as float": (_set(["min_level"], 3.0), r"min_level"),
    "cells as object": (_set(["cells"], {"a": 1}), r"spec\.cells"),
    "cell as list": (_set(["cells", 2], [0, 6]), r"cells\[2\]: expected"),
    "negative index": (
        _set(["cells", 0, "inputs"], [-1, 3]),
        r"cells\[0\]\.inputs\[0\]",
    ),
    "forward index": (
        _set(["cells", 0, "inputs"], [1, 5]),
        r"cells\[0\]\.inputs\[1\]: node 5 does not exist",
    ),
    "self index": (
        _set(["cells", 2, "inputs"], [0, 7]),
        r"cells\[2\]\.inputs\[1\]: node 7",
    ),
    "duplicate inputs": (
        _set(["cells", 1, "inputs"], [5, 5]),
        r"cells\[1\]\.inputs: a cell merges two different",
    ),
    "unknown op": (_set(["cells", 0, "op"], "max"), r"cells\[0\]\.op"),
    "model garden op name": (
        _set(["cells", 0, "op"], "attention"),
        r"cells\[0\]\.op",
    ),
    "missing output level": (
        _set(["cells", 6, "is_output"], False),
        r"no output cell for level\(s\) \[6\]",
    ),
    "repeated output level": (
        _set(["cells", 6, "level"], 7),
        r"cells\[6\]\.is_output: level 7 is already output by cells\[5\]",
    ),
    "empty cell list": (_set(["cells"], []), r"cells: a spec needs"),
    "too many cells": (_extra_cells(MAX_CELLS), r"cells: .* limit"),
    "level above max": (_set(["cells", 0, "level"], 8), r"cells\[0\]\.level"),
    "level below min": (_set(["cells", 0, "level"], 2), r"cells\[0\]\.level"),
    "min_level == max_level": (_set(["max_level"], 3), r"min_level \(3\)"),
    "min_level > max_level": (_set(["min_level"], 8), r"min_level"),
    "max_level out of bounds": (_set(["max_level"], 11), r"max_level"),
    "min_level out of bounds": (_set(["min_level"], 0), r"min_level"),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_spec_raises_naming_the_field(case):
    mutate, match = INVALID[case]
    text = json.dumps(mutate(_published_dict()))
    with pytest.raises(SpecError, match=match):
        NeckSpec.from_json(text)


@pytest.mark.parametrize(
    "text, match",
    [
        ("{not json", r"spec: not valid JSON"),
        ("", r"spec: not valid JSON"),
        ("[1, 2]", r"spec: expected a JSON object, got list"),
        ("null", r"spec: expected a JSON object, got NoneType"),
    ],
)
def test_non_json_or_non_object_raises(text, match):
    with pytest.raises(SpecError, match=match):
        NeckSpec.from_json(text)


def test_spec_error_is_a_value_error():
    assert issubclass(SpecError, ValueError)


def test_unknown_non_string_key_is_reported():
    data = _published_dict()
    data[1] = 2
    with pytest.raises(SpecError, match="spec.1: unknown field"):
        NeckSpec.from_dict(data)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"inputs": (1,), "level": 4, "op": "sum"}, "inputs"),
        ({"inputs": (1, 2), "level": None, "op": "sum"}, "level"),
        ({"inputs": (1, 2), "level": 4, "op": "SUM"}, "op"),
        (
            {"inputs": (1, 2), "level": 4, "op": "sum", "is_output": 1},
            "is_output",
        ),
    ],
)
def test_cell_constructor_checks(kwargs, match):
    with pytest.raises(SpecError, match=match):
        CellSpec(**kwargs)


def test_neck_constructor_checks():
    cells = known.NASFPN_SPEC.cells
    with pytest.raises(SpecError, match=r"cells\[0\]: expected a CellSpec"):
        NeckSpec(({"inputs": [1, 3]},) + cells[1:])
    with pytest.raises(SpecError, match=r"cells: a spec needs"):
        NeckSpec(())
    with pytest.raises(SpecError, match=r"min_level"):
        NeckSpec(cells, min_level="3")
    # Levels 2..6 are fine for the constructor, but then P7 outputs are out
    # of range.
    with pytest.raises(SpecError, match=r"cells\[5\]\.level: expected 2\.\.6"):
        NeckSpec(cells, min_level=2, max_level=6)
    assert OPS == ("sum", "global_attention")


def test_other_level_ranges_are_valid():
    spec = NeckSpec(
        (_gp(0, 1, 2, True), _sum(1, 2, 3, True), _sum(3, 4, 4, True)),
        min_level=2,
        max_level=4,
    )
    assert spec.num_inputs == 3
    assert spec.output_nodes() == {2: 3, 3: 4, 4: 5}
    assert NeckSpec.from_json(spec.to_json()) == spec


# -- live cells ---------------------------------------------------------------------


def test_live_cells():
    spec = known.NASFPN_SPEC
    assert spec.live_cells() == (True,) * 7
    dead_tail = _insert(spec, 7, _sum(P3, 11, 5))
    assert dead_tail.live_cells() == (True,) * 7 + (False,)
    # A cell read only by a dead cell is dead too.
    chain = _insert(dead_tail, 8, _gp(12, P4, 6))
    assert chain.live_cells() == (True,) * 7 + (False, False)
    # An unread hidden cell before an output at its level is summed in.
    summed = _insert(spec, 2, _sum(P3, P4, 6))
    assert summed.live_cells() == (True,) * 8
    assert summed.extra_inputs()[7] == (7,)  # into the P6 output cell


# -- canonical form --------------------------------------------------------------


def _key(spec):
    return spec.canonical_key()


def test_published_canonical_key_is_pinned():
    assert _key(known.NASFPN_SPEC) == PUBLISHED_KEY
    assert len(PUBLISHED_KEY) == 16
    hash(known.NASFPN_SPEC.canonical_form())


def test_key_equal_under_swapped_sum_inputs():
    spec = known.NASFPN_SPEC
    for i, cell in enumerate(spec.cells):
        if cell.op == "sum":
            swapped = _replace_cell(spec, i, inputs=cell.inputs[::-1])
            assert swapped != spec
            assert _key(swapped) == _key(spec)


def test_key_equal_under_swapped_attention_at_different_levels():
    spec = known.NASFPN_SPEC
    levels = spec.node_levels()
    swaps = 0
    for i, cell in enumerate(spec.cells):
        a, b = cell.inputs
        if cell.op == "global_attention" and levels[a] != levels[b]:
            swapped = _replace_cell(spec, i, inputs=(b, a))
            assert _key(swapped) == _key(spec)
            swaps += 1
    assert swaps == 4


def test_key_differs_under_swapped_attention_at_equal_levels():
    # Cell 1 merges P4 and node 5, both at level 4: the first one gates.
    spec = _replace_cell(known.NASFPN_SPEC, 1, op="global_attention")
    swapped = _replace_cell(spec, 1, inputs=(5, P4))
    assert _key(swapped) != _key(spec)


def test_canonical_form_names_the_coarser_operand_as_gate():
    spec = known.NASFPN_SPEC  # cell 0: P4 (node 1) gated by P6 (node 3)
    for inputs in [(P4, P6), (P6, P4)]:
        form = _replace_cell(spec, 0, inputs=inputs).canonical_form()
        attention = [
            c for c in form[2] if c[:3] == (4, "global_attention", False)
        ]
        assert [c[3] for c in attention] == [(P6, P4, ())]
    # Equal levels: the first input gates, as in Model Garden. Node 5 is
    # the only cell at depth 1, so it keeps its number.
    spec = _replace_cell(spec, 1, op="global_attention")
    for inputs in [(P4, 5), (5, P4)]:
        form = _replace_cell(spec, 1, inputs=inputs).canonical_form()
        assert form[2][1] == (4, "global_attention", False, inputs + ((),))


def test_key_equal_under_reordered_independent_cells():
    # Two hidden cells that do not read each other, in both orders.
    def build(first, second):
        a, b = (5, 6) if first == 0 else (6, 5)  # node of hidden cell 0, 1
        hidden = [_gp(P4, P6, 4), _sum(P3, P5, 5)]
        return NeckSpec(
            (
                hidden[first],
                hidden[second],
                _sum(P3, a, 3, True),
                _sum(a, 7, 4, True),
                _gp(b, 8, 5, True),
                _gp(a, 9, 7, True),
                _gp(9, 10, 6, True),
            )
        )

    assert build(0, 1) != build(1, 0)
    assert _key(build(0, 1)) == _key(build(1, 0))


def test_key_equal_under_reordered_output_cells():
    # The P6 and P7 output cells read neither each other nor anything later.
    spec = NeckSpec(
        known.NASFPN_SPEC.cells[:5] + (_gp(9, P6, 7, True), _gp(9, 6, 6, True))
    )
    swapped = NeckSpec(spec.cells[:5] + (spec.cells[6], spec.cells[5]))
    assert _key(swapped) == _key(spec)


def test_key_equal_with_added_dead_cells():
    spec = known.NASFPN_SPEC
    tail = _insert(spec, 7, _gp(P3, 11, 5))
    # A dead cell between output cells: its level's output came earlier and
    # it reads only nodes that already had a use.
    middle = _insert(spec, 3, _sum(P3, 5, 3))
    assert middle.live_cells()[3] is False
    for dead in (tail, middle):
        assert _key(dead) == _key(spec)
        assert dead.canonical_form() == spec.canonical_form()


def test_dead_cell_that_reads_a_node_changes_what_is_summed_in():
    spec = known.NASFPN_SPEC
    # A dead P3 cell after the P3 output reads P5: P5 now has a use, so it
    # is no longer summed into the P5 output cell.
    reads_p5 = _insert(spec, 3, _sum(P5, P3, 3))
    assert reads_p5.live_cells()[3] is False
    assert reads_p5.extra_inputs()[5] == ()  # the P5 output cell
    assert spec.extra_inputs()[4] == (P5,)
    # Deleting the dead cell would bring P5 back; the key must not.
    assert _key(reads_p5) != _key(spec)
    # Any dead cell that reads P5 before the P5 output builds the same.
    also_reads_p5 = _insert(spec, 3, _gp(P4, P5, 3))
    assert also_reads_p5.live_cells()[3] is False
    assert _key(also_reads_p5) == _key(reads_p5)
    # And P5 unread is the published computation, even with the dead cell.
    assert _key(_insert(spec, 3, _gp(P4, P6, 3))) == _key(spec)


def test_key_equal_for_interchangeable_twin_cells():
    # Nodes 5 and 6 compute the same merge of the same nodes; which one a
    # later cell reads is a naming choice, not a different computation.
    def build(a, b):
        return NeckSpec(
            (
                _sum(P4, P6, 4),
                _sum(P4, P6, 4),
                _sum(P3, a, 3, True),
                _gp(b, P5, 4, True),
                _sum(7, 8, 5, True),
                _sum(8, 9, 6, True),
                _sum(9, 10, 7, True),
            )
        )

    assert _key(build(5, 6)) == _key(build(6, 5))
    # Reading the same twin twice is a different computation.
    assert _key(build(5, 5)) != _key(build(5, 6))


@pytest.mark.parametrize(
    "index, changes",
    [
        (0, {"op": "sum"}),
        (2, {"op": "global_attention"}),
        (0, {"level": 5}),
        (1, {"inputs": (P3, 5)}),
        (4, {"inputs": (7, 6)}),
    ],
)
def test_key_differs_for_a_different_spec(index, changes):
    spec = known.NASFPN_SPEC
    assert _key(_replace_cell(spec, index, **changes)) != _key(spec)


def test_key_differs_for_swapped_output_levels():
    spec = known.NASFPN_SPEC
    cells = list(spec.cells)
    cells[5] = dataclasses.replace(cells[5], level=6)
    cells[6] = dataclasses.replace(cells[6], level=7)
    assert _key(NeckSpec(tuple(cells))) != _key(spec)


def _random_topological_order(spec, rng):
    """A random build order that keeps every read after its node's cell."""
    extras = spec.extra_inputs()
    deps = [
        {
            j - spec.num_inputs
            for j in c.inputs + extras[i]
            if j >= spec.num_inputs
        }
        for i, c in enumerate(spec.cells)
    ]
    order, done = [], set()
    while len(order) < len(spec.cells):
        ready = [
            i
            for i in range(len(spec.cells))
            if i not in done and deps[i] <= done
        ]
        pick = rng.choice(ready)
        order.append(pick)
        done.add(pick)
    return order


def _rebuild(spec, order, rng):
    """Cells in ``order``, renumbered, with sum/attention operands shuffled."""
    n = spec.num_inputs
    index = {i: i for i in range(n)}
    for k, old in enumerate(order):
        index[n + old] = n + k
    levels = spec.node_levels()
    cells = []
    for old in order:
        cell = spec.cells[old]
        a, b = (index[j] for j in cell.inputs)
        swappable = (
            cell.op == "sum" or levels[cell.inputs[0]] != levels[cell.inputs[1]]
        )
        if swappable and rng.random() < 0.5:
            a, b = b, a
        cells.append(dataclasses.replace(cell, inputs=(a, b)))
    return NeckSpec(tuple(cells), spec.min_level, spec.max_level), index


def test_key_invariant_under_random_relabelling():
    space = SearchSpace()
    rng = random.Random(3)
    checked = 0
    for _ in range(300):
        spec = space.random_spec(rng)
        order = _random_topological_order(spec, rng)
        other, index = _rebuild(spec, order, rng)
        # Moving a read before an output cell changes what is summed in;
        # keep only orders with the same summed-in nodes.
        moved = {
            index[spec.num_inputs + i]: {index[j] for j in e}
            for i, e in enumerate(spec.extra_inputs())
        }
        kept = all(
            set(e) == moved[other.num_inputs + k]
            for k, e in enumerate(other.extra_inputs())
        )
        if kept:
            assert _key(other) == _key(spec)
            checked += 1
    assert checked > 100


def test_key_differs_after_random_mutation():
    space = SearchSpace()
    rng = random.Random(4)
    for _ in range(100):
        spec = space.random_spec(rng)
        i = rng.randrange(len(spec.cells))
        cell = spec.cells[i]
        flipped = "sum" if cell.op == "global_attention" else "global_attention"
        # Every cell of the space is live, so one more op of a kind is a
        # different computation.
        assert all(spec.live_cells())
        assert _key(_replace_cell(spec, i, op=flipped)) != _key(spec)


def test_block_specs_is_output_must_be_a_bool():
    blocks = [list(block) for block in known.NASFPN_BLOCK_SPECS]
    blocks[0][3] = "False"
    with pytest.raises(SpecError, match=r"block_specs\[0\].is_output"):
        NeckSpec.from_block_specs(blocks)


def test_check_levels_accepts_the_spec_levels_and_names_a_mismatch():
    known.NASFPN_SPEC.check_levels(3, 7)
    with pytest.raises(SpecError, match=r"covers levels 3\.\.7 .* is 3\.\.6"):
        known.NASFPN_SPEC.check_levels(3, 6)
