"""The search directory: where a search keeps everything it decides.

An architecture search (NAS-FPN, Ghiasi et al., CVPR 2019,
arXiv:1904.07392, Sec. 3) keeps everything it decides in one directory,
local or `gs://`:

  config.yaml        the resolved config (written by `main`)
  history.jsonl      one `SampleRecord` per sample, in the order recorded
                     (`history.py`)
  controller/        the policy checkpoint of each of the last updates and
                     `latest.json`, naming the one to resume from
  trials/trial_N/    the work directory of child N and its `result.json`
                     (`results.py`)
  best_spec.json     the best spec so far (`--arch` reads it)
  top_specs.json     the best specs with their rewards
  search_progress.png, best_spec.png, summaries/   plots, drawing, scalars
                     (`report.py`)
  warm_start.json    what a warm start used (`warm_start.py`)

`history.jsonl` plus the controller checkpoint are the source of truth a
resumed search restarts from. `SearchDir` names these paths and writes the
controller state and the result files (`best_spec.json`,
`top_specs.json`), each atomically: to a temporary name, then renamed.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import tensorflow as tf

from nasfpn_tf import files
from nasfpn_tf.arch.spec import SpecError
from nasfpn_tf.run_files import (
    BEST_SPEC_FILE,
    CONTROLLER_DIR,
    DRAWING_FILE,
    HISTORY_FILE,
    LATEST_FILE,
    RESULT_FILE,
    SUMMARIES_DIR,
    TOP_SPECS_FILE,
    TRIALS_DIR,
)
from nasfpn_tf.run_files import SEARCH_PLOT_FILE as PLOT_FILE
from nasfpn_tf.search import history as history_lib
from nasfpn_tf.search.history import HistoryError

# Controller checkpoints kept: the last one, and the one before in case the
# last is unreadable.
KEEP_CHECKPOINTS = 2
DEFAULT_TOP_K = 10
# Zero-padded width of sample numbers in trial directory names.
SAMPLE_DIGITS = 6
_CHECKPOINT_PREFIX = "update-"


def _top_entry(rank: int, record: history_lib.SampleRecord) -> dict[str, Any]:
    spec = record.neck_spec()
    try:
        block_specs = [list(b) for b in spec.to_block_specs()]
    except SpecError:
        block_specs = None
    return {
        "rank": rank,
        "reward": record.reward,
        "sample": record.sample,
        "step": record.step,
        "hash": record.hash,
        "metrics": dict(record.metrics),
        "spec": dict(record.spec),
        "block_specs": block_specs,
    }


class SearchDir:
    """Paths and state files of one search directory.

    Args:
        root: the search's model_dir (local or gs://).
    """

    def __init__(self, root: str):
        if not root:
            raise HistoryError("the search directory must not be empty")
        self.root = root

    def _path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    @property
    def history_path(self) -> str:
        return self._path(HISTORY_FILE)

    @property
    def best_spec_path(self) -> str:
        return self._path(BEST_SPEC_FILE)

    @property
    def top_specs_path(self) -> str:
        return self._path(TOP_SPECS_FILE)

    @property
    def controller_dir(self) -> str:
        return self._path(CONTROLLER_DIR)

    @property
    def trials_dir(self) -> str:
        return self._path(TRIALS_DIR)

    @property
    def plot_path(self) -> str:
        return self._path(PLOT_FILE)

    @property
    def drawing_path(self) -> str:
        return self._path(DRAWING_FILE)

    @property
    def summaries_dir(self) -> str:
        return self._path(SUMMARIES_DIR)

    def trial_dir(self, sample: int) -> str:
        """Work directory of child `sample` (KerasTuner's trial_<id>)."""
        return self._path(TRIALS_DIR, f"trial_{trial_id(sample)}")

    def result_path(self, sample: int) -> str:
        return os.path.join(self.trial_dir(sample), RESULT_FILE)

    # -- controller state ---------------------------------------------------

    def save_policy(self, policy: Any, updates: int, algorithm: str) -> str:
        """Checkpoints `policy` after `updates` updates; returns the prefix.

        The checkpoint is written under a fresh name first and
        `controller/latest.json` is pointed at it afterwards, so a kill at
        any moment leaves `latest.json` naming a complete checkpoint.
        Checkpoints beyond the last `KEEP_CHECKPOINTS` are deleted.
        """
        name = f"{_CHECKPOINT_PREFIX}{updates:06d}"
        prefix = os.path.join(self.controller_dir, name)
        tf.io.gfile.makedirs(self.controller_dir)
        policy.save(prefix)
        files.write_json_atomic(
            os.path.join(self.controller_dir, LATEST_FILE),
            {"updates": updates, "checkpoint": name, "algorithm": algorithm},
        )
        self._prune_checkpoints(updates)
        return prefix

    def _prune_checkpoints(self, updates: int) -> None:
        pattern = os.path.join(self.controller_dir, f"{_CHECKPOINT_PREFIX}*")
        kept = {
            f"{_CHECKPOINT_PREFIX}{u:06d}"
            for u in range(updates - KEEP_CHECKPOINTS + 1, updates + 1)
        }
        for path in tf.io.gfile.glob(pattern):
            name = os.path.basename(path).split(".", 1)[0]
            if name not in kept:
                tf.io.gfile.remove(path)

    def latest_policy(self, algorithm: str) -> tuple[int, str] | None:
        """(updates, checkpoint prefix) to resume from, or None if none.

        Raises:
            HistoryError: the pointer names another algorithm or a
                checkpoint that is not there.
        """
        pointer = os.path.join(self.controller_dir, LATEST_FILE)
        try:
            data = files.read_json(pointer)
        except files.JsonFileError as error:
            raise HistoryError(str(error)) from None
        if data is None:
            return None
        try:
            updates = int(data["updates"])
            name = str(data["checkpoint"])
            saved_algorithm = str(data["algorithm"])
        except (KeyError, TypeError, ValueError):
            raise HistoryError(
                f"{pointer}: expected updates, checkpoint and algorithm; "
                f"got {data!r}"
            ) from None
        if saved_algorithm != algorithm:
            raise HistoryError(
                f"{pointer}: this search ran with algorithm "
                f"{saved_algorithm!r}, the config asks for {algorithm!r}; use "
                "a new model_dir"
            )
        prefix = os.path.join(self.controller_dir, name)
        if not tf.io.gfile.exists(f"{prefix}.index"):
            raise HistoryError(
                f"{pointer}: names checkpoint {prefix}, which is missing"
            )
        return updates, prefix

    # -- results ------------------------------------------------------------

    def write_results(
        self,
        records: Iterable[history_lib.SampleRecord],
        top_k: int = DEFAULT_TOP_K,
    ) -> history_lib.SampleRecord | None:
        """Writes best_spec.json and top_specs.json; returns the best record.

        Nothing is written while no sample has a rated reward.
        """
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        best = history_lib.ranked(records)
        if not best:
            return None
        files.write_atomic(
            self.best_spec_path, best[0].neck_spec().to_json() + "\n"
        )
        files.write_json_atomic(
            self.top_specs_path,
            [_top_entry(i + 1, r) for i, r in enumerate(best[:top_k])],
        )
        return best[0]


def trial_id(sample: int) -> str:
    """KerasTuner trial id of a sample: its index, zero-padded."""
    return f"{sample:0{SAMPLE_DIGITS}d}"
