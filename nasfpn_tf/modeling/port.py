"""Moving weights between Model Garden's ``nasfpn`` decoder and our neck.

Matching is by structure (creation order of every conv and batch norm,
checked by type and weight shape), never by layer name, so a Model Garden
checkpoint's decoder weights can start a ``NasFpnNeck`` and vice versa.
"""

from __future__ import annotations

import re

import tf_keras

from nasfpn_tf.modeling.neck import NasFpnNeck

_CONV_TYPES = (tf_keras.layers.Conv2D, tf_keras.layers.SeparableConv2D)
_NORM_TYPE = tf_keras.layers.BatchNormalization


def _creation_index(layer: tf_keras.layers.Layer) -> int:
    # Keras numbers auto-named layers of one class in creation order:
    # conv2d, conv2d_1, conv2d_2, ...
    match = re.search(r"_(\d+)$", layer.name)
    return int(match.group(1)) if match else 0


def model_garden_leaf_layers(decoder: tf_keras.Model) -> list:
    """Convs and BNs of a Model Garden NASFPN decoder in creation order.

    Each of its convs is immediately followed by its batch norm, so sorting
    convs and norms separately by creation and interleaving them restores
    the creation order.
    """
    convs = sorted(
        (layer for layer in decoder.layers if isinstance(layer, _CONV_TYPES)),
        key=_creation_index,
    )
    norms = sorted(
        (layer for layer in decoder.layers if isinstance(layer, _NORM_TYPE)),
        key=_creation_index,
    )
    if len(convs) != len(norms):
        raise ValueError(
            f"expected one batch norm per conv, got {len(convs)} convs and "
            f"{len(norms)} norms"
        )
    return [layer for pair in zip(convs, norms) for layer in pair]


def copy_weights(
    source: list[tf_keras.layers.Layer], target: list[tf_keras.layers.Layer]
) -> int:
    """Copies weights leaf by leaf; returns the number of scalars copied."""
    if len(source) != len(target):
        raise ValueError(
            f"structure differs: {len(source)} source layers, "
            f"{len(target)} target layers"
        )
    copied = 0
    for i, (src, dst) in enumerate(zip(source, target)):
        src_shapes = [tuple(w.shape) for w in src.weights]
        dst_shapes = [tuple(w.shape) for w in dst.weights]
        if type(src) is not type(dst) or src_shapes != dst_shapes:
            raise ValueError(
                f"layer {i}: {type(src).__name__}{src_shapes} does not match "
                f"{type(dst).__name__}{dst_shapes}"
            )
        dst.set_weights(src.get_weights())
        copied += sum(w.shape.num_elements() for w in src.weights)
    return copied


def from_model_garden(decoder: tf_keras.Model, neck: NasFpnNeck) -> int:
    """Loads a Model Garden NASFPN decoder's weights into ``neck``."""
    return copy_weights(model_garden_leaf_layers(decoder), neck.leaf_layers())


def to_model_garden(neck: NasFpnNeck, decoder: tf_keras.Model) -> int:
    """Loads ``neck``'s weights into a Model Garden NASFPN decoder."""
    return copy_weights(neck.leaf_layers(), model_garden_leaf_layers(decoder))
