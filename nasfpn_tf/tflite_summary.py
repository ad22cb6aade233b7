"""What a written ``.tflite`` model holds, read through an interpreter:
its signature (names, shapes, dtypes, quantization), its ops by kind and
dtype, and its size; ``summary_text`` is the ``<name>.txt`` written
beside it. ``nasfpn_tf.export_tflite`` writes the models and re-exports
these names.
"""

from __future__ import annotations

import collections
from typing import Any

import numpy as np
import tensorflow as tf

from nasfpn_tf.tflite_detector import SIGNATURE_KEY

# Nodes a delegate (XNNPACK) adds once it has taken over ops.
DELEGATE_OP = "DELEGATE"


def op_counts(interpreter: Any) -> dict[str, int]:
    """``"OP dtype"`` -> count over the model's ops (not the nodes of a
    delegate), the dtype being the op's first input's (``int8`` for a
    quantized op, ``float32`` for a float one)."""
    # The interpreter's op list has no public accessor;
    # tests/test_export_tflite.py fails when it changes.
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    counts: collections.Counter = collections.Counter()
    for op in interpreter._get_ops_details():
        if op["op_name"] == DELEGATE_OP:
            continue
        dtypes = [
            np.dtype(tensors[i]["dtype"]).name
            for i in op["inputs"]
            if i in tensors
        ]
        counts[f"{op['op_name']} {dtypes[0] if dtypes else '-'}"] += 1
    return dict(sorted(counts.items()))


def float_ops(counts: dict[str, int]) -> dict[str, int]:
    """The ops of ``op_counts`` that compute in float (for an int8 model:
    what did not quantize)."""
    return {
        name: n
        for name, n in counts.items()
        if name.endswith(("float32", "float16"))
    }


def _tensor_entry(detail: dict) -> dict:
    scale, zero_point = detail.get("quantization", (0.0, 0))
    entry = {
        "shape": [int(v) for v in detail["shape"]],
        "dtype": np.dtype(detail["dtype"]).name,
    }
    if scale:
        entry["quantization"] = {"scale": scale, "zero_point": zero_point}
    return entry


def describe(path: str, interpreter: Any) -> dict:
    """The signature (names, shapes, dtypes) and op counts of a model."""
    # Before the first run: the ops of the file, not the delegate's.
    ops = op_counts(interpreter)
    runner = interpreter.get_signature_runner(SIGNATURE_KEY)
    inputs = runner.get_input_details()
    # The post-process op sizes its outputs when it first runs.
    zeros = {k: np.zeros(v["shape"], v["dtype"]) for k, v in inputs.items()}
    outputs = runner(**zeros)
    return {
        "signature": SIGNATURE_KEY,
        "inputs": {k: _tensor_entry(v) for k, v in inputs.items()},
        "outputs": {
            k: _tensor_entry(dict(v, shape=outputs[k].shape))
            for k, v in runner.get_output_details().items()
        },
        "ops": ops,
        "bytes": tf.io.gfile.stat(path).length,
    }


def summary_text(name: str, description: dict) -> str:
    """A few lines: the signature, then the ops by kind and dtype."""
    lines = [f"{name}  signature {description['signature']!r}"]
    for role in ("inputs", "outputs"):
        for key, entry in description[role].items():
            shape = "x".join(str(v) for v in entry["shape"])
            lines.append(
                f"  {role[:-1]:6} {key:18} {entry['dtype']:8} [{shape}]"
            )
    ops = ", ".join(f"{n} {op}" for op, n in description["ops"].items())
    lines.append(f"  ops: {ops}")
    float_count = sum(float_ops(description["ops"]).values())
    lines.append(
        f"  {description['bytes']} bytes; {float_count} of "
        f"{sum(description['ops'].values())} ops compute in float"
    )
    return "\n".join(lines) + "\n"
