"""Tests for nasfpn_tf.data.synthetic."""

import json
import os
import time

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from nasfpn_tf.data import synthetic

SMALL = {"train": 6, "heldout": 2, "val": 2}


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic")
    return synthetic.generate(str(out), SMALL, image_size=64, num_classes=3)


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path, small_set):
    again = synthetic.generate(
        str(tmp_path / "a"), SMALL, image_size=64, num_classes=3
    )
    other = synthetic.generate(
        str(tmp_path / "b"), SMALL, image_size=64, num_classes=3, seed=1
    )
    assert synthetic.fingerprint(again) == synthetic.fingerprint(small_set)
    assert synthetic.fingerprint(other) != synthetic.fingerprint(small_set)


def test_image_does_not_depend_on_split_length(tmp_path):
    few = synthetic.generate(str(tmp_path / "few"), {"val": 2}, image_size=64)
    more = synthetic.generate(str(tmp_path / "more"), {"val": 4}, image_size=64)
    for name in sorted(os.listdir(few["val"].images)):
        a = (tmp_path / "few" / "val" / name).read_bytes()
        b = (tmp_path / "more" / "val" / name).read_bytes()
        assert a == b, name
    assert len(os.listdir(more["val"].images)) == 4


def test_idempotent_and_regenerates_on_new_parameters(tmp_path):
    out = str(tmp_path)
    paths = synthetic.generate(out, {"train": 4}, image_size=64)
    first = os.path.join(paths["train"].images, "00000001.jpg")
    os.utime(first, ns=(1, 1))  # any rewrite would reset this
    synthetic.generate(out, {"train": 4}, image_size=64)
    assert os.stat(first).st_mtime_ns == 1
    synthetic.generate(out, {"train": 2}, image_size=64, num_classes=2)
    assert os.stat(first).st_mtime_ns != 1
    assert sorted(os.listdir(paths["train"].images)) == [
        "00000001.jpg",
        "00000002.jpg",
    ]
    manifest = json.loads((tmp_path / synthetic.MANIFEST).read_text())
    assert manifest["num_classes"] == 2


def test_coco_json_loads_and_is_consistent(small_set):
    image_ids, ann_ids = set(), set()
    for split, paths in small_set.items():
        coco = COCO(paths.annotations)
        assert len(coco.getImgIds()) == SMALL[split]
        assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(
            synthetic.CLASS_NAMES[:3]
        )
        for image in coco.loadImgs(coco.getImgIds()):
            with Image.open(
                os.path.join(paths.images, image["file_name"])
            ) as im:
                assert im.size == (image["width"], image["height"]) == (64, 64)
        for ann in coco.loadAnns(coco.getAnnIds()):
            x, y, w, h = ann["bbox"]
            assert 0 <= x and 0 <= y and x + w <= 64 and y + h <= 64
            assert w >= 1 and h >= 1 and 0 < ann["area"] <= w * h
            assert ann["iscrowd"] == 0 and 1 <= ann["category_id"] <= 3
        split_ids = set(coco.getImgIds())
        assert not split_ids & image_ids
        image_ids |= split_ids
        assert not set(coco.getAnnIds()) & ann_ids
        ann_ids |= set(coco.getAnnIds())
        assert max(split_ids) < 2**24


def test_render_image_boxes_lie_inside_the_image():
    rng = synthetic.image_rng(0, "train", 0)
    image, objects = synthetic.render_image(rng, 96, 5)
    assert image.shape == (96, 96, 3) and image.dtype == np.uint8
    assert objects, "seed 0 image 0 has objects"
    for obj in objects:
        x, y, w, h = obj["bbox"]
        assert 1 <= obj["area"] <= w * h
        assert min(w, h) >= 1 and x + w <= 96 and y + h <= 96


def test_sizes_and_classes_span_the_range():
    sides, classes, counts = [], set(), []
    for index in range(40):
        rng = synthetic.image_rng(3, "train", index)
        _, objects = synthetic.render_image(rng, 128, 5)
        counts.append(len(objects))
        for obj in objects:
            sides.append(max(obj["bbox"][2:]))
            classes.add(obj["category_id"])
    assert classes == {1, 2, 3, 4, 5}
    assert min(sides) <= 2 * synthetic.MIN_OBJECT_SIZE
    assert max(sides) >= 0.6 * 128
    assert max(counts) > 2  # several objects, so occlusion happens


def test_occluded_objects_keep_enough_pixels():
    for index in range(20):
        rng = synthetic.image_rng(0, "val", index)
        _, objects = synthetic.render_image(rng, 64, 3)
        for obj in objects:
            # Visible area vs. its own box: a sliver would mean near-total
            # occlusion, which the placement rule forbids.
            assert obj["area"] >= 0.15 * obj["bbox"][2] * obj["bbox"][3]


def test_hundred_images_generate_fast(tmp_path):
    start = time.perf_counter()
    synthetic.generate(str(tmp_path), {"train": 100}, image_size=128)
    # 300 images take about 2 s on one core; leave room for a busy machine.
    assert time.perf_counter() - start < 10


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_images": {"test": 1}}, "unknown split 'test'"),
        ({"num_images": {"train": -1}}, "num_images"),
        ({"num_images": {"train": 1}, "num_classes": 6}, "num_classes"),
        ({"num_images": {"train": 1}, "image_size": 8}, "image_size"),
        ({"num_images": {"train": 1}, "image_format": "gif"}, "image_format"),
        ({"num_images": {"train": 1}, "seed": -1}, "seed"),
    ],
)
def test_bad_arguments_name_the_field(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        synthetic.generate(str(tmp_path), **kwargs)


def test_png_images_are_lossless(tmp_path):
    paths = synthetic.generate(
        str(tmp_path), {"val": 1}, image_size=64, image_format="png"
    )
    rng = synthetic.image_rng(0, "val", 0)
    expected, _ = synthetic.render_image(rng, 64, 3)
    with Image.open(os.path.join(paths["val"].images, "02000001.png")) as im:
        np.testing.assert_array_equal(np.asarray(im), expected)


def test_generate_tfrecords_is_idempotent(tmp_path):
    outputs = synthetic.generate_tfrecords(
        str(tmp_path), {"train": 3, "val": 2}, image_size=64
    )
    assert outputs["train"].num_images == 3 and outputs["val"].num_images == 2
    shard = tmp_path / "tfrecords" / "train-00000-of-00001.tfrecord"
    os.utime(shard, ns=(1, 1))
    again = synthetic.generate_tfrecords(
        str(tmp_path), {"train": 3, "val": 2}, image_size=64
    )
    assert again == outputs and os.stat(shard).st_mtime_ns == 1
