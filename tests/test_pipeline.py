"""Tests for nasfpn_tf.data.pipeline."""

import logging

import numpy as np
import pytest
import tensorflow as tf
from official.vision.data import tf_example_builder

from nasfpn_tf.data import pipeline, synthetic

# Small pyramids keep the parser's graph (and the tests) cheap.
LEVELS = {"min_level": 3, "max_level": 5}
BACKGROUND = -1


def _example(image, boxes=(), classes=(), source_id=1, encoded=None):
    """A serialized tf.Example; boxes are [ymin, xmin, ymax, xmax] in [0, 1]."""
    if encoded is None:
        encoded = tf.io.encode_png(image).numpy()
    h, w = image.shape[:2]
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    builder = tf_example_builder.TfExampleBuilder()
    builder.add_encoded_image_feature(
        encoded, "PNG", h, w, 3, str(source_id).encode()
    )
    builder.add_boxes_feature(
        boxes[:, 1].tolist(),
        boxes[:, 3].tolist(),
        boxes[:, 0].tolist(),
        boxes[:, 2].tolist(),
        list(classes),
    )
    return builder.serialized_example


def _image(size, seed=0):
    return np.random.default_rng(seed).integers(
        0, 255, (size, size, 3), np.uint8
    )


def _write(path, records):
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in records:
            writer.write(record)
    return str(path)


@pytest.fixture
def records_file(tmp_path):
    records = [
        _example(_image(64, i), [[0.1, 0.2, 0.6, 0.7]], [i % 3 + 1], i + 1)
        for i in range(6)
    ]
    return _write(tmp_path / "a.tfrecord", records)


def _numpy_anchors(size, level, num_scales, ratios, anchor_size):
    """Anchors of one level by hand: [h_l, w_l, A, 4] yxyx pixels."""
    stride = 2**level
    centres = (np.arange(size // stride) + 0.5) * stride
    boxes = []
    for scale in range(num_scales):
        for ratio in ratios:
            side = anchor_size * stride * 2 ** (scale / num_scales)
            half_w, half_h = side * ratio**0.5 / 2, side * ratio**-0.5 / 2
            cy, cx = np.meshgrid(centres, centres, indexing="ij")
            boxes.append(
                np.stack(
                    [cy - half_h, cx - half_w, cy + half_h, cx + half_w], -1
                )
            )
    return np.stack(boxes, axis=2)


def _iou(anchors, box):
    y0 = np.maximum(anchors[..., 0], box[0])
    x0 = np.maximum(anchors[..., 1], box[1])
    y1 = np.minimum(anchors[..., 2], box[2])
    x1 = np.minimum(anchors[..., 3], box[3])
    inter = np.clip(y1 - y0, 0, None) * np.clip(x1 - x0, 0, None)
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    return inter / (area(anchors) + area(np.asarray(box)) - inter)


def test_targets_match_hand_computed_anchors_for_one_box():
    # One 32x32 box centred on P3 cell (row 2, col 3): it equals the P3
    # anchor of scale 2**0 and aspect ratio 1 there.
    box = np.array([4.0, 12.0, 36.0, 44.0])
    config = pipeline.InputConfig(
        image_size=64, min_level=3, max_level=6, anchor_size=4.0
    )
    parse = pipeline.make_parse_fn(config, is_training=False)
    _, labels = parse(_example(_image(64), [box / 64], [2]))
    ratios = config.aspect_ratios
    per_location = len(ratios) * config.num_scales
    total = 0
    for level in range(3, 7):
        key = str(level)
        side = 64 // 2**level
        anchors = _numpy_anchors(64, level, config.num_scales, ratios, 4.0)
        got = labels["anchor_boxes"][key].numpy().reshape(side, side, -1, 4)
        np.testing.assert_allclose(got, anchors, atol=1e-4)
        cls = labels["cls_targets"][key].numpy()
        assert cls.shape == (side, side, per_location)
        expected = np.where(_iou(anchors, box) >= 0.5, 2, BACKGROUND)
        np.testing.assert_array_equal(cls, expected)
        total += side * side * per_location
    assert total == (64 + 16 + 4 + 1) * 9 == labels["cls_weights"].shape[0]
    # The exact anchor (scale 0, ratio 1.0 -> index 1) is positive with a
    # zero regression target.
    assert labels["cls_targets"]["3"][2, 3, 1] == 2
    np.testing.assert_allclose(
        labels["box_targets"]["3"][2, 3, 4:8], 0, atol=1e-6
    )
    positives = sum(
        int((labels["cls_targets"][str(lv)].numpy() > 0).sum())
        for lv in range(3, 7)
    )
    assert labels["box_weights"].numpy().sum() == positives
    np.testing.assert_array_equal(labels["cls_weights"].numpy(), 1.0)


def test_eager_and_tf_data_agree(records_file):
    kwargs = dict(image_size=64, max_num_instances=4, **LEVELS)
    dataset = pipeline.build_dataset(
        records_file,
        pipeline.InputConfig(**kwargs),
        is_training=False,
        batch_size=1,
    )
    parse = pipeline.make_parse_fn(
        pipeline.InputConfig(**kwargs), is_training=False
    )
    raw = next(iter(tf.data.TFRecordDataset(records_file)))
    eager = parse(raw)
    batched = next(iter(dataset))
    flat_eager = tf.nest.flatten(eager)
    flat_batched = tf.nest.flatten(batched)
    assert len(flat_eager) == len(flat_batched)
    for a, b in zip(flat_eager, flat_batched):
        np.testing.assert_allclose(a.numpy(), b.numpy()[0], atol=1e-6)


@pytest.mark.parametrize("is_training", [True, False])
def test_static_shapes(records_file, is_training):
    dataset = pipeline.build_dataset(
        records_file,
        pipeline.InputConfig(
            image_size=64,
            max_num_instances=5,
            aug_scale_min=0.5,
            aug_scale_max=1.5,
            cache=is_training,
            **LEVELS,
        ),
        is_training=is_training,
        batch_size=2,
        seed=0,
    )
    images, labels = dataset.element_spec
    assert images.shape == (2, 64, 64, 3) and images.dtype == tf.float32
    for spec in tf.nest.flatten(labels):
        assert spec.shape.is_fully_defined(), spec
    assert labels["cls_targets"]["5"].shape == (2, 2, 2, 9)
    assert labels["box_targets"]["3"].shape == (2, 8, 8, 36)
    assert ("groundtruths" in labels) == (not is_training)
    if not is_training:
        assert labels["groundtruths"]["boxes"].shape == (2, 5, 4)
    batches = list(dataset.take(4))  # 8 images from 6: training repeats
    assert len(batches) == (4 if is_training else 3)


def test_size_not_a_multiple_is_padded(tmp_path):
    assert pipeline.padded_image_size(320, 7) == (384, 384)
    assert pipeline.padded_image_size(640, 7) == (640, 640)
    assert pipeline.padded_image_size((320, 480), 7, pad=False) == (320, 480)
    path = _write(tmp_path / "r.tfrecord", [_example(_image(80), [], [])])
    dataset = pipeline.build_dataset(
        path,
        pipeline.InputConfig(image_size=40, **LEVELS),
        is_training=False,
        batch_size=1,
    )
    images, labels = next(iter(dataset))
    assert images.shape == (1, 64, 64, 3)
    # The 80 px picture is scaled to 40 and zero-padded bottom/right.
    np.testing.assert_allclose(labels["image_info"][0, 1], [40, 40])
    np.testing.assert_allclose(labels["image_info"][0, 2], [0.5, 0.5])
    assert not np.any(images[0, 40:].numpy()) and np.any(images[0, :40, :40])
    assert labels["cls_targets"]["5"].shape == (1, 2, 2, 9)


def test_image_without_boxes_is_all_background(tmp_path):
    path = _write(tmp_path / "r.tfrecord", [_example(_image(64), [], [])])
    dataset = pipeline.build_dataset(
        path,
        pipeline.InputConfig(image_size=64, **LEVELS),
        is_training=False,
        batch_size=1,
    )
    _, labels = next(iter(dataset))
    for level in labels["cls_targets"].values():
        assert np.all(level.numpy() == BACKGROUND)
    assert labels["box_weights"].numpy().sum() == 0
    assert labels["cls_weights"].numpy().min() == 1.0


def test_autotune_follows_the_config_and_children_turn_it_off(records_file):
    from nasfpn_tf import config as config_lib

    for autotune in (True, False):
        dataset = pipeline.build_dataset(
            records_file,
            pipeline.InputConfig(image_size=64, autotune=autotune, **LEVELS),
            is_training=True,
            batch_size=2,
            seed=1,
        )
        assert dataset.options().autotune.enabled is autotune
    default = config_lib.ExperimentConfig()
    assert pipeline.InputConfig.from_experiment(default).autotune
    child = config_lib.proxy_experiment(default)
    assert not pipeline.InputConfig.from_experiment(child).autotune


def test_children_augment_deterministically_and_full_trainings_in_parallel():
    """A search's children parse training images in order, so a seed
    gives one child (`test_trainer`'s rungs test checks the weights)."""
    from nasfpn_tf import config as config_lib

    default = config_lib.ExperimentConfig()
    child = config_lib.proxy_experiment(default)
    assert not pipeline.InputConfig.from_experiment(
        default
    ).deterministic_augmentation
    assert pipeline.InputConfig.from_experiment(
        child
    ).deterministic_augmentation


def test_corrupt_records_are_skipped_not_fatal(tmp_path, caplog):
    good = [
        _example(_image(64, i), [[0.1, 0.1, 0.5, 0.5]], [1], i + 1)
        for i in range(3)
    ]
    _write(tmp_path / "a.tfrecord", good)
    b = _write(tmp_path / "b.tfrecord", good)
    data = (tmp_path / "b.tfrecord").read_bytes()
    (tmp_path / "b.tfrecord").write_bytes(data[:-10])  # last record cut
    bad_image = _example(_image(64), encoded=b"\x89PNG not really")
    c = _write(tmp_path / "c.tfrecord", [good[0], bad_image, good[1]])
    pattern = str(tmp_path / "*.tfrecord")
    dataset = pipeline.build_dataset(
        pattern,
        pipeline.InputConfig(image_size=64, **LEVELS),
        is_training=False,
        batch_size=1,
        drop_remainder=False,
    )
    assert len(list(dataset)) == 3 + 2 + 2
    with caplog.at_level(logging.WARNING):
        audit = pipeline.audit_records(pattern)
    assert audit == pipeline.RecordAudit(
        files=3, records=8, undecodable=1, corrupt_files=(b,)
    )
    assert audit.usable == 7
    assert "corrupt file(s)" in caplog.text and b in caplog.text
    strict = pipeline.build_dataset(
        c,
        pipeline.InputConfig(image_size=64, **LEVELS),
        is_training=False,
        batch_size=1,
        skip_errors=False,
    )
    with pytest.raises(tf.errors.InvalidArgumentError):
        list(strict)


def test_input_context_shards_records_and_splits_the_batch(records_file):
    context = tf.distribute.InputContext(
        num_input_pipelines=2, input_pipeline_id=1, num_replicas_in_sync=2
    )
    dataset = pipeline.build_dataset(
        records_file,
        pipeline.InputConfig(image_size=64, **LEVELS),
        is_training=False,
        batch_size=2,
        input_context=context,
    )
    ids = [int(labels["groundtruths"]["source_id"][0]) for _, labels in dataset]
    assert ids == [2, 4, 6]  # every second record, one per replica batch


def test_training_order_is_reproducible_with_a_seed(records_file):
    # MG's augmentations draw from stateful random ops inside a parallel map,
    # so a seed pins the record order, not which image gets which draw.
    def first_images():
        dataset = pipeline.build_dataset(
            records_file,
            pipeline.InputConfig(
                image_size=64,
                aug_scale_min=1.0,
                aug_scale_max=1.0,
                aug_rand_hflip=False,
                **LEVELS,
            ),
            is_training=True,
            batch_size=3,
            seed=3,
        )
        return [images.numpy() for images, _ in dataset.take(3)]

    first, second = first_images(), first_images()
    np.testing.assert_array_equal(first, second)
    # Shuffled: the first image is not the file's first record.
    parse = pipeline.make_parse_fn(
        pipeline.InputConfig(image_size=64, **LEVELS), is_training=False
    )
    image, _ = parse(next(iter(tf.data.TFRecordDataset(records_file))))
    assert not np.array_equal(first[0][0], image.numpy())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"image_size": 0}, "image_size"),
        ({"image_size": (64, 64, 3)}, "image_size"),
        ({"min_level": 6, "max_level": 5}, "min_level"),
        ({"aug_scale_min": 1.5, "aug_scale_max": 1.0}, "aug_scale_min"),
        ({"dtype": "int8"}, "dtype"),
        ({"shuffle_buffer": 0}, "shuffle_buffer"),
        ({"match_threshold": 0.3, "unmatched_threshold": 0.4}, "thresholds"),
    ],
)
def test_bad_settings_name_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        pipeline.InputConfig(**kwargs)


def test_bad_batch_size_is_named(records_file):
    with pytest.raises(ValueError, match="batch_size"):
        pipeline.build_dataset(records_file, is_training=False, batch_size=0)


def test_pattern_matching_nothing_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="does not match any files"):
        pipeline.build_dataset(
            str(tmp_path / "*.tfrecord"),
            pipeline.InputConfig(image_size=64),
            is_training=False,
            batch_size=1,
        )


@pytest.mark.slow
def test_synthetic_set_feeds_the_full_pyramid(tmp_path):
    outputs = synthetic.generate_tfrecords(
        str(tmp_path), {"train": 8, "val": 4}, image_size=128
    )
    dataset = pipeline.build_dataset(
        outputs["train"].file_pattern,
        pipeline.InputConfig(
            image_size=128, aug_scale_min=0.5, aug_scale_max=2.0
        ),
        is_training=True,
        batch_size=4,
        seed=0,
    )
    for images, labels in dataset.take(3):
        assert images.shape == (4, 128, 128, 3)
        assert labels["cls_targets"]["7"].shape == (4, 1, 1, 9)
        assert labels["box_weights"].numpy().sum() > 0
