"""The NAS-FPN neck, and its equality with Model Garden's decoder."""

import json

import numpy as np
import pytest
import tensorflow as tf
import tf_keras
from official.vision.modeling.backbones import resnet
from official.vision.modeling.decoders import nasfpn as mg_nasfpn
from official.vision.modeling.heads import dense_prediction_heads

from nasfpn_tf.arch.known import NASFPN_SPEC
from nasfpn_tf.arch.spec import CellSpec, NeckSpec
from nasfpn_tf.modeling import port
from nasfpn_tf.modeling.neck import NasFpnNeck, anytime_key, build_neck

# Paper-scale figures: R50 backbone, 7 repeats at 256, 640x640 input.
NECK_PARAMS_R50_7_256 = 29_885_440
RETINANET_PARAMS_R50_7_256 = 60_178_967


def _specs(size=128, channels=(16, 24, 32, 48)):
    """Backbone-like inputs: levels 2..5 of a size x size image."""
    return {
        str(level): tf.TensorShape(
            [None, -(-size // 2**level), -(-size // 2**level), c]
        )
        for level, c in zip(range(2, 6), channels)
    }


def _features(specs, batch=2, seed=0):
    rng = np.random.default_rng(seed)
    return {
        k: rng.standard_normal([batch] + v.as_list()[1:]).astype(np.float32)
        for k, v in specs.items()
    }


# A non-published spec: intermediate P5 and P6 cells, outputs in another
# order, and an unused intermediate node (6) summed into the P6 output.
CUSTOM = NeckSpec(
    (
        CellSpec((0, 2), 5, "sum"),
        CellSpec((4, 1), 6, "global_attention"),
        CellSpec((5, 3), 7, "global_attention", True),
        CellSpec((0, 5), 3, "sum", True),
        CellSpec((8, 1), 4, "global_attention", True),
        CellSpec((9, 5), 5, "sum", True),
        CellSpec((10, 7), 6, "sum", True),
    )
)
# A cell after the P3 output that nothing reads: dead (no output is built
# after it at its level, so it is not summed in either).
WITH_DEAD_CELL = NeckSpec(
    (
        CellSpec((0, 2), 5, "sum"),
        CellSpec((4, 1), 6, "global_attention"),
        CellSpec((5, 3), 7, "global_attention", True),
        CellSpec((0, 5), 3, "sum", True),
        CellSpec((8, 0), 3, "sum"),
        CellSpec((8, 1), 4, "global_attention", True),
        CellSpec((10, 5), 5, "sum", True),
        CellSpec((11, 7), 6, "sum", True),
    )
)


def test_published_spec_r50_640_param_counts_equal_model_garden():
    backbone = resnet.ResNet(
        model_id=50,
        input_specs=tf_keras.layers.InputSpec(shape=[None, 640, 640, 3]),
    )
    neck = build_neck(
        NASFPN_SPEC, backbone.output_specs, filters=256, repeats=7
    )
    assert neck.count_params() == NECK_PARAMS_R50_7_256
    head = dense_prediction_heads.RetinaNetHead(
        min_level=3, max_level=7, num_classes=91, num_anchors_per_location=9
    )
    head({k: tf_keras.Input(v[1:]) for k, v in neck.output_specs.items()})
    total = backbone.count_params() + neck.count_params() + head.count_params()
    assert total == RETINANET_PARAMS_R50_7_256


@pytest.mark.parametrize("training", [False, True])
def test_outputs_equal_model_garden_given_its_weights(training):
    specs = _specs()
    theirs = mg_nasfpn.NASFPN(input_specs=specs, num_filters=256, num_repeats=2)
    ours = build_neck(None, specs, filters=256, repeats=2)
    assert ours.count_params() == theirs.count_params()
    x = _features(specs)
    before = ours(x, training=training)["3"]
    assert float(tf.reduce_max(tf.abs(before - theirs(x)["3"]))) > 1e-3
    copied = port.from_model_garden(theirs, ours)
    assert copied == theirs.count_params()
    got, expect = ours(x, training=training), theirs(x, training=training)
    assert sorted(got) == sorted(expect) == ["3", "4", "5", "6", "7"]
    for level in expect:
        assert got[level].shape == expect[level].shape
        diff = float(tf.reduce_max(tf.abs(got[level] - expect[level])))
        assert diff <= 1e-5, (level, diff)


def test_weights_port_back_to_model_garden():
    specs = _specs()
    ours = build_neck(None, specs, filters=256, repeats=1)
    theirs = mg_nasfpn.NASFPN(input_specs=specs, num_filters=256, num_repeats=1)
    port.to_model_garden(ours, theirs)
    x = _features(specs)
    np.testing.assert_allclose(ours(x)["7"], theirs(x)["7"], atol=1e-5)


def test_custom_spec_equals_model_garden_with_its_block_specs():
    specs = _specs()
    blocks = mg_nasfpn.build_block_specs(CUSTOM.to_block_specs())
    theirs = mg_nasfpn.NASFPN(
        input_specs=specs, block_specs=blocks, num_filters=256, num_repeats=1
    )
    ours = build_neck(CUSTOM, specs, filters=256, repeats=1)
    assert ours.count_params() == theirs.count_params()
    port.from_model_garden(theirs, ours)
    x = _features(specs)
    got, expect = ours(x), theirs(x)
    for level in expect:
        np.testing.assert_allclose(got[level], expect[level], atol=1e-5)


def test_narrow_width_has_no_spurious_projections():
    # Model Garden adds a 1x1 conv + BN to every resampling at widths other
    # than 256; inside the cells every node already has the neck's width.
    specs = _specs()
    ours = build_neck(None, specs, filters=16, repeats=1)
    theirs = mg_nasfpn.NASFPN(input_specs=specs, num_filters=16, num_repeats=1)
    convs = [
        l for l in ours.leaf_layers() if isinstance(l, tf_keras.layers.Conv2D)
    ]
    # 3 input projections + 7 cells.
    assert len(convs) == 10
    assert ours.count_params() < theirs.count_params()
    outputs = ours(_features(specs))
    assert all(v.shape[-1] == 16 for v in outputs.values())


def test_sizes_not_divisible_by_largest_stride():
    # The Lite model runs at 320x320: P6 is 5x5 and P7 3x3.
    specs = _specs(size=320)
    neck = build_neck(
        None, specs, filters=8, repeats=2, use_separable_conv=True
    )
    outputs = neck(_features(specs, batch=1))
    assert {k: tuple(v.shape[1:3]) for k, v in outputs.items()} == {
        "3": (40, 40),
        "4": (20, 20),
        "5": (10, 10),
        "6": (5, 5),
        "7": (3, 3),
    }


def test_inconsistent_backbone_sizes_are_a_clear_error():
    specs = _specs()
    specs["4"] = tf.TensorShape([None, 5, 5, 24])
    with pytest.raises(ValueError, match="level 4 has size 5"):
        build_neck(None, specs, filters=8, repeats=1)


def test_backbone_without_min_level_is_a_clear_error():
    specs = {k: v for k, v in _specs().items() if k in ("4", "5")}
    with pytest.raises(ValueError, match="must provide level 3"):
        build_neck(None, specs, filters=8, repeats=1)


def test_dead_cells_build_no_weights():
    assert CUSTOM.extra_inputs()[-1] == (6,)
    live = WITH_DEAD_CELL.live_cells()
    assert live == (True,) * 4 + (False,) + (True,) * 3
    neck = build_neck(WITH_DEAD_CELL, _specs(), filters=8, repeats=2)
    assert len(neck._cells) == 2 * live.count(True)


def test_config_keeps_spec_and_rebuilds_equal_model():
    specs = _specs()
    neck = build_neck(
        CUSTOM,
        specs,
        filters=8,
        repeats=2,
        use_separable_conv=True,
        norm_momentum=0.9,
        dropblock_keep_prob=0.9,
        kernel_regularizer=tf_keras.regularizers.L2(1e-4),
        name="neck",
    )
    config = json.loads(json.dumps(neck.get_config()))
    assert NeckSpec.from_dict(config["spec"]) == CUSTOM
    assert config["filters"] == 8 and config["repeats"] == 2
    clone = NasFpnNeck.from_config(config)
    assert clone.spec == CUSTOM
    clone.set_weights(neck.get_weights())
    x = _features(specs)
    for level, value in neck(x).items():
        np.testing.assert_allclose(clone(x)[level], value, atol=1e-6)


def test_saved_and_reloaded_neck_is_the_searched_one(tmp_path):
    specs = _specs()
    neck = build_neck(CUSTOM, specs, filters=8, repeats=1)
    path = str(tmp_path / "neck.keras")
    neck.save(path)
    loaded = tf_keras.models.load_model(path)
    assert isinstance(loaded, NasFpnNeck)
    assert loaded.spec == CUSTOM
    x = _features(specs)
    np.testing.assert_allclose(loaded(x)["5"], neck(x)["5"], atol=1e-6)


def test_anytime_outputs_every_repeat():
    neck = build_neck(None, _specs(), filters=8, repeats=3, anytime=True)
    outputs = neck(_features(_specs()))
    for repeat in (0, 1):
        for level in range(3, 8):
            assert outputs[anytime_key(repeat, level)].shape[-1] == 8
    assert set(neck.output_specs) == {"3", "4", "5", "6", "7"}
