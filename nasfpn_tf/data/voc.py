"""Pascal VOC XML as labelling tools export it, read into a ``SourceSet``.

A VOC folder may hold ``Annotations/``, ``JPEGImages/`` and
``ImageSets/Main/*.txt`` (Pascal VOC, CVAT), or be one flat folder of
images and XML files (LabelImg, Roboflow). Without an image set list every
XML file is read. Each file's image is found from ``<filename>``, then
``<path>``, then its own name with an image extension (``ImageFinder``).
Image names become ids with ``assign_image_ids``; the label map is given or
made of the classes the files use.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from xml.etree import ElementTree

import tensorflow as tf

from nasfpn_tf.data.sources import (
    Box,
    ConversionStats,
    ImageFinder,
    ImageRecord,
    SourceError,
    SourceSet,
    assign_image_ids,
)


@dataclasses.dataclass(frozen=True)
class VocObject:
    """One ``<object>`` of a VOC XML file, before the label map.

    Attributes:
      label: the ``<name>`` text, stripped.
      corners: (xmin, ymin, xmax, ymax) 1-based inclusive pixels; None when
        ``<bndbox>`` is missing or not numeric.
      difficult: the ``<difficult>`` flag.
    """

    label: str
    corners: tuple[float, float, float, float] | None
    difficult: bool


@dataclasses.dataclass(frozen=True)
class VocAnnotation:
    """One VOC XML file as read, before ids and the label map.

    Attributes:
      name: the annotation's name (the XML file's stem), the image's
        identity: the same name in two splits is the same image.
      xml_path: where it was read.
      image_path: the image found for it (``<filename>``, ``<path>`` or the
        name with an image extension); where it was expected when missing.
      height, width: ``<size>``; 0 when absent.
      objects: the ``<object>`` entries.
    """

    name: str
    xml_path: str
    image_path: str
    height: int
    width: int
    objects: tuple[VocObject, ...]


# An ImageSets/Main/<class>_<set>.txt line: a name, spaces, -1, 0 or 1.
_CLASS_FLAG_LINE = re.compile(r"(.+?)\s+(?:-1|0|1)")


def list_voc(voc_dir: str, image_set: str | None = None) -> list[str]:
    """XML files of a VOC folder, listed or found.

    Args:
      voc_dir: a VOC folder (``Annotations/``, ``JPEGImages/``, maybe
        ``ImageSets/Main/``) or a flat folder of images and XML files
        (LabelImg, Roboflow).
      image_set: an ``ImageSets/Main/{image_set}.txt`` list; None takes
        every ``*.xml`` in ``Annotations/`` (or in ``voc_dir`` itself when
        it has no ``Annotations/``), sorted.

    Raises:
      SourceError: no such folder or list, or no XML file found.
    """
    if not tf.io.gfile.isdir(voc_dir):
        raise SourceError(f"{voc_dir}: no such folder")
    annotations = os.path.join(voc_dir, "Annotations")
    if not tf.io.gfile.isdir(annotations):
        annotations = voc_dir
    if image_set is not None:
        list_path = os.path.join(
            voc_dir, "ImageSets", "Main", f"{image_set}.txt"
        )
        if not tf.io.gfile.exists(list_path):
            raise SourceError(
                f"{list_path}: no such image set list (leave out "
                f":{image_set} to take every XML file in {annotations})"
            )
        with tf.io.gfile.GFile(list_path) as f:
            lines = [line.strip() for line in f if line.strip()]
        present = set(tf.io.gfile.listdir(annotations))
        names = [_listed_name(line, present) for line in lines]
        return [os.path.join(annotations, f"{name}.xml") for name in names]
    paths = sorted(
        os.path.join(annotations, name)
        for name in tf.io.gfile.listdir(annotations)
        if name.lower().endswith(".xml")
    )
    if not paths:
        raise SourceError(f"{annotations}: no .xml annotation file")
    return paths


def read_voc_annotations(
    image_sets: Sequence[tuple[str, str | None]],
    stats: ConversionStats | None = None,
) -> list[VocAnnotation]:
    """Parses the VOC XML files of ``image_sets`` (see ``list_voc``).

    An unreadable or malformed XML file is skipped and counted.
    """
    stats = stats if stats is not None else ConversionStats()
    finder = ImageFinder()
    annotations = []
    for voc_dir, image_set in image_sets:
        for xml_path in list_voc(voc_dir, image_set):
            try:
                # Bytes: the parser honours the file's encoding declaration.
                with tf.io.gfile.GFile(xml_path, "rb") as f:
                    root = ElementTree.fromstring(f.read())
            except (OSError, tf.errors.OpError, ElementTree.ParseError):
                stats.add("annotations_unreadable", example=xml_path)
                continue
            name = os.path.splitext(os.path.basename(xml_path))[0]
            image_path = finder.find(
                dirs=(
                    os.path.join(voc_dir, "JPEGImages"),
                    os.path.dirname(xml_path),
                    voc_dir,
                ),
                names=(
                    (root.findtext("filename") or "").strip(),
                    (root.findtext("path") or "").strip(),
                ),
                stem=name,
            )
            annotations.append(
                VocAnnotation(
                    name=name,
                    xml_path=xml_path,
                    image_path=image_path,
                    height=_int_or_zero(root.findtext("size/height")),
                    width=_int_or_zero(root.findtext("size/width")),
                    objects=tuple(_voc_object(o) for o in root.iter("object")),
                )
            )
    return annotations


def voc_label_map(annotations: Iterable[VocAnnotation]) -> dict[str, int]:
    """Label map of the classes the annotations use: sorted names -> 1..n.

    On Pascal VOC itself this is the 20 classes in their usual order.
    """
    labels = sorted({o.label for a in annotations for o in a.objects})
    return {label: i + 1 for i, label in enumerate(labels)}


def voc_source(
    annotations: Sequence[VocAnnotation],
    label_map: Mapping[str, int],
    image_ids: Mapping[str, int] | None = None,
    difficult_as_crowd: bool = True,
    stats: ConversionStats | None = None,
) -> SourceSet:
    """Turns parsed VOC annotations into a ``SourceSet``.

    VOC boxes are 1-based inclusive pixel indices; they become continuous
    COCO boxes ``[xmin - 1, ymin - 1, xmax - xmin + 1, ymax - ymin + 1]``.

    Args:
      annotations: from ``read_voc_annotations``.
      label_map: class name -> id; other classes are dropped and counted.
      image_ids: annotation name -> id (``assign_image_ids`` over every
        split); None assigns ids over these annotations alone.
      difficult_as_crowd: write "difficult" objects as crowd, so training
        skips them and COCO evaluation ignores detections on them (as VOC
        does); otherwise they are plain objects.
      stats: counters to update.
    """
    stats = stats if stats is not None else ConversionStats()
    if image_ids is None:
        image_ids = assign_image_ids(a.name for a in annotations)
    images, seen = [], set()
    for ann in annotations:
        image_id = image_ids[ann.name]
        if image_id in seen:
            stats.add("images_duplicate", example=ann.xml_path)
            continue
        seen.add(image_id)
        boxes = []
        for obj in ann.objects:
            if obj.label not in label_map:
                stats.add(
                    "boxes_unknown_class",
                    example=f"{ann.xml_path}: {obj.label!r}",
                )
                continue
            if obj.corners is None:
                stats.add("boxes_degenerate", example=ann.xml_path)
                continue
            x0, y0, x1, y1 = obj.corners
            boxes.append(
                Box(
                    x0 - 1.0,
                    y0 - 1.0,
                    x1 - x0 + 1.0,
                    y1 - y0 + 1.0,
                    category_id=label_map[obj.label],
                    iscrowd=int(obj.difficult and difficult_as_crowd),
                )
            )
        images.append(
            ImageRecord(
                image_id=image_id,
                file_name=os.path.basename(ann.image_path),
                path=ann.image_path,
                height=ann.height,
                width=ann.width,
                boxes=tuple(boxes),
            )
        )
    categories = tuple(sorted((i, n) for n, i in label_map.items()))
    return SourceSet(categories=categories, images=tuple(images))


def read_voc(
    image_sets: Sequence[tuple[str, str | None]],
    label_map: Mapping[str, int] | None = None,
    difficult_as_crowd: bool = True,
    stats: ConversionStats | None = None,
) -> SourceSet:
    """Reads one split of VOC XML files (see ``list_voc``).

    Args:
      image_sets: (VOC folder, image set or None) pairs, e.g.
        ``[("VOCdevkit/VOC2007", "trainval")]``.
      label_map: class name -> id; None takes the classes the files use
        (``voc_label_map``).
      difficult_as_crowd, stats: as in ``voc_source``.
    """
    stats = stats if stats is not None else ConversionStats()
    annotations = read_voc_annotations(image_sets, stats)
    if label_map is None:
        label_map = voc_label_map(annotations)
    return voc_source(annotations, label_map, None, difficult_as_crowd, stats)


def _voc_object(obj: ElementTree.Element) -> VocObject:
    try:
        bndbox = obj.find("bndbox")
        corners = tuple(
            float(bndbox.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")
        )
    except (AttributeError, TypeError, ValueError):
        corners = None
    return VocObject(
        label=(obj.findtext("name") or "").strip(),
        corners=corners,
        difficult=(obj.findtext("difficult") or "0").strip() == "1",
    )


def _int_or_zero(text: str | None) -> int:
    try:
        return max(int(float(text)), 0)
    except (TypeError, ValueError):
        return 0


def _listed_name(line: str, present: set[str]) -> str:
    """The annotation name of one ``ImageSets`` line.

    A line is a name, which may hold spaces (CVAT's ``frame 001``), or, in
    Pascal VOC's per-class lists, a name and a -1/0/1 flag
    (``000005 -1``): the flag is dropped, the rest of the name kept. A line
    that is itself a present name stays whole, so ``frame 1`` is not cut.
    """
    if f"{line}.xml" in present:
        return line
    flagged = _CLASS_FLAG_LINE.fullmatch(line)
    return flagged.group(1) if flagged else line
