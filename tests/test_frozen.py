"""Tests of nasfpn_tf.modeling.frozen: functions with constant weights."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from nasfpn_tf import config as config_lib
from nasfpn_tf.modeling import detector, frozen

TOLERANCE = 1e-4
TINY_DETECTOR = {
    "model": {
        "backbone": "resnet10",
        "backbone_width": 0.25,
        "image_size": 64,
        "num_classes": 3,
        "neck": {"filters": 8, "repeats": 2},
        "head": {"num_convs": 1, "num_filters": 8},
        "nms": {"max_detections": 10, "score_threshold": 0.0},
    }
}


def conv_bn_model(seed: int = 0) -> tf_keras.Model:
    """Conv, BN with non-trivial statistics, ReLU: what Grappler folds."""
    tf_keras.utils.set_random_seed(seed)
    inputs = tf_keras.Input([8, 8, 3])
    x = tf_keras.layers.Conv2D(4, 3, padding="same", use_bias=False)(inputs)
    bn = tf_keras.layers.BatchNormalization()
    x = tf_keras.layers.ReLU()(bn(x))
    model = tf_keras.Model(inputs, {"features": x, "mean": tf.reduce_mean(x)})
    rng = np.random.default_rng(seed)
    for var in bn.weights:
        var.assign(rng.uniform(0.5, 1.5, var.shape).astype(np.float32))
    return model


def images(batch: int, seed: int = 1) -> tf.Tensor:
    return tf.random.stateless_normal([batch, 8, 8, 3], (seed, 2))


def test_outputs_equal_the_variable_model_with_their_structure():
    model = conv_bn_model()
    fn = frozen.freeze(
        lambda x: model(x, training=False),
        tf.TensorSpec([None, 8, 8, 3], tf.float32),
    )
    for batch in (1, 3):  # the batch dimension stays free
        want = model(images(batch), training=False)
        got = fn(images(batch))
        assert set(got) == {"features", "mean"}
        np.testing.assert_allclose(
            got["features"], want["features"], atol=TOLERANCE
        )
        np.testing.assert_allclose(got["mean"], want["mean"], atol=TOLERANCE)


def test_weights_are_copied_at_freezing_time():
    model = conv_bn_model()
    fn = frozen.freeze(
        lambda x: model(x, training=False)["features"],
        tf.TensorSpec([2, 8, 8, 3], tf.float32),
    )
    before = fn(images(2)).numpy()
    for var in model.weights:
        var.assign(tf.zeros_like(var))
    np.testing.assert_array_equal(fn(images(2)), before)
    graph = fn.concrete_function.graph
    assert not fn.concrete_function.variables
    reads = [op.type for op in graph.get_operations() if "Variable" in op.type]
    assert not reads


def test_callable_from_another_tf_function():
    model = conv_bn_model()
    fn = frozen.freeze(
        lambda x: model(x, training=False)["mean"],
        tf.TensorSpec([None, 8, 8, 3], tf.float32),
    )

    @tf.function
    def twice(x):
        return 2.0 * fn(x)

    want = 2.0 * model(images(2), training=False)["mean"]
    np.testing.assert_allclose(twice(images(2)), want, atol=TOLERANCE)


@pytest.mark.parametrize(
    "returned, error, message",
    [
        ((), ValueError, "returns no tensor"),
        ({"n": None}, TypeError, "must be a tensor"),
    ],
)
def test_functions_without_tensor_outputs_are_rejected(
    returned, error, message
):
    with pytest.raises(error, match=message):
        frozen.freeze(
            lambda x: returned, tf.TensorSpec([1, 8, 8, 3], tf.float32)
        )


def test_detector_inference_with_nms_matches_unfrozen():
    config = config_lib.from_dict(TINY_DETECTOR)
    tf_keras.utils.set_random_seed(0)
    model = detector.build_detector(config.model)
    size = config.model.image_size
    image_shape = tf.constant([[size, size]] * 2, tf.float32)
    batch = tf.random.stateless_uniform([2, size, size, 3], (3, 4))
    keys = detector.DETECTION_KEYS

    def detect(images, shapes):
        outputs = model(images, image_shape=shapes, training=False)
        return {key: outputs[key] for key in keys}

    fn = frozen.freeze(
        detect,
        tf.TensorSpec([None, size, size, 3], tf.float32),
        tf.TensorSpec([None, 2], tf.float32),
    )
    want = detect(batch, image_shape)
    got = fn(batch, image_shape)
    assert set(got) == set(keys)
    np.testing.assert_array_equal(got["num_detections"], [10, 10])
    for key in ("detection_boxes", "detection_scores"):
        np.testing.assert_allclose(got[key], want[key], atol=TOLERANCE)
    np.testing.assert_array_equal(
        got["detection_classes"], want["detection_classes"]
    )
