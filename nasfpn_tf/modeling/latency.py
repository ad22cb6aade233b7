"""Measured latency of the detector's network on this host.

The network is `flops.forward_function`: backbone, neck and head in
inference at batch 1, without box decoding and NMS (which do not depend on
the neck's topology), in a `tf.function` on the default device. After
`warmup` calls (the first traces and optimises the graph) it is timed
`runs` times, each call waiting for its outputs; the latency is the median,
which a busy shared host disturbs less than the mean.

`tflite_latency_ms` times the same network as a device would run it: the
network converted to TFLite (`export_tflite.convert_network`) and invoked
in the TFLite interpreter (LiteRT) at batch 1. Its int8 model is
calibrated on a few generated inputs, not images: the integer kernels
take the same time whatever the quantization ranges, and the search then
needs no data to time a child.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras

from nasfpn_tf.modeling import flops as flops_lib

DEFAULT_WARMUP = 2
MS_PER_SECOND = 1000.0
# Generated inputs calibrating the int8 network of `tflite_latency_ms`.
CALIBRATION_INPUTS = 2
CALIBRATION_SEED = 0


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
    # Fetching the values waits for the device to finish the call (NumPy
    # outputs, the TFLite interpreter's, are there already).
    for tensor in tf.nest.flatten(outputs):
        if isinstance(tensor, tf.Tensor):
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


def tflite_latency_ms(
    model: tf_keras.Model,
    image_size: int,
    runs: int,
    quantization: str = "int8",
    threads: int = 1,
    warmup: int = DEFAULT_WARMUP,
) -> float:
    """Median latency of the network's forward pass (module docstring)
    converted to TFLite with `quantization` and run by the TFLite
    interpreter on `threads` threads, on one `image_size` x `image_size`
    input.

    Raises:
        export_tflite.TFLiteExportError: an unknown quantization.
        ValueError: `runs` < 1 or `warmup` < 0.
    """
    from nasfpn_tf import export_tflite, tflite_detector

    shape = [
        flops_lib.PROBE_BATCH,
        image_size,
        image_size,
        flops_lib.IMAGE_CHANNELS,
    ]
    rng = np.random.default_rng(CALIBRATION_SEED)
    calibration = [
        rng.standard_normal(shape, dtype=np.float32)
        for _ in range(CALIBRATION_INPUTS)
    ]
    content = export_tflite.convert_network(
        model, image_size, quantization, calibration
    )
    interpreter = tflite_detector.interpreter_class()(
        model_content=content, num_threads=threads
    )
    interpreter.allocate_tensors()
    index = interpreter.get_input_details()[0]["index"]

    def invoke(images: np.ndarray) -> None:
        interpreter.set_tensor(index, images)
        interpreter.invoke()

    return median_ms(invoke, calibration[0], runs, warmup)
