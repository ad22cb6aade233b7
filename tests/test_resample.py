"""Resampling between pyramid levels."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from nasfpn_tf.layers.resample import Resample, max_pool_down, nearest_up


def _ramp(h, w, c=1):
    return tf.reshape(tf.range(h * w * c, dtype=tf.float32), [1, h, w, c])


def test_down_is_max_pool():
    x = _ramp(4, 4)
    y = Resample(3, 4, filters=1)(x)
    np.testing.assert_array_equal(y[0, :, :, 0], [[5, 7], [13, 15]])


def test_two_levels_down_equals_two_single_steps():
    x = tf.random.normal([2, 8, 8, 3])
    direct = Resample(3, 5, filters=3)(x)
    chained = Resample(4, 5, filters=3)(Resample(3, 4, filters=3)(x))
    np.testing.assert_allclose(direct, chained)


def test_up_repeats_pixels():
    x = _ramp(2, 2)
    y = Resample(5, 4, filters=1)(x)
    np.testing.assert_array_equal(
        y[0, :, :, 0], [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]
    )


def test_same_level_same_width_is_identity_without_weights():
    x = tf.random.normal([1, 4, 4, 8])
    layer = Resample(4, 4, filters=8)
    np.testing.assert_array_equal(layer(x), x)
    assert layer.weights == []


def test_width_change_adds_conv_and_bn():
    layer = Resample(3, 3, filters=16)
    y = layer(tf.random.normal([1, 4, 4, 8]))
    assert y.shape == (1, 4, 4, 16)
    assert [w.shape.as_list() for w in layer.trainable_weights] == [
        [1, 1, 8, 16],
        [16],
        [16],
        [16],
    ]


def test_separable_width_change():
    layer = Resample(3, 4, filters=16, use_separable_conv=True)
    assert layer(tf.random.normal([1, 4, 4, 8])).shape == (1, 2, 2, 16)
    assert isinstance(layer.conv, tf_keras.layers.SeparableConv2D)


@pytest.mark.parametrize("size, expect", [(5, 3), (3, 2), (1, 1), (7, 4)])
def test_down_odd_sizes_take_ceil(size, expect):
    x = _ramp(size, size)
    y = max_pool_down(x, 2)
    assert y.shape[1:3] == (expect, expect)
    # Windows start at the top-left corner, aligned with the finer grid.
    assert float(y[0, 0, 0, 0]) == float(x[0, min(1, size - 1), 1 % size, 0])


def test_down_odd_size_aligns_with_up_crop():
    # A coarse pixel covers the same fine pixels in both directions.
    x = _ramp(5, 5)
    down = max_pool_down(x, 2)
    up = nearest_up(down, 2, reference=x)
    assert up.shape == x.shape
    for i in range(5):
        for j in range(5):
            assert float(up[0, i, j, 0]) == float(down[0, i // 2, j // 2, 0])


def test_up_crops_to_reference():
    coarse = tf.random.normal([1, 3, 3, 4])
    reference = tf.zeros([1, 5, 5, 4])
    y = Resample(7, 6, filters=4)([coarse, reference])
    assert y.shape == (1, 5, 5, 4)
    np.testing.assert_array_equal(y[0, 4, 4], coarse[0, 2, 2])


def test_down_pads_with_lowest_value_not_zero():
    x = -tf.ones([1, 3, 3, 1])
    y = max_pool_down(x, 2)
    np.testing.assert_array_equal(y, -np.ones([1, 2, 2, 1]))


@pytest.mark.parametrize("size, stride", [(3, 2), (5, 4), (9, 8), (10, 16)])
def test_down_padding_with_the_minimum_equals_the_lowest_float(size, stride):
    # The pad is the input's minimum (int8 TFLite converts it); each
    # window holds a real pixel, so the max is the lowest-padded one's.
    x = tf.random.stateless_normal([2, size, size + 1, 3], seed=[0, size])
    pad = [[0, 0], [0, -size % stride], [0, -(size + 1) % stride], [0, 0]]
    lowest = tf.pad(x, pad, constant_values=x.dtype.min)
    want = tf.nn.max_pool2d(lowest, stride, stride, "VALID")
    np.testing.assert_array_equal(max_pool_down(x, stride), want)


def test_config_round_trip():
    layer = Resample(
        3,
        5,
        filters=8,
        use_separable_conv=True,
        norm_momentum=0.9,
        norm_epsilon=1e-4,
        kernel_regularizer=tf_keras.regularizers.L2(1e-4),
        name="r",
    )
    config = layer.get_config()
    for key in ("input_level", "target_level", "filters", "norm_momentum"):
        assert config[key] == getattr(layer, key)
    clone = Resample.from_config(config)
    assert clone.get_config() == config
    x = tf.random.normal([1, 8, 8, 4])
    y = layer(x)
    clone(x)
    clone.set_weights(layer.get_weights())
    np.testing.assert_allclose(clone(x), y)
