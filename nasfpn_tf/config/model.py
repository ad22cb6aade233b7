"""Config sections of the detector: `model` and its neck, anchors,
heads, norm and NMS."""

from __future__ import annotations

import dataclasses

from nasfpn_tf.arch import spec as spec_lib
from nasfpn_tf.config.checks import (
    ConfigError,
    _choice,
    _fraction,
    _image_size,
    _non_negative,
    _positive,
)

BACKBONES = ("resnet10", "resnet18", "resnet50", "resnet101", "mobilenetv2")
NECK_TYPES = ("nasfpn", "fpn")
NMS_TYPES = ("batched", "v2", "v1")
ACTIVATIONS = ("relu", "relu6", "swish", "hard_swish")


@dataclasses.dataclass(frozen=True)
class NeckConfig:
    """The feature pyramid between backbone and heads.

    Attributes:
        type: "nasfpn" (merging cells from a spec) or "fpn" (top-down FPN).
        filters: channels of every pyramid level.
        repeats: how many times the NAS-FPN cell stack is stacked.
        use_separable_conv: separable 3x3 convs in cells (NAS-FPNLite).
        dropblock_keep_prob: DropBlock keep probability in cells; None
            turns DropBlock off.
        dropblock_size: DropBlock square size in pixels of the feature map.
        arch: path of a spec JSON (e.g. a search's best_spec.json); None
            means the published NAS-FPN spec.
    """

    type: str = "nasfpn"
    filters: int = 16
    repeats: int = 2
    use_separable_conv: bool = False
    dropblock_keep_prob: float | None = None
    dropblock_size: int = 3
    arch: str | None = None

    def __post_init__(self):
        _choice("model.neck.type", self.type, NECK_TYPES)
        _positive("model.neck.filters", self.filters)
        _positive("model.neck.repeats", self.repeats)
        if self.dropblock_keep_prob is not None:
            _fraction(
                "model.neck.dropblock_keep_prob",
                self.dropblock_keep_prob,
                low_open=True,
            )
        _positive("model.neck.dropblock_size", self.dropblock_size)
        if self.arch is not None and not self.arch:
            raise ConfigError(
                "model.neck.arch must be a spec JSON path or null; got ''."
            )


@dataclasses.dataclass(frozen=True)
class AnchorConfig:
    """RetinaNet anchors: `num_scales` octave scales x aspect ratios.

    `anchor_size` is the base anchor side in units of the level's stride.
    An anchor is positive when its IoU with a box is >= `match_threshold`
    and negative below `unmatched_threshold` (between: ignored); each box
    also gets its best anchor, whatever its IoU (Model Garden's matcher).
    `python -m nasfpn_tf.data.stats` shows how well they fit a data set.
    """

    num_scales: int = 3
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    anchor_size: float = 1.5
    match_threshold: float = 0.5
    unmatched_threshold: float = 0.5

    def __post_init__(self):
        _positive("model.anchor.num_scales", self.num_scales)
        if not self.aspect_ratios:
            raise ConfigError("model.anchor.aspect_ratios must not be empty.")
        for ratio in self.aspect_ratios:
            _positive("model.anchor.aspect_ratios[*]", ratio)
        _positive("model.anchor.anchor_size", self.anchor_size)
        _fraction("model.anchor.match_threshold", self.match_threshold)
        if not 0 <= self.unmatched_threshold <= self.match_threshold:
            raise ConfigError(
                "model.anchor.unmatched_threshold must be in [0, "
                f"match_threshold={self.match_threshold}]; got "
                f"{self.unmatched_threshold}."
            )


@dataclasses.dataclass(frozen=True)
class HeadConfig:
    """RetinaNet class and box heads, shared across levels."""

    num_convs: int = 2
    num_filters: int = 16
    use_separable_conv: bool = False

    def __post_init__(self):
        _non_negative("model.head.num_convs", self.num_convs)
        _positive("model.head.num_filters", self.num_filters)


@dataclasses.dataclass(frozen=True)
class NormConfig:
    """Batch norm and activation used by backbone, neck and heads."""

    activation: str = "relu"
    momentum: float = 0.99
    epsilon: float = 1e-3
    use_sync_bn: bool = False

    def __post_init__(self):
        _choice("model.norm.activation", self.activation, ACTIVATIONS)
        if not 0 < self.momentum < 1:
            raise ConfigError(
                f"model.norm.momentum must be in (0, 1); got {self.momentum}."
            )
        _positive("model.norm.epsilon", self.epsilon)


@dataclasses.dataclass(frozen=True)
class NmsConfig:
    """Post-processing by Model Garden's detection generator.

    `type` is its `nms_version`. `pre_nms_top_k` boxes per image enter NMS
    with "v1" and "v2" only: Model Garden's "batched" path takes every box
    above `score_threshold` and ignores it.
    """

    type: str = "batched"
    pre_nms_top_k: int = 1000
    iou_threshold: float = 0.5
    score_threshold: float = 0.05
    max_detections: int = 100

    def __post_init__(self):
        _choice("model.nms.type", self.type, NMS_TYPES)
        _positive("model.nms.pre_nms_top_k", self.pre_nms_top_k)
        _fraction("model.nms.iou_threshold", self.iou_threshold, low_open=True)
        _fraction("model.nms.score_threshold", self.score_threshold)
        _positive("model.nms.max_detections", self.max_detections)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """RetinaNet with a NAS-FPN (or FPN) neck.

    Attributes:
        backbone: one of BACKBONES, built by Model Garden.
        backbone_width: channel multiplier of the backbone (ResNet
            `depth_multiplier`, MobileNet `filter_size_scale`); 1.0 is the
            published width.
        image_size: side of the square input in pixels.
        num_classes: classes including background, as Model Garden counts
            them (class 0 is background).
        min_level: finest pyramid level (stride 2**min_level).
        max_level: coarsest pyramid level; both within a spec's bounds
            (`arch.spec.MIN_LEVEL_BOUND` .. `MAX_LEVEL_BOUND`).
        anytime: attach a head after every neck repeat (anytime detection,
            paper Sec. 3), not only after the last.
    """

    backbone: str = "resnet10"
    backbone_width: float = 0.25
    image_size: int = 128
    num_classes: int = 3
    min_level: int = 3
    max_level: int = 7
    neck: NeckConfig = dataclasses.field(default_factory=NeckConfig)
    anchor: AnchorConfig = dataclasses.field(default_factory=AnchorConfig)
    head: HeadConfig = dataclasses.field(default_factory=HeadConfig)
    norm: NormConfig = dataclasses.field(default_factory=NormConfig)
    anytime: bool = False
    nms: NmsConfig = dataclasses.field(default_factory=NmsConfig)

    def __post_init__(self):
        _choice("model.backbone", self.backbone, BACKBONES)
        _positive("model.backbone_width", self.backbone_width)
        _image_size("model.image_size", self.image_size)
        if self.num_classes < 2:
            raise ConfigError(
                "model.num_classes counts background too and must be >= 2; "
                f"got {self.num_classes}."
            )
        for name in ("min_level", "max_level"):
            if not (
                spec_lib.MIN_LEVEL_BOUND
                <= getattr(self, name)
                <= spec_lib.MAX_LEVEL_BOUND
            ):
                raise ConfigError(
                    f"model.{name} must be in {spec_lib.MIN_LEVEL_BOUND}.."
                    f"{spec_lib.MAX_LEVEL_BOUND}; got {getattr(self, name)}."
                )
        if self.min_level >= self.max_level:
            raise ConfigError(
                f"model.min_level ({self.min_level}) must be below "
                f"model.max_level ({self.max_level})."
            )
