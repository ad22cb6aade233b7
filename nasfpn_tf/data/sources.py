"""Annotated images read from COCO JSON or Pascal VOC XML, before cleaning.

``read_coco`` and ``read_voc`` turn a dataset's annotations into
``ImageRecord``s (an image's path, annotated size and ``Box``es, COCO
style) without opening any image; ``nasfpn_tf.data.convert`` cleans and
writes them. What is skipped on the way (a box whose image is not listed,
an id listed twice, an unreadable XML file, a class outside the label map)
is counted in a ``ConversionStats``, whose ``EVENTS`` also name what the
writer fixes and skips.

VOC image names become numeric ids (``voc_image_id``: ``2008_000123`` ->
8000123) below 2**24, where Model Garden's float32 ids stay exact.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from xml.etree import ElementTree

import tensorflow as tf

# Ids above 2**24 lose precision where Model Garden carries them as float32.
MAX_EXACT_FLOAT32_ID = 2**24
_VOC_ID = re.compile(r"^(?:(\d{4})_)?(\d+)$")
_VOC_FIRST_YEAR = 2000
_VOC_YEAR_STRIDE = 1_000_000

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person",
    "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip

# Event -> what its count means, in the order the summary lists them.
EVENTS = {
    "images_written": "images written",
    "images_without_boxes": "images kept with no box (valid negatives)",
    "images_missing": "images skipped: file not found",
    "images_undecodable": "images skipped: not decodable",
    "images_duplicate": "images skipped: id listed twice",
    "images_in_val": "images skipped: also in the val split",
    "images_reencoded": "images re-encoded (format or colour mode)",
    "images_size_mismatch": "images whose annotated size differed from the "
    "decoded one (boxes rescaled)",
    "annotations_unreadable": "annotation files skipped: unreadable",
    "boxes_written": "boxes written",
    "boxes_crowd": "boxes written as crowd (ignored in training)",
    "boxes_clipped": "boxes clipped to the image",
    "boxes_degenerate": "boxes dropped: zero, negative or non-finite size",
    "boxes_unknown_class": "boxes dropped: class outside the label map",
    "boxes_orphan": "boxes dropped: image id not in the image list",
}

# Events that say nothing is wrong; any other one is logged as a warning.
ROUTINE_EVENTS = frozenset(
    {"images_written", "images_without_boxes", "boxes_written", "boxes_crowd"}
)


@dataclasses.dataclass(frozen=True)
class Box:
    """One annotated object, COCO style.

    Attributes:
      x, y, w, h: box in absolute pixels of the annotated image size.
      category_id: class id (label map id).
      area: object area in pixels (segment area for COCO); <= 0 = unknown.
      iscrowd: 1 for crowd regions (VOC "difficult" objects map here too).
    """

    x: float
    y: float
    w: float
    h: float
    category_id: int
    area: float = 0.0
    iscrowd: int = 0


@dataclasses.dataclass(frozen=True)
class ImageRecord:
    """One source image and its boxes, before cleaning.

    Attributes:
      image_id: numeric id, unique within the dataset, < 2**24.
      file_name: name written to the COCO JSON.
      path: where the encoded image is read from.
      height, width: annotated size in pixels; 0 when unknown.
      boxes: the annotations.
    """

    image_id: int
    file_name: str
    path: str
    height: int
    width: int
    boxes: tuple[Box, ...]


@dataclasses.dataclass(frozen=True)
class SourceSet:
    """A split read from disk: its categories and images."""

    categories: tuple[tuple[int, str], ...]  # (id, name)
    images: tuple[ImageRecord, ...]


class ConversionStats:
    """Counts of what was written, fixed and skipped (see ``EVENTS``)."""

    def __init__(self, counts: Mapping[str, int] | None = None):
        self.counts: collections.Counter[str] = collections.Counter()
        for event, n in (counts or {}).items():
            self.add(event, n)

    def add(self, event: str, n: int = 1) -> None:
        if event not in EVENTS:
            raise KeyError(f"unknown event {event!r}; known: {list(EVENTS)}")
        if n:
            self.counts[event] += n

    def merge(self, other: ConversionStats) -> None:
        self.counts.update(other.counts)

    def __getitem__(self, event: str) -> int:
        return self.counts[event]

    def summary(self, title: str = "conversion") -> str:
        lines = [f"{title}:"]
        for event, meaning in EVENTS.items():
            if self.counts[event]:
                lines.append(f"  {self.counts[event]:>9d}  {meaning}")
        return "\n".join(lines)


def read_coco(
    annotations_path: str,
    image_dir: str,
    stats: ConversionStats | None = None,
) -> SourceSet:
    """Reads a COCO detection JSON; the label map is its ``categories``.

    Raises:
      ValueError: the file is not COCO detection JSON (names the key).
    """
    stats = stats if stats is not None else ConversionStats()
    with tf.io.gfile.GFile(annotations_path) as f:
        data = json.load(f)
    for key in ("images", "categories"):
        if key not in data:
            raise ValueError(f"{annotations_path}: no {key!r} list")
    categories = tuple(
        sorted((int(c["id"]), str(c["name"])) for c in data["categories"])
    )
    boxes: dict[int, list[Box]] = collections.defaultdict(list)
    image_ids = {int(image["id"]) for image in data["images"]}
    for ann in data.get("annotations", []):
        image_id = int(ann["image_id"])
        if image_id not in image_ids:
            stats.add("boxes_orphan")
            continue
        try:
            x, y, w, h = (float(v) for v in ann["bbox"])
        except (KeyError, TypeError, ValueError):
            x = y = w = h = math.nan  # counted as degenerate when cleaned
        boxes[image_id].append(
            Box(
                x,
                y,
                w,
                h,
                category_id=int(ann.get("category_id", -1)),
                area=float(ann.get("area") or 0.0),
                iscrowd=int(ann.get("iscrowd", 0)),
            )
        )
    images, seen = [], set()
    for image in data["images"]:
        image_id = int(image["id"])
        if image_id in seen:
            stats.add("images_duplicate")
            continue
        seen.add(image_id)
        images.append(
            ImageRecord(
                image_id=image_id,
                file_name=str(image["file_name"]),
                path=os.path.join(image_dir, str(image["file_name"])),
                height=int(image.get("height") or 0),
                width=int(image.get("width") or 0),
                boxes=tuple(boxes[image_id]),
            )
        )
    return SourceSet(categories=categories, images=tuple(images))


def voc_image_id(name: str) -> int:
    """Numeric id of a VOC image name, exact in float32.

    ``"000005"`` (VOC2007) -> 5; ``"2008_000123"`` (VOC2012) ->
    8_000_123: year - 2000 in the millions, so 2007-2012 names never collide
    with each other or with VOC2007's six-digit names.

    Raises:
      ValueError: the name is not a VOC image name.
    """
    match = _VOC_ID.match(name)
    if match is None:
        raise ValueError(f"not a VOC image name: {name!r}")
    year, number = match.groups()
    image_id = int(number)
    if year is not None:
        if image_id >= _VOC_YEAR_STRIDE or int(year) < _VOC_FIRST_YEAR:
            raise ValueError(f"VOC image name out of range: {name!r}")
        image_id += (int(year) - _VOC_FIRST_YEAR) * _VOC_YEAR_STRIDE
    if image_id >= MAX_EXACT_FLOAT32_ID:
        raise ValueError(f"VOC image name out of range: {name!r}")
    return image_id


def load_label_map(path: str) -> dict[str, int]:
    """Class name -> id from ``.pbtxt`` (TF OD API), ``.json`` or text.

    JSON holds ``{"name": id}`` or a list of names (ids 1..n); text holds one
    name per line (ids 1..n).

    Raises:
      ValueError: ids are not unique positive ints, or the file is empty.
    """
    with tf.io.gfile.GFile(path) as f:
        text = f.read()
    if path.endswith(".pbtxt"):
        items = re.findall(r"item\s*\{(.*?)\}", text, flags=re.DOTALL)
        label_map = {}
        for item in items:
            name = re.search(r"\bname:\s*['\"](.*?)['\"]", item)
            item_id = re.search(r"\bid:\s*(\d+)", item)
            if not (name and item_id):
                raise ValueError(f"{path}: item without name or id: {item!r}")
            label_map[name.group(1)] = int(item_id.group(1))
    elif path.endswith(".json"):
        data = json.loads(text)
        if isinstance(data, list):
            data = {name: i + 1 for i, name in enumerate(data)}
        label_map = {str(k): int(v) for k, v in data.items()}
    else:
        names = [line.strip() for line in text.splitlines() if line.strip()]
        label_map = {name: i + 1 for i, name in enumerate(names)}
    ids = list(label_map.values())
    if not ids or min(ids) < 1 or len(set(ids)) != len(ids):
        raise ValueError(
            f"{path}: expected unique class ids >= 1, got {label_map}"
        )
    return label_map


def read_voc(
    image_sets: Sequence[tuple[str, str]],
    label_map: Mapping[str, int] | None = None,
    difficult_as_crowd: bool = True,
    stats: ConversionStats | None = None,
) -> SourceSet:
    """Reads Pascal VOC ``Annotations/*.xml`` listed in ``ImageSets/Main``.

    VOC boxes are 1-based inclusive pixel indices; they become continuous
    COCO boxes ``[xmin - 1, ymin - 1, xmax - xmin + 1, ymax - ymin + 1]``.

    Args:
      image_sets: (VOC year folder, image set) pairs, e.g.
        ``[("VOCdevkit/VOC2007", "trainval")]``.
      label_map: class name -> id; the 20 VOC classes -> 1..20 by default.
      difficult_as_crowd: write "difficult" objects as crowd, so training
        skips them and COCO evaluation ignores detections on them (as VOC
        does); otherwise they are plain objects.
      stats: counters to update.
    """
    stats = stats if stats is not None else ConversionStats()
    if label_map is None:
        label_map = {name: i + 1 for i, name in enumerate(VOC_CLASSES)}
    images, seen = [], set()
    for voc_dir, image_set in image_sets:
        list_path = os.path.join(
            voc_dir, "ImageSets", "Main", f"{image_set}.txt"
        )
        with tf.io.gfile.GFile(list_path) as f:
            names = [line.split()[0] for line in f if line.strip()]
        for name in names:
            image_id = voc_image_id(name)
            if image_id in seen:
                stats.add("images_duplicate")
                continue
            seen.add(image_id)
            xml_path = os.path.join(voc_dir, "Annotations", f"{name}.xml")
            try:
                with tf.io.gfile.GFile(xml_path) as f:
                    root = ElementTree.fromstring(f.read())
            except (OSError, tf.errors.OpError, ElementTree.ParseError):
                stats.add("annotations_unreadable")
                continue
            boxes = []
            for obj in root.iter("object"):
                label = (obj.findtext("name") or "").strip()
                if label not in label_map:
                    stats.add("boxes_unknown_class")
                    continue
                try:
                    bndbox = obj.find("bndbox")
                    x0, y0, x1, y1 = (
                        float(bndbox.findtext(k))
                        for k in ("xmin", "ymin", "xmax", "ymax")
                    )
                except (AttributeError, TypeError, ValueError):
                    stats.add("boxes_degenerate")
                    continue
                difficult = (obj.findtext("difficult") or "0").strip() == "1"
                boxes.append(
                    Box(
                        x0 - 1.0,
                        y0 - 1.0,
                        x1 - x0 + 1.0,
                        y1 - y0 + 1.0,
                        category_id=label_map[label],
                        iscrowd=int(difficult and difficult_as_crowd),
                    )
                )
            file_name = f"{name}.jpg"
            images.append(
                ImageRecord(
                    image_id=image_id,
                    file_name=f"{os.path.basename(voc_dir)}/{file_name}",
                    path=os.path.join(voc_dir, "JPEGImages", file_name),
                    height=_int_or_zero(root.findtext("size/height")),
                    width=_int_or_zero(root.findtext("size/width")),
                    boxes=tuple(boxes),
                )
            )
    categories = tuple(sorted((i, n) for n, i in label_map.items()))
    return SourceSet(categories=categories, images=tuple(images))


def _int_or_zero(text: str | None) -> int:
    try:
        return max(int(float(text)), 0)
    except (TypeError, ValueError):
        return 0
