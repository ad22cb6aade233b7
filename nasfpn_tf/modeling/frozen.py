"""Frozen inference: a TF function with the model's weights as constants.

A detector called in a ``tf.function`` reads every weight from its
variable on each call. Frozen (``convert_variables_to_constants_v2``), the
graph holds the weights as constants instead, and two optimisations that
need constant weights take effect: Grappler folds each inference batch
norm into the conv before it, and oneDNN converts each conv filter to its
blocked layout once and reuses it, instead of on every call. The results
are the same up to float rounding (the folded BN scales the filter instead
of the conv's output).

Measured on a 2-core AVX-512 CPU (``benchmarks/model_speed.py
--frozen``), ResNet-50 NAS-FPN 7@256 at 640x640, batch 1: the network
forward 1.16 s -> 0.98 s (76% -> 89% of the float32 matmul peak),
inference with NMS 1.20 s -> 1.03 s.

The costs: freezing traces the function and copies every weight into the
graph (about 12 s for that model), and the first call of the frozen
function optimises the graph (about 13 s); the frozen function keeps the
weights it was frozen with, so freeze again after training further. It
pays for serving and for long evaluations, not for a few batches.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import tensorflow as tf

from nasfpn_tf import compat


class FrozenFunction:
    """A frozen concrete function that returns its original structure.

    The function ``convert_variables_to_constants_v2`` returns gives its
    outputs as a flat list; this puts them back into the traced function's
    nest (e.g. the detector's dict of detections).

    Attributes:
        concrete_function: the frozen ``ConcreteFunction``; callable from
            inside other TF functions (e.g. an export signature).
        structured_outputs: the nest of the original function's outputs.
    """

    def __init__(self, concrete_function: Any, structured_outputs: Any):
        self.concrete_function = concrete_function
        self.structured_outputs = structured_outputs

    def __call__(self, *args: tf.Tensor) -> Any:
        flat = self.concrete_function(*args)
        return tf.nest.pack_sequence_as(
            self.structured_outputs, flat, expand_composites=True
        )


def freeze(
    function: Callable[..., Any], *input_signature: tf.TensorSpec
) -> FrozenFunction:
    """Traces ``function`` for ``input_signature`` and freezes its weights.

    Args:
        function: a Python callable of tensors, or a ``tf.function``; every
            variable it reads becomes a constant with its current value.
        *input_signature: one ``tf.TensorSpec`` per positional argument
            (dimensions may be None, e.g. the batch).

    Returns:
        A ``FrozenFunction`` taking the same positional tensors.

    Raises:
        ValueError: ``function`` returns no tensor.
        TypeError: an output is not a tensor (e.g. None).
    """
    if not isinstance(function, tf.types.experimental.GenericFunction):
        function = tf.function(function, autograph=False)
    concrete = function.get_concrete_function(*input_signature)
    outputs = concrete.structured_outputs
    flat = tf.nest.flatten(outputs, expand_composites=True)
    if not flat:
        raise ValueError("freeze: the function returns no tensor")
    for value in flat:
        if not isinstance(value, tf.Tensor):
            raise TypeError(
                "freeze: every output must be a tensor; got "
                f"{type(value).__name__} {value!r}"
            )
    frozen = compat.convert_variables_to_constants(concrete)
    return FrozenFunction(frozen, outputs)
