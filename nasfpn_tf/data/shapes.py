"""Draws one image of the generated set (``nasfpn_tf.data.synthetic``):
filled shapes of ``CLASS_NAMES`` kinds with random colours and textures
on a gradient background with blotches and light noise, later shapes
partly hiding earlier ones. What an image looks like is the generator's
version: a change here that alters any pixel or box bumps
``synthetic.GENERATOR_VERSION``, so cached sets are made again.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from PIL import Image, ImageDraw

CLASS_NAMES = ("rectangle", "ellipse", "triangle", "cross", "diamond")
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
