"""DropBlock: structured dropout for conv features.

Ghiasi, Lin, Le, "DropBlock: A regularization method for convolutional
networks", NeurIPS 2018 (arXiv:1810.12890). NAS-FPN applies it after each
merging cell's batch norm (arXiv:1904.07392, Sec. 4.2).
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf
import tf_keras


@tf_keras.utils.register_keras_serializable(package="nasfpn_tf")
class DropBlock(tf_keras.layers.Layer):
    """Zeroes ``block_size`` x ``block_size`` squares during training.

    Args:
      keep_prob: share of activations kept; ``None`` or 1.0 disables.
      block_size: side of the dropped squares (clipped to the feature size).
    """

    def __init__(
        self, keep_prob: float | None = None, block_size: int = 3, **kwargs
    ):
        super().__init__(**kwargs)
        if keep_prob is not None and not 0.0 < keep_prob <= 1.0:
            raise ValueError(f"keep_prob must be in (0, 1], got {keep_prob}")
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.keep_prob = keep_prob
        self.block_size = block_size

    def call(self, x, training=None):
        if not training or self.keep_prob is None or self.keep_prob == 1.0:
            return x
        shape = tf.shape(x)
        height, width = shape[1], shape[2]
        block = self.block_size
        if x.shape[1] is not None and x.shape[2] is not None:
            block = min(block, x.shape[1], x.shape[2])
        area = tf.cast(height * width, tf.float32)
        valid = tf.cast((height - block + 1) * (width - block + 1), tf.float32)
        gamma = (
            (1.0 - self.keep_prob)
            * area
            / float(block * block)
            / tf.maximum(valid, 1.0)
        )
        # Block centres are drawn only where a whole block fits.
        rows = tf.range(height)
        cols = tf.range(width)
        half = block // 2
        row_ok = (rows >= half) & (rows < height - (block - 1 - half))
        col_ok = (cols >= half) & (cols < width - (block - 1 - half))
        valid_mask = tf.cast(row_ok[:, None] & col_ok[None, :], tf.float32)
        noise = tf.random.uniform(tf.shape(x), dtype=tf.float32)
        seeds = (
            tf.cast(noise < gamma, tf.float32) * valid_mask[None, :, :, None]
        )
        dropped = tf.nn.max_pool2d(seeds, block, 1, "SAME")
        keep = 1.0 - dropped
        scale = tf.cast(tf.size(keep), tf.float32) / tf.maximum(
            tf.reduce_sum(keep), 1.0
        )
        return x * tf.cast(keep * scale, x.dtype)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(keep_prob=self.keep_prob, block_size=self.block_size)
        return config
