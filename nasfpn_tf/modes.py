"""What each --mode runs: `execute` calls the mode's library function
with a resolved config (see `nasfpn_tf.run_config`), `predict` runs
--mode=predict, which reads a trained model and writes no config. Heavy
modules are imported inside, so `nasfpn_tf.main --help` stays fast.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from typing import Any

from nasfpn_tf import config as config_lib
from nasfpn_tf.run_config import ConfigForm
from nasfpn_tf.run_files import (
    EXPORT_SUBDIR,
    PREDICTIONS_SUBDIR,
    TFLITE_SUBDIR,
)

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


def saved_form(mode: str) -> ConfigForm | None:
    """`resolve_config`'s saved_form of `mode` (None: the config)."""
    if mode != "supernet":
        return None
    from nasfpn_tf.supernet import training  # lazy: imports TensorFlow

    return training.supernet_experiment


def predict(args: argparse.Namespace) -> None:
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
