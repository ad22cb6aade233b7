"""Resampling a feature map from one pyramid level to another.

Going down a level (coarser) max-pools, going up (finer) repeats pixels
(nearest neighbour), and a 1x1 conv + BN adapts the channel count when it
differs from the target width, as in NAS-FPN (arXiv:1904.07392, Sec. 3.1).

Unlike Model Garden's decoder, the channel adapter is added only where the
counts really differ (so narrow Lite necks get none inside the cells), and
sizes that are not divisible by ``2**max_level`` (e.g. 320x320 input: P7 is
3x3, P6 5x5) work: max-pooling pads the bottom/right edge so windows stay
aligned with the finer grid, and upsampling repeats then crops to the size of
the node it must match.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf
import tf_keras
from official.vision.ops import spatial_transform_ops


def conv_kwargs(
    use_separable_conv: bool,
    kernel_regularizer: Any = None,
    bias_regularizer: Any = None,
) -> dict[str, Any]:
    """Initialisers and regularisers of Model Garden's NAS-FPN convs."""

    def init():
        return tf_keras.initializers.VarianceScaling(
            scale=2.0, mode="fan_out", distribution="untruncated_normal"
        )

    kwargs: dict[str, Any] = {
        "bias_initializer": tf_keras.initializers.Zeros(),
        "bias_regularizer": bias_regularizer,
    }
    if use_separable_conv:
        kwargs.update(
            depthwise_initializer=init(),
            pointwise_initializer=init(),
            depthwise_regularizer=kernel_regularizer,
            pointwise_regularizer=kernel_regularizer,
        )
    else:
        kwargs.update(
            kernel_initializer=init(), kernel_regularizer=kernel_regularizer
        )
    return kwargs


def make_conv(
    filters: int,
    kernel_size: int,
    use_separable_conv: bool,
    kernel_regularizer: Any = None,
    bias_regularizer: Any = None,
    name: str | None = None,
) -> tf_keras.layers.Layer:
    conv = (
        tf_keras.layers.SeparableConv2D
        if use_separable_conv
        else tf_keras.layers.Conv2D
    )
    return conv(
        filters=filters,
        kernel_size=kernel_size,
        padding="same",
        name=name,
        **conv_kwargs(use_separable_conv, kernel_regularizer, bias_regularizer),
    )


def make_norm(
    momentum: float, epsilon: float, use_sync_bn: bool, name: str | None = None
) -> tf_keras.layers.Layer:
    return tf_keras.layers.BatchNormalization(
        axis=-1,
        momentum=momentum,
        epsilon=epsilon,
        synchronized=use_sync_bn,
        name=name,
    )


def serialize_or_none(regularizer: Any) -> Any:
    """A regulariser's config for ``get_config()``; ``None`` stays ``None``."""
    if regularizer is None:
        return None
    return tf_keras.regularizers.serialize(regularizer)


def max_pool_down(x: tf.Tensor, stride: int) -> tf.Tensor:
    """Max-pools by ``stride``; pads bottom/right when sizes do not divide.

    Args:
      x: [batch, height, width, channels].
      stride: a power of two.

    Returns:
      [batch, ceil(height / stride), ceil(width / stride), channels].
    """
    if stride == 1:
        return x
    height, width = x.shape[1], x.shape[2]
    if height and width and height % stride == 0 and width % stride == 0:
        # The divisible case is Model Garden's exact op.
        return tf.nn.max_pool2d(x, stride, stride, "SAME")
    shape = tf.shape(x)
    pad_h = (-shape[1]) % stride
    pad_w = (-shape[2]) % stride
    # Padding with the input's own minimum leaves every window's max as it
    # is (each window holds a real pixel, none exceeds the minimum), as
    # the dtype's lowest value would, but stays inside the range an int8
    # TFLite model calibrates: converted with the lowest float32 as the
    # pad value, the int8 model aborts when its tensors are allocated.
    x = tf.pad(
        x,
        [[0, 0], [0, pad_h], [0, pad_w], [0, 0]],
        constant_values=tf.reduce_min(x),
    )
    return tf.nn.max_pool2d(x, stride, stride, "VALID")


def nearest_up(
    x: tf.Tensor, scale: int, reference: tf.Tensor | None = None
) -> tf.Tensor:
    """Repeats pixels ``scale`` times; crops to ``reference``'s size if given.

    Args:
      x: [batch, height, width, channels].
      scale: a power of two.
      reference: optional [batch, h, w, ...] whose h, w the result takes;
        h <= height * scale and w <= width * scale.
    """
    if scale == 1:
        return x
    up = spatial_transform_ops.nearest_upsampling(x, scale=scale)
    if reference is None:
        return up
    h_ref, w_ref = reference.shape[1], reference.shape[2]
    h_up, w_up = up.shape[1], up.shape[2]
    if None not in (h_ref, w_ref, h_up, w_up) and (h_ref, w_ref) == (
        h_up,
        w_up,
    ):
        return up
    size = tf.shape(reference)[1:3]
    up = up[:, : size[0], : size[1], :]
    if h_ref is not None and w_ref is not None:
        up = tf.ensure_shape(up, [None, h_ref, w_ref, None])
    return up


@tf_keras.utils.register_keras_serializable(package="nasfpn_tf")
class Resample(tf_keras.layers.Layer):
    """Moves a node to another level and width.

    Call with ``x`` or ``[x, reference]``: the reference is any node already
    at the target level, whose spatial size the result matches exactly (only
    needed when sizes are not powers-of-two multiples of each other).

    Args:
      input_level: level of the input node.
      target_level: level of the output.
      filters: output channels; a 1x1 conv + BN is added iff the input's
        channel count differs.
      use_separable_conv: separable 1x1 conv (NAS-FPN Lite).
      norm_momentum, norm_epsilon, use_sync_bn: batch-norm settings.
      kernel_regularizer, bias_regularizer: for the 1x1 conv.
    """

    def __init__(
        self,
        input_level: int,
        target_level: int,
        filters: int,
        use_separable_conv: bool = False,
        norm_momentum: float = 0.99,
        norm_epsilon: float = 1e-3,
        use_sync_bn: bool = False,
        kernel_regularizer: Any = None,
        bias_regularizer: Any = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.input_level = input_level
        self.target_level = target_level
        self.filters = filters
        self.use_separable_conv = use_separable_conv
        self.norm_momentum = norm_momentum
        self.norm_epsilon = norm_epsilon
        self.use_sync_bn = use_sync_bn
        self.kernel_regularizer = tf_keras.regularizers.get(kernel_regularizer)
        self.bias_regularizer = tf_keras.regularizers.get(bias_regularizer)
        self.conv = None
        self.norm = None

    def build(self, input_shape):
        shape = (
            input_shape[0]
            if isinstance(input_shape, (list, tuple))
            and isinstance(input_shape[0], (list, tuple, tf.TensorShape))
            else input_shape
        )
        channels = tf.TensorShape(shape)[-1]
        if channels != self.filters:
            self.conv = make_conv(
                self.filters,
                1,
                self.use_separable_conv,
                self.kernel_regularizer,
                self.bias_regularizer,
                name="conv",
            )
            self.norm = make_norm(
                self.norm_momentum,
                self.norm_epsilon,
                self.use_sync_bn,
                name="bn",
            )
        super().build(input_shape)

    def call(self, inputs, training=None):
        if isinstance(inputs, (list, tuple)):
            x, reference = inputs
        else:
            x, reference = inputs, None
        if self.conv is not None:
            x = self.norm(self.conv(x), training=training)
        gap = self.target_level - self.input_level
        if gap > 0:
            return max_pool_down(x, 2**gap)
        if gap < 0:
            return nearest_up(x, 2 ** (-gap), reference)
        return x

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            input_level=self.input_level,
            target_level=self.target_level,
            filters=self.filters,
            use_separable_conv=self.use_separable_conv,
            norm_momentum=self.norm_momentum,
            norm_epsilon=self.norm_epsilon,
            use_sync_bn=self.use_sync_bn,
            kernel_regularizer=serialize_or_none(self.kernel_regularizer),
            bias_regularizer=serialize_or_none(self.bias_regularizer),
        )
        return config
