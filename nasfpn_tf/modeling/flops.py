"""Analytic FLOPs and parameters of the detector's network.

What is counted: one forward pass of the network at batch 1 and the
config's image size, in inference: backbone, neck and head, up to the
class and box outputs; not the anchors, box decoding or NMS, which do not
depend on the neck's topology.

How: the forward pass is traced to a TF graph (nothing runs), and each op
is counted from its static shapes with the convention of TensorFlow's
profiler (``tf.compat.v1.profiler`` with ``float_operation()``, what Model
Garden's ``try_count_flops`` reports), so the two agree:

- a multiply-add is 2 FLOPs: Conv2D ``2 * out_elements * kh * kw * c_in``,
  DepthwiseConv2dNative ``2 * out_elements * kh * kw`` (a separable conv
  is the two ops), MatMul ``2 * out_elements * k``;
- 1 FLOP per output element of a binary elementwise op (Add, AddV2, Sub,
  Mul, RealDiv, Maximum, Minimum, Pow, comparisons; 2 for
  SquaredDifference), per input element of BiasAdd and of unary Neg,
  Square, Reciprocal, Log (2 for Rsqrt, 5 for Softmax);
  ``(n - 1) * elements`` for AddN of n inputs;
- Mean: its input elements; Sum, ArgMax, ArgMin: input minus output
  elements; MaxPool and AvgPool: window area times output elements.

Not counted, as the profiler does not: activations (Relu, Relu6, Sigmoid;
swish's multiply is a Mul and counts), inference batch norms
(FusedBatchNormV3, which Grappler folds into the conv before them),
resizes, tiles, max reductions (the global attention's pooling), casts and
shape arithmetic on ops whose shapes are not static.

Parameters are every weight of the detector (``count_params``: kernels,
biases and batch-norm statistics), trainable or not.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import tensorflow as tf
import tf_keras

from nasfpn_tf import compat
from nasfpn_tf.modeling.neck import level_key

FLOPS_PER_MULTIPLY_ADD = 2
PROBE_BATCH = 1
IMAGE_CHANNELS = 3

# FLOPs per output element.
_PER_OUTPUT = {
    "Add": 1,
    "AddV2": 1,
    "Sub": 1,
    "Mul": 1,
    "RealDiv": 1,
    "Maximum": 1,
    "Minimum": 1,
    "Pow": 1,
    "GreaterEqual": 1,
    "Greater": 1,
    "LessEqual": 1,
    "Less": 1,
    "Equal": 1,
    "NotEqual": 1,
    "SquaredDifference": 2,
}
# FLOPs per element of the first input.
_PER_INPUT = {
    "BiasAdd": 1,
    "Neg": 1,
    "Square": 1,
    "Reciprocal": 1,
    "Log": 1,
    "Rsqrt": 2,
    "Softmax": 5,
}
# Reductions: (per input element, per output element).
_REDUCTIONS = {
    "Mean": (1, 0),
    "Sum": (1, -1),
    "ArgMax": (1, -1),
    "ArgMin": (1, -1),
}
_POOLS = ("MaxPool", "AvgPool")


def _elements(shape: tf.TensorShape) -> int | None:
    if not shape.is_fully_defined():
        return None
    return math.prod(shape.as_list())


def op_flops(op: tf.Operation) -> int:
    """FLOPs of one graph op (see the module docstring); 0 for ops not
    counted or whose shapes are not static."""
    kind = op.type
    if kind in ("Conv2D", "DepthwiseConv2dNative"):
        out = _elements(op.outputs[0].shape)
        kernel = op.inputs[1].shape
        if out is None or not kernel.is_fully_defined():
            return 0
        depth = kernel[2] if kind == "Conv2D" else 1
        return FLOPS_PER_MULTIPLY_ADD * out * kernel[0] * kernel[1] * depth
    if kind == "MatMul":
        out = _elements(op.outputs[0].shape)
        a = op.inputs[0].shape
        if out is None or not a.is_fully_defined():
            return 0
        k = a[0] if op.get_attr("transpose_a") else a[1]
        return FLOPS_PER_MULTIPLY_ADD * out * k
    if kind in _PER_OUTPUT:
        out = _elements(op.outputs[0].shape)
        return 0 if out is None else _PER_OUTPUT[kind] * out
    if kind in _PER_INPUT:
        n = _elements(op.inputs[0].shape)
        return 0 if n is None else _PER_INPUT[kind] * n
    if kind == "AddN":
        n = _elements(op.inputs[0].shape) if op.inputs else None
        return 0 if n is None else n * (len(op.inputs) - 1)
    if kind in _REDUCTIONS:
        n = _elements(op.inputs[0].shape)
        out = _elements(op.outputs[0].shape)
        if n is None or out is None:
            return 0
        per_in, per_out = _REDUCTIONS[kind]
        return per_in * n + per_out * out
    if kind in _POOLS:
        out = _elements(op.outputs[0].shape)
        if out is None:
            return 0
        return math.prod(op.get_attr("ksize")) * out
    return 0


def _needed_ops(outputs: Sequence[tf.Tensor]) -> list[tf.Operation]:
    """The ops `outputs` depend on, in no particular order."""
    seen: dict[str, tf.Operation] = {}
    stack = [t.op for t in outputs]
    while stack:
        op = stack.pop()
        if op.name in seen:
            continue
        seen[op.name] = op
        stack.extend(t.op for t in op.inputs)
        stack.extend(op.control_inputs)
    return list(seen.values())


def graph_flops(outputs: Sequence[tf.Tensor]) -> int:
    """FLOPs of the ops `outputs` depend on (a layer's output nobody uses,
    such as MobileNet's last conv, is not counted, as freezing prunes it).

    Raises:
        ValueError: an op calls a nested function (its ops would go
            uncounted); Keras layers are traced inline, so a forward pass
            of ours has none.
    """
    total = 0
    for op in _needed_ops(outputs):
        if op.type in ("PartitionedCall", "StatefulPartitionedCall"):
            raise ValueError(
                f"graph_flops: op {op.name} calls a nested function, whose "
                "ops would not be counted"
            )
        total += op_flops(op)
    return total


def forward_function(model: tf_keras.Model) -> Callable[[tf.Tensor], Any]:
    """images -> (class outputs, box outputs) by level: the detector's
    backbone, neck and head in inference, without post-processing."""
    config = model.get_config()
    levels = [
        level_key(level)
        for level in range(config["min_level"], config["max_level"] + 1)
    ]
    decoder_inputs = model.decoder.input

    def forward(images: tf.Tensor) -> tuple[Any, Any]:
        features = model.backbone(images, training=False)
        # MobileNet also returns endpoints no pyramid level uses.
        features = {k: features[k] for k in decoder_inputs}
        pyramid = model.decoder(features, training=False)
        pyramid = {k: pyramid[k] for k in levels}
        scores, boxes, _ = model.head(pyramid, training=False)
        return scores, boxes

    return forward


def _input_spec(image_size: int) -> tf.TensorSpec:
    return tf.TensorSpec(
        [PROBE_BATCH, image_size, image_size, IMAGE_CHANNELS], tf.float32
    )


def forward_graph(model: tf_keras.Model, image_size: int) -> Any:
    """The concrete function of `forward_function(model)` at batch 1 and
    `image_size` x `image_size`."""
    function = tf.function(forward_function(model), autograph=False)
    return function.get_concrete_function(_input_spec(image_size))


def model_flops(model: tf_keras.Model, image_size: int) -> int:
    """Analytic FLOPs of one forward pass (module docstring) at batch 1."""
    return graph_flops(forward_graph(model, image_size).outputs)


def profiler_flops(model: tf_keras.Model, image_size: int) -> int:
    """The same forward pass frozen and counted by TensorFlow's profiler,
    as Model Garden's ``try_count_flops`` does; the reference the tests
    hold `model_flops` to."""
    frozen = compat.convert_variables_to_constants(
        forward_graph(model, image_size)
    )
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    profile = tf.compat.v1.profiler.profile(
        graph=frozen.graph,
        run_meta=tf.compat.v1.RunMetadata(),
        options=options,
    )
    return int(profile.total_float_ops)


def count_params(model: tf_keras.Model) -> int:
    """Every weight of `model`, trainable or not."""
    return int(model.count_params())


def summary(model: tf_keras.Model, image_size: int) -> Mapping[str, int]:
    """``{"flops": ..., "params": ...}`` of `model` at `image_size`."""
    return {
        "flops": model_flops(model, image_size),
        "params": count_params(model),
    }


class NeckCounter:
    """FLOPs and parameters of detectors that differ only in their neck.

    A search's children share the backbone and the head; only the neck's
    spec changes. The first call builds and counts one whole detector
    (`model_flops`, `count_params`) and its neck alone; every later spec
    traces only its neck, and the shared part is the difference:
    whole = shared + neck. Equal to counting each detector whole (the
    tests check it), at a fraction of the build and trace.

    Args:
        model_config: the children's `ModelConfig`, whose `image_size` is
            the probe size.
    """

    def __init__(self, model_config: Any):
        self.model_config = model_config
        self._backbone_specs: Mapping[str, tf.TensorShape] | None = None
        self._shared: tuple[int, int] | None = None

    def __call__(self, spec: Any) -> tuple[int, int]:
        """(FLOPs, parameters) of the detector with neck `spec`."""
        from nasfpn_tf.modeling import detector

        if self._shared is None:
            size = self.model_config.image_size
            model = detector.build_detector(
                self.model_config, spec=spec, input_size=size
            )
            self._backbone_specs = model.backbone.output_specs
            neck_flops, neck_params = self._neck(spec)
            self._shared = (
                model_flops(model, size) - neck_flops,
                count_params(model) - neck_params,
            )
            return self._shared[0] + neck_flops, self._shared[1] + neck_params
        neck_flops, neck_params = self._neck(spec)
        return self._shared[0] + neck_flops, self._shared[1] + neck_params

    def _neck(self, spec: Any) -> tuple[int, int]:
        from nasfpn_tf.modeling import detector

        config = self.model_config
        decoder = detector.build_decoder(config, spec, self._backbone_specs)
        levels = [
            level_key(level)
            for level in range(config.min_level, config.max_level + 1)
        ]
        inputs = {
            key: tf.TensorSpec([PROBE_BATCH, *shape[1:]], tf.float32)
            for key, shape in self._backbone_specs.items()
            if key in decoder.input
        }

        def forward(features):
            pyramid = decoder(features, training=False)
            return [pyramid[k] for k in levels]

        function = tf.function(forward, autograph=False)
        graph = function.get_concrete_function(inputs)
        return graph_flops(graph.outputs), count_params(decoder)
