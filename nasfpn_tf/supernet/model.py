"""RetinaNet around the supernet neck, and weights moved to standalone nets.

The backbone, head, anchors and detection generator are the standalone
detector's (``nasfpn_tf.modeling.detector``, Model Garden's parts); the neck
is ``SupernetNeck``. ``port_to_detector`` copies the weights of one path into
a standalone ``DetectorModel`` of its spec, which computes what the path
computes (``tests/test_supernet.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras

from nasfpn_tf.arch.known import NASFPN_SPEC
from nasfpn_tf.arch.space import SearchSpace
from nasfpn_tf.arch.spec import NeckSpec
from nasfpn_tf.modeling import detector as detector_lib
from nasfpn_tf.modeling.detector import (
    BOX_OUTPUTS,
    CLS_OUTPUTS,
    DETECTION_KEYS,
    IMAGE_CHANNELS,
)
from nasfpn_tf.modeling.neck import NasFpnNeck
from nasfpn_tf.supernet import encoding
from nasfpn_tf.supernet.neck import INHERITED, TRAIN, SupernetNeck


def arch_tensors(space: SearchSpace, spec: NeckSpec) -> dict[str, tf.Tensor]:
    """``encoding.encode`` as constant tensors, ready for a traced call."""
    return {
        k: tf.constant(v)
        for k, v in encoding.encode(space, spec).as_dict().items()
    }


class SupernetDetector(tf_keras.Model):
    """Backbone -> supernet neck -> RetinaNet head (-> detections).

    Args:
      backbone: a Model Garden backbone.
      neck: the ``SupernetNeck``.
      head: Model Garden's ``RetinaNetHead``.
      detection_generator: Model Garden's multilevel detection generator.
    """

    def __init__(self, backbone, neck, head, detection_generator, **kwargs):
        super().__init__(**kwargs)
        self.backbone = backbone
        self.neck = neck
        self.head = head
        self.detection_generator = detection_generator
        self._backbone_levels = sorted(backbone.output_specs, key=int)

    def features(self, images: tf.Tensor, training: bool = False) -> list:
        """The projected input pyramid [P_min .. P_max] of ``images``."""
        features = self.backbone(images, training=training)
        features = {k: features[k] for k in self._backbone_levels}
        return self.neck.project(features, training=training)

    def heads(
        self, pyramid: Mapping[str, tf.Tensor], training: bool = False
    ) -> dict[str, Any]:
        scores, boxes, _ = self.head(dict(pyramid), training=training)
        return {CLS_OUTPUTS: scores, BOX_OUTPUTS: boxes}

    def call(self, images, arch, mode: str = TRAIN):
        """Class and box outputs of ``images`` through ``arch``'s path
        (training outputs; ``detect`` adds post-processing)."""
        training = mode == TRAIN
        feats = self.features(images, training=training)
        return self.heads(self.neck(feats, arch, mode=mode), training=training)

    def detect(
        self,
        feats,
        arch,
        image_shape: tf.Tensor,
        anchor_boxes: Mapping[str, tf.Tensor],
        mode: str = INHERITED,
    ) -> dict[str, tf.Tensor]:
        """Detections from a projected input pyramid (``features``).

        Returns:
          ``detection_boxes`` [batch, max_detections, 4] yxyx pixels,
          ``detection_scores``, ``detection_classes``, ``num_detections``.
        """
        outputs = self.heads(self.neck(feats, arch, mode=mode))
        levels = [str(lv) for lv in self.neck.levels]
        scores = {
            k: tf.cast(outputs[CLS_OUTPUTS][k], tf.float32) for k in levels
        }
        boxes = {
            k: tf.cast(outputs[BOX_OUTPUTS][k], tf.float32) for k in levels
        }
        anchors = {k: tf.cast(anchor_boxes[k], tf.float32) for k in levels}
        detections = self.detection_generator(
            boxes, scores, anchors, tf.cast(image_shape, tf.float32)
        )
        return {k: detections[k] for k in DETECTION_KEYS}


def build_supernet(config: Any, space: SearchSpace) -> SupernetDetector:
    """The supernet detector of ``config`` (an ``ExperimentConfig``: its
    model and ``train.l2_weight_decay``), with every weight built."""
    model_config = config.model
    norm = model_config.norm
    neck_config = model_config.neck
    if neck_config.dropblock_keep_prob is not None:
        raise ValueError(
            "model.neck.dropblock_keep_prob: the supernet has no DropBlock; "
            "set it to null for a shared-weight search"
        )
    regularizer = detector_lib.l2_regularizer(config.train.l2_weight_decay)
    input_specs = tf_keras.layers.InputSpec(
        shape=[None, None, None, IMAGE_CHANNELS]
    )
    backbone = detector_lib.build_backbone(
        model_config, input_specs, regularizer
    )
    neck = SupernetNeck(
        space,
        backbone_levels=[int(k) for k in backbone.output_specs],
        filters=neck_config.filters,
        repeats=neck_config.repeats,
        use_separable_conv=neck_config.use_separable_conv,
        activation=norm.activation,
        norm_momentum=norm.momentum,
        norm_epsilon=norm.epsilon,
        use_sync_bn=norm.use_sync_bn,
        kernel_regularizer=regularizer,
        name="supernet_neck",
    )
    head = detector_lib.build_head(model_config, regularizer)
    model = SupernetDetector(
        backbone,
        neck,
        head,
        detector_lib.build_detection_generator(model_config),
        name="supernet",
    )
    probe = 2**model_config.max_level
    spec = _probe_spec(space)
    model(
        tf.zeros([1, probe, probe, IMAGE_CHANNELS]),
        arch_tensors(space, spec),
        mode=INHERITED,
    )
    return model


def _probe_spec(space: SearchSpace) -> NeckSpec:
    try:
        space.from_spec(NASFPN_SPEC)
        return NASFPN_SPEC
    except Exception:  # noqa: BLE001 - any spec of the space will do
        import random

        return space.random_spec(random.Random(0))


# -- weights of a path into standalone networks ------------------------------


def _copy(source: tf_keras.layers.Layer, target: tf_keras.layers.Layer):
    weights = source.get_weights()
    target.set_weights(weights[: len(target.weights)])


def port_to_neck(
    neck: SupernetNeck, spec: NeckSpec, target: NasFpnNeck
) -> None:
    """Copies the weights of ``spec``'s path into a standalone neck of it
    (same width, repeats and input levels)."""
    if target.spec.canonical_key() != spec.canonical_key():
        raise ValueError("target: a neck of another spec")
    for source, projection in zip(neck.projections, target._projections):
        if (source.conv is None) != (projection.conv is None):
            raise ValueError(
                f"{projection.name}: the projections differ in structure"
            )
        if projection.conv is not None:
            _copy(source.conv, projection.conv)
            _copy(source.norm, projection.norm)
    arrays = encoding.encode(neck.space, spec)
    live = spec.live_cells()
    cells = iter(target._cells)
    for r in range(neck.repeats):
        for i in range(len(spec.cells)):
            if not live[i]:
                continue
            cell = next(cells)
            expected = f"cell_{r}_{i}"
            if cell.name != expected:
                raise ValueError(f"expected {expected}, found {cell.name}")
            bank = neck.banks[r][i]
            row = int(arrays.branch[i])
            conv = [k[row] for k in bank.kernels()] + [bank.bias[row]]
            cell.conv.set_weights([v.numpy() for v in conv])
            norm = (
                bank.gamma,
                bank.beta,
                bank.moving_mean,
                bank.moving_variance,
            )
            cell.norm.set_weights([v[row].numpy() for v in norm])


def port_to_detector(
    supernet: SupernetDetector,
    spec: NeckSpec,
    target: detector_lib.DetectorModel,
) -> None:
    """Copies backbone, the path's neck weights and head into ``target``,
    a standalone detector of ``spec`` with the supernet's sizes."""
    _copy(supernet.backbone, target.backbone)
    port_to_neck(supernet.neck, spec, target.decoder)
    _copy(supernet.head, target.head)


def standalone_detector(
    config: Any, supernet: SupernetDetector, spec: NeckSpec
) -> detector_lib.DetectorModel:
    """A standalone detector of ``spec`` holding the path's weights."""
    target = detector_lib.build_detector(
        config.model, spec, config.train.l2_weight_decay
    )
    port_to_detector(supernet, spec, target)
    return target


def max_abs_difference(a: Mapping, b: Mapping) -> float:
    return max(
        float(np.max(np.abs(np.asarray(a[k]) - np.asarray(b[k])))) for k in a
    )
