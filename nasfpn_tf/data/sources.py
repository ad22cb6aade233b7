"""Annotated images and their boxes before cleaning; COCO JSON; ids.

``read_coco`` (and ``nasfpn_tf.data.voc``, ``nasfpn_tf.data.yolo`` for
their formats) turn a dataset's annotations into ``ImageRecord``s (an
image's path, annotated size and ``Box``es, COCO style) without opening any
image; ``nasfpn_tf.data.convert`` cleans and writes them. What
is skipped on the way (a box whose image is not listed, an id listed twice,
an unreadable XML file, a class outside the label map) is counted in a
``ConversionStats``, whose ``EVENTS`` also name what the writer fixes and
skips. What cannot be read at all (a missing folder, a file that is not the
format it should be) raises ``SourceError``, one line naming the file.

Image names become numeric ids below 2**24, where Model
Garden's float32 ids stay exact: Pascal VOC's own names by their number
(``voc_image_id``: ``2008_000123`` -> 8000123), any other name by a stable
hash (``assign_image_ids``).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence

import tensorflow as tf

from nasfpn_tf.errors import UserError

# Ids above 2**24 lose precision where Model Garden carries them as float32.
MAX_EXACT_FLOAT32_ID = 2**24
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff",
                    ".webp")  # fmt: skip
# File names kept per event to show the user where a count comes from.
MAX_EXAMPLES = 3
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


class SourceError(UserError, ValueError):
    """A dataset folder or file that cannot be read as its format says;
    the message is one line naming the file and what is wrong."""


@dataclasses.dataclass(frozen=True)
class Box:
    """One annotated object, COCO style.

    Attributes:
      x, y, w, h: box in absolute pixels of the annotated image size, or
        in fractions of the image's width and height when its record is
        ``normalized``.
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
      normalized: boxes are fractions of the decoded image's size (YOLO).
    """

    image_id: int
    file_name: str
    path: str
    height: int
    width: int
    boxes: tuple[Box, ...]
    normalized: bool = False


@dataclasses.dataclass(frozen=True)
class SourceSet:
    """A split read from disk: its categories and images."""

    categories: tuple[tuple[int, str], ...]  # (id, name)
    images: tuple[ImageRecord, ...]


class ConversionStats:
    """Counts of what was written, fixed and skipped (see ``EVENTS``)."""

    def __init__(
        self,
        counts: Mapping[str, int] | None = None,
        examples: Mapping[str, Sequence[str]] | None = None,
    ):
        self.counts: collections.Counter[str] = collections.Counter()
        self.examples: dict[str, list[str]] = {}
        for event, n in (counts or {}).items():
            self.add(event, n)
        for event, names in (examples or {}).items():
            for name in names:
                self.add(event, 0, example=name)

    def add(self, event: str, n: int = 1, example: str | None = None) -> None:
        """Counts ``n`` times ``event``; ``example`` names a file at fault
        (the first ``MAX_EXAMPLES`` per event are kept)."""
        if event not in EVENTS:
            raise KeyError(f"unknown event {event!r}; known: {list(EVENTS)}")
        if n:
            self.counts[event] += n
        if example is not None and event not in ROUTINE_EVENTS:
            kept = self.examples.setdefault(event, [])
            if len(kept) < MAX_EXAMPLES and example not in kept:
                kept.append(example)

    def merge(self, other: ConversionStats) -> None:
        self.counts.update(other.counts)
        for event, names in other.examples.items():
            for name in names:
                self.add(event, 0, example=name)

    def __getitem__(self, event: str) -> int:
        return self.counts[event]

    def to_dict(self) -> dict[str, dict]:
        """``{"counts": {event: n}, "examples": {event: [file, ...]}}``."""
        return {
            "counts": {e: self.counts[e] for e in EVENTS if self.counts[e]},
            "examples": {
                e: list(self.examples[e]) for e in EVENTS if e in self.examples
            },
        }

    def summary(self, title: str = "conversion") -> str:
        lines = [f"{title}:"]
        for event, meaning in EVENTS.items():
            if self.counts[event]:
                line = f"  {self.counts[event]:>9d}  {meaning}"
                if self.examples.get(event):
                    line += f" (e.g. {', '.join(self.examples[event])})"
                lines.append(line)
        return "\n".join(lines)


def read_coco(
    annotations_path: str,
    image_dir: str,
    stats: ConversionStats | None = None,
) -> SourceSet:
    """Reads a COCO detection JSON; the label map is its ``categories``.

    Raises:
      SourceError: the file is missing or not COCO detection JSON (names
        the file and the entry at fault).
    """
    stats = stats if stats is not None else ConversionStats()
    data = _read_json(annotations_path)
    if not isinstance(data, dict):
        raise SourceError(f"{annotations_path}: not a COCO JSON object")
    for key in ("images", "categories"):
        if not isinstance(data.get(key), list):
            raise SourceError(f"{annotations_path}: no {key!r} list")
    if not data["categories"]:
        raise SourceError(f"{annotations_path}: 'categories' is empty")
    try:
        return _coco_source(data, image_dir, stats)
    except (KeyError, TypeError, ValueError) as error:
        raise SourceError(
            f"{annotations_path}: not COCO detection JSON "
            f"({type(error).__name__}: {error})"
        ) from None


def _coco_source(
    data: Mapping, image_dir: str, stats: ConversionStats
) -> SourceSet:
    categories = tuple(
        sorted((int(c["id"]), str(c["name"])) for c in data["categories"])
    )
    boxes: dict[int, list[Box]] = collections.defaultdict(list)
    image_ids = {int(image["id"]) for image in data["images"]}
    for ann in data.get("annotations", []):
        image_id = int(ann["image_id"])
        if image_id not in image_ids:
            stats.add("boxes_orphan", example=f"image_id {image_id}")
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
            stats.add("images_duplicate", example=str(image["file_name"]))
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


def _read_json(path: str):
    text = read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise SourceError(f"{path}: not valid JSON ({error})") from None


def read_text(path: str) -> str:
    """The text of a dataset file.

    Raises:
      SourceError: it is missing, a folder or not UTF-8 text.
    """
    if not tf.io.gfile.exists(path) or tf.io.gfile.isdir(path):
        raise SourceError(f"{path}: no such file")
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            return f.read().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise SourceError(f"{path}: not UTF-8 text") from None


def stable_image_id(name: str, attempt: int = 0) -> int:
    """A numeric id in [1, 2**24) for an image name, the same on every run.

    ``attempt`` > 0 gives the alternative ids ``assign_image_ids`` tries
    when two names hash alike.
    """
    key = name if attempt == 0 else f"{name}#{attempt}"
    digest = hashlib.sha1(key.encode("utf-8")).digest()
    return 1 + int.from_bytes(digest[:4], "big") % (MAX_EXACT_FLOAT32_ID - 1)


def assign_image_ids(names: Iterable[str]) -> dict[str, int]:
    """Unique numeric ids for image names, deterministic given the names.

    Pascal VOC names keep their number (``voc_image_id``); any other name
    gets ``stable_image_id``. When two names would share an id, the names
    are taken in sorted order (VOC numbers first) and a later one moves to
    its next alternative id, so the outcome depends on the set of names
    alone, not on their order.
    """
    names = sorted(set(names))
    ids: dict[str, int] = {}
    taken: set[int] = set()
    hashed = []
    for name in names:
        try:
            image_id = voc_image_id(name)
        except ValueError:
            hashed.append(name)
            continue
        ids[name] = image_id
        taken.add(image_id)
    for name in hashed:
        attempt = 0
        while (image_id := stable_image_id(name, attempt)) in taken:
            attempt += 1
        ids[name] = image_id
        taken.add(image_id)
    return ids


class ImageFinder:
    """Finds an annotation's image among a few folders, listing each once.

    Labelling tools record the image as ``<filename>`` (maybe with other
    letter case or extension than the file on disk) and often a ``<path>``
    from the machine it was labelled on; the image itself may sit in
    ``JPEGImages/``, beside the annotation, or at that path.
    """

    def __init__(self):
        self._listings: dict[str, dict[str, str]] = {}

    def _listing(self, folder: str) -> dict[str, str]:
        """Lower-case file name -> actual name, in ``folder``."""
        if folder not in self._listings:
            names = (
                tf.io.gfile.listdir(folder) if tf.io.gfile.isdir(folder) else []
            )
            self._listings[folder] = {
                n.lower(): n for n in names if not n.endswith("/")
            }
        return self._listings[folder]

    def find(self, dirs: Sequence[str], names: Sequence[str], stem: str) -> str:
        """Path of the image: the first of ``names`` (base names compared
        without letter case) in ``dirs``, then an existing absolute name,
        then ``stem`` with an image extension. When none exists, where the
        first name was expected (so the image is counted as missing)."""
        dirs = list(dict.fromkeys(d for d in dirs if d))
        names = [n for n in names if n]
        bases = [os.path.basename(n.replace("\\", "/")) for n in names]
        for base in bases:
            for folder in dirs:
                found = self._listing(folder).get(base.lower())
                if found:
                    return os.path.join(folder, found)
        for name in names:
            if os.path.isabs(name) and tf.io.gfile.exists(name):
                return name
        stems = [stem] + [os.path.splitext(b)[0] for b in bases]
        for candidate in dict.fromkeys(stems):
            for folder in dirs:
                listing = self._listing(folder)
                for ext in IMAGE_EXTENSIONS:
                    found = listing.get(f"{candidate}{ext}".lower())
                    if found:
                        return os.path.join(folder, found)
        base = bases[0] if bases else f"{stem}.jpg"
        return os.path.join(dirs[0], base)


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


def voc_classes_label_map() -> dict[str, int]:
    """The 20 Pascal VOC classes -> 1..20."""
    return {name: i + 1 for i, name in enumerate(VOC_CLASSES)}


def load_label_map(path: str) -> dict[str, int]:
    """Class name -> id from ``.pbtxt`` (TF OD API), JSON, YAML or text.

    JSON holds ``{"name": id}`` or a list of names (ids 1..n); YAML is a
    YOLO ``data.yaml`` whose ``names`` is a list or a ``{index: name}``
    mapping (index 0 -> id 1); text (``classes.txt``, ``obj.names``) holds
    one name per line (ids 1..n).

    Raises:
      SourceError: a missing or malformed file, ids that are not unique
        ints >= 1, or no class at all.
    """
    text = read_text(path)
    lower = path.lower()
    try:
        if lower.endswith(".pbtxt"):
            label_map = _pbtxt_label_map(text, path)
        elif lower.endswith(".json"):
            data = json.loads(text)
            if isinstance(data, list):
                data = {name: i + 1 for i, name in enumerate(data)}
            label_map = {str(k): int(v) for k, v in data.items()}
        elif lower.endswith((".yaml", ".yml")):
            label_map = _yaml_label_map(text, path)
        else:
            names = [ln.strip() for ln in text.splitlines() if ln.strip()]
            label_map = {name: i + 1 for i, name in enumerate(names)}
    except (AttributeError, TypeError, ValueError) as error:
        if isinstance(error, SourceError):
            raise
        raise SourceError(f"{path}: not a label map ({error})") from None
    ids = list(label_map.values())
    if not ids or min(ids) < 1 or len(set(ids)) != len(ids):
        raise SourceError(
            f"{path}: expected unique class ids >= 1, got {label_map}"
        )
    return label_map


def _pbtxt_label_map(text: str, path: str) -> dict[str, int]:
    label_map = {}
    for item in re.findall(r"item\s*\{(.*?)\}", text, flags=re.DOTALL):
        name = re.search(r"\bname:\s*['\"](.*?)['\"]", item)
        item_id = re.search(r"\bid:\s*(\d+)", item)
        if not (name and item_id):
            raise SourceError(
                f"{path}: item without name or id: {' '.join(item.split())!r}"
            )
        label_map[name.group(1)] = int(item_id.group(1))
    return label_map


def _yaml_label_map(text: str, path: str) -> dict[str, int]:
    import yaml  # lazy: only YOLO data.yaml files need it

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        first = str(error).splitlines()[0]
        raise SourceError(f"{path}: invalid YAML ({first})") from None
    names = data.get("names") if isinstance(data, dict) else None
    if isinstance(names, dict):
        indices = sorted(int(k) for k in names)
        if indices != list(range(len(indices))):
            raise SourceError(
                f"{path}: 'names' keys must be 0..n-1, got {indices}"
            )
        names = [names[k] if k in names else names[str(k)] for k in indices]
    if not isinstance(names, list):
        raise SourceError(f"{path}: no 'names' list of class names")
    return {str(name): i + 1 for i, name in enumerate(names)}
