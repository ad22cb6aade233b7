"""TFLite export of a trained detector: float32, float16 or int8.

NAS-FPNLite (Ghiasi et al., CVPR 2019, arXiv:1904.07392, Sec. 4) is
meant for phones and edge boards, where models run in TFLite (LiteRT).
``--mode=export --format=tflite`` turns the newest checkpoint of a run
into one ``.tflite`` file per quantization, each able to turn an image
into boxes, classes and scores on its own:

  input   ``images`` uint8 [1, P, P, 3] RGB: the image resized keeping its
          aspect ratio so that it fits ``model.image_size`` (bilinear),
          in the top-left corner of a P x P canvas (P: the padded size the
          model was evaluated at, 320 -> 384 at ``max_level`` 7) filled
          with PAD_VALUE. That colour is the ImageNet mean, which the
          normalisation inside the model maps to ~0, as the SavedModel's
          zero padding after normalising.
  inside  (pixel / 255 - mean) / std, the network, then Model Garden's
          TFLite detection post-process (TFLite's custom op
          ``TFLite_Detection_PostProcess``: box decoding and per-class
          NMS, as the SavedModel's "batched" NMS).
  outputs ``detection_boxes`` [1, N, 4] float32, ymin, xmin, ymax, xmax
          normalised to the P x P input; ``detection_classes`` [1, N]
          float32, 0-based over the classes without background (add 1
          for the config's class ids); ``detection_scores`` [1, N];
          ``num_detections`` [1]. N is ``model.nms.max_detections``.

This is TFLite's object-detection convention (the outputs of the custom
op, unchanged), so TFLite's detection tooling reads the file as it reads
an SSD. ``nasfpn_tf.tflite_detector.TFLiteDetector`` does the preprocessing and maps boxes back to
the original image and classes to 1-based ids, giving the SavedModel's
outputs. Beside each model, ``<name>.json`` records the input, the
preprocessing, the outputs, the post-processing and the class names, and
``<name>.txt`` a short signature and op summary
(``nasfpn_tf.tflite_summary``).

Quantization: ``float32``; ``float16`` (weights stored in float16,
computed in float32 on CPUs); ``int8``: full-integer post-training
quantization, every op of the network int8 (TFLITE_BUILTINS_INT8 only, so
a conversion fails rather than fall back to float), calibrated on
``representative_images`` images of the run's own training split; uint8
in, float32 out; the post-process op runs in float32 after two
DEQUANTIZE ops.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras
from absl import logging
from official.vision.modeling.layers import detection_generator
from official.vision.ops import anchor, preprocess_ops

from nasfpn_tf import compat, files
from nasfpn_tf import config as config_lib
from nasfpn_tf.config.search import TFLITE_QUANTIZATIONS
from nasfpn_tf.data import pipeline
from nasfpn_tf.modeling import detector, flops
from nasfpn_tf.tflite_detector import (
    INPUT_NAME,
    MODEL_SUFFIX,
    SIGNATURE_KEY,
    TFLiteExportError,
    info_path,
    interpreter_class,
    prepare_image,
)
from nasfpn_tf.tflite_summary import (  # noqa: F401 (re-exported)
    describe,
    float_ops,
    op_counts,
    summary_text,
)

QUANTIZATIONS = TFLITE_QUANTIZATIONS
DEFAULT_REPRESENTATIVE_IMAGES = 100
MODEL_NAME = "model_{}"
SUMMARY_SUFFIX = ".txt"
INFO_VERSION = 1
OUTPUT_KEYS = detector.DETECTION_KEYS
IMAGE_CHANNELS = 3
BATCH = 1
# uint8 canvas colour: the ImageNet mean, which normalises to ~0.
PAD_VALUE = tuple(round(v) for v in preprocess_ops.MEAN_RGB)
# Background is column 0 of the head's class logits (Model Garden's
# RetinaNet); the SavedModel's NMS drops it, so the TFLite model does too.
BACKGROUND_COLUMNS = 1
OUTPUT_MEANINGS = {
    "detection_boxes": "ymin, xmin, ymax, xmax in [0, 1] of the P x P "
    "input; / scale maps them to the original image",
    "detection_classes": "0-based over the classes without background: "
    "class id = value + 1 (class_names[value])",
    "detection_scores": "sigmoid scores, sorted, highest first",
    "num_detections": "valid slots",
}


def check_quantizations(quantizations: Sequence[str]) -> tuple[str, ...]:
    """The quantizations asked for, without repeats, in order.

    Raises:
        TFLiteExportError: none, or one not in QUANTIZATIONS.
    """
    chosen = tuple(dict.fromkeys(q.strip() for q in quantizations if q))
    bad = [q for q in chosen if q not in QUANTIZATIONS]
    if bad or not chosen:
        raise TFLiteExportError(
            f"--tflite_quantization: expected one or more of "
            f"{', '.join(QUANTIZATIONS)} (comma-separated); got "
            f"{','.join(quantizations) or 'nothing'}"
        )
    return chosen


def input_size(config: config_lib.ExperimentConfig) -> tuple[int, int]:
    """(height, width) of the model input: the evaluation's padded size."""
    return tuple(
        pipeline.padded_image_size(
            config.model.image_size, config.model.max_level
        )
    )


def postprocess_config(config: config_lib.ExperimentConfig) -> dict:
    """Model Garden's ``tflite_post_processing_config`` for ``model.nms``:
    per-class ("regular") NMS with the SavedModel's thresholds, anchors
    normalised to the input, so boxes come out in [0, 1]."""
    nms = config.model.nms
    return {
        "max_detections": nms.max_detections,
        "max_classes_per_detection": 1,
        "detections_per_class": nms.max_detections,
        "use_regular_nms": True,
        "nms_score_threshold": nms.score_threshold,
        "nms_iou_threshold": nms.iou_threshold,
        "normalize_anchor_coordinates": True,
        "input_image_size": list(input_size(config)),
    }


class TFLiteDetectionModule(tf.Module):
    """The detector as TFLite runs it: uint8 in, the custom NMS op out.

    Model Garden's detection generator with ``nms_version="tflite"``
    traces a stand-in function that the converter replaces with TFLite's
    ``TFLite_Detection_PostProcess`` op, so the traced graph is only good
    for conversion: it returns zeros in TensorFlow.

    Args:
        config: the run's config.
        model: a built ``DetectorModel`` holding the trained weights.
    """

    def __init__(
        self, config: config_lib.ExperimentConfig, model: tf_keras.Model
    ):
        super().__init__()
        self.model = model
        self._size = input_size(config)
        self._anchors_per_location = detector.anchors_per_location(config.model)
        self._num_classes = config.model.num_classes
        cfg = config.model.anchor
        self._anchor_boxes = anchor.Anchor(
            min_level=config.model.min_level,
            max_level=config.model.max_level,
            num_scales=cfg.num_scales,
            aspect_ratios=list(cfg.aspect_ratios),
            anchor_size=cfg.anchor_size,
            image_size=self._size,
        ).multilevel_boxes
        self._generator = detection_generator.MultilevelDetectionGenerator(
            apply_nms=True,
            nms_version="tflite",
            tflite_post_processing_config=postprocess_config(config),
        )
        self._forward = flops.forward_function(model)

    def _drop_background(self, scores: tf.Tensor) -> tf.Tensor:
        """[1, H, W, A * C] -> [1, H, W, A * (C - 1)], anchor-major."""
        _, height, width, _ = scores.shape
        per_anchor = tf.reshape(
            scores,
            [BATCH, height, width, self._anchors_per_location, -1],
        )[..., BACKGROUND_COLUMNS:]
        return tf.reshape(per_anchor, [BATCH, height, width, -1])

    def serve(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        """uint8 [1, P, P, 3] -> the four outputs (module docstring)."""
        normalized = preprocess_ops.normalize_image(images[0])[None]
        scores, boxes = self._forward(normalized)
        scores = {k: self._drop_background(v) for k, v in scores.items()}
        outputs = self._generator(boxes, scores, self._anchor_boxes, None)
        return {key: outputs[key] for key in OUTPUT_KEYS}

    def signature(self) -> Any:
        """The concrete function of ``serve`` at its one input shape."""
        spec = tf.TensorSpec(
            [BATCH, *self._size, IMAGE_CHANNELS], tf.uint8, name=INPUT_NAME
        )
        return tf.function(self.serve).get_concrete_function(spec)


def calibration_images(
    config: config_lib.ExperimentConfig, count: int
) -> list[np.ndarray]:
    """The first ``count`` images of the run's training split, prepared
    as the TFLite model takes them (uint8 [1, P, P, 3] each).

    Raises:
        TFLiteExportError: ``count`` < 1, or the split has no decodable
            image.
    """
    from nasfpn_tf.data import inputs

    if count < 1:
        raise TFLiteExportError(
            f"--representative_images: expected >= 1, got {count}"
        )
    data = inputs.resolve_split(config, "train")
    inputs.check_split("train", data)
    features = {"image/encoded": tf.io.FixedLenFeature([], tf.string)}
    size, padded = config.model.image_size, input_size(config)
    images = []
    for record in pipeline.read_records(data.file_pattern).take(count):
        encoded = tf.io.parse_single_example(record, features)
        try:
            image = tf.io.decode_image(
                encoded["image/encoded"],
                channels=IMAGE_CHANNELS,
                expand_animations=False,
            )
        except tf.errors.InvalidArgumentError:
            continue
        images.append(prepare_image(image, size, padded)[0])
    if not images:
        raise TFLiteExportError(
            f"data.train_path {data.file_pattern!r}: no decodable image to "
            "calibrate the int8 model with"
        )
    if len(images) < count:
        logging.warning(
            "int8 calibration: %d images (the training split has no more)",
            len(images),
        )
    return images


def convert(
    saved_model_dir: str,
    quantization: str,
    representative: Sequence[np.ndarray] = (),
) -> bytes:
    """A TFLite flatbuffer of the SavedModel's serving signature.

    Args:
        saved_model_dir: written from a ``TFLiteDetectionModule``.
        quantization: one of QUANTIZATIONS.
        representative: calibration inputs (int8).

    Raises:
        TFLiteExportError: an unknown quantization, or int8 without
            calibration images.
    """
    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir)
    return _quantized(converter, quantization, representative).convert()


def convert_network(
    model: tf_keras.Model,
    image_size: int,
    quantization: str,
    representative: Sequence[np.ndarray] = (),
) -> bytes:
    """The detector's network alone in TFLite: ``flops.forward_function``
    (backbone, neck and head, no box decoding or NMS) at batch 1,
    normalised float32 [1, S, S, 3] in, the heads' outputs out (float32
    also for int8: QUANTIZE and DEQUANTIZE at the edges). Any
    ``image_size`` converts, also one that 2**max_level does not divide.

    Raises:
        TFLiteExportError: an unknown quantization, or int8 without
            calibration inputs.
    """
    converter = network_converter(model, image_size)
    return _quantized(converter, quantization, representative).convert()


def network_converter(model: tf_keras.Model, image_size: int) -> Any:
    """A ``TFLiteConverter`` of the network alone (``convert_network``),
    not yet set up for a quantization."""
    concrete = flops.forward_graph(model, image_size)
    return tf.lite.TFLiteConverter.from_concrete_functions([concrete], model)


def network_inputs(images: Sequence[np.ndarray]) -> list[np.ndarray]:
    """uint8 [1, P, P, 3] images (``calibration_images``) -> the network's
    normalised float32 inputs, as the exported file normalises them."""
    return [
        preprocess_ops.normalize_image(tf.constant(x[0]))[None].numpy()
        for x in images
    ]


def _quantized(
    converter: Any, quantization: str, representative: Sequence[np.ndarray]
) -> Any:
    """`converter` set up for `quantization` (module docstring)."""
    check_quantizations([quantization])
    if quantization == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantization == "int8":
        if not representative:
            raise TFLiteExportError("int8 needs representative images")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([x] for x in representative)
        # Integer kernels only: an op without one fails the conversion
        # instead of silently running in float.
        converter.target_spec.supported_ops = [
            tf.lite.OpsSet.TFLITE_BUILTINS_INT8
        ]
    return converter


def model_info(
    config: config_lib.ExperimentConfig,
    quantization: str,
    description: dict,
    calibrated: int,
    source: str,
) -> dict:
    """The JSON written beside a model: what a client needs to run it."""
    padded = input_size(config)
    return {
        "version": INFO_VERSION,
        "quantization": quantization,
        "representative_images": calibrated if quantization == "int8" else 0,
        "source_checkpoint": source,
        "input": {"name": INPUT_NAME, **description["inputs"][INPUT_NAME]},
        "preprocessing": {
            "color": "RGB",
            "image_size": config.model.image_size,
            "resize": "bilinear, keeping the aspect ratio: scale = "
            "image_size / max(height, width)",
            "padded_size": list(padded),
            "placement": "top-left; the rest of the P x P canvas is pad_value",
            "pad_value": list(PAD_VALUE),
            "in_model": "(pixel / 255 - mean) / std",
            "mean": list(preprocess_ops.MEAN_NORM),
            "std": list(preprocess_ops.STDDEV_NORM),
        },
        "outputs": {
            key: {**entry, "meaning": OUTPUT_MEANINGS.get(key, "")}
            for key, entry in description["outputs"].items()
        },
        "postprocessing": {
            "op": "TFLite_Detection_PostProcess",
            **postprocess_config(config),
        },
        "class_names": list(config.data.class_names),
        "ops": description["ops"],
        "bytes": description["bytes"],
    }


@dataclasses.dataclass(frozen=True)
class ExportedModel:
    """One written model: its ``.tflite``, ``.json`` and ``.txt``."""

    quantization: str
    path: str
    info: str
    summary: str
    seconds: float

    def __str__(self) -> str:
        with tf.io.gfile.GFile(self.summary) as f:
            return f"{self.path} ({self.seconds:.0f} s)\n{f.read()}"


@dataclasses.dataclass(frozen=True)
class TFLiteExport:
    """The models one export wrote, in the order asked."""

    models: tuple[ExportedModel, ...]

    def __str__(self) -> str:
        return "\n" + "".join(str(model) for model in self.models)

    def path(self, quantization: str) -> str:
        """The ``.tflite`` file of ``quantization``."""
        return next(
            m.path for m in self.models if m.quantization == quantization
        )


def export(
    config: config_lib.ExperimentConfig,
    model_dir: str,
    export_dir: str,
    quantizations: Sequence[str] = ("float32",),
    representative_images: int = DEFAULT_REPRESENTATIVE_IMAGES,
) -> TFLiteExport:
    """Exports the newest checkpoint of a run as TFLite models.

    Args:
        config: the run's resolved config.
        model_dir: the run's directory (``checkpoints/``, ``spec.json``).
        export_dir: where ``model_<quantization>.tflite`` and its
            ``.json`` and ``.txt`` go.
        quantizations: some of QUANTIZATIONS.
        representative_images: int8 calibration images, the first of the
            training split.

    Returns:
        One ``ExportedModel`` per quantization, in order.

    Raises:
        TFLiteExportError: a bad quantization or calibration count, or
            ``model_dir`` holds no checkpoint.
        ValueError: the checkpoint does not fit the config's model.
    """
    from nasfpn_tf import export as export_lib
    from nasfpn_tf.train import trainer

    quantizations = check_quantizations(quantizations)
    calibration: list[np.ndarray] = []
    if "int8" in quantizations:
        calibration = calibration_images(config, representative_images)
    try:
        checkpoint = export_lib.latest_checkpoint(model_dir)
    except FileNotFoundError as error:
        raise TFLiteExportError(str(error)) from None
    spec = export_lib.resolve_spec(config, model_dir)
    temp_dir = tempfile.mkdtemp(prefix="nasfpn_tflite_")
    try:
        with trainer.precision_policy(export_lib.SERVING_POLICY):
            model = detector.build_detector(config.model, spec=spec)
            export_lib.restore(model, checkpoint)
            module = TFLiteDetectionModule(config, model)
            with compat.keras_option_scope(save_traces=False):
                tf.saved_model.save(
                    module,
                    temp_dir,
                    signatures={SIGNATURE_KEY: module.signature()},
                )
        return TFLiteExport(
            tuple(
                _convert_and_write(
                    config, temp_dir, export_dir, q, calibration, checkpoint
                )
                for q in quantizations
            )
        )
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)


def _convert_and_write(
    config: config_lib.ExperimentConfig,
    saved_model_dir: str,
    export_dir: str,
    quantization: str,
    calibration: Sequence[np.ndarray],
    checkpoint: str,
) -> ExportedModel:
    start = time.monotonic()
    content = convert(saved_model_dir, quantization, calibration)
    name = MODEL_NAME.format(quantization)
    path = os.path.join(export_dir, name + MODEL_SUFFIX)
    files.write_atomic(path, content)
    interpreter = interpreter_class()(model_content=content)
    description = describe(path, interpreter)
    info = model_info(
        config, quantization, description, len(calibration), checkpoint
    )
    files.write_atomic(info_path(path), json.dumps(info, indent=1) + "\n")
    summary = os.path.splitext(path)[0] + SUMMARY_SUFFIX
    files.write_atomic(summary, summary_text(name, description))
    seconds = time.monotonic() - start
    logging.info("Wrote %s in %.1f s", path, seconds)
    return ExportedModel(quantization, path, info_path(path), summary, seconds)
