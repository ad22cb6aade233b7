"""Measured latency of the detector's network on this host.

The network is `flops.forward_function`: backbone, neck and head in
inference at batch 1, without box decoding and NMS (which do not depend on
the neck's topology), in a `tf.function` on the default device. After
`warmup` calls (the first traces and optimises the graph) it is timed
`runs` times, each call waiting for its outputs; the latency is the median,
which a busy shared host disturbs less than the mean.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import tensorflow as tf
import tf_keras

from nasfpn_tf.modeling import flops as flops_lib

DEFAULT_WARMUP = 2
MS_PER_SECOND = 1000.0


def median_ms(
    function: Callable[[tf.Tensor], Any],
    images: tf.Tensor,
    runs: int,
    warmup: int = DEFAULT_WARMUP,
) -> float:
    """Median wall time of `function(images)` in milliseconds.

    Args:
        function: a TF function of one image batch.
        images: its input.
        runs: timed calls (>= 1).
        warmup: untimed calls before them.

    Raises:
        ValueError: `runs` < 1 or `warmup` < 0.
    """
    if runs < 1:
        raise ValueError(f"runs must be >= 1; got {runs}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0; got {warmup}")
    for _ in range(warmup):
        _wait(function(images))
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        _wait(function(images))
        times.append((time.perf_counter() - start) * MS_PER_SECOND)
    return statistics.median(times)


def _wait(outputs: Any) -> None:
    # Fetching the values waits for the device to finish the call.
    for tensor in tf.nest.flatten(outputs):
        tensor.numpy()


def model_latency_ms(
    model: tf_keras.Model,
    image_size: int,
    runs: int,
    warmup: int = DEFAULT_WARMUP,
) -> float:
    """Median latency of the network's forward pass (module docstring)
    on one `image_size` x `image_size` image of zeros."""
    function = tf.function(flops_lib.forward_function(model), autograph=False)
    images = tf.zeros(
        [
            flops_lib.PROBE_BATCH,
            image_size,
            image_size,
            flops_lib.IMAGE_CHANNELS,
        ]
    )
    return median_ms(function, images, runs, warmup)
