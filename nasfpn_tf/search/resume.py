"""Checks that a search directory fits the search about to resume in it.

A search resumes from `history.jsonl` and the controller checkpoint of its
last completed update (`scheduler.Scheduler.restore`). Both were written by
a search with some batch size, sample count, algorithm, seed and space;
rerun with other settings, the same directory would silently teach the
controller from samples it never drew. These checks refuse that with a
message naming the file and the setting, before anything is trained.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import tensorflow as tf

from nasfpn_tf.errors import UserError
from nasfpn_tf.search import controller as controller_lib
from nasfpn_tf.search import history as history_lib
from nasfpn_tf.search import search_dir as search_dir_lib


class SearchStateError(UserError, RuntimeError):
    """The history or checkpoint disagrees with the config or each other."""


def check_record(
    record: history_lib.SampleRecord,
    num_samples: int,
    samples_per_update: int,
    history_path: str,
) -> None:
    """A history record must lie within the search and its batch size."""
    where = f"{history_path}: sample {record.sample}"
    if record.sample >= num_samples:
        raise SearchStateError(
            f"{where} is beyond search.num_samples ({num_samples}); "
            "raise num_samples or use a new model_dir"
        )
    if record.step != record.sample // samples_per_update:
        raise SearchStateError(
            f"{where} belongs to step {record.step}, not "
            f"{record.sample // samples_per_update} as "
            f"search.samples_per_update={samples_per_update} "
            "gives; the search was run with another batch size"
        )


def restore_policy(
    search_dir: search_dir_lib.SearchDir,
    policy: controller_lib.Policy,
    algorithm: str,
    warm_updates: int = 0,
) -> int:
    """Loads the latest controller checkpoint into `policy`.

    Args:
        warm_updates: updates replayed from warm-start histories before
            this search's first; a checkpoint holds them besides the
            updates its pointer counts.

    Returns:
        The updates the checkpoint holds (0 without one).
    """
    try:
        latest = search_dir.latest_policy(algorithm)
    except history_lib.HistoryError as error:
        raise SearchStateError(str(error)) from None
    updates = 0
    if latest is not None:
        updates, prefix = latest
        try:
            policy.restore(prefix)
        except (AssertionError, ValueError, tf.errors.OpError) as e:
            raise SearchStateError(
                f"{prefix} does not fit the controller this config "
                f"builds (search.controller or space changed?): {e}"
            ) from None
    expected = updates + (warm_updates if latest is not None else 0)
    learned = getattr(policy, "num_updates", expected)
    if learned != expected:
        warm = f" and {warm_updates} of the warm start" if warm_updates else ""
        raise SearchStateError(
            f"{search_dir.controller_dir}: the checkpoint holds "
            f"a controller after {learned} updates, its pointer says "
            f"{updates}{warm}"
        )
    return updates


def check_updates(
    updates: int,
    num_samples: int,
    samples_per_update: int,
    finished: Collection[int],
    search_dir: search_dir_lib.SearchDir,
) -> None:
    """Every sample the checkpoint learned from must be in the history
    (`finished`: the samples it records)."""
    where = search_dir.controller_dir
    num_batches = -(-num_samples // samples_per_update)
    if updates > num_batches:
        raise SearchStateError(
            f"{where} holds the controller after {updates} updates, "
            f"more than the {num_batches} batches of this search; "
            "search.num_samples or samples_per_update was lowered; use "
            "a new model_dir"
        )
    used = min(updates * samples_per_update, num_samples)
    missing = [s for s in range(used) if s not in finished]
    if missing:
        raise SearchStateError(
            f"{where} holds the controller after {updates} updates, "
            f"but {search_dir.history_path} lacks samples "
            f"{missing[:5]} those updates learned from (a finished "
            "search whose last batch was short cannot be extended by "
            "raising search.num_samples; use a new model_dir)"
        )


def check_replay(
    record: history_lib.SampleRecord,
    actions: Sequence[int],
    history_path: str,
) -> None:
    """The restored controller must sample what the history recorded."""
    if list(record.actions) != list(actions):
        raise SearchStateError(
            f"{history_path}: sample {record.sample} has actions "
            f"{list(record.actions)}, but the restored controller samples "
            f"{list(actions)}; the history was written with another config, "
            "seed or controller checkpoint"
        )
