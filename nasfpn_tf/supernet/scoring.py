"""COCO AP of one split, many times over: the ground truth is built once.

Model Garden's ``COCOEvaluator`` (which ``nasfpn_tf.evaluation`` wraps)
rebuilds the ground truth from the labels at every evaluation; a supernet
rates thousands of specs on one split, so ``SplitScorer`` converts the
ground truth once and each call only converts and scores detections, with
Model Garden's own conversions and pycocotools' ``COCOeval`` (so its AP is
the evaluator's; ``tests/test_supernet.py``). With ``backend="faster"`` the
same ground truth and detections go through ``faster_coco_eval``'s
``COCOeval_faster`` (C++), used only where its AP equals pycocotools' on the
split (``check_backend``).
"""

from __future__ import annotations

import contextlib
import copy
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from official.vision.evaluation import coco_utils

from nasfpn_tf import evaluation

PYCOCOTOOLS = "pycocotools"
FASTER = "faster"
# COCOeval.stats, in order.
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def faster_available() -> bool:
    try:
        import faster_coco_eval  # noqa: F401
    except ImportError:
        return False
    return True


class SplitScorer:
    """COCO box AP of detections on a fixed list of labelled batches.

    Args:
      groundtruths: one ``labels["groundtruths"]`` dict of numpy arrays per
        batch (the eval parser's: ``source_id``, ``height``, ``width``,
        ``boxes`` yxyx in original pixels, ``classes``, ``num_detections``,
        ``areas``, ``is_crowds``).
      image_infos: each batch's ``labels["image_info"]`` [batch, 4, 2].
      backend: ``"pycocotools"`` or ``"faster"``.
      annotation_file: the split's COCO JSON, which the trainer's
        evaluator reads where there is one; "" builds the ground truth from
        ``groundtruths`` as the evaluator then does.
    """

    def __init__(
        self,
        groundtruths: Sequence[Mapping[str, np.ndarray]],
        image_infos: Sequence[np.ndarray],
        backend: str = PYCOCOTOOLS,
        annotation_file: str = "",
    ):
        if backend not in (PYCOCOTOOLS, FASTER):
            raise ValueError(f"backend: unknown {backend!r}")
        self.backend = backend
        self.image_infos = [np.asarray(i) for i in image_infos]
        self.source_ids = [np.asarray(g["source_id"]) for g in groundtruths]
        if annotation_file:
            import json

            import tensorflow as tf

            with tf.io.gfile.GFile(annotation_file) as f:
                self._dataset = json.load(f)
        else:
            lists: dict[str, list[np.ndarray]] = {}
            for batch in groundtruths:
                for key, value in batch.items():
                    value = np.asarray(value)
                    if key == "num_detections":
                        value = value.reshape(-1)  # see evaluation.update
                    lists.setdefault(key, []).append(value)
            self._dataset = coco_utils.convert_groundtruths_to_coco_dataset(
                lists
            )
        with _quiet():
            self._gt = coco_utils.COCOWrapper(
                eval_type="box", gt_dataset=copy.deepcopy(self._dataset)
            )
        self._faster_gt = None
        self.num_images = sum(len(s) for s in self.source_ids)

    def _predictions(
        self, detections: Sequence[Mapping[str, np.ndarray]]
    ) -> list[dict[str, Any]]:
        """Model Garden's annotations of the detections (boxes rescaled to
        original pixels, padding masked as ``nasfpn_tf.evaluation``)."""
        lists: dict[str, list[np.ndarray]] = {}
        for batch, info, ids in zip(
            detections, self.image_infos, self.source_ids
        ):
            boxes = np.asarray(batch["detection_boxes"], np.float32)
            scale = np.tile(info[:, 2:3, :], (1, 1, 2))
            values = {
                "source_id": ids,
                "detection_boxes": boxes / scale.astype(np.float32),
                "detection_scores": np.asarray(batch["detection_scores"]),
                "detection_classes": evaluation._mask_padding(
                    np.asarray(batch["detection_classes"]),
                    np.asarray(batch["num_detections"]),
                ),
                "num_detections": np.asarray(batch["num_detections"]),
            }
            for key, value in values.items():
                lists.setdefault(key, []).append(value)
        return coco_utils.convert_predictions_to_coco_annotations(lists)

    def score(
        self, detections: Sequence[Mapping[str, np.ndarray]]
    ) -> dict[str, float]:
        """``AP``, ``AP50``, ``AP75``, ``APs``, ``APm``, ``APl`` of one
        set of detections (one dict of numpy arrays per batch)."""
        if len(detections) != len(self.source_ids):
            raise ValueError(
                f"detections: {len(detections)} batches for "
                f"{len(self.source_ids)} labelled ones"
            )
        annotations = self._predictions(detections)
        if not annotations:
            return {name: 0.0 for name in STAT_NAMES}
        image_ids = [a["image_id"] for a in annotations]
        with _quiet():
            if self.backend == FASTER:
                stats = self._faster(annotations, image_ids)
            else:
                from pycocotools import cocoeval

                dt = self._gt.loadRes(predictions=annotations)
                coco_eval = cocoeval.COCOeval(self._gt, dt, iouType="bbox")
                coco_eval.params.imgIds = image_ids
                coco_eval.params.maxDets[2] = evaluation.COCO_MAX_DETECTIONS
                coco_eval.evaluate()
                coco_eval.accumulate()
                coco_eval.summarize()
                stats = coco_eval.stats
        return {name: float(stats[i]) for i, name in enumerate(STAT_NAMES)}

    def _faster(self, annotations, image_ids) -> np.ndarray:
        from faster_coco_eval import COCO, COCOeval_faster

        if self._faster_gt is None:
            self._faster_gt = COCO(copy.deepcopy(self._dataset))
        plain = [
            {
                "image_id": int(a["image_id"]),
                "category_id": int(a["category_id"]),
                "bbox": [float(v) for v in a["bbox"]],
                "score": float(a["score"]),
            }
            for a in annotations
        ]
        dt = self._faster_gt.loadRes(plain)
        coco_eval = COCOeval_faster(
            self._faster_gt, dt, iouType="bbox", print_function=_discard
        )
        coco_eval.params.imgIds = image_ids
        coco_eval.params.maxDets[2] = evaluation.COCO_MAX_DETECTIONS
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
        return coco_eval.stats


def _discard(*args, **kwargs) -> None:
    del args, kwargs


@contextlib.contextmanager
def _quiet():
    with contextlib.redirect_stdout(io.StringIO()):
        yield
