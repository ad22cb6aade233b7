"""NAS-FPN (Ghiasi et al., CVPR 2019): search, train, evaluate, export.

With no flags it runs a small architecture search on generated data,
sized for a CPU. Each mode reads the config, writes it to
MODEL_DIR/config.yaml, and calls one library function:

  search          nasfpn_tf.search.runner.search
  fidelity        nasfpn_tf.search.fidelity.run (does the proxy rank specs
                  as the longer reference training does?)
  train, eval,
  train_and_eval  nasfpn_tf.train.trainer.run
  export          nasfpn_tf.export.export
  predict         nasfpn_tf.predict.predict (reads, writes no config)

Rerunning with the same --model_dir resumes with the saved config.
--data_dir=DIR takes the data of a folder the converter wrote
(python -m nasfpn_tf.data.convert): paths, classes and their names.

Examples:
  python -m nasfpn_tf.main
  python -m nasfpn_tf.main --mode=train_and_eval \\
      --config_file=configs/nasfpn_r50_640.yaml --model_dir=runs/r50 \\
      --params_override=train.batch_size=8
  python -m nasfpn_tf.main --mode=train --arch=runs/search/best_spec.json
  python -m nasfpn_tf.main --mode=train_and_eval --data_dir=data/mine \\
      --model_dir=runs/mine
  python -m nasfpn_tf.main --mode=predict --model_dir=runs/mine \\
      --images=photos/ --output_dir=runs/mine/predictions
"""

from __future__ import annotations

import logging as std_logging
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from absl import app, flags, logging

from nasfpn_tf import config as config_lib
from nasfpn_tf.errors import UserError
from nasfpn_tf.run_files import EXPORT_SUBDIR

# TensorFlow's C++ start-up lines (CUDA probing, CPU features) say nothing a
# user can act on; TF_CPP_MIN_LOG_LEVEL set in the environment still wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Libraries that log chattily at INFO through the root logger.
QUIET_LOGGERS = ("matplotlib", "PIL", "h5py")

MODES = (
    "search",
    "fidelity",
    "train",
    "eval",
    "train_and_eval",
    "export",
    "predict",
)
TRAINER_MODES = ("train", "eval", "train_and_eval")
# absl verbosity names (absl reads ints as its own levels, not logging's).
LOG_LEVELS = ("debug", "info", "warning", "error")
# Keys that may differ from the saved config on resume: where the run
# executes, not what it computes (a TPU is often renamed between runs).
RESUME_FREE_KEYS = ("runtime.tpu",)
DEFAULT_RUNS_DIR = "runs"
# Modes that build the neck from model.neck.arch (the search samples its
# own specs).
ARCH_MODES = ("train", "eval", "train_and_eval", "export")
# The splits of a --data_dir each mode reads.
MODE_SPLITS = {
    "search": ("train", "heldout"),
    "fidelity": ("train", "heldout"),
    "train": ("train",),
    "eval": ("val",),
    "train_and_eval": ("train", "val"),
    "export": (),
}
SPLIT_HINTS = {
    "train": "--train_sets/--train_images/--train_annotations",
    "val": "--val_sets/--val_images/--val_annotations",
    "heldout": "--heldout_fraction",
}

_MODE = flags.DEFINE_enum("mode", "search", MODES, "What to run.")
_MODEL_DIR = flags.DEFINE_string(
    "model_dir",
    "",
    "Directory of the run (local or gs://): config.yaml, checkpoints, "
    "history. Default: runs/<mode>.",
)
_CONFIG_FILE = flags.DEFINE_multi_string(
    "config_file",
    [],
    "YAML config file (repeatable: later files win).",
)
_PARAMS_OVERRIDE = flags.DEFINE_string(
    "params_override",
    "",
    "Applied after the files: 'train.batch_size=8,model.image_size=256' "
    "or YAML/JSON text such as '{train: {batch_size: 8}}'.",
)
_DATA_DIR = flags.DEFINE_string(
    "data_dir",
    "",
    "A folder written by python -m nasfpn_tf.data.convert: its "
    "dataset.json sets the data paths, COCO annotations, "
    "model.num_classes and data.class_names (after --config_file, "
    "before --params_override).",
)
_ARCH = flags.DEFINE_string(
    "arch",
    None,
    "Neck spec JSON (e.g. a search's best_spec.json); sets "
    "model.neck.arch. Default: the config's (the published NAS-FPN).",
)
_TPU = flags.DEFINE_string(
    "tpu",
    None,
    "TPU name or address; sets runtime.tpu and runtime.strategy=tpu.",
)
_EXPORT_DIR = flags.DEFINE_string(
    "export_dir",
    "",
    "Where --mode=export writes the SavedModel. Default: <model_dir>/export.",
)
_FREEZE = flags.DEFINE_bool(
    "freeze",
    False,
    "--mode=export: store the weights as constants (batch norms folded "
    "into the convs): faster CPU serving, no variables in the SavedModel, "
    "a slow first request. Not for model.anytime.",
)
_IMAGES = flags.DEFINE_multi_string(
    "images",
    [],
    "--mode=predict: image files, folders or globs (repeatable).",
)
_SAVED_MODEL = flags.DEFINE_string(
    "saved_model",
    "",
    "--mode=predict: an exported SavedModel (an export folder, its newest "
    "version is used, or a version folder). Default: the newest "
    "checkpoint of --model_dir.",
)
_OUTPUT_DIR = flags.DEFINE_string(
    "output_dir",
    "",
    "--mode=predict: where predictions.json and the drawn images go. "
    "Default: <model_dir>/predictions.",
)
_SCORE_THRESHOLD = flags.DEFINE_float(
    "score_threshold",
    0.3,
    "--mode=predict: detections below this score are neither drawn nor "
    "written.",
)
_OVERWRITE_CONFIG = flags.DEFINE_bool(
    "overwrite_config",
    False,
    "Replace a saved config.yaml that differs from the one the flags "
    "give, instead of failing.",
)
_LOG_LEVEL = flags.DEFINE_enum(
    "log_level",
    "warning",
    list(LOG_LEVELS),
    "Logging verbosity. Progress lines and results are printed at any "
    "level; 'info' adds the libraries' logs (orbit, TensorFlow tracing).",
)


def resolve_config(
    model_dir: str,
    config_files: Sequence[str] = (),
    params_override: str = "",
    arch: str | None = None,
    tpu: str | None = None,
    overwrite_config: bool = False,
    check_arch: bool = False,
    data: Mapping[str, Any] | None = None,
) -> config_lib.ExperimentConfig:
    """Resolves the run's config and saves it to `model_dir/config.yaml`
    (the chief alone, in a multi-worker run).

    Without config flags (files, override, arch) a saved config is reused
    (resume); `tpu` only names where it runs and may change. With config
    flags, the result must equal the saved config (up to RESUME_FREE_KEYS)
    unless `overwrite_config`.

    Args:
        model_dir: the run directory.
        config_files: YAML files, later wins.
        params_override: override text, applied after the files.
        arch: spec JSON path for model.neck.arch.
        tpu: TPU name; also selects the "tpu" strategy.
        overwrite_config: let the flags replace a differing saved config.
        check_arch: read and check the spec of `model.neck.arch` before
            saving anything (the modes that build it).
        data: config keys of a `--data_dir` (`data_overrides`), applied
            after the files and before the override.

    Returns:
        The config the run uses.

    Raises:
        config_lib.ConfigError: an invalid config, or flags that conflict
            with the saved config.
    """
    saved = config_lib.load_saved(model_dir)
    tpu_changes: dict[str, Any] = {}
    if tpu is not None:
        tpu_changes = {"runtime.tpu": tpu, "runtime.strategy": "tpu"}
    flags_given = bool(
        config_files or params_override or arch is not None or data
    )
    if saved is not None and not flags_given:
        logging.info("Resuming with %s", config_lib.config_path(model_dir))
        if check_arch:
            check_spec(saved)
        if not tpu_changes:
            return saved
        config = config_lib.override(saved, tpu_changes)
        _save(config, model_dir)
        return config
    layers = [("--data_dir", dict(data))] if data else []
    config = config_lib.load_config(config_files, params_override, layers)
    extra: dict[str, Any] = dict(tpu_changes)
    if arch is not None:
        extra["model.neck.arch"] = arch
    if extra:
        config = config_lib.override(config, extra)
    if check_arch:
        check_spec(config)
    if saved is not None and not overwrite_config:
        conflicts = {
            key: values
            for key, values in config_lib.diff(saved, config).items()
            if key not in RESUME_FREE_KEYS
        }
        if conflicts:
            lines = "\n".join(
                f"  {key}: saved {old!r}, flags give {new!r}"
                for key, (old, new) in sorted(conflicts.items())
            )
            raise config_lib.ConfigError(
                f"{config_lib.config_path(model_dir)} differs from the "
                f"config the flags give:\n{lines}\nUse a new --model_dir, "
                "drop the config flags to resume with the saved config, or "
                "pass --overwrite_config."
            )
    _save(config, model_dir)
    return config


def _save(config: config_lib.ExperimentConfig, model_dir: str) -> None:
    # The workers of a multi-worker run other than the chief read the
    # saved config but write nothing to model_dir.
    from nasfpn_tf.train import strategy as strategy_lib

    if strategy_lib.owns_model_dir(config.runtime):
        config_lib.save(config, model_dir)


def data_overrides(data_dir: str, mode: str) -> dict[str, Any]:
    """The config keys a converted data folder sets (see
    `nasfpn_tf.data.dataset`).

    Raises:
        config_lib.ConfigError: no readable dataset.json in `data_dir`, or
            it lacks a split `mode` reads.
    """
    from nasfpn_tf.data import dataset

    try:
        info = dataset.load(data_dir)
    except dataset.DatasetError as error:
        raise config_lib.ConfigError(str(error)) from None
    for split in MODE_SPLITS.get(mode, ()):
        if info.split(split) is None:
            raise config_lib.ConfigError(
                f"--data_dir={data_dir} has no {split!r} split, which "
                f"--mode={mode} reads; convert again with "
                f"{SPLIT_HINTS[split]}."
            )
    return info.config_overrides()


def check_spec(config: config_lib.ExperimentConfig) -> None:
    """Reads and checks the neck spec `model.neck.arch` names, if any.

    Raises:
        config_lib.ConfigError: a missing or invalid spec file (the
            message names the field at fault), or a spec whose levels
            differ from model.min_level..max_level.
    """
    path = config.model.neck.arch
    if not path:
        return
    from nasfpn_tf.arch.spec import NeckSpec, SpecError

    try:
        spec = NeckSpec.load(path)
    except SpecError as error:
        raise config_lib.ConfigError(f"model.neck.arch: {error}") from None
    try:
        spec.check_levels(config.model.min_level, config.model.max_level)
    except SpecError as error:
        raise config_lib.ConfigError(
            f"model.neck.arch: {path} {error}."
        ) from None


def execute(
    mode: str,
    config: config_lib.ExperimentConfig,
    model_dir: str,
    export_dir: str = "",
    freeze: bool = False,
) -> Any:
    """Runs the library function of `mode`; returns what it returns.

    `export_dir` and `freeze` are export's (see `nasfpn_tf.export`).

    Sets the mixed precision policy first. Only the trainer modes take a
    strategy, so only they create one (and check the batch split); the
    search trains its children itself.
    """
    if mode not in MODES or mode == "predict":
        modes = tuple(m for m in MODES if m != "predict")
        raise ValueError(
            f"mode must be one of {modes} (predict runs through "
            f"nasfpn_tf.predict.predict); got {mode!r}."
        )
    import tf_keras  # lazy: heavy, keeps --help fast

    # Set once, before any layer exists: layers read the global policy
    # when they are built.
    tf_keras.mixed_precision.set_global_policy(config.train.mixed_precision)
    if mode == "search":
        from nasfpn_tf.search import runner

        return runner.search(config, model_dir)
    if mode == "fidelity":
        from nasfpn_tf.search import fidelity

        return fidelity.run(config, model_dir)
    if mode == "export":
        from nasfpn_tf import export

        export_dir = export_dir or f"{model_dir.rstrip('/')}/{EXPORT_SUBDIR}"
        return export.export(config, model_dir, export_dir, freeze=freeze)
    from nasfpn_tf.train import strategy as strategy_lib
    from nasfpn_tf.train import trainer

    strategy = strategy_lib.make_strategy(config.runtime)
    config_lib.check_batch(config, strategy.num_replicas_in_sync)
    return trainer.run(mode, config, model_dir, strategy)


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(
            f"Unexpected arguments: {' '.join(argv[1:])}. Flags take the "
            "form --name=value."
        )
    _quiet_imports()
    logging.set_verbosity(_LOG_LEVEL.value)
    mode = _MODE.value
    if mode == "predict":
        _predict()
        return
    model_dir = _MODEL_DIR.value or f"{DEFAULT_RUNS_DIR}/{mode}"
    try:
        data = (
            data_overrides(_DATA_DIR.value, mode) if _DATA_DIR.value else None
        )
        config = resolve_config(
            model_dir,
            _CONFIG_FILE.value,
            _PARAMS_OVERRIDE.value,
            _ARCH.value,
            _TPU.value,
            _OVERWRITE_CONFIG.value,
            check_arch=mode in ARCH_MODES,
            data=data,
        )
    except config_lib.ConfigError as error:
        # A bad config is not a flag-syntax problem: say what is wrong
        # without the full usage text, and exit non-zero.
        raise SystemExit(f"Config error: {error}") from None
    logging.info("mode=%s model_dir=%s", mode, model_dir)
    result = execute(mode, config, model_dir, _EXPORT_DIR.value, _FREEZE.value)
    # search and fidelity print their own
    if result is not None and mode not in ("search", "fidelity"):
        print(f"{mode} result: {result}", flush=True)


def _predict() -> None:
    """--mode=predict: reads a trained model, writes only predictions."""
    from nasfpn_tf import predict

    if not (_MODEL_DIR.value or _SAVED_MODEL.value):
        raise predict.PredictError(
            "--mode=predict needs --model_dir (its newest checkpoint) or "
            "--saved_model"
        )
    output_dir = _OUTPUT_DIR.value or (
        f"{_MODEL_DIR.value.rstrip('/')}/{predict.DEFAULT_SUBDIR}"
        if _MODEL_DIR.value
        else f"{_SAVED_MODEL.value.rstrip('/')}/{predict.DEFAULT_SUBDIR}"
    )
    result = predict.predict(
        _IMAGES.value,
        output_dir,
        model_dir=_MODEL_DIR.value,
        saved_model=_SAVED_MODEL.value,
        score_threshold=_SCORE_THRESHOLD.value,
    )
    print(result.summary(), flush=True)


def _quiet_imports() -> None:
    """Imports TensorFlow with absl at WARNING: its import logs dozens of
    INFO lines (gradient registrations) that would bury the run's own."""
    logging.set_verbosity(logging.WARNING)
    import tensorflow  # noqa: F401
    import tf_keras  # noqa: F401

    for name in QUIET_LOGGERS:
        std_logging.getLogger(name).setLevel(std_logging.WARNING)


def cli_main(argv: Sequence[str]) -> None:
    """`main` for the command line: an error in the user's input or run
    directory (see `is_user_error`) ends the process with its message and
    status 1, without a traceback."""
    try:
        main(argv)
    except Exception as error:
        if not is_user_error(error):
            raise
        raise SystemExit(f"Error: {error}") from None


def is_user_error(error: Exception) -> bool:
    """Whether `error` says what is wrong with the input or the run's
    directory (config, spec, data, checkpoints, search state: a
    `UserError`; or a full disk or unwritable folder), so the message
    alone is shown."""
    if isinstance(error, UserError):
        return True
    if "tensorflow" not in sys.modules:  # nothing was written yet
        return False
    # A full disk or a directory that cannot be written: the message
    # names the path and the reason.
    from nasfpn_tf.search.proxy import is_storage_error

    return is_storage_error(error)


def run() -> None:
    """Console-script entry point (`nasfpn-tf`)."""
    app.run(cli_main)


if __name__ == "__main__":
    run()
