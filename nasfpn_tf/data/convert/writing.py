"""Cleaned splits written as sharded TFRecords, COCO JSON and dataset.json.

Each split gets ``{split}-NNNNN-of-MMMMM.tfrecord`` shards of the examples
``cleaning.clean_image`` keeps and ``{split}.json``, the COCO ground truth of
exactly what was written; the output folder gets ``dataset.json`` (splits,
class names, ``num_classes``; read by ``--data_dir``) and ``summary.json``
(per split, what was written, fixed and skipped).
"""

from __future__ import annotations

import dataclasses
import json
import math
import multiprocessing
import os
from collections.abc import Mapping

import tensorflow as tf
from absl import logging

from nasfpn_tf.data import dataset as dataset_lib
from nasfpn_tf.data.convert.cleaning import clean_image
from nasfpn_tf.data.convert.splits import carve_splits
from nasfpn_tf.data.sources import (
    EVENTS,
    ROUTINE_EVENTS,
    ConversionStats,
    ImageRecord,
    SourceSet,
)

DEFAULT_IMAGES_PER_SHARD = 1024


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
    images, annotations = _write_shards(
        jobs,
        paths,
        split,
        num_workers=num_workers,
        progress=progress,
        stats=stats,
    )
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


def _write_shards(
    jobs: list[tuple[ImageRecord, frozenset[int]]],
    paths: list[str],
    split: str,
    *,
    num_workers: int,
    progress: bool,
    stats: ConversionStats,
) -> tuple[list[dict], list[dict]]:
    """Cleans the images of ``jobs`` and writes those kept round-robin over
    the shards ``paths`` (as ``.tmp`` files, renamed when complete).

    Returns:
      The COCO image and annotation entries of what was written.
    """
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
            writers[len(images) % len(paths)].write(example)
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
    return images, annotations


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
    sources, stats = carve_splits(
        sources,
        stats,
        heldout_fraction=heldout_fraction,
        heldout_from=heldout_from,
        val_fraction=val_fraction,
        val_split=val_split,
    )
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
    _save_dataset(output_dir, sources, outputs, stats)
    return outputs


def _save_dataset(
    output_dir: str,
    sources: Mapping[str, SourceSet],
    outputs: Mapping[str, SplitOutput],
    stats: Mapping[str, ConversionStats],
) -> None:
    """Writes ``dataset.json`` and ``summary.json`` of the written splits."""
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
