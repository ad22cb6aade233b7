"""Tests for nasfpn_tf.data.sources (the readers run end to end through
tests/test_convert.py)."""

import json

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
    as_json.write_text(json.dumps({"cat": 1, "dog": 1}))
    with pytest.raises(ValueError, match="unique class ids"):
        sources.load_label_map(str(as_json))


def test_unknown_event_is_rejected():
    with pytest.raises(KeyError, match="unknown event"):
        sources.ConversionStats().add("images_lost")
