"""NAS-FPN (Ghiasi et al., CVPR 2019): search, train, evaluate, export.

With no flags it runs a small architecture search on generated data,
sized for a CPU: a shared-weight supernet trained for 600 steps rates 200
sampled specs (search.rater=proxy trains each child instead, as the
paper's configs and configs/tiny_search.yaml do). Each mode reads the config, writes it to
MODEL_DIR/config.yaml, and calls one library function:

  search          nasfpn_tf.search.runner.search
  fidelity        nasfpn_tf.search.fidelity.run (does the proxy rank specs
                  as the longer reference training does?); with
                  search.rater=supernet (the built-in default)
                  nasfpn_tf.supernet.fidelity.run
  supernet        nasfpn_tf.supernet.training.train_supernet (the shared
                  weights a search.rater=supernet search rates specs with)
  train, eval,
  train_and_eval  nasfpn_tf.train.trainer.run
  export          nasfpn_tf.export.export
  predict         nasfpn_tf.predict.predict (reads, writes no config)

Rerunning with the same --model_dir resumes with the saved config.
This module parses the flags; `nasfpn_tf.run_config` resolves the config
and `nasfpn_tf.modes` runs the mode.
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
from collections.abc import Sequence
from typing import Any

from absl import flags, logging

from nasfpn_tf import config as config_lib
from nasfpn_tf import modes
from nasfpn_tf.errors import UserError
from nasfpn_tf.modes import MODES, execute
from nasfpn_tf.run_config import data_overrides, resolve_config
from nasfpn_tf.run_files import EXPORT_SUBDIR  # noqa: F401 (re-exported)

# TensorFlow's C++ start-up lines (CUDA probing, CPU features) say nothing a
# user can act on; TF_CPP_MIN_LOG_LEVEL set in the environment still wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Libraries that log chattily at INFO through the root logger.
QUIET_LOGGERS = ("matplotlib", "PIL", "h5py")

TRAINER_MODES = ("train", "eval", "train_and_eval")
EXPORT_FORMATS = ("saved_model", "tflite")
# absl verbosity names (absl reads ints as its own levels, not logging's).
LOG_LEVELS = ("debug", "info", "warning", "error")
DEFAULT_RUNS_DIR = "runs"
# Modes that build the neck from model.neck.arch (the search samples its
# own specs).
ARCH_MODES = ("train", "eval", "train_and_eval", "export")


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
        modes.predict(args)
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
            saved_form=modes.saved_form(mode),
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
