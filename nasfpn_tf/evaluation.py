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
import itertools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras
from official.vision.evaluation import coco_evaluator, coco_utils
from pycocotools import cocoeval

METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")
# Per-class metrics are named "<metric>/<class name>".
PER_CLASS_METRICS = ("AP", "AP50")

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
        class_names: names of classes 1..n; when given, ``result`` adds
            ``AP/<name>`` and ``AP50/<name>`` per class.
    """

    def __init__(
        self,
        annotation_file: str | None = None,
        max_detections: int = COCO_MAX_DETECTIONS,
        class_names: Sequence[str] = (),
    ):
        if annotation_file and not tf.io.gfile.exists(annotation_file):
            raise FileNotFoundError(
                f"annotation_file: no such COCO JSON: {annotation_file}"
            )
        self.annotation_file = annotation_file or None
        self.max_detections = max_detections
        self.class_names = tuple(class_names)
        with _quiet():
            self._evaluator = coco_evaluator.COCOEvaluator(
                annotation_file=self.annotation_file,
                include_mask=False,
                need_rescale_bboxes=True,
                per_category_metrics=False,
                max_num_eval_detections=max_detections,
            )
        self.num_images = 0
        # (groundtruths, rescaled predictions) per batch, for per-class AP.
        self._batches: list[tuple[dict, dict]] = []

    def reset(self) -> None:
        """Forgets every batch seen so far."""
        self._evaluator.reset_states()
        self.num_images = 0
        self._batches = []

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
        if "num_detections" in groundtruths:
            # The parser gives [batch, 1]; Model Garden's conversion calls
            # int() on each entry, which NumPy >= 2.4 refuses for arrays.
            groundtruths["num_detections"] = groundtruths[
                "num_detections"
            ].reshape(-1)
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
        if self.class_names:
            scale = np.tile(predictions["image_info"][:, 2:3, :], (1, 1, 2))
            rescaled = dict(
                predictions,
                detection_boxes=predictions["detection_boxes"] / scale,
            )
            self._batches.append((groundtruths, rescaled))

    def result(self) -> dict[str, float]:
        """COCO metrics of everything added since the last reset, then
        resets.

        Returns:
            ``AP`` (IoU .50:.95), ``AP50``, ``AP75``, ``APs``, ``APm``,
            ``APl`` as floats in [0, 1]; -1.0 where the ground truth has
            no object of that kind (pycocotools' convention). With
            ``class_names``, also ``AP/<name>`` and ``AP50/<name>`` for
            each class the ground truth lists.

        Raises:
            ValueError: no batch was added.
        """
        if not self.num_images:
            raise ValueError("CocoEvaluator.result: no images were added")
        with _quiet():
            metrics = self._evaluator.result()
        self.num_images = 0
        result = {name: float(metrics[name]) for name in METRIC_NAMES}
        if self.class_names:
            with _quiet():
                result.update(self._per_class())
            self._batches = []
        return result

    def _per_class(self) -> dict[str, float]:
        """AP and AP50 per class, from pycocotools' precision table.

        Model Garden's per-category metrics need Google's internal
        pycocotools (``category_stats``); the public one leaves them out,
        so the batches are evaluated once more here with Model Garden's
        public COCO conversions.
        """
        predictions = {
            key: [np.copy(p[key]) for _, p in self._batches]
            for key in ("source_id", *PREDICTION_KEYS)
        }
        if self.annotation_file:
            coco_gt = coco_utils.COCOWrapper(
                eval_type="box", annotation_file=self.annotation_file
            )
        else:
            groundtruths = {
                key: [g[key] for g, _ in self._batches]
                for key in self._batches[0][0]
            }
            coco_gt = coco_utils.COCOWrapper(
                eval_type="box",
                gt_dataset=coco_utils.convert_groundtruths_to_coco_dataset(
                    groundtruths
                ),
            )
        detections = coco_utils.convert_predictions_to_coco_annotations(
            predictions
        )
        coco_eval = cocoeval.COCOeval(
            coco_gt, coco_gt.loadRes(predictions=detections), iouType="bbox"
        )
        coco_eval.params.imgIds = [d["image_id"] for d in detections]
        coco_eval.params.maxDets[-1] = self.max_detections
        coco_eval.evaluate()
        coco_eval.accumulate()
        # [iou thresholds, recalls, classes, areas, max detections];
        # -1 marks a class without ground truth.
        precision = coco_eval.eval["precision"][:, :, :, 0, -1]
        result = {}
        for k, category in enumerate(coco_eval.params.catIds):
            name = _class_name(category, self.class_names, coco_gt)
            for metric, values in zip(
                PER_CLASS_METRICS, (precision[:, :, k], precision[0, :, k])
            ):
                valid = values[values > -1]
                result[f"{metric}/{name}"] = (
                    float(valid.mean()) if valid.size else -1.0
                )
        return result


def evaluate(
    model: tf_keras.Model,
    dataset: Iterable[tuple[tf.Tensor, Mapping[str, Any]]],
    annotation_file: str | None = None,
    steps: int = 0,
    class_names: Sequence[str] = (),
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
        class_names: names of classes 1..n, for per-class AP.

    Returns:
        ``{"AP", "AP50", "AP75", "APs", "APm", "APl"}`` as floats (and
        per-class AP with ``class_names``; see ``CocoEvaluator.result``).
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    evaluator = CocoEvaluator(annotation_file, class_names=class_names)

    @tf.function(reduce_retracing=True)
    def predict(images, image_info, anchor_boxes):
        outputs = model(
            images,
            image_shape=image_info[:, 1, :],
            anchor_boxes=anchor_boxes,
            training=False,
        )
        return {k: outputs[k] for k in PREDICTION_KEYS}

    # islice draws exactly `steps` batches: breaking out of the loop
    # after drawing one more would consume a batch of a shared iterator.
    batches = itertools.islice(dataset, steps) if steps else dataset
    for images, labels in batches:
        outputs = predict(
            images, labels["image_info"], labels.get("anchor_boxes")
        )
        evaluator.update(labels, outputs)
    return evaluator.result()


def is_metric(name: str) -> bool:
    """Whether ``name`` is a metric ``CocoEvaluator.result`` returns."""
    metric, sep, _ = name.partition("/")
    return name in METRIC_NAMES or (bool(sep) and metric in PER_CLASS_METRICS)


def _class_name(category: int, class_names: Sequence[str], coco_gt) -> str:
    if 0 < category <= len(class_names) and class_names[category - 1]:
        return class_names[category - 1]
    return str(coco_gt.cats.get(category, {}).get("name", category))


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
