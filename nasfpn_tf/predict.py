"""Detections of a trained model on image files, written and drawn.

``--mode=predict`` runs a trained detector (the newest checkpoint of a
``model_dir``, an exported SavedModel, or a ``.tflite`` file of
``--format=tflite``) on image files, folders or globs
and writes, under ``output_dir``:

  predictions.json  COCO results format, one entry per detection at or
                    above ``score_threshold`` (boxes left without area by
                    clipping to the image are dropped): ``image_id`` (1-based, in
                    the sorted order of the files), ``file_name``,
                    ``category_id``, ``category_name``, ``bbox`` [x, y, w,
                    h] in pixels of the original image, ``score``;
  images/           a copy of each image with its boxes, class names and
                    scores drawn.

Both sources run the same computation: a checkpoint is wrapped in the
export's ``DetectionExportModule`` (the evaluation parser's resize and
padding, the detector, NMS) exactly as ``--mode=export`` saves it, so the
two give the same boxes; a ``.tflite`` file runs in the TFLite
interpreter with the preprocessing its ``.json`` describes
(``nasfpn_tf.tflite_detector.TFLiteDetector``), its boxes close to the
SavedModel's (float32) or within its quantization's error. Class names
come from ``data.class_names`` of the
run's config (the SavedModel carries it in ``assets.extra/config.yaml``);
without them a class is called ``class <id>``. An image that cannot be
decoded is skipped and counted.
"""

from __future__ import annotations

import colorsys
import dataclasses
import io
import json
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tensorflow as tf
from PIL import Image, ImageDraw, ImageFont, ImageOps

from nasfpn_tf import config as config_lib
from nasfpn_tf import files
from nasfpn_tf.data.sources import IMAGE_EXTENSIONS
from nasfpn_tf.errors import UserError
from nasfpn_tf.run_files import IMAGES_SUBDIR, PREDICTIONS_FILENAME

# Digits kept in predictions.json: sub-pixel boxes, 4-digit scores.
BOX_DECIMALS = 2
SCORE_DECIMALS = 4
# A --saved_model path ending so is a TFLite export.
TFLITE_SUFFIX = ".tflite"
# Hue step between class colours (golden ratio: neighbours stay distinct).
_HUE_STEP = 0.618033988749895

# image [H, W, 3] uint8 -> {"detection_boxes": [100, 4] normalised yxyx,
# "detection_scores": [100], "detection_classes": [100],
# "num_detections": []}, numpy.
DetectFn = Callable[[np.ndarray], dict[str, np.ndarray]]


class PredictError(UserError, ValueError):
    """No image to read, or no model to read them with."""


@dataclasses.dataclass(frozen=True)
class PredictResult:
    """What a prediction run wrote.

    Attributes:
      predictions: path of predictions.json.
      images_dir: folder of the drawn copies.
      num_images: images predicted.
      num_skipped: files that could not be decoded.
      num_detections: detections at or above the threshold.
      seconds: wall time of the run (model loading included).
    """

    predictions: str
    images_dir: str
    num_images: int
    num_skipped: int
    num_detections: int
    seconds: float

    def summary(self) -> str:
        skipped = (
            f", {self.num_skipped} skipped (not decodable)"
            if self.num_skipped
            else ""
        )
        return (
            f"predict: {self.num_images} images{skipped}, "
            f"{self.num_detections} detections in {self.seconds:.1f} s\n"
            f"  -> {self.predictions}\n  -> {self.images_dir}"
        )


def list_images(sources: Sequence[str]) -> list[str]:
    """Image files named by paths, folders (their images, not recursive)
    or globs; sorted, without repeats.

    Raises:
      PredictError: nothing given, or a source that matches no image.
    """
    if not sources:
        raise PredictError("--images: no image file, folder or glob given")
    found = []
    for source in sources:
        if tf.io.gfile.isdir(source):
            matches = [
                os.path.join(source, name)
                for name in tf.io.gfile.listdir(source)
                if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS
            ]
        elif tf.io.gfile.exists(source):
            matches = [source]
        else:
            matches = [
                path
                for path in tf.io.gfile.glob(source)
                if not tf.io.gfile.isdir(path)
            ]
        if not matches:
            raise PredictError(f"--images={source}: no image there")
        found.extend(matches)
    return sorted(set(found))


def from_checkpoint(model_dir: str) -> tuple[DetectFn, tuple[str, ...]]:
    """The newest checkpoint of a run, and its class names.

    Raises:
      PredictError: no config.yaml or no checkpoint in ``model_dir``.
    """
    from nasfpn_tf import export
    from nasfpn_tf.modeling import detector
    from nasfpn_tf.train import trainer

    config = config_lib.load_saved(model_dir)
    if config is None:
        raise PredictError(
            f"--model_dir={model_dir}: no {config_lib.CONFIG_FILENAME}; "
            "train there first or pass --saved_model"
        )
    try:
        checkpoint = export.latest_checkpoint(model_dir)
    except FileNotFoundError:
        raise PredictError(
            f"--model_dir={model_dir}: no checkpoint; train there first or "
            "pass --saved_model"
        ) from None
    spec = export.resolve_spec(config, model_dir)
    with trainer.precision_policy(export.SERVING_POLICY):
        model = detector.build_detector(config.model, spec=spec)
        export.restore(model, checkpoint)
        module = export.DetectionExportModule(config, model)
        serve = tf.function(
            module.serve,
            input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8)],
        )
    return _numpy_fn(serve), config.data.class_names


def from_saved_model(path: str) -> tuple[DetectFn, tuple[str, ...]]:
    """An exported model (its newest version when ``path`` is the export
    folder), and the class names its config carries.

    Raises:
      PredictError: no SavedModel there.
    """
    from nasfpn_tf import export

    version_dir = _version_dir(path)
    loaded = tf.saved_model.load(version_dir)
    serve = loaded.signatures[tf.saved_model.DEFAULT_SERVING_SIGNATURE_DEF_KEY]
    config_path = os.path.join(
        version_dir, export.EXTRA_ASSETS_DIR, config_lib.CONFIG_FILENAME
    )
    class_names: tuple[str, ...] = ()
    if tf.io.gfile.exists(config_path):
        with tf.io.gfile.GFile(config_path) as f:
            class_names = config_lib.from_yaml(f.read()).data.class_names

    def detect(images: tf.Tensor) -> dict[str, tf.Tensor]:
        return serve(**{export.INPUT_KEY: images})

    return _numpy_fn(detect, keep=loaded), class_names


def from_tflite(path: str) -> tuple[DetectFn, tuple[str, ...]]:
    """A ``.tflite`` export, and the class names of its ``.json``.

    Raises:
      PredictError: no such file, or not one ``--format=tflite`` wrote.
    """
    from nasfpn_tf import tflite_detector

    try:
        detect = tflite_detector.TFLiteDetector(path)
    except tflite_detector.TFLiteExportError as error:
        raise PredictError(f"--saved_model={error}") from None
    return detect, detect.class_names


def predict(
    sources: Sequence[str],
    output_dir: str,
    *,
    model_dir: str = "",
    saved_model: str = "",
    score_threshold: float = 0.3,
    progress: bool = True,
) -> PredictResult:
    """Runs a trained model on images; writes predictions.json and drawn
    copies under ``output_dir``.

    Args:
      sources: image files, folders or globs (see ``list_images``).
      output_dir: destination folder.
      model_dir: a run whose newest checkpoint is used.
      saved_model: an export folder, a SavedModel version or a
        ``.tflite`` file; wins over ``model_dir``.
      score_threshold: detections below it are dropped.
      progress: show a progress bar.

    Raises:
      PredictError: no image, or no model, to read.
    """
    start = time.monotonic()
    if not 0.0 <= score_threshold <= 1.0:
        raise PredictError(
            f"--score_threshold: expected [0, 1], got {score_threshold}"
        )
    paths = list_images(sources)
    if saved_model.endswith(TFLITE_SUFFIX):
        detect, class_names = from_tflite(saved_model)
    elif saved_model:
        detect, class_names = from_saved_model(saved_model)
    elif model_dir:
        detect, class_names = from_checkpoint(model_dir)
    else:
        raise PredictError("needs a model_dir or a saved_model")
    images_dir = os.path.join(output_dir, IMAGES_SUBDIR)
    tf.io.gfile.makedirs(images_dir)
    results, skipped, names_used = [], 0, set()
    for image_id, path in enumerate(_progress(paths, progress), start=1):
        image = _decode(path)
        if image is None:
            skipped += 1
            continue
        outputs = detect(np.asarray(image))
        detections = _detections(
            outputs, image.size, score_threshold, class_names
        )
        for detection in detections:
            results.append(
                {"image_id": image_id, "file_name": path, **detection}
            )
        name = _unique_name(os.path.basename(path), names_used)
        _save(draw(image, detections), os.path.join(images_dir, name))
    predictions = os.path.join(output_dir, PREDICTIONS_FILENAME)
    files.write_atomic(predictions, json.dumps(results, indent=1) + "\n")
    return PredictResult(
        predictions=predictions,
        images_dir=images_dir,
        num_images=len(paths) - skipped,
        num_skipped=skipped,
        num_detections=len(results),
        seconds=time.monotonic() - start,
    )


def class_name(class_id: int, class_names: Sequence[str]) -> str:
    """The name of a 1-based class id; ``class <id>`` when it has none."""
    if 0 < class_id <= len(class_names) and class_names[class_id - 1]:
        return class_names[class_id - 1]
    return f"class {class_id}"


def draw(
    image: Image.Image, detections: Sequence[dict[str, Any]]
) -> Image.Image:
    """A copy of ``image`` with each detection's box and "name score".

    Args:
      image: an RGB image.
      detections: dicts with ``bbox`` [x, y, w, h] pixels,
        ``category_id``, ``category_name`` and ``score``.
    """
    image = image.copy()
    canvas = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    width = max(1, round(min(image.size) / 200))
    for detection in detections:
        x, y, w, h = detection["bbox"]
        color = class_color(detection["category_id"])
        canvas.rectangle((x, y, x + w, y + h), outline=color, width=width)
        text = f"{detection['category_name']} {detection['score']:.2f}"
        left, top, right, bottom = canvas.textbbox((0, 0), text, font=font)
        text_w, text_h = right - left, bottom - top + 2
        # Above the box, or inside its top when the box touches the edge.
        text_y = y - text_h if y >= text_h else y
        canvas.rectangle(
            (x, text_y, x + text_w + 2, text_y + text_h), fill=color
        )
        canvas.text((x + 1, text_y), text, fill=(0, 0, 0), font=font)
    return image


def class_color(class_id: int) -> tuple[int, int, int]:
    """A bright colour of its own for each class id."""
    hue = (class_id * _HUE_STEP) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 1.0)
    return round(r * 255), round(g * 255), round(b * 255)


def _detections(
    outputs: dict[str, np.ndarray],
    size: tuple[int, int],
    score_threshold: float,
    class_names: Sequence[str],
) -> list[dict[str, Any]]:
    width, height = size
    count = int(outputs["num_detections"])
    detections = []
    for box, score, class_id in zip(
        outputs["detection_boxes"][:count],
        outputs["detection_scores"][:count],
        outputs["detection_classes"][:count],
    ):
        if score < score_threshold:
            continue
        ymin, xmin, ymax, xmax = (float(v) for v in box)
        x, y = xmin * width, ymin * height
        w, h = (xmax - xmin) * width, (ymax - ymin) * height
        if w <= 0 or h <= 0:  # wholly outside the image, clipped flat
            continue
        detections.append(
            {
                "category_id": int(class_id),
                "category_name": class_name(int(class_id), class_names),
                "bbox": [round(v, BOX_DECIMALS) for v in (x, y, w, h)],
                "score": round(float(score), SCORE_DECIMALS),
            }
        )
    return detections


def _numpy_fn(fn: Callable, keep: Any = None) -> DetectFn:
    """One uint8 image in, numpy outputs of its single row out."""

    def detect(image: np.ndarray) -> dict[str, np.ndarray]:
        outputs = fn(tf.constant(image[None], tf.uint8))
        return {k: np.asarray(v)[0] for k, v in outputs.items()}

    detect.keep = keep  # the loaded SavedModel must outlive its functions
    return detect


def _version_dir(path: str) -> str:
    if tf.io.gfile.exists(os.path.join(path, "saved_model.pb")):
        return path
    versions = (
        sorted(
            (int(name.rstrip("/")), name.rstrip("/"))
            for name in tf.io.gfile.listdir(path)
            if name.rstrip("/").isdigit()
        )
        if tf.io.gfile.isdir(path)
        else []
    )
    for _, name in reversed(versions):
        candidate = os.path.join(path, name)
        if tf.io.gfile.exists(os.path.join(candidate, "saved_model.pb")):
            return candidate
    raise PredictError(
        f"--saved_model={path}: no saved_model.pb there nor in a version "
        "folder (python -m nasfpn_tf.main --mode=export writes one)"
    )


def _decode(path: str) -> Image.Image | None:
    """The image as RGB, EXIF rotation applied; None if not decodable."""
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            data = f.read()
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return ImageOps.exif_transpose(image).convert("RGB")
    except Exception:  # noqa: BLE001 (PIL raises many types on bad bytes)
        return None


def _unique_name(name: str, used: set[str]) -> str:
    stem, ext = os.path.splitext(name)
    candidate, n = name, 1
    while candidate in used:
        candidate, n = f"{stem}_{n}{ext}", n + 1
    used.add(candidate)
    return candidate


def _save(image: Image.Image, path: str) -> None:
    ext = os.path.splitext(path)[1].lower()
    fmt = Image.registered_extensions().get(ext, "PNG")
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    with tf.io.gfile.GFile(path, "wb") as f:
        f.write(buffer.getvalue())


def _progress(paths: Sequence[str], enabled: bool):
    if not enabled:
        return paths
    from tqdm import tqdm

    return tqdm(paths, desc="predict", unit="img")
