"""RetinaNet's detection loss, with deep supervision for anytime heads.

The loss is Model Garden's (``official/vision/tasks/retinanet.py::
build_losses``): focal loss (Lin et al., "Focal Loss for Dense Object
Detection", arXiv:1708.02002) on the class logits plus a Huber loss on the
encoded boxes, both summed and divided by the number of positive anchors
plus one. With anytime detection (NAS-FPN, Ghiasi et al., CVPR 2019,
arXiv:1904.07392, Sec. 3.3) the same loss is summed over every neck
repeat's head (deep supervision).

Distribution. Model Garden divides by the positives of each replica's own
batch. Here the positives are summed over the global batch (an all-reduce
across replicas) so that every anchor weighs the same whatever the replica
count. The returned loss is therefore this replica's *share*: summed over
replicas it is the loss of the global batch, and so are the gradients the
optimizer sums across replicas. A train step must not divide it by the
number of replicas again, and a logged value is the sum over replicas.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import tensorflow as tf
import tf_keras
from official.vision.losses import focal_loss, loss_utils

from nasfpn_tf.modeling.detector import BOX_OUTPUTS, CLS_OUTPUTS, REPEAT_OUTPUTS

BOX_PARAMS = 4  # ty, tx, th, tw of Model Garden's box coder
# Added to the positive count so an image without objects cannot divide by
# zero (as Model Garden does).
POSITIVES_OFFSET = 1.0
LOSS_KEYS = ("cls_loss", "box_loss", "model_loss")


def _train_config(config: Any) -> Any:
    """Accepts an ``ExperimentConfig`` or its ``TrainConfig``."""
    return config.train if hasattr(config, "train") else config


def global_sum(value: tf.Tensor) -> tf.Tensor:
    """Sums ``value`` over the replicas of the current replica context.

    Outside a multi-replica step (one device, or cross-replica code that
    already sees the global batch) it is ``value`` itself.
    """
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return value
    return context.all_reduce(tf.distribute.ReduceOp.SUM, value)


def num_replicas() -> int:
    """Replicas that each run the train step (1 off a strategy)."""
    return tf.distribute.get_strategy().num_replicas_in_sync


def head_loss(
    cls_outputs: Mapping[str, tf.Tensor],
    box_outputs: Mapping[str, tf.Tensor],
    labels: Mapping[str, Any],
    train_config: Any,
    num_classes: int,
    num_positives: tf.Tensor,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Focal and Huber losses of one head, as Model Garden computes them.

    Args:
        cls_outputs: level key -> [batch, H_l, W_l, A * num_classes] logits.
        box_outputs: level key -> [batch, H_l, W_l, A * 4] encoded boxes.
        labels: the parser's ``cls_targets`` (level key -> [batch, H_l,
            W_l, A] int, -1 background, -2 ignored), ``box_targets``
            (level key -> [batch, H_l, W_l, A * 4]), ``cls_weights`` and
            ``box_weights`` ([batch, num_anchors]).
        train_config: a ``TrainConfig`` (focal alpha/gamma, Huber delta).
        num_classes: classes including background.
        num_positives: the normaliser, positives + 1 (a scalar).

    Returns:
        (cls_loss, box_loss), scalars; the box loss is not yet weighted.
    """
    cls_loss_fn = focal_loss.FocalLoss(
        alpha=train_config.focal_alpha,
        gamma=train_config.focal_gamma,
        reduction=tf_keras.losses.Reduction.SUM,
    )
    box_loss_fn = tf_keras.losses.Huber(
        train_config.huber_delta, reduction=tf_keras.losses.Reduction.SUM
    )
    cls_outputs, cls_targets = _by_level(
        cls_outputs, labels["cls_targets"], "cls"
    )
    box_outputs, box_targets = _by_level(
        box_outputs, labels["box_targets"], "box"
    )
    cls_weights = tf.cast(labels["cls_weights"], tf.float32) / num_positives
    box_weights = tf.cast(labels["box_weights"], tf.float32) / num_positives
    y_true_cls = tf.one_hot(
        loss_utils.multi_level_flatten(cls_targets, last_dim=None),
        num_classes,
    )
    y_pred_cls = loss_utils.multi_level_flatten(
        _float32(cls_outputs), last_dim=num_classes
    )
    y_true_box = loss_utils.multi_level_flatten(
        _float32(box_targets), last_dim=BOX_PARAMS
    )
    y_pred_box = loss_utils.multi_level_flatten(
        _float32(box_outputs), last_dim=BOX_PARAMS
    )
    cls_loss = cls_loss_fn(
        y_true=y_true_cls, y_pred=y_pred_cls, sample_weight=cls_weights
    )
    box_loss = box_loss_fn(
        y_true=y_true_box, y_pred=y_pred_box, sample_weight=box_weights
    )
    return cls_loss, box_loss


def detection_loss(
    outputs: Mapping[str, Any],
    labels: Mapping[str, Any],
    train_config: Any,
    num_classes: int,
    regularization_losses: Sequence[tf.Tensor] | None = None,
) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
    """This replica's share of the global-batch detection loss.

    Args:
        outputs: the detector's outputs (``cls_outputs``, ``box_outputs``;
            with anytime heads ``repeat_outputs``, one pair per repeat).
        labels: the parser's labels for this replica's images.
        train_config: a ``TrainConfig`` (or ``ExperimentConfig``).
        num_classes: classes including background (``model.num_classes``).
        regularization_losses: the model's ``losses`` (L2 of the kernels);
            each replica adds ``1 / num_replicas`` of them.

    Returns:
        ``(total, parts)``: ``total`` = sum over heads of ``cls_loss +
        box_loss_weight * box_loss``, plus L2; ``parts`` holds
        ``cls_loss``, ``box_loss`` (unweighted) and ``model_loss`` (total
        without L2), each summed over the anytime heads. All scalars
        float32; sum them over replicas to report them.
    """
    train_config = _train_config(train_config)
    box_weights = tf.cast(labels["box_weights"], tf.float32)
    num_positives = global_sum(tf.reduce_sum(box_weights)) + POSITIVES_OFFSET
    heads = outputs.get(REPEAT_OUTPUTS) or [outputs]
    cls_loss = tf.constant(0.0)
    box_loss = tf.constant(0.0)
    for head in heads:
        cls_r, box_r = head_loss(
            head[CLS_OUTPUTS],
            head[BOX_OUTPUTS],
            labels,
            train_config,
            num_classes,
            num_positives,
        )
        cls_loss += cls_r
        box_loss += box_r
    model_loss = cls_loss + train_config.box_loss_weight * box_loss
    total = model_loss
    if regularization_losses:
        l2 = tf.add_n([tf.cast(x, tf.float32) for x in regularization_losses])
        total = model_loss + l2 / num_replicas()
    return total, {
        "cls_loss": cls_loss,
        "box_loss": box_loss,
        "model_loss": model_loss,
    }


def _float32(tensors: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    # Mixed precision heads emit bfloat16/float16; the loss sums in float32.
    return {k: tf.cast(v, tf.float32) for k, v in tensors.items()}


def _by_level(
    outputs: Mapping[str, tf.Tensor],
    targets: Mapping[str, tf.Tensor],
    name: str,
) -> tuple[dict[str, tf.Tensor], dict[str, tf.Tensor]]:
    """Outputs and targets in the same level order (tf.data sorts keys)."""
    if set(outputs) != set(targets):
        raise ValueError(
            f"{name}_outputs have levels {sorted(outputs)} but the labels' "
            f"{name}_targets have {sorted(targets)}"
        )
    levels = sorted(outputs, key=int)
    return (
        {k: outputs[k] for k in levels},
        {k: targets[k] for k in levels},
    )
