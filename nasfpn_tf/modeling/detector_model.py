"""The detector's Keras model: Model Garden's ``RetinaNetModel`` with
anytime (per-repeat) heads and early exits (``detections_at``), and a
check of the anchor grid against the head's outputs. ``detector.py``
builds it from a config (see its docstring for anchors and anytime
detection).
"""

from __future__ import annotations

import collections
from collections.abc import Mapping
from typing import Any

import tensorflow as tf
import tf_keras
from official.vision.modeling import retinanet_model
from official.vision.ops import anchor

from nasfpn_tf import compat
from nasfpn_tf.modeling.neck import anytime_key, level_key

# Keys of the model's output dict (Model Garden's names where it has them).
CLS_OUTPUTS = "cls_outputs"
BOX_OUTPUTS = "box_outputs"
# Anytime models: one {CLS_OUTPUTS, BOX_OUTPUTS} dict per neck repeat, the
# last being the final pyramid's.
REPEAT_OUTPUTS = "repeat_outputs"
DETECTION_KEYS = (
    "detection_boxes",
    "detection_scores",
    "detection_classes",
    "num_detections",
)


@tf_keras.utils.register_keras_serializable(package="nasfpn_tf")
class DetectorModel(retinanet_model.RetinaNetModel):
    """Model Garden's RetinaNet with optional anytime (per-repeat) heads.

    Args:
        backbone, decoder, head, detection_generator, min_level, max_level,
            num_scales, aspect_ratios, anchor_size: as for
            ``RetinaNetModel``.
        anytime: the decoder is a NAS-FPN neck built with ``anytime=True``;
            the head also runs on every earlier repeat.
        repeats: pyramids stacked in the decoder (1 for an FPN).
    """

    def __init__(
        self,
        backbone: tf_keras.Model,
        decoder: tf_keras.Model,
        head: tf_keras.layers.Layer,
        detection_generator: tf_keras.layers.Layer,
        min_level: int,
        max_level: int,
        num_scales: int,
        aspect_ratios: list[float],
        anchor_size: float,
        anytime: bool = False,
        repeats: int = 1,
        **kwargs,
    ):
        super().__init__(
            backbone,
            decoder,
            head,
            detection_generator,
            min_level=min_level,
            max_level=max_level,
            num_scales=num_scales,
            aspect_ratios=aspect_ratios,
            anchor_size=anchor_size,
            **kwargs,
        )
        if repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {repeats}")
        compat.retinanet_config(self).update(anytime=anytime, repeats=repeats)
        self._levels = [level_key(lv) for lv in range(min_level, max_level + 1)]
        self._backbone_levels = sorted(backbone.output_specs, key=int)
        # Early exits: the neck truncated after each earlier repeat. They
        # share the neck's layers (no new weights) and run only what the
        # exit needs.
        self._exits = []
        if anytime:
            outputs = decoder.output
            missing = [
                k
                for k in range(repeats - 1)
                if anytime_key(k, min_level) not in outputs
            ]
            if missing:
                raise ValueError(
                    "anytime: the decoder has no outputs for repeats "
                    f"{missing}; build the neck with anytime=True"
                )
            for k in range(repeats - 1):
                self._exits.append(
                    tf_keras.Model(
                        decoder.input,
                        {
                            level: outputs[anytime_key(k, int(level))]
                            for level in self._levels
                        },
                        name=f"exit_{k}",
                    )
                )

    @property
    def anytime(self) -> bool:
        return compat.retinanet_config(self)["anytime"]

    @property
    def repeats(self) -> int:
        return compat.retinanet_config(self)["repeats"]

    def _exit_index(self, exit_repeat: int | None) -> int | None:
        """Validates ``exit_repeat``; None means the final pyramid."""
        if exit_repeat is None:
            return None
        repeats = self.repeats
        if not -repeats <= exit_repeat < repeats:
            raise ValueError(
                f"exit_repeat must be in [0, {repeats}) for this model's "
                f"{repeats} neck repeats; got {exit_repeat}"
            )
        exit_repeat %= repeats
        if exit_repeat == repeats - 1:
            return None
        if not self.anytime:
            raise ValueError(
                f"exit_repeat={exit_repeat}: the model was built without "
                "anytime heads (model.anytime), so only the last repeat "
                f"({repeats - 1}) has a head"
            )
        return exit_repeat

    def call(
        self,
        images: tf.Tensor,
        image_shape: tf.Tensor | None = None,
        anchor_boxes: Mapping[str, tf.Tensor] | None = None,
        output_intermediate_features: bool = False,
        training: bool | None = None,
        exit_repeat: int | None = None,
    ) -> dict[str, Any]:
        """Forward pass.

        Args:
            images: [batch, height, width, 3] normalised images.
            image_shape: [batch, 2] (height, width) of the unpadded image;
                detections are clipped to it.
            anchor_boxes: level key -> [batch, H_l, W_l, 4 A] yxyx pixels
                (the parser's ``labels["anchor_boxes"]``); None generates
                them from the image size.
            output_intermediate_features: also return ``backbone_{level}``
                and ``decoder_{level}`` features.
            training: training mode (no post-processing).
            exit_repeat: 0-based neck repeat whose pyramid feeds the head
                (anytime models; negative counts from the end); None is
                the last. Only the repeats up to it are computed.

        Returns:
            ``cls_outputs`` and ``box_outputs`` (level key -> logits /
            encoded boxes), detections when not training, and for anytime
            models without ``exit_repeat`` also ``repeat_outputs``: one
            ``{cls_outputs, box_outputs}`` per repeat, the last equal to
            the top-level outputs.
        """
        exit_index = self._exit_index(exit_repeat)
        outputs: dict[str, Any] = {}
        features = self.backbone(images)
        # MobileNet also returns its last conv (no pyramid level) as "6".
        features = {k: features[k] for k in self._backbone_levels}
        if output_intermediate_features:
            outputs.update({f"backbone_{k}": v for k, v in features.items()})
        if exit_index is not None:
            pyramid = self._exits[exit_index](features)
            pyramids = [pyramid]
        else:
            decoded = self.decoder(features)
            pyramid = {k: decoded[k] for k in self._levels}
            pyramids = [
                {k: decoded[anytime_key(r, int(k))] for k in self._levels}
                for r in range(len(self._exits))
            ] + [pyramid]
        if output_intermediate_features:
            outputs.update({f"decoder_{k}": v for k, v in pyramid.items()})

        heads = []
        for features_r in pyramids:
            raw_scores, raw_boxes, _ = self.head(features_r)
            heads.append({CLS_OUTPUTS: raw_scores, BOX_OUTPUTS: raw_boxes})
        outputs.update(heads[-1])
        if self.anytime and exit_index is None:
            outputs[REPEAT_OUTPUTS] = heads
        if training:
            return outputs

        # Post-processing runs in float32 under mixed precision: batched
        # NMS has no bfloat16 kernel, and box decoding needs the precision.
        raw_scores = _float32(heads[-1][CLS_OUTPUTS])
        raw_boxes = _float32(heads[-1][BOX_OUTPUTS])
        anchor_boxes = _float32(self._anchors(images, raw_boxes, anchor_boxes))
        if image_shape is not None:
            image_shape = tf.cast(image_shape, tf.float32)
        detections = self.detection_generator(
            raw_boxes, raw_scores, anchor_boxes, image_shape
        )
        outputs.update({k: detections[k] for k in DETECTION_KEYS})
        return outputs

    def _anchors(
        self,
        images: tf.Tensor,
        raw_boxes: Mapping[str, tf.Tensor],
        anchor_boxes: Mapping[str, tf.Tensor] | None,
    ) -> dict[str, tf.Tensor]:
        """Batched anchors whose grid matches the head's outputs."""
        batch = tf.shape(images)[0]
        if anchor_boxes is None:
            height, width = images.shape[1], images.shape[2]
            if height is None or width is None:
                raise ValueError(
                    "images need a static height and width to generate "
                    "anchors; pass anchor_boxes otherwise"
                )
            cfg = compat.retinanet_config(self)
            grid = anchor.Anchor(
                min_level=cfg["min_level"],
                max_level=cfg["max_level"],
                num_scales=cfg["num_scales"],
                aspect_ratios=cfg["aspect_ratios"],
                anchor_size=cfg["anchor_size"],
                image_size=(height, width),
            ).multilevel_boxes
            anchor_boxes = {
                k: tf.tile(v[None], [batch, 1, 1, 1]) for k, v in grid.items()
            }
        anchor_boxes = collections.OrderedDict(
            (k, anchor_boxes[k]) for k in self._levels
        )
        for level in self._levels:
            want = raw_boxes[level].shape[1:]
            got = anchor_boxes[level].shape[1:]
            known = want.is_fully_defined() and got.is_fully_defined()
            if known and want != got:
                raise ValueError(
                    f"anchor_boxes[{level!r}] has shape {got} per image "
                    f"but the head predicts {want}: the anchors were made "
                    "for another image size"
                )
        return anchor_boxes


def _float32(tensors: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    return collections.OrderedDict(
        (k, tf.cast(v, tf.float32)) for k, v in tensors.items()
    )


def detections_at(
    model: DetectorModel,
    images: tf.Tensor,
    repeat: int,
    image_shape: tf.Tensor | None = None,
    anchor_boxes: Mapping[str, tf.Tensor] | None = None,
) -> dict[str, tf.Tensor]:
    """Detections of an early exit after neck repeat ``repeat`` (0-based).

    Returns:
        ``detection_boxes`` [batch, max_detections, 4] yxyx pixels,
        ``detection_scores``, ``detection_classes`` [batch,
        max_detections], ``num_detections`` [batch].
    """
    outputs = model(
        images,
        image_shape=image_shape,
        anchor_boxes=anchor_boxes,
        training=False,
        exit_repeat=repeat,
    )
    return {k: outputs[k] for k in DETECTION_KEYS}
