"""YOLO (darknet) text labels read into a ``SourceSet``.

One ``.txt`` per image, one object per line: ``class cx cy w h`` with the
class a 0-based index and the box its centre and size as fractions of the
image (a polygon ``class x1 y1 x2 y2 ...`` of a segmentation export counts
by its bounding box). Labels sit beside the images or in the ``labels``
folder next to an ``images`` one (Ultralytics, Roboflow); an image without
a label file is a negative. Class names come from ``classes.txt``,
``obj.names`` or a ``data.yaml`` (``names``), found beside the images,
labels or up to two folders above; class index i becomes id i + 1.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

import tensorflow as tf

from nasfpn_tf.data.sources import (
    IMAGE_EXTENSIONS,
    Box,
    ConversionStats,
    ImageRecord,
    SourceError,
    SourceSet,
    assign_image_ids,
)

CLASS_FILES = ("classes.txt", "obj.names", "data.yaml", "data.yml")
LABEL_EXTENSION = ".txt"
_IMAGES, _LABELS = "images", "labels"


def labels_dir(image_dir: str) -> str:
    """Where the labels of ``image_dir`` are: ``.../images/x`` ->
    ``.../labels/x`` when that exists, else ``image_dir`` itself."""
    parts = os.path.normpath(image_dir).split(os.sep)
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == _IMAGES:
            candidate = os.sep.join(parts[:i] + [_LABELS] + parts[i + 1 :])
            if tf.io.gfile.isdir(candidate):
                return candidate
            break
    return image_dir


def find_class_file(image_dir: str) -> str:
    """The class-name file of a YOLO folder (see ``CLASS_FILES``).

    Raises:
      SourceError: none is found; the message lists where it looked.
    """
    image_dir = os.path.normpath(image_dir)
    label_dir = os.path.normpath(labels_dir(image_dir))
    folders = [label_dir, image_dir]
    parent = image_dir
    for _ in range(2):
        parent = os.path.dirname(parent)
        folders.append(parent)
    folders = list(dict.fromkeys(f for f in folders if f))
    for folder in folders:
        for name in CLASS_FILES:
            path = os.path.join(folder, name)
            if tf.io.gfile.exists(path):
                return path
    raise SourceError(
        f"{image_dir}: no class names ({', '.join(CLASS_FILES)}) in "
        f"{', '.join(folders)}; pass --label_map"
    )


def list_yolo(image_dir: str) -> list[tuple[str, str, str]]:
    """(name, image path, label path) of every image or label file.

    The name is the file's stem; a label without its image is listed with
    the image path it should have had (and is counted missing later).

    Raises:
      SourceError: no such folder, or no image in it.
    """
    if not tf.io.gfile.isdir(image_dir):
        raise SourceError(f"{image_dir}: no such folder")
    label_dir = labels_dir(image_dir)
    images = {}
    for name in tf.io.gfile.listdir(image_dir):
        stem, ext = os.path.splitext(name)
        if ext.lower() in IMAGE_EXTENSIONS:
            images.setdefault(stem, name)
    labels = {
        os.path.splitext(name)[0]
        for name in tf.io.gfile.listdir(label_dir)
        if name.endswith(LABEL_EXTENSION) and name not in CLASS_FILES
    }
    if not images:
        raise SourceError(
            f"{image_dir}: no image ({', '.join(IMAGE_EXTENSIONS)})"
        )
    entries = []
    for stem in sorted(set(images) | labels):
        image = os.path.join(image_dir, images.get(stem, f"{stem}.jpg"))
        label = os.path.join(label_dir, f"{stem}{LABEL_EXTENSION}")
        entries.append((stem, image, label if stem in labels else ""))
    return entries


def read_yolo(
    image_dirs: Sequence[str],
    label_map: Mapping[str, int],
    image_ids: Mapping[str, int] | None = None,
    stats: ConversionStats | None = None,
) -> SourceSet:
    """Reads one split of YOLO folders.

    Args:
      image_dirs: image folders of the split.
      label_map: class name -> id, ids 1..n in class index order (as
        ``load_label_map`` reads ``classes.txt`` or ``data.yaml``).
      image_ids: image name -> id (``assign_image_ids`` over every split);
        None assigns ids over this split alone.
      stats: counters to update.
    """
    stats = stats if stats is not None else ConversionStats()
    entries = [e for d in image_dirs for e in list_yolo(d)]
    if image_ids is None:
        image_ids = assign_image_ids(name for name, _, _ in entries)
    images, seen = [], set()
    for name, image_path, label_path in entries:
        image_id = image_ids[name]
        if image_id in seen:
            stats.add("images_duplicate", example=image_path)
            continue
        seen.add(image_id)
        boxes = _read_labels(label_path, stats) if label_path else ()
        if boxes is None:
            continue
        images.append(
            ImageRecord(
                image_id=image_id,
                file_name=os.path.basename(image_path),
                path=image_path,
                height=0,
                width=0,
                boxes=boxes,
                normalized=True,
            )
        )
    categories = tuple(sorted((i, n) for n, i in label_map.items()))
    return SourceSet(categories=categories, images=tuple(images))


def _read_labels(path: str, stats: ConversionStats) -> tuple[Box, ...] | None:
    """The boxes of one label file (normalized xywh); None if unreadable."""
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            text = f.read().decode("utf-8-sig")
    except (OSError, tf.errors.OpError, UnicodeDecodeError):
        stats.add("annotations_unreadable", example=path)
        return None
    boxes = []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        box = _parse_line(fields)
        if box is None:
            stats.add("boxes_degenerate", example=f"{path}:{number}")
            continue
        boxes.append(box)
    return tuple(boxes)


def _parse_line(fields: list[str]) -> Box | None:
    """A box from ``class cx cy w h`` or ``class x1 y1 ... xn yn``."""
    try:
        index = int(fields[0])
        values = [float(v) for v in fields[1:]]
    except ValueError:
        return None
    if not all(map(math.isfinite, values)):
        return None
    if len(values) == 4:
        cx, cy, w, h = values
        x, y = cx - w / 2, cy - h / 2
    elif len(values) >= 6 and len(values) % 2 == 0:
        xs, ys = values[0::2], values[1::2]
        x, y = min(xs), min(ys)
        w, h = max(xs) - x, max(ys) - y
    else:
        return None
    # An index outside the names becomes an id outside the label map,
    # dropped and counted as an unknown class when the image is cleaned.
    return Box(x, y, w, h, category_id=index + 1 if index >= 0 else -1)
