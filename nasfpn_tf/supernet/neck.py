"""The NAS-FPN supernet: every spec of a search space as one set of weights.

Single-path one-shot NAS (Guo et al., "Single Path One-Shot Neural
Architecture Search with Uniform Sampling", ECCV 2020) over the NAS-FPN
space (Ghiasi et al., CVPR 2019, arXiv:1904.07392). In a NAS-FPN neck every
node has the neck's width, so the resampling inside a cell has no weights
(max-pool down, nearest up); a cell's weights are its 3x3 conv and its BN,
and they depend only on the repeat, the cell's position and its level. The
supernet holds, per (repeat, position), a bank of one conv and one BN per
level the position may take (``CellBank``), and the standalone neck's input
projections; a spec is a path through them.

The spec enters as tensors (``encoding.encode``), so one small traced graph
runs every spec:

- every node is kept at every level, resampled without weights exactly as
  a standalone cell would resample it (one max-pool or one nearest
  upsampling from the node's own level, cropped to the repeat's input node
  at the target level);
- a cell takes the stack of nodes at its level (a ``tf.switch_case`` whose
  untaken branches compute nothing), picks its inputs with ``tf.gather``
  and its op with ``tf.where``, and convolves with its level's kernel
  gathered from the bank, so the graph holds one cell per position, not
  one per level. Its output is then moved to every level with the pooling
  and repeat factors computed from its level.

Gathering makes the gradient of a bank non-zero only in the path's rows, and
BN statistics are updated only there. With weights copied across
(``model.port_to_neck``) a path computes, bit for bit in float32 here, what
a standalone ``NasFpnNeck`` of the spec computes (``tests/test_supernet.py``).

BN modes: ``train`` normalises with batch statistics and updates the moving
averages; ``inherited`` uses the moving averages; ``batch`` the batch's
statistics without updating anything; ``calibrate`` uses the batch's
statistics and accumulates them for ``calibrated``, which uses the
accumulated ones (BN re-estimation per candidate, as in SPOS and DetNAS).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import tensorflow as tf
import tf_keras
from official.modeling import tf_utils

from nasfpn_tf.arch.space import SearchSpace
from nasfpn_tf.layers.merging_cell import global_attention
from nasfpn_tf.layers.resample import (
    Resample,
    conv_kwargs,
    max_pool_down,
    nearest_up,
)
from nasfpn_tf.modeling.neck import level_key
from nasfpn_tf.supernet import encoding

TRAIN = "train"
INHERITED = "inherited"
BATCH = "batch"
CALIBRATE = "calibrate"
CALIBRATED = "calibrated"
MODES = (TRAIN, INHERITED, BATCH, CALIBRATE, CALIBRATED)


def _stacked(initializer, rows: int):
    """An initializer drawing each row as the per-level shape would be
    drawn (fan-in/fan-out of one conv, not of the bank)."""

    def init(shape, dtype=None):
        # A fresh initializer per row: Keras draws the same values from
        # one unseeded instance called twice.
        fresh = type(initializer).from_config(initializer.get_config())
        return tf.stack(
            [
                type(initializer).from_config(fresh.get_config())(
                    shape[1:], dtype
                )
                for _ in range(rows)
            ]
        )

    return init


class CellBank(tf_keras.layers.Layer):
    """The conv and BN of one (repeat, position) cell, one row per level.

    Variables are the standalone cell's, with a leading level axis: the
    conv's ``kernel`` (separable: ``depthwise_kernel``, ``pointwise_kernel``)
    and ``bias``; the BN's ``gamma``, ``beta``, ``moving_mean``,
    ``moving_variance``; and ``calibration_*`` for re-estimated statistics.

    Args:
      levels: the levels of the rows.
      filters: channels in and out.
      use_separable_conv: a separable 3x3 conv (NAS-FPN Lite).
      momentum, epsilon: BN settings.
    """

    def __init__(
        self,
        levels: Sequence[int],
        filters: int,
        use_separable_conv: bool = False,
        momentum: float = 0.99,
        epsilon: float = 1e-3,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.levels = tuple(levels)
        self.filters = filters
        self.use_separable_conv = use_separable_conv
        self.momentum = momentum
        self.epsilon = epsilon
        rows, c = len(self.levels), filters
        init = conv_kwargs(use_separable_conv)
        if use_separable_conv:
            self.depthwise_kernel = self.add_weight(
                "depthwise_kernel",
                [rows, 3, 3, c, 1],
                initializer=_stacked(init["depthwise_initializer"], rows),
            )
            self.pointwise_kernel = self.add_weight(
                "pointwise_kernel",
                [rows, 1, 1, c, c],
                initializer=_stacked(init["pointwise_initializer"], rows),
            )
        else:
            self.kernel = self.add_weight(
                "kernel",
                [rows, 3, 3, c, c],
                initializer=_stacked(init["kernel_initializer"], rows),
            )
        self.bias = self.add_weight("bias", [rows, c], initializer="zeros")
        self.gamma = self.add_weight("gamma", [rows, c], initializer="ones")
        self.beta = self.add_weight("beta", [rows, c], initializer="zeros")
        stats = {
            "trainable": False,
            "synchronization": tf.VariableSynchronization.ON_READ,
            "aggregation": tf.VariableAggregation.MEAN,
        }
        self.moving_mean = self.add_weight(
            "moving_mean", [rows, c], initializer="zeros", **stats
        )
        self.moving_variance = self.add_weight(
            "moving_variance", [rows, c], initializer="ones", **stats
        )
        self.calibration_mean = self.add_weight(
            "calibration_mean", [rows, c], initializer="zeros", **stats
        )
        self.calibration_variance = self.add_weight(
            "calibration_variance", [rows, c], initializer="zeros", **stats
        )
        self.calibration_count = self.add_weight(
            "calibration_count", [rows], initializer="zeros", **stats
        )

    def kernels(self) -> list[tf.Variable]:
        if self.use_separable_conv:
            return [self.depthwise_kernel, self.pointwise_kernel]
        return [self.kernel]

    def call(self, x, row, mode: str = INHERITED, live=True):
        """Conv then BN of row ``row`` (a scalar int tensor); ``live``
        False (a dead cell) updates no statistics."""
        dtype = x.dtype
        if self.use_separable_conv:
            y = tf.nn.separable_conv2d(
                x,
                tf.cast(tf.gather(self.depthwise_kernel, row), dtype),
                tf.cast(tf.gather(self.pointwise_kernel, row), dtype),
                strides=[1, 1, 1, 1],
                padding="SAME",
            )
        else:
            y = tf.nn.conv2d(
                x, tf.cast(tf.gather(self.kernel, row), dtype), 1, "SAME"
            )
        y = tf.nn.bias_add(y, tf.cast(tf.gather(self.bias, row), dtype))
        gamma = tf.gather(self.gamma, row)
        beta = tf.gather(self.beta, row)
        # The fused kernel is Keras' own, so a path computes what a
        # standalone BatchNormalization computes, to the last bit.
        if mode in (TRAIN, BATCH, CALIBRATE):
            y, mean, variance = tf.compat.v1.nn.fused_batch_norm(
                y, gamma, beta, epsilon=self.epsilon, is_training=True
            )
            rows = len(self.levels)
            hit = tf.one_hot(row, rows) * tf.cast(live, tf.float32)
            if mode == TRAIN:
                decay = hit[:, None] * (1.0 - self.momentum)
                self.moving_mean.assign_sub(
                    (self.moving_mean - mean[None]) * decay
                )
                self.moving_variance.assign_sub(
                    (self.moving_variance - variance[None]) * decay
                )
            elif mode == CALIBRATE:
                self.calibration_mean.assign_add(hit[:, None] * mean[None])
                self.calibration_variance.assign_add(
                    hit[:, None] * variance[None]
                )
                self.calibration_count.assign_add(hit)
            return y
        if mode == INHERITED:
            mean = tf.gather(self.moving_mean, row)
            variance = tf.gather(self.moving_variance, row)
        elif mode == CALIBRATED:
            count = tf.maximum(tf.gather(self.calibration_count, row), 1.0)
            mean = tf.gather(self.calibration_mean, row) / count
            variance = tf.gather(self.calibration_variance, row) / count
        else:
            raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
        y, _, _ = tf.compat.v1.nn.fused_batch_norm(
            y,
            gamma,
            beta,
            mean=mean,
            variance=variance,
            epsilon=self.epsilon,
            is_training=False,
        )
        return y

    def reset_calibration(self) -> None:
        for v in (
            self.calibration_mean,
            self.calibration_variance,
            self.calibration_count,
        ):
            v.assign(tf.zeros_like(v))

    def l2(self, row) -> tf.Tensor:
        """``sum(kernel ** 2)`` of row ``row``."""
        return tf.add_n(
            [
                tf.reduce_sum(tf.square(tf.gather(k, row)))
                for k in self.kernels()
            ]
        )


def _resample_dynamic(x, gap, reference):
    """``x`` moved ``gap`` levels (a scalar int tensor: > 0 coarser, < 0
    finer) and cropped to ``reference``'s size: the standalone
    ``max_pool_down`` / ``nearest_up`` with factors known only at run
    time, in few ops (tracing cost grows with the op count)."""
    stride = tf.bitwise.left_shift(1, tf.maximum(gap, 0))
    factor = tf.bitwise.left_shift(1, tf.maximum(-gap, 0))
    batch, height, width, channels = tf.unstack(tf.shape(x))
    pad_h = tf.math.floormod(-height, stride)
    pad_w = tf.math.floormod(-width, stride)
    x = tf.pad(
        x,
        tf.reshape(tf.stack([0, 0, 0, pad_h, 0, pad_w, 0, 0]), [4, 2]),
        constant_values=x.dtype.min,
    )
    window = tf.stack([1, stride, stride, 1])
    x = tf.raw_ops.MaxPoolV2(
        input=x, ksize=window, strides=window, padding="VALID"
    )
    # Nearest upsampling by `factor`: each pixel repeated factor x factor.
    height = (height + pad_h) // stride
    width = (width + pad_w) // stride
    x = tf.reshape(x, tf.stack([batch, height, 1, width, 1, channels]))
    x = tf.broadcast_to(
        x, tf.stack([batch, height, factor, width, factor, channels])
    )
    x = tf.reshape(
        x, tf.stack([batch, height * factor, width * factor, channels])
    )
    size = tf.shape(reference)
    x = tf.slice(x, [0, 0, 0, 0], tf.stack([-1, size[1], size[2], -1]))
    return tf.ensure_shape(x, reference.shape)


class SupernetNeck(tf_keras.layers.Layer):
    """Every neck of ``space`` at once (see the module docstring).

    Call with ``features`` (the backbone's ``{level: tensor}``, or the
    projected input pyramid from ``project``), ``arch`` (the tensors of
    ``encoding.encode``) and a BN ``mode``; returns ``{"3": P3, ...}``.

    Args:
      space: the search space whose specs are paths.
      backbone_levels: the levels the backbone provides (the others are
        pooled from the level below, as in the standalone neck).
      filters, repeats: width and stacked pyramids, as for ``NasFpnNeck``.
      use_separable_conv, activation, norm_momentum, norm_epsilon,
        use_sync_bn, kernel_regularizer, bias_regularizer: as for
        ``NasFpnNeck``. The regulariser applies to the input projections;
        the cells' L2 is ``path_l2`` (counted for the path only).
    """

    def __init__(
        self,
        space: SearchSpace,
        backbone_levels: Sequence[int],
        filters: int = 256,
        repeats: int = 7,
        use_separable_conv: bool = False,
        activation: str = "relu",
        norm_momentum: float = 0.99,
        norm_epsilon: float = 1e-3,
        use_sync_bn: bool = False,
        kernel_regularizer: Any = None,
        bias_regularizer: Any = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.space = space
        self.filters = filters
        self.repeats = repeats
        self.levels = tuple(range(space.min_level, space.max_level + 1))
        self.backbone_levels = tuple(int(k) for k in backbone_levels)
        if self.levels[0] not in self.backbone_levels:
            raise ValueError(
                f"backbone_levels: the backbone must provide level "
                f"{self.levels[0]}; got {self.backbone_levels}"
            )
        self._activation = tf_utils.get_activation(activation)
        self.projections = [
            Resample(
                level if level in self.backbone_levels else level - 1,
                level,
                filters,
                use_separable_conv,
                norm_momentum=norm_momentum,
                norm_epsilon=norm_epsilon,
                use_sync_bn=use_sync_bn,
                kernel_regularizer=kernel_regularizer,
                bias_regularizer=bias_regularizer,
                name=f"input_P{level}",
            )
            for level in self.levels
        ]
        # banks[repeat][position]
        self.banks = [
            [
                CellBank(
                    encoding.position_levels(space, i),
                    filters,
                    use_separable_conv,
                    norm_momentum,
                    norm_epsilon,
                    name=f"cell_{r}_{i}",
                )
                for i in range(space.num_cells)
            ]
            for r in range(repeats)
        ]

    # -- the path ----------------------------------------------------------

    def project(
        self, features: Mapping[str, tf.Tensor], training: bool = False
    ) -> list[tf.Tensor]:
        """The input pyramid P{min}..P{max} from backbone features (the
        standalone neck's projections, in its order)."""
        feats: list[tf.Tensor] = []
        for level, projection in zip(self.levels, self.projections):
            key = level_key(level)
            if projection.input_level == level:
                source = features[key]
            else:
                source = feats[-1]
            feats.append(projection(source, training=training))
        return feats

    @tf.autograph.experimental.do_not_convert
    def call(
        self,
        features: Mapping[str, tf.Tensor] | Sequence[tf.Tensor],
        arch: Mapping[str, tf.Tensor],
        mode: str = INHERITED,
        training: bool | None = None,
    ) -> dict[str, tf.Tensor]:
        # ``training`` is Keras' own argument; ``mode`` decides here.
        del training
        if mode not in MODES:
            raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
        if isinstance(features, Mapping):
            feats = self.project(features, training=mode == TRAIN)
        else:
            feats = list(features)
        # Python lists of scalars: one unstack instead of a slice per use.
        path = {
            "inputs": [tf.unstack(p) for p in tf.unstack(arch["inputs"])],
            "branch": tf.unstack(arch["branch"]),
            "op": tf.unstack(arch["op"]),
            "extras": [tf.unstack(e) for e in tf.unstack(arch["extras"])],
            "outputs": tf.unstack(arch["outputs"]),
        }
        for r in range(self.repeats):
            feats = self._repeat(r, feats, path, mode)
        return {level_key(lv): f for lv, f in zip(self.levels, feats)}

    def _repeat(self, r, feats, arch, mode) -> list[tf.Tensor]:
        count = len(self.levels)
        # nodes[j][k]: node j at level index k.
        nodes = []
        for k, feat in enumerate(feats):
            moved = []
            for t, reference in enumerate(feats):
                if t > k:
                    moved.append(max_pool_down(feat, 2 ** (t - k)))
                elif t < k:
                    moved.append(nearest_up(feat, 2 ** (k - t), reference))
                else:
                    moved.append(feat)
            nodes.append(moved)
        for i in range(self.space.num_cells):
            nodes.append(self._cell(r, i, nodes, feats, arch, mode))
        total = count + self.space.num_cells
        return [
            tf.gather(
                tf.stack([nodes[j][k] for j in range(total)]),
                arch["outputs"][k],
            )
            for k in range(count)
        ]

    def _cell(self, r, i, nodes, feats, arch, mode) -> list[tf.Tensor]:
        """Cell ``i`` of repeat ``r``: at its level, merge, sum the extras,
        activation, conv, BN; returned at every level."""
        bank = self.banks[r][i]
        branch = arch["branch"][i]
        live = branch < len(bank.levels)
        row = tf.minimum(branch, len(bank.levels) - 1)
        index = tf.gather(
            tf.constant([lv - self.levels[0] for lv in bank.levels]), row
        )
        count = len(self.levels) + i
        # The stack of every node at each of the cell's levels; the switch
        # passes on the cell's (each branch returns one captured tensor).
        stacks = [
            tf.stack([nodes[j][lv - self.levels[0]] for j in range(count)])
            for lv in bank.levels
        ]
        stack = tf.switch_case(row, [lambda s=stack_: s for stack_ in stacks])
        x0 = tf.gather(stack, arch["inputs"][i][0])
        x1 = tf.gather(stack, arch["inputs"][i][1])
        op = arch["op"][i]
        x = tf.where(
            tf.equal(op, encoding.SUM),
            x0 + x1,
            tf.where(
                tf.equal(op, encoding.GATE_FIRST),
                global_attention(x0, x1),
                global_attention(x1, x0),
            ),
        )
        if i >= self.space.num_intermediate:
            # Only output cells sum nodes in; one by one in node order, as
            # the standalone cell adds them (0 * node adds exact zeros).
            members = tf.unstack(stack, num=count)
            for j in range(count):
                x = x + tf.cast(arch["extras"][i][j], x.dtype) * members[j]
        y = bank(self._activation(x), row, mode=mode, live=live)
        y = y * tf.cast(live, y.dtype)
        return [
            _resample_dynamic(y, k - index, reference)
            for k, reference in enumerate(feats)
        ]

    # -- what a path uses ---------------------------------------------------

    def all_banks(self) -> list[tuple[int, CellBank]]:
        """``(position, bank)`` of every cell bank, repeat by repeat."""
        return [
            (i, bank) for repeat in self.banks for i, bank in enumerate(repeat)
        ]

    def path_l2(self, arch: Mapping[str, tf.Tensor], weight: float):
        """``weight / 2 * sum(kernel ** 2)`` over the path's cell kernels
        (Model Garden's decay, as ``detector.l2_regularizer`` applies it)."""
        if not weight:
            return tf.constant(0.0)
        terms = []
        for i, bank in self.all_banks():
            branch = arch["branch"][i]
            live = tf.cast(branch < len(bank.levels), tf.float32)
            row = tf.minimum(branch, len(bank.levels) - 1)
            terms.append(live * bank.l2(row))
        return tf.add_n(terms) * (weight / 2.0)

    def reset_calibration(self) -> None:
        for _, bank in self.all_banks():
            bank.reset_calibration()
