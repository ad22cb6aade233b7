"""Where a trained run's int8 error comes from: the network's outputs in
TFLite int8 against float32, with each part of the network (backbone, neck,
head) alone in int8 and the rest kept in float.

For the newest checkpoint in ``--model_dir``, the network (backbone, neck
and head; no box decoding or NMS: ``export_tflite.convert_network``) is
converted at the export's input size and run on ``--images`` training
images that calibration did not see (it takes the first
``--calibration``). Rows:

  int8            full-integer, as ``--mode=export --tflite_quantization=
                  int8`` converts it
  weights_int8    int8 weights, float activations (dynamic range): the
                  error of weight quantization alone
  only_<part>     ``<part>`` in int8, the other parts denylisted to float
                  (``tf.lite.experimental.QuantizationDebugger``)

Each output's error is its RMSE against float32 over the images, divided
by float32's standard deviation of that output (0: exact; 1: as large as
the signal). Columns: the median over levels of the class and the box
outputs, the worst output, and each output's value in the JSON lines.

  python benchmarks/tflite_int8_error.py --model_dir runs/r50 \\
      --calibration 100 --images 8
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
from typing import Any

if __package__ in (None, ""):  # run as a file
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks import common

common.quiet_tensorflow()

PARTS = ("backbone", "neck", "head")
# Head outputs come out of the converter named Identity, Identity_1, ...
OUTPUT_PREFIX = "Identity"
COLUMNS = ("variant", "class_error", "box_error", "worst", "worst_output")
COLUMNS_BYTES = (*COLUMNS, "bytes")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add = parser.add_argument
    add("--model_dir", required=True, help="a trained run")
    add("--calibration", type=common.positive_int, default=100)
    add("--images", type=common.positive_int, default=8)
    add(
        "--parts",
        default=",".join(PARTS),
        help=f"comma-separated, some of {', '.join(PARTS)}",
    )
    args = parser.parse_args(argv)
    args.parts = [p for p in args.parts.split(",") if p]
    unknown = sorted(set(args.parts) - set(PARTS))
    if unknown:
        parser.error(f"--parts: unknown {unknown}; expected some of {PARTS}")
    return args


def part_prefixes(model) -> dict[str, tuple[str, ...]]:
    """Tensor-name prefixes of each part of a built DetectorModel."""
    return {
        "backbone": (f"{model.backbone.name}/",),
        "neck": (f"{model.decoder.name}/",),
        "head": (f"{model.head.name}/", OUTPUT_PREFIX),
    }


def output_labels(model, names: list[str]) -> dict[str, str]:
    """Identity_k -> class_P3 ... box_P7: the forward function returns the
    class outputs, then the box outputs, each by level in order."""
    config = model.get_config()
    levels = range(config["min_level"], config["max_level"] + 1)
    labels = [
        f"{kind}_P{level}" for kind in ("class", "box") for level in levels
    ]

    def index(name: str) -> int:
        suffix = name[len(OUTPUT_PREFIX) :].lstrip("_")
        return int(suffix) if suffix else 0

    ordered = sorted(names, key=index)
    if len(ordered) != len(labels):
        raise ValueError(f"{len(ordered)} outputs, expected {len(labels)}")
    return dict(zip(ordered, labels))


def run_network(content: bytes, inputs) -> list[dict[str, Any]]:
    from nasfpn_tf import tflite_detector

    interpreter = tflite_detector.interpreter_class()(model_content=content)
    interpreter.allocate_tensors()
    index = interpreter.get_input_details()[0]["index"]
    outputs = interpreter.get_output_details()
    results = []
    for x in inputs:
        interpreter.set_tensor(index, x)
        interpreter.invoke()
        results.append(
            {
                o["name"]: interpreter.get_tensor(o["index"]).copy()
                for o in outputs
            }
        )
    return results


def relative_errors(reference, results, labels) -> dict[str, float]:
    import numpy as np

    errors = {}
    for name, label in labels.items():
        want = np.concatenate([r[name].ravel() for r in reference])
        got = np.concatenate([r[name].ravel() for r in results])
        spread = float(want.std()) or 1.0
        errors[label] = round(
            float(np.sqrt(np.mean((got - want) ** 2))) / spread, 4
        )
    return errors


def convert(model, size: int, variant: str, calibration, float_names) -> bytes:
    """One variant's flatbuffer (module docstring)."""
    import tensorflow as tf

    from nasfpn_tf import export_tflite

    if variant in ("float32", "int8"):
        return export_tflite.convert_network(model, size, variant, calibration)
    converter = export_tflite.network_converter(model, size)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if variant == "weights_int8":
        return converter.convert()
    converter.representative_dataset = lambda: ([x] for x in calibration)
    # Float kernels for the denylisted ops; int8 for the rest.
    converter.target_spec.supported_ops = [
        tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
        tf.lite.OpsSet.TFLITE_BUILTINS,
    ]
    options = tf.lite.experimental.QuantizationDebugOptions(
        denylisted_nodes=list(float_names)
    )
    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=converter,
        debug_dataset=lambda: ([x] for x in calibration[:1]),
        debug_options=options,
    )
    return debugger.get_nondebug_quantized_model()


def measure(args) -> list[dict]:
    from nasfpn_tf import config as config_lib
    from nasfpn_tf import export as export_lib
    from nasfpn_tf import export_tflite, tflite_detector
    from nasfpn_tf.modeling import detector

    config = config_lib.load_saved(args.model_dir)
    if config is None:
        raise SystemExit(f"--model_dir {args.model_dir}: no config.yaml")
    try:
        checkpoint = export_lib.latest_checkpoint(args.model_dir)
    except FileNotFoundError as error:
        raise SystemExit(f"--model_dir: {error}") from None
    model = detector.build_detector(
        config.model, spec=export_lib.resolve_spec(config, args.model_dir)
    )
    export_lib.restore(model, checkpoint)
    size = export_tflite.input_size(config)[0]
    images = export_tflite.calibration_images(
        config, args.calibration + args.images
    )
    if len(images) <= args.calibration:
        raise SystemExit(
            f"the training split has {len(images)} images: none left "
            f"after --calibration {args.calibration}"
        )
    inputs = export_tflite.network_inputs(images)
    calibration, held = inputs[: args.calibration], inputs[args.calibration :]

    float_content = convert(model, size, "float32", (), ())
    reference = run_network(float_content, held)
    labels = output_labels(model, list(reference[0]))
    tensor_names = [
        d["name"]
        for d in tflite_detector.interpreter_class()(
            model_content=float_content
        ).get_tensor_details()
    ]
    prefixes = part_prefixes(model)
    variants: dict[str, tuple[str, ...]] = {"int8": (), "weights_int8": ()}
    for part in args.parts:
        others = [p for p in PARTS if p != part]
        keep_float = tuple(prefix for p in others for prefix in prefixes[p])
        variants[f"only_{part}"] = tuple(
            n for n in tensor_names if n.startswith(keep_float)
        )
    rows = []
    for variant, float_names in variants.items():
        content = convert(model, size, variant, calibration, float_names)
        errors = relative_errors(reference, run_network(content, held), labels)
        worst = max(errors, key=errors.get)
        row = {
            "variant": variant,
            "class_error": statistics.median(
                v for k, v in errors.items() if k.startswith("class")
            ),
            "box_error": statistics.median(
                v for k, v in errors.items() if k.startswith("box")
            ),
            "worst": errors[worst],
            "worst_output": worst,
            "bytes": len(content),
            "float_tensors": len(float_names),
            "errors": errors,
        }
        rows.append(common.emit(row))
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    common.emit({"machine": common.machine_info(), "args": vars(args)})
    rows = measure(args)
    common.print_table(
        f"int8 error of the network's outputs against float32 (RMSE / "
        f"float32's std, median over levels), {args.images} held images, "
        f"{args.calibration} calibration images",
        rows,
        COLUMNS_BYTES,
    )
    return rows


if __name__ == "__main__":
    main()
