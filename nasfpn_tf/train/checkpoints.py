"""Checkpoints of a run: where they live, which are sound, how to start.

`model_dir/checkpoints/` holds `tf.train.Checkpoint(model=, optimizer=,
step=)` files written by a `tf.train.CheckpointManager` every
`train.checkpoint_every` steps, the newest `train.keep_checkpoints` kept.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf
import tf_keras
from absl import logging

CHECKPOINT_SUBDIR = "checkpoints"


def checkpoint_dir(model_dir: str) -> str:
    return os.path.join(model_dir, CHECKPOINT_SUBDIR)


def make_checkpoint(
    model: tf_keras.Model,
    optimizer: tf_keras.optimizers.Optimizer,
    step: tf.Variable,
) -> tf.train.Checkpoint:
    return tf.train.Checkpoint(model=model, optimizer=optimizer, step=step)


def make_manager(
    checkpoint: tf.train.Checkpoint,
    model_dir: str,
    step: tf.Variable,
    every: int,
    keep: int,
    init_fn=None,
) -> tf.train.CheckpointManager:
    """A manager saving every `every` steps and keeping the newest `keep`.

    Args:
        checkpoint: what is saved.
        model_dir: the run's directory.
        step: the global step variable (names the files `ckpt-<step>`).
        every: steps between saves.
        keep: checkpoints kept on disk.
        init_fn: called instead of a restore when there is no checkpoint.
    """
    return tf.train.CheckpointManager(
        checkpoint,
        directory=checkpoint_dir(model_dir),
        max_to_keep=keep,
        step_counter=step,
        checkpoint_interval=every,
        init_fn=init_fn,
    )


def is_finite(path: str) -> bool:
    """True when every floating point tensor in checkpoint `path` is finite.

    Reads the whole checkpoint; meant for error paths, not every step.
    """
    reader = tf.train.load_checkpoint(path)
    for name, dtype in reader.get_variable_to_dtype_map().items():
        if not dtype.is_floating:
            continue
        value = reader.get_tensor(name)
        if not np.all(np.isfinite(np.asarray(value, dtype=np.float64))):
            return False
    return True


def last_good(manager: tf.train.CheckpointManager) -> str | None:
    """The newest checkpoint of `manager` whose values are all finite."""
    for path in reversed(manager.checkpoints):
        try:
            finite = is_finite(path)
        except (tf.errors.OpError, ValueError) as error:
            logging.error("Checkpoint %s is unreadable: %s", path, error)
            continue
        if finite:
            return path
        logging.error("Checkpoint %s holds non-finite values.", path)
    return None


def backbone_initializer(model: tf_keras.Model, path: str):
    """A function loading the backbone of `model` from checkpoint `path`.

    As Model Garden's RetinaNet task does for ImageNet-pretrained
    backbones: the checkpoint must hold `backbone=` (a directory means its
    latest checkpoint); everything else keeps its initialisation.
    """

    def initialize() -> None:
        file = path
        if tf.io.gfile.isdir(path):
            file = tf.train.latest_checkpoint(path)
            if file is None:
                raise FileNotFoundError(
                    f"train.init_checkpoint {path!r} holds no checkpoint."
                )
        status = tf.train.Checkpoint(backbone=model.backbone).read(file)
        status.expect_partial().assert_existing_objects_matched()
        logging.info("Initialised the backbone from %s", file)

    return initialize
