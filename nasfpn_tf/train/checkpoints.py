"""Checkpoints of a run: where they live, which are sound, how to start.

`model_dir/checkpoints/` holds `tf.train.Checkpoint(model=, optimizer=,
step=)` files written by a `tf.train.CheckpointManager` every
`train.checkpoint_every` steps, the newest `train.keep_checkpoints` kept.

A checkpoint that cannot be restored (files truncated or corrupted by a
crash mid-write or a failing disk) does not end the run: the newest
readable one is restored instead, with a warning, and the unreadable
one's files are moved to `checkpoints/unreadable/`. A missing or
unparsable state file (`checkpoints/checkpoint`), which TensorFlow would
take for "no checkpoint yet", is rebuilt from the checkpoint files found.
"""

from __future__ import annotations

import os
import re

import numpy as np
import tensorflow as tf
import tf_keras
from absl import logging

from nasfpn_tf import compat
from nasfpn_tf.errors import UserError
from nasfpn_tf.run_files import CHECKPOINT_SUBDIR, UNREADABLE_SUBDIR

CHECKPOINT_NAME = "ckpt"  # CheckpointManager's default file prefix
_NUMBERED_INDEX = re.compile(rf"^{CHECKPOINT_NAME}-(\d+)\.index$")
# What restoring a truncated or corrupted checkpoint raises: DataLossError
# (checksum), OpError (bad sstable), NotFoundError (missing file), and an
# IndexError ("Read less bytes than requested") for a short data file.
RESTORE_ERRORS = (tf.errors.OpError, ValueError, IndexError)


class UnreadableCheckpointError(UserError, RuntimeError):
    """No checkpoint of a run can be restored."""


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
    last_checkpoint_step: int | None = None,
) -> tf.train.CheckpointManager:
    """A manager saving every `every` steps and keeping the newest `keep`.

    Args:
        checkpoint: what is saved.
        model_dir: the run's directory.
        step: the global step variable (names the files `ckpt-<step>`).
        every: steps between saves.
        keep: checkpoints kept on disk.
        init_fn: called instead of a restore when there is no checkpoint.
        last_checkpoint_step: the step the save interval counts from
            (None: from the first save, or the restored step).
    """
    return FallbackCheckpointManager(
        checkpoint,
        directory=checkpoint_dir(model_dir),
        max_to_keep=keep,
        step_counter=step,
        checkpoint_interval=every,
        init_fn=init_fn,
        last_checkpoint_step=last_checkpoint_step,
    )


class FallbackCheckpointManager(tf.train.CheckpointManager):
    """A CheckpointManager that restores past unreadable checkpoints.

    `restore_or_initialize` (what orbit's Controller calls) tries the
    newest checkpoint; when it cannot be read it warns, tries the older
    ones newest first, moves the unreadable ones' files aside and
    forgets them, so training resumes from the newest sound state.

    Raises (from `restore_or_initialize`):
        UnreadableCheckpointError: no checkpoint can be restored; the
            files are left in place.
    """

    def __init__(self, checkpoint: tf.train.Checkpoint, directory: str, **kw):
        self._arguments = (checkpoint, directory, kw)
        _recover_state(directory)
        super().__init__(checkpoint, directory, **kw)

    def restore_or_initialize(self) -> str | None:
        newest = self.latest_checkpoint
        try:
            return super().restore_or_initialize()
        except RESTORE_ERRORS as error:
            if newest is None:
                raise
            failures = [(newest, error)]
        for path in reversed(self.checkpoints):
            if path == newest:
                continue
            try:
                self.checkpoint.restore(path)
            except RESTORE_ERRORS as error:
                failures.append((path, error))
                continue
            self._forget(failures, path)
            return path
        listing = "\n".join(f"  {path}: {_brief(e)}" for path, e in failures)
        raise UnreadableCheckpointError(
            f"No checkpoint in {self.directory} can be restored:\n{listing}"
            "\nMove the checkpoints folder away to train from scratch."
        )

    def _forget(self, failures: list, restored: str) -> None:
        """Moves the unreadable checkpoints aside and records `restored`
        as the latest checkpoint."""
        aside = os.path.join(self.directory, UNREADABLE_SUBDIR)
        tf.io.gfile.makedirs(aside)
        bad = set()
        for path, error in failures:
            bad.add(path)
            moved = []
            for file in tf.io.gfile.glob(f"{path}.*"):
                target = os.path.join(aside, os.path.basename(file))
                tf.io.gfile.rename(file, target, overwrite=True)
                moved.append(os.path.basename(file))
            logging.warning(
                "Checkpoint %s is unreadable (%s); resuming from %s "
                "instead. Moved its files to %s: %s",
                path,
                _brief(error),
                restored,
                aside,
                ", ".join(moved) or "none found",
            )
        # Paths as the manager holds them: joined to the directory.
        state = tf.train.get_checkpoint_state(self.directory)
        kept = [
            (path, stamp)
            for path, stamp in zip(
                state.all_model_checkpoint_paths,
                state.all_model_checkpoint_timestamps
                or [state.last_preserved_timestamp]
                * len(state.all_model_checkpoint_paths),
            )
            if path not in bad
        ]
        compat.update_checkpoint_state(
            self.directory,
            restored,
            all_model_checkpoint_paths=[path for path, _ in kept],
            all_model_checkpoint_timestamps=[stamp for _, stamp in kept],
            last_preserved_timestamp=state.last_preserved_timestamp,
        )
        # Re-reads the state just written; the interval counts from the
        # restored step, as after a plain restore.
        checkpoint, directory, kw = self._arguments
        if kw.get("checkpoint_interval") is not None:
            step = int(kw["step_counter"].numpy())
            kw = dict(kw, last_checkpoint_step=step)
        compat.reload_checkpoint_manager(self, checkpoint, directory, **kw)


def _recover_state(directory: str) -> None:
    """Rebuilds a lost checkpoint state file from the files on disk."""
    if not tf.io.gfile.isdir(directory):
        return
    if tf.train.get_checkpoint_state(directory) is not None:
        return
    found = []
    for name in tf.io.gfile.listdir(directory):
        match = _NUMBERED_INDEX.match(name)
        if match:
            path = os.path.join(directory, name.removesuffix(".index"))
            stamp = tf.io.gfile.stat(f"{path}.index").mtime_nsec / 1e9
            found.append((int(match.group(1)), path, stamp))
    if not found:
        return
    found.sort()
    logging.warning(
        "%s has no readable checkpoint state; rebuilt it from the "
        "checkpoint files found: %s",
        directory,
        ", ".join(os.path.basename(path) for _, path, _ in found),
    )
    compat.update_checkpoint_state(
        directory,
        found[-1][1],
        all_model_checkpoint_paths=[path for _, path, _ in found],
        all_model_checkpoint_timestamps=[stamp for _, _, stamp in found],
        last_preserved_timestamp=0.0,
    )


def _brief(error: BaseException) -> str:
    """The first line of an error, with its type."""
    lines = str(error).strip().splitlines() or [""]
    return f"{type(error).__name__}: {lines[0]}"


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
