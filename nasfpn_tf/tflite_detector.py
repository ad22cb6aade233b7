"""A TFLite export run on images as the SavedModel runs them.

``nasfpn_tf.export_tflite`` writes ``model_<quantization>.tflite`` and a
``.json`` beside it. ``TFLiteDetector`` reads both, prepares an image as
the JSON describes (the SavedModel's own resize and padding, rounded to
uint8), runs the file in the LiteRT interpreter and maps its outputs back
to the SavedModel's: boxes normalised to the original image, 1-based
class ids. ``--mode=predict`` uses it for ``.tflite`` paths.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf
from official.vision.ops import preprocess_ops

from nasfpn_tf.errors import UserError

MODEL_SUFFIX = ".tflite"
INFO_SUFFIX = ".json"
SIGNATURE_KEY = "serving_default"
INPUT_NAME = "images"
# detection_classes of the slots past num_detections (as the SavedModel).
PADDING_CLASS = 0
# The op's class 0 is the first class after background (config id 1).
CLASS_OFFSET = 1


class TFLiteExportError(UserError, ValueError):
    """A quantization, path or model that the TFLite export cannot take."""


def prepare_image(
    image: np.ndarray | tf.Tensor, image_size: int, padded: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """An image as the TFLite model takes it, by the SavedModel's own ops.

    The SavedModel's preprocessing (normalise, resize keeping the aspect
    ratio, pad with zeros) is run and undone back to uint8, so the only
    difference to it is the rounding to uint8 (and PAD_VALUE's).

    Args:
        image: [H, W, 3] uint8.
        image_size: ``model.image_size``.
        padded: (P, P) model input size.

    Returns:
        input: [1, P, P, 3] uint8.
        scale: [2] float32 (y, x): resized size / original size.
    """
    normalized, info = preprocess_ops.resize_and_crop_image(
        preprocess_ops.normalize_image(tf.convert_to_tensor(image)),
        [image_size, image_size],
        padded_size=list(padded),
        aug_scale_min=1.0,
        aug_scale_max=1.0,
        keep_aspect_ratio=True,
    )
    mean = np.asarray(preprocess_ops.MEAN_NORM, np.float32)
    std = np.asarray(preprocess_ops.STDDEV_NORM, np.float32)
    pixels = (normalized.numpy() * std + mean) * 255.0
    pixels = np.clip(np.round(pixels), 0, 255).astype(np.uint8)
    return pixels[None], info.numpy()[2]


def interpreter_class() -> Any:
    """LiteRT's ``Interpreter`` (``ai_edge_litert``, which tf-models-official
    installs), else TensorFlow's deprecated ``tf.lite.Interpreter``."""
    try:  # LiteRT, the interpreter TFLite moved to
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # pragma: no cover (tf.lite's, deprecated)
        Interpreter = tf.lite.Interpreter
    return Interpreter


def info_path(model_path: str) -> str:
    """The JSON written beside a ``.tflite`` file."""
    return os.path.splitext(model_path)[0] + INFO_SUFFIX


class TFLiteDetector:
    """A ``.tflite`` export run on images as the SavedModel runs them.

    Args:
        path: the ``.tflite`` file; its ``.json`` beside it gives the
            image size and class names.
        num_threads: interpreter threads (None: the interpreter's).

    Raises:
        TFLiteExportError: no such file, not a model this export wrote,
            or no JSON beside it.
    """

    def __init__(self, path: str, num_threads: int | None = None):
        if not path.endswith(MODEL_SUFFIX) or not tf.io.gfile.exists(path):
            raise TFLiteExportError(
                f"{path}: no {MODEL_SUFFIX} file there (python -m "
                "nasfpn_tf.main --mode=export --format=tflite writes one)"
            )
        meta = info_path(path)
        if not tf.io.gfile.exists(meta):
            raise TFLiteExportError(
                f"{path}: no {os.path.basename(meta)} beside it (the export "
                "writes the input size and classes there)"
            )
        with tf.io.gfile.GFile(meta) as f:
            self.info = json.load(f)
        with tf.io.gfile.GFile(path, "rb") as f:
            content = f.read()
        try:
            self.interpreter = interpreter_class()(
                model_content=content, num_threads=num_threads
            )
            self._runner = self.interpreter.get_signature_runner(SIGNATURE_KEY)
        except (ValueError, RuntimeError) as error:
            raise TFLiteExportError(
                f"{path}: not a TFLite detector of this export ({error})"
            ) from None
        self.path = path
        self.image_size = int(self.info["preprocessing"]["image_size"])
        self.padded_size = tuple(self.info["input"]["shape"][1:3])
        self.class_names = tuple(self.info.get("class_names", ()))

    def raw(self, inputs: np.ndarray) -> dict[str, np.ndarray]:
        """The model's own outputs for one prepared uint8 [1, P, P, 3]."""
        return self._runner(**{INPUT_NAME: inputs})

    def __call__(self, image: np.ndarray) -> dict[str, np.ndarray]:
        """One [H, W, 3] uint8 image -> the SavedModel's outputs, one row:
        ``detection_boxes`` [N, 4] normalised to the original image,
        ``detection_scores`` [N], ``detection_classes`` [N] int32
        (1-based, PADDING_CLASS past ``num_detections``),
        ``num_detections`` int32 scalar."""
        inputs, scale = prepare_image(image, self.image_size, self.padded_size)
        return to_original(
            self.raw(inputs), self.padded_size, scale, image.shape[:2]
        )


def to_original(
    outputs: dict[str, np.ndarray],
    padded_size: Sequence[int],
    scale: np.ndarray,
    original_size: Sequence[int],
) -> dict[str, np.ndarray]:
    """The raw outputs of a batch of one in the SavedModel's terms (see
    ``TFLiteDetector.__call__``).

    Args:
        outputs: the model's outputs.
        padded_size: (P, P), the input size.
        scale: (y, x) resized / original size (``prepare_image``).
        original_size: (height, width) of the original image.
    """
    count = int(np.asarray(outputs["num_detections"]).reshape(-1)[0])
    # [0, 1] of the input -> pixels of the input (the resized image in its
    # top-left corner) -> pixels of the original -> [0, 1] of the original.
    factor = np.asarray(padded_size, np.float32) / (
        np.asarray(scale, np.float32) * np.asarray(original_size, np.float32)
    )
    boxes = outputs["detection_boxes"][0].astype(np.float32) * np.tile(
        factor, 2
    )
    slots = np.arange(boxes.shape[0])
    valid = slots < count
    classes = outputs["detection_classes"][0].astype(np.int32) + CLASS_OFFSET
    return {
        "detection_boxes": np.where(
            valid[:, None], np.clip(boxes, 0.0, 1.0), 0.0
        ),
        "detection_scores": np.where(
            valid, outputs["detection_scores"][0], 0.0
        ).astype(np.float32),
        "detection_classes": np.where(valid, classes, PADDING_CLASS).astype(
            np.int32
        ),
        "num_detections": np.int32(count),
    }
