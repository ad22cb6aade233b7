"""A generated detection set (shapes on cluttered backgrounds), fully offline.

Each image holds a few filled shapes of ``num_classes`` kinds (rectangle,
ellipse, triangle, cross, diamond) with random colours and textures, sized
log-uniformly from ``MIN_OBJECT_FRACTION`` of the image side (at least
``MIN_OBJECT_SIZE`` pixels) to most of the image, so that at 128 px objects
of 12-115 px fall on pyramid levels P3..P6. Backgrounds carry gradients,
blotches and light noise; later shapes may hide part of earlier ones (each
keeps at least ``MIN_VISIBLE_FRACTION`` of its pixels) and boxes are the
tight boxes of the visible pixels, with the visible pixel count as ``area``
(as COCO's segment area).

Version 2 (``GENERATOR_VERSION``) is the task a tiny detector learns on a
CPU in minutes. Version 1 drew objects from 8 px at 64 px images with lines
and distractor blobs: with RetinaNet's anchors (4 x stride, 32 px at P3)
only 30% of its boxes had an anchor with IoU >= 0.5, every box fell on P3,
and the tiny detector reached val AP 0.01. The clutter (``MAX_LINES``,
``MAX_DISTRACTORS``) is kept in the code but set to none in version 2.

``generate`` writes, per split, COCO-format JSON and JPEG/PNG images; it is
deterministic by seed (image ``i`` of a split depends only on the seed, the
split and ``i``) and idempotent (a manifest records the parameters).
``generate_tfrecords`` also converts the splits to TFRecords with
:mod:`nasfpn_tf.data.convert`, so a tiny NAS-FPN (Ghiasi et al., CVPR 2019,
arXiv:1904.07392) search or training run needs no download. The
drawing of one image is ``nasfpn_tf.data.shapes``'s.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import io
import json
import os
import shutil
from collections.abc import Mapping

import numpy as np
from PIL import Image

from nasfpn_tf.data.shapes import (  # noqa: F401 (re-exported)
    CLASS_NAMES,
    MIN_OBJECT_SIZE,
    render_image,
)

GENERATOR_VERSION = 2
MANIFEST = "manifest.json"
SPLITS = ("train", "heldout", "val")
IMAGE_FORMATS = {"jpeg": ("JPEG", ".jpg"), "png": ("PNG", ".png")}
JPEG_QUALITY = 90

# Image ids of split k start at k * SPLIT_ID_STRIDE + 1: unique across splits
# and below 2**24, so they survive a float32 round trip in Model Garden.
SPLIT_ID_STRIDE = 1_000_000
MIN_IMAGE_SIZE = 32


@dataclasses.dataclass(frozen=True)
class SplitPaths:
    """Where one generated split lives.

    Attributes:
      annotations: COCO JSON file.
      images: folder of the images named in the JSON's ``file_name``.
      num_images: images in the split.
    """

    annotations: str
    images: str
    num_images: int


def generate(
    out_dir: str,
    num_images: Mapping[str, int],
    image_size: int = 128,
    num_classes: int = 3,
    seed: int = 0,
    image_format: str = "jpeg",
) -> dict[str, SplitPaths]:
    """Writes the generated splits, or reuses them if already written.

    Args:
      out_dir: folder for ``{split}.json``, ``{split}/`` images and the
        manifest.
      num_images: images per split, e.g. ``{"train": 256, "heldout": 64,
        "val": 64}``; split names come from ``SPLITS``.
      image_size: side of the square images in pixels.
      num_classes: shape classes used, 1..len(CLASS_NAMES); category ids
        are 1..num_classes.
      seed: generation seed.
      image_format: ``"jpeg"`` or ``"png"``.

    Returns:
      Split name -> SplitPaths.

    Raises:
      ValueError: an argument is out of range.
    """
    params = _validate(num_images, image_size, num_classes, seed, image_format)
    paths = {
        split: SplitPaths(
            annotations=os.path.join(out_dir, f"{split}.json"),
            images=os.path.join(out_dir, split),
            num_images=count,
        )
        for split, count in params["num_images"].items()
    }
    manifest_path = os.path.join(out_dir, MANIFEST)
    previous = _read_json(manifest_path)
    if previous == params and all(
        os.path.exists(p.annotations) for p in paths.values()
    ):
        return paths
    if previous is not None:
        # Only folders this generator made (a manifest exists) are cleared,
        # so stale images of a larger earlier run do not linger.
        for split in SPLITS:
            shutil.rmtree(os.path.join(out_dir, split), ignore_errors=True)
        os.remove(manifest_path)
    os.makedirs(out_dir, exist_ok=True)
    for split, split_paths in paths.items():
        _write_split(split, split_paths, params)
    # Written last: a run cut short is redone, not mistaken for complete.
    _write_json(manifest_path, params)
    return paths


def generate_tfrecords(
    out_dir: str,
    num_images: Mapping[str, int],
    image_size: int = 128,
    num_classes: int = 3,
    seed: int = 0,
    image_format: str = "jpeg",
    images_per_shard: int = 1024,
):
    """Generates the splits and converts them to TFRecords, idempotently.

    Images and JSON go to ``out_dir/coco``, TFRecord shards and the cleaned
    ground-truth JSON (for the evaluator) to ``out_dir/tfrecords``.

    Args:
      out_dir: root folder.
      num_images, image_size, num_classes, seed, image_format: as in
        ``generate``.
      images_per_shard: images per TFRecord shard.

    Returns:
      Split name -> ``convert.SplitOutput`` (file pattern, JSON, counts).
    """
    from nasfpn_tf.data import convert

    coco = generate(
        os.path.join(out_dir, "coco"),
        num_images,
        image_size=image_size,
        num_classes=num_classes,
        seed=seed,
        image_format=image_format,
    )
    record_dir = os.path.join(out_dir, "tfrecords")
    manifest_path = os.path.join(record_dir, MANIFEST)
    params = _read_json(os.path.join(out_dir, "coco", MANIFEST))
    params["images_per_shard"] = images_per_shard
    previous = _read_json(manifest_path)
    if previous is not None and previous.get("params") == params:
        outputs = {
            split: convert.SplitOutput(**fields)
            for split, fields in previous["outputs"].items()
        }
        if all(_shards_exist(o.file_pattern) for o in outputs.values()):
            return outputs
    outputs = convert.convert_coco(
        record_dir,
        {s: (p.annotations, p.images) for s, p in coco.items()},
        images_per_shard=images_per_shard,
        progress=False,
    )
    _write_json(
        manifest_path,
        {
            "params": params,
            "outputs": {s: dataclasses.asdict(o) for s, o in outputs.items()},
        },
    )
    return outputs


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of one image: independent of the split's length."""
    return np.random.default_rng([seed, SPLITS.index(split), index])


def _validate(num_images, image_size, num_classes, seed, image_format) -> dict:
    if not isinstance(num_images, Mapping) or not num_images:
        raise ValueError(
            f"num_images: expected a non-empty mapping split -> count, got "
            f"{num_images!r}"
        )
    for split, count in num_images.items():
        if split not in SPLITS:
            raise ValueError(
                f"num_images: unknown split {split!r}; expected some of "
                f"{SPLITS}"
            )
        if not isinstance(count, int) or not 0 <= count < SPLIT_ID_STRIDE:
            raise ValueError(
                f"num_images[{split!r}]: expected an int in "
                f"[0, {SPLIT_ID_STRIDE}), got {count!r}"
            )
    if not isinstance(image_size, int) or image_size < MIN_IMAGE_SIZE:
        raise ValueError(
            f"image_size: expected an int >= {MIN_IMAGE_SIZE}, got "
            f"{image_size!r}"
        )
    if not isinstance(num_classes, int) or not (
        1 <= num_classes <= len(CLASS_NAMES)
    ):
        raise ValueError(
            f"num_classes: expected 1..{len(CLASS_NAMES)}, got {num_classes!r}"
        )
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed: expected an int >= 0, got {seed!r}")
    if image_format not in IMAGE_FORMATS:
        raise ValueError(
            f"image_format: expected one of {sorted(IMAGE_FORMATS)}, got "
            f"{image_format!r}"
        )
    return {
        "version": GENERATOR_VERSION,
        "num_images": {s: num_images[s] for s in SPLITS if s in num_images},
        "image_size": image_size,
        "num_classes": num_classes,
        "seed": seed,
        "image_format": image_format,
    }


def _write_split(split: str, paths: SplitPaths, params: dict) -> None:
    pil_format, suffix = IMAGE_FORMATS[params["image_format"]]
    os.makedirs(paths.images, exist_ok=True)
    first_id = SPLITS.index(split) * SPLIT_ID_STRIDE + 1
    size = params["image_size"]
    images, annotations = [], []
    for index in range(paths.num_images):
        image_id = first_id + index
        rng = image_rng(params["seed"], split, index)
        pixels, objects = render_image(rng, size, params["num_classes"])
        file_name = f"{image_id:08d}{suffix}"
        with open(os.path.join(paths.images, file_name), "wb") as f:
            f.write(_encode(pixels, pil_format))
        images.append(
            {
                "id": image_id,
                "file_name": file_name,
                "height": size,
                "width": size,
            }
        )
        for obj in objects:
            annotations.append(
                {
                    "id": first_id + len(annotations),
                    "image_id": image_id,
                    "iscrowd": 0,
                    **obj,
                }
            )
    categories = [
        {"id": i + 1, "name": name, "supercategory": "shape"}
        for i, name in enumerate(CLASS_NAMES[: params["num_classes"]])
    ]
    _write_json(
        paths.annotations,
        {
            "info": {
                "description": f"nasfpn_tf synthetic shapes, split {split}",
                "version": str(GENERATOR_VERSION),
            },
            "licenses": [],
            "images": images,
            "annotations": annotations,
            "categories": categories,
        },
    )


def _encode(pixels: np.ndarray, pil_format: str) -> bytes:
    buffer = io.BytesIO()
    kwargs = {"quality": JPEG_QUALITY} if pil_format == "JPEG" else {}
    Image.fromarray(pixels).save(buffer, format=pil_format, **kwargs)
    return buffer.getvalue()


def _shards_exist(file_pattern: str) -> bool:
    return bool(glob.glob(file_pattern))


def _read_json(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _write_json(path: str, value) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(value, f)
    os.replace(tmp, path)


def fingerprint(paths: Mapping[str, SplitPaths]) -> str:
    """SHA-1 over every split's JSON and image bytes (for reproducibility)."""
    digest = hashlib.sha1()
    for split in sorted(paths):
        with open(paths[split].annotations, "rb") as f:
            digest.update(f.read())
        for name in sorted(os.listdir(paths[split].images)):
            with open(os.path.join(paths[split].images, name), "rb") as f:
                digest.update(f.read())
    return digest.hexdigest()
