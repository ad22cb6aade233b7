"""RetinaNet around a NAS-FPN (or FPN) neck, built from Model Garden parts.

NAS-FPN (Ghiasi, Lin, Pang, Le, CVPR 2019, arXiv:1904.07392) is a RetinaNet
whose feature pyramid is a stack of searched pyramid networks. Backbone,
head, anchors and post-processing are Model Garden's
(``official/vision/modeling/factory.py::build_retinanet`` is the template);
only the neck is ours (``nasfpn_tf.modeling.neck``), or Model Garden's FPN
decoder as the baseline.

Anchors. Model Garden's ``anchor.Anchor`` puts ``ceil(size / 2**level)``
anchor centres per side on each level, spread evenly over the image; our
neck's levels are the ``ceil`` halving of the one below, so the anchor grid
always has the feature map's size, also where ``2**max_level`` does not
divide the input (320 px unpadded: P6 is 5x5, P7 3x3, with anchors at a
64 and 106.7 px pitch). The pipeline pads such inputs to 384 by default.
The parser (``nasfpn_tf.data.pipeline``) labels with the same ``Anchor``;
``DetectorModel.call`` checks the grid against the head's outputs.

Anytime detection (paper Sec. 3.3): with ``model.anytime`` the head is also
applied after every earlier repeat of the neck and the loss sums over all
repeats (deep supervision, ``nasfpn_tf.modeling.losses``). The paper
attaches "classifier and box regression heads" after the intermediate
pyramid networks without saying they differ, and every repeat emits a
pyramid of the same width, so one head is shared by all repeats, as
RetinaNet already shares it across levels: an early exit then adds no
weights. ``model(images, exit_repeat=k)`` (or ``detections_at``) runs only
the first ``k + 1`` repeats and returns their detections.

This module builds the detector from a config; the model class and its
output keys are ``nasfpn_tf.modeling.detector_model``'s (re-exported
here).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import tensorflow as tf
import tf_keras
from official.vision.modeling.backbones import mobilenet, resnet
from official.vision.modeling.decoders import fpn
from official.vision.modeling.heads import dense_prediction_heads
from official.vision.modeling.layers import detection_generator

from nasfpn_tf.arch.known import NASFPN_SPEC
from nasfpn_tf.arch.spec import NeckSpec, SpecError
from nasfpn_tf.modeling.detector_model import (  # noqa: F401 (re-exported)
    BOX_OUTPUTS,
    CLS_OUTPUTS,
    DETECTION_KEYS,
    REPEAT_OUTPUTS,
    DetectorModel,
    detections_at,
)
from nasfpn_tf.modeling.neck import build_neck

RESNET_DEPTHS = {
    "resnet10": 10,
    "resnet18": 18,
    "resnet50": 50,
    "resnet101": 101,
}
MOBILENET_IDS = {"mobilenetv2": "MobileNetV2"}
IMAGE_CHANNELS = 3


def _model_config(config: Any) -> Any:
    """Accepts an ``ExperimentConfig`` or its ``ModelConfig``."""
    return config.model if hasattr(config, "model") else config


def spec_for(config: Any) -> NeckSpec:
    """The neck spec a config asks for.

    Args:
        config: an ``ExperimentConfig`` or a ``ModelConfig``.

    Returns:
        The spec in ``model.neck.arch`` (a JSON path, e.g. a search's
        ``best_spec.json``), else the published NAS-FPN spec.

    Raises:
        ValueError: the spec's levels differ from the model's.
    """
    model_config = _model_config(config)
    arch = model_config.neck.arch
    spec = NeckSpec.load(arch) if arch else NASFPN_SPEC
    _check_spec_levels(spec, model_config, arch or "the published spec")
    return spec


def _check_spec_levels(spec: NeckSpec, model_config: Any, name: str) -> None:
    try:
        spec.check_levels(model_config.min_level, model_config.max_level)
    except SpecError as error:
        raise SpecError(f"neck spec ({name}) {error}") from None


def l2_regularizer(
    l2_weight_decay: float,
) -> tf_keras.regularizers.Regularizer | None:
    """Model Garden's kernel regularizer for a weight decay.

    Halved because Keras' l2 is ``w * sum(x**2)`` while the decay is
    defined on ``tf.nn.l2_loss = sum(x**2) / 2`` (as in Model Garden's
    RetinaNet task).
    """
    if l2_weight_decay < 0:
        raise ValueError(f"l2_weight_decay must be >= 0, got {l2_weight_decay}")
    if not l2_weight_decay:
        return None
    return tf_keras.regularizers.l2(l2_weight_decay / 2.0)


def build_backbone(
    model_config: Any,
    input_specs: tf_keras.layers.InputSpec,
    kernel_regularizer: tf_keras.regularizers.Regularizer | None = None,
) -> tf_keras.Model:
    """Model Garden's ResNet or MobileNetV2 at ``backbone_width``."""
    norm = model_config.norm
    name = model_config.backbone
    if name in RESNET_DEPTHS:
        return resnet.ResNet(
            model_id=RESNET_DEPTHS[name],
            input_specs=input_specs,
            depth_multiplier=model_config.backbone_width,
            activation=norm.activation,
            use_sync_bn=norm.use_sync_bn,
            norm_momentum=norm.momentum,
            norm_epsilon=norm.epsilon,
            kernel_regularizer=kernel_regularizer,
        )
    if name in MOBILENET_IDS:
        # MobileNet's activations are fixed by its design (ReLU6).
        return mobilenet.MobileNet(
            model_id=MOBILENET_IDS[name],
            filter_size_scale=model_config.backbone_width,
            input_specs=input_specs,
            use_sync_bn=norm.use_sync_bn,
            norm_momentum=norm.momentum,
            norm_epsilon=norm.epsilon,
            kernel_regularizer=kernel_regularizer,
        )
    known = sorted([*RESNET_DEPTHS, *MOBILENET_IDS])
    raise ValueError(f"model.backbone: unknown {name!r}; known: {known}")


def build_decoder(
    model_config: Any,
    spec: NeckSpec | None,
    backbone_specs: Mapping[str, tf.TensorShape],
    kernel_regularizer: tf_keras.regularizers.Regularizer | None = None,
) -> tf_keras.Model:
    """Our NAS-FPN neck or Model Garden's FPN, by ``model.neck.type``."""
    neck = model_config.neck
    norm = model_config.norm
    norm_kwargs = {
        "activation": norm.activation,
        "use_sync_bn": norm.use_sync_bn,
        "norm_momentum": norm.momentum,
        "norm_epsilon": norm.epsilon,
        "kernel_regularizer": kernel_regularizer,
    }
    if neck.type == "nasfpn":
        spec = spec if spec is not None else spec_for(model_config)
        _check_spec_levels(spec, model_config, "spec")
        return build_neck(
            spec,
            backbone_specs,
            filters=neck.filters,
            repeats=neck.repeats,
            use_separable_conv=neck.use_separable_conv,
            dropblock_keep_prob=neck.dropblock_keep_prob,
            dropblock_size=neck.dropblock_size,
            anytime=model_config.anytime,
            **norm_kwargs,
        )
    if neck.type == "fpn":
        if model_config.anytime:
            raise ValueError(
                "model.anytime needs a stacked neck (model.neck.type "
                "'nasfpn'); the FPN has a single pyramid."
            )
        if spec is not None:
            raise ValueError(
                "a neck spec was given but model.neck.type is 'fpn'"
            )
        return fpn.FPN(
            input_specs=backbone_specs,
            min_level=model_config.min_level,
            max_level=model_config.max_level,
            num_filters=neck.filters,
            use_separable_conv=neck.use_separable_conv,
            **norm_kwargs,
        )
    raise ValueError(f"model.neck.type: unknown {neck.type!r}")


def build_head(
    model_config: Any,
    kernel_regularizer: tf_keras.regularizers.Regularizer | None = None,
) -> dense_prediction_heads.RetinaNetHead:
    """Model Garden's RetinaNet class and box subnets."""
    head = model_config.head
    norm = model_config.norm
    return dense_prediction_heads.RetinaNetHead(
        min_level=model_config.min_level,
        max_level=model_config.max_level,
        num_classes=model_config.num_classes,
        num_anchors_per_location=anchors_per_location(model_config),
        num_convs=head.num_convs,
        num_filters=head.num_filters,
        use_separable_conv=head.use_separable_conv,
        activation=norm.activation,
        use_sync_bn=norm.use_sync_bn,
        norm_momentum=norm.momentum,
        norm_epsilon=norm.epsilon,
        kernel_regularizer=kernel_regularizer,
    )


def neck_repeats(model_config: Any) -> int:
    """Stacked pyramids of the neck (the FPN is one)."""
    neck = model_config.neck
    return neck.repeats if neck.type == "nasfpn" else 1


def anchors_per_location(model_config: Any) -> int:
    """Anchors at each feature-map cell: scales x aspect ratios."""
    cfg = model_config.anchor
    return cfg.num_scales * len(cfg.aspect_ratios)


def build_detection_generator(
    model_config: Any,
) -> detection_generator.MultilevelDetectionGenerator:
    """Model Garden's box decoding + NMS, configured by ``model.nms``."""
    nms = model_config.nms
    return detection_generator.MultilevelDetectionGenerator(
        apply_nms=True,
        pre_nms_top_k=nms.pre_nms_top_k,
        pre_nms_score_threshold=nms.score_threshold,
        nms_iou_threshold=nms.iou_threshold,
        max_num_detections=nms.max_detections,
        nms_version=nms.type,
    )


def _as_pair(size: int | Sequence[int] | None) -> tuple[Any, Any]:
    if size is None:
        return (None, None)
    if isinstance(size, int):
        return (size, size)
    size = tuple(size)
    if len(size) != 2:
        raise ValueError(f"input_size: expected (height, width), got {size}")
    return size


def build_detector(
    model_config: Any,
    spec: NeckSpec | None = None,
    l2_weight_decay: float = 0.0,
    input_size: int | Sequence[int] | None = None,
) -> DetectorModel:
    """Builds RetinaNet with the configured backbone, neck and head.

    Args:
        model_config: a ``ModelConfig`` (or an ``ExperimentConfig``).
        spec: the NAS-FPN topology; None resolves ``spec_for(config)``.
            Must be None for ``neck.type == "fpn"``.
        l2_weight_decay: L2 penalty on kernels (``train.l2_weight_decay``),
            collected in ``model.losses``.
        input_size: static (height, width) of the input images, or one int;
            None (the default) leaves the sides open, so the same model runs
            on ``image_size`` and on the parser's padded size (320 -> 384).

    Returns:
        A ``DetectorModel`` (Model Garden's ``RetinaNetModel``), built.
        ``model(images, image_shape=..., anchor_boxes=..., training=...)``
        returns ``cls_outputs`` / ``box_outputs``: level key ->
        [batch, ceil(H / 2**level), ceil(W / 2**level), A * num_classes] /
        [..., A * 4]; in inference also ``detection_boxes`` [batch,
        max_detections, 4] yxyx in pixels of the input image,
        ``detection_scores``, ``detection_classes`` [batch, max_detections]
        and ``num_detections`` [batch].
    """
    model_config = _model_config(model_config)
    regularizer = l2_regularizer(l2_weight_decay)
    height, width = _as_pair(input_size)
    input_specs = tf_keras.layers.InputSpec(
        shape=[None, height, width, IMAGE_CHANNELS]
    )
    backbone = build_backbone(model_config, input_specs, regularizer)
    decoder = build_decoder(
        model_config, spec, backbone.output_specs, regularizer
    )
    head = build_head(model_config, regularizer)
    anchor_cfg = model_config.anchor
    model = DetectorModel(
        backbone,
        decoder,
        head,
        build_detection_generator(model_config),
        min_level=model_config.min_level,
        max_level=model_config.max_level,
        num_scales=anchor_cfg.num_scales,
        aspect_ratios=list(anchor_cfg.aspect_ratios),
        anchor_size=anchor_cfg.anchor_size,
        anytime=model_config.anytime,
        repeats=neck_repeats(model_config),
    )
    # Builds every weight now, as Model Garden's factory does, so that
    # checkpoints and optimizers see them before the first step.
    # Open sides are probed at one cell of the coarsest level.
    probe = 2**model_config.max_level
    model(
        tf.zeros([1, height or probe, width or probe, IMAGE_CHANNELS]),
        training=False,
    )
    return model
