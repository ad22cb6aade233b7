"""Tests for nasfpn_tf.data.yolo (whole exports: tests/test_convert.py)."""

import exports_helpers
import pytest

from nasfpn_tf.data import sources, yolo


def test_labels_and_class_file_are_found(tmp_path):
    export = exports_helpers.roboflow_yolo(tmp_path, n_train=2, n_valid=1)
    images = export / "train" / "images"
    assert yolo.labels_dir(str(images)) == str(export / "train" / "labels")
    assert yolo.labels_dir(str(tmp_path)) == str(tmp_path)
    assert yolo.find_class_file(str(images)) == str(export / "data.yaml")
    with pytest.raises(sources.SourceError, match="no class names"):
        yolo.find_class_file(str(tmp_path / "x" / "y"))


def test_list_and_read(tmp_path):
    export = exports_helpers.roboflow_yolo(tmp_path, n_train=2, n_valid=1)
    entries = yolo.list_yolo(str(export / "train" / "images"))
    names = [name for name, _, _ in entries]
    assert names == sorted(names) and "orphan" in names
    stats = sources.ConversionStats()
    source = yolo.read_yolo(
        [str(export / "train" / "images")], {"tree": 1, "rock": 2}, stats=stats
    )
    assert stats["boxes_degenerate"] == 1
    assert all(record.normalized for record in source.images)
    by_name = {r.file_name: r for r in source.images}
    first = by_name[f"train_{exports_helpers.ODD_NAME}_0.jpg"]
    assert first.boxes[0] == sources.Box(0.25, 0.25, 0.375, 0.5, 1)
    assert first.boxes[3].category_id == 6  # index 5: unknown, dropped later
    assert by_name[f"train_{exports_helpers.ODD_NAME}_1.jpg"].boxes == ()
    with pytest.raises(sources.SourceError, match="no such folder"):
        yolo.list_yolo(str(tmp_path / "nowhere"))
