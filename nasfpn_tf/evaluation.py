"""COCO box AP of a detector, through Model Garden's COCO evaluator.

Model Garden's ``COCOEvaluator`` (pycocotools underneath) does the work, fed
as its RetinaNet task feeds it: detections in the coordinates of the
resized input are divided by the parser's ``image_info`` scale back to the
original image, and the ground truth is either the split's COCO JSON or,
without one, the ``groundtruths`` the parser emits with each eval batch.
pycocotools prints its progress and summary table; that goes nowhere here.

Example:
    metrics = evaluate(model, val_dataset, "data/val.json")
    metrics["AP"]  # COCO AP@[.50:.95], in [0, 1]
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras
from official.vision.evaluation import coco_evaluator

METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")
# COCO's standard cap of detections per image for AP.
COCO_MAX_DETECTIONS = 100
# Class id of padded detection slots; no COCO category uses it, so
# pycocotools skips them.
BACKGROUND_CLASS = 0
PREDICTION_KEYS = (
    "detection_boxes",
    "detection_scores",
    "detection_classes",
    "num_detections",
)


class CocoEvaluator:
    """Accumulates detections of eval batches, then computes COCO AP.

    Args:
        annotation_file: COCO JSON of the split (local or gs://); None or
            "" builds the ground truth from ``labels["groundtruths"]``.
        max_detections: detections per image that count (COCO: 100).
    """

    def __init__(
        self,
        annotation_file: str | None = None,
        max_detections: int = COCO_MAX_DETECTIONS,
    ):
        if annotation_file and not tf.io.gfile.exists(annotation_file):
            raise FileNotFoundError(
                f"annotation_file: no such COCO JSON: {annotation_file}"
            )
        self.annotation_file = annotation_file or None
        self.max_detections = max_detections
        with _quiet():
            self._evaluator = coco_evaluator.COCOEvaluator(
                annotation_file=self.annotation_file,
                include_mask=False,
                need_rescale_bboxes=True,
                per_category_metrics=False,
                max_num_eval_detections=max_detections,
            )
        self.num_images = 0

    def reset(self) -> None:
        """Forgets every batch seen so far."""
        self._evaluator.reset_states()
        self.num_images = 0

    def update(
        self, labels: Mapping[str, Any], outputs: Mapping[str, Any]
    ) -> None:
        """Adds one batch.

        Args:
            labels: the parser's eval labels: ``image_info`` [batch, 4, 2]
                (original size, scaled size, scale, offset) and
                ``groundtruths`` (``source_id`` [batch], ``height``,
                ``width``, ``boxes`` [batch, K, 4] yxyx in original pixels,
                ``classes`` [batch, K], ``num_detections``, ``areas``,
                ``is_crowds``).
            outputs: the detector's inference outputs:
                ``detection_boxes`` [batch, N, 4] yxyx in pixels of the
                resized input, ``detection_scores``, ``detection_classes``
                [batch, N], ``num_detections`` [batch].
        """
        missing = [k for k in PREDICTION_KEYS if k not in outputs]
        if missing:
            raise ValueError(
                f"outputs: missing {missing}; run the model with training=False"
            )
        for key in ("image_info", "groundtruths"):
            if key not in labels:
                raise ValueError(
                    f"labels: missing {key!r}; use the eval pipeline "
                    "(is_training=False)"
                )
        groundtruths = {
            k: np.asarray(v) for k, v in labels["groundtruths"].items()
        }
        predictions = {k: np.asarray(outputs[k]) for k in PREDICTION_KEYS}
        predictions["detection_classes"] = _mask_padding(
            predictions["detection_classes"], predictions["num_detections"]
        )
        predictions["source_id"] = groundtruths["source_id"]
        predictions["image_info"] = np.asarray(labels["image_info"])
        # Model Garden's evaluator calls .numpy() on every value.
        self._evaluator.update_state(
            _as_tensors(groundtruths), _as_tensors(predictions)
        )
        self.num_images += len(groundtruths["source_id"])

    def result(self) -> dict[str, float]:
        """COCO metrics of everything added since the last reset, then
        resets.

        Returns:
            ``AP`` (IoU .50:.95), ``AP50``, ``AP75``, ``APs``, ``APm``,
            ``APl`` as floats in [0, 1]; -1.0 where the ground truth has
            no object of that kind (pycocotools' convention).

        Raises:
            ValueError: no batch was added.
        """
        if not self.num_images:
            raise ValueError("CocoEvaluator.result: no images were added")
        with _quiet():
            metrics = self._evaluator.result()
        self.num_images = 0
        return {name: float(metrics[name]) for name in METRIC_NAMES}


def evaluate(
    model: tf_keras.Model,
    dataset: Iterable[tuple[tf.Tensor, Mapping[str, Any]]],
    annotation_file: str | None = None,
    steps: int = 0,
) -> dict[str, float]:
    """COCO AP of ``model`` on an eval dataset.

    Args:
        model: a detector (``nasfpn_tf.modeling.detector``) called as
            ``model(images, image_shape=, anchor_boxes=, training=False)``.
        dataset: batches ``(images, labels)`` from the eval pipeline
            (``build_dataset(..., is_training=False)``).
        annotation_file: the split's COCO JSON; None or "" uses the
            ground truth carried by the labels.
        steps: batches to evaluate; 0 evaluates the whole dataset.

    Returns:
        ``{"AP", "AP50", "AP75", "APs", "APm", "APl"}`` as floats.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    evaluator = CocoEvaluator(annotation_file)

    @tf.function(reduce_retracing=True)
    def predict(images, image_info, anchor_boxes):
        outputs = model(
            images,
            image_shape=image_info[:, 1, :],
            anchor_boxes=anchor_boxes,
            training=False,
        )
        return {k: outputs[k] for k in PREDICTION_KEYS}

    for step, (images, labels) in enumerate(dataset):
        if steps and step >= steps:
            break
        outputs = predict(
            images, labels["image_info"], labels.get("anchor_boxes")
        )
        evaluator.update(labels, outputs)
    return evaluator.result()


def _mask_padding(classes: np.ndarray, num_detections: np.ndarray) -> Any:
    """Gives slots past ``num_detections`` the background class.

    Model Garden hands every slot to pycocotools; padded slots could carry
    a real class (at score 0) and count as false positives.
    """
    slots = np.arange(classes.shape[1])[None, :]
    valid = slots < np.asarray(num_detections).reshape(-1, 1)
    return np.where(valid, classes, BACKGROUND_CLASS)


def _as_tensors(values: Mapping[str, np.ndarray]) -> dict[str, tf.Tensor]:
    return {k: tf.convert_to_tensor(v) for k, v in values.items()}


@contextlib.contextmanager
def _quiet():
    """Swallows pycocotools' prints (loading, index, summary table)."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield
