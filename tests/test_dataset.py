"""Tests for nasfpn_tf.data.dataset (dataset.json)."""

import json

import pytest

from nasfpn_tf.data import dataset


def _info():
    return dataset.DatasetInfo(
        categories=((1, "tree"), (3, "rock")),
        splits=(
            ("train", dataset.SplitInfo("/d/train-*", "/d/train.json", 9, 20)),
            ("val", dataset.SplitInfo("/d/val-*", "/d/val.json", 3, 7)),
        ),
    )


def test_round_trip_relative_paths_and_overrides(tmp_path):
    info = dataset.DatasetInfo(
        categories=((1, "tree"), (3, "rock")),
        splits=tuple(
            (name, dataclass_with(tmp_path, s)) for name, s in _info().splits
        ),
    )
    dataset.save(info, str(tmp_path))
    written = json.loads((tmp_path / "dataset.json").read_text())
    assert written["splits"]["train"]["file_pattern"] == "train-*"
    assert written["num_classes"] == 4
    assert dataset.load(str(tmp_path)) == info
    assert info.class_names == ("tree", "", "rock")
    assert info.config_overrides() == {
        "model.num_classes": 4,
        "data.class_names": ["tree", "", "rock"],
        "data.train_path": f"{tmp_path}/train-*",
        "data.val_path": f"{tmp_path}/val-*",
        "data.val_annotations": f"{tmp_path}/val.json",
    }


def dataclass_with(folder, split):
    return dataset.SplitInfo(
        f"{folder}/{split.file_pattern.rsplit('/', 1)[1]}",
        f"{folder}/{split.annotations.rsplit('/', 1)[1]}",
        split.num_images,
        split.num_boxes,
    )


def test_errors_name_the_folder_and_field(tmp_path):
    with pytest.raises(dataset.DatasetError, match="no dataset.json"):
        dataset.load(str(tmp_path))
    with pytest.raises(dataset.DatasetError, match="no such folder"):
        dataset.load(str(tmp_path / "nowhere"))
    (tmp_path / "dataset.json").write_text('{"version": 1, "splits": {}}')
    with pytest.raises(dataset.DatasetError, match="dataset.json: categories"):
        dataset.load(str(tmp_path))
    (tmp_path / "dataset.json").write_text('{"version": 7}')
    with pytest.raises(dataset.DatasetError, match="expected version 1"):
        dataset.load(str(tmp_path))
    with pytest.raises(dataset.DatasetError, match="ids must be unique"):
        dataset.DatasetInfo(categories=((0, "a"),), splits=())
    with pytest.raises(dataset.DatasetError, match="unknown"):
        dataset.DatasetInfo(categories=((1, "a"),), splits=(("test", None),))
