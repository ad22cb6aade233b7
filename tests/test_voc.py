"""Tests for nasfpn_tf.data.voc (conversions of whole exports are in
tests/test_convert.py)."""

import exports_helpers
import pytest

from nasfpn_tf.data import sources, voc


def test_list_voc_with_and_without_image_sets(tmp_path):
    cvat = exports_helpers.cvat_voc(tmp_path)
    listed = voc.list_voc(str(cvat), "default")
    found = voc.list_voc(str(cvat))
    assert (
        listed
        == found
        == [str(cvat / "Annotations" / f"frame 00{i}.xml") for i in (1, 2, 3)]
    )
    flat = exports_helpers.labelimg_voc(tmp_path, n=2)
    assert [p.rsplit("/", 1)[1] for p in voc.list_voc(str(flat))] == [
        f"{exports_helpers.ODD_NAME}_{i}.xml" for i in range(2)
    ]
    with pytest.raises(sources.SourceError, match="no such image set"):
        voc.list_voc(str(cvat), "test")


def test_class_flag_lists_drop_the_flag_and_keep_the_name(tmp_path):
    cvat = exports_helpers.cvat_voc(tmp_path)
    lists = cvat / "ImageSets" / "Main"
    (lists / "tree_default.txt").write_text(
        "frame 001  1\nframe 002 -1\nframe 003\t0\n"
    )
    assert voc.list_voc(str(cvat), "tree_default") == [
        str(cvat / "Annotations" / f"frame 00{i}.xml") for i in (1, 2, 3)
    ]
    (cvat / "Annotations" / "a.xml").write_text("<annotation/>")
    (lists / "flags.txt").write_text("a  1\n000005 -1\n")
    assert voc.list_voc(str(cvat), "flags") == [
        str(cvat / "Annotations" / "a.xml"),
        str(cvat / "Annotations" / "000005.xml"),
    ]


def test_a_listed_name_ending_in_a_digit_stays_whole(tmp_path):
    cvat = exports_helpers.cvat_voc(tmp_path)
    (cvat / "Annotations" / "frame 1.xml").write_text("<annotation/>")
    (cvat / "ImageSets" / "Main" / "odd.txt").write_text("frame 1\n")
    assert voc.list_voc(str(cvat), "odd") == [
        str(cvat / "Annotations" / "frame 1.xml")
    ]


def test_class_flag_lists_read_the_listed_annotations(tmp_path):
    cvat = exports_helpers.cvat_voc(tmp_path)
    (cvat / "ImageSets" / "Main" / "tree_default.txt").write_text(
        "frame 001  1\nframe 002 -1\n"
    )
    stats = sources.ConversionStats()
    parsed = voc.read_voc_annotations([(str(cvat), "tree_default")], stats)
    assert [a.name for a in parsed] == ["frame 001", "frame 002"]
    assert stats["annotations_unreadable"] == 0


def test_annotations_label_map_and_source(tmp_path):
    flat = exports_helpers.labelimg_voc(tmp_path, n=2)
    (flat / "broken.xml").write_text("<annotation><")
    stats = sources.ConversionStats()
    parsed = voc.read_voc_annotations([(str(flat), None)], stats)
    assert stats["annotations_unreadable"] == 1
    assert [a.image_path for a in parsed] == [
        str(flat / f"{exports_helpers.ODD_NAME}_{i}.jpg") for i in range(2)
    ]
    label_map = voc.voc_label_map(parsed)
    assert label_map == {"rock": 1, "tree": 2}
    source = voc.voc_source(parsed, {"tree": 5}, stats=stats)
    assert source.categories == ((5, "tree"),)
    assert stats["boxes_unknown_class"] == 2
    first = source.images[0]
    assert first.boxes[0] == sources.Box(7.0, 7.0, 23.0, 29.0, 5)
    assert (first.width, first.height) == (64, 64)


def test_xml_encodings_are_honoured_and_bad_bytes_counted(tmp_path):
    folder = tmp_path / "voc"
    folder.mkdir()
    xml = exports_helpers.voc_xml("b.jpg", [("tr\u00e9e", (1, 1, 9, 9))])
    (folder / "b.xml").write_bytes(
        b'<?xml version="1.0" encoding="ISO-8859-1"?>' + xml.encode("latin-1")
    )
    (folder / "c.xml").write_bytes(b"<annotation>\xff\xfe</annotation>")
    stats = sources.ConversionStats()
    [parsed] = voc.read_voc_annotations([(str(folder), None)], stats)
    assert parsed.objects[0].label == "tr\u00e9e"
    assert stats["annotations_unreadable"] == 1
