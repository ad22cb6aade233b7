"""Tests of nasfpn_tf.export_tflite and nasfpn_tf.tflite_detector: TFLite
models of a trained Lite run, written and run.

A seeded tiny Lite detector (MobileNetV2 at width 0.25, separable convs,
ReLU6, 128 px) with a spread head is checkpointed and exported once per
module to float32 and int8 (the conversions are the slow part, ~12 s
each); float16 and a real SavedModel round trip are marked slow. The
TFLite files run in a fresh Python process. The reference detections are
the export module's (`predict.from_checkpoint`: the computation the
SavedModel holds, which tests/test_export.py checks against a loaded
SavedModel).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tf_keras
from PIL import Image
from test_export import sample_image, save_checkpoint

from nasfpn_tf import config as config_lib
from nasfpn_tf import export as export_lib
from nasfpn_tf import export_tflite, predict, tflite_detector
from nasfpn_tf import main as main_lib
from nasfpn_tf.data import inputs
from nasfpn_tf.modeling import detector, flops

CLASS_NAMES = ("rectangle", "ellipse")
MAX_DETECTIONS = 8
IMAGE_SIZE = 128
CALIBRATION_IMAGES = 4
# Class weights wide enough that scores differ by far more than int8's
# step (1/256), so NMS keeps like boxes in TF and in TFLite int8; box
# weights narrow enough that box deltas stay within Model Garden's
# decoding clip, which TFLite's op does not apply.
SCORE_WEIGHT_STD = 2.0
BOX_WEIGHT_STD = 0.1
# The input is rounded to uint8 after the SavedModel's resize (0.5 / 255
# at most per pixel), which moves the outputs by up to ~2e-4 here.
FLOAT32_TOLERANCE = 1e-3
FLOAT16_TOLERANCE = 2e-3
# int8, measured on this model: scores within 0.004 of the SavedModel's
# at each rank; the leading detection found at IoU 0.99. The bounds leave
# room. Past the leading ones, scores closer than int8's step of the
# sigmoid (1/256) may swap places, so only the leading ones are matched.
INT8_SCORE_TOLERANCE = 0.03
INT8_SCORE_STEP = 1 / 256
INT8_MIN_IOU = 0.9
SUBPROCESS_TIMEOUT_S = 300
REPO = pathlib.Path(__file__).resolve().parents[1]

# Runs each .tflite file on the prepared input saved as .npy, with LiteRT
# alone (no TensorFlow import); prints the raw outputs as JSON.
FRESH_PROCESS = """
import json, sys
import numpy as np
from ai_edge_litert.interpreter import Interpreter
inputs = np.load(sys.argv[1])
out = {}
for path in sys.argv[2:]:
    runner = Interpreter(model_path=path).get_signature_runner()
    out[path] = {k: v.tolist() for k, v in runner(images=inputs).items()}
print(json.dumps(out))
"""


# The network alone converted to int8 at a size 2**max_level (128) does
# not divide: P3..P7 are 9, 5, 3, 2, 1 wide, so the neck pads before
# max-pooling. Measured: every output within 0.013 x its standard
# deviation of TensorFlow's.
UNDIVIDED_SIZE = 72
NETWORK_INT8_TOLERANCE = 0.05  # x the output's standard deviation

# Runs a network-only .tflite file on the .npy input; prints its outputs
# by shape (the file has no signature; every output's shape differs).
FRESH_NETWORK = """
import json, sys
import numpy as np
from ai_edge_litert.interpreter import Interpreter
interpreter = Interpreter(model_path=sys.argv[1])
interpreter.allocate_tensors()
interpreter.set_tensor(
    interpreter.get_input_details()[0]["index"], np.load(sys.argv[2])
)
interpreter.invoke()
print(json.dumps({
    "x".join(map(str, d["shape"])): interpreter.get_tensor(d["index"]).tolist()
    for d in interpreter.get_output_details()
}))
"""


def tiny_lite_config() -> config_lib.ExperimentConfig:
    # Score threshold 0 keeps MAX_DETECTIONS boxes from an untrained model.
    return config_lib.override(
        config_lib.from_dict({}),
        {
            "model.backbone": "mobilenetv2",
            "model.backbone_width": 0.25,
            "model.image_size": IMAGE_SIZE,
            "model.neck.filters": 8,
            "model.neck.repeats": 1,
            "model.neck.use_separable_conv": True,
            "model.head.num_filters": 8,
            "model.head.num_convs": 1,
            "model.head.use_separable_conv": True,
            "model.norm.activation": "relu6",
            "model.nms.score_threshold": 0.0,
            "model.nms.max_detections": MAX_DETECTIONS,
            "data.class_names": list(CLASS_NAMES),
            "data.synthetic.num_train": 8,
            "data.synthetic.num_heldout": 4,
            "data.synthetic.num_val": 4,
        },
    )


def spread_head(model: detector.DetectorModel, seed: int = 0) -> None:
    """Random class and box output layers (separable: 3 weights each)."""
    rng = np.random.default_rng(seed)
    outputs = [
        var
        for var in model.head.weights
        if var.name.split("/")[-2] in ("scores", "boxes")
    ]
    assert len(outputs) == 6, [var.name for var in model.head.weights]
    for var in outputs:
        std = (
            SCORE_WEIGHT_STD
            if var.name.split("/")[-2] == "scores"
            else BOX_WEIGHT_STD
        )
        var.assign(rng.normal(0, std, var.shape))


@dataclasses.dataclass(frozen=True)
class Exported:
    model_dir: pathlib.Path
    config: config_lib.ExperimentConfig
    result: export_tflite.TFLiteExport
    image: np.ndarray
    reference: dict[str, np.ndarray]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """The generated set in a folder of this module's own."""
    saved = os.environ.get(inputs.DATA_DIR_ENV)
    path = tmp_path_factory.mktemp("data")
    os.environ[inputs.DATA_DIR_ENV] = str(path)
    yield path
    if saved is None:
        os.environ.pop(inputs.DATA_DIR_ENV, None)
    else:
        os.environ[inputs.DATA_DIR_ENV] = saved


def checkpointed_lite_run(
    root: pathlib.Path,
) -> tuple[pathlib.Path, detector.DetectorModel]:
    config = tiny_lite_config()
    model_dir = root / "run"
    config_lib.save(config, str(model_dir))
    tf_keras.utils.set_random_seed(0)
    model = detector.build_detector(config.model)
    spread_head(model)
    save_checkpoint(model, str(model_dir))
    return model_dir, model


@pytest.fixture(scope="module")
def exported(tmp_path_factory, data_dir) -> Exported:
    model_dir, model = checkpointed_lite_run(tmp_path_factory.mktemp("lite"))
    config = tiny_lite_config()
    result = export_tflite.export(
        config,
        str(model_dir),
        str(model_dir / "export" / "tflite"),
        ("float32", "int8"),
        representative_images=CALIBRATION_IMAGES,
    )
    image = sample_image()
    # What the SavedModel computes (predict.from_checkpoint wraps it so).
    serve = export_lib.DetectionExportModule(config, model).serve
    reference = {
        k: np.asarray(v)[0] for k, v in serve(tf.constant(image[None])).items()
    }
    return Exported(model_dir, config, result, image, reference)


def _run_fresh(script: str, *args: str):
    """Runs ``script`` in a fresh Python process; its last stdout line as
    JSON."""
    process = subprocess.run(
        [sys.executable, "-c", script, *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
        cwd=REPO,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert process.returncode == 0, process.stderr[-3000:]
    return json.loads(process.stdout.strip().splitlines()[-1])


def run_fresh(image: np.ndarray, paths, tmp_path) -> dict:
    """Each model's detections on `image` (SavedModel terms), the model
    run in a new process that imports LiteRT only."""
    inputs, scale = tflite_detector.prepare_image(
        image, IMAGE_SIZE, (IMAGE_SIZE, IMAGE_SIZE)
    )
    inputs_path = tmp_path / "inputs.npy"
    np.save(inputs_path, inputs)
    raw = _run_fresh(FRESH_PROCESS, str(inputs_path), *paths)
    return {
        path: tflite_detector.to_original(
            {k: np.asarray(v) for k, v in outputs.items()},
            (IMAGE_SIZE, IMAGE_SIZE),
            scale,
            image.shape[:2],
        )
        for path, outputs in raw.items()
    }


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[N, 4] x [M, 4] yxyx -> [N, M]."""
    top = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(bottom - top, 0, None), axis=-1)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=-1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=-1)
    return inter / (area_a[:, None] + area_b[None, :] - inter + 1e-12)


def leading_found(got: dict, want: dict) -> tuple[int, float]:
    """How many of the reference's leading detections there are (those
    whose scores stay more than INT8_SCORE_STEP apart; past them int8's
    rounding may reorder ties), and the lowest IoU of one of them with a
    box of its class in `got`."""
    scores = want["detection_scores"][: int(want["num_detections"])]
    gaps = scores[:-1] - scores[1:]
    leading = int(np.argmax(gaps <= INT8_SCORE_STEP)) if len(gaps) else 0
    boxes = want["detection_boxes"][:leading]
    same = (
        want["detection_classes"][:leading, None]
        == got["detection_classes"][None]
    )
    overlaps = np.where(same, iou(boxes, got["detection_boxes"]), 0.0)
    return leading, float(np.min(np.max(overlaps, axis=1), initial=1.0))


def assert_close(got: dict, want: dict, tolerance: float) -> None:
    assert int(got["num_detections"]) == int(want["num_detections"])
    np.testing.assert_array_equal(
        got["detection_classes"], want["detection_classes"]
    )
    for key in ("detection_boxes", "detection_scores"):
        np.testing.assert_allclose(got[key], want[key], atol=tolerance)


def test_files_beside_each_model(exported):
    for model in exported.result.models:
        assert pathlib.Path(model.path).stat().st_size > 0
        info = json.loads(pathlib.Path(model.info).read_text())
        assert info["quantization"] == model.quantization
        assert info["input"]["name"] == "images"
        assert info["input"]["shape"] == [1, IMAGE_SIZE, IMAGE_SIZE, 3]
        assert info["input"]["dtype"] == "uint8"
        assert info["preprocessing"]["image_size"] == IMAGE_SIZE
        assert info["preprocessing"]["pad_value"] == [124, 116, 104]
        assert info["class_names"] == list(CLASS_NAMES)
        assert info["outputs"]["detection_boxes"]["shape"] == [
            1,
            MAX_DETECTIONS,
            4,
        ]
        assert info["postprocessing"]["op"] == "TFLite_Detection_PostProcess"
        summary = pathlib.Path(model.summary).read_text()
        assert "images" in summary and "TFLite_Detection_PostProcess" in summary
    assert str(exported.result).count(".tflite") == 2


def test_representative_images_flag(exported):
    infos = {
        m.quantization: json.loads(pathlib.Path(m.info).read_text())
        for m in exported.result.models
    }
    assert infos["int8"]["representative_images"] == CALIBRATION_IMAGES
    assert infos["float32"]["representative_images"] == 0
    images = export_tflite.calibration_images(exported.config, 3)
    assert len(images) == 3
    assert all(x.shape == (1, IMAGE_SIZE, IMAGE_SIZE, 3) for x in images)
    assert all(x.dtype == np.uint8 for x in images)
    with pytest.raises(export_tflite.TFLiteExportError, match="expected >= 1"):
        export_tflite.calibration_images(exported.config, 0)


def test_int8_model_computes_in_integers(exported):
    """Also fails loudly if the interpreter's private op list changes."""
    path = exported.result.path("int8")
    interpreter = tflite_detector.TFLiteDetector(path).interpreter
    counts = export_tflite.op_counts(interpreter)
    assert counts["CONV_2D int8"] > 0
    assert counts["DEPTHWISE_CONV_2D int8"] > 0
    assert set(export_tflite.float_ops(counts)) == {
        "QUANTIZE float32",  # the input, once
        "TFLite_Detection_PostProcess float32",
    }


def test_fresh_process_matches_saved_model(exported, tmp_path):
    paths = [m.path for m in exported.result.models]
    results = run_fresh(exported.image, paths, tmp_path)
    want = exported.reference
    assert int(want["num_detections"]) == MAX_DETECTIONS
    assert_close(
        results[exported.result.path("float32")], want, FLOAT32_TOLERANCE
    )
    int8 = results[exported.result.path("int8")]
    assert int(int8["num_detections"]) == MAX_DETECTIONS
    np.testing.assert_allclose(
        np.sort(int8["detection_scores"]),
        np.sort(want["detection_scores"]),
        atol=INT8_SCORE_TOLERANCE,
    )
    leading, lowest_iou = leading_found(int8, want)
    assert leading >= 1
    assert lowest_iou >= INT8_MIN_IOU


def test_predict_reads_a_tflite_file(exported, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(exported.image).save(images / "a.png")
    result = predict.predict(
        [str(images)],
        str(tmp_path / "out"),
        saved_model=exported.result.path("float32"),
        score_threshold=0.0,
        progress=False,
    )
    rows = json.loads(pathlib.Path(result.predictions).read_text())
    want = exported.reference
    height, width = exported.image.shape[:2]
    expected = []  # predict drops boxes that clipping left without area
    for box, class_id in zip(
        want["detection_boxes"], want["detection_classes"]
    ):
        ymin, xmin, ymax, xmax = box * [height, width, height, width]
        if xmax > xmin and ymax > ymin:
            expected.append(
                (
                    CLASS_NAMES[class_id - 1],
                    [xmin, ymin, xmax - xmin, ymax - ymin],
                )
            )
    assert len(rows) == len(expected) > 0
    for row, (name, bbox) in zip(rows, expected):
        assert row["category_name"] == name
        np.testing.assert_allclose(row["bbox"], bbox, atol=0.05)
    assert (tmp_path / "out" / "images" / "a.png").exists()


def test_predict_bad_tflite_path_is_a_user_error(tmp_path):
    image = tmp_path / "a.png"
    Image.fromarray(sample_image()).save(image)
    with pytest.raises(predict.PredictError, match="no .tflite file") as info:
        predict.predict(
            [str(image)],
            str(tmp_path / "out"),
            saved_model=str(tmp_path / "missing.tflite"),
            progress=False,
        )
    assert "\n" not in str(info.value)


def test_not_a_tflite_model_is_a_user_error(tmp_path):
    path = tmp_path / "model_float32.tflite"
    path.write_bytes(b"not a flatbuffer")
    (tmp_path / "model_float32.json").write_text("{}")
    with pytest.raises(tflite_detector.TFLiteExportError) as info:
        tflite_detector.TFLiteDetector(str(path))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--tflite_quantization=int4"], "--tflite_quantization: expected"),
        (["--representative_images=0", "--tflite_quantization=int8"], ">= 1"),
    ],
)
def test_bad_export_flags_are_one_line_errors(exported, flags, message):
    argv = [
        "main",
        "--mode=export",
        "--format=tflite",
        f"--model_dir={exported.model_dir}",
        *flags,
    ]
    with pytest.raises(SystemExit) as info:
        main_lib.cli_main(argv)
    text = str(info.value)
    assert text.startswith("Error: ") and message in text
    assert "\n" not in text


def test_run_without_checkpoint_is_a_one_line_error(tmp_path):
    config_lib.save(tiny_lite_config(), str(tmp_path / "run"))
    argv = [
        "main",
        "--mode=export",
        "--format=tflite",
        f"--model_dir={tmp_path / 'run'}",
    ]
    with pytest.raises(SystemExit) as info:
        main_lib.cli_main(argv)
    assert str(info.value).startswith("Error: No checkpoint in ")
    assert "\n" not in str(info.value)


def test_format_applies_to_export_only(capsys):
    with pytest.raises(SystemExit) as info:
        main_lib.main(["main", "--mode=train", "--format=tflite"])
    assert info.value.code == 2
    assert "--format applies to --mode=export only" in capsys.readouterr().err


def test_int8_network_at_a_size_the_levels_do_not_divide(tmp_path):
    """Converts and runs (in a fresh process: a broken int8 model aborts)
    with outputs close to TensorFlow's."""
    config = config_lib.override(
        tiny_lite_config(), {"model.image_size": UNDIVIDED_SIZE}
    )
    tf_keras.utils.set_random_seed(0)
    model = detector.build_detector(config.model, input_size=UNDIVIDED_SIZE)
    spread_head(model)
    rng = np.random.default_rng(0)
    inputs = [
        rng.normal(size=(1, UNDIVIDED_SIZE, UNDIVIDED_SIZE, 3)).astype(
            np.float32
        )
        for _ in range(CALIBRATION_IMAGES)
    ]
    path = tmp_path / "network_int8.tflite"
    path.write_bytes(
        export_tflite.convert_network(model, UNDIVIDED_SIZE, "int8", inputs)
    )
    np.save(tmp_path / "inputs.npy", inputs[0])
    got = _run_fresh(FRESH_NETWORK, str(path), str(tmp_path / "inputs.npy"))
    scores, boxes = flops.forward_function(model)(tf.constant(inputs[0]))
    want = [*scores.values(), *boxes.values()]
    assert [v.shape[1] for v in scores.values()] == [9, 5, 3, 2, 1]
    assert len(got) == len(want)
    for value in want:
        output = np.asarray(got["x".join(map(str, value.shape))])
        error = np.max(np.abs(output - value.numpy()))
        assert error <= NETWORK_INT8_TOLERANCE * np.std(value.numpy())


def test_check_quantizations():
    assert export_tflite.check_quantizations(["int8", "float32", "int8"]) == (
        "int8",
        "float32",
    )
    with pytest.raises(export_tflite.TFLiteExportError, match="got float8"):
        export_tflite.check_quantizations(["float8"])


def test_to_original_maps_boxes_and_classes():
    raw = {
        "detection_boxes": np.asarray([[[0.25, 0.0, 0.5, 0.5], [0, 0, 1, 1]]]),
        "detection_classes": np.asarray([[1.0, 0.0]]),
        "detection_scores": np.asarray([[0.9, 0.1]]),
        "num_detections": np.asarray([1.0]),
    }
    # A 50 x 100 image resized by 1.28 into a 128 x 128 input.
    out = tflite_detector.to_original(raw, (128, 128), (1.28, 1.28), (50, 100))
    np.testing.assert_allclose(
        out["detection_boxes"], [[0.5, 0.0, 1.0, 0.5], [0, 0, 0, 0]]
    )
    np.testing.assert_array_equal(out["detection_classes"], [2, 0])
    np.testing.assert_allclose(out["detection_scores"], [0.9, 0.0])
    assert out["num_detections"] == 1


@pytest.mark.slow
def test_float16_and_saved_model_round_trip(tmp_path, data_dir):
    """The command line writes float16; a loaded SavedModel of the same
    checkpoint gives the boxes the float16 model gives."""
    model_dir, _ = checkpointed_lite_run(tmp_path)
    process = subprocess.run(
        [
            sys.executable,
            "-m",
            "nasfpn_tf.main",
            "--mode=export",
            "--format=tflite",
            "--tflite_quantization=float16",
            f"--model_dir={model_dir}",
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
        cwd=REPO,
    )
    assert process.returncode == 0, process.stderr[-3000:]
    path = model_dir / "export" / "tflite" / "model_float16.tflite"
    assert path.exists()
    version = export_lib.export(
        tiny_lite_config(), str(model_dir), str(tmp_path / "saved")
    )
    serve = tf.saved_model.load(version).signatures["serving_default"]
    image = sample_image()
    want = {
        k: np.asarray(v)[0]
        for k, v in serve(inputs=tf.constant(image[None])).items()
    }
    got = run_fresh(image, [str(path)], tmp_path)[str(path)]
    assert_close(got, want, FLOAT16_TOLERANCE)


def test_network_inputs_normalise_as_the_exported_file():
    from official.vision.ops import preprocess_ops

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (1, 8, 8, 3), dtype=np.uint8)]
    (got,) = export_tflite.network_inputs(images)
    mean = np.asarray(preprocess_ops.MEAN_NORM, np.float32)
    std = np.asarray(preprocess_ops.STDDEV_NORM, np.float32)
    want = (images[0].astype(np.float32) / 255.0 - mean) / std
    assert got.shape == (1, 8, 8, 3) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-5)
