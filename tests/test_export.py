"""Tests of nasfpn_tf.export: a servable SavedModel of a trained run.

One tiny anytime model is exported once per module (the slow part) and
shared: a fresh Python process, `saved_model_cli` and the test process
itself load it. The reference detections come from the in-memory model
fed by the training pipeline's evaluation parser.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tf_keras
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from tensorflow.python.tools import saved_model_utils

from nasfpn_tf import config as config_lib
from nasfpn_tf import export as export_lib
from nasfpn_tf.arch.spec import NeckSpec
from nasfpn_tf.data import pipeline
from nasfpn_tf.modeling import detector
from nasfpn_tf.train import checkpoints, trainer

TOLERANCE = 1e-4
MAX_DETECTIONS = 8
# Not square and not the model size: resizing must keep the aspect ratio
# and boxes must be normalised to this size, not the model's.
IMAGE_HEIGHT, IMAGE_WIDTH = 48, 80
OTHER_IMAGE_SHAPE = (64, 40, 3)
# Spread of the head's random output weights: scores then differ by far
# more than float noise, so NMS keeps the same boxes in the same order.
HEAD_WEIGHT_STD = 0.3
SUBPROCESS_TIMEOUT_S = 300
SIGNATURES = ("serving_default", "image_bytes", "tf_example")
REPEAT0 = export_lib.REPEAT_SIGNATURE.format(0)


def tiny_config() -> config_lib.ExperimentConfig:
    # Score threshold 0 keeps MAX_DETECTIONS boxes even from an untrained
    # model, so the comparisons below compare real boxes.
    return config_lib.override(
        config_lib.from_dict({}),
        {
            "model.neck.filters": 8,
            "model.head.num_filters": 8,
            "model.neck.repeats": 2,
            "model.anytime": True,
            "model.nms.score_threshold": 0.0,
            "model.nms.max_detections": MAX_DETECTIONS,
        },
    )


def spread_head(model: detector.DetectorModel, seed: int = 0) -> None:
    """Random class and box output layers, far from the prior's ties."""
    rng = np.random.default_rng(seed)
    # Model Garden names the output convs "scores" and "boxes".
    outputs = [
        var
        for var in model.head.weights
        if var.name.split("/")[-2] in ("scores", "boxes")
    ]
    assert len(outputs) == 4, [var.name for var in model.head.weights]
    for var in outputs:
        var.assign(rng.normal(0, HEAD_WEIGHT_STD, var.shape))


def save_checkpoint(model: tf_keras.Model, model_dir: str) -> str:
    """A checkpoint in the trainer's layout (model, optimizer, step)."""
    step = tf.Variable(7, dtype=tf.int64)
    optimizer = tf_keras.optimizers.SGD(0.01, momentum=0.9)
    checkpoint = checkpoints.make_checkpoint(model, optimizer, step)
    manager = checkpoints.make_manager(
        checkpoint, model_dir, step, every=1, keep=1
    )
    return manager.save(checkpoint_number=step)


def checkpointed_run(
    root: pathlib.Path, config: config_lib.ExperimentConfig
) -> tuple[pathlib.Path, detector.DetectorModel]:
    """`root/run` with the config and a checkpoint of a seeded model whose
    head is spread; returns the run directory and the model."""
    model_dir = root / "run"
    config_lib.save(config, str(model_dir))
    tf_keras.utils.set_random_seed(0)
    model = detector.build_detector(config.model)
    spread_head(model)
    save_checkpoint(model, str(model_dir))
    return model_dir, model


def sample_image(shape=(IMAGE_HEIGHT, IMAGE_WIDTH, 3), seed: int = 1):
    """Smooth gradients plus noise, uint8 [H, W, 3]."""
    height, width, _ = shape
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    base = np.stack([ys * 255 / height, xs * 255 / width, (ys + xs) % 64 * 4])
    noise = rng.integers(0, 40, (3, height, width))
    return np.clip(base + noise, 0, 255).astype(np.uint8).transpose(1, 2, 0)


def encode_png(image: np.ndarray) -> bytes:
    return tf.io.encode_png(image).numpy()


def make_example(image: np.ndarray) -> bytes:
    """A serialized detection tf.Example as `nasfpn_tf.data.convert`
    writes them (one box, class 1)."""
    height, width, _ = image.shape

    def floats(*values):
        return tf.train.Feature(float_list=tf.train.FloatList(value=values))

    def ints(*values):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=values))

    def strings(*values):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))

    feature = {
        "image/encoded": strings(encode_png(image)),
        "image/format": strings(b"png"),
        "image/source_id": strings(b"1"),
        "image/height": ints(height),
        "image/width": ints(width),
        "image/object/bbox/ymin": floats(0.1),
        "image/object/bbox/xmin": floats(0.2),
        "image/object/bbox/ymax": floats(0.6),
        "image/object/bbox/xmax": floats(0.7),
        "image/object/class/label": ints(1),
        "image/object/is_crowd": ints(0),
        "image/object/area": floats(100.0),
    }
    example = tf.train.Example(features=tf.train.Features(feature=feature))
    return example.SerializeToString()


def reference_detections(
    model: detector.DetectorModel,
    config: config_lib.ExperimentConfig,
    serialized: bytes,
    exit_repeat: int | None = None,
) -> dict[str, np.ndarray]:
    """The in-memory model on the evaluation parser's input.

    Boxes go from pixels of the resized image to [0, 1] of the original
    one in numpy, independently of the export's own code.
    """
    m = config.model
    parse = pipeline.make_parse_fn(
        pipeline.InputConfig(
            image_size=m.image_size,
            min_level=m.min_level,
            max_level=m.max_level,
            num_scales=m.anchor.num_scales,
            aspect_ratios=m.anchor.aspect_ratios,
            anchor_size=m.anchor.anchor_size,
        ),
        is_training=False,
    )
    image, labels = parse(tf.constant(serialized))
    info = labels["image_info"][None]
    outputs = model(
        image[None],
        image_shape=info[:, 1, :],
        anchor_boxes={k: v[None] for k, v in labels["anchor_boxes"].items()},
        training=False,
        exit_repeat=exit_repeat,
    )
    info = info.numpy()[0]
    (height, width), (scale_y, scale_x) = info[0], info[2]
    boxes = outputs["detection_boxes"].numpy()
    boxes = boxes / [scale_y, scale_x, scale_y, scale_x]
    boxes = np.clip(boxes / [height, width, height, width], 0.0, 1.0)
    count = outputs["num_detections"].numpy()
    classes = outputs["detection_classes"].numpy()
    classes[np.arange(classes.shape[1])[None] >= count[:, None]] = 0
    return {
        "detection_boxes": boxes,
        "detection_scores": outputs["detection_scores"].numpy(),
        "detection_classes": classes,
        "num_detections": count,
    }


def assert_same_detections(got, want, where: str = "") -> None:
    for key in export_lib.OUTPUT_KEYS:
        np.testing.assert_allclose(
            np.asarray(got[key], np.float64),
            np.asarray(want[key], np.float64),
            atol=TOLERANCE,
            rtol=0,
            err_msg=f"{where} {key}",
        )


@dataclasses.dataclass(frozen=True)
class Exported:
    config: config_lib.ExperimentConfig
    model_dir: pathlib.Path
    export_dir: pathlib.Path
    version_dir: str
    image: np.ndarray
    example: bytes
    reference: dict  # signature key -> detections


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Exported:
    root = tmp_path_factory.mktemp("export")
    config = tiny_config()
    model_dir, model = checkpointed_run(root, config)
    image = sample_image()
    example = make_example(image)
    reference = {
        "serving_default": reference_detections(model, config, example),
        REPEAT0: reference_detections(model, config, example, exit_repeat=0),
    }
    # Weights the export must overwrite from the checkpoint.
    for var in model.weights:
        var.assign(tf.zeros_like(var))
    del model
    tf_keras.backend.clear_session()
    export_dir = root / "export"
    version_dir = export_lib.export(config, str(model_dir), str(export_dir))
    return Exported(
        config, model_dir, export_dir, version_dir, image, example, reference
    )


@pytest.fixture(scope="module")
def loaded(exported):
    return tf.saved_model.load(exported.version_dir)


def run_tool(args: list[str], cwd) -> subprocess.CompletedProcess:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    env.pop("PYTHONPATH", None)
    result = subprocess.run(
        args,
        check=False,
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=SUBPROCESS_TIMEOUT_S,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


# --------------------------------------------------------------------------
# The export's layout.


def test_version_dir_is_an_integer_servable(exported):
    export_dir = exported.export_dir
    version = pathlib.Path(exported.version_dir)
    assert version.parent == export_dir
    assert version.name.isdigit()
    # Only the finished version is left: no temporary directory.
    assert sorted(p.name for p in export_dir.iterdir()) == [version.name]
    assert (version / "saved_model.pb").exists()
    assert (version / "variables").is_dir()


def test_config_and_spec_written_next_to_the_model(exported):
    extra = pathlib.Path(exported.version_dir) / export_lib.EXTRA_ASSETS_DIR
    config = config_lib.from_yaml((extra / "config.yaml").read_text())
    assert config == exported.config
    spec = NeckSpec.load(str(extra / export_lib.SPEC_FILENAME))
    assert spec == detector.spec_for(exported.config)


# --------------------------------------------------------------------------
# The served detections equal the in-memory model's.


FRESH_PROCESS_SCRIPT = """
import json, sys
import numpy as np
import tensorflow as tf

version_dir, image_path, example_path, out_path = sys.argv[1:]
image = np.load(image_path)
example = open(example_path, "rb").read()
png = tf.io.encode_png(image)
loaded = tf.saved_model.load(version_dir)
inputs = {
    "serving_default": tf.constant(image[None]),
    "image_bytes": tf.stack([png]),
    "tf_example": tf.constant([example]),
    "serving_repeat0": tf.constant(image[None]),
}
results = {}
for key, value in inputs.items():
    outputs = loaded.signatures[key](inputs=value)
    for name, tensor in outputs.items():
        results[f"{key}/{name}"] = tensor.numpy()
np.savez(out_path, **results)
# The SavedModel carries everything: no project code was needed.
assert not any(m.startswith("nasfpn_tf") for m in sys.modules)
print(json.dumps(sorted(loaded.signatures)))
"""


def test_fresh_process_returns_in_memory_detections(exported, tmp_path):
    image_path = tmp_path / "image.npy"
    example_path = tmp_path / "example.tfexample"
    out_path = tmp_path / "outputs.npz"
    np.save(image_path, exported.image)
    example_path.write_bytes(exported.example)
    result = run_tool(
        [
            sys.executable,
            "-c",
            FRESH_PROCESS_SCRIPT,
            exported.version_dir,
            str(image_path),
            str(example_path),
            str(out_path),
        ],
        cwd=tmp_path,
    )
    signatures = json.loads(result.stdout.strip().splitlines()[-1])
    assert signatures == sorted([*SIGNATURES, REPEAT0])
    outputs = np.load(out_path)
    reference = exported.reference["serving_default"]
    assert reference["num_detections"].tolist() == [MAX_DETECTIONS]
    for key in (*SIGNATURES, REPEAT0):
        got = {
            name: outputs[f"{key}/{name}"] for name in export_lib.OUTPUT_KEYS
        }
        want = exported.reference.get(key, reference)
        assert_same_detections(got, want, where=key)
        assert set(outputs[f"{key}/detection_classes"].ravel()) <= set(
            range(1, exported.config.model.num_classes)
        )
    # The early exit is a different network, not a copy of the last one.
    assert not np.allclose(
        outputs[f"{REPEAT0}/detection_scores"],
        outputs["serving_default/detection_scores"],
    )


def test_outputs_have_documented_names_shapes_and_dtypes(exported, loaded):
    batch = np.stack([exported.image, exported.image[::-1]])
    outputs = loaded.signatures["serving_default"](inputs=tf.constant(batch))
    assert sorted(outputs) == sorted(export_lib.OUTPUT_KEYS)
    assert outputs["detection_boxes"].shape == (2, MAX_DETECTIONS, 4)
    assert outputs["detection_boxes"].dtype == tf.float32
    assert outputs["detection_scores"].shape == (2, MAX_DETECTIONS)
    assert outputs["detection_classes"].dtype == tf.int32
    assert outputs["num_detections"].shape == (2,)
    assert outputs["num_detections"].dtype == tf.int32
    boxes = outputs["detection_boxes"].numpy()
    assert boxes.min() >= 0.0 and boxes.max() <= 1.0
    assert np.all(boxes[..., 2:] >= boxes[..., :2])
    # Batching does not change an image's detections.
    assert_same_detections(
        {k: v[:1] for k, v in outputs.items()},
        exported.reference["serving_default"],
        where="batched",
    )


def test_image_bytes_accepts_mixed_sizes_and_formats(exported, loaded):
    other = sample_image(OTHER_IMAGE_SHAPE, seed=2)
    jpeg = tf.io.encode_jpeg(other, quality=95)
    inputs = tf.stack([encode_png(exported.image), jpeg])
    outputs = loaded.signatures["image_bytes"](inputs=inputs)
    assert outputs["num_detections"].shape == (2,)
    assert_same_detections(
        {k: v[:1] for k, v in outputs.items()},
        exported.reference["serving_default"],
        where="mixed batch",
    )
    alone = loaded.signatures["image_bytes"](inputs=tf.stack([jpeg]))
    assert_same_detections(
        {k: v[1:] for k, v in outputs.items()}, alone, where="jpeg"
    )


# --------------------------------------------------------------------------
# TF Serving's tools see the model.


def test_signature_defs_in_the_meta_graph(exported):
    # What TF Serving reads: the "serve" MetaGraph's SignatureDefs.
    meta_graph = saved_model_utils.get_meta_graph_def(
        exported.version_dir, "serve"
    )
    defs = meta_graph.signature_def
    assert set(defs) >= {*SIGNATURES, REPEAT0}
    for key in (*SIGNATURES, REPEAT0):
        assert list(defs[key].inputs) == [export_lib.INPUT_KEY]
        assert sorted(defs[key].outputs) == sorted(export_lib.OUTPUT_KEYS)
        dtypes = {k: v.dtype for k, v in defs[key].outputs.items()}
        assert dtypes["detection_classes"] == tf.int32.as_datatype_enum
        assert dtypes["detection_boxes"] == tf.float32.as_datatype_enum
    images = defs["serving_default"].inputs[export_lib.INPUT_KEY]
    assert images.dtype == tf.uint8.as_datatype_enum
    assert [d.size for d in images.tensor_shape.dim] == [-1, -1, -1, 3]
    for key in ("image_bytes", "tf_example"):
        strings = defs[key].inputs[export_lib.INPUT_KEY]
        assert strings.dtype == tf.string.as_datatype_enum
        assert [d.size for d in strings.tensor_shape.dim] == [-1]


# Each loads TensorFlow and the model in a new process (~10 s of CPU).
@pytest.mark.slow
def test_saved_model_cli_show_lists_signatures(exported, tmp_path):
    result = run_tool(
        ["saved_model_cli", "show", "--all", "--dir", exported.version_dir],
        cwd=tmp_path,
    )
    text = result.stdout
    for key in (*SIGNATURES, REPEAT0):
        assert f"signature_def['{key}']" in text
    for name in export_lib.OUTPUT_KEYS:
        assert f"outputs['{name}']" in text
    assert "inputs['inputs'] tensor_info:\n        dtype: DT_UINT8" in text
    assert "shape: (-1, -1, -1, 3)" in text
    assert "dtype: DT_STRING" in text


@pytest.mark.slow
def test_saved_model_cli_run_on_a_sample_image(exported, loaded, tmp_path):
    image = sample_image((16, 24, 3), seed=3)
    outdir = tmp_path / "outputs"
    run_tool(
        [
            "saved_model_cli",
            "run",
            "--dir",
            exported.version_dir,
            "--tag_set",
            "serve",
            "--signature_def",
            "serving_default",
            "--input_exprs",
            f"inputs={json.dumps(image[None].tolist())}",
            "--outdir",
            str(outdir),
        ],
        cwd=tmp_path,
    )
    got = {k: np.load(outdir / f"{k}.npy") for k in export_lib.OUTPUT_KEYS}
    want = loaded.signatures["serving_default"](inputs=tf.constant(image[None]))
    assert_same_detections(got, want, where="saved_model_cli")


# --------------------------------------------------------------------------
# Bad requests get TF's errors, not a crash.

REQUEST_ERRORS = (TypeError, ValueError, tf.errors.InvalidArgumentError)


@pytest.mark.parametrize(
    "key, value",
    [
        ("serving_default", tf.zeros([1, 16, 16, 3], tf.float32)),
        ("serving_default", tf.zeros([16, 16, 3], tf.uint8)),
        ("serving_default", tf.zeros([1, 16, 16, 1], tf.uint8)),
        ("serving_default", tf.zeros([1, 0, 16, 3], tf.uint8)),
        ("image_bytes", tf.constant([b"not an image"])),
        ("image_bytes", tf.zeros([1, 16, 16, 3], tf.uint8)),
        ("tf_example", tf.constant([b"not an example"])),
    ],
    ids=[
        "float-image",
        "no-batch-axis",
        "one-channel",
        "empty-image",
        "bad-bytes",
        "image-for-bytes",
        "bad-example",
    ],
)
def test_bad_inputs_raise_clear_errors(loaded, key, value):
    with pytest.raises(REQUEST_ERRORS):
        loaded.signatures[key](inputs=value)


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    config = tiny_config()
    model_dir = tmp_path / "run"
    config_lib.save(config, str(model_dir))
    export_dir = tmp_path / "export"
    with pytest.raises(FileNotFoundError, match="No checkpoint in .*run"):
        export_lib.export(config, str(model_dir), str(export_dir))
    assert not export_dir.exists()


def test_checkpoint_of_another_model_is_rejected(exported, tmp_path):
    config = config_lib.override(exported.config, {"model.num_classes": 5})
    model_dir = tmp_path / "run"
    checkpoint_dir = model_dir / checkpoints.CHECKPOINT_SUBDIR
    # The run's checkpoint files, under a config they do not fit.
    checkpoint_dir.mkdir(parents=True)
    source = exported.model_dir / checkpoints.CHECKPOINT_SUBDIR
    for path in source.iterdir():
        (checkpoint_dir / path.name).write_bytes(path.read_bytes())
    with pytest.raises(ValueError):
        export_lib.export(config, str(model_dir), str(tmp_path / "export"))


# --------------------------------------------------------------------------
# Frozen export (--freeze): the weights as constants.


def test_frozen_export_serves_the_same_detections(tmp_path):
    from nasfpn_tf import main as main_lib

    config = config_lib.override(tiny_config(), {"model.anytime": False})
    model_dir, model = checkpointed_run(tmp_path, config)
    image = sample_image()
    example = make_example(image)
    want = reference_detections(model, config, example)
    del model
    tf_keras.backend.clear_session()

    version_dir = main_lib.execute(
        "export", config, str(model_dir), str(tmp_path / "export"), True
    )
    loaded = tf.saved_model.load(version_dir)
    assert sorted(loaded.signatures) == sorted(SIGNATURES)
    inputs = {
        "serving_default": image[None],
        "image_bytes": tf.constant([encode_png(image)]),
        "tf_example": tf.constant([example]),
    }
    for key, value in inputs.items():
        signature = loaded.signatures[key]
        assert not signature.variables, f"{key} reads variables"
        assert_same_detections(signature(inputs=value), want, where=key)
    assert want["num_detections"].tolist() == [MAX_DETECTIONS]
    assert (
        pathlib.Path(
            version_dir, export_lib.EXTRA_ASSETS_DIR, config_lib.CONFIG_FILENAME
        )
    ).exists()


def test_freeze_rejects_anytime_models_before_writing(tmp_path):
    config = tiny_config()
    assert config.model.anytime
    export_dir = tmp_path / "export"
    with pytest.raises(config_lib.ConfigError, match="anytime"):
        export_lib.export(config, str(tmp_path), str(export_dir), freeze=True)
    assert not export_dir.exists()
    model = detector.build_detector(config.model)
    with pytest.raises(ValueError, match="anytime"):
        export_lib.DetectionExportModule(config, model, freeze=True)


def test_padded_slots_get_the_padding_class():
    classes = tf.constant([[1, 2, 1], [2, 1, 1], [1, 1, 1]])
    got = export_lib.mask_padding(classes, tf.constant([1, 3, 0]))
    assert got.numpy().tolist() == [[1, 0, 0], [2, 1, 1], [0, 0, 0]]


def test_model_is_built_in_float32_under_a_mixed_policy():
    tf_keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        with trainer.precision_policy(export_lib.SERVING_POLICY):
            policy = tf_keras.mixed_precision.global_policy()
            assert policy.compute_dtype == "float32"
        restored = tf_keras.mixed_precision.global_policy()
        assert restored.name == "mixed_bfloat16"
    finally:
        tf_keras.mixed_precision.set_global_policy("float32")


# --------------------------------------------------------------------------
# Which spec is exported.


def test_spec_saved_by_the_trainer_wins(tmp_path):
    config = tiny_config()
    spec = NeckSpec.from_dict(
        {
            "version": 1,
            "min_level": 3,
            "max_level": 7,
            "cells": [
                {"inputs": [0, 1], "level": 3, "op": "sum", "is_output": True},
                {"inputs": [1, 2], "level": 4, "op": "sum", "is_output": True},
                {"inputs": [2, 3], "level": 5, "op": "sum", "is_output": True},
                {"inputs": [3, 4], "level": 6, "op": "sum", "is_output": True},
                {"inputs": [4, 8], "level": 7, "op": "sum", "is_output": True},
            ],
        }
    )
    assert export_lib.resolve_spec(config, str(tmp_path)) == (
        detector.spec_for(config)
    )
    spec.save(str(tmp_path / trainer.SPEC_FILENAME))
    assert export_lib.resolve_spec(config, str(tmp_path)) == spec
    fpn = config_lib.override(
        config, {"model.neck.type": "fpn", "model.anytime": False}
    )
    assert export_lib.resolve_spec(fpn, str(tmp_path)) is None


# --------------------------------------------------------------------------
# End to end: a trained run, exported through main, scores the AP the
# trainer's evaluation reported.


def coco_ap(signature, records: list[bytes], annotation_file: str) -> dict:
    """COCO AP of the served detections (pycocotools, no project code)."""
    detections = []
    for record in records:
        feature = tf.train.Example.FromString(record).features.feature
        height = feature["image/height"].int64_list.value[0]
        width = feature["image/width"].int64_list.value[0]
        image_id = int(feature["image/source_id"].bytes_list.value[0])
        outputs = signature(inputs=tf.constant([record]))
        count = int(outputs["num_detections"][0])
        boxes = outputs["detection_boxes"][0, :count].numpy()
        boxes = boxes * [height, width, height, width]
        for (ymin, xmin, ymax, xmax), score, label in zip(
            boxes,
            outputs["detection_scores"][0, :count].numpy(),
            outputs["detection_classes"][0, :count].numpy(),
        ):
            detections.append(
                {
                    "image_id": image_id,
                    "category_id": int(label),
                    "bbox": [
                        float(xmin),
                        float(ymin),
                        float(xmax - xmin),
                        float(ymax - ymin),
                    ],
                    "score": float(score),
                }
            )
    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO(annotation_file)
        evaluation = COCOeval(truth, truth.loadRes(detections), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return {"AP": evaluation.stats[0], "AP50": evaluation.stats[1]}


@pytest.mark.slow
def test_trained_run_exports_with_its_eval_ap(tmp_path, monkeypatch):
    from nasfpn_tf import main as main_lib
    from nasfpn_tf.data import inputs

    monkeypatch.setenv(inputs.DATA_DIR_ENV, str(tmp_path / "data"))
    model_dir = str(tmp_path / "run")
    config = main_lib.resolve_config(
        model_dir,
        ["configs/tiny.yaml"],
        "train.steps=400,train.checkpoint_every=400,eval.every=400",
    )
    main_lib.execute("train_and_eval", config, model_dir)
    with open(os.path.join(model_dir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    trained = [r for r in rows if r.get("kind") == "eval"][-1]
    assert trained["AP50"] > 0, "the run learnt nothing; AP proves nothing"

    version_dir = main_lib.execute("export", config, model_dir)
    assert pathlib.Path(version_dir).parent == pathlib.Path(model_dir) / (
        main_lib.EXPORT_SUBDIR
    )
    val = inputs.resolve_split(config, "val")
    records = [
        r.numpy()
        for r in tf.data.TFRecordDataset(tf.io.gfile.glob(val.file_pattern))
    ]
    signature = tf.saved_model.load(version_dir).signatures["tf_example"]
    served = coco_ap(signature, records, val.annotations)
    assert served["AP"] == pytest.approx(trained["AP"], abs=TOLERANCE)
    assert served["AP50"] == pytest.approx(trained["AP50"], abs=TOLERANCE)
