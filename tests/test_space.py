"""Tests for nasfpn_tf.arch.space."""

import collections
import itertools
import json
import math
import random
import types

import pytest

from nasfpn_tf.arch import known
from nasfpn_tf.arch.space import SearchSpace, SpaceError
from nasfpn_tf.arch.spec import CellSpec, NeckSpec, SpecError

# The published spec as actions: per cell input0, input1, level, op.
PUBLISHED_ACTIONS = [
    *(1, 3, 0, 1),  # level index 0 of (4, 5, 6, 7); global_attention
    *(1, 5, 0, 0),
    *(0, 6, 0, 0),  # output cells: level index = level - 3
    *(6, 7, 1, 0),
    *(7, 8, 2, 1),
    *(6, 9, 4, 1),
    *(9, 10, 3, 1),
]
# Two levels (P3, P4), no hidden cell: the smallest space.
TINY = {"num_intermediate": 0, "min_level": 3, "max_level": 4}
# The same with one hidden cell at either level.
SMALL = {**TINY, "num_intermediate": 1, "intermediate_levels": (3, 4)}


def _by_hand(space, actions):
    """Builds the spec straight from raw actions, without the space's masks.

    Raises SpecError exactly when the actions make no valid spec.
    """
    cells = []
    for c in range(space.num_cells):
        in0, in1, level, op = actions[4 * c : 4 * c + 4]
        hidden = c < space.num_intermediate
        level = (
            space.intermediate_levels[level]
            if hidden
            else space.min_level + level
        )
        cells.append(CellSpec((in0, in1), level, space.ops[op], not hidden))
    return NeckSpec(tuple(cells), space.min_level, space.max_level)


def _valid_by_hand(space):
    """Every unmasked action sequence that makes a valid spec."""
    valid = []
    for actions in itertools.product(*map(range, space.num_choices)):
        try:
            _by_hand(space, actions)
        except SpecError:
            continue
        valid.append(actions)
    return valid


def test_defaults_are_googles_space():
    space = SearchSpace()
    assert space.num_intermediate == 2
    assert space.intermediate_levels == (4, 5, 6, 7)
    assert (space.min_level, space.max_level) == (3, 7)
    assert space.ops == ("sum", "global_attention")
    assert space.num_inputs == 5
    assert space.num_cells == 7
    assert space.num_steps == 28


def test_num_choices_and_step_names():
    space = SearchSpace()
    assert space.num_choices == (
        *(5, 5, 4, 2),
        *(6, 6, 4, 2),
        *(7, 7, 5, 2),
        *(8, 8, 5, 2),
        *(9, 9, 5, 2),
        *(10, 10, 5, 2),
        *(11, 11, 5, 2),
    )
    names = space.step_names
    assert len(names) == space.num_steps
    assert names[:4] == (
        "cell0.input0",
        "cell0.input1",
        "cell0.level",
        "cell0.op",
    )
    assert names[9] == "cell2.input1"
    assert names[-1] == "cell6.op"


def test_published_spec_is_a_member_and_round_trips():
    space = SearchSpace()
    assert space.contains(known.NASFPN_SPEC)
    assert space.from_spec(known.NASFPN_SPEC) == PUBLISHED_ACTIONS
    assert space.to_spec(PUBLISHED_ACTIONS) == known.NASFPN_SPEC


def test_size_closed_form_by_hand():
    # Ordered pairs of distinct nodes for cells reading 5..11 nodes, an op
    # per cell, 4 levels per hidden cell, and the 5! orders of the outputs.
    pairs = (
        (5 * 4) * (6 * 5) * (7 * 6) * (8 * 7) * (9 * 8) * (10 * 9) * (11 * 10)
    )
    expected = pairs * 2**7 * 4**2 * 120
    assert SearchSpace().size() == expected == 247_210_809_753_600_000
    assert SearchSpace(ops=("sum",)).size() == expected // 2**7


@pytest.mark.parametrize(
    "kwargs, by_hand",
    [
        # cells read 2 then 3 nodes; 2 ops each; 2! output orders.
        (TINY, (2 * 1) * (3 * 2) * 2**2 * 2),
        # 3 levels: cells read 3, 4, 5 nodes; 3! output orders.
        ({**TINY, "max_level": 5}, (3 * 2) * (4 * 3) * (5 * 4) * 2**3 * 6),
        # one hidden cell with 2 levels before the 2 output cells.
        (SMALL, (2 * 1) * (3 * 2) * (4 * 3) * 2**3 * 2 * 2),
        ({**SMALL, "ops": ("sum",)}, (2 * 1) * (3 * 2) * (4 * 3) * 2 * 2),
    ],
)
def test_size_matches_brute_force(kwargs, by_hand):
    space = SearchSpace(**kwargs)
    count = sum(1 for _ in space.all_actions())
    assert space.size() == count == by_hand


def test_every_action_sequence_is_a_distinct_spec():
    for kwargs in (TINY, SMALL):
        space = SearchSpace(**kwargs)
        specs = [space.to_spec(a) for a in space.all_actions()]
        assert len(set(specs)) == len(specs) == space.size()
        for actions, spec in zip(space.all_actions(), specs):
            assert space.from_spec(spec) == actions


def test_all_actions_equals_every_valid_sequence_by_hand():
    for kwargs in (TINY, SMALL):
        space = SearchSpace(**kwargs)
        by_hand = _valid_by_hand(space)
        assert [tuple(a) for a in space.all_actions()] == by_hand
        for actions in by_hand:
            assert space.to_spec(actions) == _by_hand(space, actions)


def test_masks_forbid_exactly_the_invalid_choices():
    # A choice is valid iff some valid spec starts with prefix + choice.
    for kwargs in (TINY, SMALL):
        space = SearchSpace(**kwargs)
        prefixes = {
            a[:k]
            for a in _valid_by_hand(space)
            for k in range(space.num_steps + 1)
        }
        for prefix in prefixes:
            step = len(prefix)
            if step == space.num_steps:
                continue
            mask = space.mask(step, list(prefix))
            assert len(mask) == space.num_choices[step]
            expected = tuple(
                prefix + (c,) in prefixes for c in range(len(mask))
            )
            assert mask == expected, (prefix, mask)


def test_masks_of_the_published_actions():
    space = SearchSpace()
    masks = space.masks(PUBLISHED_ACTIONS)
    assert len(masks) == space.num_steps
    for step, mask in enumerate(masks):
        assert mask == space.mask(step, PUBLISHED_ACTIONS)
    assert masks[0] == (True,) * 5
    assert masks[1] == (True, False, True, True, True)  # input0 was node 1
    assert masks[2] == (True,) * 4  # hidden levels are never masked
    # Output cells so far made P3 (cell 2) and P4 (cell 3); cell 4 may
    # not repeat them, cell 6 is left with P6 only.
    assert masks[4 * 4 + 2] == (False, False, True, True, True)
    assert masks[6 * 4 + 2] == (False, False, False, True, False)


def test_random_samples_are_valid_and_round_trip():
    space = SearchSpace()
    rng = random.Random(0)
    keys = set()
    for _ in range(1000):
        actions = space.random_actions(rng)
        assert len(actions) == space.num_steps
        masks = space.masks(actions)
        assert all(mask[a] for mask, a in zip(masks, actions))
        spec = space.to_spec(actions)
        assert NeckSpec.from_json(spec.to_json()) == spec
        assert space.contains(spec)
        assert space.from_spec(spec) == actions
        assert sorted(spec.output_nodes()) == list(space.levels)
        keys.add(spec.canonical_key())
    assert len(keys) == 1000  # 2e17 specs: no repeats expected


def test_random_actions_are_uniform_over_specs():
    space = SearchSpace(**TINY)  # 96 specs
    rng = random.Random(1)
    draws = 96 * 200
    counts = collections.Counter(
        tuple(space.random_actions(rng)) for _ in range(draws)
    )
    assert len(counts) == space.size()
    expected = draws / space.size()
    chi2 = sum((n - expected) ** 2 / expected for n in counts.values())
    # 95 degrees of freedom: mean 95, sd ~13.8; 160 is past 4.5 sd.
    assert chi2 < 160


def test_random_actions_follow_the_rng():
    space = SearchSpace()
    assert space.random_actions(random.Random(5)) == space.random_actions(
        random.Random(5)
    )
    assert space.random_spec(random.Random(5)) == space.to_spec(
        space.random_actions(random.Random(5))
    )


def test_distinct_computations_small_space_by_hand():
    # Levels P3, P4, no hidden cell: cell 0 merges P3 and P4 (operand order
    # never matters across levels) at its level L0, op s/g: 2 x 2. Cell 1
    # at the other level reads {P3,P4}: 2 ops; {P_L0, cell 0} (same level):
    # sum or attention in either order = 3; {other P, cell 0}: 2 ops. So
    # 4 x 7 = 28, but when cell 1 also reads {P3, P4} the two cells are
    # independent and (P3: a, P4: b) built in either order is one
    # computation: 2 x 2 x 2 = 8 sequences count 4 twice, 28 - 4 = 24.
    space = SearchSpace(**TINY)
    assert space.num_distinct_computations() == 24
    assert space.size() == 96


def test_distinct_computations_refuses_big_spaces():
    with pytest.raises(SpaceError, match="max_size"):
        SearchSpace().num_distinct_computations()


def test_to_spec_errors_name_the_step():
    space = SearchSpace()
    bad = list(PUBLISHED_ACTIONS)
    bad[1] = bad[0]
    with pytest.raises(
        SpaceError, match=r"actions\[1\] \(cell0\.input1\).*masked"
    ):
        space.to_spec(bad)
    bad = list(PUBLISHED_ACTIONS)
    bad[4 * 6 + 2] = 0  # cell 6 repeats the P3 output
    with pytest.raises(SpaceError, match=r"cell6\.level.*masked"):
        space.to_spec(bad)
    bad = list(PUBLISHED_ACTIONS)
    bad[0] = 5  # only nodes 0..4 exist for cell 0
    with pytest.raises(SpaceError, match=r"cell0\.input0.*out of range"):
        space.to_spec(bad)
    bad[0] = -1
    with pytest.raises(SpaceError, match=r"cell0\.input0.*out of range"):
        space.to_spec(bad)
    bad[0] = True
    with pytest.raises(SpaceError, match=r"cell0\.input0.*expected an int"):
        space.to_spec(bad)
    bad[0] = 1.0
    with pytest.raises(SpaceError, match=r"cell0\.input0.*expected an int"):
        space.to_spec(bad)
    with pytest.raises(SpaceError, match="expected 28 actions, got 27"):
        space.to_spec(PUBLISHED_ACTIONS[:-1])
    with pytest.raises(SpaceError, match="at most 28 actions, got 29"):
        space.to_spec(PUBLISHED_ACTIONS + [0])
    with pytest.raises(SpaceError, match="sequence of ints"):
        space.to_spec(7)


def test_actions_may_be_numpy_ints():
    np = pytest.importorskip("numpy")
    space = SearchSpace()
    actions = np.array(PUBLISHED_ACTIONS, dtype=np.int64)
    assert space.to_spec(actions) == known.NASFPN_SPEC
    assert space.mask(5, actions) == (True, False, True, True, True, True)
    assert space.to_spec(tuple(actions)) == known.NASFPN_SPEC


def test_mask_errors():
    space = SearchSpace()
    with pytest.raises(SpaceError, match="step: expected an int in"):
        space.mask(28, PUBLISHED_ACTIONS)
    with pytest.raises(SpaceError, match="step: expected an int in"):
        space.mask(-1, [])
    with pytest.raises(SpaceError, match="needs the 3 earlier actions, got 2"):
        space.mask(3, [0, 1])
    with pytest.raises(SpaceError, match=r"cell0\.input1"):
        space.mask(2, [1, 1])
    # Longer prefixes are cut to the earlier steps.
    assert space.mask(1, PUBLISHED_ACTIONS) == space.mask(1, [1])


def _cells(spec):
    return list(spec.cells)


@pytest.mark.parametrize(
    "make, match",
    [
        (
            lambda s: SearchSpace(
                min_level=2, max_level=6, intermediate_levels=(4,)
            ).random_spec(random.Random(0)),
            "levels 2..6",
        ),
        (
            lambda s: NeckSpec(_cells(s) + [CellSpec((0, 1), 3, "sum")]),
            "8 cells",
        ),
        (
            lambda s: NeckSpec(_drop_first(s)),
            "6 cells",
        ),
        (
            lambda s: NeckSpec(
                (CellSpec((1, 3), 3, "global_attention"),) + s.cells[1:]
            ),
            r"cells\[0\]\.level 3 is not among intermediate_levels",
        ),
    ],
)
def test_from_spec_rejects_specs_outside_the_space(make, match):
    space = SearchSpace()
    spec = make(known.NASFPN_SPEC)
    with pytest.raises(SpaceError, match=match):
        space.from_spec(spec)
    assert not space.contains(spec)


def _drop_first(spec):
    """The published spec without its first cell (nodes renumbered)."""
    cells = []
    for cell in spec.cells[1:]:
        inputs = tuple(j - 1 if j > 5 else j for j in cell.inputs)
        inputs = tuple(3 if j == 5 else j for j in inputs)
        cells.append(CellSpec(inputs, cell.level, cell.op, cell.is_output))
    return tuple(cells)


def test_from_spec_rejects_output_flags_and_ops_outside_the_space():
    spec = known.NASFPN_SPEC
    sum_only = SearchSpace(ops=("sum",))
    with pytest.raises(SpaceError, match=r"cells\[0\]\.op 'global_attention'"):
        sum_only.from_spec(spec)
    # Three hidden cells: the published cell 2 would be an output among them.
    three = SearchSpace(num_intermediate=3, intermediate_levels=(3, 4))
    with pytest.raises(SpaceError, match="7 cells"):
        three.from_spec(spec)
    one = SearchSpace(num_intermediate=1)
    with pytest.raises(SpaceError, match="7 cells"):
        one.from_spec(spec)
    with pytest.raises(SpaceError, match="expected a NeckSpec"):
        SearchSpace().from_spec(spec.to_dict())


def test_from_spec_rejects_misplaced_output_cells():
    # Valid spec, 7 cells, but an output cell comes first.
    spec = NeckSpec(
        (
            CellSpec((0, 1), 3, "sum", True),
            CellSpec((1, 5), 4, "sum"),
            CellSpec((5, 6), 4, "sum", True),
            CellSpec((2, 7), 5, "sum", True),
            CellSpec((3, 8), 6, "sum", True),
            CellSpec((4, 9), 7, "sum", True),
            CellSpec((9, 10), 5, "sum"),
        )
    )
    with pytest.raises(SpaceError, match=r"cells\[0\]\.is_output is True"):
        SearchSpace().from_spec(spec)
    assert not SearchSpace().contains(spec)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_intermediate": -1}, "num_intermediate"),
        ({"num_intermediate": 2.0}, "num_intermediate"),
        ({"num_intermediate": True}, "num_intermediate"),
        ({"num_intermediate": 60}, "limit of 64"),
        ({"min_level": 7}, r"min_level \(7\) must be below"),
        ({"max_level": 11}, "max_level"),
        ({"min_level": "3"}, "min_level"),
        ({"intermediate_levels": ()}, "intermediate_levels"),
        ({"intermediate_levels": ("4",)}, "intermediate_levels"),
        ({"intermediate_levels": (4, 8)}, "intermediate_levels.*8"),
        ({"intermediate_levels": (2,)}, "intermediate_levels.*2"),
        ({"intermediate_levels": (4, 4)}, "intermediate_levels: repeated"),
        ({"intermediate_levels": 4}, "intermediate_levels"),
        ({"ops": ()}, "ops"),
        ({"ops": ("sum", "max")}, "ops.*'max'"),
        ({"ops": ("sum", "sum")}, "ops: repeated"),
        ({"ops": "sum"}, "ops"),
    ],
)
def test_invalid_space_raises(kwargs, match):
    with pytest.raises(SpaceError, match=match):
        SearchSpace(**kwargs)


def test_intermediate_levels_unused_without_hidden_cells():
    # A config's default levels (4..7) need not fit P3..P4 with no hidden
    # cell; the empty list is fine too.
    assert SearchSpace(**TINY).size() == 96
    assert SearchSpace(**TINY, intermediate_levels=()).size() == 96


def test_lists_become_tuples_and_to_dict_round_trips():
    space = SearchSpace(intermediate_levels=[5, 6], ops=["sum"])
    assert space.intermediate_levels == (5, 6)
    assert space.ops == ("sum",)
    hash(space)
    data = json.loads(json.dumps(space.to_dict()))
    assert SearchSpace(**data) == space


def test_from_config_duck_typed():
    assert SearchSpace.from_config(None) == SearchSpace()
    cfg = types.SimpleNamespace(
        num_intermediate=1,
        intermediate_levels=[5],
        ops=("sum",),
        unrelated="ignored",
    )
    space = SearchSpace.from_config(cfg)
    assert space == SearchSpace(
        num_intermediate=1, intermediate_levels=(5,), ops=("sum",)
    )
    assert SearchSpace.from_config(cfg, min_level=2, max_level=6) == (
        SearchSpace(1, (5,), 2, 6, ("sum",))
    )
    assert SearchSpace.from_config({"num_intermediate": 0}) == SearchSpace(
        num_intermediate=0
    )
    with pytest.raises(SpaceError, match="num_intermidiate: unknown"):
        SearchSpace.from_config({"num_intermidiate": 0})
    with pytest.raises(SpaceError, match="levels: unknown"):
        SearchSpace.from_config(None, levels=3)


def test_from_config_reads_the_project_config():
    config = pytest.importorskip("nasfpn_tf.config")
    space_config = getattr(config, "SpaceConfig", None)
    if space_config is None:
        pytest.skip("nasfpn_tf.config has no SpaceConfig")
    assert SearchSpace.from_config(space_config()) == SearchSpace()


def test_controller_view_is_consistent():
    # What a controller sees: counts per step, and masks of those lengths
    # whose valid choices are never empty.
    space = SearchSpace()
    rng = random.Random(2)
    for _ in range(20):
        actions = space.random_actions(rng)
        for step, mask in enumerate(space.masks(actions)):
            assert len(mask) == space.num_choices[step]
            assert any(mask)
    log_size = sum(math.log(sum(m)) for m in space.masks(PUBLISHED_ACTIONS))
    assert math.isclose(log_size, math.log(space.size()))
