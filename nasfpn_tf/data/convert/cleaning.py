"""One image and its boxes, read, checked and fixed, as a tf.Example.

Bad data is fixed or skipped and counted, never a crash: missing or
undecodable images are skipped; images in formats or colour modes TF does not
decode reliably (CMYK, palette, 16-bit...) are re-encoded; an annotated size
that differs from the decoded one rescales the boxes; boxes are clipped to
the image and dropped when degenerate (zero, negative or non-finite size);
boxes of classes outside the label map are dropped. Images without boxes are
kept: they are valid negatives (every anchor is background).
"""

from __future__ import annotations

import collections
import io
import math

import tensorflow as tf
from official.vision.data import tf_example_builder
from PIL import Image

from nasfpn_tf.data.sources import ImageRecord

JPEG_QUALITY = 95
# Formats and modes that tf.io.decode_image(channels=3) reads as they are.
TF_FORMATS = ("JPEG", "PNG")
TF_MODES = ("RGB", "L")


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
    image = _read_image(record.path, counts)
    if image is None:
        return None, None, [], counts
    encoded, pil_format, width, height = image
    annotations = _clean_boxes(record, known_classes, width, height, counts)
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


def _read_image(
    path: str, counts: collections.Counter[str]
) -> tuple[bytes, str, int, int] | None:
    """Reads and decodes an image, re-encoding what TF does not decode
    reliably.

    Returns:
      (encoded bytes, PIL format, width, height), or None (counted in
      ``counts``) for a missing or undecodable image.
    """
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            encoded = f.read()
    except (OSError, tf.errors.OpError):
        counts["images_missing"] += 1
        return None
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
        return None
    return encoded, pil_format, width, height


def _clean_boxes(
    record: ImageRecord,
    known_classes: frozenset[int],
    width: int,
    height: int,
    counts: collections.Counter[str],
) -> list[dict]:
    """COCO annotation entries of ``record``'s boxes in the decoded image's
    pixels: rescaled, clipped; degenerate and unknown-class boxes dropped
    (and counted in ``counts``)."""
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
    return annotations


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
