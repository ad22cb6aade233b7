r"""COCO JSON, Pascal VOC XML or YOLO text -> sharded TFRecords.

The records follow the TF Object Detection API schema that Model Garden's
``TfExampleDecoder`` reads: ``image/encoded``, ``image/source_id`` (the
numeric image id), ``image/height``, ``image/width``,
``image/object/bbox/{xmin,ymin,xmax,ymax}`` normalised to [0, 1],
``image/object/class/label``, ``image/object/area`` (pixels) and
``image/object/is_crowd``. Each split also gets ``{split}.json``: the COCO
ground truth of exactly what was written, for the COCO evaluator (image
entries keep the original file name). Beside them go ``dataset.json`` (the
splits, class names and ``num_classes``, read by ``--data_dir``) and
``summary.json`` (per split, what was written, fixed and skipped, with
example file names).

Bad data is fixed or skipped and counted, never a crash: missing or
undecodable images are skipped; images in formats or colour modes TF does not
decode reliably (CMYK, palette, 16-bit...) are re-encoded; an annotated size
that differs from the decoded one rescales the boxes; boxes are clipped to
the image and dropped when degenerate (zero, negative or non-finite size);
boxes of classes outside the label map are dropped. Images without boxes are
kept: they are valid negatives (every anchor is background).

The annotations are read by ``nasfpn_tf.data.sources`` (COCO),
``nasfpn_tf.data.voc`` and ``nasfpn_tf.data.yolo``; this module cleans the
images and boxes and writes them. What cannot be read at all (a missing
folder, a malformed label map) stops the command line with one line naming
the file.

The held-out split that scores architectures during the NAS-FPN search
(Ghiasi et al., CVPR 2019, arXiv:1904.07392) is carved from the training
images by a stable hash of the image id, and never shares an image with val.

  python -m nasfpn_tf.data.convert --format=coco --output_dir=OUT \
      --train_annotations=annotations/instances_train2017.json \
      --train_images=train2017 \
      --val_annotations=annotations/instances_val2017.json \
      --val_images=val2017 --heldout_fraction=0.05
  python -m nasfpn_tf.data.convert --format=voc --output_dir=OUT \
      --train_sets=VOCdevkit/VOC2007:trainval \
      --train_sets=VOCdevkit/VOC2012:trainval \
      --val_sets=VOCdevkit/VOC2007:test --heldout_fraction=0.05
  python -m nasfpn_tf.data.convert --format=voc --output_dir=OUT \
      --train_sets=my_labelimg_folder --val_fraction=0.15 \
      --heldout_fraction=0.15
  python -m nasfpn_tf.data.convert --format=yolo --output_dir=OUT \
      --train_images=export/train/images --val_images=export/valid/images \
      --heldout_fraction=0.1
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import hashlib
import io
import json
import math
import multiprocessing
import os
import sys
from collections.abc import Iterable, Mapping, Sequence

# TensorFlow's C++ start-up lines (CUDA probing, CPU features) say nothing
# a user of the command can act on; set in the environment, it still wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf
from absl import logging
from official.vision.data import tf_example_builder
from PIL import Image

from nasfpn_tf.data import dataset as dataset_lib
from nasfpn_tf.data import voc, yolo
from nasfpn_tf.data.sources import (
    EVENTS,
    ROUTINE_EVENTS,
    ConversionStats,
    ImageRecord,
    SourceError,
    SourceSet,
    assign_image_ids,
    load_label_map,
    read_coco,
    voc_classes_label_map,
)

FORMATS = ("coco", "voc", "yolo")
HELDOUT = "heldout"
DEFAULT_IMAGES_PER_SHARD = 1024
JPEG_QUALITY = 95
# Formats and modes that tf.io.decode_image(channels=3) reads as they are.
TF_FORMATS = ("JPEG", "PNG")
TF_MODES = ("RGB", "L")
_HASH_BYTES = 8


@dataclasses.dataclass(frozen=True)
class SplitOutput:
    """What was written for one split.

    Attributes:
      file_pattern: glob of the TFRecord shards.
      annotations: COCO JSON of the written ground truth.
      num_images: images written.
      num_boxes: boxes written.
      counts: event -> count (see ``EVENTS``) for this split.
    """

    file_pattern: str
    annotations: str
    num_images: int
    num_boxes: int
    counts: Mapping[str, int] = dataclasses.field(default_factory=dict)


def heldout_score(image_id: int | str) -> float:
    """A stable pseudo-random number in [0, 1) for an image id (SHA-1)."""
    digest = hashlib.sha1(str(image_id).encode("utf-8")).digest()
    return int.from_bytes(digest[:_HASH_BYTES], "big") / 2 ** (8 * _HASH_BYTES)


def split_heldout(
    images: Iterable[ImageRecord],
    fraction: float,
    exclude_ids: Iterable[int] = (),
    stats: ConversionStats | None = None,
) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """Splits images into (train, heldout) by ``heldout_score(id) < fraction``.

    The choice depends on the id alone, so it is stable under reordering and
    subsetting. Images whose id is in ``exclude_ids`` (the val split) go to
    neither side, so held-out and val never overlap.

    Raises:
      ValueError: fraction outside [0, 1).
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"heldout_fraction: expected [0, 1), got {fraction}")
    excluded = set(exclude_ids)
    train, heldout = [], []
    for record in images:
        if record.image_id in excluded:
            if stats is not None:
                stats.add("images_in_val")
            continue
        side = heldout if heldout_score(record.image_id) < fraction else train
        side.append(record)
    return train, heldout


def clean_image(
    record: ImageRecord, known_classes: frozenset[int]
) -> tuple[bytes | None, dict | None, list[dict], dict[str, int]]:
    """Reads, checks and fixes one image and its boxes.

    Args:
      record: the source image.
      known_classes: category ids of the label map.

    Returns:
      example: serialized tf.train.Example, None if the image is skipped.
      image: COCO image entry, None if skipped.
      annotations: COCO annotation entries (ids left to the caller).
      counts: event -> count for ``ConversionStats``.
    """
    counts: collections.Counter[str] = collections.Counter()
    try:
        with tf.io.gfile.GFile(record.path, "rb") as f:
            encoded = f.read()
    except (OSError, tf.errors.OpError):
        counts["images_missing"] += 1
        return None, None, [], counts
    try:
        with Image.open(io.BytesIO(encoded)) as image:
            image.load()
            pil_format, mode = image.format, image.mode
            width, height = image.size
            if pil_format not in TF_FORMATS or mode not in TF_MODES:
                encoded, pil_format = _reencode(image)
                counts["images_reencoded"] += 1
    except Exception:  # noqa: BLE001 (PIL raises many types on bad bytes)
        counts["images_undecodable"] += 1
        return None, None, [], counts
    scale_x = scale_y = 1.0
    if record.normalized:
        scale_x, scale_y = float(width), float(height)
    elif (
        record.width > 0
        and record.height > 0
        and ((record.width, record.height) != (width, height))
    ):
        scale_x, scale_y = width / record.width, height / record.height
        counts["images_size_mismatch"] += 1
    annotations = []
    for box in record.boxes:
        if box.category_id not in known_classes:
            counts["boxes_unknown_class"] += 1
            continue
        x, y, w, h = (
            box.x * scale_x,
            box.y * scale_y,
            box.w * scale_x,
            box.h * scale_y,
        )
        if not all(map(math.isfinite, (x, y, w, h))) or w <= 0 or h <= 0:
            counts["boxes_degenerate"] += 1
            continue
        x0, y0 = max(x, 0.0), max(y, 0.0)
        x1, y1 = min(x + w, float(width)), min(y + h, float(height))
        clipped = (x0, y0, x1, y1) != (x, y, x + w, y + h)
        if x1 <= x0 or y1 <= y0:
            counts["boxes_degenerate"] += 1
            continue
        counts["boxes_clipped"] += int(clipped)
        box_area = (x1 - x0) * (y1 - y0)
        # Unknown area -> the box's; a clipped segment cannot exceed its box.
        area = box.area * scale_x * scale_y
        area = box_area if area <= 0 else min(area, box_area)
        counts["boxes_crowd"] += int(box.iscrowd == 1)
        annotations.append(
            {
                "image_id": record.image_id,
                "category_id": box.category_id,
                "bbox": [x0, y0, x1 - x0, y1 - y0],
                "area": area,
                "iscrowd": int(box.iscrowd == 1),
            }
        )
    counts["images_written"] += 1
    counts["boxes_written"] += len(annotations)
    counts["images_without_boxes"] += int(not annotations)
    example = _make_example(
        encoded, pil_format, record, height, width, annotations
    )
    image_entry = {
        "id": record.image_id,
        "file_name": record.file_name,
        "height": height,
        "width": width,
    }
    return example, image_entry, annotations, counts


def write_split(
    source: SourceSet,
    output_dir: str,
    split: str,
    *,
    images_per_shard: int = DEFAULT_IMAGES_PER_SHARD,
    num_workers: int = 0,
    progress: bool = True,
    stats: ConversionStats | None = None,
) -> SplitOutput:
    """Writes ``{split}-NNNNN-of-MMMMM.tfrecord`` shards and ``{split}.json``.

    Images go round-robin over the shards (as Model Garden's converters do).
    Shards are written under temporary names and renamed when complete.

    Args:
      source: categories and images.
      output_dir: destination folder (local or any tf.io.gfile path).
      split: split name, the file prefix.
      images_per_shard: shard count is ceil(images / images_per_shard).
      num_workers: processes that read and check images; 0 = in process.
      progress: show a progress bar.
      stats: counters to update.
    """
    stats = stats if stats is not None else ConversionStats()
    if images_per_shard < 1:
        raise ValueError(
            f"images_per_shard: expected >= 1, got {images_per_shard}"
        )
    tf.io.gfile.makedirs(output_dir)
    num_shards = max(1, math.ceil(len(source.images) / images_per_shard))
    paths = [
        os.path.join(
            output_dir, f"{split}-{i:05d}-of-{num_shards:05d}.tfrecord"
        )
        for i in range(num_shards)
    ]
    known = frozenset(i for i, _ in source.categories)
    jobs = [(record, known) for record in source.images]
    images, annotations = [], []
    writers = [tf.io.TFRecordWriter(f"{p}.tmp") for p in paths]
    # Spawned, not forked: a fork of a process running TF threads can hang.
    pool = (
        multiprocessing.get_context("spawn").Pool(num_workers)
        if num_workers > 0
        else None
    )
    try:
        results = (
            pool.imap(_clean_job, jobs, chunksize=16)
            if pool
            else map(_clean_job, jobs)
        )
        for (record, _), (example, image, boxes, counts) in zip(
            jobs, _progress(results, len(jobs), split, progress)
        ):
            for event, n in counts.items():
                if n:
                    stats.add(event, n, example=record.path)
            if example is None:
                continue
            writers[len(images) % num_shards].write(example)
            images.append(image)
            for box in boxes:
                annotations.append({"id": len(annotations) + 1, **box})
    finally:
        if pool:
            pool.close()
            pool.join()
        for writer in writers:
            writer.close()
    for path in paths:
        tf.io.gfile.rename(f"{path}.tmp", path, overwrite=True)
    json_path = os.path.join(output_dir, f"{split}.json")
    with tf.io.gfile.GFile(json_path, "w") as f:
        json.dump(
            {
                "images": images,
                "annotations": annotations,
                "categories": [
                    {"id": i, "name": n} for i, n in source.categories
                ],
            },
            f,
        )
    return SplitOutput(
        file_pattern=os.path.join(output_dir, f"{split}-*-of-*.tfrecord"),
        annotations=json_path,
        num_images=len(images),
        num_boxes=len(annotations),
        counts={e: stats[e] for e in EVENTS if stats[e]},
    )


def convert_splits(
    output_dir: str,
    sources: Mapping[str, SourceSet],
    *,
    heldout_fraction: float = 0.0,
    heldout_from: str = "train",
    val_split: str = "val",
    val_fraction: float = 0.0,
    images_per_shard: int = DEFAULT_IMAGES_PER_SHARD,
    num_workers: int = 0,
    progress: bool = True,
    stats: Mapping[str, ConversionStats] | None = None,
) -> dict[str, SplitOutput]:
    """Writes every split, carving ``heldout`` (and ``val``) from
    ``heldout_from`` if asked.

    Args:
      output_dir: destination folder.
      sources: split name -> SourceSet.
      heldout_fraction: share of ``heldout_from`` images (by id hash) moved
        to a ``heldout`` split; 0 keeps the splits as given.
      heldout_from: split the held-out (and carved val) images come from.
      val_fraction: share of ``heldout_from`` images moved to the val
        split when none is given: those whose ``heldout_score`` is at
        least 1 - val_fraction, so val and heldout never meet.
      val_split: split whose image ids never appear in any other split.
      images_per_shard, num_workers, progress: as in ``write_split``.
      stats: split -> counters already holding what reading found.

    Returns:
      Split name -> SplitOutput; a summary per split is logged.
    """
    sources = dict(sources)
    if heldout_fraction > 0:
        if HELDOUT in sources:
            raise ValueError(
                f"heldout_fraction={heldout_fraction} but a {HELDOUT!r} split "
                "is already given; use one or the other"
            )
        if heldout_from not in sources:
            raise ValueError(
                f"heldout_from: no split {heldout_from!r} in {list(sources)}"
            )
    stats = {
        split: (stats or {}).get(split) or ConversionStats()
        for split in sources
    }
    if val_fraction > 0:
        _carve_val(sources, stats, val_fraction, heldout_fraction,
                   heldout_from, val_split)  # fmt: skip
    val_ids = (
        {r.image_id for r in sources[val_split].images}
        if val_split in sources
        else set()
    )
    for split, source in list(sources.items()):
        if split == val_split:
            continue
        fraction = heldout_fraction if split == heldout_from else 0.0
        kept, heldout = split_heldout(
            source.images, fraction, val_ids, stats[split]
        )
        sources[split] = dataclasses.replace(source, images=tuple(kept))
        if heldout:
            sources[HELDOUT] = dataclasses.replace(
                source, images=tuple(heldout)
            )
            stats[HELDOUT] = ConversionStats()
    outputs = {}
    for split, source in sources.items():
        outputs[split] = write_split(
            source,
            output_dir,
            split,
            images_per_shard=images_per_shard,
            num_workers=num_workers,
            progress=progress,
            stats=stats[split],
        )
        problems = set(stats[split].counts) - ROUTINE_EVENTS
        log = logging.warning if problems else logging.info
        log("%s", stats[split].summary(f"split {split}"))
    # Splits read with one label map share it; COCO files may each list
    # their own, so the union is described (the first name of an id wins).
    names: dict[int, str] = {}
    for source in sources.values():
        for category_id, name in source.categories:
            names.setdefault(category_id, name)
    categories = tuple(sorted(names.items()))
    dataset_lib.save(
        dataset_lib.DatasetInfo(
            categories=categories,
            splits=tuple(
                (
                    split,
                    dataset_lib.SplitInfo(
                        file_pattern=out.file_pattern,
                        annotations=out.annotations,
                        num_images=out.num_images,
                        num_boxes=out.num_boxes,
                    ),
                )
                for split, out in sorted(
                    outputs.items(), key=lambda kv: _split_order(kv[0])
                )
                if split in dataset_lib.SPLITS
            ),
        ),
        output_dir,
    )
    dataset_lib.save_summary(
        {split: stats[split].to_dict() for split in outputs}, output_dir
    )
    return outputs


def _carve_val(
    sources: dict[str, SourceSet],
    stats: dict[str, ConversionStats],
    val_fraction: float,
    heldout_fraction: float,
    carve_from: str,
    val_split: str,
) -> None:
    if val_split in sources:
        raise ValueError(
            f"val_fraction={val_fraction} but a {val_split!r} split is "
            "already given; use one or the other"
        )
    if carve_from not in sources:
        raise ValueError(f"no split {carve_from!r} in {list(sources)}")
    if not 0.0 < val_fraction + heldout_fraction < 1.0:
        raise ValueError(
            f"val_fraction ({val_fraction}) + heldout_fraction "
            f"({heldout_fraction}) must be below 1"
        )
    source = sources[carve_from]
    is_val = [
        heldout_score(r.image_id) >= 1.0 - val_fraction for r in source.images
    ]
    sources[carve_from] = dataclasses.replace(
        source,
        images=tuple(r for r, v in zip(source.images, is_val) if not v),
    )
    sources[val_split] = dataclasses.replace(
        source, images=tuple(r for r, v in zip(source.images, is_val) if v)
    )
    stats[val_split] = ConversionStats()


def convert_coco(
    output_dir: str,
    sources: Mapping[str, tuple[str, str]],
    **kwargs,
) -> dict[str, SplitOutput]:
    """Converts COCO splits: split name -> (annotations JSON, image folder).

    Keyword arguments are those of ``convert_splits``.
    """
    stats = {split: ConversionStats() for split in sources}
    sets = {
        split: read_coco(annotations, images, stats[split])
        for split, (annotations, images) in sources.items()
    }
    return convert_splits(output_dir, sets, stats=stats, **kwargs)


def convert_voc(
    output_dir: str,
    sources: Mapping[str, Sequence[tuple[str, str | None]]],
    label_map: Mapping[str, int] | None = None,
    difficult_as_crowd: bool = True,
    **kwargs,
) -> dict[str, SplitOutput]:
    """Converts VOC splits: split name -> [(VOC folder, image set or None)].

    Args:
      output_dir: destination folder.
      sources: per split, VOC folders with an ``ImageSets/Main`` list name
        or None for every XML file (see ``voc.list_voc``).
      label_map: class name -> id; None takes the classes the files of all
        splits use, sorted (on Pascal VOC: its 20 classes in their order).
      difficult_as_crowd: as in ``voc.voc_source``.
      **kwargs: those of ``convert_splits``.
    """
    stats = {split: ConversionStats() for split in sources}
    parsed = {
        split: voc.read_voc_annotations(image_sets, stats[split])
        for split, image_sets in sources.items()
    }
    if label_map is None:
        label_map = voc.voc_label_map(
            a for annotations in parsed.values() for a in annotations
        )
        if not label_map:
            raise SourceError(
                f"{_folders(sources)}: no <object> with a <name> in any "
                "readable XML file"
            )
    image_ids = assign_image_ids(
        a.name for annotations in parsed.values() for a in annotations
    )
    sets = {
        split: voc.voc_source(
            annotations, label_map, image_ids, difficult_as_crowd, stats[split]
        )
        for split, annotations in parsed.items()
    }
    return convert_splits(output_dir, sets, stats=stats, **kwargs)


def convert_yolo(
    output_dir: str,
    sources: Mapping[str, Sequence[str]],
    label_map: Mapping[str, int] | None = None,
    **kwargs,
) -> dict[str, SplitOutput]:
    """Converts YOLO splits: split name -> [image folder].

    Args:
      output_dir: destination folder.
      sources: per split, folders of images (labels beside them or in the
        matching ``labels`` folder; see ``yolo.labels_dir``).
      label_map: class name -> id in class index order; None reads the
        class file found near the first folder (``yolo.find_class_file``).
      **kwargs: those of ``convert_splits``.
    """
    if label_map is None:
        first = next(d for dirs in sources.values() for d in dirs)
        label_map = load_label_map(yolo.find_class_file(first))
    stats = {split: ConversionStats() for split in sources}
    image_ids = assign_image_ids(
        name
        for dirs in sources.values()
        for folder in dirs
        for name, _, _ in yolo.list_yolo(folder)
    )
    sets = {
        split: yolo.read_yolo(dirs, label_map, image_ids, stats[split])
        for split, dirs in sources.items()
    }
    return convert_splits(output_dir, sets, stats=stats, **kwargs)


def _folders(sources: Mapping[str, Sequence[tuple[str, str | None]]]) -> str:
    return ", ".join(folder for sets in sources.values() for folder, _ in sets)


def _split_order(split: str) -> int:
    order = dataset_lib.SPLITS
    return order.index(split) if split in order else len(order)


def _clean_job(job):
    return clean_image(*job)


def _progress(results, total: int, split: str, enabled: bool):
    if not enabled:
        return results
    from tqdm import tqdm

    return tqdm(results, total=total, desc=split, unit="img")


def _reencode(image: Image.Image) -> tuple[bytes, str]:
    """Re-encodes to RGB: PNG stays lossless, anything else becomes JPEG."""
    pil_format = "PNG" if image.format == "PNG" else "JPEG"
    buffer = io.BytesIO()
    kwargs = {"quality": JPEG_QUALITY} if pil_format == "JPEG" else {}
    image.convert("RGB").save(buffer, format=pil_format, **kwargs)
    return buffer.getvalue(), pil_format


def _make_example(
    encoded: bytes,
    pil_format: str,
    record: ImageRecord,
    height: int,
    width: int,
    annotations: list[dict],
) -> bytes:
    xmins, ymins, xmaxs, ymaxs = [], [], [], []
    for ann in annotations:
        x, y, w, h = ann["bbox"]
        xmins.append(x / width)
        ymins.append(y / height)
        xmaxs.append((x + w) / width)
        ymaxs.append((y + h) / height)
    builder = tf_example_builder.TfExampleBuilder()
    builder.add_encoded_image_feature(
        encoded,
        image_format=pil_format,
        height=height,
        width=width,
        num_channels=3,
        image_source_id=str(record.image_id).encode("utf-8"),
    )
    builder.add_boxes_feature(
        xmins, xmaxs, ymins, ymaxs, [a["category_id"] for a in annotations]
    )
    builder.add_floats_feature(
        "image/object/area", [a["area"] for a in annotations]
    )
    builder.add_ints_feature(
        "image/object/is_crowd", [a["iscrowd"] for a in annotations]
    )
    builder.add_bytes_feature("image/filename", record.file_name)
    return builder.serialized_example


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


if __name__ == "__main__":
    logging.set_verbosity(logging.INFO)
    main(sys.argv[1:])
