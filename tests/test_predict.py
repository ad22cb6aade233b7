"""Tests of nasfpn_tf.predict: detections of a trained model, written and
drawn, from a checkpoint or an exported SavedModel.

A seeded tiny model with a spread head (far from score ties) is
checkpointed once per module; its SavedModel is exported from that
checkpoint. The end-to-end runs (a converted crafted export -> train ->
predict, and a 2-sample search on it) are marked slow.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

import exports_helpers
import numpy as np
import pytest
import tf_keras
from PIL import Image
from test_export import checkpointed_run

from nasfpn_tf import config as config_lib
from nasfpn_tf import export as export_lib
from nasfpn_tf import main as main_lib
from nasfpn_tf import predict
from nasfpn_tf.data import convert

CLASS_NAMES = ("tree", "rock")
MAX_DETECTIONS = 5
BOX_TOLERANCE_PX = 0.02
SCORE_TOLERANCE = 1e-4
TINY = str(pathlib.Path(__file__).resolve().parents[1] / "configs/tiny.yaml")


def tiny_config() -> config_lib.ExperimentConfig:
    # NMS keeps low scores: an untrained model's boxes are still compared.
    return config_lib.override(
        config_lib.from_dict({}),
        {
            "model.neck.filters": 8,
            "model.head.num_filters": 8,
            "model.nms.score_threshold": 0.0,
            "model.nms.max_detections": MAX_DETECTIONS,
            "data.class_names": list(CLASS_NAMES),
        },
    )


@dataclasses.dataclass(frozen=True)
class Run:
    model_dir: pathlib.Path
    export_dir: pathlib.Path
    images: pathlib.Path
    from_checkpoint: predict.PredictResult
    from_saved_model: predict.PredictResult


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Run:
    root = tmp_path_factory.mktemp("predict")
    config = tiny_config()
    model_dir, model = checkpointed_run(root, config)
    del model
    tf_keras.backend.clear_session()
    images = root / "images"
    images.mkdir()
    # PNG in, PNG out: lossless, so undrawn pixels compare equal.
    for name, size in (("a b.png", (64, 48)), ("c.png", (80, 80))):
        (images / name).write_bytes(
            exports_helpers.image_bytes([(10, 10, 30, 30)], size, fmt="PNG")
        )
    (images / "broken.png").write_bytes(b"not an image")
    (images / "notes.txt").write_text("not listed: not an image extension")
    export_dir = root / "export"
    export_lib.export(config, str(model_dir), str(export_dir))
    tf_keras.backend.clear_session()
    kwargs = {"score_threshold": 0.0, "progress": False}
    return Run(
        model_dir,
        export_dir,
        images,
        predict.predict(
            [str(images)], str(root / "ckpt"), model_dir=str(model_dir),
            **kwargs,
        ),
        predict.predict(
            [str(images)], str(root / "saved"), saved_model=str(export_dir),
            **kwargs,
        ),
    )  # fmt: skip


def _rows(result):
    return json.loads(pathlib.Path(result.predictions).read_text())


def test_checkpoint_and_saved_model_give_the_same_boxes(run):
    got, want = _rows(run.from_saved_model), _rows(run.from_checkpoint)
    assert 0 < len(want) <= 2 * MAX_DETECTIONS
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert (g["image_id"], g["file_name"], g["category_id"]) == (
            w["image_id"], w["file_name"], w["category_id"]
        )  # fmt: skip
        assert g["category_name"] == w["category_name"]
        np.testing.assert_allclose(g["bbox"], w["bbox"], atol=BOX_TOLERANCE_PX)
        assert g["score"] == pytest.approx(w["score"], abs=SCORE_TOLERANCE)


def test_predictions_are_coco_results_with_class_names(run):
    rows = _rows(run.from_checkpoint)
    assert {r["category_name"] for r in rows} <= set(CLASS_NAMES)
    assert {r["file_name"] for r in rows} == {
        str(run.images / "a b.png"), str(run.images / "c.png")
    }  # fmt: skip
    sizes = {str(run.images / "a b.png"): (64, 48), str(run.images / "c.png"): (80, 80)}  # fmt: skip
    for row in rows:
        x, y, w, h = row["bbox"]
        width, height = sizes[row["file_name"]]
        assert 0 <= x and 0 <= y and w > 0 and h > 0
        assert x + w <= width + 0.01 and y + h <= height + 0.01
        assert 0.0 <= row["score"] <= 1.0
    # image_id: 1-based in sorted file order, counting the skipped file.
    assert {r["image_id"] for r in rows} == {1, 3}


def test_undecodable_images_are_skipped_and_counted(run):
    result = run.from_checkpoint
    assert (result.num_images, result.num_skipped) == (2, 1)
    assert "1 skipped (not decodable)" in result.summary()
    drawn = sorted(p.name for p in pathlib.Path(result.images_dir).iterdir())
    assert drawn == ["a b.png", "c.png"]


def test_drawn_images_differ_from_the_inputs_where_boxes_are(run):
    rows = _rows(run.from_checkpoint)
    for name in ("a b.png", "c.png"):
        source = np.asarray(Image.open(run.images / name).convert("RGB"))
        drawn = np.asarray(
            Image.open(pathlib.Path(run.from_checkpoint.images_dir) / name)
        )
        assert drawn.shape == source.shape
        changed = np.any(drawn != source, axis=-1)
        boxes = [r["bbox"] for r in rows if r["file_name"].endswith(name)]
        for x, y, w, h in boxes:
            # The box's outline (or its label) was drawn over.
            region = changed[int(y) : int(y + h) + 1, int(x) : int(x + w) + 1]
            assert region.any(), (name, (x, y, w, h))
        # Nothing drawn outside the boxes and their labels.
        mask = np.zeros_like(changed)
        for x, y, w, h in boxes:
            mask[max(int(y) - 14, 0) : int(y + h) + 2,
                 max(int(x) - 1, 0) : int(x + w) + 60] = True  # fmt: skip
        assert not changed[~mask].any()


def test_a_threshold_above_every_score_draws_nothing(run, tmp_path):
    result = predict.predict(
        [str(run.images / "c.png")],
        str(tmp_path),
        saved_model=str(run.export_dir),
        score_threshold=1.0,
        progress=False,
    )
    assert result.num_detections == 0 and _rows(result) == []
    drawn = Image.open(pathlib.Path(result.images_dir) / "c.png")
    source = Image.open(run.images / "c.png").convert("RGB")
    assert np.array_equal(np.asarray(drawn), np.asarray(source))


def test_list_images_takes_files_folders_and_globs(tmp_path):
    for name in ("b.jpg", "a.PNG", "c.txt"):
        (tmp_path / name).write_bytes(b"x")
    a, b = str(tmp_path / "a.PNG"), str(tmp_path / "b.jpg")
    assert predict.list_images([str(tmp_path)]) == [a, b]
    assert predict.list_images([f"{tmp_path}/*.jpg", b]) == [b]
    with pytest.raises(predict.PredictError, match="no image there"):
        predict.list_images([str(tmp_path / "*.gif")])
    with pytest.raises(predict.PredictError, match="no image file"):
        predict.list_images([])


def test_missing_models_are_clear_errors(tmp_path):
    image = tmp_path / "a.png"
    image.write_bytes(exports_helpers.image_bytes(fmt="PNG"))
    with pytest.raises(predict.PredictError, match="no config.yaml"):
        predict.predict(
            [str(image)], str(tmp_path / "o"), model_dir=str(tmp_path)
        )
    config_lib.save(tiny_config(), str(tmp_path / "run"))
    with pytest.raises(predict.PredictError, match="no checkpoint"):
        predict.predict(
            [str(image)], str(tmp_path / "o"), model_dir=str(tmp_path / "run")
        )
    with pytest.raises(predict.PredictError, match="no saved_model.pb"):
        predict.predict(
            [str(image)], str(tmp_path / "o"), saved_model=str(tmp_path)
        )
    with pytest.raises(predict.PredictError, match="score_threshold"):
        predict.predict([str(image)], "o", saved_model="x", score_threshold=2)


def test_class_names_and_colours():
    assert predict.class_name(2, CLASS_NAMES) == "rock"
    assert predict.class_name(3, CLASS_NAMES) == "class 3"
    assert predict.class_name(1, ("", "rock")) == "class 1"
    colours = {predict.class_color(i) for i in range(1, 21)}
    assert len(colours) == 20


# -- from a labelled folder to predictions, through the command line ----------


def _main(*argv):
    return main_lib.main(["nasfpn_tf.main", *argv])


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("own_data")
    export = exports_helpers.roboflow_yolo(root, n_train=16, n_valid=4)
    out = root / "data"
    convert.main(
        ["--format=yolo", f"--output_dir={out}",
         f"--train_images={export / 'train' / 'images'}",
         f"--val_images={export / 'valid' / 'images'}",
         "--heldout_fraction=0.3", "--no_progress"]
    )  # fmt: skip
    return root, export, out


@pytest.mark.slow
def test_data_dir_trains_then_predicts(converted, capsys):
    root, export, data_dir = converted
    model_dir = root / "run"
    _main(
        "--mode=train_and_eval",
        f"--model_dir={model_dir}",
        f"--config_file={TINY}",
        f"--data_dir={data_dir}",
        "--params_override=train.steps=4,train.warmup_steps=1,"
        "train.checkpoint_every=4,eval.every=4,model.nms.score_threshold=0.0",
    )
    saved = config_lib.load_saved(str(model_dir))
    assert saved.data.class_names == ("tree", "rock")
    assert saved.model.num_classes == 3
    metrics = [
        json.loads(line)
        for line in (model_dir / "metrics.jsonl").read_text().splitlines()
    ]
    evals = [m for m in metrics if m.get("kind") == "eval"]
    assert evals and {"AP/tree", "AP/rock"} <= set(evals[-1])
    _main(
        "--mode=predict",
        f"--model_dir={model_dir}",
        f"--images={export / 'valid' / 'images'}",
        "--score_threshold=0",
    )
    out = capsys.readouterr().out
    assert "predict: 4 images" in out
    rows = json.loads(
        (model_dir / "predictions" / "predictions.json").read_text()
    )
    assert rows and {r["category_name"] for r in rows} <= {"tree", "rock"}
    assert len(list((model_dir / "predictions" / "images").iterdir())) == 4


@pytest.mark.slow
def test_data_dir_runs_a_two_sample_search(converted):
    root, _, data_dir = converted
    search_dir = root / "search"
    _main(
        "--mode=search",
        f"--model_dir={search_dir}",
        f"--config_file={TINY}",
        f"--data_dir={data_dir}",
        # The default search on the user's data: a (4-step) supernet.
        "--params_override=search.num_samples=2,search.samples_per_update=2,"
        "search.supernet.train_steps=4,search.supernet.warmup_steps=2",
    )
    history = (search_dir / "history.jsonl").read_text().splitlines()
    assert len(history) == 2
    assert (search_dir / "best_spec.json").exists()
