"""Tests of nasfpn_tf.modeling.losses."""

import json
import math
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from nasfpn_tf import config as config_lib
from nasfpn_tf.modeling import losses

ALPHA = 0.25
GAMMA = 2.0
DELTA = 0.1
BOX_WEIGHT = 50.0
BACKGROUND = -1
IGNORED = -2


def train_config(**changes):
    values = {
        "train.focal_alpha": ALPHA,
        "train.focal_gamma": GAMMA,
        "train.huber_delta": DELTA,
        "train.box_loss_weight": BOX_WEIGHT,
    }
    values.update(changes)
    return config_lib.override(config_lib.from_dict({}), values).train


def tiny_case():
    """One image, level 3 of 1x2 cells, one anchor each, 2 classes.

    Anchor 0 is a positive of class 1, anchor 1 background.
    """
    outputs = {
        "cls_outputs": {"3": tf.constant([[[[0.0, 1.0], [-1.0, 2.0]]]])},
        "box_outputs": {
            "3": tf.constant([[[[0.0, 0.0, 0.0, 0.5], [9.0, 9.0, 9.0, 9.0]]]])
        },
    }
    labels = {
        "cls_targets": {"3": tf.constant([[[[1], [BACKGROUND]]]], tf.int32)},
        "box_targets": {
            "3": tf.constant([[[[0.1, -0.2, 0.3, 0.0], [0.0, 0.0, 0.0, 0.0]]]])
        },
        "cls_weights": tf.constant([[1.0, 1.0]]),
        "box_weights": tf.constant([[1.0, 0.0]]),
    }
    return outputs, labels


def focal(logit, positive):
    """Lin et al.'s focal loss of one logit, by hand."""
    p = 1.0 / (1.0 + math.exp(-logit))
    if positive:
        return -ALPHA * (1.0 - p) ** GAMMA * math.log(p)
    return -(1.0 - ALPHA) * p**GAMMA * math.log(1.0 - p)


def huber(diff):
    diff = abs(diff)
    if diff <= DELTA:
        return 0.5 * diff**2
    return DELTA * (diff - 0.5 * DELTA)


def test_focal_and_huber_losses_at_hand_computed_values():
    outputs, labels = tiny_case()
    total, parts = losses.detection_loss(outputs, labels, train_config(), 2)
    positives = 1.0 + losses.POSITIVES_OFFSET
    cls = (
        focal(0.0, False)  # anchor 0, class 0
        + focal(1.0, True)  # anchor 0, class 1 (its class)
        + focal(-1.0, False)
        + focal(2.0, False)
    ) / positives
    # Keras' Huber averages over the 4 box parameters; the background
    # anchor's box has weight 0 however wrong it is.
    box = np.mean([huber(d) for d in (0.1, 0.2, 0.3, 0.5)]) / positives
    assert parts["cls_loss"].numpy() == pytest.approx(cls, rel=1e-5)
    assert parts["box_loss"].numpy() == pytest.approx(box, rel=1e-5)
    model_loss = cls + BOX_WEIGHT * box
    assert parts["model_loss"].numpy() == pytest.approx(model_loss, rel=1e-5)
    assert total.numpy() == pytest.approx(model_loss, rel=1e-5)
    assert set(parts) == set(losses.LOSS_KEYS)


def test_ignored_anchors_do_not_count():
    outputs, labels = tiny_case()
    labels["cls_targets"] = {"3": tf.constant([[[[1], [IGNORED]]]], tf.int32)}
    labels["cls_weights"] = tf.constant([[1.0, 0.0]])
    _, parts = losses.detection_loss(outputs, labels, train_config(), 2)
    cls = (focal(0.0, False) + focal(1.0, True)) / 2.0
    assert parts["cls_loss"].numpy() == pytest.approx(cls, rel=1e-5)


def test_normalised_by_positives_plus_one():
    outputs, labels = tiny_case()
    no_positive = dict(labels, box_weights=tf.constant([[0.0, 0.0]]))
    _, parts = losses.detection_loss(outputs, no_positive, train_config(), 2)
    _, ref = losses.detection_loss(outputs, labels, train_config(), 2)
    # 0 positives divide by 1, 1 positive by 2.
    assert parts["cls_loss"].numpy() == pytest.approx(
        2.0 * ref["cls_loss"].numpy(), rel=1e-5
    )
    assert parts["box_loss"].numpy() == 0.0


def random_case(seed, num_classes=3, batch=2, anchors=2):
    rng = np.random.default_rng(seed)
    outputs = {"cls_outputs": {}, "box_outputs": {}}
    labels = {"cls_targets": {}, "box_targets": {}}
    sizes = {"3": 4, "4": 2}
    for level, side in sizes.items():
        shape = [batch, side, side]
        outputs["cls_outputs"][level] = tf.constant(
            rng.normal(size=shape + [anchors * num_classes]), tf.float32
        )
        outputs["box_outputs"][level] = tf.constant(
            rng.normal(size=shape + [anchors * 4]), tf.float32
        )
        labels["cls_targets"][level] = tf.constant(
            rng.integers(-2, num_classes, size=shape + [anchors]), tf.int32
        )
        labels["box_targets"][level] = tf.constant(
            rng.normal(size=shape + [anchors * 4]), tf.float32
        )
    flat = np.concatenate(
        [
            np.reshape(labels["cls_targets"][k].numpy(), [batch, -1])
            for k in sizes
        ],
        axis=1,
    )
    labels["cls_weights"] = tf.constant(flat != IGNORED, tf.float32)
    labels["box_weights"] = tf.constant(flat > 0, tf.float32)
    return outputs, labels


def test_equals_model_gardens_retinanet_task():
    from official.vision.configs import retinanet as retinanet_config
    from official.vision.tasks import retinanet as retinanet_task

    config = train_config(**{"train.focal_gamma": 1.5})
    task = retinanet_task.RetinaNetTask(
        retinanet_config.RetinaNetTask(
            model=retinanet_config.RetinaNet(num_classes=3),
            losses=retinanet_config.Losses(
                focal_loss_alpha=config.focal_alpha,
                focal_loss_gamma=config.focal_gamma,
                huber_loss_delta=config.huber_delta,
                box_loss_weight=int(config.box_loss_weight),
            ),
        )
    )
    outputs, labels = random_case(0)
    l2 = [tf.constant(0.25), tf.constant(0.5)]
    want = task.build_losses(outputs, labels, aux_losses=l2)
    total, parts = losses.detection_loss(
        outputs, labels, config, 3, regularization_losses=l2
    )
    got = (total, parts["cls_loss"], parts["box_loss"], parts["model_loss"])
    np.testing.assert_allclose(
        [float(x) for x in got], [float(x) for x in want], rtol=1e-6
    )


def test_anytime_losses_sum_over_repeats():
    first, labels = random_case(1)
    last, _ = random_case(2)
    outputs = dict(last, repeat_outputs=[first, last])
    config = train_config()
    total, parts = losses.detection_loss(outputs, labels, config, 3)
    total_1, parts_1 = losses.detection_loss(first, labels, config, 3)
    total_2, parts_2 = losses.detection_loss(last, labels, config, 3)
    assert total.numpy() == pytest.approx(float(total_1 + total_2), rel=1e-6)
    for key in losses.LOSS_KEYS:
        assert parts[key].numpy() == pytest.approx(
            float(parts_1[key] + parts_2[key]), rel=1e-6
        )


def test_regularization_is_added_to_the_total_only():
    outputs, labels = tiny_case()
    config = train_config()
    base, parts = losses.detection_loss(outputs, labels, config, 2)
    total, reg_parts = losses.detection_loss(
        outputs, labels, config, 2, regularization_losses=[tf.constant(0.5)]
    )
    assert total.numpy() == pytest.approx(float(base) + 0.5, rel=1e-6)
    assert reg_parts["model_loss"].numpy() == parts["model_loss"].numpy()


def test_low_precision_outputs_are_summed_in_float32():
    outputs, labels = random_case(3)
    low = {
        key: {k: tf.cast(v, tf.bfloat16) for k, v in value.items()}
        for key, value in outputs.items()
    }
    total, _ = losses.detection_loss(low, labels, train_config(), 3)
    ref, _ = losses.detection_loss(outputs, labels, train_config(), 3)
    assert total.dtype == tf.float32
    assert total.numpy() == pytest.approx(float(ref), rel=2e-2)


def test_levels_must_match_the_targets():
    outputs, labels = random_case(4)
    del outputs["cls_outputs"]["4"]
    with pytest.raises(ValueError, match=r"cls_outputs have levels \['3'\]"):
        losses.detection_loss(outputs, labels, train_config(), 3)


def test_level_order_of_targets_does_not_matter():
    outputs, labels = random_case(5)
    shuffled = dict(labels)
    for key in ("cls_targets", "box_targets"):
        shuffled[key] = dict(reversed(list(labels[key].items())))
    config = train_config()
    total, _ = losses.detection_loss(outputs, shuffled, config, 3)
    ref, _ = losses.detection_loss(outputs, labels, config, 3)
    assert float(total) == pytest.approx(float(ref), rel=1e-6)


_REPLICA_SCRIPT = textwrap.dedent(
    """
    import json
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2
    )
    import sys
    sys.path.insert(0, ".")
    from tests.test_losses import random_case, train_config
    from nasfpn_tf.modeling import losses

    outputs, labels = random_case(6, batch=2)
    # Positives only in the second image: replica 0 sees none of its own.
    labels["box_weights"] = tf.concat(
        [tf.zeros_like(labels["box_weights"][:1]), labels["box_weights"][1:]],
        axis=0,
    )
    config = train_config()
    l2 = [tf.constant(0.5)]
    one, one_parts = losses.detection_loss(outputs, labels, config, 3, l2)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])

    def shard(ctx):
        i = ctx.replica_id_in_sync_group
        return tf.nest.map_structure(lambda x: x[i : i + 1], (outputs, labels))

    values = strategy.experimental_distribute_values_from_function(shard)

    def step(pair):
        return losses.detection_loss(pair[0], pair[1], config, 3, l2)

    total, parts = strategy.run(step, args=(values,))
    summed = strategy.reduce("SUM", total, axis=None)
    summed_box = strategy.reduce("SUM", parts["box_loss"], axis=None)
    print(json.dumps([float(one), float(summed),
                      float(one_parts["box_loss"]), float(summed_box)]))
    """
)


@pytest.mark.slow
def test_replica_shares_sum_to_the_global_batch_loss():
    result = subprocess.run(
        [sys.executable, "-c", _REPLICA_SCRIPT],
        capture_output=True,
        text=True,
        check=True,
        cwd=str(pathlib.Path(__file__).parents[1]),
    )
    last_line = result.stdout.strip().splitlines()[-1]
    one, summed, one_box, summed_box = json.loads(last_line)
    assert summed == pytest.approx(one, rel=1e-5)
    assert summed_box == pytest.approx(one_box, rel=1e-5)
    assert one_box > 0
