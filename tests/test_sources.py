"""Tests for nasfpn_tf.data.sources (the readers run end to end through
tests/test_convert.py)."""

import json

import numpy as np
import pytest

from nasfpn_tf.data import sources


def test_voc_image_ids():
    assert sources.voc_image_id("000005") == 5
    assert sources.voc_image_id("2008_000123") == 8_000_123
    assert sources.voc_image_id("2012_004331") < 2**24
    assert sources.voc_image_id("2007_000027") != sources.voc_image_id("000027")
    for bad in ("abc", "2008_x", "1999_000001", "2008_1000000"):
        with pytest.raises(ValueError, match="VOC image name"):
            sources.voc_image_id(bad)


def test_load_label_map_formats(tmp_path):
    pbtxt = tmp_path / "map.pbtxt"
    pbtxt.write_text(
        "item {\n id: 2\n name: 'cat'\n}\nitem { name: \"dog\" id: 1 }"
    )
    assert sources.load_label_map(str(pbtxt)) == {"cat": 2, "dog": 1}
    as_json = tmp_path / "map.json"
    as_json.write_text(json.dumps(["cat", "dog"]))
    assert sources.load_label_map(str(as_json)) == {"cat": 1, "dog": 2}
    text = tmp_path / "map.txt"
    text.write_text("cat\n\ndog\n")
    assert sources.load_label_map(str(text)) == {"cat": 1, "dog": 2}
    names = tmp_path / "obj.names"
    names.write_text("cat\ndog\n")
    assert sources.load_label_map(str(names)) == {"cat": 1, "dog": 2}
    data_yaml = tmp_path / "data.yaml"
    data_yaml.write_text("nc: 2\nnames: {0: dog, 1: cat}\n")
    assert sources.load_label_map(str(data_yaml)) == {"dog": 1, "cat": 2}
    data_yaml.write_text("names: [dog, cat]\n")
    assert sources.load_label_map(str(data_yaml)) == {"dog": 1, "cat": 2}
    as_json.write_text(json.dumps({"cat": 1, "dog": 1}))
    with pytest.raises(sources.SourceError, match="unique class ids"):
        sources.load_label_map(str(as_json))
    data_yaml.write_text("nc: 2\n")
    with pytest.raises(sources.SourceError, match="no 'names' list"):
        sources.load_label_map(str(data_yaml))
    with pytest.raises(sources.SourceError, match="no such file"):
        sources.load_label_map(str(tmp_path / "missing.txt"))


def test_image_ids_are_stable_unique_and_exact_in_float32():
    names = [f"2019_YELL_2_528000_4978000_image_crop2_0_{i}" for i in range(50)]
    ids = sources.assign_image_ids(names)
    assert ids == sources.assign_image_ids(reversed(names))
    assert len(set(ids.values())) == len(names)
    assert all(0 < i < sources.MAX_EXACT_FLOAT32_ID for i in ids.values())
    assert all(float(np.float32(i)) == i for i in ids.values())
    assert ids[names[0]] == sources.stable_image_id(names[0])
    # Pascal VOC's own names keep their numbers.
    assert sources.assign_image_ids(["2008_000123", "x"])["2008_000123"] == (
        8_000_123
    )


def test_colliding_names_are_resolved_in_sorted_order(monkeypatch):
    real = sources.stable_image_id

    def colliding(name, attempt=0):
        return 7 if attempt == 0 else real(name, attempt)

    monkeypatch.setattr(sources, "stable_image_id", colliding)
    ids = sources.assign_image_ids(["b", "a", "c", "000007"])
    assert ids == sources.assign_image_ids(["c", "000007", "a", "b"])
    assert ids["000007"] == 7  # a VOC number is claimed first
    assert ids["a"] == real("a", 1)
    assert ids["b"] == real("b", 1)
    assert len(set(ids.values())) == 4


def test_image_finder_tries_filename_path_and_stem(tmp_path):
    (tmp_path / "JPEGImages").mkdir()
    (tmp_path / "JPEGImages" / "Photo 1.JPG").write_bytes(b"x")
    (tmp_path / "beside.png").write_bytes(b"x")
    finder = sources.ImageFinder()
    dirs = (str(tmp_path / "JPEGImages"), str(tmp_path))
    assert finder.find(dirs, ("photo 1.jpg",), "ignored") == str(
        tmp_path / "JPEGImages" / "Photo 1.JPG"
    )
    assert finder.find(dirs, ("", "C:\\data\\beside.png"), "s") == str(
        tmp_path / "beside.png"
    )
    assert finder.find(dirs, ("renamed.jpg",), "beside") == str(
        tmp_path / "beside.png"
    )
    assert finder.find(dirs, ("gone.jpg",), "gone") == str(
        tmp_path / "JPEGImages" / "gone.jpg"
    )


def test_stats_keep_a_few_example_files_per_event():
    stats = sources.ConversionStats()
    for i in range(5):
        stats.add("images_missing", example=f"{i}.jpg")
    stats.add("images_written", 3, example="fine.jpg")
    assert stats.to_dict() == {
        "counts": {"images_written": 3, "images_missing": 5},
        "examples": {"images_missing": ["0.jpg", "1.jpg", "2.jpg"]},
    }
    assert "(e.g. 0.jpg, 1.jpg, 2.jpg)" in stats.summary()


def test_unknown_event_is_rejected():
    with pytest.raises(KeyError, match="unknown event"):
        sources.ConversionStats().add("images_lost")
