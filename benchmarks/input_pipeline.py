"""Images/s of our tf.data input pipeline against the model's consumption.

The pipeline is ``nasfpn_tf.data.pipeline.build_dataset``: TFRecord reading,
JPEG decoding and Model Garden's RetinaNet parser (scale jitter, random
flips, padding, anchor labelling), batched and prefetched, with the input
settings of ``configs/nasfpn_r50_640.yaml`` (anchors 4 x stride, jitter
0.8-1.2) at each size, on the generated set (``nasfpn_tf.data.synthetic``)
written at each size into a temporary folder (or ``--data_dir``, reused
across runs). Images stay float32 (the config's bfloat16 is for TPU). The
serialized records are cached in memory, so disk speed is left out and every
batch is decoded and augmented afresh.

Each row compares that rate with the images/s a training step consumes at
the same size and batch: ``headroom`` = pipeline / model; below 1 the
input would starve training. On a CPU both compete for the same cores, so
the two rates measured apart are each an upper bound.

  python benchmarks/input_pipeline.py                  # 512 and 640, R50
  python benchmarks/input_pipeline.py --model_images_per_s 0.2
  python benchmarks/input_pipeline.py --model lite     # a smaller consumer
  python benchmarks/input_pipeline.py --quick          # smoke test

The consumer is timed in-process with ``model_speed``'s train step (our
detector, the published spec) unless ``--model_images_per_s`` gives it.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import sys
import tempfile
import time
from collections.abc import Sequence

if __package__ in (None, ""):  # run as a file: python benchmarks/x.py
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks import common

common.quiet_tensorflow()

import tensorflow as tf

from nasfpn_tf import config as config_lib
from nasfpn_tf.data import pipeline, synthetic

SIZES = (512, 640)
NUM_IMAGES = 64
QUICK_NUM_IMAGES = 8
QUICK_SIZE = 128
BATCH = 2
BATCHES_PER_REPEAT = 16
QUICK_BATCHES = 2
# The paper-scale config whose input settings are measured.
PAPER_CONFIG = (
    pathlib.Path(__file__).resolve().parents[1]
    / "configs"
    / "nasfpn_r50_640.yaml"
)
OBJECT_CLASSES = 3
DATA_SEED = 0
CONSUMERS = ("r50", "lite", "quick")
MAX_LEVEL = 7  # coarsest pyramid level of every config: the padding unit


def generate(data_dir: str, size: int, num_images: int) -> str:
    """Writes (or finds) the generated training split; its file pattern."""
    outputs = synthetic.generate_tfrecords(
        str(pathlib.Path(data_dir) / f"{size}px"),
        {"train": num_images},
        image_size=size,
        num_classes=OBJECT_CLASSES,
        seed=DATA_SEED,
    )
    return outputs["train"].file_pattern


def input_config(size: int) -> pipeline.InputConfig:
    """``PAPER_CONFIG``'s input settings at ``size``, float32, cached."""
    config = config_lib.load_config(
        [str(PAPER_CONFIG)], f"model.image_size={size}"
    )
    return dataclasses.replace(
        pipeline.InputConfig.from_experiment(config),
        dtype="float32",
        cache=True,
    )


def make_dataset(
    file_pattern: str, size: int, batch: int, training: bool
) -> tf.data.Dataset:
    """The pipeline as training (or evaluation) reads it, repeated."""
    dataset = pipeline.build_dataset(
        file_pattern,
        input_config(size),
        is_training=training,
        batch_size=batch,
        seed=DATA_SEED,
    )
    # Evaluation reads one pass; repeat so every timed run has batches.
    return dataset if training else dataset.repeat()


def time_batches(
    dataset: tf.data.Dataset, warmup: int, repeats: int, batches: int
) -> common.Timing:
    """Seconds per ``batches`` batches, after ``warmup`` batches.

    All repeats read one iterator, so prefetched batches count only once
    (in the warm-up), and every timed run measures steady production.
    """
    iterator = iter(dataset)
    start = time.perf_counter()
    for _ in range(warmup):
        common.fetch(next(iterator))
    first = time.perf_counter() - start
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(batches):
            common.fetch(next(iterator)[0])
        samples.append(time.perf_counter() - start)
    return common.Timing(tuple(samples), first_call_s=first)


def model_images_per_s(
    consumer: str,
    size: int,
    batch: int,
    warmup: int,
    repeats: int,
) -> float:
    """Images/s of our detector's train step, as ``model_speed.py`` times it."""
    from benchmarks import retinanets

    shape = {
        "r50": retinanets.R50,
        "lite": retinanets.LITE,
        "quick": retinanets.QUICK,
    }[consumer]
    num_classes = (
        retinanets.QUICK_CLASSES
        if consumer == "quick"
        else retinanets.COCO_CLASSES
    )
    train_config = retinanets.config_lib.TrainConfig()
    model = retinanets.build_ours(
        shape, size, num_classes, train_config.l2_weight_decay
    )
    # The parser pads to a multiple of 2**max_level: the model sees that.
    padded = pipeline.padded_image_size(size, MAX_LEVEL)[0]
    labels = retinanets.synthetic_labels(
        padded,
        batch,
        num_classes,
        retinanets.detector.anchors_per_location(
            retinanets.our_model_config(shape, num_classes)
        ),
    )
    images = retinanets.test_images(batch, padded)
    step = retinanets.train_fn(model, train_config, num_classes)
    timing = common.best_of(lambda: step(images, labels), warmup, repeats)
    retinanets.tf_keras.backend.clear_session()
    return batch / timing.median_s


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--sizes", nargs="+", type=common.positive_int, default=list(SIZES)
    )
    parser.add_argument("--batch", type=common.positive_int, default=BATCH)
    parser.add_argument(
        "--num_images",
        type=common.positive_int,
        default=NUM_IMAGES,
        help="images generated per size",
    )
    parser.add_argument(
        "--batches",
        type=common.positive_int,
        default=BATCHES_PER_REPEAT,
        help="batches per timed run",
    )
    parser.add_argument(
        "--data_dir",
        default="",
        help="folder for the generated sets (default: a temporary one)",
    )
    parser.add_argument(
        "--model",
        choices=CONSUMERS,
        default="r50",
        help="consumer timed in-process: R50 7@256, NAS-FPNLite, tiny",
    )
    parser.add_argument(
        "--model_images_per_s",
        type=common.non_negative_float,
        default=None,
        help="the consumer's train-step images/s (e.g. from model_speed); "
        "0: none",
    )
    parser.add_argument(
        "--no_eval", action="store_true", help="skip the evaluation rows"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="8 images at 128 px, tiny consumer: checks that the script runs",
    )
    common.add_timing_flags(parser, warmup=4, repeats=3)
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes = [QUICK_SIZE]
        args.num_images = QUICK_NUM_IMAGES
        args.batches = QUICK_BATCHES
        args.warmup, args.repeats = 1, 1
        args.model = "quick"
    return args


def run(args: argparse.Namespace, data_dir: str) -> list[dict]:
    rows = []
    splits = ("train",) if args.no_eval else ("train", "eval")
    for size in args.sizes:
        pattern = generate(data_dir, size, args.num_images)
        consumer = args.model_images_per_s
        consumer_source = "flag"
        if consumer is None:
            consumer = model_images_per_s(
                args.model, size, args.batch, 1, max(1, args.repeats)
            )
            consumer_source = f"measured:{args.model}"
        for split in splits:
            dataset = make_dataset(
                pattern, size, args.batch, training=split == "train"
            )
            timing = time_batches(
                dataset, args.warmup, args.repeats, args.batches
            )
            images_per_s = args.batch * args.batches / timing.median_s
            row = {
                "benchmark": "input_pipeline",
                "size": size,
                "padded_size": pipeline.padded_image_size(size, MAX_LEVEL)[0],
                "split": split,
                "augmented": split == "train",
                "batch": args.batch,
                "batches_per_run": args.batches,
                **timing.as_dict(),
                "images_per_s": round(images_per_s, 2),
                "model_images_per_s": round(consumer, 4) if consumer else None,
                "model": consumer_source if consumer else None,
                "headroom": common.ratio(images_per_s, consumer or None),
            }
            rows.append(common.emit(row))
    return rows


def main(argv: Sequence[str] | None = None) -> list[dict]:
    """Measures every size; prints JSON lines and a table; returns rows."""
    args = parse_args(argv)
    common.emit(
        {"benchmark": "input_pipeline", "machine": common.machine_info()}
    )
    if args.data_dir:
        rows = run(args, args.data_dir)
    else:
        with tempfile.TemporaryDirectory(prefix="nasfpn_pipeline_") as tmp:
            rows = run(args, tmp)
    common.print_table(
        "Input pipeline (images/s; headroom = pipeline / train step)",
        rows,
        (
            "size",
            "split",
            "batch",
            "median_s",
            "min_s",
            "max_s",
            "images_per_s",
            "model_images_per_s",
            "headroom",
        ),
    )
    return rows


if __name__ == "__main__":
    main()
