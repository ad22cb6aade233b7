"""The NAS-FPN neck: a stack of feature pyramids built from any spec.

Ghiasi et al., "NAS-FPN: Learning Scalable Feature Pyramid Architecture for
Object Detection", CVPR 2019 (arXiv:1904.07392). Backbone features
C{min_level}.. are projected to the neck's width (levels above the backbone's
by max-pooling), then one pyramid network described by a ``NeckSpec`` is
repeated ``repeats`` times (``7@256`` = 7 repeats at width 256).

With the published spec this is Model Garden's ``nasfpn`` decoder: the same
parameters, the same layers in the same creation order, the same outputs for
the same weights (see ``tests/test_neck.py``). It differs where that decoder
is wrong: resampling adds a 1x1 conv only where channel counts really differ
(Model Garden compares against a hard-coded 256), sizes not divisible by
``2**max_level`` work, and ``get_config()`` keeps the whole spec.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping
from typing import Any

import tensorflow as tf
import tf_keras

from nasfpn_tf.arch.known import NASFPN_SPEC
from nasfpn_tf.arch.spec import NeckSpec
from nasfpn_tf.layers.merging_cell import MergingCell
from nasfpn_tf.layers.resample import Resample, serialize_or_none


def level_key(level: int) -> str:
    """Pyramid levels are ints in Python and strings at Keras boundaries."""
    return str(level)


def anytime_key(repeat: int, level: int) -> str:
    """Output key of an intermediate repeat's level (anytime detection)."""
    return f"repeat{repeat}/{level}"


@tf_keras.utils.register_keras_serializable(package="nasfpn_tf")
class NasFpnNeck(tf_keras.Model):
    """A NAS-FPN neck as a functional model.

    Inputs are a dict ``{"2": C2, "3": C3, ...}`` of backbone features (as
    Model Garden backbones return them); outputs ``{"3": P3, ..., "7": P7}``,
    each ``[batch, ceil(H / 2**level), ceil(W / 2**level), filters]``.

    Args:
      input_specs: ``{level: TensorShape}`` of the backbone outputs.
      spec: the pyramid topology; a ``NeckSpec`` or its dict form.
        ``None`` means the published NAS-FPN spec.
      filters: width of every node.
      repeats: how many times the pyramid network is stacked.
      use_separable_conv: separable convs (NAS-FPN Lite).
      activation: the cells' activation.
      use_sync_bn, norm_momentum, norm_epsilon: batch-norm settings.
      dropblock_keep_prob, dropblock_size: DropBlock in every cell.
      kernel_regularizer, bias_regularizer: for every conv.
      anytime: also output every earlier repeat's pyramid, keyed
        ``anytime_key(repeat, level)``, for anytime detection.
    """

    def __init__(
        self,
        input_specs: Mapping[str, Any],
        spec: NeckSpec | Mapping[str, Any] | None = None,
        filters: int = 256,
        repeats: int = 7,
        use_separable_conv: bool = False,
        activation: str = "relu",
        use_sync_bn: bool = False,
        norm_momentum: float = 0.99,
        norm_epsilon: float = 1e-3,
        dropblock_keep_prob: float | None = None,
        dropblock_size: int = 3,
        kernel_regularizer: Any = None,
        bias_regularizer: Any = None,
        anytime: bool = False,
        **kwargs,
    ):
        spec = _resolve_spec(spec)
        if filters < 1 or repeats < 1:
            raise ValueError(
                f"filters and repeats must be >= 1, got {filters}, {repeats}"
            )
        input_specs = {
            level_key(int(k)): tf.TensorShape(v) for k, v in input_specs.items()
        }
        _check_input_specs(input_specs, spec)
        # The arguments every cell shares, in get_config()'s order.
        options = {
            "use_separable_conv": use_separable_conv,
            "activation": activation,
            "use_sync_bn": use_sync_bn,
            "norm_momentum": norm_momentum,
            "norm_epsilon": norm_epsilon,
            "dropblock_keep_prob": dropblock_keep_prob,
            "dropblock_size": dropblock_size,
            "kernel_regularizer": tf_keras.regularizers.get(kernel_regularizer),
            "bias_regularizer": tf_keras.regularizers.get(bias_regularizer),
        }
        conv, cell_kwargs = _layer_kwargs(filters, options)
        inputs = {
            k: tf_keras.Input(shape=shape[1:], name=f"C{k}")
            for k, shape in sorted(
                input_specs.items(), key=lambda kv: int(kv[0])
            )
        }
        projections, feats = _project_inputs(inputs, spec, filters, conv)
        cells, outputs = _stack_repeats(
            feats, spec, repeats, cell_kwargs, anytime
        )

        super().__init__(inputs=inputs, outputs=outputs, **kwargs)
        self.spec = spec
        self._projections = projections
        self._cells = cells
        # Kept as JSON text: Keras would wrap a dict attribute for tracking.
        self._config_json = json.dumps(
            {
                "input_specs": {k: v.as_list() for k, v in input_specs.items()},
                "spec": spec.to_dict(),
                "filters": filters,
                "repeats": repeats,
                **options,
                "kernel_regularizer": serialize_or_none(
                    options["kernel_regularizer"]
                ),
                "bias_regularizer": serialize_or_none(
                    options["bias_regularizer"]
                ),
                "anytime": anytime,
            }
        )
        self._output_specs = {
            level_key(level): outputs[level_key(level)].shape
            for level in spec.levels
        }

    @property
    def output_specs(self) -> dict[str, tf.TensorShape]:
        """``{level: TensorShape}`` of the final pyramid (Model Garden API)."""
        return self._output_specs

    def leaf_layers(self) -> list[tf_keras.layers.Layer]:
        """Every conv and BN in creation order, as Model Garden creates them.

        Lets weights move between this neck and Model Garden's decoder by
        structure rather than by name.
        """
        leaves = []
        for projection in self._projections:
            if projection.conv is not None:
                leaves += [projection.conv, projection.norm]
        for cell in self._cells:
            leaves += cell.leaf_layers()
        return leaves

    def get_config(self) -> dict[str, Any]:
        return dict(json.loads(self._config_json), name=self.name)

    @classmethod
    def from_config(cls, config, custom_objects=None):
        return cls(**config)


def _layer_kwargs(
    filters: int, options: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The keyword arguments of every conv (with its BN) and of every
    merging cell, from the neck's shared `options`."""
    conv = {
        "use_separable_conv": options["use_separable_conv"],
        "kernel_regularizer": options["kernel_regularizer"],
        "bias_regularizer": options["bias_regularizer"],
        "norm_momentum": options["norm_momentum"],
        "norm_epsilon": options["norm_epsilon"],
        "use_sync_bn": options["use_sync_bn"],
    }
    cell_kwargs = {
        "filters": filters,
        "activation": options["activation"],
        "dropblock_keep_prob": options["dropblock_keep_prob"],
        "dropblock_size": options["dropblock_size"],
        **conv,
    }
    return conv, cell_kwargs


def _resolve_spec(spec: NeckSpec | Mapping[str, Any] | None) -> NeckSpec:
    """The published spec for None, a spec for its dict form."""
    if spec is None:
        return NASFPN_SPEC
    if isinstance(spec, Mapping):
        return NeckSpec.from_dict(spec)
    return spec


def _project_inputs(
    inputs: Mapping[str, tf.Tensor],
    spec: NeckSpec,
    filters: int,
    conv: Mapping[str, Any],
) -> tuple[list[Resample], list[tf.Tensor]]:
    """The input pyramid P{min}..P{max} at ``filters`` channels: each
    backbone level projected, and the levels the backbone lacks made by
    downsampling the level below (Model Garden's order of layers)."""
    projections = []
    feats = []
    for level in spec.levels:
        if level_key(level) in inputs:
            source, source_level = inputs[level_key(level)], level
        else:
            source, source_level = feats[-1], level - 1
        projection = Resample(
            source_level, level, filters, name=f"input_P{level}", **conv
        )
        projections.append(projection)
        feats.append(projection(source))
    return projections, feats


def _stack_repeats(
    feats: list[tf.Tensor],
    spec: NeckSpec,
    repeats: int,
    cell_kwargs: Mapping[str, Any],
    anytime: bool,
) -> tuple[list[MergingCell], dict[str, tf.Tensor]]:
    """``repeats`` copies of the spec's cells, each reading the previous
    pyramid; the cells made and the outputs (the last pyramid, and with
    ``anytime`` every earlier one)."""
    node_levels = spec.node_levels()
    extras = spec.extra_inputs()
    live = spec.live_cells()
    output_nodes = spec.output_nodes()
    cells = []
    outputs: dict[str, tf.Tensor] = {}
    for repeat in range(repeats):
        nodes = list(feats)
        for i, cell_spec in enumerate(spec.cells):
            if not live[i]:
                # Dead cells feed no output: they would build no weights
                # in a functional model, so none are made.
                nodes.append(None)
                continue
            operands = cell_spec.inputs + extras[i]
            cell = MergingCell(
                level=cell_spec.level,
                op=cell_spec.op,
                input_levels=[node_levels[j] for j in operands],
                name=f"cell_{repeat}_{i}",
                **cell_kwargs,
            )
            cells.append(cell)
            reference = feats[cell_spec.level - spec.min_level]
            nodes.append(cell([reference] + [nodes[j] for j in operands]))
        feats = [nodes[output_nodes[level]] for level in spec.levels]
        if anytime and repeat < repeats - 1:
            for level, feat in zip(spec.levels, feats):
                outputs[anytime_key(repeat, level)] = feat
    for level, feat in zip(spec.levels, feats):
        outputs[level_key(level)] = feat
    return cells, outputs


def build_neck(
    spec: NeckSpec | None,
    input_specs: Mapping[str, Any],
    filters: int = 256,
    repeats: int = 7,
    **kwargs,
) -> NasFpnNeck:
    """Builds a NAS-FPN neck; see ``NasFpnNeck`` for the arguments."""
    return NasFpnNeck(
        input_specs, spec=spec, filters=filters, repeats=repeats, **kwargs
    )


def _check_input_specs(
    input_specs: Mapping[str, tf.TensorShape], spec: NeckSpec
) -> None:
    """Fails early, naming the level, on inputs the neck cannot use."""
    levels = sorted(int(k) for k in input_specs)
    if not levels or levels[0] > spec.min_level:
        raise ValueError(
            f"input_specs: the backbone must provide level {spec.min_level} "
            f"(the neck's min_level) or finer; got levels {levels}"
        )
    used = [lv for lv in levels if spec.min_level <= lv <= spec.max_level]
    if used != list(range(spec.min_level, spec.min_level + len(used))):
        raise ValueError(
            f"input_specs: backbone levels from {spec.min_level} must be "
            f"contiguous; got {levels}"
        )
    for level in levels:
        shape = input_specs[level_key(level)]
        if shape.rank != 4:
            raise ValueError(
                f"input_specs[{level!r}]: expected [batch, h, w, c], got "
                f"{shape}"
            )
    # Coarser levels must be the 'same'-padded halving of finer ones, or the
    # resampled nodes of a cell cannot be added.
    for finer, coarser in itertools.pairwise(used):
        for axis in (1, 2):
            small = input_specs[level_key(coarser)][axis]
            big = input_specs[level_key(finer)][axis]
            if small is not None and big is not None and small != -(-big // 2):
                raise ValueError(
                    f"input_specs: level {coarser} has size {small} on axis "
                    f"{axis} but level {finer} has {big}; each level must be "
                    f"ceil(half) of the one below"
                )
