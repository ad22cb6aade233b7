"""Tests of nasfpn_tf.evaluation on hand-written COCO annotations."""

import json

import numpy as np
import pytest
import tensorflow as tf

from nasfpn_tf import evaluation

# Two images; boxes yxyx in original pixels, classes 1..2.
IMAGES = [
    {"id": 1, "height": 64, "width": 80},
    {"id": 2, "height": 64, "width": 64},
]
OBJECTS = {
    1: [([10.0, 10.0, 40.0, 50.0], 1), ([5.0, 50.0, 20.0, 70.0], 2)],
    2: [([20.0, 20.0, 60.0, 60.0], 1)],
}
MAX_INSTANCES = 4
MAX_DETECTIONS = 5
SCALE = 2.0  # the parser resized each image by this factor
PAD = -1.0


def coco_json(path):
    annotations = []
    for image_id, objects in OBJECTS.items():
        for (y1, x1, y2, x2), category in objects:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": 0,
                }
            )
    data = {
        "images": [dict(i, file_name=f"{i['id']}.jpg") for i in IMAGES],
        "annotations": annotations,
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
    }
    path.write_text(json.dumps(data))
    return str(path)


def eval_labels():
    """Labels as Model Garden's RetinaNet parser emits them in eval."""
    batch = len(IMAGES)
    boxes = np.full([batch, MAX_INSTANCES, 4], PAD, np.float32)
    classes = np.full([batch, MAX_INSTANCES], PAD, np.int32)
    areas = np.full([batch, MAX_INSTANCES], PAD, np.float32)
    counts = np.zeros([batch], np.int32)
    info = np.zeros([batch, 4, 2], np.float32)
    for b, image in enumerate(IMAGES):
        objects = OBJECTS[image["id"]]
        counts[b] = len(objects)
        for k, (box, category) in enumerate(objects):
            boxes[b, k] = box
            classes[b, k] = category
            areas[b, k] = (box[2] - box[0]) * (box[3] - box[1])
        size = np.array([image["height"], image["width"]], np.float32)
        info[b] = [size, size * SCALE, [SCALE, SCALE], [0.0, 0.0]]
    groundtruths = {
        "source_id": tf.constant([i["id"] for i in IMAGES], tf.int64),
        "height": tf.constant([i["height"] for i in IMAGES], tf.int32),
        "width": tf.constant([i["width"] for i in IMAGES], tf.int32),
        "num_detections": tf.constant(counts),
        "boxes": tf.constant(boxes),
        "classes": tf.constant(classes),
        "areas": tf.constant(areas),
        "is_crowds": tf.zeros([batch, MAX_INSTANCES], tf.int32),
    }
    return {"groundtruths": groundtruths, "image_info": tf.constant(info)}


def detections(labels, score=0.9, num=None):
    """The ground truth fed back as detections, in resized-image pixels."""
    gt = labels["groundtruths"]
    counts = gt["num_detections"].numpy() if num is None else num
    batch = len(counts)
    boxes = np.zeros([batch, MAX_DETECTIONS, 4], np.float32)
    classes = np.zeros([batch, MAX_DETECTIONS], np.float32)
    scores = np.zeros([batch, MAX_DETECTIONS], np.float32)
    real = gt["num_detections"].numpy()
    for b in range(batch):
        n = real[b]
        boxes[b, :n] = gt["boxes"].numpy()[b, :n] * SCALE
        classes[b, :n] = gt["classes"].numpy()[b, :n]
        scores[b, :n] = score
    return {
        "detection_boxes": tf.constant(boxes),
        "detection_scores": tf.constant(scores),
        "detection_classes": tf.constant(classes),
        "num_detections": tf.constant(counts, tf.int32),
    }


@pytest.fixture
def annotation_file(tmp_path):
    return coco_json(tmp_path / "val.json")


@pytest.mark.parametrize("from_file", [True, False])
def test_perfect_detections_give_ap_one(annotation_file, from_file):
    evaluator = evaluation.CocoEvaluator(annotation_file if from_file else None)
    labels = eval_labels()
    evaluator.update(labels, detections(labels))
    metrics = evaluator.result()
    assert set(metrics) == set(evaluation.METRIC_NAMES)
    assert all(isinstance(v, float) for v in metrics.values())
    assert metrics["AP"] == pytest.approx(1.0)
    assert metrics["AP50"] == pytest.approx(1.0)
    assert metrics["AP75"] == pytest.approx(1.0)


def test_empty_predictions_give_ap_zero(annotation_file):
    evaluator = evaluation.CocoEvaluator(annotation_file)
    labels = eval_labels()
    evaluator.update(labels, detections(labels, score=0.0, num=[0, 0]))
    metrics = evaluator.result()
    assert metrics["AP"] == 0.0
    assert metrics["AP50"] == 0.0


def test_slots_past_num_detections_do_not_count(annotation_file):
    # Right boxes and classes, but the generator says there are none.
    evaluator = evaluation.CocoEvaluator(annotation_file)
    labels = eval_labels()
    evaluator.update(labels, detections(labels, score=0.5, num=[0, 0]))
    assert evaluator.result()["AP"] == 0.0


def test_boxes_are_rescaled_by_image_info(annotation_file):
    # Boxes left in original pixels are wrong by SCALE once rescaled.
    evaluator = evaluation.CocoEvaluator(annotation_file)
    labels = eval_labels()
    outputs = detections(labels)
    outputs["detection_boxes"] = outputs["detection_boxes"] / SCALE
    evaluator.update(labels, outputs)
    assert evaluator.result()["AP"] < 0.5


def test_half_the_images_found(annotation_file):
    evaluator = evaluation.CocoEvaluator(annotation_file)
    labels = eval_labels()
    # Image 2's only object missed: class 1 recall 1/2, class 2 perfect.
    evaluator.update(labels, detections(labels, num=[2, 0]))
    metrics = evaluator.result()
    assert 0.0 < metrics["AP"] < 1.0
    assert metrics["AP50"] == pytest.approx((0.5 + 1.0) / 2, abs=0.01)


def test_result_resets(annotation_file):
    evaluator = evaluation.CocoEvaluator(annotation_file)
    labels = eval_labels()
    evaluator.update(labels, detections(labels))
    evaluator.result()
    with pytest.raises(ValueError, match="no images"):
        evaluator.result()


def test_coco_output_is_quiet(annotation_file, capsys):
    evaluator = evaluation.CocoEvaluator(annotation_file)
    labels = eval_labels()
    evaluator.update(labels, detections(labels))
    evaluator.result()
    assert capsys.readouterr().out == ""


def test_bad_inputs_are_named(annotation_file, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.json"):
        evaluation.CocoEvaluator(str(tmp_path / "missing.json"))
    evaluator = evaluation.CocoEvaluator(annotation_file)
    labels = eval_labels()
    outputs = detections(labels)
    del outputs["num_detections"]
    with pytest.raises(ValueError, match="num_detections"):
        evaluator.update(labels, outputs)
    with pytest.raises(ValueError, match="groundtruths"):
        evaluator.update(
            {"image_info": labels["image_info"]}, detections(labels)
        )


class GroundTruthModel:
    """Stands in for a detector: returns the ground truth of `labels`."""

    def __init__(self, labels):
        self.outputs = detections(labels)
        self.calls = 0

    def __call__(
        self, images, image_shape=None, anchor_boxes=None, training=None
    ):
        assert training is False
        self.calls += 1
        return self.outputs


def dataset_of(labels, repeat=1):
    images = tf.zeros([len(IMAGES), 128, 160, 3])
    return tf.data.Dataset.from_tensors((images, labels)).repeat(repeat)


def test_evaluate_runs_the_model_over_the_dataset(annotation_file):
    labels = eval_labels()
    model = GroundTruthModel(labels)
    metrics = evaluation.evaluate(model, dataset_of(labels), annotation_file)
    assert metrics["AP"] == pytest.approx(1.0)


class CountingDataset:
    """Iterates a dataset, counting the batches drawn from it."""

    def __init__(self, dataset):
        self.dataset = dataset
        self.consumed = 0

    def __iter__(self):
        for batch in self.dataset:
            self.consumed += 1
            yield batch


def test_evaluate_stops_after_steps(annotation_file):
    labels = eval_labels()
    model = GroundTruthModel(labels)
    batches = CountingDataset(dataset_of(labels, repeat=3))
    evaluation.evaluate(model, batches, annotation_file, steps=2)
    assert batches.consumed == 2
    whole = CountingDataset(dataset_of(labels, repeat=3))
    evaluation.evaluate(model, whole, annotation_file)
    assert whole.consumed == 3
    with pytest.raises(ValueError, match="steps"):
        evaluation.evaluate(
            model, dataset_of(labels), annotation_file, steps=-1
        )


@pytest.mark.parametrize("from_file", [True, False])
def test_per_class_ap_is_named_by_class(annotation_file, from_file):
    evaluator = evaluation.CocoEvaluator(
        annotation_file if from_file else None, class_names=("a", "b")
    )
    labels = eval_labels()
    # Image 2's only object (class 1, "a") missed: "a" recall 1/2.
    evaluator.update(labels, detections(labels, num=[2, 0]))
    metrics = evaluator.result()
    per_class = {k: v for k, v in metrics.items() if "/" in k}
    assert set(per_class) == {"AP/a", "AP/b", "AP50/a", "AP50/b"}
    assert metrics["AP50/a"] == pytest.approx(0.5, abs=0.01)
    assert metrics["AP50/b"] == pytest.approx(1.0)
    assert metrics["AP50"] == pytest.approx(
        (metrics["AP50/a"] + metrics["AP50/b"]) / 2
    )


@pytest.mark.slow
def test_evaluate_a_tiny_detector(annotation_file):
    from nasfpn_tf import config as config_lib
    from nasfpn_tf.modeling import detector

    config = config_lib.from_dict(
        {
            "model": {
                "neck": {"filters": 8, "repeats": 1},
                "head": {"num_convs": 1, "num_filters": 8},
            }
        }
    )
    model = detector.build_detector(config.model)
    metrics = evaluation.evaluate(
        model, dataset_of(eval_labels()), annotation_file
    )
    assert set(metrics) == set(evaluation.METRIC_NAMES)
    assert all(-1.0 <= v <= 1.0 for v in metrics.values())


def test_ground_truth_through_the_real_pipeline_gives_ap_one(tmp_path):
    from nasfpn_tf.data import pipeline, synthetic

    split = synthetic.generate_tfrecords(
        str(tmp_path), {"val": 6}, image_size=96, num_classes=2
    )["val"]
    # Resized to 64: image_info carries the 2/3 scale to undo.
    dataset = pipeline.build_dataset(
        split.file_pattern,
        pipeline.InputConfig(image_size=64),
        is_training=False,
        batch_size=4,
        drop_remainder=False,
    )
    evaluator = evaluation.CocoEvaluator(split.annotations)
    for _, labels in dataset:
        gt = labels["groundtruths"]
        scale = labels["image_info"][:, 2:3, :]
        boxes = gt["boxes"] * tf.tile(scale, [1, 1, 2])
        counts = tf.reshape(gt["num_detections"], [-1])
        evaluator.update(
            labels,
            {
                "detection_boxes": boxes,
                "detection_scores": tf.ones_like(gt["classes"], tf.float32),
                "detection_classes": gt["classes"],
                "num_detections": counts,
            },
        )
    metrics = evaluator.result()
    assert evaluator.num_images == 0
    assert metrics["AP"] == pytest.approx(1.0)


def test_is_metric_names_overall_and_per_class_metrics():
    assert evaluation.is_metric("AP") and evaluation.is_metric("APl")
    assert evaluation.is_metric("AP/tree") and evaluation.is_metric("AP50/a b")
    assert not evaluation.is_metric("AP75/tree")
    assert not evaluation.is_metric("steps")
