"""Tests of nasfpn_tf.modeling.flops: analytic FLOPs against tf.profiler."""

import random

import pytest
import tensorflow as tf
import tf_keras

from nasfpn_tf import config as config_lib
from nasfpn_tf.arch.known import NASFPN_SPEC
from nasfpn_tf.arch.space import SearchSpace
from nasfpn_tf.modeling import detector, flops

# The analytic count may differ from the profiler's by at most this share.
TOLERANCE = 0.01


def _lite_model_config():
    # NAS-FPNLite's parts (MobileNetV2, separable convs, ReLU6), tiny.
    return config_lib.override(
        config_lib.ExperimentConfig(),
        {
            "model.backbone": "mobilenetv2",
            "model.backbone_width": 0.35,
            "model.neck.use_separable_conv": True,
            "model.head.use_separable_conv": True,
            "model.norm.activation": "relu6",
            "model.image_size": 64,
        },
    ).model


@pytest.mark.parametrize(
    "model_config",
    [config_lib.ExperimentConfig().model, _lite_model_config()],
    ids=["tiny_resnet", "tiny_lite"],
)
def test_published_spec_flops_match_the_profiler(model_config):
    size = model_config.image_size
    model = detector.build_detector(
        model_config, spec=NASFPN_SPEC, input_size=size
    )
    analytic = flops.model_flops(model, size)
    profiled = flops.profiler_flops(model, size)
    assert profiled > 0
    assert abs(analytic - profiled) <= TOLERANCE * profiled
    assert flops.summary(model, size) == {
        "flops": analytic,
        "params": model.count_params(),
    }


def test_ops_are_counted_by_hand_formulas():
    # 8x8x3 -> conv 3x3 (4 filters, bias) -> depthwise 3x3 -> relu ->
    # add itself -> max pool 2x2 -> dense 5.
    inputs = tf_keras.Input([8, 8, 3], batch_size=1)
    x = tf_keras.layers.Conv2D(4, 3, padding="same")(inputs)
    x = tf_keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False)(x)
    x = tf_keras.layers.ReLU()(x)
    x = tf_keras.layers.Add()([x, x])
    x = tf_keras.layers.MaxPool2D(2)(x)
    x = tf_keras.layers.Flatten()(x)
    outputs = tf_keras.layers.Dense(5, use_bias=False)(x)
    model = tf_keras.Model(inputs, outputs)
    function = tf.function(model).get_concrete_function(
        tf.TensorSpec([1, 8, 8, 3])
    )
    conv = 2 * (8 * 8 * 4) * 3 * 3 * 3 + 8 * 8 * 4  # multiply-adds + bias
    depthwise = 2 * (8 * 8 * 4) * 3 * 3
    add = 8 * 8 * 4
    pool = 2 * 2 * (4 * 4 * 4)
    dense = 2 * 5 * (4 * 4 * 4)
    assert flops.graph_flops(function.outputs) == (
        conv + depthwise + add + pool + dense
    )


def test_unused_outputs_are_not_counted():
    inputs = tf_keras.Input([4, 4, 2], batch_size=1)
    used = tf_keras.layers.Conv2D(2, 1, use_bias=False)(inputs)
    tf_keras.layers.Conv2D(8, 3, use_bias=False)(inputs)  # dead branch
    function = tf.function(tf_keras.Model(inputs, used)).get_concrete_function(
        tf.TensorSpec([1, 4, 4, 2])
    )
    assert flops.graph_flops(function.outputs) == 2 * 4 * 4 * 2 * 2


@pytest.mark.parametrize(
    "model_config",
    [config_lib.ExperimentConfig().model, _lite_model_config()],
    ids=["tiny_resnet", "tiny_lite"],
)
def test_neck_counter_equals_counting_each_detector_whole(model_config):
    counter = flops.NeckCounter(model_config)
    space = SearchSpace()
    rng = random.Random(3)
    size = model_config.image_size
    for spec in [NASFPN_SPEC, space.random_spec(rng), space.random_spec(rng)]:
        model = detector.build_detector(
            model_config, spec=spec, input_size=size
        )
        whole = (flops.model_flops(model, size), flops.count_params(model))
        assert counter(spec) == whole
