"""KerasTuner's Oracle for the search: it asks the controller for specs.

NAS-FPN (Ghiasi et al., CVPR 2019, arXiv:1904.07392, Sec. 3) trains an RNN
controller with PPO on the rewards of sampled child architectures, the
children being trained by many workers at once. KerasTuner (keras_tuner
1.4.8) is the engine here: `ControllerOracle` is its Oracle, so a chief
process can serve it to worker processes over gRPC, and
`tuner.SearchTuner` is its Tuner, whose trials are children rated by a
proxy. KerasTuner imports Keras 3 as `keras`; nothing here builds a Keras
model, and the project's layers stay `tf_keras`.

Hyperparameters. Each decision of the search space is one `hp.Int` named
after the step (`cell2.input1`) ranging over its choices, so a trial's
values are the actions and a worker rebuilds the spec with
`space.to_spec`. KerasTuner's own sampling is not used: the values come
from the policy.

Batches. The policy samples `samples_per_update` action sequences at once
for controller step u; their trials are handed out in order, to as many
tuners as ask. When every sample of the batch has a reward the policy is
updated (PPO or REINFORCE; random search learns nothing), checkpointed,
and the next batch is sampled. A tuner that asks while the batch's last
children are still training is told to wait (IDLE).

Rewards. A child's result is stored as `result.json` in its trial
directory before the oracle hears of it; the oracle appends one record to
`history.jsonl` per sample. A sample whose canonical hash already has a
reward (and `reuse_rewards`) is recorded as cached with that reward and is
not trained again; a repeat within a batch waits for the first to finish.
A child that fails earns the penalty reward; a run of
`max_consecutive_failures` failures stops the search, as it points at a
broken set-up rather than at bad architectures.

Lost workers. A worker sends a heartbeat (`get_trial`) while it trains a
child; the chief takes back the child of a worker silent for longer than
`search.worker_timeout` (killed, preempted, its host gone) and hands it to
the next tuner that asks, which resumes from the child's checkpoints,
`max_retries` times; after that the child is recorded as failed. A result
the lost worker stored before dying is used as it is.

Resuming. `history.jsonl` and the controller checkpoint are the source of
truth, not KerasTuner's `oracle.json` and `trial.json`, which are written
in place (a kill mid-write leaves a file that cannot be reloaded) and whose
reload re-queues running trials under new trial ids. Trial ids are sample
indices, so a child keeps its directory across restarts. `restore` loads the
checkpoint of the last completed update, samples the current batch again
(sampling is deterministic given the policy's RNG state, so it is the same
batch) and replays the finished samples of that batch from the history; a
trial interrupted after its result was stored is not trained again.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import keras_tuner as kt
import numpy as np
import tensorflow as tf
from absl import logging
from keras_tuner.engine import trial as trial_lib

from nasfpn_tf.arch.space import SearchSpace
from nasfpn_tf.arch.spec import NeckSpec
from nasfpn_tf.errors import UserError
from nasfpn_tf.search import controller as controller_lib
from nasfpn_tf.search import history as history_lib
from nasfpn_tf.search import proxy as proxy_lib

REWARD = "reward"
RUNNING = trial_lib.TrialStatus.RUNNING
IDLE = trial_lib.TrialStatus.IDLE
STOPPED = trial_lib.TrialStatus.STOPPED
COMPLETED = trial_lib.TrialStatus.COMPLETED
# Consecutive failed children that stop the search (0: never stop).
DEFAULT_MAX_CONSECUTIVE_FAILURES = 10

OnSample = Callable[[history_lib.SampleRecord], None]


class SearchStateError(UserError, RuntimeError):
    """The history or checkpoint disagrees with the config or each other."""


class SearchAborted(UserError, RuntimeError):
    """The search stopped itself (too many children failed in a row)."""


class SearchStorageError(UserError, kt.errors.FatalError):
    """The search directory cannot be written (full disk, no permission).

    A KerasTuner FatalError, so the tuner stops instead of counting the
    child as failed: every child would fail alike, and penalty rewards
    for a full disk would mislead the controller.
    """


@dataclasses.dataclass(frozen=True)
class UpdateInfo:
    """One completed controller step.

    Attributes:
        step: the controller step (batch) just learned from.
        rewards: [batch] rewards in sample order.
        stats: the policy's update statistics (empty for random search).
        updates: updates done so far, this one included.
        replayed: True when every reward came from the history of an
            earlier run (the update is being redone after a restart).
    """

    step: int
    rewards: tuple[float, ...]
    stats: Mapping[str, float]
    updates: int
    replayed: bool


@dataclasses.dataclass
class _Batch:
    """The samples of one controller step and what is known of them."""

    step: int
    start: int
    samples: controller_lib.Samples
    specs: list[NeckSpec]
    hashes: list[str]
    rewards: list[float | None]
    replayed: list[bool]
    handed: set[int] = dataclasses.field(default_factory=set)

    @property
    def size(self) -> int:
        return len(self.specs)

    @property
    def done(self) -> bool:
        return all(r is not None for r in self.rewards)


def hyperparameters(space: SearchSpace) -> kt.HyperParameters:
    """One `Int` per decision, `0 .. num_choices - 1`, named by step."""
    hps = kt.HyperParameters()
    for name, count in zip(space.step_names, space.num_choices):
        hps.Int(name, 0, count - 1)
    return hps


def actions_of(trial: trial_lib.Trial, space: SearchSpace) -> list[int]:
    """The action sequence a trial's hyperparameter values encode."""
    return [int(trial.hyperparameters.get(n)) for n in space.step_names]


class ControllerOracle(kt.Oracle):
    """KerasTuner Oracle whose trials are the policy's samples.

    Args:
        space: the search space.
        policy: a `Controller` or `RandomPolicy`; None for a worker's
            stand-in oracle, which only forwards to the chief.
        search_dir: where history, checkpoints and trials live; None for a
            worker's stand-in.
        num_samples: samples in the whole search.
        samples_per_update: samples per controller step.
        algorithm: "ppo", "reinforce" or "random"; checked against the
            checkpoint.
        penalty_reward: reward of a failed child.
        reuse_rewards: give a repeated architecture its earlier reward.
        max_consecutive_failures: failures in a row that stop the search;
            0 never stops.
        max_retries: times the child of a lost worker is handed out
            again before it is recorded as failed.
        on_sample: called with each new history record.
        on_update: called with an `UpdateInfo` after each update.
    """

    def __init__(
        self,
        space: SearchSpace,
        policy: controller_lib.Policy | None,
        search_dir: history_lib.SearchDir | None,
        *,
        num_samples: int,
        samples_per_update: int,
        algorithm: str = "ppo",
        penalty_reward: float = 0.0,
        reuse_rewards: bool = True,
        max_consecutive_failures: int = DEFAULT_MAX_CONSECUTIVE_FAILURES,
        max_retries: int = 0,
        on_sample: OnSample | None = None,
        on_update: Callable[[UpdateInfo], None] | None = None,
    ):
        if num_samples < 1 or samples_per_update < 1:
            raise ValueError(
                "num_samples and samples_per_update must be >= 1; got "
                f"{num_samples} and {samples_per_update}."
            )
        if max_consecutive_failures < 0:
            raise ValueError(
                "max_consecutive_failures must be >= 0; got "
                f"{max_consecutive_failures}."
            )
        super().__init__(
            objective=kt.Objective(REWARD, "max"),
            max_trials=num_samples,
            hyperparameters=hyperparameters(space),
            allow_new_entries=False,
            tune_new_entries=False,
            max_retries_per_trial=0,
            # KerasTuner's own sampling is unused; a fixed seed also keeps it
            # from drawing one from Python's global `random`.
            seed=1,
        )
        self.space = space
        self.policy = policy
        self.search_dir = search_dir
        self.num_samples = num_samples
        self.samples_per_update = samples_per_update
        self.num_batches = math.ceil(num_samples / samples_per_update)
        self.algorithm = algorithm
        self.penalty_reward = float(penalty_reward)
        self.reuse_rewards = reuse_rewards
        self.max_consecutive_failures = max_consecutive_failures
        self.max_retries = max_retries
        self._on_sample = on_sample
        self._on_update = on_update
        self.history: history_lib.History | None = None
        self.cache = history_lib.RewardCache()
        self.updates = 0
        self.aborted: SearchAborted | None = None
        self._finished: dict[int, history_lib.SampleRecord] = {}
        self._batch: _Batch | None = None
        self._failures_in_a_row = 0
        # Trial id -> monotonic time its tuner was last heard of; sample ->
        # times its worker was lost.
        self._heard: dict[str, float] = {}
        self._lost: collections.Counter[int] = collections.Counter()
        # Reentrant, and released when a call raises (KerasTuner's
        # `synchronized` would keep it).
        self._lock = threading.RLock()

    # -- state ---------------------------------------------------------------

    def restore(self) -> None:
        """Loads history and checkpoint and replays up to the next child.

        Raises:
            SearchStateError: history and checkpoint disagree with the
                config (other batch size, fewer samples, another algorithm)
                or with each other.
        """
        if self.policy is None or self.search_dir is None:
            raise SearchStateError("a worker's stand-in oracle has no state")
        with self._lock:
            self.history = history_lib.History.open(
                self.search_dir.history_path
            )
            records = self.history.records
            for record in records:
                self._check_record(record)
            try:
                latest = self.search_dir.latest_policy(self.algorithm)
            except history_lib.HistoryError as error:
                raise SearchStateError(str(error)) from None
            self.updates = 0
            if latest is not None:
                self.updates, prefix = latest
                try:
                    self.policy.restore(prefix)
                except (AssertionError, ValueError, tf.errors.OpError) as e:
                    raise SearchStateError(
                        f"{prefix} does not fit the controller this config "
                        f"builds (search.controller or space changed?): {e}"
                    ) from None
            learned = getattr(self.policy, "num_updates", self.updates)
            if learned != self.updates:
                raise SearchStateError(
                    f"{self.search_dir.controller_dir}: the checkpoint holds "
                    f"a controller after {learned} updates, its pointer says "
                    f"{self.updates}"
                )
            self._finished = {r.sample: r for r in records}
            self.cache = history_lib.RewardCache(records)
            self._check_updates()
            self._batch = None
            self._advance()

    def _check_updates(self) -> None:
        """Every sample the checkpoint learned from must be in the history."""
        if self.updates > self.num_batches:
            raise SearchStateError(
                f"{self.search_dir.controller_dir} holds the controller after "
                f"{self.updates} updates, more than the {self.num_batches} "
                "batches of this search; search.num_samples or "
                "samples_per_update was lowered; use a new model_dir"
            )
        used = min(self.updates * self.samples_per_update, self.num_samples)
        missing = [s for s in range(used) if s not in self._finished]
        if missing:
            raise SearchStateError(
                f"{self.search_dir.controller_dir} holds the controller after "
                f"{self.updates} updates, but {self.search_dir.history_path} "
                f"lacks samples {missing[:5]} those updates learned from (a "
                "finished search whose last batch was short cannot be "
                "extended by raising search.num_samples; use a new model_dir)"
            )

    def _check_record(self, record: history_lib.SampleRecord) -> None:
        where = f"{self.search_dir.history_path}: sample {record.sample}"
        if record.sample >= self.num_samples:
            raise SearchStateError(
                f"{where} is beyond search.num_samples ({self.num_samples}); "
                "raise num_samples or use a new model_dir"
            )
        if record.step != record.sample // self.samples_per_update:
            raise SearchStateError(
                f"{where} belongs to step {record.step}, not "
                f"{record.sample // self.samples_per_update} as "
                f"search.samples_per_update={self.samples_per_update} "
                "gives; the search was run with another batch size"
            )

    @property
    def finished(self) -> bool:
        """Every batch learned from, or the search aborted."""
        return self.aborted is not None or self.updates >= self.num_batches

    def serving_state(self) -> tuple[bool, bool]:
        """(the search is over and no trial runs, some tuner has not yet
        been told to stop), read together."""
        with self._lock:
            over = self.finished and not self.ongoing_trials
            return over, bool(self.tuner_ids)

    @property
    def records(self) -> list[history_lib.SampleRecord]:
        """The history's records, in file order (the live list: read only)."""
        return [] if self.history is None else self.history.records

    def save(self) -> None:
        """Writes nothing: history and controller checkpoint are the state."""

    def reload(self) -> None:
        """Reads nothing: `restore` resumes from history and checkpoint."""

    def _save_trial(self, trial: trial_lib.Trial) -> None:
        """Writes no trial.json: the trial's result.json is the record."""

    # -- batches ---------------------------------------------------------------

    def _open_batch(self) -> None:
        step = self.updates
        start = step * self.samples_per_update
        size = min(self.samples_per_update, self.num_samples - start)
        samples = self.policy.sample(size)
        specs, hashes, rewards, replayed = [], [], [], []
        for pos in range(size):
            actions = [int(a) for a in samples.actions[pos]]
            spec = self.space.to_spec(actions)
            specs.append(spec)
            hashes.append(spec.canonical_key())
            record = self._finished.get(start + pos)
            if record is not None and list(record.actions) != actions:
                raise SearchStateError(
                    f"{self.search_dir.history_path}: sample {start + pos} "
                    f"has actions {list(record.actions)}, but the restored "
                    f"controller samples {actions}; the history was written "
                    "with another config, seed or controller checkpoint"
                )
            rewards.append(None if record is None else record.reward)
            replayed.append(record is not None)
        self._batch = _Batch(
            step, start, samples, specs, hashes, rewards, replayed
        )

    def _advance(self) -> int | None:
        """Records cached samples and updates the policy until a sample
        needs training.

        Returns:
            The global index of the next sample to train, or None when
            none can start now (all handed out, or the search is over).
        """
        while self.aborted is None:
            if self._batch is None:
                if self.updates >= self.num_batches:
                    return None
                self._open_batch()
            batch = self._batch
            in_flight = {
                batch.hashes[p]
                for p in batch.handed
                if batch.rewards[p] is None
            }
            for pos in range(batch.size):
                if batch.rewards[pos] is not None or pos in batch.handed:
                    continue
                key = batch.hashes[pos]
                if self.reuse_rewards:
                    cached = self.cache.get(key)
                    if cached is not None:
                        self._record_cached(pos, *cached)
                        continue
                    if key in in_flight:
                        continue  # a twin is training; its reward will do
                return batch.start + pos
            if not batch.done:
                return None
            self._learn()
        return None

    def _learn(self) -> None:
        batch = self._batch
        rewards = np.asarray(batch.rewards, dtype=np.float64)
        stats = self.policy.update(batch.samples, rewards)
        self.updates += 1
        self.search_dir.save_policy(self.policy, self.updates, self.algorithm)
        self._batch = None
        if self._on_update is not None:
            self._on_update(
                UpdateInfo(
                    step=batch.step,
                    rewards=tuple(float(r) for r in rewards),
                    stats=dict(stats),
                    updates=self.updates,
                    replayed=all(batch.replayed),
                )
            )

    def _new_record(self, pos: int, **fields: Any) -> history_lib.SampleRecord:
        batch = self._batch
        return history_lib.SampleRecord(
            step=batch.step,
            sample=batch.start + pos,
            actions=tuple(int(a) for a in batch.samples.actions[pos]),
            spec=batch.specs[pos].to_dict(),
            hash=batch.hashes[pos],
            time=time.time(),
            **fields,
        )

    def _record_cached(self, pos: int, reward: float, source: int) -> None:
        self._append(
            pos,
            self._new_record(
                pos,
                reward=reward,
                status=history_lib.CACHED,
                cached_from=source,
            ),
        )

    def _append(self, pos: int, record: history_lib.SampleRecord) -> None:
        self.history.append(record)
        self._finished[record.sample] = record
        self.cache.add(record)
        self._batch.rewards[pos] = record.reward
        if self._on_sample is not None:
            self._on_sample(record)

    # -- KerasTuner's Oracle interface -----------------------------------

    def create_trial(self, tuner_id: str) -> trial_lib.Trial:
        """The next sample to train for `tuner_id`, or IDLE / STOPPED.

        Overrides KerasTuner's: trial ids are sample indices (stable across
        restarts, unlike KerasTuner's running count), and populating the
        values is `_advance`.
        """
        with self._lock:
            if tuner_id in self.ongoing_trials:
                # A restarted tuner with the same id carries on its trial.
                trial = self.ongoing_trials[tuner_id]
                self._heard[trial.trial_id] = time.monotonic()
                return trial
            self.tuner_ids.add(tuner_id)
            sample = self._advance()
            if sample is None:
                status = STOPPED if self.finished else IDLE
                if status == STOPPED:
                    self.tuner_ids.discard(tuner_id)
                return trial_lib.Trial(self.get_space(), status=status)
            pos = sample - self._batch.start
            self._batch.handed.add(pos)
            values = self.populate_space(history_lib.trial_id(sample))
            hps = self.get_space()
            hps.values = values["values"]
            trial = trial_lib.Trial(
                hps, trial_id=history_lib.trial_id(sample), status=RUNNING
            )
            self.trials[trial.trial_id] = trial
            self.ongoing_trials[tuner_id] = trial
            self.start_order.append(trial.trial_id)
            self._heard[trial.trial_id] = time.monotonic()
            return trial

    def populate_space(self, trial_id: str) -> dict[str, Any]:
        """The hyperparameter values (the actions) of sample `trial_id`,
        which must be in the current batch."""
        with self._lock:
            pos = int(trial_id) - self._batch.start
            actions = self._batch.samples.actions[pos]
            return {
                "status": RUNNING,
                "values": {
                    name: int(a)
                    for name, a in zip(self.space.step_names, actions)
                },
            }

    def update_trial(
        self, trial_id: str, metrics: Mapping[str, float], step: int = 0
    ) -> trial_lib.Trial:
        with self._lock:
            if trial_id not in self.trials:
                # From a tuner still running a trial of an earlier chief.
                return trial_lib.Trial(self.get_space(), trial_id, RUNNING)
            return super().update_trial(trial_id, metrics, step=step)

    def get_trial(self, trial_id: str) -> trial_lib.Trial:
        """The trial; a worker's heartbeat while it trains the child."""
        with self._lock:
            if trial_id in self._heard:
                self._heard[trial_id] = time.monotonic()
            if trial_id not in self.trials:
                return trial_lib.Trial(self.get_space(), trial_id, RUNNING)
            return self.trials[trial_id]

    def reclaim_lost_trials(self, silent_for: float) -> list[str]:
        """Takes back the children of tuners silent for `silent_for` s.

        Each goes to the next tuner that asks (the same trial id, so the
        same work directory and checkpoints) until it has been lost
        `max_retries` times; then it is recorded as failed. A result its
        worker stored is recorded as it is.

        Returns:
            The ids of the trials taken back.
        """
        with self._lock:
            now = time.monotonic()
            lost = [
                (tuner_id, trial)
                for tuner_id, trial in self.ongoing_trials.items()
                if now - self._heard.get(trial.trial_id, now) > silent_for
            ]
            for tuner_id, trial in lost:
                del self.ongoing_trials[tuner_id]
                self.tuner_ids.discard(tuner_id)
                self._heard.pop(trial.trial_id, None)
                sample = int(trial.trial_id)
                self._lost[sample] += 1
                message = (
                    f"tuner {tuner_id} was silent for more than "
                    f"{silent_for:g} s while training sample {sample} (lost "
                    f"{self._lost[sample]} time(s))"
                )
                batch = self._batch
                pos = sample - batch.start if batch is not None else -1
                if not 0 <= pos < (batch.size if batch else 0):
                    continue
                stored = read_result(self.search_dir, sample, batch.hashes[pos])
                if stored is None and self._lost[sample] <= self.max_retries:
                    logging.warning("%s; handing it out again", message)
                    batch.handed.discard(pos)
                    continue
                logging.warning("%s; recording it", message)
                trial.status = trial_lib.TrialStatus.FAILED
                trial.message = message
                self.end_trial(trial)
            return [trial.trial_id for _, trial in lost]

    def end_trial(self, trial: trial_lib.Trial) -> None:
        """Records a finished child; learns when its batch is complete."""
        with self._lock:
            known = self.trials.get(trial.trial_id)
            if known is not None:
                known.status, known.message = trial.status, trial.message
                self.end_order.append(trial.trial_id)
            for tuner_id, ongoing in list(self.ongoing_trials.items()):
                if ongoing.trial_id == trial.trial_id:
                    del self.ongoing_trials[tuner_id]
            self._heard.pop(trial.trial_id, None)
            sample = int(trial.trial_id)
            batch = self._batch
            if batch is None or not 0 <= sample - batch.start < batch.size:
                logging.warning(
                    "Ignoring the end of trial %s: not in the current batch "
                    "(a tuner finishing a trial handed out before a restart)",
                    trial.trial_id,
                )
                return
            pos = sample - batch.start
            if batch.rewards[pos] is not None:
                return  # already recorded (a trial handed out twice)
            record = self._trained_record(pos, trial)
            if known is not None:
                # KerasTuner ranks trials by score: the recorded reward,
                # penalty included.
                known.score = record.reward
            self._append(pos, record)
            batch.handed.discard(pos)
            self._count_failure(record)
            # Cache the twins that waited for this child, and learn if the
            # batch is complete, now rather than at the next request.
            self._advance()

    def _trained_record(
        self, pos: int, trial: trial_lib.Trial
    ) -> history_lib.SampleRecord:
        batch = self._batch
        sample = batch.start + pos
        stored = read_result(self.search_dir, sample, batch.hashes[pos])
        if stored is None:
            message = (trial.message or "").strip().splitlines()
            error = (
                message[-1]
                if message
                else "the trial ended without a result (see its tuner's log)"
            )
            return self._new_record(
                pos,
                reward=self.penalty_reward,
                status=history_lib.FAILED,
                error=f"run_trial: {error}",
            )
        result, tuner = stored
        return self._new_record(
            pos,
            reward=result.reward,
            status=result.status,
            error=result.error,
            seconds=result.seconds,
            tuner=tuner,
            metrics=dict(result.metrics),
        )

    def _count_failure(self, record: history_lib.SampleRecord) -> None:
        if record.status != history_lib.FAILED:
            self._failures_in_a_row = 0
            return
        self._failures_in_a_row += 1
        limit = self.max_consecutive_failures
        if limit and self._failures_in_a_row >= limit and not self.aborted:
            self.aborted = SearchAborted(
                f"{self._failures_in_a_row} children failed in a row; the "
                f"last (sample {record.sample}): {record.error}"
            )
            logging.error("Stopping the search: %s", self.aborted)


# --------------------------------------------------------------------------
# Child results, stored before the oracle hears of them.


def write_result(
    search_dir: history_lib.SearchDir,
    sample: int,
    key: str,
    result: proxy_lib.ProxyResult,
    tuner_id: str,
) -> None:
    """Stores a child's result in its trial directory, atomically."""
    history_lib.write_json_atomic(
        search_dir.result_path(sample),
        {"hash": key, "tuner": tuner_id, **result.to_dict()},
    )


def read_result(
    search_dir: history_lib.SearchDir, sample: int, key: str
) -> tuple[proxy_lib.ProxyResult, str] | None:
    """(result, tuner id) stored for `sample`, if it is for hash `key`."""
    path = search_dir.result_path(sample)
    try:
        data = history_lib.read_json(path)
    except history_lib.HistoryError as error:
        logging.warning("Ignoring %s", error)
        return None
    if not isinstance(data, dict) or data.get("hash") != key:
        return None
    try:
        return proxy_lib.ProxyResult.from_dict(data), str(data.get("tuner", ""))
    except (TypeError, ValueError) as error:
        logging.warning("Ignoring %s: %s", path, error)
        return None
