"""The merging cell and DropBlock."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from nasfpn_tf.layers.dropblock import DropBlock
from nasfpn_tf.layers.merging_cell import MergingCell, global_attention

FILTERS = 8


def _identity_conv(cell):
    """Makes the cell's conv an identity and its BN a no-op (inference)."""
    kernel = np.zeros([3, 3, FILTERS, FILTERS], np.float32)
    kernel[1, 1] = np.eye(FILTERS)
    cell.conv.set_weights([kernel, np.zeros([FILTERS], np.float32)])
    cell.norm.set_weights(
        [
            np.ones(FILTERS),
            np.zeros(FILTERS),
            np.zeros(FILTERS),
            np.ones(FILTERS) - cell.norm.epsilon,
        ]
    )


def _nodes():
    fine = tf.random.normal([2, 8, 8, FILTERS])
    coarse = tf.random.normal([2, 4, 4, FILTERS])
    return fine, coarse


def test_sum_of_fine_and_coarse_at_fine_level():
    fine, coarse = _nodes()
    cell = MergingCell(level=3, op="sum", input_levels=(3, 4), filters=FILTERS)
    cell([fine, fine, coarse])
    _identity_conv(cell)
    up = tf.repeat(tf.repeat(coarse, 2, axis=1), 2, axis=2)
    expect = tf.nn.relu(fine + up)
    np.testing.assert_allclose(
        cell([fine, fine, coarse], training=False), expect, atol=1e-5
    )


@pytest.mark.parametrize("order", [(0, 1), (1, 0)])
def test_global_attention_coarser_input_gates(order):
    fine, coarse = _nodes()
    operands = [fine, coarse]
    levels = [3, 4]
    nodes = [operands[i] for i in order]
    input_levels = [levels[i] for i in order]
    cell = MergingCell(
        level=4,
        op="global_attention",
        input_levels=input_levels,
        filters=FILTERS,
    )
    cell([coarse] + nodes)
    _identity_conv(cell)
    down = tf.nn.max_pool2d(fine, 2, 2, "SAME")
    expect = tf.nn.relu(global_attention(coarse, down))
    got = cell([coarse] + nodes, training=False)
    np.testing.assert_allclose(got, expect, atol=1e-5)


def test_global_attention_formula():
    gate = tf.constant([[[[1.0]], [[3.0]]]])  # [1, 2, 1, 1]
    other = tf.constant([[[[2.0]], [[2.0]]]])
    weight = 1 / (1 + np.exp(-3.0))
    np.testing.assert_allclose(
        global_attention(gate, other)[0, :, 0, 0],
        [1 + 2 * weight, 3 + 2 * weight],
        rtol=1e-6,
    )


def test_equal_levels_first_input_gates():
    a = tf.random.normal([1, 4, 4, FILTERS])
    b = tf.random.normal([1, 4, 4, FILTERS])
    cell = MergingCell(
        level=4, op="global_attention", input_levels=(4, 4), filters=FILTERS
    )
    cell([a, a, b])
    _identity_conv(cell)
    np.testing.assert_allclose(
        cell([a, a, b], training=False),
        tf.nn.relu(global_attention(a, b)),
        atol=1e-5,
    )


def test_extras_are_summed_in():
    a, b, c = (tf.random.normal([1, 4, 4, FILTERS]) for _ in range(3))
    cell = MergingCell(
        level=4, op="sum", input_levels=(4, 4, 4), filters=FILTERS
    )
    cell([a, a, b, c])
    _identity_conv(cell)
    np.testing.assert_allclose(
        cell([a, a, b, c], training=False), tf.nn.relu(a + b + c), atol=1e-5
    )


def test_output_takes_reference_size_for_odd_sizes():
    fine = tf.random.normal([1, 5, 5, FILTERS])
    coarse = tf.random.normal([1, 3, 3, FILTERS])
    cell = MergingCell(level=6, op="sum", input_levels=(7, 6), filters=FILTERS)
    assert cell([fine, coarse, fine]).shape == (1, 5, 5, FILTERS)


def test_width_change_inside_cell_adds_projection():
    narrow = tf.random.normal([1, 4, 4, 4])
    cell = MergingCell(level=4, op="sum", input_levels=(4, 4), filters=FILTERS)
    y = cell([narrow, narrow, narrow])
    assert y.shape == (1, 4, 4, FILTERS)
    assert len(cell.leaf_layers()) == 6


def test_wrong_operand_count_is_a_clear_error():
    x = tf.zeros([1, 4, 4, FILTERS])
    cell = MergingCell(level=4, op="sum", input_levels=(4, 4), filters=FILTERS)
    with pytest.raises(ValueError, match="expected 2 nodes"):
        cell([x, x, x, x])


def test_unknown_op():
    with pytest.raises(ValueError, match="op"):
        MergingCell(level=4, op="max", input_levels=(4, 4), filters=FILTERS)


def test_config_round_trip_rebuilds_equal_layer():
    cell = MergingCell(
        level=4,
        op="global_attention",
        input_levels=(3, 5, 4),
        filters=FILTERS,
        use_separable_conv=True,
        activation="swish",
        norm_momentum=0.9,
        norm_epsilon=1e-4,
        dropblock_keep_prob=0.9,
        dropblock_size=2,
        kernel_regularizer=tf_keras.regularizers.L2(1e-5),
        name="cell_0_0",
    )
    config = cell.get_config()
    for key in (
        "level",
        "op",
        "filters",
        "use_separable_conv",
        "activation",
        "norm_momentum",
        "norm_epsilon",
        "dropblock_keep_prob",
        "dropblock_size",
    ):
        assert config[key] == getattr(cell, key), key
    assert config["input_levels"] == [3, 5, 4]
    inputs = [
        tf.random.normal([1, 4, 4, FILTERS]),
        tf.random.normal([1, 8, 8, FILTERS]),
        tf.random.normal([1, 2, 2, FILTERS]),
        tf.random.normal([1, 4, 4, FILTERS]),
    ]
    y = cell(inputs, training=False)
    clone = MergingCell.from_config(config)
    clone(inputs)
    clone.set_weights(cell.get_weights())
    assert clone.get_config() == config
    np.testing.assert_allclose(clone(inputs, training=False), y, atol=1e-6)


def test_dropblock_is_identity_at_inference_and_drops_in_training():
    x = tf.ones([2, 16, 16, 4])
    layer = DropBlock(keep_prob=0.8, block_size=3)
    np.testing.assert_array_equal(layer(x, training=False), x)
    y = layer(x, training=True).numpy()
    dropped = float((y == 0).mean())
    assert 0.05 < dropped < 0.4
    # Survivors are rescaled so the expected activation is unchanged.
    assert abs(float(y.mean()) - 1.0) < 1e-4


def test_dropblock_validates_arguments():
    with pytest.raises(ValueError, match="keep_prob"):
        DropBlock(keep_prob=0.0)
    with pytest.raises(ValueError, match="block_size"):
        DropBlock(keep_prob=0.9, block_size=0)
