"""NAS-FPN (Ghiasi et al., CVPR 2019): search, train, evaluate, export.

With no flags it runs a small architecture search on generated data,
sized for a CPU. Each mode reads the config, writes it to
MODEL_DIR/config.yaml, and calls one library function:

  search          nasfpn_tf.search.runner.search
  fidelity        nasfpn_tf.search.fidelity.run (does the proxy rank specs
                  as the longer reference training does?); with
                  search.rater=supernet nasfpn_tf.supernet.fidelity.run
  supernet        nasfpn_tf.supernet.training.train_supernet (the shared
                  weights a search.rater=supernet search rates specs with)
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
  python -m nasfpn_tf.main --model_dir=runs/search2 \\
      --warm_start=runs/search/history.jsonl
  python -m nasfpn_tf.main --mode=train_and_eval --data_dir=data/mine \\
      --model_dir=runs/mine
  python -m nasfpn_tf.main --mode=predict --model_dir=runs/mine \\
      --images=photos/ --output_dir=runs/mine/predictions
"""

from __future__ import annotations

import argparse
import logging as std_logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from absl import flags, logging

from nasfpn_tf import config as config_lib
from nasfpn_tf.errors import UserError
from nasfpn_tf.run_files import (
    EXPORT_SUBDIR,
    PREDICTIONS_SUBDIR,
    TFLITE_SUBDIR,
)

# TensorFlow's C++ start-up lines (CUDA probing, CPU features) say nothing a
# user can act on; TF_CPP_MIN_LOG_LEVEL set in the environment still wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Libraries that log chattily at INFO through the root logger.
QUIET_LOGGERS = ("matplotlib", "PIL", "h5py")

MODES = (
    "search",
    "fidelity",
    "supernet",
    "train",
    "eval",
    "train_and_eval",
    "export",
    "predict",
)
TRAINER_MODES = ("train", "eval", "train_and_eval")
EXPORT_FORMATS = ("saved_model", "tflite")
# absl verbosity names (absl reads ints as its own levels, not logging's).
LOG_LEVELS = ("debug", "info", "warning", "error")
# Keys that may differ from the saved config on resume: where the run
# executes, not what it computes (a TPU is often renamed between runs).
RESUME_FREE_KEYS = ("runtime.tpu",)
# What a mode keeps in config.yaml of the config it runs.
ConfigForm = Callable[
    [config_lib.ExperimentConfig], config_lib.ExperimentConfig
]
DEFAULT_RUNS_DIR = "runs"
# Modes that build the neck from model.neck.arch (the search samples its
# own specs).
ARCH_MODES = ("train", "eval", "train_and_eval", "export")
# The splits of a --data_dir each mode reads.
MODE_SPLITS = {
    "search": ("train", "heldout"),
    "fidelity": ("train", "heldout"),
    "supernet": ("train", "heldout"),
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


def build_parser() -> argparse.ArgumentParser:
    """The command line's flags (``--name=value``; ``--name value`` works
    too)."""
    parser = argparse.ArgumentParser(
        prog="python -m nasfpn_tf.main",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("--mode", choices=MODES, default="search", help="What to run.")
    add(
        "--model_dir",
        default="",
        help="Directory of the run (local or gs://): config.yaml, "
        "checkpoints, history. Default: runs/<mode>.",
    )
    add(
        "--config_file",
        action="append",
        default=[],
        help="YAML config file (repeatable: later files win).",
    )
    add(
        "--params_override",
        default="",
        help="Applied after the files: 'train.batch_size=8,"
        "model.image_size=256' or YAML/JSON text such as "
        "'{train: {batch_size: 8}}'.",
    )
    add(
        "--data_dir",
        default="",
        help="A folder written by python -m nasfpn_tf.data.convert: its "
        "dataset.json sets the data paths, COCO annotations, "
        "model.num_classes and data.class_names (after --config_file, "
        "before --params_override).",
    )
    add(
        "--arch",
        default=None,
        help="Neck spec JSON (e.g. a search's best_spec.json); sets "
        "model.neck.arch. Default: the config's (the published NAS-FPN).",
    )
    add(
        "--tpu",
        default=None,
        help="TPU name or address; sets runtime.tpu and runtime.strategy=tpu.",
    )
    add(
        "--export_dir",
        default="",
        help="Where --mode=export writes the SavedModel. Default: "
        "<model_dir>/export.",
    )
    add(
        "--format",
        choices=EXPORT_FORMATS,
        default="saved_model",
        help="--mode=export: a SavedModel for TF Serving, or TFLite models "
        "(default folder <model_dir>/export/tflite; docs/tflite.md).",
    )
    add(
        "--tflite_quantization",
        default="float32",
        help="--format=tflite: float32, float16 or int8 (full-integer, "
        "calibrated on the training split); comma-separated for several.",
    )
    add(
        "--representative_images",
        type=int,
        default=100,
        help="--format=tflite with int8: training images that calibrate "
        "the quantization.",
    )
    _add_bool(
        parser,
        "freeze",
        "--mode=export: store the weights as constants (batch norms folded "
        "into the convs): faster CPU serving, no variables in the "
        "SavedModel, a slow first request. Not for model.anytime.",
    )
    add(
        "--images",
        action="append",
        default=[],
        help="--mode=predict: image files, folders or globs (repeatable).",
    )
    add(
        "--saved_model",
        default="",
        help="--mode=predict: an exported SavedModel (an export folder, its "
        "newest version is used, or a version folder) or a .tflite file of "
        "--format=tflite. Default: the newest checkpoint of --model_dir.",
    )
    add(
        "--output_dir",
        default="",
        help="--mode=predict: where predictions.json and the drawn images "
        "go. Default: <model_dir>/predictions.",
    )
    add(
        "--score_threshold",
        type=float,
        default=0.3,
        help="--mode=predict: detections below this score are neither "
        "drawn nor written.",
    )
    add(
        "--warm_start",
        action="append",
        default=[],
        metavar="PATH",
        help="--mode=search: an earlier search's history.jsonl (or its "
        "directory) run with the same proxy settings (repeatable). Its "
        "rated children's rewards fill the reward cache and teach the "
        "controller before it samples; a history whose config.yaml differs "
        "in a setting that changes rewards is refused, naming the keys. "
        "Rerunning to resume needs the same flags.",
    )
    _add_bool(
        parser,
        "overwrite_config",
        "Replace a saved config.yaml that differs from the one the flags "
        "give, instead of failing.",
    )
    add(
        "--log_level",
        choices=LOG_LEVELS,
        default="warning",
        help="Logging verbosity. Progress lines and results are printed at "
        "any level; 'info' adds the libraries' logs (orbit, TensorFlow "
        "tracing).",
    )
    return parser


def _add_bool(parser: argparse.ArgumentParser, name: str, help: str) -> None:
    """``--name``, ``--name=true|false`` and ``--noname``."""
    parser.add_argument(
        f"--{name}",
        nargs="?",
        const=True,
        default=False,
        type=_parse_bool,
        metavar="true|false",
        help=help,
    )
    parser.add_argument(
        f"--no{name}", dest=name, action="store_false", help=argparse.SUPPRESS
    )


def _parse_bool(text: str) -> bool:
    value = text.lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def resolve_config(
    model_dir: str,
    config_files: Sequence[str] = (),
    params_override: str = "",
    arch: str | None = None,
    tpu: str | None = None,
    overwrite_config: bool = False,
    check_arch: bool = False,
    data: Mapping[str, Any] | None = None,
    saved_form: ConfigForm | None = None,
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
        saved_form: what the mode keeps of the flags' config in
            `config.yaml`, where that is not the config itself
            (--mode=supernet keeps the experiment it trains, the
            proxy's sizes): the saved config is checked against it and
            it is what is saved.

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
    kept = saved_form(config) if saved_form else config
    if saved is not None and not overwrite_config:
        conflicts = {
            key: values
            for key, values in config_lib.diff(saved, kept).items()
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
    _save(kept, model_dir)
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
    warm_start: Sequence[str] = (),
    tflite: Mapping[str, Any] | None = None,
) -> Any:
    """Runs the library function of `mode`; returns what it returns.

    `export_dir` and `freeze` are export's (see `nasfpn_tf.export`), and
    `tflite` its TFLite options (`nasfpn_tf.export_tflite.export`'s
    keyword arguments; None exports a SavedModel);
    `warm_start` is search's (see `nasfpn_tf.search.warm_start`).

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

        return runner.search(config, model_dir, warm_start=warm_start)
    if mode == "fidelity":
        if config.search.rater == "supernet":
            from nasfpn_tf.supernet import fidelity as supernet_fidelity

            return supernet_fidelity.run(config, model_dir)
        from nasfpn_tf.search import fidelity

        return fidelity.run(config, model_dir)
    if mode == "supernet":
        from nasfpn_tf.supernet import training

        return training.train_supernet(config, model_dir)
    if mode == "export":
        from nasfpn_tf import export

        export_dir = export_dir or f"{model_dir.rstrip('/')}/{EXPORT_SUBDIR}"
        if tflite is not None:
            return export.export_tflite(
                config, model_dir, f"{export_dir}/{TFLITE_SUBDIR}", **tflite
            )
        return export.export(config, model_dir, export_dir, freeze=freeze)
    from nasfpn_tf.train import strategy as strategy_lib
    from nasfpn_tf.train import trainer

    strategy = strategy_lib.make_strategy(config.runtime)
    config_lib.check_batch(config, strategy.num_replicas_in_sync)
    return trainer.run(mode, config, model_dir, strategy)


def main(argv: Sequence[str]) -> None:
    """Runs the command line ``argv`` (``argv[0]`` is the program).

    Raises:
        SystemExit: status 2 and the usage for a malformed flag or a
            positional argument; status 1 for a bad config.
    """
    parser = build_parser()
    args = parser.parse_args(list(argv[1:]))
    if args.warm_start and args.mode != "search":
        parser.error("--warm_start applies to --mode=search only")
    tflite = _tflite_options(parser, args)
    _init_absl_logging()
    _quiet_imports()
    logging.set_verbosity(args.log_level)
    if args.mode == "predict":
        _predict(args)
        return
    mode = args.mode
    model_dir = args.model_dir or f"{DEFAULT_RUNS_DIR}/{mode}"
    try:
        data = data_overrides(args.data_dir, mode) if args.data_dir else None
        config = resolve_config(
            model_dir,
            args.config_file,
            args.params_override,
            args.arch,
            args.tpu,
            args.overwrite_config,
            check_arch=mode in ARCH_MODES,
            data=data,
            saved_form=_saved_form(mode),
        )
    except config_lib.ConfigError as error:
        # A bad config is not a flag-syntax problem: say what is wrong
        # without the full usage text, and exit non-zero.
        raise SystemExit(f"Config error: {error}") from None
    logging.info("mode=%s model_dir=%s", mode, model_dir)
    result = execute(
        mode,
        config,
        model_dir,
        args.export_dir,
        args.freeze,
        warm_start=args.warm_start,
        tflite=tflite,
    )
    # search, fidelity and supernet print their own
    if result is not None and mode not in ("search", "fidelity", "supernet"):
        print(f"{mode} result: {result}", flush=True)


def _saved_form(mode: str) -> ConfigForm | None:
    """`resolve_config`'s saved_form of `mode` (None: the config)."""
    if mode != "supernet":
        return None
    from nasfpn_tf.supernet import training  # lazy: imports TensorFlow

    return training.supernet_experiment


def _tflite_options(
    parser: argparse.ArgumentParser, args: argparse.Namespace
) -> dict[str, Any] | None:
    """`export_tflite.export`'s options for --format=tflite, else None."""
    if args.format != "tflite":
        return None
    if args.mode != "export":
        parser.error("--format applies to --mode=export only")
    if args.freeze:
        parser.error("--freeze applies to --format=saved_model only")
    return {
        "quantizations": args.tflite_quantization.split(","),
        "representative_images": args.representative_images,
    }


def _predict(args: argparse.Namespace) -> None:
    """--mode=predict: reads a trained model, writes only predictions."""
    from nasfpn_tf import predict

    if not (args.model_dir or args.saved_model):
        raise predict.PredictError(
            "--mode=predict needs --model_dir (its newest checkpoint) or "
            "--saved_model"
        )
    output_dir = args.output_dir or (
        f"{args.model_dir.rstrip('/')}/{PREDICTIONS_SUBDIR}"
        if args.model_dir
        else f"{args.saved_model.rstrip('/')}/{PREDICTIONS_SUBDIR}"
    )
    result = predict.predict(
        args.images,
        output_dir,
        model_dir=args.model_dir,
        saved_model=args.saved_model,
        score_threshold=args.score_threshold,
    )
    print(result.summary(), flush=True)


def _init_absl_logging() -> None:
    """absl logging as `absl.app.run` sets it up: its handler, and its own
    flags (--verbosity, --logtostderr, ...) at their defaults, which we do
    not parse: our flags are argparse's."""
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
    logging.use_absl_handler()


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
    cli_main(sys.argv)


if __name__ == "__main__":
    run()
