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

import dataclasses
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


@dataclasses.dataclass(frozen=True)
class _Targets:
    """One batch's targets, flattened once for every head.

    Attributes:
        levels: level keys in the order everything is flattened.
        cls: [batch, anchors, num_classes] one-hot class targets.
        box: [batch, anchors, 4] encoded box targets.
        cls_weights, box_weights: [batch, anchors], divided by the number
            of positives.
    """

    levels: tuple[str, ...]
    cls: tf.Tensor
    box: tf.Tensor
    cls_weights: tf.Tensor
    box_weights: tf.Tensor


def _flat_targets(
    labels: Mapping[str, Any], num_classes: int, num_positives: tf.Tensor
) -> _Targets:
    """The parser's labels (``cls_targets``: level key -> [batch, H_l,
    W_l, A] int, -1 background, -2 ignored; ``box_targets``: level key ->
    [batch, H_l, W_l, A * 4]; ``cls_weights``, ``box_weights``: [batch,
    num_anchors]) as Model Garden's RetinaNet task flattens them."""
    cls_targets, box_targets = labels["cls_targets"], labels["box_targets"]
    levels = tuple(sorted(cls_targets, key=int))
    return _Targets(
        levels=levels,
        cls=tf.one_hot(
            loss_utils.multi_level_flatten(
                {k: cls_targets[k] for k in levels}, last_dim=None
            ),
            num_classes,
        ),
        box=loss_utils.multi_level_flatten(
            {k: tf.cast(box_targets[k], tf.float32) for k in levels},
            last_dim=BOX_PARAMS,
        ),
        cls_weights=tf.cast(labels["cls_weights"], tf.float32) / num_positives,
        box_weights=tf.cast(labels["box_weights"], tf.float32) / num_positives,
    )


def _flat_outputs(
    outputs: Mapping[str, tf.Tensor], levels: Sequence[str], last_dim: int
) -> tf.Tensor:
    # Mixed precision heads emit bfloat16/float16; the loss sums in float32.
    return loss_utils.multi_level_flatten(
        {k: tf.cast(outputs[k], tf.float32) for k in levels},
        last_dim=last_dim,
    )


def _check_levels(
    outputs: Mapping[str, Any],
    targets: Mapping[str, Any],
    outputs_name: str,
    targets_name: str,
) -> None:
    if set(outputs) != set(targets):
        raise ValueError(
            f"{outputs_name} have levels {sorted(outputs)} but the labels' "
            f"{targets_name} have {sorted(targets)}"
        )


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
    # Model Garden's losses (official/vision/tasks/retinanet.py
    # build_losses); the targets are flattened once for all the heads.
    cls_loss_fn = focal_loss.FocalLoss(
        alpha=train_config.focal_alpha,
        gamma=train_config.focal_gamma,
        reduction=tf_keras.losses.Reduction.SUM,
    )
    box_loss_fn = tf_keras.losses.Huber(
        train_config.huber_delta, reduction=tf_keras.losses.Reduction.SUM
    )
    heads = outputs.get(REPEAT_OUTPUTS) or [outputs]
    for head in heads:
        for output, target in (
            (CLS_OUTPUTS, "cls_targets"),
            (BOX_OUTPUTS, "box_targets"),
        ):
            _check_levels(head[output], labels[target], output, target)
    targets = _flat_targets(labels, num_classes, num_positives)
    cls_loss = tf.constant(0.0)
    box_loss = tf.constant(0.0)
    for head in heads:
        cls_loss += cls_loss_fn(
            y_true=targets.cls,
            y_pred=_flat_outputs(
                head[CLS_OUTPUTS], targets.levels, num_classes
            ),
            sample_weight=targets.cls_weights,
        )
        box_loss += box_loss_fn(
            y_true=targets.box,
            y_pred=_flat_outputs(head[BOX_OUTPUTS], targets.levels, BOX_PARAMS),
            sample_weight=targets.box_weights,
        )
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
