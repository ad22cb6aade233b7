"""Tests for nasfpn_tf.data.convert."""

import glob
import io
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import exports_helpers
import numpy as np
import pytest
import tensorflow as tf
from official.vision.dataloaders import tf_example_decoder
from PIL import Image
from pycocotools.coco import COCO

from nasfpn_tf.data import convert, dataset, sources, synthetic


def _read_examples(file_pattern):
    examples = []
    for path in sorted(glob.glob(file_pattern)):
        for record in tf.data.TFRecordDataset(path):
            examples.append(tf.train.Example.FromString(record.numpy()))
    return examples


def _feature(example, key):
    feature = example.features.feature[key]
    kind = feature.WhichOneof("kind")
    return list(getattr(feature, kind).value) if kind else []


def _png(width, height, mode="RGB", fmt="PNG"):
    buffer = io.BytesIO()
    Image.new(mode, (width, height), 128 if mode == "L" else None).save(
        buffer, format=fmt
    )
    return buffer.getvalue()


@pytest.fixture(scope="module")
def synthetic_coco(tmp_path_factory):
    out = tmp_path_factory.mktemp("coco")
    return synthetic.generate(
        str(out), {"train": 5, "val": 3}, image_size=64, num_classes=3
    )


def test_coco_round_trip_matches_json(tmp_path, synthetic_coco):
    outputs = convert.convert_coco(
        str(tmp_path),
        {s: (p.annotations, p.images) for s, p in synthetic_coco.items()},
        images_per_shard=2,
        progress=False,
    )
    assert sorted(glob.glob(outputs["train"].file_pattern)) == [
        str(tmp_path / f"train-0000{i}-of-00003.tfrecord") for i in range(3)
    ]
    for split, output in outputs.items():
        source = COCO(synthetic_coco[split].annotations)
        written = COCO(output.annotations)
        assert written.getImgIds() == source.getImgIds()
        examples = _read_examples(output.file_pattern)
        assert len(examples) == output.num_images == len(source.getImgIds())
        for example in examples:
            image_id = int(_feature(example, "image/source_id")[0])
            info = written.loadImgs(image_id)[0]
            anns = written.loadAnns(written.getAnnIds(imgIds=image_id))
            w, h = info["width"], info["height"]
            assert _feature(example, "image/width") == [w]
            assert _feature(example, "image/height") == [h]
            expected = np.array(
                [
                    [a["bbox"][0] / w, a["bbox"][1] / h,
                     (a["bbox"][0] + a["bbox"][2]) / w,
                     (a["bbox"][1] + a["bbox"][3]) / h]
                    for a in anns
                ]
            ).reshape(-1, 4)  # fmt: skip
            got = np.stack(
                [
                    _feature(example, f"image/object/bbox/{k}")
                    for k in ("xmin", "ymin", "xmax", "ymax")
                ],
                axis=-1,
            ).reshape(-1, 4)
            np.testing.assert_allclose(got, expected, atol=1e-6)
            assert _feature(example, "image/object/class/label") == [
                a["category_id"] for a in anns
            ]
            np.testing.assert_allclose(
                _feature(example, "image/object/area"),
                [a["area"] for a in anns],
                rtol=1e-6,
            )
            # The source JSON's boxes are what was written (clean data).
            src = source.loadAnns(source.getAnnIds(imgIds=image_id))
            assert [a["bbox"] for a in src] == [a["bbox"] for a in anns]


def test_model_garden_decoder_reads_the_records(tmp_path, synthetic_coco):
    output = convert.convert_coco(
        str(tmp_path),
        {
            "val": (
                synthetic_coco["val"].annotations,
                synthetic_coco["val"].images,
            )
        },
        progress=False,
    )["val"]
    decoder = tf_example_decoder.TfExampleDecoder()
    coco = COCO(output.annotations)
    record = next(iter(tf.data.TFRecordDataset(glob.glob(output.file_pattern))))
    decoded = decoder.decode(record)
    image_id = int(decoded["source_id"].numpy())
    anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
    assert decoded["image"].shape == (64, 64, 3)
    assert decoded["groundtruth_boxes"].shape == (len(anns), 4)
    np.testing.assert_array_equal(
        decoded["groundtruth_classes"].numpy(), [a["category_id"] for a in anns]
    )
    assert not decoded["groundtruth_is_crowd"].numpy().any()


@pytest.fixture
def bad_coco(tmp_path):
    """A COCO set with one instance of every problem the converter fixes."""
    images_dir = tmp_path / "images"
    images_dir.mkdir()
    files = {
        1: ("good.png", _png(40, 30)),
        2: ("broken.jpg", _png(40, 30, fmt="JPEG")[:60]),
        3: ("small.png", _png(20, 15)),  # annotated as 40x30
        4: ("cmyk.jpg", _png(40, 30, mode="CMYK", fmt="JPEG")),
        5: ("empty.png", _png(40, 30, mode="L")),
        6: ("garbage.png", b"not an image at all"),
    }
    for name, data in files.values():
        (images_dir / name).write_bytes(data)
    images = [
        {"id": i, "file_name": name, "width": 40, "height": 30}
        for i, (name, _) in files.items()
    ]
    images.append(
        {"id": 7, "file_name": "missing.png", "width": 40, "height": 30}
    )

    def ann(image_id, bbox, category_id=1, **extra):
        return {"image_id": image_id, "bbox": bbox, "category_id": category_id,
                "iscrowd": 0, **extra}  # fmt: skip

    annotations = [
        ann(1, [2, 3, 10, 12], area=50.0),  # kept as is
        ann(1, [30, 20, 20, 20]),  # clipped to 10 x 10
        ann(1, [5, 5, -4, 6]),  # negative width: dropped
        ann(1, [5, 5, 0, 6]),  # zero width: dropped
        ann(1, [50, 5, 6, 6]),  # outside: clips to nothing, dropped
        ann(1, [1, 1, 4, 4], category_id=9),  # unknown class: dropped
        ann(1, [1, 1, 4, 4], iscrowd=1, category_id=2),  # crowd: kept
        ann(1, [1, 1], category_id=2),  # malformed bbox: dropped
        ann(2, [1, 1, 4, 4]),  # its image does not decode
        ann(3, [10, 10, 20, 10]),  # rescaled by 0.5
        ann(4, [1, 1, 4, 4]),
        ann(99, [1, 1, 4, 4]),  # orphan
    ]
    for i, a in enumerate(annotations):
        a["id"] = i + 1
    path = tmp_path / "ann.json"
    path.write_text(
        json.dumps(
            {
                "images": images,
                "annotations": annotations,
                "categories": [
                    {"id": 1, "name": "a"},
                    {"id": 2, "name": "b"},
                ],
            }
        )
    )
    return str(path), str(images_dir)


def test_bad_data_is_fixed_or_skipped_and_counted(tmp_path, bad_coco, caplog):
    output = convert.convert_coco(
        str(tmp_path / "out"), {"train": bad_coco}, progress=False
    )["train"]
    assert output.counts == {
        "images_written": 4,  # 1, 3, 4, 5
        "images_without_boxes": 1,  # 5, kept as a negative
        "images_missing": 1,  # 7
        "images_undecodable": 2,  # 2, 6
        "images_reencoded": 1,  # 4 (CMYK)
        "images_size_mismatch": 1,  # 3
        "boxes_written": 5,
        "boxes_crowd": 1,
        "boxes_clipped": 1,
        "boxes_degenerate": 4,
        "boxes_unknown_class": 1,
        "boxes_orphan": 1,
    }
    summary = sources.ConversionStats(output.counts).summary()
    assert "valid negatives" in summary and "clipped" in summary
    coco = COCO(output.annotations)
    assert sorted(coco.getImgIds()) == [1, 3, 4, 5]
    boxes = {a["image_id"]: [] for a in coco.loadAnns(coco.getAnnIds())}
    for a in coco.loadAnns(coco.getAnnIds()):
        boxes[a["image_id"]].append((a["bbox"], a["area"], a["iscrowd"]))
    assert boxes[1] == [
        ([2, 3, 10, 12], 50.0, 0),
        ([30, 20, 10, 10], 100.0, 0),
        ([1, 1, 4, 4], 16.0, 1),
    ]
    assert boxes[3] == [([5.0, 5.0, 10.0, 5.0], 50.0, 0)]
    assert coco.loadImgs(3)[0]["width"] == 20
    examples = {
        int(_feature(e, "image/source_id")[0]): e
        for e in _read_examples(output.file_pattern)
    }
    assert _feature(examples[5], "image/object/bbox/xmin") == []
    assert _feature(examples[1], "image/object/is_crowd") == [0, 0, 1]
    for example in examples.values():  # TF decodes every written image
        encoded = _feature(example, "image/encoded")[0]
        assert tf.io.decode_image(encoded, channels=3).shape[-1] == 3


def test_heldout_split_is_stable_and_never_in_val():
    records = [
        sources.ImageRecord(i, f"{i}.jpg", "", 0, 0, ()) for i in range(2000)
    ]
    val_ids = set(range(0, 2000, 7))
    train, heldout = convert.split_heldout(records, 0.2, exclude_ids=val_ids)
    shuffled = records[:]
    random.Random(0).shuffle(shuffled)
    train2, heldout2 = convert.split_heldout(shuffled, 0.2, val_ids)
    ids = lambda rs: {r.image_id for r in rs}
    assert ids(heldout) == ids(heldout2) and ids(train) == ids(train2)
    assert not ids(heldout) & val_ids and not ids(train) & val_ids
    assert not ids(heldout) & ids(train)
    assert ids(heldout) | ids(train) | val_ids == set(range(2000))
    assert 0.15 < len(heldout) / (len(heldout) + len(train)) < 0.25
    # A subset keeps its members' sides.
    _, heldout_sub = convert.split_heldout(records[:500], 0.2, val_ids)
    assert ids(heldout_sub) == {i for i in ids(heldout) if i < 500}
    with pytest.raises(ValueError, match="heldout_fraction"):
        convert.split_heldout(records, 1.0)


def test_convert_carves_heldout_from_train_only(tmp_path, synthetic_coco):
    train = synthetic_coco["train"]
    # val lists two of the train images too: they must leave train/heldout.
    val_json = json.loads(Path(train.annotations).read_text())
    val_json["images"] = val_json["images"][:2]
    val_path = tmp_path / "val.json"
    val_path.write_text(json.dumps(val_json))
    outputs = convert.convert_coco(
        str(tmp_path / "out"),
        {"train": (train.annotations, train.images),
         "val": (str(val_path), train.images)},
        heldout_fraction=0.5,
        progress=False,
    )  # fmt: skip
    ids = {s: set(COCO(o.annotations).getImgIds()) for s, o in outputs.items()}
    assert set(outputs) == {"train", "heldout", "val"}
    assert not ids["heldout"] & ids["val"] and not ids["train"] & ids["val"]
    assert not ids["heldout"] & ids["train"]
    assert len(ids["train"] | ids["heldout"]) == 5 - 2
    assert outputs["train"].counts["images_in_val"] == 2
    expected_heldout = {
        i for i in ids["train"] | ids["heldout"]
        if convert.heldout_score(i) < 0.5
    }  # fmt: skip
    assert ids["heldout"] == expected_heldout


def _voc_tree(root, year, objects_by_name, image_size=(50, 40)):
    voc = root / year
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    for name, objects in objects_by_name.items():
        (voc / "JPEGImages" / f"{name}.jpg").write_bytes(
            _png(*image_size, fmt="JPEG")
        )
        if objects is None:
            (voc / "Annotations" / f"{name}.xml").write_text("<annotation><")
            continue
        xml = "".join(
            f"<object><name>{cls}</name><difficult>{int(hard)}</difficult>"
            f"<bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
            f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
            for cls, b, hard in objects
        )
        (voc / "Annotations" / f"{name}.xml").write_text(
            f"<annotation><size><width>{image_size[0]}</width><height>"
            f"{image_size[1]}</height></size>{xml}</annotation>"
        )
    (voc / "ImageSets/Main/trainval.txt").write_text(
        "\n".join(objects_by_name) + "\n"
    )
    return str(voc)


def test_voc_boxes_labels_and_difficult(tmp_path):
    voc = _voc_tree(
        tmp_path,
        "VOC2012",
        {
            "2008_000001": [
                ("dog", (1, 1, 10, 20), False),
                ("person", (5, 6, 50, 40), True),
                ("unicorn", (1, 1, 5, 5), False),
            ],
            "2008_000002": [],
            "2008_000003": None,  # broken XML
        },
    )
    output = convert.convert_voc(
        str(tmp_path / "out"),
        {"train": [(voc, "trainval")]},
        label_map=sources.voc_classes_label_map(),
        progress=False,
    )["train"]
    assert output.counts["annotations_unreadable"] == 1
    assert output.counts["boxes_unknown_class"] == 1
    assert output.counts["images_without_boxes"] == 1
    coco = COCO(output.annotations)
    assert sorted(coco.getImgIds()) == [8_000_001, 8_000_002]
    anns = coco.loadAnns(coco.getAnnIds(imgIds=8_000_001))
    dog, person = sources.VOC_CLASSES.index("dog") + 1, 15
    assert [(a["category_id"], a["bbox"], a["iscrowd"]) for a in anns] == [
        (dog, [0.0, 0.0, 10.0, 20.0], 0),
        (person, [4.0, 5.0, 46.0, 35.0], 1),
    ]
    assert coco.loadCats(person)[0]["name"] == "person"
    assert coco.loadImgs(8_000_001)[0]["file_name"] == "2008_000001.jpg"


def test_cli_coco_and_voc(tmp_path, synthetic_coco, capsys):
    val = synthetic_coco["val"]
    outputs = convert.main(
        ["--format=coco", f"--output_dir={tmp_path / 'coco'}",
         f"--val_annotations={val.annotations}", f"--val_images={val.images}",
         "--no_progress"]
    )  # fmt: skip
    assert outputs["val"].num_images == 3
    assert "images written" in capsys.readouterr().out
    voc = _voc_tree(tmp_path, "VOC2007", {"000001": [("cat", (1, 1, 9, 9), 0)]})
    outputs = convert.main(
        ["--format=voc", f"--output_dir={tmp_path / 'voc'}",
         f"--train_sets={voc}:trainval", "--no_progress"]
    )  # fmt: skip
    assert outputs["train"].num_boxes == 1
    with pytest.raises(SystemExit):
        convert.main(["--format=coco", "--output_dir=x", "--val_images=y"])
    with pytest.raises(SystemExit):
        convert.main(["--format=voc", "--output_dir=x", "--train_sets=nocolon"])


def test_no_temporary_files_left(tmp_path, synthetic_coco):
    val = synthetic_coco["val"]
    convert.convert_coco(
        str(tmp_path), {"val": (val.annotations, val.images)}, progress=False
    )
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


@pytest.mark.slow
def test_worker_processes_write_the_same_records(tmp_path, synthetic_coco):
    train = synthetic_coco["train"]
    source = {"train": (train.annotations, train.images)}
    serial = convert.convert_coco(str(tmp_path / "a"), source, progress=False)
    parallel = convert.convert_coco(
        str(tmp_path / "b"), source, num_workers=2, progress=False
    )
    assert _read_examples(serial["train"].file_pattern) == _read_examples(
        parallel["train"].file_pattern
    )


def _coco(output):
    return COCO(output.annotations)


def test_labelimg_folder_with_odd_names_and_no_image_sets(tmp_path):
    folder = exports_helpers.labelimg_voc(tmp_path, n=6)
    outputs = convert.convert_voc(
        str(tmp_path / "out"), {"train": [(str(folder), None)]}, progress=False
    )
    output = outputs["train"]
    assert (output.num_images, output.num_boxes) == (6, 10)
    assert output.counts["boxes_clipped"] == 1
    coco = _coco(output)
    names = sorted(image["file_name"] for image in coco.dataset["images"])
    assert names == [f"{exports_helpers.ODD_NAME}_{i}.jpg" for i in range(6)]
    expected_ids = sources.assign_image_ids(
        f"{exports_helpers.ODD_NAME}_{i}" for i in range(6)
    )
    by_name = {i["file_name"]: i["id"] for i in coco.dataset["images"]}
    assert by_name == {f"{n}.jpg": i for n, i in expected_ids.items()}
    # Classes the files use, sorted; the clipped box ends at the edge.
    assert coco.dataset["categories"] == [
        {"id": 1, "name": "rock"}, {"id": 2, "name": "tree"}
    ]  # fmt: skip
    clipped = [a["bbox"] for a in coco.dataset["annotations"]
               if a["bbox"][0] == 39.0]  # fmt: skip
    assert clipped == [[39.0, 43.0, 25.0, 21.0]]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["train"]["examples"] == {
        "boxes_clipped": [str(folder / f"{exports_helpers.ODD_NAME}_0.jpg")]
    }


def test_cvat_export_with_image_set_case_and_missing_image(tmp_path):
    folder = exports_helpers.cvat_voc(tmp_path)
    output = convert.convert_voc(
        str(tmp_path / "out"),
        {"train": [(str(folder), "default")]},
        progress=False,
    )["train"]
    assert output.num_images == 2
    assert output.counts["images_missing"] == 1
    files = sorted(i["file_name"] for i in _coco(output).dataset["images"])
    assert files == ["frame 001.jpg", "frame 002.JPG"]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["train"]["counts"]["images_missing"] == 1
    [missing] = summary["train"]["examples"]["images_missing"]
    assert missing.endswith("JPEGImages/frame 003.jpg")


def test_roboflow_voc_unknown_class_under_a_label_map(tmp_path):
    folder = exports_helpers.roboflow_voc(tmp_path)
    output = convert.convert_voc(
        str(tmp_path / "out"),
        {"train": [(str(folder), None)]},
        label_map={"tree": 1, "rock": 2},
        progress=False,
    )["train"]
    assert (output.num_images, output.num_boxes) == (3, 3)
    assert output.counts["boxes_unknown_class"] == 1
    stats = sources.ConversionStats(output.counts)
    assert "class outside the label map" in stats.summary()


def test_roboflow_yolo_export(tmp_path):
    export = exports_helpers.roboflow_yolo(tmp_path)
    outputs = convert.convert_yolo(
        str(tmp_path / "out"),
        {
            "train": [str(export / "train" / "images")],
            "val": [str(export / "valid" / "images")],
        },
        progress=False,
    )
    train, val = outputs["train"], outputs["val"]
    # 6 images + 1 orphan label (missing image); image 1 has no labels.
    assert train.num_images == 6
    assert train.counts["images_missing"] == 1
    assert train.counts["images_without_boxes"] == 1
    assert train.counts["boxes_unknown_class"] == 1
    assert train.counts["boxes_degenerate"] == 1
    assert train.counts["boxes_clipped"] == 1
    assert (val.num_images, val.num_boxes) == (3, 5)
    coco = _coco(train)
    assert coco.dataset["categories"] == [
        {"id": 1, "name": "tree"}, {"id": 2, "name": "rock"}
    ]  # fmt: skip
    first = f"train_{exports_helpers.ODD_NAME}_0.jpg"
    [image] = [i for i in coco.dataset["images"] if i["file_name"] == first]
    boxes = sorted(
        (a["category_id"], [round(v, 3) for v in a["bbox"]])
        for a in coco.loadAnns(coco.getAnnIds(imgIds=image["id"]))
    )
    assert boxes == [
        (1, [16.0, 16.0, 24.0, 32.0]),
        (1, [51.2, 25.6, 12.8, 12.8]),  # clipped at x = 64
        (2, [6.4, 44.8, 12.8, 12.8]),  # the polygon's bounding box
        (2, [44.0, 8.0, 16.0, 16.0]),
    ]


def test_flat_yolo_folder_with_classes_txt(tmp_path):
    folder = tmp_path / "flat"
    folder.mkdir()
    (folder / "classes.txt").write_text("tree\nrock\n")
    (folder / "a b.png").write_bytes(
        exports_helpers.image_bytes([(0, 0, 31, 31)], fmt="PNG")
    )
    (folder / "a b.txt").write_text("1 0.25 0.25 0.5 0.5\n")
    output = convert.convert_yolo(
        str(tmp_path / "out"), {"train": [str(folder)]}, progress=False
    )["train"]
    [ann] = _coco(output).dataset["annotations"]
    assert (ann["category_id"], ann["bbox"]) == (2, [0.0, 0.0, 32.0, 32.0])


def test_dataset_json_describes_the_output(tmp_path):
    folder = exports_helpers.labelimg_voc(tmp_path, n=8)
    out = tmp_path / "out"
    outputs = convert.convert_voc(
        str(out),
        {"train": [(str(folder), None)]},
        heldout_fraction=0.4,
        progress=False,
    )
    info = dataset.load(str(out))
    assert info.class_names == ("rock", "tree")
    assert info.num_classes == 3
    assert [name for name, _ in info.splits] == ["train", "heldout"]
    for name, split in info.splits:
        assert split.file_pattern == outputs[name].file_pattern
        assert split.annotations == outputs[name].annotations
        assert split.num_images == outputs[name].num_images > 0
    text = json.loads((out / "dataset.json").read_text())
    assert text["splits"]["train"]["annotations"] == "train.json"


def _cli_error(argv):
    with pytest.raises(SystemExit) as raised:
        convert.main([*argv, "--no_progress"])
    message = str(raised.value)
    assert message.startswith("Error: ") and "\n" not in message
    return message


def test_cli_errors_are_one_line_naming_the_file(tmp_path):
    out = f"--output_dir={tmp_path / 'out'}"
    missing = tmp_path / "nowhere"
    assert f"{missing}: no such folder" in _cli_error(
        ["--format=voc", out, f"--train_sets={missing}"]
    )
    cvat = exports_helpers.cvat_voc(tmp_path)
    message = _cli_error(["--format=voc", out, f"--train_sets={cvat}:test"])
    assert "ImageSets/Main/test.txt: no such image set list" in message
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no .xml annotation file" in _cli_error(
        ["--format=voc", out, f"--train_sets={empty}"]
    )
    (empty / "a.jpg").write_bytes(exports_helpers.image_bytes())
    assert "no class names" in _cli_error(
        ["--format=yolo", out, f"--train_images={empty}"]
    )
    labels = tmp_path / "labels.pbtxt"
    labels.write_text("item { name: 'tree' }\n")
    assert f"{labels}: item without name or id: \"name: 'tree'\"" in (
        _cli_error(
            ["--format=yolo", out, f"--label_map={labels}"]
            + [f"--train_images={empty}"]
        )
    )
    bad_yaml = tmp_path / "data.yaml"
    bad_yaml.write_text("names: {0: a, 2: b}\n")
    assert f"{bad_yaml}: 'names' keys must be 0..n-1" in _cli_error(
        ["--format=yolo", out, f"--train_images={empty}",
         f"--label_map={bad_yaml}"]
    )  # fmt: skip
    bad_json = tmp_path / "coco.json"
    bad_json.write_text('{"images": [], "categories": []}')
    assert f"{bad_json}: 'categories' is empty" in _cli_error(
        ["--format=coco", out, f"--train_annotations={bad_json}",
         f"--train_images={empty}"]
    )  # fmt: skip
    bad_json.write_text(
        '{"images": [{"id": 1}], "categories": [{"id": 1, "name": "a"}]}'
    )
    assert f"{bad_json}: not COCO detection JSON" in _cli_error(
        ["--format=coco", out, f"--train_annotations={bad_json}",
         f"--train_images={empty}"]
    )  # fmt: skip


def test_cli_yolo_prints_where_it_wrote(tmp_path, capsys):
    export = exports_helpers.roboflow_yolo(tmp_path, n_train=2, n_valid=1)
    convert.main(
        ["--format=yolo", f"--output_dir={tmp_path / 'out'}",
         f"--train_images={export / 'train' / 'images'}", "--no_progress"]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert f"-> {tmp_path / 'out' / 'dataset.json'}" in out
    assert f"-> {tmp_path / 'out' / 'summary.json'}" in out


def test_val_carved_from_one_folder_never_meets_heldout(tmp_path):
    folder = exports_helpers.labelimg_voc(tmp_path, n=20)
    outputs = convert.main(
        ["--format=voc", f"--output_dir={tmp_path / 'out'}",
         f"--train_sets={folder}", "--val_fraction=0.25",
         "--heldout_fraction=0.25", "--no_progress"]
    )  # fmt: skip
    ids = {
        split: {i["id"] for i in _coco(out).dataset["images"]}
        for split, out in outputs.items()
    }
    assert sorted(ids) == ["heldout", "train", "val"]
    assert sum(map(len, ids.values())) == 20
    assert not ids["val"] & ids["heldout"]
    assert all(convert.heldout_score(i) >= 0.75 for i in ids["val"])
    assert all(convert.heldout_score(i) < 0.25 for i in ids["heldout"])
    assert [name for name, _ in dataset.load(str(tmp_path / "out")).splits] == [
        "train", "heldout", "val"
    ]  # fmt: skip
    with pytest.raises(SystemExit):
        convert.main(
            ["--format=voc", "--output_dir=x", f"--train_sets={folder}",
             f"--val_sets={folder}", "--val_fraction=0.2"]
        )  # fmt: skip


# A child starts TensorFlow on a shared CPU before it reads its input.
CLI_TIMEOUT_S = 120


def _run_converter(*argv):
    """The converter as a user runs it, TensorFlow's C++ log level unset
    (the module must quiet it itself)."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (repo, env.get("PYTHONPATH", "")) if p
    )
    return subprocess.run(
        [sys.executable, "-m", "nasfpn_tf.data.convert", *argv],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )


def test_the_command_reports_bad_input_in_one_line_on_stderr(tmp_path):
    """Status 1 and one line naming the file and the field: no traceback,
    no TensorFlow start-up lines, nothing else (the messages themselves
    are checked in process above)."""
    coco = tmp_path / "instances.json"
    coco.write_text(json.dumps({"images": {}, "categories": []}))
    (tmp_path / "images").mkdir()
    done = _run_converter(
        "--format=coco",
        f"--train_annotations={coco}",
        f"--train_images={tmp_path / 'images'}",
        f"--output_dir={tmp_path / 'out'}",
        "--no_progress",
    )
    assert done.returncode == 1, done.stderr[-3000:]
    assert done.stderr.splitlines() == [f"Error: {coco}: no 'images' list"]
    assert done.stdout == ""
