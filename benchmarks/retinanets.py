"""The two RetinaNets that ``model_speed.py`` times, and what it times.

Ours (``nasfpn_tf.modeling.detector``) and Model Garden's
(``official.vision.modeling.factory.build_retinanet`` with its ``nasfpn``
decoder) built to one ``ModelShape``; our weights copied into Model
Garden's where the structures match; the class scores calibrated so that
NMS has a trained detector's load; and the TF functions of one training
step, one forward pass and one inference call of either, the same code
for both sides.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras
from official.core import train_utils
from official.vision.configs import backbones as backbones_cfg
from official.vision.configs import common as common_cfg
from official.vision.configs import decoders as decoders_cfg
from official.vision.configs import retinanet as retinanet_cfg
from official.vision.modeling import factory
from official.vision.ops import anchor

from nasfpn_tf import config as config_lib
from nasfpn_tf.modeling import detector, losses, port
from nasfpn_tf.train import schedule

MG_DEFAULT_NMS, MG_BEST_NMS = "v2", "batched"
COCO_CLASSES = 91  # ids 1..90 and background, as Model Garden counts
MIN_LEVEL, MAX_LEVEL = 3, 7
IMAGE_CHANNELS = 3

# Constant and small: random labels must not drive the weights to inf/NaN
# while a train case runs.
LEARNING_RATE = 1e-3
# Share of anchors made positive in the synthetic training labels.
POSITIVE_FRACTION = 0.01
BOX_TARGET_STD = 0.1
IMAGE_SEED = (11, 12)
LABEL_SEED = 13
CLASSIFIER_SEED = (17, 18)


@dataclasses.dataclass(frozen=True)
class ModelShape:
    """What both sides build: backbone, neck and head sizes.

    Attributes:
        name: short label, e.g. ``r50_7@256``.
        backbone: ``nasfpn_tf.config.BACKBONES`` name.
        backbone_width: ResNet depth multiplier / MobileNet filter scale.
        filters: neck width; repeats: stacked pyramid networks.
        head_convs, head_filters: RetinaNet head towers.
        separable: separable convs in neck and head (NAS-FPNLite).
        activation: of neck and head.
    """

    name: str
    backbone: str
    backbone_width: float
    filters: int
    repeats: int
    head_convs: int
    head_filters: int
    separable: bool = False
    activation: str = "relu"


R50 = ModelShape("r50_7@256", "resnet50", 1.0, 256, 7, 4, 256)
LITE = ModelShape(
    "lite_mnv2_7@64", "mobilenetv2", 1.0, 64, 7, 4, 64, True, "relu6"
)
QUICK = ModelShape("quick_r10_2@16", "resnet10", 0.25, 16, 2, 1, 16)
QUICK_LITE = ModelShape(
    "quick_lite_1@16", "mobilenetv2", 0.35, 16, 1, 1, 16, True, "relu6"
)
QUICK_CLASSES = 3


# --------------------------------------------------------------------------
# Building both sides.


def our_model_config(
    shape: ModelShape, num_classes: int
) -> config_lib.ModelConfig:
    """Our config for ``shape`` (sync BN off: one device)."""
    return config_lib.ModelConfig(
        backbone=shape.backbone,
        backbone_width=shape.backbone_width,
        num_classes=num_classes,
        min_level=MIN_LEVEL,
        max_level=MAX_LEVEL,
        neck=config_lib.NeckConfig(
            type="nasfpn",
            filters=shape.filters,
            repeats=shape.repeats,
            use_separable_conv=shape.separable,
        ),
        head=config_lib.HeadConfig(
            num_convs=shape.head_convs,
            num_filters=shape.head_filters,
            use_separable_conv=shape.separable,
        ),
        norm=config_lib.NormConfig(
            activation=shape.activation, use_sync_bn=False
        ),
    )


def model_garden_config(
    shape: ModelShape,
    size: int,
    num_classes: int,
    nms_version: str = MG_DEFAULT_NMS,
) -> retinanet_cfg.RetinaNet:
    """Model Garden's RetinaNet config for ``shape``.

    Anchors, norm momentum/epsilon and the detection generator keep Model
    Garden's defaults (equal to ours but for NMS); sync BN is off.
    """
    if shape.backbone in detector.RESNET_DEPTHS:
        backbone = backbones_cfg.Backbone(
            type="resnet",
            resnet=backbones_cfg.ResNet(
                model_id=detector.RESNET_DEPTHS[shape.backbone],
                depth_multiplier=shape.backbone_width,
            ),
        )
    elif shape.backbone in detector.MOBILENET_IDS:
        backbone = backbones_cfg.Backbone(
            type="mobilenet",
            mobilenet=backbones_cfg.MobileNet(
                model_id=detector.MOBILENET_IDS[shape.backbone],
                filter_size_scale=shape.backbone_width,
            ),
        )
    else:
        raise ValueError(f"backbone: no Model Garden twin for {shape.backbone}")
    return retinanet_cfg.RetinaNet(
        num_classes=num_classes,
        input_size=[size, size, IMAGE_CHANNELS],
        min_level=MIN_LEVEL,
        max_level=MAX_LEVEL,
        backbone=backbone,
        decoder=decoders_cfg.Decoder(
            type="nasfpn",
            nasfpn=decoders_cfg.NASFPN(
                num_filters=shape.filters,
                num_repeats=shape.repeats,
                use_separable_conv=shape.separable,
            ),
        ),
        head=retinanet_cfg.RetinaNetHead(
            num_convs=shape.head_convs,
            num_filters=shape.head_filters,
            use_separable_conv=shape.separable,
        ),
        detection_generator=retinanet_cfg.DetectionGenerator(
            nms_version=nms_version
        ),
        norm_activation=common_cfg.NormActivation(
            activation=shape.activation, use_sync_bn=False
        ),
    )


def _regularizer(l2_weight_decay: float):
    # As ``detector.l2_regularizer`` and Model Garden's RetinaNet task.
    return detector.l2_regularizer(l2_weight_decay)


def build_ours(
    shape: ModelShape, size: int, num_classes: int, l2_weight_decay: float
) -> tf_keras.Model:
    return detector.build_detector(
        our_model_config(shape, num_classes),
        l2_weight_decay=l2_weight_decay,
        input_size=size,
    )


def build_model_garden(
    shape: ModelShape,
    size: int,
    num_classes: int,
    l2_weight_decay: float,
    nms_version: str = MG_DEFAULT_NMS,
    backbone: tf_keras.Model | None = None,
    decoder: tf_keras.Model | None = None,
) -> tf_keras.Model:
    """Model Garden's factory, then one call so every weight exists."""
    model = factory.build_retinanet(
        tf_keras.layers.InputSpec(shape=[None, size, size, IMAGE_CHANNELS]),
        model_garden_config(shape, size, num_classes, nms_version),
        l2_regularizer=_regularizer(l2_weight_decay),
        backbone=backbone,
        decoder=decoder,
    )
    model(tf.zeros([1, size, size, IMAGE_CHANNELS]), training=False)
    return model


def copy_to_model_garden(ours: tf_keras.Model, theirs: tf_keras.Model) -> bool:
    """Gives Model Garden's model our weights where structures match.

    Returns:
        True when backbone, neck and head were all copied.
    """
    theirs.backbone.set_weights(ours.backbone.get_weights())
    theirs.head.set_weights(ours.head.get_weights())
    try:
        port.to_model_garden(ours.decoder, theirs.decoder)
    except ValueError:
        # Model Garden's decoder adds 1x1 convs below width 256.
        return False
    return True


def count_params(model: tf_keras.Model) -> tuple[int, int]:
    """(all weights, trainable weights), scalars counted."""
    total = sum(v.shape.num_elements() for v in model.weights)
    trainable = sum(v.shape.num_elements() for v in model.trainable_weights)
    return int(total), int(trainable)


# --------------------------------------------------------------------------
# What is timed.


def test_images(batch: int, size: int) -> tf.Tensor:
    """Normalised-image-like inputs, the same for every side."""
    return tf.random.stateless_normal(
        [batch, size, size, IMAGE_CHANNELS], IMAGE_SEED
    )


def _function(fn: Callable | None = None, jit_compile: bool | None = None):
    """``tf.function`` without AutoGraph: nothing timed here branches on a
    tensor in Python, and converting closures only logs warnings."""
    if fn is None:
        return lambda f: _function(f, jit_compile)
    return tf.function(fn, jit_compile=jit_compile, autograph=False)


# Stages of the network, in order; ``network(model, stage)`` stops after one.
BACKBONE, NECK, HEAD = "backbone", "neck", "head"
STAGES = (BACKBONE, NECK, HEAD)
POST = "post"  # box decoding and NMS, after the head


def network(
    model: tf_keras.Model, stage: str = HEAD
) -> Callable[[tf.Tensor], Any]:
    """images -> the outputs of ``stage``, no post-processing.

    The same code for both sides, in inference: the backbone's features
    (a dict by level), the decoder's pyramid (a dict by level), or the
    head's (class logits, box outputs) by level.
    """
    if stage not in STAGES:
        raise ValueError(f"stage: expected one of {STAGES}, got {stage!r}")
    decoder_inputs = model.decoder.input
    levels = [str(level) for level in range(MIN_LEVEL, MAX_LEVEL + 1)]

    def forward(images):
        features = model.backbone(images, training=False)
        if isinstance(decoder_inputs, dict):
            # MobileNet also returns endpoints no pyramid level uses.
            features = {k: features[k] for k in decoder_inputs}
        if stage == BACKBONE:
            return features
        pyramid = model.decoder(features, training=False)
        pyramid = {k: pyramid[k] for k in levels}
        if stage == NECK:
            return pyramid
        scores, boxes, _ = model.head(pyramid, training=False)
        return scores, boxes

    return forward


def _checksum(outputs: Any) -> tf.Tensor:
    # One scalar from every output, so nothing is pruned and the fetch is
    # tiny.
    return tf.add_n(
        [
            tf.reduce_sum(tf.cast(v, tf.float32))
            for v in tf.nest.flatten(outputs)
        ]
    )


def forward_fn(
    model: tf_keras.Model, jit: bool = False, stage: str = HEAD
) -> Callable:
    """A TF function images -> checksum of the outputs of ``stage``."""
    forward = network(model, stage)

    def run(images):
        return _checksum(forward(images))

    return _function(run, jit_compile=jit)


def _anchor_boxes(model_config: Any, size: int, batch: int) -> dict:
    grid = anchor.Anchor(
        min_level=MIN_LEVEL,
        max_level=MAX_LEVEL,
        num_scales=model_config.anchor.num_scales,
        aspect_ratios=list(model_config.anchor.aspect_ratios),
        anchor_size=model_config.anchor.anchor_size,
        image_size=(size, size),
    ).multilevel_boxes
    return {k: tf.tile(v[None], [batch, 1, 1, 1]) for k, v in grid.items()}


def e2e_fn(
    model: tf_keras.Model,
    batch: int,
    size: int,
    jit_network_of: Any = None,
) -> Callable:
    """A TF function images -> detections (the inference call).

    Args:
        model: either side's detector.
        batch, size: of the images (for the image shape and anchors).
        jit_network_of: our ModelConfig to XLA-compile the network and run
            the (uncompilable) NMS after it; None calls ``model`` itself.
    """
    image_shape = tf.constant([[size, size]] * batch, tf.float32)
    keys = detector.DETECTION_KEYS
    if jit_network_of is None:

        def run(images):
            outputs = model(images, image_shape=image_shape, training=False)
            return {k: outputs[k] for k in keys}

        return _function(run)

    network_xla = _function(network(model), jit_compile=True)
    anchors = _anchor_boxes(jit_network_of, size, batch)

    def run_xla(images):
        scores, boxes = network_xla(images)
        detections = model.detection_generator(
            boxes, scores, anchors, image_shape
        )
        return {k: detections[k] for k in keys}

    return _function(run_xla)


def synthetic_labels(
    size: int, batch: int, num_classes: int, anchors_per_location: int
) -> dict[str, Any]:
    """Training targets shaped as the parser makes them (values random).

    ``POSITIVE_FRACTION`` of the anchors get a random object class, the
    rest background; box targets are small random offsets.
    """
    rng = np.random.default_rng(LABEL_SEED)
    cls_targets, box_targets, positives = {}, {}, []
    for level in range(MIN_LEVEL, MAX_LEVEL + 1):
        side = math.ceil(size / 2**level)
        grid = (batch, side, side, anchors_per_location)
        positive = rng.random(grid) < POSITIVE_FRACTION
        classes = rng.integers(1, num_classes, size=grid)
        cls_targets[str(level)] = tf.constant(
            np.where(positive, classes, -1), tf.int32
        )
        box_targets[str(level)] = tf.constant(
            rng.normal(0.0, BOX_TARGET_STD, grid[:3] + (4 * grid[3],)),
            tf.float32,
        )
        positives.append(positive.reshape(batch, -1))
    box_weights = np.concatenate(positives, axis=1).astype(np.float32)
    return {
        "cls_targets": cls_targets,
        "box_targets": box_targets,
        "cls_weights": tf.ones_like(box_weights),
        "box_weights": tf.constant(box_weights),
    }


def train_fn(
    model: tf_keras.Model,
    train_config: config_lib.TrainConfig,
    num_classes: int,
    jit: bool = False,
) -> Callable:
    """A TF function (images, labels) -> loss doing one SGD update.

    As ``nasfpn_tf.train.trainer``: with ``jit`` the loss and gradients are
    XLA-compiled and the update is applied after.
    """
    optimizer = schedule.build_optimizer(train_config, LEARNING_RATE)

    def loss_and_gradients(images, labels):
        with tf.GradientTape() as tape:
            outputs = model(images, training=True)
            total, _ = losses.detection_loss(
                outputs, labels, train_config, num_classes, model.losses
            )
        variables = model.trainable_variables
        return total, tape.gradient(total, variables)

    gradients_fn = (
        _function(loss_and_gradients, jit_compile=True)
        if jit
        else loss_and_gradients
    )

    @_function
    def step(images, labels):
        total, gradients = gradients_fn(images, labels)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        return total

    return step


def forward_flops(model: tf_keras.Model, size: int) -> int | None:
    """Forward FLOPs at batch 1 by Model Garden's helper (tf profiler).

    The network is wrapped in a functional model so that
    ``train_utils.try_count_flops`` can trace it; the profiler counts a
    multiply-add as 2 FLOPs. None where the profiler fails.
    """
    inputs = tf_keras.Input([size, size, IMAGE_CHANNELS], batch_size=1)
    scores, boxes = network(model)(inputs)
    wrapper = tf_keras.Model(inputs, {"scores": scores, "boxes": boxes})
    flops = train_utils.try_count_flops(wrapper)
    return int(flops) if flops else None


# --------------------------------------------------------------------------
# Score calibration.


def _classifier(model: tf_keras.Model) -> tf_keras.layers.Layer:
    # Model Garden's RetinaNetHead keeps its class predictor here (a Conv2D,
    # or a SeparableConv2D in the Lite head).
    return model.head._classifier


def calibrate_scores(
    model: tf_keras.Model,
    images: tf.Tensor,
    fraction: float,
    threshold: float,
) -> float:
    """Sets the class predictor so ``fraction`` of scores pass ``threshold``.

    Its last kernel is redrawn N(0, 1) and scaled to give logits of unit
    spread on ``images``; the bias then shifts the logits so that the
    ``1 - fraction`` quantile sits at ``logit(threshold)``.

    Returns:
        The share of anchor-class scores above ``threshold`` on ``images``.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"score fraction must be in (0, 1), got {fraction}")
    layer = _classifier(model)
    kernel = (
        layer.pointwise_kernel
        if hasattr(layer, "pointwise_kernel")
        else layer.kernel
    )
    kernel.assign(tf.random.stateless_normal(kernel.shape, CLASSIFIER_SEED))
    layer.bias.assign(tf.zeros_like(layer.bias))
    forward = _function(network(model))

    def logits() -> np.ndarray:
        scores, _ = forward(images)
        return np.concatenate(
            [np.ravel(v.numpy()) for v in scores.values()]
        ).astype(np.float64)

    spread = float(np.std(logits())) or 1.0
    kernel.assign(kernel / spread)
    quantile = float(np.quantile(logits(), 1.0 - fraction))
    bias = math.log(threshold / (1.0 - threshold)) - quantile
    layer.bias.assign(tf.fill(layer.bias.shape, bias))
    passed = logits() > math.log(threshold / (1.0 - threshold))
    return float(passed.mean())
