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
arXiv:1904.07392) search or training run needs no download.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import io
import json
import math
import os
import shutil
from collections.abc import Mapping

import numpy as np
from PIL import Image, ImageDraw

GENERATOR_VERSION = 2
MANIFEST = "manifest.json"
SPLITS = ("train", "heldout", "val")
CLASS_NAMES = ("rectangle", "ellipse", "triangle", "cross", "diamond")
IMAGE_FORMATS = {"jpeg": ("JPEG", ".jpg"), "png": ("PNG", ".png")}
JPEG_QUALITY = 90

# Image ids of split k start at k * SPLIT_ID_STRIDE + 1: unique across splits
# and below 2**24, so they survive a float32 round trip in Model Garden.
SPLIT_ID_STRIDE = 1_000_000
MIN_IMAGE_SIZE = 32
MIN_OBJECT_SIZE = 8  # absolute floor of an object's side, in pixels
MIN_OBJECT_FRACTION = 0.09  # smallest object side, as a fraction of the image
MAX_OBJECT_FRACTION = 0.9  # largest object side, as a fraction of the image
MAX_ASPECT = 2.0  # object width/height within [1 / MAX_ASPECT, MAX_ASPECT]
MAX_OBJECTS = 6
NEGATIVE_IMAGE_PROB = 0.05  # images with no object at all
MIN_VISIBLE_FRACTION = 0.5
PLACEMENT_TRIES = 8
MIN_COLOUR_DISTANCE = 90.0  # L1 over RGB, object vs. background mean
MAX_LINES = 0
MAX_DISTRACTORS = 0
NOISE_STD = 2.0
SPECKLE_DENSITY = 0.3
BLOTCH_STD = 12.0
BLOTCH_GRID = 4


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


def render_image(
    rng: np.random.Generator, image_size: int, num_classes: int
) -> tuple[np.ndarray, list[dict]]:
    """Draws one image and its objects.

    Args:
      rng: the image's own generator.
      image_size: side in pixels.
      num_classes: classes to draw from.

    Returns:
      image: [image_size, image_size, 3] uint8 RGB.
      objects: dicts with ``category_id`` (1-based), ``bbox`` [x, y, w, h]
        in absolute pixels (tight box of the visible pixels) and ``area``
        (visible pixels).
    """
    size = image_size
    background = _background(rng, size)
    canvas = background.copy()
    for _ in range(rng.integers(0, MAX_DISTRACTORS + 1)):
        patch = _distractor_mask(rng, size)
        _paint(canvas, patch, _texture(rng, patch.mask.shape, None))
    mean_colour = background.reshape(-1, 3).mean(axis=0)
    # Per pixel: index of the object that shows there, -1 for none.
    owner = np.full((size, size), -1, dtype=np.int32)
    classes: list[int] = []
    full_pixels: list[int] = []
    visible = np.zeros(MAX_OBJECTS, dtype=np.int64)
    num_objects = 0
    if rng.random() >= NEGATIVE_IMAGE_PROB:
        num_objects = int(rng.integers(1, MAX_OBJECTS + 1))
    for _ in range(num_objects):
        class_index = int(rng.integers(num_classes))
        colour = _object_colour(rng, mean_colour)
        for _ in range(PLACEMENT_TRIES):
            patch = _shape_mask(rng, size, CLASS_NAMES[class_index])
            pixels = int(patch.mask.sum())
            if pixels == 0:
                continue
            k = len(classes)
            below = owner[patch.window][patch.mask]
            hidden = np.bincount(below[below >= 0], minlength=k)
            left = visible[:k] - hidden[:k]
            if np.all(left >= MIN_VISIBLE_FRACTION * np.array(full_pixels)):
                _paint(canvas, patch, _texture(rng, patch.mask.shape, colour))
                owner[patch.window][patch.mask] = k
                visible[:k] = left
                visible[k] = pixels
                classes.append(class_index + 1)
                full_pixels.append(pixels)
                break
    for _ in range(rng.integers(0, MAX_LINES + 1)):
        _draw_line(rng, canvas, size)
    canvas += NOISE_STD * rng.standard_normal(canvas.shape, dtype=np.float32)
    image = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    objects = []
    for k, category_id in enumerate(classes):
        ys, xs = np.nonzero(owner == k)
        x0, y0 = int(xs.min()), int(ys.min())
        x1, y1 = int(xs.max()) + 1, int(ys.max()) + 1
        objects.append(
            {
                "category_id": category_id,
                "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                "area": float(len(xs)),
            }
        )
    return image, objects


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


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A linear gradient between two colours plus coarse blotches."""
    start, end = rng.uniform(0, 255, (2, 3)).astype(np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    coords = np.linspace(0.0, 1.0, size, dtype=np.float32)
    ramp = math.cos(angle) * coords[None, :] + math.sin(angle) * coords[:, None]
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
    image = start + (end - start) * ramp[..., None]
    # Low-frequency blotches (upsampled coarse noise), so the background is
    # not a clean gradient a detector could subtract.
    coarse = rng.normal(0.0, BLOTCH_STD, (BLOTCH_GRID, BLOTCH_GRID, 3))
    blotches = np.stack(
        [
            np.asarray(
                Image.fromarray(
                    coarse[..., c].astype(np.float32), mode="F"
                ).resize((size, size), Image.BILINEAR)
            )
            for c in range(3)
        ],
        axis=-1,
    )
    return image + blotches


def _object_colour(rng: np.random.Generator, mean: np.ndarray) -> np.ndarray:
    colour = rng.uniform(0, 255, 3)
    for _ in range(PLACEMENT_TRIES):
        if np.abs(colour - mean).sum() >= MIN_COLOUR_DISTANCE:
            break
        colour = rng.uniform(0, 255, 3)
    return colour.astype(np.float32)


def _texture(
    rng: np.random.Generator,
    shape: tuple[int, int],
    colour: np.ndarray | None,
) -> np.ndarray:
    """A [height, width, 3] float fill: solid, stripes, checker or speckle."""
    if colour is None:
        colour = rng.uniform(0, 255, 3).astype(np.float32)
    other = np.clip(colour + rng.uniform(-80, 80, 3), 0, 255)
    kind = rng.integers(4)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    if kind == 0:
        weight = np.zeros(shape, np.float32)
    elif kind == 1:
        angle = rng.uniform(0, math.pi)
        period = rng.uniform(3, 10)
        phase = (math.cos(angle) * xx + math.sin(angle) * yy) / period
        weight = (np.floor(phase) % 2).astype(np.float32)
    elif kind == 2:
        cell = int(rng.integers(2, 8))
        weight = ((yy // cell + xx // cell) % 2).astype(np.float32)
    else:
        weight = (rng.random(shape) < SPECKLE_DENSITY).astype(np.float32)
    return colour + (other - colour).astype(np.float32) * weight[..., None]


@dataclasses.dataclass(frozen=True)
class _Patch:
    """A boolean mask over the image window whose top-left is (y, x).

    Shapes are drawn in their own window, so the cost of an object scales
    with its area rather than the image's.
    """

    y: int
    x: int
    mask: np.ndarray

    @property
    def window(self) -> tuple[slice, slice]:
        h, w = self.mask.shape
        return slice(self.y, self.y + h), slice(self.x, self.x + w)


def _patch(
    size: int, x0: float, y0: float, x1: float, y1: float
) -> tuple[Image.Image, int, int]:
    """A blank mask covering [x0, x1] x [y0, y1] clipped to the image."""
    left, top = max(math.floor(x0), 0), max(math.floor(y0), 0)
    right = min(math.ceil(x1) + 1, size)
    bottom = min(math.ceil(y1) + 1, size)
    blank = Image.new("L", (max(right - left, 0), max(bottom - top, 0)), 0)
    return blank, left, top


def _shape_mask(rng: np.random.Generator, size: int, shape: str) -> _Patch:
    """One shape of a random place and size."""
    low = math.log(max(MIN_OBJECT_SIZE, MIN_OBJECT_FRACTION * size))
    high = math.log(MAX_OBJECT_FRACTION * size)
    side = math.exp(rng.uniform(low, high))
    aspect = math.exp(rng.uniform(-math.log(MAX_ASPECT), math.log(MAX_ASPECT)))
    w = min(side * math.sqrt(aspect), size - 1.0)
    h = min(side / math.sqrt(aspect), size - 1.0)
    x0 = rng.uniform(0, size - w)
    y0 = rng.uniform(0, size - h)
    mask, left, top = _patch(size, x0, y0, x0 + w, y0 + h)
    # Drawn in window coordinates.
    x0, y0 = x0 - left, y0 - top
    x1, y1 = x0 + w, y0 + h
    draw = ImageDraw.Draw(mask)
    if shape == "rectangle":
        draw.rectangle([x0, y0, x1, y1], fill=1)
    elif shape == "ellipse":
        draw.ellipse([x0, y0, x1, y1], fill=1)
    elif shape == "triangle":
        apex = x0 + rng.uniform(0, w)
        if rng.random() < 0.5:
            draw.polygon([(apex, y0), (x0, y1), (x1, y1)], fill=1)
        else:
            draw.polygon([(apex, y1), (x0, y0), (x1, y0)], fill=1)
    elif shape == "cross":
        tw, th = w * rng.uniform(0.25, 0.45), h * rng.uniform(0.25, 0.45)
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        draw.rectangle([cx - tw / 2, y0, cx + tw / 2, y1], fill=1)
        draw.rectangle([x0, cy - th / 2, x1, cy + th / 2], fill=1)
    elif shape == "diamond":
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=1)
    else:
        raise ValueError(f"shape: unknown {shape!r}")
    return _Patch(top, left, np.asarray(mask, dtype=bool))


def _distractor_mask(rng: np.random.Generator, size: int) -> _Patch:
    """A spiky blob (star with jittered radii): clutter, never an object."""
    radius = rng.uniform(MIN_OBJECT_SIZE / 2, size / 4)
    cx, cy = rng.uniform(0, size, 2)
    points = int(rng.integers(5, 9)) * 2
    angles = np.linspace(0, 2 * math.pi, points, endpoint=False)
    radii = radius * np.where(
        np.arange(points) % 2 == 0, 1.0, rng.uniform(0.2, 0.45, points)
    )
    mask, left, top = _patch(
        size, cx - radius, cy - radius, cx + radius, cy + radius
    )
    polygon = [
        (cx - left + r * math.cos(a), cy - top + r * math.sin(a))
        for r, a in zip(radii, angles)
    ]
    if mask.width and mask.height:
        ImageDraw.Draw(mask).polygon(polygon, fill=1)
    return _Patch(top, left, np.asarray(mask, dtype=bool))


def _draw_line(rng: np.random.Generator, canvas: np.ndarray, size: int):
    mask = Image.new("L", (size, size), 0)
    ends = [tuple(p) for p in rng.uniform(0, size, (2, 2))]
    ImageDraw.Draw(mask).line(ends, fill=1, width=int(rng.integers(1, 3)))
    patch = _Patch(0, 0, np.asarray(mask, dtype=bool))
    _paint(canvas, patch, rng.uniform(0, 255, 3))


def _paint(canvas: np.ndarray, patch: _Patch, fill: np.ndarray) -> None:
    """Fills the patch with a colour [3] or a texture of its window's shape."""
    region = canvas[patch.window]
    region[patch.mask] = fill[patch.mask] if fill.ndim == 3 else fill


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
