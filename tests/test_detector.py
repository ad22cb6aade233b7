"""Tests of nasfpn_tf.modeling.detector on tiny shapes."""

import dataclasses
import math
import pathlib

import numpy as np
import pytest
import tensorflow as tf
import tf_keras
from official.vision.modeling import retinanet_model
from official.vision.ops import anchor

from nasfpn_tf import config as config_lib
from nasfpn_tf.arch.known import NASFPN_SPEC
from nasfpn_tf.arch.spec import NeckSpec
from nasfpn_tf.modeling import detector
from nasfpn_tf.modeling.neck import NasFpnNeck

LEVELS = ("3", "4", "5", "6", "7")
NUM_CLASSES = 3
ANCHORS = 9  # 3 scales x 3 aspect ratios
# R50, NAS-FPN 7@256, 91 classes (configs/nasfpn_r50_640.yaml).
PAPER_PARAMS = 60_178_967
# float32 through ~200 layers; the same ops in the same order.
PARITY_ATOL = 1e-4
TINY = {
    "model": {
        "backbone": "resnet10",
        "backbone_width": 0.25,
        "image_size": 64,
        "num_classes": NUM_CLASSES,
        "neck": {"filters": 8, "repeats": 2},
        "head": {"num_convs": 1, "num_filters": 8},
        "nms": {"max_detections": 10},
    }
}
# A topology other than the published one: a top-down and a bottom-up pass.
OTHER_BLOCKS = (
    (5, "sum", (2, 3), False),
    (4, "attention", (1, 5), False),
    (3, "sum", (0, 6), True),
    (4, "sum", (7, 6), True),
    (5, "attention", (8, 5), True),
    (6, "sum", (9, 3), True),
    (7, "sum", (10, 4), True),
)


def tiny_model_config(**changes):
    config = config_lib.from_dict(TINY)
    if changes:
        config = config_lib.override(config, changes)
    return config.model


def images(size, batch=2):
    return tf.random.stateless_uniform([batch, size, size, 3], seed=(1, 2))


def grid(size, level):
    side = math.ceil(size / 2**level)
    return (side, side)


@pytest.fixture(scope="module")
def model():
    """The default tiny detector: open input sides, no anytime heads."""
    return detector.build_detector(tiny_model_config())


@pytest.fixture(scope="module")
def anytime_model():
    return detector.build_detector(tiny_model_config(**{"model.anytime": True}))


def test_is_model_gardens_retinanet_with_our_neck(model):
    assert isinstance(model, retinanet_model.RetinaNetModel)
    assert isinstance(model.decoder, NasFpnNeck)
    assert model.decoder.spec == NASFPN_SPEC
    assert model.repeats == 2 and not model.anytime


@pytest.mark.parametrize("size", [64, 96])
def test_training_outputs_have_a_shape_per_level(model, size):
    outputs = model(images(size), training=True)
    assert set(outputs) == {"cls_outputs", "box_outputs"}
    for level in LEVELS:
        side = grid(size, int(level))
        assert outputs["cls_outputs"][level].shape == (
            2,
            *side,
            ANCHORS * NUM_CLASSES,
        )
        assert outputs["box_outputs"][level].shape == (2, *side, ANCHORS * 4)


@pytest.mark.parametrize("size", [64, 96])
def test_inference_returns_detections(model, size):
    # 96 px is not divisible by 2**7: P7 is 1x1, P6 2x2, P5 3x3.
    shape = tf.constant([[size, size], [size - 8, size]], tf.float32)
    outputs = model(images(size), image_shape=shape, training=False)
    assert outputs["detection_boxes"].shape == (2, 10, 4)
    assert outputs["detection_scores"].shape == (2, 10)
    assert outputs["detection_classes"].shape == (2, 10)
    assert outputs["num_detections"].shape == (2,)
    num = outputs["num_detections"].numpy()
    assert np.all((num >= 0) & (num <= 10))
    boxes = outputs["detection_boxes"].numpy()
    # Detections are clipped to each image's own shape.
    assert boxes[1, :, 0::2].max() <= size - 8 + 1e-4
    assert boxes.min() >= 0.0


@pytest.mark.parametrize("size", [96, 320])
def test_anchor_grid_equals_feature_maps(model, size):
    boxes = anchor.Anchor(
        min_level=3,
        max_level=7,
        num_scales=3,
        aspect_ratios=[0.5, 1.0, 2.0],
        anchor_size=4.0,
        image_size=(size, size),
    ).multilevel_boxes
    outputs = model(images(size, batch=1), training=True)
    for level in LEVELS:
        feature = outputs["box_outputs"][level].shape[1:]
        assert boxes[level].shape == feature
        assert tuple(feature[:2]) == grid(size, int(level))


def test_320_runs_end_to_end_with_parser_anchors(model):
    size = 320  # NAS-FPNLite's input; 2**7 does not divide it
    boxes = anchor.Anchor(3, 7, 3, [0.5, 1.0, 2.0], 4.0, (size, size))
    anchors = {k: v[None] for k, v in boxes.multilevel_boxes.items()}
    outputs = model(images(size, batch=1), anchor_boxes=anchors)
    assert outputs["detection_boxes"].shape == (1, 10, 4)


def test_anchors_for_another_size_are_refused(model):
    boxes = anchor.Anchor(3, 7, 3, [0.5, 1.0, 2.0], 4.0, (128, 128))
    anchors = {k: v[None] for k, v in boxes.multilevel_boxes.items()}
    with pytest.raises(ValueError, match="another image size"):
        model(images(64, batch=1), anchor_boxes=anchors)


def test_detection_generator_follows_nms_config(model):
    config = model.detection_generator.get_config()
    assert config["nms_version"] == "batched"
    assert config["max_num_detections"] == 10
    assert config["pre_nms_score_threshold"] == 0.05
    assert config["nms_iou_threshold"] == 0.5


@pytest.mark.parametrize(
    "backbone,width,levels",
    [("resnet50", 0.25, 4), ("mobilenetv2", 0.25, 4)],
)
def test_other_backbones_build_and_run(backbone, width, levels):
    model = detector.build_detector(
        tiny_model_config(
            **{
                "model.backbone": backbone,
                "model.backbone_width": width,
                "model.neck.repeats": 1,
            }
        ),
        input_size=64,
    )
    assert len(model.backbone.output_specs) == levels
    outputs = model(images(64), training=False)
    assert outputs["cls_outputs"]["3"].shape == (2, 8, 8, 27)
    assert outputs["cls_outputs"]["7"].shape == (2, 1, 1, 27)
    assert outputs["detection_boxes"].shape == (2, 10, 4)


def test_fpn_neck_is_model_gardens():
    from official.vision.modeling.decoders import fpn

    model = detector.build_detector(
        tiny_model_config(**{"model.neck.type": "fpn"})
    )
    assert isinstance(model.decoder, fpn.FPN)
    assert model.repeats == 1
    outputs = model(images(96), training=True)
    assert outputs["cls_outputs"]["5"].shape == (2, 3, 3, 27)
    assert outputs["box_outputs"]["7"].shape == (2, 1, 1, 36)


def test_a_searched_spec_from_a_file_is_resolved(tmp_path):
    spec = NeckSpec.from_block_specs(OTHER_BLOCKS)
    assert spec != NASFPN_SPEC
    path = str(tmp_path / "best_spec.json")
    spec.save(path)
    model_config = tiny_model_config(**{"model.neck.arch": path})
    assert detector.spec_for(model_config) == spec


def test_a_non_published_spec_is_built():
    spec = NeckSpec.from_block_specs(OTHER_BLOCKS)
    # The spec argument wins over the config's (published) one.
    model = detector.build_detector(
        tiny_model_config(**{"model.neck.repeats": 1}), spec=spec
    )
    assert model.decoder.spec == spec
    outputs = model(images(64), training=True)
    assert outputs["cls_outputs"]["4"].shape == (2, 4, 4, 27)


def test_spec_levels_must_match_the_model():
    model_config = dataclasses.replace(tiny_model_config(), max_level=6)
    with pytest.raises(ValueError, match="levels 3..7"):
        detector.spec_for(model_config)


def test_fpn_refuses_a_spec_and_anytime():
    spec = NeckSpec.from_block_specs(OTHER_BLOCKS)
    fpn_config = tiny_model_config(**{"model.neck.type": "fpn"})
    with pytest.raises(ValueError, match="spec"):
        detector.build_detector(fpn_config, spec=spec)
    anytime = tiny_model_config(
        **{"model.neck.type": "fpn", "model.anytime": True}
    )
    with pytest.raises(ValueError, match="anytime"):
        detector.build_detector(anytime)


def test_l2_weight_decay_and_a_static_input_size(model):
    assert not model.losses
    decayed = detector.build_detector(
        tiny_model_config(**{"model.neck.repeats": 1}),
        l2_weight_decay=4e-5,
        input_size=(64, 96),
    )
    assert decayed.backbone.input_shape == (None, 64, 96, 3)
    outputs = decayed(tf.zeros([1, 64, 96, 3]), training=False)
    assert outputs["cls_outputs"]["3"].shape[1:3] == (8, 12)
    assert outputs["cls_outputs"]["7"].shape[1:3] == (1, 1)
    assert outputs["num_detections"].shape == (1,)
    # One term per regularized kernel: backbone, neck and head.
    assert len(decayed.losses) > 20
    kernel = decayed.head.trainable_variables[0]
    assert "kernel" in kernel.name
    # Model Garden halves the decay: l2(w / 2) * sum(x**2).
    expected = 2e-5 * float(tf.reduce_sum(kernel**2))
    values = [float(v) for v in decayed.losses]
    assert any(math.isclose(v, expected, rel_tol=1e-5) for v in values)
    with pytest.raises(ValueError, match="l2_weight_decay"):
        detector.l2_regularizer(-1.0)


def test_anytime_heads_per_repeat(anytime_model):
    assert anytime_model.anytime and anytime_model.repeats == 2
    outputs = anytime_model(images(64), training=True)
    per_repeat = outputs["repeat_outputs"]
    assert len(per_repeat) == 2
    assert per_repeat[-1]["cls_outputs"] is outputs["cls_outputs"]
    first, last = per_repeat[0]["cls_outputs"], per_repeat[1]["cls_outputs"]
    for level in LEVELS:
        assert first[level].shape == last[level].shape
    # Different pyramids, one shared head.
    assert not np.allclose(first["3"], last["3"])


def test_anytime_head_is_shared(model, anytime_model):
    # The same config without anytime: early exits add no weights.
    assert anytime_model.count_params() == model.count_params()
    assert len(anytime_model.trainable_variables) == len(
        model.trainable_variables
    )


def test_early_exit_equals_the_repeats_head(anytime_model):
    x = images(64)
    full = anytime_model(x, training=False)
    early = anytime_model(x, training=False, exit_repeat=0)
    assert "repeat_outputs" not in early
    np.testing.assert_allclose(
        early["cls_outputs"]["3"],
        full["repeat_outputs"][0]["cls_outputs"]["3"],
        atol=1e-6,
    )
    last = detector.detections_at(anytime_model, x, repeat=-1)
    np.testing.assert_allclose(
        last["detection_scores"], full["detection_scores"], atol=1e-6
    )
    first = detector.detections_at(anytime_model, x, repeat=0)
    assert set(first) == set(detector.DETECTION_KEYS)
    np.testing.assert_allclose(
        first["detection_scores"], early["detection_scores"], atol=1e-6
    )


def test_exit_repeat_is_checked(model, anytime_model):
    with pytest.raises(ValueError, match=r"exit_repeat must be in \[0, 2\)"):
        anytime_model(images(64), training=False, exit_repeat=2)
    with pytest.raises(ValueError, match="without anytime heads"):
        detector.detections_at(model, images(64), repeat=0)
    last = detector.detections_at(model, images(64), repeat=1)
    assert last["detection_boxes"].shape == (2, 10, 4)


def test_config_records_anytime(anytime_model):
    config = anytime_model.get_config()
    assert config["anytime"] is True and config["repeats"] == 2
    assert config["min_level"] == 3 and config["max_level"] == 7


def test_accepts_an_experiment_config():
    config = config_lib.from_dict(TINY)
    assert detector.spec_for(config) == NASFPN_SPEC
    assert detector.neck_repeats(config.model) == 2
    assert detector.anchors_per_location(config.model) == ANCHORS


def test_mixed_precision_detections_are_float32():
    import tf_keras

    tf_keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = detector.build_detector(
            tiny_model_config(**{"model.neck.repeats": 1})
        )
        outputs = model(images(64), training=False)
    finally:
        tf_keras.mixed_precision.set_global_policy("float32")
    assert outputs["cls_outputs"]["3"].dtype == tf.bfloat16
    assert outputs["detection_boxes"].dtype == tf.float32
    assert outputs["detection_scores"].dtype == tf.float32


def test_anytime_checkpoint_restores_into_a_fresh_model(
    anytime_model, tmp_path
):
    x = images(64)
    want = anytime_model(x, training=False, exit_repeat=0)["cls_outputs"]
    path = tf.train.Checkpoint(model=anytime_model).save(str(tmp_path / "c"))
    fresh = detector.build_detector(
        tiny_model_config(**{"model.anytime": True})
    )
    status = tf.train.Checkpoint(model=fresh).restore(path)
    status.assert_existing_objects_matched()
    got = fresh(x, training=False, exit_repeat=0)["cls_outputs"]
    np.testing.assert_allclose(got["3"], want["3"], atol=1e-6)


@pytest.mark.slow
def test_paper_config_is_model_gardens_retinanet_weight_for_weight():
    """configs/nasfpn_r50_640.yaml against Model Garden's RetinaNet with
    its nasfpn decoder, built by its own factory: equal parameter counts
    (the paper-scale 60,178,967), and once our weights are copied over,
    equal outputs at every level of backbone, neck and head."""
    from official.vision.configs import backbones as backbones_cfg
    from official.vision.configs import common as common_cfg
    from official.vision.configs import decoders as decoders_cfg
    from official.vision.configs import retinanet as retinanet_cfg
    from official.vision.modeling import factory

    from nasfpn_tf.modeling import port

    root = pathlib.Path(__file__).resolve().parents[1]
    config = config_lib.load_config([str(root / "configs/nasfpn_r50_640.yaml")])
    model = config.model
    # One device: sync BN changes no weight, only the statistics' reach.
    model = dataclasses.replace(
        model, norm=dataclasses.replace(model.norm, use_sync_bn=False)
    )
    size = model.image_size
    ours = detector.build_detector(model, input_size=size)
    theirs = factory.build_retinanet(
        tf_keras.layers.InputSpec(shape=[None, size, size, 3]),
        retinanet_cfg.RetinaNet(
            num_classes=model.num_classes,
            input_size=[size, size, 3],
            min_level=model.min_level,
            max_level=model.max_level,
            backbone=backbones_cfg.Backbone(
                type="resnet",
                resnet=backbones_cfg.ResNet(
                    model_id=50, depth_multiplier=model.backbone_width
                ),
            ),
            decoder=decoders_cfg.Decoder(
                type="nasfpn",
                nasfpn=decoders_cfg.NASFPN(
                    num_filters=model.neck.filters,
                    num_repeats=model.neck.repeats,
                ),
            ),
            head=retinanet_cfg.RetinaNetHead(
                num_convs=model.head.num_convs,
                num_filters=model.head.num_filters,
            ),
            norm_activation=common_cfg.NormActivation(use_sync_bn=False),
        ),
    )
    x = tf.random.stateless_normal([1, size, size, 3], (3, 4))
    theirs(x, training=False)  # every weight exists
    assert ours.count_params() == theirs.count_params() == PAPER_PARAMS
    theirs.backbone.set_weights(ours.backbone.get_weights())
    theirs.head.set_weights(ours.head.get_weights())
    port.to_model_garden(ours.decoder, theirs.decoder)
    got, want = _stages(ours, x), _stages(theirs, x)
    for stage, level in got:
        np.testing.assert_allclose(
            got[stage, level],
            want[stage, level],
            atol=PARITY_ATOL,
            err_msg=f"{stage} {level}",
        )
    assert {s for s, _ in got} == {"backbone", "neck", "scores", "boxes"}


def _stages(model, images):
    """(stage, level) -> output of backbone, neck and head (class scores,
    boxes) at every pyramid level, as both RetinaNets run them."""
    features = model.backbone(images, training=False)
    pyramid = model.decoder(features, training=False)
    pyramid = {level: pyramid[level] for level in LEVELS}
    scores, boxes, _ = model.head(pyramid, training=False)
    outputs = {}
    for level in LEVELS:
        if level in features:
            outputs["backbone", level] = features[level]
        outputs["neck", level] = pyramid[level]
        outputs["scores", level] = scores[level]
        outputs["boxes", level] = boxes[level]
    return outputs
