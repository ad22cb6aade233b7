"""NAS-FPNLite in TFLite: accuracy, latency and size against the SavedModel,
and whether the search's host latency ranks specs as TFLite int8 does.

``--part models``: the Lite config (``configs/nasfpn_lite_mobilenetv2_320
.yaml``), or with ``--base_config r50`` the ResNet-50 one
(``configs/nasfpn_r50_640.yaml``), shrunk to what a 2-core CPU affords
(``--image_size``, ``--backbone_width``, ``--repeats_neck``,
``--filters``) is trained for
``--train_steps`` on the default generated task (or its run in
``--out_dir`` is reused), exported as a SavedModel and as TFLite float32,
float16 and int8 (``nasfpn_tf.export_tflite``), and each is measured in
one run:

  AP        held-out COCO AP x 100 of the generated set's held-out split,
            every format fed the same decoded images (the TFLite ones
            through ``TFLiteDetector``: resize and pad to uint8, then the
            file);
  latency   median ms of ``--repeats`` calls at batch 1, on 1 and 2
            threads, each in a fresh process (TensorFlow fixes its
            thread pools at start-up): the SavedModel's
            ``serving_default`` on a held-out image (resize, network,
            NMS), a TFLite file's signature on the prepared input
            (normalisation, network, NMS);
  size      bytes on disk (the SavedModel's folder, each .tflite file).

Targets (issue 22): int8 AP within 1.5 points of float32; int8 latency at
most 0.6x the SavedModel's. Rows say whether each is met; the int8 row
lists the ops that compute in float.

``--part ranking``: ``--specs`` specs drawn from the Lite space (plus the
published one), each built at the Lite search's proxy size with random
weights; the search's latency (``nasfpn_tf.modeling.latency``: the network
in TensorFlow on this host, 1 thread) against the same network converted
to TFLite int8 (calibrated on training images) and timed on 1 thread;
Spearman and Kendall rank correlation with a bootstrap interval
(``nasfpn_tf.search.ranking``).

``--part objective``: what ``search.objective.cost: tflite_latency``
costs a search. ``--specs`` specs as above, each priced by the search's
own cost function (``search.objective.measure_costs``) at the Lite
search's proxy (``configs/nasfpn_lite_mobilenetv2_320_search.yaml``: 3@64
at 320, which 2**7 does not divide), once with ``cost: latency`` and once
with ``cost: tflite_latency`` (int8, 1 thread), ``--repeats`` timed runs
each: the wall seconds per child of each, the two latencies, and their
rank correlation at the same size.

The figures in docs/figures/tflite_*.txt came from:

  python benchmarks/tflite.py --part models --out_dir /tmp/tflite_bench \
      --train_steps 1200
  python benchmarks/tflite.py --part models --base_config r50 \
      --out_dir /tmp/tflite_bench_r50 --train_steps 1200
  python benchmarks/tflite.py --part ranking --specs 12 --repeats 10 \
      --warmup 2
  python benchmarks/tflite.py --part objective --specs 6 --repeats 20
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

if __package__ in (None, ""):  # run as a file
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks import common, tflite_latency
from benchmarks.tflite_latency import LITE_CONFIG

common.quiet_tensorflow()

REPO = pathlib.Path(__file__).resolve().parents[1]
R50_CONFIG = str(REPO / "configs" / "nasfpn_r50_640.yaml")
# --part models: the config shrunk, and its backbone width unless given.
BASE_CONFIGS = {"lite": (LITE_CONFIG, 0.5), "r50": (R50_CONFIG, 1.0)}
FORMATS = ("saved_model", "float32", "float16", "int8")
QUANTIZATIONS = ("float32", "float16", "int8")
AP_TARGET_POINTS = 1.5
LATENCY_TARGET_RATIO = 0.6
AP_SCALE = 100.0
MODEL_COLUMNS = (
    "format",
    "AP",
    "AP50",
    "ms_1_thread",
    "ms_2_threads",
    "vs_saved_model_1t",
    "vs_saved_model_2t",
    "bytes",
    "float_ops",
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add = parser.add_argument
    add(
        "--part",
        choices=("models", "ranking", "objective", "all"),
        default="all",
    )
    add("--out_dir", default="", help="run folder (reused); default: temp")
    add("--image_size", type=common.positive_int, default=128)
    add(
        "--base_config",
        choices=sorted(BASE_CONFIGS),
        default="lite",
        help="--part models: the Lite (MobileNetV2) or the ResNet-50 config",
    )
    add(
        "--backbone_width",
        type=float,
        default=None,
        help="default: 0.5 for lite, 1.0 for r50",
    )
    add(
        "--activation",
        default="",
        help="model.norm.activation (e.g. relu6); default: the config's",
    )
    add("--repeats_neck", type=common.positive_int, default=3)
    add("--filters", type=common.positive_int, default=32)
    add("--train_steps", type=common.positive_int, default=1500)
    add("--batch_size", type=common.positive_int, default=16)
    add("--representative_images", type=common.positive_int, default=100)
    add("--heldout_images", type=int, default=0, help="0: all")
    add("--threads", type=common.positive_int, default=1)
    add("--latency_threads", default="1,2")
    add("--specs", type=common.positive_int, default=12)
    add("--rank_image_size", type=common.positive_int, default=320)
    add("--rank_filters", type=common.positive_int, default=64)
    add("--rank_repeats", type=common.positive_int, default=3)
    add("--seed", type=int, default=0)
    add("--quick", action="store_true", help="tiny sizes: a smoke test")
    add("--latency_child", nargs=4, metavar=("KIND", "PATH", "INPUT", "N"))
    common.add_timing_flags(parser, warmup=3, repeats=20)
    args = parser.parse_args(argv)
    if args.backbone_width is None:
        args.backbone_width = BASE_CONFIGS[args.base_config][1]
    if args.quick:
        args.image_size, args.backbone_width = 64, 0.25
        args.repeats_neck, args.filters, args.train_steps = 1, 8, 4
        args.batch_size, args.representative_images = 2, 2
        args.heldout_images, args.specs = 4, 2
        args.rank_image_size, args.rank_filters = 64, 8
        args.rank_repeats, args.repeats, args.warmup = 1, 2, 1
    return args


def set_threads(threads: int) -> None:
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)


def latency_child(
    kind: str, path: str, input_path: str, threads: int, args
) -> None:
    """Prints the median ms of one model's calls on `threads` threads."""
    import numpy as np

    image = np.load(input_path)
    if kind == "saved_model":
        set_threads(threads)
        import tensorflow as tf

        serve = tf.saved_model.load(path).signatures["serving_default"]
        inputs = tf.constant(image)

        def call():
            return serve(inputs=inputs)
    else:
        from nasfpn_tf import tflite_detector

        interpreter = tflite_detector.interpreter_class()(
            model_path=path, num_threads=threads
        )
        runner = interpreter.get_signature_runner()

        def call():
            return runner(images=image)

    timing = common.best_of(call, args.warmup, args.repeats)
    print(json.dumps({"median_ms": timing.median_s * 1000.0}))


def time_in_child(kind: str, path: str, image, threads: int, args) -> float:
    import numpy as np

    with tempfile.NamedTemporaryFile(suffix=".npy", delete=False) as f:
        np.save(f, image)
    command = [
        sys.executable,
        __file__,
        "--latency_child",
        kind,
        path,
        f.name,
        str(threads),
        f"--warmup={args.warmup}",
        f"--repeats={args.repeats}",
    ]
    try:
        process = subprocess.run(
            command, capture_output=True, text=True, check=False, cwd=REPO
        )
    finally:
        os.unlink(f.name)
    if process.returncode:
        raise RuntimeError(process.stderr[-2000:])
    return json.loads(process.stdout.strip().splitlines()[-1])["median_ms"]


def model_config(args, model_dir: str):
    """``--base_config``, shrunk, on the generated task, saved in the run."""
    from nasfpn_tf import main as main_lib

    override = {
        "model.image_size": args.image_size,
        "model.backbone_width": args.backbone_width,
        "model.num_classes": 3,
        "model.neck.repeats": args.repeats_neck,
        "model.neck.filters": args.filters,
        "model.head.num_convs": 2,
        "model.head.num_filters": args.filters,
        "model.anchor.anchor_size": 1.5,  # fits the generated objects
        "model.norm.use_sync_bn": False,
        "data.train_path": "",
        "data.val_path": "",
        "data.heldout_path": "",
        "data.val_annotations": "",
        "data.heldout_annotations": "",
        "data.aug_scale_min": 1.0,
        "data.aug_scale_max": 1.0,
        "data.shuffle_buffer": 64,
        "train.batch_size": args.batch_size,
        "train.steps": args.train_steps,
        "train.learning_rate": 0.08,
        "train.warmup_steps": min(100, args.train_steps // 4),
        "train.warmup_learning_rate": 0.0067,
        "train.schedule": "cosine",
        "train.step_boundaries": [],
        "train.checkpoint_every": args.train_steps,
        "train.summary_every": args.train_steps,
        "train.log_every": max(1, args.train_steps // 5),
        "train.mixed_precision": "float32",
        "eval.batch_size": 8,
        "eval.every": args.train_steps,
    }
    if args.activation:
        override["model.norm.activation"] = args.activation
    return main_lib.resolve_config(
        model_dir,
        [BASE_CONFIGS[args.base_config][0]],
        common.nested_json(override),
        overwrite_config=True,
    )


def heldout(config, limit: int):
    """(original uint8 image, eval labels of a batch of one) in order."""
    import tensorflow as tf

    from nasfpn_tf.data import inputs, pipeline

    data = inputs.resolve_split(config, "heldout")
    batches = pipeline.build_dataset(
        data.file_pattern,
        pipeline.InputConfig.from_experiment(config),
        is_training=False,
        batch_size=1,
        drop_remainder=False,
    )
    features = {
        "image/encoded": tf.io.FixedLenFeature([], tf.string),
        "image/source_id": tf.io.FixedLenFeature([], tf.string),
    }
    records = pipeline.read_records(data.file_pattern)
    examples = []
    for (_, labels), record in zip(batches, records):
        parsed = tf.io.parse_single_example(record, features)
        source = int(parsed["image/source_id"].numpy())
        if int(labels["groundtruths"]["source_id"][0]) != source:
            raise RuntimeError("held-out records and labels out of order")
        image = tf.io.decode_image(parsed["image/encoded"], channels=3)
        examples.append((image.numpy(), labels))
        if limit and len(examples) >= limit:
            break
    return examples, data.annotations


def average_precision(detect, examples, annotations) -> dict[str, float]:
    """COCO AP x 100 of `detect` (image -> one row of SavedModel outputs,
    boxes normalised to the original) over the examples."""
    import numpy as np

    from nasfpn_tf import evaluation

    evaluator = evaluation.CocoEvaluator(annotations)
    for image, labels in examples:
        out = detect(image)
        height, width = image.shape[:2]
        scale = np.asarray(labels["image_info"])[0, 2]
        # Normalised to the original -> pixels of the resized input.
        factor = np.asarray([height, width] * 2) * np.tile(scale, 2)
        outputs = {
            "detection_boxes": np.asarray(out["detection_boxes"]) * factor,
            "detection_scores": np.asarray(out["detection_scores"]),
            "detection_classes": np.asarray(out["detection_classes"]),
            "num_detections": np.asarray(out["num_detections"]),
        }
        evaluator.update(labels, {k: v[None] for k, v in outputs.items()})
    result = evaluator.result()
    return {k: round(result[k] * AP_SCALE, 2) for k in ("AP", "AP50")}


def folder_bytes(path: str) -> int:
    return sum(
        p.stat().st_size for p in pathlib.Path(path).rglob("*") if p.is_file()
    )


def run_models(args, out_dir: str) -> list[dict]:
    import numpy as np
    import tensorflow as tf

    from nasfpn_tf import export as export_lib
    from nasfpn_tf import export_tflite, tflite_detector
    from nasfpn_tf.train import strategy as strategy_lib
    from nasfpn_tf.train import trainer

    model_dir = os.path.join(out_dir, "run")
    config = model_config(args, model_dir)
    start = time.monotonic()
    strategy = strategy_lib.make_strategy(config.runtime)
    trained = trainer.run("train", config, model_dir, strategy)
    common.emit(
        {
            "stage": "train",
            "steps": trained.get("steps"),
            "final_loss": trained.get("final_loss"),
            "seconds": round(time.monotonic() - start, 1),
        }
    )
    start = time.monotonic()
    saved = export_lib.export(
        config, model_dir, os.path.join(out_dir, "saved_model")
    )
    exported = export_tflite.export(
        config,
        model_dir,
        os.path.join(out_dir, "tflite"),
        QUANTIZATIONS,
        representative_images=args.representative_images,
    )
    common.emit(
        {"stage": "export", "seconds": round(time.monotonic() - start, 1)}
    )
    examples, annotations = heldout(config, args.heldout_images)
    serve = tf.saved_model.load(saved).signatures["serving_default"]

    def saved_detect(image):
        out = serve(inputs=tf.constant(image[None]))
        return {k: np.asarray(v)[0] for k, v in out.items()}

    detectors = {"saved_model": saved_detect}
    paths = {"saved_model": saved}
    for model in exported.models:
        detectors[model.quantization] = tflite_detector.TFLiteDetector(
            model.path, num_threads=args.threads
        )
        paths[model.quantization] = model.path
    image = examples[0][0]
    prepared, _ = tflite_detector.prepare_image(
        image, config.model.image_size, export_tflite.input_size(config)
    )
    threads = [int(t) for t in args.latency_threads.split(",")]
    rows = []
    for name in FORMATS:
        row = {"format": name, "images": len(examples)}
        row.update(average_precision(detectors[name], examples, annotations))
        kind = "saved_model" if name == "saved_model" else "tflite"
        child_input = image[None] if kind == "saved_model" else prepared
        for n in threads:
            key = "ms_1_thread" if n == 1 else f"ms_{n}_threads"
            row[key] = round(
                time_in_child(kind, paths[name], child_input, n, args), 2
            )
        if kind == "saved_model":
            row["bytes"] = folder_bytes(paths[name])
        else:
            info = json.loads(
                pathlib.Path(tflite_detector.info_path(paths[name])).read_text()
            )
            row["bytes"] = info["bytes"]
            row["float_ops"] = (
                ", ".join(
                    f"{n} {op}"
                    for op, n in export_tflite.float_ops(info["ops"]).items()
                )
                if name == "int8"
                else "all"
            )
        rows.append(row)
    base = rows[0]
    for row in rows:
        for n in threads:
            key = "ms_1_thread" if n == 1 else f"ms_{n}_threads"
            row[f"vs_saved_model_{n}t"] = common.ratio(row[key], base[key])
        common.emit(row)
    by_name = {row["format"]: row for row in rows}
    ap_drop = round(by_name["float32"]["AP"] - by_name["int8"]["AP"], 2)
    common.emit(
        {
            "target": "int8 AP within 1.5 points of float32",
            "float32_AP": by_name["float32"]["AP"],
            "int8_AP": by_name["int8"]["AP"],
            "drop_points": ap_drop,
            "met": ap_drop <= AP_TARGET_POINTS,
        }
    )
    for n in threads:
        ratio = by_name["int8"][f"vs_saved_model_{n}t"]
        common.emit(
            {
                "target": f"int8 latency <= 0.6x SavedModel, {n} thread(s)",
                "ratio": ratio,
                "met": ratio is not None and ratio <= LATENCY_TARGET_RATIO,
            }
        )
    columns = [c for c in MODEL_COLUMNS if any(c in r for r in rows)]
    common.print_table(
        f"held-out AP x 100 ({len(examples)} images), batch-1 latency "
        f"(median of {args.repeats}), size",
        rows,
        columns,
    )
    return rows


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.latency_child:
        kind, path, input_path, threads = args.latency_child
        latency_child(kind, path, input_path, int(threads), args)
        return
    set_threads(args.threads)
    common.emit({"machine": common.machine_info(), "args": vars(args)})
    out_dir = args.out_dir or tempfile.mkdtemp(prefix="tflite_bench_")
    if args.part in ("models", "all"):
        run_models(args, out_dir)
    if args.part in ("ranking", "all"):
        tflite_latency.run_ranking(args)
    if args.part in ("objective", "all"):
        tflite_latency.run_objective(args)


if __name__ == "__main__":
    main()
