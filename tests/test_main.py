"""Tests for nasfpn_tf.main: flags, config resolution, resume, dispatch.

The library functions main calls are replaced by recorders, so nothing
heavy runs.
"""

import os
import pathlib
import subprocess
import sys
import types

import pytest

from nasfpn_tf import config as config_lib
from nasfpn_tf import main as main_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "tiny.yaml")
HELP_TIMEOUT_S = 60


class _Recorder:
    """Stands in for a library function; remembers its calls."""

    def __init__(self, result=None):
        self.calls = []
        self.keywords = []
        self.result = result

    def __call__(self, *args, **keywords):
        self.calls.append(args)
        self.keywords.append(keywords)
        return self.result


@pytest.fixture
def fakes(monkeypatch):
    """Replaces runner.search, trainer.run, make_strategy and export."""
    import nasfpn_tf.search
    import nasfpn_tf.train

    calls = types.SimpleNamespace(
        search=_Recorder({"best_reward": 0.5}),
        train=_Recorder(),
        export=_Recorder(),
        strategy=types.SimpleNamespace(num_replicas_in_sync=1),
    )
    modules = {
        "nasfpn_tf.search.runner": types.ModuleType("runner"),
        "nasfpn_tf.train.trainer": types.ModuleType("trainer"),
        "nasfpn_tf.train.strategy": types.ModuleType("strategy"),
        "nasfpn_tf.export": types.ModuleType("export"),
    }
    modules["nasfpn_tf.search.runner"].search = calls.search
    modules["nasfpn_tf.train.trainer"].run = calls.train
    modules["nasfpn_tf.train.strategy"].make_strategy = lambda runtime: (
        calls.strategy
    )
    modules["nasfpn_tf.train.strategy"].owns_model_dir = lambda runtime: True
    modules["nasfpn_tf.export"].export = calls.export
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
        package, _, attr = name.rpartition(".")
        monkeypatch.setattr(sys.modules[package], attr, module, raising=False)
    del nasfpn_tf  # only imported so the packages are in sys.modules
    yield calls
    import tf_keras

    tf_keras.mixed_precision.set_global_policy("float32")


def _run_main(*argv):
    """Runs main() on the command line `argv`."""
    return main_lib.main(["nasfpn_tf.main", *argv])


# -- --help --------------------------------------------------------------------


def test_help_runs_and_lists_every_flag():
    result = subprocess.run(
        [sys.executable, "-m", "nasfpn_tf.main", "--help"],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=HELP_TIMEOUT_S,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    text = result.stdout
    for flag in (
        "--mode",
        "--model_dir",
        "--config_file",
        "--params_override",
        "--arch",
        "--tpu",
        "--export_dir",
        "--freeze",
        "--overwrite_config",
        "--log_level",
        "--data_dir",
        "--images",
        "--saved_model",
        "--output_dir",
        "--score_threshold",
        "--warm_start",
    ):
        assert flag in text
    assert (
        "{search,fidelity,supernet,train,eval,train_and_eval,export,predict}"
        in text
    )
    assert "runner.search" in text  # the module docstring is the usage


# -- resolve_config ------------------------------------------------------------


def test_resolve_writes_config_and_resumes_without_flags(tmp_path):
    model_dir = str(tmp_path / "run")
    config = main_lib.resolve_config(
        model_dir, [TINY], "train.batch_size=2,eval.batch_size=2"
    )
    assert config.train.batch_size == 2
    assert config_lib.load_saved(model_dir) == config
    # No config flags: the saved settings win over the defaults.
    assert main_lib.resolve_config(model_dir) == config


def test_resolve_refuses_a_conflicting_rerun(tmp_path):
    model_dir = str(tmp_path / "run")
    main_lib.resolve_config(model_dir, [TINY])
    with pytest.raises(config_lib.ConfigError) as info:
        main_lib.resolve_config(model_dir, [TINY], "train.steps=300")
    message = str(info.value)
    assert "train.steps: saved 700, flags give 300" in message
    assert "--overwrite_config" in message
    assert config_lib.load_saved(model_dir).train.steps == 700  # untouched
    # The same flags again are a plain resume.
    assert main_lib.resolve_config(model_dir, [TINY]).train.steps == 700


def test_resolve_overwrite_config_replaces_the_saved_one(tmp_path):
    model_dir = str(tmp_path / "run")
    main_lib.resolve_config(model_dir, [TINY])
    config = main_lib.resolve_config(
        model_dir, [TINY], "train.steps=300", overwrite_config=True
    )
    assert config.train.steps == 300
    assert config_lib.load_saved(model_dir).train.steps == 300


def test_resolve_arch_and_tpu_flags(tmp_path):
    model_dir = str(tmp_path / "run")
    config = main_lib.resolve_config(model_dir, arch="spec.json", tpu="tpu-a")
    assert config.model.neck.arch == "spec.json"
    assert (config.runtime.strategy, config.runtime.tpu) == ("tpu", "tpu-a")
    # A renamed TPU is where the run executes, not what it computes.
    again = main_lib.resolve_config(model_dir, arch="spec.json", tpu="tpu-b")
    assert again.runtime.tpu == "tpu-b"
    with pytest.raises(config_lib.ConfigError, match="model.neck.arch"):
        main_lib.resolve_config(model_dir, arch="other.json", tpu="tpu-b")


def test_resolve_resume_on_a_tpu_keeps_the_saved_settings(tmp_path):
    model_dir = str(tmp_path / "run")
    saved = main_lib.resolve_config(model_dir, [TINY], "train.steps=500")
    config = main_lib.resolve_config(model_dir, tpu="tpu-c")
    assert config.train.steps == 500
    assert (config.runtime.strategy, config.runtime.tpu) == ("tpu", "tpu-c")
    assert config_lib.diff(saved, config).keys() == {
        "runtime.strategy",
        "runtime.tpu",
    }
    assert config_lib.load_saved(model_dir) == config


def test_resolve_reports_bad_config(tmp_path):
    with pytest.raises(config_lib.ConfigError, match="Did you mean"):
        main_lib.resolve_config(str(tmp_path), params_override="train.stps=1")
    assert not (tmp_path / "config.yaml").exists()


# -- main() dispatch -----------------------------------------------------------


def test_search_is_the_default_mode(fakes, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _run_main()
    (args,) = fakes.search.calls
    config, model_dir = args
    assert config == config_lib.ExperimentConfig()
    assert model_dir == "runs/search"
    assert (tmp_path / "runs" / "search" / "config.yaml").exists()
    assert not fakes.train.calls and not fakes.export.calls
    assert fakes.search.keywords == [{"warm_start": []}]


def test_warm_start_flags_reach_the_search_in_order(fakes, tmp_path):
    model_dir = str(tmp_path / "second")
    _run_main(
        f"--model_dir={model_dir}", "--warm_start=runs/a", "--warm_start=b/"
    )
    assert fakes.search.keywords == [{"warm_start": ["runs/a", "b/"]}]


@pytest.mark.parametrize("mode", ["train", "eval", "train_and_eval"])
def test_trainer_modes_get_a_strategy(fakes, tmp_path, mode):
    model_dir = str(tmp_path / mode)
    _run_main(f"--mode={mode}", f"--model_dir={model_dir}")
    (args,) = fakes.train.calls
    assert args[0] == mode
    assert args[2] == model_dir
    assert args[3] is fakes.strategy
    assert not fakes.search.calls


def test_mixed_precision_is_set_from_the_config(fakes, tmp_path):
    import tf_keras

    _run_main(
        "--mode=train",
        f"--model_dir={tmp_path}",
        "--params_override=train.mixed_precision=mixed_bfloat16",
    )
    assert tf_keras.mixed_precision.global_policy().name == "mixed_bfloat16"


def test_batch_must_split_over_replicas(fakes, tmp_path):
    fakes.strategy.num_replicas_in_sync = 3
    with pytest.raises(config_lib.ConfigError, match="replicas"):
        _run_main("--mode=train", f"--model_dir={tmp_path}")
    assert not fakes.train.calls


def test_export_default_dir(fakes, tmp_path):
    model_dir = str(tmp_path / "run")
    _run_main("--mode=export", f"--model_dir={model_dir}")
    (args,) = fakes.export.calls
    assert args[1:] == (model_dir, f"{model_dir}/export")
    _run_main(
        "--mode=export", f"--model_dir={model_dir}", "--export_dir=/tmp/x"
    )
    assert fakes.export.calls[1][2] == "/tmp/x"
    assert fakes.export.keywords[:2] == [{"freeze": False}] * 2
    _run_main("--mode=export", f"--model_dir={model_dir}", "--freeze")
    assert fakes.export.keywords[2] == {"freeze": True}


def test_main_writes_config_and_refuses_a_conflicting_rerun(fakes, tmp_path):
    model_dir = str(tmp_path / "run")
    _run_main(
        "--mode=train",
        f"--model_dir={model_dir}",
        f"--config_file={TINY}",
        "--params_override=train.steps=500",
    )
    saved = config_lib.load_saved(model_dir)
    assert saved.train.steps == 500
    # Resume: no config flags, the saved config is used.
    _run_main("--mode=train", f"--model_dir={model_dir}")
    assert fakes.train.calls[1][1] == saved
    with pytest.raises(SystemExit, match="(?s)Config error:.*train.steps"):
        _run_main(
            "--mode=train",
            f"--model_dir={model_dir}",
            "--params_override=train.steps=600",
        )
    assert len(fakes.train.calls) == 2
    _run_main(
        "--mode=train",
        f"--model_dir={model_dir}",
        "--params_override=train.steps=600",
        "--overwrite_config",
    )
    assert fakes.train.calls[2][1].train.steps == 600


def test_layered_config_files(fakes, tmp_path):
    extra = tmp_path / "extra.yaml"
    extra.write_text("train: {steps: 770}\n")
    _run_main(
        f"--model_dir={tmp_path / 'run'}",
        f"--config_file={TINY}",
        f"--config_file={extra}",
        "--arch=best_spec.json",
    )
    config = fakes.search.calls[0][0]
    assert config.train.steps == 770
    assert config.model.neck.arch == "best_spec.json"


def test_positional_arguments_are_rejected(fakes, capsys):
    with pytest.raises(SystemExit) as raised:
        main_lib.main(["nasfpn_tf.main", "train"])
    assert raised.value.code == 2  # argparse's usage error
    assert "unrecognized arguments: train" in capsys.readouterr().err


@pytest.mark.parametrize(
    "flag, expected",
    [
        ("--overwrite_config", True),
        ("--overwrite_config=true", True),
        ("--overwrite_config=false", False),
        ("--nooverwrite_config", False),
    ],
)
def test_boolean_flags_take_every_spelling(flag, expected):
    args = main_lib.build_parser().parse_args([flag])
    assert args.overwrite_config is expected
    assert main_lib.build_parser().parse_args([]).overwrite_config is False


def test_repeatable_flags_collect_in_order():
    args = main_lib.build_parser().parse_args(
        ["--config_file=a.yaml", "--config_file", "b.yaml"]
    )
    assert args.config_file == ["a.yaml", "b.yaml"]


def test_execute_rejects_unknown_mode():
    with pytest.raises(ValueError, match="mode"):
        main_lib.execute("predict", config_lib.ExperimentConfig(), "x")


# -- --data_dir ----------------------------------------------------------------


def _dataset_dir(root, splits=("train", "val")):
    from nasfpn_tf.data import dataset

    folder = root / "data"
    info = dataset.DatasetInfo(
        categories=((1, "tree"), (2, "rock")),
        splits=tuple(
            (
                split,
                dataset.SplitInfo(
                    f"{folder}/{split}-*-of-*.tfrecord",
                    f"{folder}/{split}.json",
                    4,
                    9,
                ),
            )
            for split in splits
        ),
    )
    dataset.save(info, str(folder))
    return folder


def test_data_dir_sets_data_classes_and_names(fakes, tmp_path):
    folder = _dataset_dir(tmp_path, ("train", "heldout", "val"))
    _run_main(
        "--mode=train_and_eval",
        f"--model_dir={tmp_path / 'run'}",
        f"--config_file={TINY}",
        f"--data_dir={folder}",
        "--params_override=data.max_instances=7",
    )
    config = fakes.train.calls[0][1]
    assert config.model.num_classes == 3
    assert config.data.class_names == ("tree", "rock")
    assert config.data.train_path == f"{folder}/train-*-of-*.tfrecord"
    assert config.data.val_path == f"{folder}/val-*-of-*.tfrecord"
    assert config.data.heldout_path == f"{folder}/heldout-*-of-*.tfrecord"
    assert config.data.val_annotations == f"{folder}/val.json"
    assert config.data.heldout_annotations == f"{folder}/heldout.json"
    assert config.data.max_instances == 7  # the override still wins
    # Rerunning with the same --data_dir resumes.
    _run_main(
        "--mode=train_and_eval",
        f"--model_dir={tmp_path / 'run'}",
        f"--config_file={TINY}",
        f"--data_dir={folder}",
        "--params_override=data.max_instances=7",
    )
    assert fakes.train.calls[1][1] == config


def test_data_dir_errors_are_one_message(fakes, tmp_path):
    with pytest.raises(SystemExit, match="Config error: --data_dir=.*no "
                       "dataset.json; write one with python -m "
                       "nasfpn_tf.data.convert"):  # fmt: skip
        _run_main("--mode=train", f"--data_dir={tmp_path}")
    folder = _dataset_dir(tmp_path, ("train", "val"))
    with pytest.raises(
        SystemExit, match="no 'heldout' split, which --mode=search reads; "
        "convert again with --heldout_fraction"
    ):  # fmt: skip
        _run_main("--mode=search", f"--data_dir={folder}")
    assert not fakes.search.calls


def test_predict_needs_a_model(fakes):
    from nasfpn_tf import predict

    with pytest.raises(predict.PredictError, match="--model_dir"):
        _run_main("--mode=predict", "--images=x.jpg")
