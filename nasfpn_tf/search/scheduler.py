"""Which child trains next: batches, reward cache, failures, lost workers.

NAS-FPN (Ghiasi et al., CVPR 2019, arXiv:1904.07392, Sec. 3) trains an RNN
controller with PPO on the rewards of sampled child architectures, the
children being trained by many workers at once. `Scheduler` is the chief's
bookkeeping for that, in plain Python: it hands out samples to tuners by
id and records what becomes of them. `oracle.py` serves it to KerasTuner,
which carries the requests between processes; nothing here knows of
KerasTuner.

Batches. The policy samples `samples_per_update` action sequences at once
for controller step u; their samples are handed out in order, to as many
tuners as ask. When every sample of the batch has a reward the policy is
updated (PPO or REINFORCE; random search learns nothing), checkpointed,
and the next batch is sampled. A tuner that asks while the batch's last
children are still training is told to wait.

Rewards. A child's result is stored as `result.json` in its trial
directory before the scheduler hears of it (`results.py`); the scheduler
appends one record to `history.jsonl` per sample. A sample whose canonical
hash already has a reward (and `reuse_rewards`) is recorded as cached with
that reward and is not trained again; a repeat within a batch waits for the
first to finish. A child that fails earns the penalty reward; a run of
`max_consecutive_failures` failures stops the search, as it points at a
broken set-up rather than at bad architectures.

Lost workers. A tuner is heard of while it trains a child (`heartbeat`);
`reclaim_lost` takes back the child of a tuner silent for longer than a
timeout (killed, preempted, its host gone) and hands it to the next tuner
that asks, which resumes from the child's checkpoints, `max_retries`
times; after that the child is recorded as failed. A result the lost
worker stored before dying is used as it is.

Resuming. `history.jsonl` and the controller checkpoint are the source of
truth. Sample indices are stable, so a child keeps its directory across
restarts. `restore` loads the checkpoint of the last completed update,
samples the current batch again (sampling is deterministic given the
policy's RNG state, so it is the same batch) and replays the finished
samples of that batch from the history; a child interrupted after its
result was stored is not trained again.

Warm starts. Given the histories of earlier searches (`warm_start.py`),
`restore` fills the cache with their rewards first and, before the first
batch is sampled, updates the policy on them once and checkpoints it.

Not thread-safe: its caller serializes the calls.

Over 500 lines, yet one concern: the methods of `Scheduler` share one
state (the batch, its pending samples, the failure count), and the parts
that stand alone already live beside it (`batch.py`, `results.py`,
`resume.py`, `warm_start.py`).
"""

from __future__ import annotations

import collections
import dataclasses
import math
import time
from collections.abc import Callable, Mapping

import numpy as np
from absl import logging

from nasfpn_tf.arch.space import SearchSpace
from nasfpn_tf.errors import UserError
from nasfpn_tf.search import batch as batch_lib
from nasfpn_tf.search import controller as controller_lib
from nasfpn_tf.search import history as history_lib
from nasfpn_tf.search import results as results_lib
from nasfpn_tf.search import resume
from nasfpn_tf.search import search_dir as search_dir_lib
from nasfpn_tf.search import warm_start as warm_start_lib

RUN = "run"
WAIT = "wait"
STOP = "stop"
# Consecutive failed children that stop the search (0: never stop).
DEFAULT_MAX_CONSECUTIVE_FAILURES = 10

OnSample = Callable[[history_lib.SampleRecord], None]


class SearchAborted(UserError, RuntimeError):
    """The search stopped itself (too many children failed in a row)."""


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


@dataclasses.dataclass(frozen=True)
class Assignment:
    """What a tuner that asks for work is told.

    Attributes:
        status: RUN (train `sample`), WAIT (ask again soon) or STOP.
        sample: the global index of the child to train (RUN only).
        actions: the child's action sequence (RUN only).
        again: the tuner was already training this child (a restarted
            tuner with the same id carries on).
    """

    status: str
    sample: int | None = None
    actions: tuple[int, ...] = ()
    again: bool = False


class Scheduler:
    """Hands out the policy's samples and learns from their rewards.

    Args:
        space: the search space.
        policy: a `Controller` or `RandomPolicy`.
        search_dir: where history, checkpoints and trials live.
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
        clock: seconds for heartbeats (monotonic).
        warm_start: earlier searches' histories to start from
            (`warm_start.load`); a rerun must give the same.
    """

    def __init__(
        self,
        space: SearchSpace,
        policy: controller_lib.Policy,
        search_dir: search_dir_lib.SearchDir,
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
        clock: Callable[[], float] = time.monotonic,
        warm_start: warm_start_lib.WarmStart | None = None,
    ):
        check_settings(
            num_samples, samples_per_update, max_consecutive_failures
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
        self._clock = clock
        self.warm_start = warm_start
        self.history: history_lib.History | None = None
        self.cache = history_lib.RewardCache()
        self.updates = 0
        self.aborted: SearchAborted | None = None
        # Tuner id -> the sample it trains; tuners not yet told to stop.
        self.running: dict[str, int] = {}
        self.tuners: set[str] = set()
        self._finished: dict[int, history_lib.SampleRecord] = {}
        self._batch: batch_lib.Batch | None = None
        self._failures_in_a_row = 0
        # Sample -> clock time its tuner was last heard of; times lost.
        self._heard: dict[int, float] = {}
        self._lost: collections.Counter[int] = collections.Counter()

    # -- state -----------------------------------------------------------------

    def restore(self) -> None:
        """Loads history and checkpoint and replays up to the next child.

        Raises:
            resume.SearchStateError: history and checkpoint disagree with
                the config (other batch size, fewer samples, another
                algorithm) or with each other.
            warm_start.WarmStartError: other warm-start sources than the
                search started with.
        """
        self.history = history_lib.History.open(self.search_dir.history_path)
        records = self.history.records
        for record in records:
            resume.check_record(
                record,
                self.num_samples,
                self.samples_per_update,
                self.search_dir.history_path,
            )
        warm = warm_start_lib.settle(
            self.search_dir,
            self.warm_start,
            started=bool(records),
            samples_per_update=self.samples_per_update,
            learns=self.algorithm != "random",
        )
        warm_updates = 0
        if warm is not None and self.algorithm != "random":
            warm_updates = warm.num_updates(self.samples_per_update)
        self.updates = resume.restore_policy(
            self.search_dir, self.policy, self.algorithm, warm_updates
        )
        if warm_updates and self.policy.num_updates == 0:
            # No checkpoint yet: replay, and keep the result as update 0.
            warm_start_lib.replay(
                self.policy, warm, self.space, self.samples_per_update
            )
            self.search_dir.save_policy(self.policy, 0, self.algorithm)
        self._finished = {r.sample: r for r in records}
        self.cache = history_lib.RewardCache()
        if warm is not None:
            warm.fill(self.cache)
        for record in records:
            self.cache.add(record)
        resume.check_updates(
            self.updates,
            self.num_samples,
            self.samples_per_update,
            set(self._finished),
            self.search_dir,
        )
        self._batch = None
        self._advance()

    @property
    def finished(self) -> bool:
        """Every batch learned from, or the search aborted."""
        return self.aborted is not None or self.updates >= self.num_batches

    @property
    def over(self) -> bool:
        """Finished, and no child is training."""
        return self.finished and not self.running

    @property
    def records(self) -> list[history_lib.SampleRecord]:
        """The history's records, in file order (the live list: read only)."""
        return [] if self.history is None else self.history.records

    def actions(self, sample: int) -> tuple[int, ...]:
        """The action sequence of `sample`, which is in the current batch."""
        return self._batch.actions(sample - self._batch.start)

    def spec_key(self, sample: int) -> str:
        """The canonical hash of `sample`, which is in the current batch."""
        return self._batch.hashes[sample - self._batch.start]

    # -- tuners ----------------------------------------------------------------

    def assign(self, tuner_id: str) -> Assignment:
        """The next sample for `tuner_id` to train, or WAIT / STOP."""
        if tuner_id in self.running:
            # A restarted tuner with the same id carries on its child.
            sample = self.running[tuner_id]
            self._heard[sample] = self._clock()
            return Assignment(RUN, sample, self.actions(sample), again=True)
        self.tuners.add(tuner_id)
        sample = self._advance()
        if sample is None:
            if not self.finished:
                return Assignment(WAIT)
            self.tuners.discard(tuner_id)
            return Assignment(STOP)
        self._batch.handed.add(sample - self._batch.start)
        self.running[tuner_id] = sample
        self._heard[sample] = self._clock()
        return Assignment(RUN, sample, self.actions(sample))

    def heartbeat(self, sample: int) -> None:
        """The tuner training `sample` is alive."""
        if sample in self._heard:
            self._heard[sample] = self._clock()

    def finish(
        self, sample: int, error: str | None = None
    ) -> history_lib.SampleRecord | None:
        """Records child `sample` from its stored result; learns when its
        batch is complete.

        Args:
            sample: the child's global index.
            error: what its tuner said went wrong, if anything; the last
                line is the record's error when no result was stored.

        Returns:
            The new record; None when the sample is not in the current
            batch (a tuner finishing a child handed out before a restart)
            or already recorded.
        """
        for tuner_id, running in list(self.running.items()):
            if running == sample:
                del self.running[tuner_id]
        self._heard.pop(sample, None)
        batch = self._batch
        if batch is None or not batch.holds(sample):
            logging.warning(
                "Ignoring the end of sample %d: not in the current batch "
                "(a tuner finishing a child handed out before a restart)",
                sample,
            )
            return None
        pos = sample - batch.start
        if batch.rewards[pos] is not None:
            return None  # already recorded (a child handed out twice)
        record = self._trained_record(pos, error)
        self._append(pos, record)
        batch.handed.discard(pos)
        self._count_failure(record)
        # Cache the twins that waited for this child, and learn if the
        # batch is complete, now rather than at the next request.
        self._advance()
        return record

    def reclaim_lost(self, silent_for: float) -> list[int]:
        """Takes back the children of tuners silent for `silent_for` s.

        Each goes to the next tuner that asks (the same sample, so the
        same work directory and checkpoints) until it has been lost
        `max_retries` times; then it is recorded as failed. A result its
        worker stored is recorded as it is.

        Returns:
            The samples taken back.
        """
        now = self._clock()
        lost = [
            (tuner_id, sample)
            for tuner_id, sample in self.running.items()
            if now - self._heard.get(sample, now) > silent_for
        ]
        for tuner_id, sample in lost:
            del self.running[tuner_id]
            self.tuners.discard(tuner_id)
            self._heard.pop(sample, None)
            self._lost[sample] += 1
            message = (
                f"tuner {tuner_id} was silent for more than {silent_for:g} s "
                f"while training sample {sample} (lost {self._lost[sample]} "
                "time(s))"
            )
            batch = self._batch
            if batch is None or not batch.holds(sample):
                continue
            key = self.spec_key(sample)
            stored = results_lib.read_result(self.search_dir, sample, key)
            if stored is None and self._lost[sample] <= self.max_retries:
                logging.warning("%s; handing it out again", message)
                batch.handed.discard(sample - batch.start)
                continue
            logging.warning("%s; recording it", message)
            self.finish(sample, message)
        return [sample for _, sample in lost]

    # -- batches ---------------------------------------------------------------

    def _open_batch(self) -> None:
        start = self.updates * self.samples_per_update
        size = min(self.samples_per_update, self.num_samples - start)
        self._batch = batch_lib.Batch.sample(
            self.policy, self.space, self.updates, start, size
        )
        for pos in range(size):
            record = self._finished.get(start + pos)
            if record is None:
                continue
            resume.check_replay(
                record, self._batch.actions(pos), self.search_dir.history_path
            )
            self._batch.rewards[pos] = record.reward
            self._batch.replayed[pos] = True

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
            in_flight = batch.keys_in_flight()
            for pos in batch.waiting():
                key = batch.hashes[pos]
                if self.reuse_rewards:
                    cached = self.cache.get(key)
                    if cached is not None:
                        source = self.cache.source(key)
                        self._record_cached(pos, *cached, source)
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

    # -- records ---------------------------------------------------------------

    def _record_cached(
        self, pos: int, reward: float, sample: int, history: str | None
    ) -> None:
        # A repeat reached the rungs its source (of this search) reached.
        origin = self._finished.get(sample) if history is None else None
        record = self._batch.record(
            pos,
            reward=reward,
            status=history_lib.CACHED,
            cached_from=sample,
            cached_source=history,
            rungs=origin.rungs if origin is not None else (),
        )
        self._append(pos, record)

    def _append(self, pos: int, record: history_lib.SampleRecord) -> None:
        self.history.append(record)
        self._finished[record.sample] = record
        self.cache.add(record)
        self._batch.rewards[pos] = record.reward
        if self._on_sample is not None:
            self._on_sample(record)

    def _trained_record(
        self, pos: int, error: str | None
    ) -> history_lib.SampleRecord:
        batch = self._batch
        sample = batch.start + pos
        stored = results_lib.read_result(
            self.search_dir, sample, batch.hashes[pos]
        )
        if stored is None:
            lines = (error or "").strip().splitlines()
            last = (
                lines[-1]
                if lines
                else "the trial ended without a result (see its tuner's log)"
            )
            return batch.record(
                pos,
                reward=self.penalty_reward,
                status=history_lib.FAILED,
                error=f"run_trial: {last}",
            )
        result, tuner = stored
        return batch.record(
            pos,
            reward=result.reward,
            status=result.status,
            error=result.error,
            seconds=result.seconds,
            tuner=tuner,
            metrics=dict(result.metrics),
            rungs=result.rungs,
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


def check_settings(
    num_samples: int, samples_per_update: int, max_consecutive_failures: int
) -> None:
    """Raises ValueError for settings no search can run with."""
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
