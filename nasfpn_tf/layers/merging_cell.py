"""The NAS-FPN merging cell (arXiv:1904.07392, Sec. 3.1, Figure 3).

Two existing nodes are resampled to the cell's output level and combined by
``sum`` or ``global_attention``; nodes summed in by the output rule (see
``NeckSpec.extra_inputs``) are added; then ReLU -> 3x3 conv -> BN.

``global_attention`` is the paper's "global pooling" op with Model Garden's
exact semantics, since the paper's text is ambiguous: the operand from the
coarser input level gates the other through a sigmoid of its global max pool,
``coarse + fine * sigmoid(max_hw(coarse))`` (equal levels: the first input
gates).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import tensorflow as tf
import tf_keras
from official.modeling import tf_utils

from nasfpn_tf.arch.spec import OPS
from nasfpn_tf.layers.dropblock import DropBlock
from nasfpn_tf.layers.resample import (
    Resample,
    make_conv,
    make_norm,
    serialize_or_none,
)


def global_attention(gate: tf.Tensor, other: tf.Tensor) -> tf.Tensor:
    """``gate + other * sigmoid(global max of gate)``; shapes [b, h, w, c]."""
    weight = tf.math.sigmoid(tf.reduce_max(gate, axis=[1, 2], keepdims=True))
    return gate + other * weight


@tf_keras.utils.register_keras_serializable(package="nasfpn_tf")
class MergingCell(tf_keras.layers.Layer):
    """Merges two nodes (plus summed-in nodes) into one at ``level``.

    Call with ``[reference, node0, node1, *extras]``: ``reference`` is any
    node at ``level`` (its spatial size is the output's; it is not read
    otherwise), ``node0``/``node1`` the two inputs at ``input_levels[0:2]``,
    and ``extras`` the nodes summed in, at ``input_levels[2:]``.

    Args:
      level: output level.
      op: ``"sum"`` or ``"global_attention"``.
      input_levels: level of each operand: two inputs, then extras.
      filters: output channels (the neck's width).
      use_separable_conv: separable 3x3 conv (NAS-FPN Lite).
      activation: applied before the conv.
      norm_momentum, norm_epsilon, use_sync_bn: batch-norm settings.
      dropblock_keep_prob, dropblock_size: DropBlock after the BN (off when
        ``dropblock_keep_prob`` is None).
      kernel_regularizer, bias_regularizer: for every conv in the cell.
    """

    def __init__(
        self,
        level: int,
        op: str,
        input_levels: Sequence[int],
        filters: int,
        use_separable_conv: bool = False,
        activation: str = "relu",
        norm_momentum: float = 0.99,
        norm_epsilon: float = 1e-3,
        use_sync_bn: bool = False,
        dropblock_keep_prob: float | None = None,
        dropblock_size: int = 3,
        kernel_regularizer: Any = None,
        bias_regularizer: Any = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if op not in OPS:
            raise ValueError(f"op: expected one of {OPS}, got {op!r}")
        if len(input_levels) < 2:
            raise ValueError(
                f"input_levels: expected at least two, got {input_levels!r}"
            )
        self.level = level
        self.op = op
        self.input_levels = tuple(input_levels)
        self.filters = filters
        self.use_separable_conv = use_separable_conv
        self.activation = activation
        self.norm_momentum = norm_momentum
        self.norm_epsilon = norm_epsilon
        self.use_sync_bn = use_sync_bn
        self.dropblock_keep_prob = dropblock_keep_prob
        self.dropblock_size = dropblock_size
        self.kernel_regularizer = tf_keras.regularizers.get(kernel_regularizer)
        self.bias_regularizer = tf_keras.regularizers.get(bias_regularizer)
        norm = {
            "norm_momentum": norm_momentum,
            "norm_epsilon": norm_epsilon,
            "use_sync_bn": use_sync_bn,
        }
        self.resamples = [
            Resample(
                input_level,
                level,
                filters,
                use_separable_conv,
                kernel_regularizer=self.kernel_regularizer,
                bias_regularizer=self.bias_regularizer,
                name=f"resample_{i}",
                **norm,
            )
            for i, input_level in enumerate(self.input_levels)
        ]
        self._activation_fn = tf_utils.get_activation(activation)
        self.conv = make_conv(
            filters,
            3,
            use_separable_conv,
            self.kernel_regularizer,
            self.bias_regularizer,
            name="conv",
        )
        self.norm = make_norm(
            norm_momentum, norm_epsilon, use_sync_bn, name="bn"
        )
        self.dropblock = DropBlock(
            dropblock_keep_prob, dropblock_size, name="dropblock"
        )

    def call(self, inputs, training=None):
        reference, *nodes = inputs
        if len(nodes) != len(self.input_levels):
            raise ValueError(
                f"{self.name}: expected {len(self.input_levels)} nodes after "
                f"the reference, got {len(nodes)}"
            )
        nodes = [
            resample([node, reference], training=training)
            for resample, node in zip(self.resamples, nodes)
        ]
        node0, node1, *extras = nodes
        if self.op == "sum":
            x = node0 + node1
        elif self.input_levels[0] >= self.input_levels[1]:
            x = global_attention(node0, node1)
        else:
            x = global_attention(node1, node0)
        for extra in extras:
            x += extra
        x = self._activation_fn(x)
        x = self.norm(self.conv(x), training=training)
        return self.dropblock(x, training=training)

    def leaf_layers(self) -> list[tf_keras.layers.Layer]:
        """Convs and BNs in creation order (for weight porting)."""
        leaves = []
        for resample in self.resamples:
            if resample.conv is not None:
                leaves += [resample.conv, resample.norm]
        return leaves + [self.conv, self.norm]

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            level=self.level,
            op=self.op,
            input_levels=list(self.input_levels),
            filters=self.filters,
            use_separable_conv=self.use_separable_conv,
            activation=self.activation,
            norm_momentum=self.norm_momentum,
            norm_epsilon=self.norm_epsilon,
            use_sync_bn=self.use_sync_bn,
            dropblock_keep_prob=self.dropblock_keep_prob,
            dropblock_size=self.dropblock_size,
            kernel_regularizer=serialize_or_none(self.kernel_regularizer),
            bias_regularizer=serialize_or_none(self.bias_regularizer),
        )
        return config
