"""Tests of the data set / anchor statistics."""

import json

import numpy as np
import pytest

from nasfpn_tf.data import pipeline, stats

SIZE = 128


def _image(*boxes_px, classes=None):
    """An image of SIZE x SIZE with yxyx pixel boxes."""
    boxes = np.array(boxes_px, np.float32).reshape(-1, 4) / SIZE
    classes = np.array(classes or [1] * len(boxes), np.int64)
    return stats.ImageBoxes(SIZE, SIZE, boxes, classes)


def _settings(**changes):
    return pipeline.InputConfig(image_size=SIZE, anchor_size=1.5, **changes)


def test_box_equal_to_an_anchor_is_covered_at_its_level():
    # P3 (stride 8) anchor centres lie at 4, 12, ..., the smallest square
    # anchor is 1.5 x 8 = 12 px: the box centred on (60, 60) with side 12
    # is one. P4's smallest square anchor is 24 px, centred on 8 + 16 k.
    p3 = (54, 54, 66, 66)
    p4 = (28, 28, 52, 52)
    result = stats.compute([_image(p3, p4)], _settings())
    assert result["coverage"] == 1.0
    assert result["coverage_at_threshold"] == 1.0
    assert result["per_level"]["P3"]["boxes"] == 1
    assert result["per_level"]["P4"]["boxes"] == 1
    assert result["best_iou"]["p90"] == pytest.approx(1.0, abs=1e-3)
    assert result["warnings"] == []


def test_tiny_box_is_only_force_matched_and_warned_about():
    # A 3 px box: its best anchor (12 px) has IoU 9 / 144 < 0.5, yet Model
    # Garden's matcher still gives it that anchor.
    tiny = (59, 59, 62, 62)
    exact = (54, 54, 66, 66)
    result = stats.compute([_image(tiny), _image(exact), _image()], _settings())
    assert result["images"] == 3 and result["empty_images"] == 1
    assert result["boxes"] == 2
    assert result["coverage"] == 1.0
    assert result["coverage_at_threshold"] == 0.5
    assert result["side_buckets"]["0-8"]["coverage_at_threshold"] == 0.0
    (warning,) = result["warnings"]
    assert "50%" in warning and "anchor_size" in warning


def test_lower_match_threshold_covers_more():
    box = (52, 52, 66, 66)  # 14 px against a 12 px anchor: IoU 0.73
    shifted = (56, 56, 72, 72)  # between anchor centres
    strict = stats.compute([_image(box, shifted)], _settings())
    loose = stats.compute(
        [_image(box, shifted)],
        _settings(match_threshold=0.3, unmatched_threshold=0.3),
    )
    assert strict["coverage_at_threshold"] == 0.5
    assert loose["coverage_at_threshold"] == 1.0


def test_class_counts_use_names():
    result = stats.compute(
        [_image((0, 0, 20, 20), (40, 40, 80, 80), classes=[1, 2])],
        _settings(),
        class_names={1: "cat", 2: "dog"},
    )
    assert result["classes"] == {"cat": 1, "dog": 1}
    assert "cat 1" in stats.format_report(result)


def test_anchor_sides_per_level():
    sides = stats.anchor_sides(_settings())
    assert sides[3][0] == 12.0 and sides[7][0] == 1.5 * 128
    assert sides[3][1] == pytest.approx(12 * 2 ** (2 / 3))


def test_command_reads_a_generated_split(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NASFPN_TF_DATA_DIR", str(tmp_path))
    code = stats.main(
        [
            "--params_override",
            (
                "model.image_size=64,data.synthetic.num_train=6,"
                "data.synthetic.num_heldout=2,data.synthetic.num_val=2"
            ),
            "--json",
        ]
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == 6 and result["boxes"] > 0
    assert result["padded_size"] == [128, 128]
    assert set(result["per_level"]) == {"P3", "P4", "P5", "P6", "P7"}


def test_command_names_a_missing_split(tmp_path, capsys):
    code = stats.main(
        [
            "--params_override",
            (
                f"data.train_path={tmp_path}/none-*,data.val_path=x,"
                "data.heldout_path=y"
            ),
        ]
    )
    assert code == 1
    assert "data.train_path" in capsys.readouterr().err
