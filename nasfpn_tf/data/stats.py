"""Data set and anchor statistics: does the configured detector see the data?

A RetinaNet learns an object only through the anchors labelled positive for
it. Model Garden's ``AnchorLabeler`` marks anchors with IoU >= the match
threshold positive and, failing that, forces the single best anchor of each
box positive (``force_match_for_each_col``). A box whose best IoU is 0.1 is
then trained through one anchor three times its size: it is "matched" but
barely learnable. This module measures, for a split and a config:

- **coverage**: the share of ground-truth boxes that end with at least one
  positive anchor under the configured matcher (forced matches included);
- **coverage at threshold**: the share whose best anchor reaches the match
  threshold, i.e. that do not depend on a forced low-IoU match;
- box sides per pyramid level (the level of each box's best anchor), the
  best-IoU distribution, class counts and boxes per image.

Boxes are scaled as the evaluation parser scales them (the longer side to
``model.image_size``, no jitter), and anchors are Model Garden's for the
padded input, so the figures are the ones training sees.

  python -m nasfpn_tf.data.stats --config_file=configs/tiny.yaml
  python -m nasfpn_tf.data.stats --config_file=my.yaml --split=train --json
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import itertools
import json
import math
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from nasfpn_tf.data.pipeline import InputConfig

# Below this share of covered boxes a warning says what to change.
COVERAGE_WARNING = 0.9
# Sides in pixels at which the box-size table splits, after scaling.
SIDE_BUCKETS = (8, 16, 32, 64, 128, 256, 512)
IOU_QUANTILES = (0.1, 0.5, 0.9)


def anchor_sides(settings: InputConfig) -> dict[int, tuple[float, float]]:
    """Level -> (smallest, largest) square-equivalent anchor side."""
    return {
        level: (
            settings.anchor_size * 2**level,
            settings.anchor_size
            * 2**level
            * 2 ** ((settings.num_scales - 1) / settings.num_scales),
        )
        for level in range(settings.min_level, settings.max_level + 1)
    }


@dataclasses.dataclass(frozen=True)
class ImageBoxes:
    """One image's ground truth.

    Attributes:
        height, width: original size in pixels.
        boxes: [n, 4] float, ymin, xmin, ymax, xmax normalised to [0, 1].
        classes: [n] int, 1-based.
    """

    height: int
    width: int
    boxes: np.ndarray
    classes: np.ndarray


class AnchorMatcher:
    """Model Garden's anchors and matcher for one input size."""

    def __init__(self, settings: InputConfig):
        import tensorflow as tf
        from official.vision.ops import anchor as anchor_lib

        from nasfpn_tf.data import pipeline

        self.settings = settings
        self.padded_size = pipeline.padded_image_size(
            settings.image_size, settings.max_level, settings.pad
        )
        anchors = anchor_lib.Anchor(
            min_level=settings.min_level,
            max_level=settings.max_level,
            num_scales=settings.num_scales,
            aspect_ratios=list(settings.aspect_ratios),
            anchor_size=settings.anchor_size,
            image_size=list(self.padded_size),
        )
        per_level = []
        levels = []
        for level, boxes in anchors.multilevel_boxes.items():
            flat = tf.reshape(boxes, [-1, 4])
            per_level.append(flat)
            levels.append(np.full(flat.shape[0], int(level), np.int32))
        self.anchors = tf.concat(per_level, axis=0)
        self.anchor_levels = np.concatenate(levels)
        labeler = anchor_lib.AnchorLabeler(
            settings.match_threshold, settings.unmatched_threshold
        )
        self._similarity = labeler.similarity_calc
        self._matcher = labeler.matcher

    def scale(self, image: ImageBoxes) -> np.ndarray:
        """[n, 4] boxes in input pixels, scaled as the eval parser does."""
        height, width = self.settings.image_size
        factor = min(height / image.height, width / image.width)
        size = np.array(
            [image.height, image.width, image.height, image.width], np.float32
        )
        return image.boxes.astype(np.float32) * size * factor

    def match(self, boxes: np.ndarray) -> tuple[np.ndarray, ...]:
        """Per box: best IoU, level of the best anchor, covered or not.

        Args:
            boxes: [n, 4] yxyx in input pixels, n >= 1.

        Returns:
            best_iou [n] float, best_level [n] int, covered [n] bool (at
            least one positive anchor after matching, forced ones
            included).
        """
        import tensorflow as tf

        gt = tf.constant(boxes, tf.float32)
        similarity = self._similarity(self.anchors, gt)  # [anchors, n]
        matched, indicators = self._matcher(similarity)
        similarity = similarity.numpy()
        best = similarity.argmax(axis=0)
        positive = matched.numpy()[indicators.numpy() == 1]
        covered = np.zeros(len(boxes), bool)
        covered[np.unique(positive)] = True
        return (
            similarity.max(axis=0),
            self.anchor_levels[best],
            covered,
        )


def compute(
    images: Iterable[ImageBoxes],
    settings: InputConfig,
    class_names: Mapping[int, str] | None = None,
) -> dict[str, Any]:
    """Statistics of a split's boxes under `settings`.

    Returns:
        A JSON-ready dict: images, boxes, empty_images, boxes_per_image,
        classes (name -> count), coverage, coverage_at_threshold,
        best_iou quantiles, per_level (level -> boxes, anchor sides, box
        side quantiles, coverage at threshold), side_buckets (range ->
        boxes, coverage at threshold), padded_size, and warnings (with
        what to change).
    """
    matcher = AnchorMatcher(settings)
    sides, ious, levels, covered, classes = [], [], [], [], []
    num_images = empty = 0
    for image in images:
        num_images += 1
        if len(image.boxes) == 0:
            empty += 1
            continue
        boxes = matcher.scale(image)
        best_iou, best_level, is_covered = matcher.match(boxes)
        heights = boxes[:, 2] - boxes[:, 0]
        widths = boxes[:, 3] - boxes[:, 1]
        sides.append(np.sqrt(np.maximum(heights * widths, 0.0)))
        ious.append(best_iou)
        levels.append(best_level)
        covered.append(is_covered)
        classes.append(image.classes)
    cat = lambda parts, dtype: (
        np.concatenate(parts) if parts else np.zeros(0, dtype)
    )
    sides, ious = cat(sides, np.float32), cat(ious, np.float32)
    levels, covered = cat(levels, np.int32), cat(covered, bool)
    classes = cat(classes, np.int64)
    at_threshold = ious >= settings.match_threshold
    names = dict(class_names or {})
    class_counts = collections.Counter(int(c) for c in classes)
    result: dict[str, Any] = {
        "images": num_images,
        "boxes": len(sides),
        "empty_images": empty,
        "boxes_per_image": _round(len(sides) / num_images)
        if num_images
        else 0.0,
        "classes": {
            names.get(c, str(c)): n for c, n in sorted(class_counts.items())
        },
        "padded_size": list(matcher.padded_size),
        "match_threshold": settings.match_threshold,
        "coverage": _share(covered),
        "coverage_at_threshold": _share(at_threshold),
        "best_iou": _quantiles(ious),
        "per_level": {},
        "side_buckets": {},
    }
    for level, (low, high) in anchor_sides(settings).items():
        mask = levels == level
        result["per_level"][f"P{level}"] = {
            "boxes": int(mask.sum()),
            "anchor_sides": [_round(low), _round(high)],
            "box_side": _quantiles(sides[mask]),
            "coverage_at_threshold": _share(at_threshold[mask]),
        }
    edges = (0,) + SIDE_BUCKETS + (math.inf,)
    for low, high in itertools.pairwise(edges):
        mask = (sides >= low) & (sides < high)
        if mask.any():
            label = f"{low}-{high}" if math.isfinite(high) else f">={low}"
            result["side_buckets"][label] = {
                "boxes": int(mask.sum()),
                "coverage_at_threshold": _share(at_threshold[mask]),
            }
    result["warnings"] = warnings(result, settings, sides, at_threshold)
    return result


def warnings(
    result: Mapping[str, Any],
    settings: InputConfig,
    sides: np.ndarray,
    at_threshold: np.ndarray,
) -> list[str]:
    """What is wrong with the match of anchors and boxes, and the fix."""
    out = []
    if not result["boxes"]:
        return ["the split has no ground-truth box."]
    coverage = result["coverage"]
    if coverage is not None and coverage < COVERAGE_WARNING:
        out.append(
            f"only {coverage:.0%} of the boxes get a positive anchor (boxes "
            "whose best anchor is claimed by another box lose it); use "
            "more anchors per location (model.anchor.num_scales, "
            "model.anchor.aspect_ratios)."
        )
    share = result["coverage_at_threshold"]
    if share is not None and share < COVERAGE_WARNING:
        missed = sides[~at_threshold]
        smallest = settings.anchor_size * 2**settings.min_level
        small = float(np.mean(missed < smallest)) if len(missed) else 0.0
        advice = (
            f"{small:.0%} of them are smaller than the smallest anchor "
            f"({smallest:g} px = model.anchor.anchor_size "
            f"{settings.anchor_size:g} x stride {2**settings.min_level}): "
            "lower model.anchor.anchor_size, or a larger "
            "model.image_size"
            if small >= 0.5
            else "add scales or aspect ratios (model.anchor), or lower "
            "model.anchor.match_threshold"
        )
        out.append(
            f"only {share:.0%} of the boxes have an anchor with IoU >= "
            f"{settings.match_threshold:g}; the rest are learned through a "
            f"single forced low-IoU match. Of those, {advice}."
        )
    return out


def read_split(file_pattern: str) -> tuple[list[ImageBoxes], dict[int, str]]:
    """Ground truth of a TFRecord split in Model Garden's schema."""
    import tensorflow as tf

    from nasfpn_tf.data import pipeline

    images, names = [], {}
    records = pipeline.read_records(
        file_pattern, is_training=False, skip_errors=True
    )
    for serialized in records:
        example = tf.train.Example.FromString(serialized.numpy())
        features = example.features.feature
        height = features["image/height"].int64_list.value[0]
        width = features["image/width"].int64_list.value[0]
        ymin = np.array(features["image/object/bbox/ymin"].float_list.value)
        xmin = np.array(features["image/object/bbox/xmin"].float_list.value)
        ymax = np.array(features["image/object/bbox/ymax"].float_list.value)
        xmax = np.array(features["image/object/bbox/xmax"].float_list.value)
        labels = np.array(
            features["image/object/class/label"].int64_list.value, np.int64
        )
        texts = features["image/object/class/text"].bytes_list.value
        for label, text in zip(labels, texts):
            names.setdefault(int(label), text.decode("utf-8", "replace"))
        images.append(
            ImageBoxes(
                height=int(height),
                width=int(width),
                boxes=np.stack([ymin, xmin, ymax, xmax], axis=-1).reshape(
                    -1, 4
                ),
                classes=labels,
            )
        )
    return images, names


def format_report(result: Mapping[str, Any], title: str = "") -> str:
    """The statistics as a few aligned lines of text."""
    lines = [title] if title else []
    lines.append(
        f"images {result['images']} (empty {result['empty_images']}), "
        f"boxes {result['boxes']} ({result['boxes_per_image']} per image), "
        f"input {result['padded_size'][0]}x{result['padded_size'][1]} padded"
    )
    lines.append(
        "classes: "
        + ", ".join(f"{k} {v}" for k, v in result["classes"].items())
    )
    lines.append(
        f"anchor coverage: {_pct(result['coverage'])} of boxes get a positive "
        f"anchor; {_pct(result['coverage_at_threshold'])} have one with IoU "
        f">= {result['match_threshold']:g} (best IoU p10/p50/p90: "
        + "/".join(str(v) for v in result["best_iou"].values())
        + ")"
    )
    lines.append(
        f"{'level':<6}{'anchors px':>14}{'boxes':>8}{'side p10/p50/p90':>22}"
        f"{'IoU ok':>9}"
    )
    for level, row in result["per_level"].items():
        low, high = row["anchor_sides"]
        side = "/".join(str(v) for v in row["box_side"].values())
        lines.append(
            f"{level:<6}{f'{low:g}-{high:g}':>14}{row['boxes']:>8}"
            f"{side:>22}{_pct(row['coverage_at_threshold']):>9}"
        )
    lines.append(
        "box side px: "
        + ", ".join(
            f"{k}: {v['boxes']} ({_pct(v['coverage_at_threshold'])} IoU ok)"
            for k, v in result["side_buckets"].items()
        )
    )
    for warning in result["warnings"]:
        lines.append(f"WARNING: {warning}")
    return "\n".join(lines)


def _share(mask: np.ndarray) -> float | None:
    return _round(float(np.mean(mask))) if len(mask) else None


def _quantiles(values: np.ndarray) -> dict[str, float | None]:
    if not len(values):
        return {f"p{int(q * 100)}": None for q in IOU_QUANTILES}
    return {
        f"p{int(q * 100)}": _round(float(np.quantile(values, q)))
        for q in IOU_QUANTILES
    }


def _round(value: float) -> float:
    return round(float(value), 3)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def main(argv: Sequence[str] | None = None) -> int:
    # TensorFlow's C++ start-up lines say nothing a user can act on.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from nasfpn_tf import config as config_lib

    parser = argparse.ArgumentParser(
        prog="python -m nasfpn_tf.data.stats",
        description=(
            "Box sizes per pyramid level, class counts and anchor coverage "
            "of a split under a config (the generated set when the "
            "config's data paths are empty)."
        ),
    )
    parser.add_argument(
        "--config_file",
        action="append",
        default=[],
        help="YAML config (repeatable, later wins); default: built-ins.",
    )
    parser.add_argument(
        "--params_override",
        default="",
        help="Applied after the files, e.g. 'model.anchor.anchor_size=2'.",
    )
    parser.add_argument(
        "--split",
        choices=("train", "heldout", "val"),
        default="train",
    )
    parser.add_argument(
        "--json", action="store_true", help="Print JSON instead of a table."
    )
    args = parser.parse_args(argv)
    try:
        config = config_lib.load_config(args.config_file, args.params_override)
    except config_lib.ConfigError as error:
        print(f"Config error: {error}", file=sys.stderr)
        return 1
    from nasfpn_tf.data import inputs

    data = inputs.resolve_split(config, args.split)
    try:
        inputs.check_split(args.split, data)
    except config_lib.ConfigError as error:
        print(f"Error: {error}", file=sys.stderr)
        return 1
    images, names = read_split(data.file_pattern)
    from nasfpn_tf.data import pipeline

    settings = pipeline.InputConfig.from_experiment(config)
    result = compute(images, settings, names)
    result["split"] = args.split
    result["file_pattern"] = data.file_pattern
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(format_report(result, f"{args.split}: {data.file_pattern}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
