"""Bookkeeping of a training run: progress lines, metrics.jsonl, summaries.

The trainer's inner loops end at every log, summary and checkpoint step;
each hands over the mean losses of its steps. `Progress` averages them
over its own windows (weighted by steps), prints a progress line every
`train.log_every` steps, appends one JSON object per log or evaluation to
`model_dir/metrics.jsonl` and writes TensorBoard scalars to
`model_dir/train` every `train.summary_every` steps.

orbit's Controller prints each line it logs at INFO (`train | step: N |
steps/sec ...`, checkpoint saves and restores); the trainer runs it inside
`library_lines_to_log`, so a run prints one line per interval (this
module's, with the ETA) and `--log_level=info` shows orbit's through the
log.

A metrics.jsonl row looks like
  {"kind": "train", "step": 20, "total_loss": 1.31, "cls_loss": 0.92, ...,
   "learning_rate": 0.0091, "images_per_second": 14.2, "time": 1700000000.0}
  {"kind": "eval", "split": "val", "step": 100, "AP": 0.21, ...}
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import tensorflow as tf

from nasfpn_tf import files
from nasfpn_tf.run_files import METRICS_FILENAME

TRAIN = "train"
EVAL = "eval"
# Per-class AP50 joins the eval line up to this many classes (all of them
# are in metrics.jsonl).
MAX_CLASSES_SHOWN = 10


class MetricsLog:
    """`metrics.jsonl`: one JSON object per line, appended as they come.

    A `files.JsonlLog`, like the search history: appends are fsynced
    (remote files, which cannot be appended to, are rewritten whole), and
    the first write of a process drops a torn last line left by a kill.
    """

    def __init__(self, model_dir: str):
        self.path = os.path.join(model_dir, METRICS_FILENAME)
        self._log: files.JsonlLog | None = None  # opened at the first write

    def rows(self) -> list[dict[str, Any]]:
        """Every row; a torn last line (a kill mid-write) is skipped.

        Raises:
            files.JsonlError: another line is not a JSON object.
        """
        if self._log is not None:
            return list(self._log.rows)
        return files.read_jsonl(self.path)[0]

    def append(self, row: Mapping[str, Any]) -> None:
        self._writable().append(_plain(row))

    def drop_after(self, step: int) -> None:
        """Forgets rows past `step` (and a torn line): work lost when a run
        was cut short.

        A rerun resumes from the last checkpoint and logs those steps
        again; without this they would appear twice.
        """
        log = self._writable()
        kept = [r for r in log.rows if r.get("step", 0) <= step]
        if len(kept) != len(log.rows):
            log.rewrite(kept)

    def _writable(self) -> files.JsonlLog:
        if self._log is None:
            self._log = files.JsonlLog.open(self.path)
        return self._log


class _Window:
    """Step-weighted means of the loss parts since the last `take`."""

    def __init__(self):
        self._sums: dict[str, float] = {}
        self._steps = 0

    def add(self, means: Mapping[str, float], steps: int) -> None:
        for name, value in means.items():
            self._sums[name] = self._sums.get(name, 0.0) + value * steps
        self._steps += steps

    def take(self) -> dict[str, float]:
        means = {k: v / self._steps for k, v in self._sums.items()}
        self._sums, self._steps = {}, 0
        return means


class Progress:
    """Turns the inner loops' outputs into lines, rows and summaries.

    Args:
        model_dir: the run's directory.
        total_steps: steps the run trains to.
        global_batch: images per step over all replicas.
        log_every: steps between progress lines and metrics rows.
        summary_every: steps between TensorBoard points.
        learning_rate: the schedule, step -> rate.
        printer: where lines go (by default the stdout of the moment the
            Progress is made, which `library_lines_to_log` leaves alone).
        write: write metrics.jsonl and summaries; False on the workers of
            a multi-worker run other than the chief, which only print.
    """

    def __init__(
        self,
        model_dir: str,
        total_steps: int,
        global_batch: int,
        log_every: int,
        summary_every: int,
        learning_rate: Callable[[int], Any],
        printer: Callable[[str], None] | None = None,
        write: bool = True,
    ):
        self.log = MetricsLog(model_dir)
        self._model_dir = model_dir
        self._write = write
        self._total = total_steps
        self._batch = global_batch
        self._log_every = log_every
        self._summary_every = summary_every
        self._learning_rate = learning_rate
        stdout = sys.stdout
        self._print = printer or (
            lambda line: print(line, file=stdout, flush=True)
        )
        self._writer = None  # made at the first summary
        self._log_window = _Window()
        self._summary_window = _Window()
        self._step = 0
        self._speed = (0, 0.0)  # steps and seconds since the last line
        self.train_seconds = 0.0
        self.last_train: dict[str, Any] | None = None

    def start(self, step: int) -> None:
        """Starts at `step`: 0, or the checkpoint a rerun resumed from."""
        if self._write:
            self.log.drop_after(step)
        train_rows = [r for r in self.log.rows() if r.get("kind") == TRAIN]
        self.last_train = train_rows[-1] if train_rows else None
        self._step = step

    def on_train(
        self, step: int, means: Mapping[str, Any], seconds: float
    ) -> None:
        """Records an inner loop.

        Args:
            step: the global step after the loop.
            means: loss name -> mean over the loop's steps.
            seconds: wall time of the loop.
        """
        steps = step - self._step
        if steps <= 0:
            return
        means = {k: float(v) for k, v in means.items()}
        self._step = step
        self.train_seconds += seconds
        self._speed = (self._speed[0] + steps, self._speed[1] + seconds)
        self._log_window.add(means, steps)
        self._summary_window.add(means, steps)
        final = step >= self._total
        if step % self._summary_every == 0 or final:
            self._summarize(step, self._summary_window.take())
        if step % self._log_every == 0 or final:
            self._log_line(step, self._log_window.take())

    def on_eval(self, step: int, split: str, metrics: Mapping[str, Any]):
        """Records an evaluation of the weights at `step`."""
        row = {"kind": EVAL, "split": split, "step": step}
        row.update(_plain(metrics))
        row["time"] = time.time()
        if self._write:
            self.log.append(row)
        shown = " ".join(
            f"{k} {row[k]:.4f}" for k in ("AP", "AP50", "AP75") if k in row
        )
        per_class = {
            k.removeprefix("AP50/"): v
            for k, v in row.items()
            if k.startswith("AP50/")
        }
        if 0 < len(per_class) <= MAX_CLASSES_SHOWN:
            shown += " | AP50 by class: " + " ".join(
                f"{name} {value:.4f}" for name, value in per_class.items()
            )
        self._print(f"eval {split} | step {step}/{self._total} | {shown}")

    def learning_rate(self, step: int) -> float:
        return float(self._learning_rate(step))

    def _summarize(self, step: int, means: Mapping[str, float]) -> None:
        if not self._write:
            return
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(
                os.path.join(self._model_dir, TRAIN)
            )
        with self._writer.as_default(step=step):
            for name, value in means.items():
                tf.summary.scalar(name, value)
            tf.summary.scalar("learning_rate", self.learning_rate(step))
        self._writer.flush()

    def _log_line(self, step: int, means: Mapping[str, float]) -> None:
        steps, seconds = self._speed
        self._speed = (0, 0.0)
        steps_per_second = steps / max(seconds, 1e-9)
        row = {"kind": TRAIN, "step": step, **means}
        row["learning_rate"] = self.learning_rate(step)
        row["images_per_second"] = steps_per_second * self._batch
        row["seconds_per_step"] = seconds / steps
        row["time"] = time.time()
        if self._write:
            self.log.append(row)
        self.last_train = row
        eta = (self._total - step) / max(steps_per_second, 1e-9)
        parts = " ".join(
            f"{name.removesuffix('_loss')} {means[name]:.4f}"
            for name in ("cls_loss", "box_loss", "l2_loss")
            if name in means
        )
        self._print(
            f"train | step {step}/{self._total} | loss "
            f"{means.get('total_loss', math.nan):.4f} ({parts}) | lr "
            f"{row['learning_rate']:.5f} | "
            f"{row['images_per_second']:.1f} img/s | ETA {format_duration(eta)}"
        )


class _Discard:
    """A text stream that drops what it is given."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


@contextlib.contextmanager
def library_lines_to_log():
    """Drops what the code inside prints to stdout.

    For orbit's Controller calls: orbit prints every line it also logs at
    INFO (its `_log`), which would double each interval's line; its log
    record stays, for `--log_level=info`. Lines of a `Progress` made before
    go to the stream they were bound to and still show.
    """
    with contextlib.redirect_stdout(_Discard()):
        yield


def format_duration(seconds: float) -> str:
    """`H:MM:SS` (hours unbounded), or "?" when unknown: the one format of
    durations and ETAs in progress lines."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}"


def _plain(value: Any) -> Any:
    """JSON-ready copy: tensors and numpy scalars become Python numbers."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "numpy"):
        value = value.numpy()
    if isinstance(value, np.ndarray):
        return value.tolist() if value.ndim else value.item()
    if isinstance(value, np.generic):
        return value.item()
    return value
