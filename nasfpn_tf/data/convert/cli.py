"""The converter's command line: flags -> one ``convert_<format>`` call.

Run as ``python -m nasfpn_tf.data.convert``; the package docstring shows
a command per format.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

import tensorflow as tf

from nasfpn_tf.data import dataset as dataset_lib
from nasfpn_tf.data.convert.from_coco import convert_coco
from nasfpn_tf.data.convert.from_voc import convert_voc
from nasfpn_tf.data.convert.from_yolo import convert_yolo
from nasfpn_tf.data.convert.writing import (
    DEFAULT_IMAGES_PER_SHARD,
    SplitOutput,
)
from nasfpn_tf.data.sources import (
    ConversionStats,
    SourceError,
    load_label_map,
    voc_classes_label_map,
)

FORMATS = ("coco", "voc", "yolo")


def _image_set(spec: str) -> tuple[str, str | None]:
    """``FOLDER`` or ``FOLDER:IMAGE_SET`` (a colon inside a path, as in
    gs://, is part of the folder)."""
    folder, sep, image_set = spec.rpartition(":")
    if not sep or "/" in image_set or not folder or folder.endswith(":/"):
        folder, image_set = spec, ""
    if not folder:
        raise argparse.ArgumentTypeError(
            f"expected VOC_FOLDER or VOC_FOLDER:IMAGE_SET, got {spec!r}"
        )
    return folder, image_set or None


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m nasfpn_tf.data.convert",
        description="COCO, Pascal VOC or YOLO -> sharded TFRecords, COCO "
        f"JSON per split, {dataset_lib.DATASET_FILENAME} (for --data_dir) "
        f"and {dataset_lib.SUMMARY_FILENAME} (what was fixed or skipped).",
    )
    parser.add_argument("--format", choices=FORMATS, required=True)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--train_annotations", help="COCO: train JSON")
    parser.add_argument(
        "--train_images",
        action="append",
        default=[],
        help="COCO: train image folder; YOLO: train image folder (repeatable)",
    )
    parser.add_argument("--val_annotations", help="COCO: val JSON")
    parser.add_argument(
        "--val_images",
        action="append",
        default=[],
        help="COCO: val image folder; YOLO: val image folder (repeatable)",
    )
    parser.add_argument(
        "--train_sets",
        action="append",
        type=_image_set,
        default=[],
        help="VOC: FOLDER (every XML file) or FOLDER:IMAGE_SET (an "
        "ImageSets/Main list) for train (repeatable)",
    )
    parser.add_argument(
        "--val_sets",
        action="append",
        type=_image_set,
        default=[],
        help="VOC: FOLDER or FOLDER:IMAGE_SET for val (repeatable)",
    )
    parser.add_argument(
        "--label_map",
        help="VOC/YOLO: class names, .pbtxt/.json/.txt/.names/data.yaml, "
        "or 'voc' for the 20 Pascal VOC classes. Default: VOC, the classes "
        "the XML files use (sorted); YOLO, the classes.txt, obj.names or "
        "data.yaml found near the images",
    )
    parser.add_argument(
        "--voc_difficult",
        choices=("crowd", "keep"),
        default="crowd",
        help="VOC difficult objects: crowd (ignored) or plain objects",
    )
    parser.add_argument(
        "--heldout_fraction",
        type=float,
        default=0.0,
        help="share of train images (by id hash) for the search reward "
        "split; a search needs one",
    )
    parser.add_argument(
        "--val_fraction",
        type=float,
        default=0.0,
        help="with no val split given: share of train images (by id hash) "
        "for val; never overlaps the held-out split",
    )
    parser.add_argument(
        "--images_per_shard", type=int, default=DEFAULT_IMAGES_PER_SHARD
    )
    parser.add_argument("--num_workers", type=int, default=0)
    parser.add_argument("--no_progress", action="store_true")
    args = parser.parse_args(argv)
    given_val = args.val_annotations or args.val_sets or args.val_images
    if args.val_fraction and given_val:
        parser.error("--val_fraction carves val from train: give no val split")
    if not 0.0 <= args.val_fraction + args.heldout_fraction < 1.0:
        parser.error(
            "--val_fraction and --heldout_fraction must be >= 0, summing "
            "below 1"
        )
    if args.format == "coco":
        for split in ("train", "val"):
            a = getattr(args, f"{split}_annotations")
            i = getattr(args, f"{split}_images")
            if bool(a) != bool(i) or len(i) > 1:
                parser.error(
                    f"--{split}_annotations and one --{split}_images go "
                    "together"
                )
        if not (args.train_annotations or args.val_annotations):
            parser.error("COCO needs --train_annotations or --val_annotations")
    elif args.format == "voc":
        if not (args.train_sets or args.val_sets):
            parser.error("VOC needs --train_sets or --val_sets")
    elif not (args.train_images or args.val_images):
        parser.error("YOLO needs --train_images or --val_images")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, SplitOutput]:
    """Runs the converter; a data or file error exits with one line."""
    args = parse_args(argv)
    try:
        outputs = _convert(args)
    except (SourceError, OSError, tf.errors.OpError) as error:
        message = getattr(error, "message", None) or str(error)
        raise SystemExit(f"Error: {' '.join(message.split())}") from None
    for split, output in outputs.items():
        print(ConversionStats(output.counts).summary(f"split {split}"))
        print(f"  -> {output.file_pattern}\n  -> {output.annotations}")
    for name in (dataset_lib.DATASET_FILENAME, dataset_lib.SUMMARY_FILENAME):
        print(f"-> {os.path.join(args.output_dir, name)}")
    return outputs


def _convert(args: argparse.Namespace) -> dict[str, SplitOutput]:
    kwargs = {
        "heldout_fraction": args.heldout_fraction,
        "val_fraction": args.val_fraction,
        "images_per_shard": args.images_per_shard,
        "num_workers": args.num_workers,
        "progress": not args.no_progress,
    }
    splits = ("train", "val")
    if args.format == "coco":
        sources = {
            split: (
                getattr(args, f"{split}_annotations"),
                getattr(args, f"{split}_images")[0],
            )
            for split in splits
            if getattr(args, f"{split}_annotations")
        }
        return convert_coco(args.output_dir, sources, **kwargs)
    label_map = None
    if args.label_map == "voc":
        label_map = voc_classes_label_map()
    elif args.label_map:
        label_map = load_label_map(args.label_map)
    if args.format == "voc":
        sources = {
            split: getattr(args, f"{split}_sets")
            for split in splits
            if getattr(args, f"{split}_sets")
        }
        return convert_voc(
            args.output_dir,
            sources,
            label_map=label_map,
            difficult_as_crowd=args.voc_difficult == "crowd",
            **kwargs,
        )
    sources = {
        split: getattr(args, f"{split}_images")
        for split in splits
        if getattr(args, f"{split}_images")
    }
    return convert_yolo(args.output_dir, sources, label_map=label_map, **kwargs)
