"""Bad input through the real entry points: the user reads what is wrong.

Specs given with --arch, configs, data paths and records, each driven
through `nasfpn_tf.main` (in process, or as `python -m nasfpn_tf.main`
where the strategy or the exact terminal output matters). The library
checks themselves are tested next to their modules (test_spec,
test_config, test_convert, test_pipeline); here the question is whether
the user gets a one-line message naming the field before any work.
"""

import copy
import json
import os
import re
import subprocess
import sys
import types

import faults_helpers as fh
import numpy as np
import pytest
import tensorflow as tf
from official.vision.data import tf_example_builder
from test_trainer import FAST, tiny_detector

from nasfpn_tf import config as config_lib
from nasfpn_tf import main as main_lib
from nasfpn_tf.arch import known
from nasfpn_tf.arch.spec import MAX_CELLS, CellSpec, NeckSpec
from nasfpn_tf.data import inputs, pipeline
from nasfpn_tf.modeling import detector
from nasfpn_tf.train import trainer

PACKAGE = os.path.join(fh.REPO, "nasfpn_tf")
SUBPROCESS_TIMEOUT_S = 240
IMAGE_SIZE = 64
NUM_CLASSES = 3  # background + 2


def _fast_flags():
    return "--params_override=" + ",".join(
        f"{key}={value}" for key, value in FAST.items()
    )


def _cli(*argv):
    """Runs the command line's main (`cli_main`) on parsed `argv`.

    Returns:
        The SystemExit message, or None when it returned normally.
    """
    try:
        main_lib.cli_main(["nasfpn_tf.main", *argv])
    except SystemExit as exit_:
        return str(exit_.code)
    return None


@pytest.fixture(scope="session")
def shared_data(tmp_path_factory):
    return fh.shared_data_dir(tmp_path_factory)


@pytest.fixture
def no_training(monkeypatch):
    """Replaces trainer.run and export with recorders of their calls."""
    calls = []

    def record(*args):
        calls.append(args)
        return {}

    fake_export = types.ModuleType("export")
    fake_export.export = record
    monkeypatch.setattr(trainer, "run", record)
    monkeypatch.setitem(sys.modules, "nasfpn_tf.export", fake_export)
    yield calls
    import tf_keras

    tf_keras.mixed_precision.set_global_policy("float32")


@pytest.fixture
def no_model(monkeypatch, shared_data):
    """A trainer whose model build fails loudly, on generated data."""
    built = []

    def refuse(*args, **kwargs):
        built.append(args)
        raise AssertionError("the model was built")

    monkeypatch.setattr(detector, "build_detector", refuse)
    monkeypatch.setenv(inputs.DATA_DIR_ENV, shared_data)
    return built


# --------------------------------------------------------------------------
# Specs given with --arch.


def _published():
    return json.loads(known.NASFPN_SPEC.to_json())


def _edit(path, value):
    """A mutation of the published spec's dict: sets `path` to `value`."""

    def mutate(data):
        target = data
        for key in path[:-1]:
            target = target[key]
        if value is _DELETE:
            del target[path[-1]]
        else:
            target[path[-1]] = value
        return data

    return mutate


_DELETE = object()


def _many_cells(data):
    extra = {"inputs": [0, 1], "level": 4, "op": "sum", "is_output": False}
    data["cells"] = [dict(extra)] * MAX_CELLS + data["cells"]
    return data


# A valid spec of levels 3..6: one output cell per level.
_P3_TO_P6_SPEC = NeckSpec(
    tuple(
        CellSpec(inputs=(i, i + 1), level=3 + i, op="sum", is_output=True)
        for i in range(3)
    )
    + (CellSpec(inputs=(3, 2), level=6, op="sum", is_output=True),),
    min_level=3,
    max_level=6,
).to_json()

# name -> (spec text or mutation, what the message must name)
BAD_SPECS = {
    "wrong version": (_edit(["version"], 2), r"spec\.version"),
    "missing field": (_edit(["cells"], _DELETE), r"spec\.cells: required"),
    "extra field": (_edit(["colour"], "red"), r"spec\.colour: unknown field"),
    "level of wrong type": (
        _edit(["cells", 0, "level"], "4"),
        r"cells\[0\]\.level: expected an int",
    ),
    "inputs of wrong type": (
        _edit(["cells", 1, "inputs"], "1,5"),
        r"cells\[1\]\.inputs",
    ),
    "is_output of wrong type": (
        _edit(["cells", 2, "is_output"], "yes"),
        r"cells\[2\]\.is_output: expected a bool",
    ),
    "level out of range": (
        _edit(["cells", 0, "level"], 9),
        r"cells\[0\]\.level: expected 3\.\.7",
    ),
    "negative node index": (
        _edit(["cells", 0, "inputs"], [-1, 3]),
        r"cells\[0\]\.inputs\[0\]",
    ),
    "forward node index": (
        _edit(["cells", 0, "inputs"], [1, 6]),
        r"cells\[0\]\.inputs\[1\]: node 6 does not exist yet",
    ),
    "duplicate inputs": (
        _edit(["cells", 1, "inputs"], [5, 5]),
        r"cells\[1\]\.inputs: a cell merges two different nodes",
    ),
    "unknown op": (_edit(["cells", 0, "op"], "max"), r"cells\[0\]\.op"),
    "missing output level": (
        _edit(["cells", 6, "is_output"], False),
        r"no output cell for level\(s\) \[6\]",
    ),
    "repeated output level": (
        _edit(["cells", 6, "level"], 7),
        r"cells\[6\]\.is_output: level 7 is already output",
    ),
    "empty cell list": (_edit(["cells"], []), r"cells: a spec needs"),
    "huge cell count": (_many_cells, rf"more than the limit of {MAX_CELLS}"),
    "levels other than the model's": (
        _P3_TO_P6_SPEC,
        r"covers levels 3\.\.6 but model\.min_level\.\.max_level is 3\.\.7",
    ),
    "not JSON": ("{cells: [", r"not valid JSON"),
    "a JSON list": ("[1, 2]", r"expected a JSON object, got list"),
}


def _write_spec(tmp_path, content):
    path = tmp_path / "spec.json"
    if callable(content):
        content = json.dumps(content(copy.deepcopy(_published())))
    path.write_text(content)
    return str(path)


def test_there_are_a_dozen_kinds_of_bad_spec():
    assert len(BAD_SPECS) >= 12


@pytest.mark.parametrize("case", sorted(BAD_SPECS))
def test_bad_arch_is_rejected_before_any_work(tmp_path, no_training, case):
    content, pattern = BAD_SPECS[case]
    spec_path = _write_spec(tmp_path, content)
    model_dir = tmp_path / "run"
    message = _cli(
        "--mode=train", f"--model_dir={model_dir}", f"--arch={spec_path}"
    )
    assert message is not None and message.startswith("Config error:")
    assert "model.neck.arch" in message and spec_path in message
    assert re.search(pattern, message), message
    assert not no_training  # nothing trained
    assert not (model_dir / "config.yaml").exists()  # nothing written


def test_missing_arch_file_is_named(tmp_path, no_training):
    missing = str(tmp_path / "best_spec.jsn")
    message = _cli(
        "--mode=train", f"--model_dir={tmp_path / 'run'}", f"--arch={missing}"
    )
    assert f"{missing}: no such spec file" in message
    assert not no_training


def test_good_arch_passes_and_a_resumed_run_checks_it_again(
    tmp_path, no_training
):
    good = _write_spec(tmp_path, known.NASFPN_SPEC.to_json())
    model_dir = tmp_path / "a"
    assert (
        _cli("--mode=train", f"--model_dir={model_dir}", f"--arch={good}")
        is None
    )
    assert no_training[0][1].model.neck.arch == good
    # A resumed run checks the saved spec again: deleted since, it fails.
    os.remove(good)
    message = _cli("--mode=eval", f"--model_dir={model_dir}")
    assert "no such spec file" in message
    assert len(no_training) == 1


def test_bad_arch_on_the_command_line_prints_one_line(tmp_path, shared_data):
    spec_path = _write_spec(tmp_path, BAD_SPECS["unknown op"][0])
    done = subprocess.run(
        fh.main_command(
            "--mode=train",
            f"--model_dir={tmp_path / 'run'}",
            f"--arch={spec_path}",
        ),
        cwd=fh.REPO,
        env=fh.child_env(shared_data),
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert re.search(
        r"Config error: model\.neck\.arch: .*spec\.json: cells\[0\]\.op",
        done.stderr,
    ), done.stderr[-2000:]


# --------------------------------------------------------------------------
# Configs.


@pytest.mark.parametrize(
    "override, pattern",
    [
        ("train.batch_sise=2", (r"Unknown config key 'train\.batch_sise'.*"
                                r"Did you mean 'batch_size'\?")),
        ("modle.image_size=64", (r"Unknown config key 'modle'.*Did you "
                                 r"mean 'model'\?")),
        ("train.steps=many", r"train\.steps expects int, got str 'many'"),
        ("model.neck.filters=1.5", r"model\.neck\.filters expects int"),
        ("train.batch_size=0", r"train\.batch_size must be positive; got 0"),
        ("train.steps=-5", r"train\.steps must be positive; got -5"),
        ("model.image_size=-64", r"model\.image_size must be positive"),
        ("model.image_size=60", r"model\.image_size must be divisible by 8"),
        ("model.neck.repeats=0", r"model\.neck\.repeats must be positive"),
        ("eval.batch_size=-2", r"eval\.batch_size must be positive"),
        ("data.max_instances=0", r"data\.max_instances must be positive"),
    ],
)  # fmt: skip
def test_bad_config_values_are_named(tmp_path, no_training, override, pattern):
    message = _cli(
        "--mode=train",
        f"--model_dir={tmp_path / 'run'}",
        f"--params_override={override}",
    )
    assert message is not None and message.startswith("Config error:")
    assert re.search(pattern, message, re.DOTALL), message
    assert not no_training
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_unknown_key_in_a_yaml_file_names_file_and_match(tmp_path, no_training):
    path = tmp_path / "exp.yaml"
    path.write_text("train:\n  learning_rat: 0.1\n")
    message = _cli(
        "--mode=train",
        f"--model_dir={tmp_path / 'run'}",
        f"--config_file={path}",
    )
    assert str(path) in message
    assert "train.learning_rat" in message
    assert "Did you mean 'learning_rate'?" in message


def test_yaml_is_read_safely(tmp_path, no_training):
    """A YAML tag that would run code is refused, and runs nothing."""
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.yaml"
    path.write_text(
        f"train: !!python/object/apply:os.system ['touch {marker}']\n"
    )
    message = _cli(
        "--mode=train",
        f"--model_dir={tmp_path / 'run'}",
        f"--config_file={path}",
    )
    assert "invalid YAML" in message and str(path) in message
    assert not marker.exists()
    message = _cli(
        "--mode=train",
        f"--model_dir={tmp_path / 'run'}",
        f"--params_override={{train: !!python/object/apply:os.system "
        f"['touch {marker}']}}",
    )
    assert message.startswith("Config error:")
    assert not marker.exists()


# Calls that can run code hidden in data they read.
_UNSAFE = re.compile(
    r"\bpickle\b|\bcPickle\b|\bdill\b|\bmarshal\b|\bshelve\b|"
    r"yaml\.(?:unsafe_)?load\(|yaml\.(?:Unsafe|Full)?Loader\b|"
    r"allow_pickle\s*=\s*True|\beval\(|\bexec\(|safe_mode\s*=\s*False"
)


def test_nothing_in_the_package_unpickles_or_evaluates_input():
    hits = []
    for root, _, files in os.walk(PACKAGE):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(root, name)
            with open(path) as f:
                for number, line in enumerate(f, 1):
                    if _UNSAFE.search(line.split("#")[0]):
                        hits.append(f"{path}:{number}: {line.strip()}")
    assert not hits, "\n".join(hits)


_REPLICAS_SCRIPT = """
import sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration()] * 2
)
from nasfpn_tf import main
sys.argv = ["nasfpn_tf.main"] + sys.argv[1:]
main.run()
"""


def test_batch_not_divisible_by_two_cpu_replicas(tmp_path, shared_data):
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            _REPLICAS_SCRIPT,
            "--mode=train",
            f"--model_dir={tmp_path / 'run'}",
            "--params_override=runtime.strategy=mirrored,train.batch_size=3",
        ],
        cwd=fh.REPO,
        env=fh.child_env(shared_data),
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert (
        "train.batch_size (3) must be divisible by the number of replicas (2)"
        in done.stderr
    ), done.stderr[-3000:]


@pytest.mark.parametrize(
    "override, pattern",
    [
        (
            "data.train_path={missing}/train-*.tfrecord",
            r"data\.train_path '.*/train-\*\.tfrecord' matches no file",
        ),
        (
            "data.train_path={missing}/train.tfrecord",
            r"data\.train_path '.*/train\.tfrecord' names missing file",
        ),
        (
            "data.val_path={records},data.val_annotations={missing}/v.json",
            r"data\.val_annotations '.*/v\.json': no such file",
        ),
    ],
)
def test_missing_data_is_named_before_the_model_is_built(
    tmp_path, no_model, override, pattern
):
    records = _write_records(tmp_path / "ok.tfrecord", [_good(0)])
    override = override.format(missing=tmp_path / "nowhere", records=records)
    message = _cli(
        "--mode=train_and_eval",
        f"--model_dir={tmp_path / 'run'}",
        _fast_flags() + "," + override,
    )
    assert message is not None and message.startswith("Error:"), message
    assert re.search(pattern, message), message
    assert not no_model


def test_missing_data_stops_a_search_before_its_first_child(tmp_path, no_model):
    missing = tmp_path / "nowhere" / "heldout-*.tfrecord"
    model_dir = tmp_path / "search"
    message = _cli(
        "--mode=search",
        f"--model_dir={model_dir}",
        f"--params_override=data.heldout_path={missing}",
    )
    assert message == f"Error: data.heldout_path '{missing}' matches no file."
    assert not no_model
    assert not (model_dir / "history.jsonl").exists()


# --------------------------------------------------------------------------
# Data records: skipped or fixed, never a crash inside a training step.


def _png(seed, height=IMAGE_SIZE, width=IMAGE_SIZE):
    image = np.random.default_rng(seed).integers(
        0, 255, (height, width, 3), np.uint8
    )
    return tf.io.encode_png(image).numpy()


def _example(
    encoded, boxes=(), classes=(), source_id=1, height=None, width=None
):
    """A tf.Example as the converter writes it; boxes [ymin, xmin, ymax,
    xmax] normalised, unchecked (they may be anything)."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    builder = tf_example_builder.TfExampleBuilder()
    builder.add_encoded_image_feature(
        encoded,
        "PNG",
        height or IMAGE_SIZE,
        width or IMAGE_SIZE,
        3,
        str(source_id).encode(),
    )
    builder.add_boxes_feature(
        boxes[:, 1].tolist(),
        boxes[:, 3].tolist(),
        boxes[:, 0].tolist(),
        boxes[:, 2].tolist(),
        list(classes),
    )
    return builder.serialized_example


def _good(i):
    return _example(_png(i), [[0.1, 0.2, 0.6, 0.7]], [1 + i % 2], i + 1)


def _write_records(path, records):
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in records:
            writer.write(record)
    return str(path)


# name -> a record with that problem
BAD_RECORDS = {
    "undecodable image": lambda: _example(b"\x89PNG not an image", source_id=90),
    "annotated size differs from the image": lambda: _example(
        _png(91, 48, 80), [[0.1, 0.1, 0.5, 0.5]], [1], 91, height=64, width=64
    ),
    "zero-area boxes": lambda: _example(
        _png(92), [[0.3, 0.3, 0.3, 0.6], [0.2, 0.5, 0.4, 0.5]], [1, 2], 92
    ),
    "negative and out-of-bounds coordinates": lambda: _example(
        _png(93), [[-0.4, -0.2, 0.5, 0.5], [0.6, 0.7, 1.8, 2.5]], [1, 2], 93
    ),
    "inverted box": lambda: _example(_png(94), [[0.8, 0.8, 0.2, 0.2]], [1], 94),
    "no boxes": lambda: _example(_png(95), source_id=95),
    "class ids outside the label map": lambda: _example(
        _png(96), [[0.1, 0.1, 0.6, 0.6], [0.2, 0.2, 0.9, 0.9]], [7, -3], 96
    ),
}  # fmt: skip


def _bad_data(tmp_path):
    """Good records mixed with every bad kind, and a truncated file."""
    folder = tmp_path / "records"
    folder.mkdir()
    _write_records(
        folder / "a.tfrecord",
        [_good(0)] + [make() for make in BAD_RECORDS.values()] + [_good(1)],
    )
    cut = _write_records(folder / "b.tfrecord", [_good(i) for i in range(2, 6)])
    fh.truncate(cut, 0.7)  # the rest of that file is lost
    return str(folder / "*.tfrecord"), cut


def test_bad_records_are_skipped_or_fixed_and_training_goes_on(
    tmp_path, monkeypatch, shared_data
):
    pattern, cut = _bad_data(tmp_path)
    monkeypatch.setattr(detector, "build_detector", tiny_detector)
    monkeypatch.setenv(inputs.DATA_DIR_ENV, shared_data)
    config = config_lib.override(
        config_lib.ExperimentConfig(),
        {**FAST, "train.steps": 6, "data.train_path": pattern},
    )
    result = trainer.run("train", config, str(tmp_path / "run"))
    assert result["steps"] == 6 and np.isfinite(result["final_loss"])
    audit = pipeline.audit_records(pattern)
    assert audit.corrupt_files == (cut,)
    assert audit.undecodable == 1
    # Each record the training pipeline keeps parses to finite targets.
    dataset = pipeline.build_dataset(
        pattern,
        pipeline.InputConfig(
            image_size=IMAGE_SIZE, num_scales=1, aspect_ratios=(1.0,)
        ),
        is_training=False,
        batch_size=1,
        drop_remainder=False,
    )
    count = 0
    for _, labels in dataset:
        count += 1
        for level in labels["box_targets"].values():
            assert np.isfinite(level.numpy()).all()
        gt = labels["groundtruths"]["boxes"].numpy()
        assert np.isfinite(gt).all()
    assert count == audit.usable


def test_a_training_set_without_one_usable_record_is_a_clear_error(
    tmp_path, monkeypatch, shared_data
):
    folder = tmp_path / "records"
    folder.mkdir()
    _write_records(
        folder / "a.tfrecord",
        [_example(b"not a png", source_id=i) for i in range(3)],
    )
    cut = _write_records(folder / "b.tfrecord", [_good(0), _good(1)])
    fh.truncate(cut, 0.3)  # not even the first record survives
    pattern = str(folder / "*.tfrecord")
    monkeypatch.setattr(detector, "build_detector", tiny_detector)
    monkeypatch.setenv(inputs.DATA_DIR_ENV, shared_data)
    message = _cli(
        "--mode=train",
        f"--model_dir={tmp_path / 'run'}",
        _fast_flags() + f",data.train_path={pattern}",
    )
    assert message is not None and message.startswith("Error:"), message
    assert f"data.train_path {pattern!r} holds no usable example" in message
    assert "3 intact record(s) of which 3 do not decode" in message
    assert cut in message
