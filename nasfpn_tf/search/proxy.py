"""The proxy task: a child spec in, a rated record out.

NAS-FPN (Ghiasi et al., CVPR 2019, arXiv:1904.07392, Sec. 3) rates each
sampled architecture by training a small RetinaNet with it for a short
schedule and taking its AP on a held-out part of the training images. Here
the child trains with `config.proxy_experiment(config)` (the search's proxy
sizes and steps applied to the main config) through
`trainer.train_and_evaluate(..., eval_split="heldout")`, and its reward is
the held-out COCO AP.

The proxy knows nothing of reinforcement learning: it is a `rater.Rater`,
mapping a spec to a `ProxyResult`. What it is given decides the rest:
`search.objective` turns AP and costs into the reward
(`objective.Objective`), and with successive halving `rungs.climb` trains
the child rung by rung through the callable the proxy hands it. A child
that raises is not fatal to the search: it is
recorded as failed with its error and earns `search.penalty_reward`.
Transient errors (a lost connection to storage or to a TPU worker) are
retried up to `search.max_retries` times first; the child's work directory
is kept, so a retry resumes from the child's last checkpoint. Errors that
come with the architecture, such as running out of accelerator memory
(`tf.errors.ResourceExhaustedError`) or a non-finite loss
(`NonFiniteLossError`), would only repeat and are not retried. Errors of
the storage (a full disk, a directory that cannot be written) are not the
child's either: every child would fail alike and their penalty rewards
would mislead the controller, so they propagate and stop the search
(`errors.is_transient_error`, `errors.is_storage_error`).

Children train in the search process, not in a subprocess per child: a
subprocess would pay the TensorFlow import and the accelerator set-up
(minutes on a TPU host, which one process may hold at a time) for every
child, while the search's children are short. Between children the Keras
session is cleared and Python garbage collected. A child that crashes the
process itself (a segfault, the kernel's OOM killer) stops the search, and
rerunning the command resumes it. With successive halving a promoted
child holds its trainer session (`trainer.open_session`) between rungs
(no rebuild, restore or retrace) and the Keras session is cleared when it
stops.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import hashlib
import math
import os
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import tensorflow as tf
from absl import logging

from nasfpn_tf import compat
from nasfpn_tf import config as config_lib
from nasfpn_tf.arch.spec import NeckSpec
from nasfpn_tf.errors import (  # noqa: F401 (the search reads them here)
    describe_error,
    is_storage_error,
    is_transient_error,
    storage_error_of,
)
from nasfpn_tf.run_files import CHECKPOINT_SUBDIR as CHECKPOINTS_DIR
from nasfpn_tf.search import objective as objective_lib
from nasfpn_tf.search import rungs as rungs_lib
from nasfpn_tf.search.history import FAILED, OK
from nasfpn_tf.search.rater import STATUSES, ProxyResult, Rater  # noqa: F401

# The final metric that is the reward, as the evaluator names COCO AP.
REWARD_METRIC = "AP"
EVAL_SPLIT = "heldout"
# Child seeds fit a signed 32-bit int (TensorFlow and NumPy seeds).
SEED_MASK = 0x7FFFFFFF
# The rater protocol's name from before it had its own module.
Proxy = Rater
OVER_TARGET = objective_lib.OVER_TARGET

TrainFn = Callable[..., Mapping[str, Any]]
# A child's training to a step (None: the whole schedule) -> its metrics.
FitFn = Callable[[int | None], Mapping[str, Any]]


class ProxyTask:
    """Short training of a child, rated by its held-out AP.

    Args:
        config: the search's experiment config; children train with
            `proxy_experiment(config)`, with a NAS-FPN neck from the sampled
            spec.
        strategy: the tf.distribute strategy children train under; None
            lets the trainer pick its default.
        train_fn: `train_and_evaluate(config, model_dir, strategy=, spec=,
            eval_split=) -> metrics`; None is the trainer's.
        keep_checkpoints: keep each child's checkpoints after its result is
            stored (they are only needed to resume an interrupted child).
        board: where successive halving reads the rewards of the other
            children at a rung; None reads the `rungs.jsonl` of the
            folders beside the child's work directory (the search's
            trials).
        objective: the reward of a child from its AP and costs; None is
            `search.objective` with `objective.shared_meter()` when the
            task trains for real or the objective needs a cost, else
            without costs (tests with a fake `train_fn`).

    Raises:
        config_lib.ConfigError: the proxy batch sizes do not split over the
            strategy's replicas.
    """

    def __init__(
        self,
        config: config_lib.ExperimentConfig,
        *,
        strategy: tf.distribute.Strategy | None = None,
        train_fn: TrainFn | None = None,
        keep_checkpoints: bool = False,
        board: rungs_lib.RungBoard | None = None,
        objective: objective_lib.Objective | None = None,
    ):
        self.config = config
        self.halving = config.search.rungs
        self.rungs = rungs_lib.rung_steps(
            self.halving.min_steps,
            self.halving.eta,
            config.search.proxy.train_steps,
        )
        self.board = board
        # The spec is passed to the trainer itself; a neck type or arch
        # path left in the main config must not replace it.
        self.child_config = config_lib.override(
            config_lib.proxy_experiment(config),
            {"model.neck.type": "nasfpn", "model.neck.arch": None},
        )
        self.strategy = strategy
        if strategy is not None:
            config_lib.check_batch(
                self.child_config, strategy.num_replicas_in_sync
            )
        self.penalty_reward = float(config.search.penalty_reward)
        self.max_retries = int(config.search.max_retries)
        self._train_fn = train_fn
        # With the trainer's own training a promoted child goes on in the
        # session of its first rung; an injected train_fn trains anew.
        self._keeps_sessions = train_fn is None
        # The custom gradients a child registers hold its graph: those
        # registered after this are dropped when its memory is freed.
        self._gradients_before = compat.custom_gradient_names()
        self.keep_checkpoints = keep_checkpoints
        if objective is None:
            settings = config.search.objective
            measure = train_fn is None or settings.kind != "ap"
            objective = objective_lib.Objective(
                settings, objective_lib.shared_meter() if measure else None
            )
        self.objective = objective

    def _train(self) -> TrainFn:
        if self._train_fn is None:
            from nasfpn_tf.train import trainer

            self._train_fn = trainer.train_and_evaluate
        return self._train_fn

    def reward(self, spec: NeckSpec, work_dir: str) -> ProxyResult:
        """Trains `spec` in `work_dir` and rates it; never raises Exception.

        With `search.proxy.seeds` = k > 1 the child trains k times, from
        the seeds `child_seeds` derives from the search seed and the
        spec's canonical key, each in `work_dir/seed{i}`; the reward is
        the mean held-out AP and every seed's reward is kept in the
        metrics (`reward_seed{i}`, with `seed{i}`). With successive
        halving (`search.rungs`) the child is rated at each rung it
        reaches (`rungs.climb`).

        Returns:
            An "ok" result with reward = held-out AP, or a "failed" one with
            the penalty reward and the error.
        """
        start = time.monotonic()
        over = self.objective.over_target(self.child_config.model, spec)
        if over is not None:  # rated 0 without training
            return ProxyResult(
                reward=0.0,
                status=OK,
                metrics=over,
                seconds=time.monotonic() - start,
                attempts=0,
            )
        seeds = child_seeds(
            self.config.runtime.seed,
            spec.canonical_key(),
            self.config.search.proxy.seeds,
        )
        if len(self.rungs) == 1:
            return self._train_seeds(spec, work_dir, seeds)
        return self._train_rungs(spec, work_dir, seeds)

    def _train_seeds(
        self,
        spec: NeckSpec,
        work_dir: str,
        seeds: Sequence[int],
        until: int | None = None,
    ) -> ProxyResult:
        """One training per seed (to step `until`), combined."""
        if len(seeds) == 1:
            return self.train(spec, work_dir, seeds[0], until=until)
        results = []
        for index, seed in enumerate(seeds):
            result = self.train(
                spec, os.path.join(work_dir, f"seed{index}"), seed, until=until
            )
            results.append(result)
            if result.status == FAILED:
                break
        return combine_seeds(results, seeds)

    def _train_rungs(
        self, spec: NeckSpec, work_dir: str, seeds: Sequence[int]
    ) -> ProxyResult:
        """Successive halving: trains to each rung's steps in turn, rated
        at each, while the rung's board promotes the child. What `work_dir`
        logged (`rungs.jsonl`) is neither trained nor decided again. With
        one seed and the trainer's own training, the child holds one
        trainer session across its rungs."""
        held = None
        if self._keeps_sessions and len(seeds) == 1:
            held = _HeldSession(
                _open_session(),
                self._seeded(seeds[0]),
                work_dir,
                strategy=self.strategy,
                spec=spec,
                eval_split=EVAL_SPLIT,
            )

            def train(until: int) -> ProxyResult:
                return self._rate(held, spec, work_dir, until)
        else:

            def train(until: int) -> ProxyResult:
                return self._train_seeds(spec, work_dir, seeds, until)

        try:
            return rungs_lib.climb(
                train,
                work_dir,
                self.rungs,
                eta=self.halving.eta,
                final_rule=self.halving.final_reward,
                board=self.board,
            )
        finally:
            if held is not None and held.close():
                self._free_memory()

    def train(
        self,
        spec: NeckSpec,
        work_dir: str,
        seed: int,
        until: int | None = None,
    ) -> ProxyResult:
        """One training of `spec` from `seed` (`runtime.seed` of the
        child), to step `until` (None: the whole schedule), retried on
        transient errors; never raises Exception."""
        config = self._seeded(seed)

        def fit(until: int | None) -> Mapping[str, Any]:
            # A train_fn without `until` serves children without rungs.
            stop = {} if until is None else {"until": until}
            return self._train()(
                config,
                work_dir,
                strategy=self.strategy,
                spec=spec,
                eval_split=EVAL_SPLIT,
                **stop,
            )

        return self._rate(fit, spec, work_dir, until)

    def _seeded(self, seed: int) -> config_lib.ExperimentConfig:
        return config_lib.override(self.child_config, {"runtime.seed": seed})

    def _rate(
        self, fit: FitFn, spec: NeckSpec, work_dir: str, until: int | None
    ) -> ProxyResult:
        """`fit(until)`'s training rated, retried on transient errors;
        never raises Exception. Memory is freed after each attempt unless
        `fit` holds its session open for the next rung."""
        start = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                metrics = fit(until)
                reward, metrics = self.objective.rate(
                    self.child_config.model,
                    spec,
                    _reward_from(metrics),
                    metrics,
                )
                return ProxyResult(
                    reward=reward,
                    status=OK,
                    metrics=_finite_metrics(metrics),
                    seconds=time.monotonic() - start,
                    attempts=attempt,
                )
            # A child never stops the search: whatever it raises is its
            # failure, unless the storage failed.
            except Exception as error:
                if is_storage_error(error):
                    raise
                retry = (
                    is_transient_error(error) and attempt <= self.max_retries
                )
                logging.warning(
                    "Child in %s failed (attempt %d%s):\n%s",
                    work_dir,
                    attempt,
                    ", retrying" if retry else "",
                    traceback.format_exc(),
                )
                if not retry:
                    return ProxyResult(
                        reward=self.penalty_reward,
                        status=FAILED,
                        seconds=time.monotonic() - start,
                        error=describe_error(error),
                        attempts=attempt,
                    )
            finally:
                if not (isinstance(fit, _HeldSession) and fit.is_open):
                    self._free_memory()

    def _free_memory(self) -> None:
        """Drops the custom gradients children registered (each holds its
        child's graph), clears the Keras session and collects garbage."""
        compat.drop_custom_gradients(self._gradients_before)
        _free_memory()

    def release(self, work_dir: str) -> None:
        """Deletes the child's checkpoints unless `keep_checkpoints`."""
        if self.keep_checkpoints:
            return
        for path in [os.path.join(work_dir, CHECKPOINTS_DIR)] + [
            os.path.join(work_dir, f"seed{i}", CHECKPOINTS_DIR)
            for i in range(self.config.search.proxy.seeds)
        ]:
            if tf.io.gfile.exists(path):
                tf.io.gfile.rmtree(path)


def child_seeds(search_seed: int, key: str, count: int) -> list[int]:
    """The training seeds of a child: a function of the search seed, the
    spec's canonical key and the index only, so one spec gets the same
    seeds in every run of a search and equivalent specs share them.

    Returns:
        `count` seeds in [0, 2**31).
    """
    seeds = []
    for index in range(count):
        text = f"{search_seed}:{key}:{index}".encode()
        digest = hashlib.sha256(text).digest()
        seeds.append(int.from_bytes(digest[:4], "big") & SEED_MASK)
    return seeds


def combine_seeds(
    results: Sequence[ProxyResult], seeds: Sequence[int]
) -> ProxyResult:
    """One child's result from its trainings under several seeds.

    The reward and every metric are means over the seeds; `reward_seed{i}`
    and `seed{i}` keep each training's reward and seed. A failed training
    fails the child (its error, the penalty reward).
    """
    seconds = sum(r.seconds for r in results)
    attempts = sum(r.attempts for r in results)
    failed = [r for r in results if r.status == FAILED]
    if failed:
        return dataclasses.replace(
            failed[0], seconds=seconds, attempts=attempts
        )
    metrics: dict[str, float] = {}
    for name in results[0].metrics:
        values = [r.metrics[name] for r in results if name in r.metrics]
        if len(values) == len(results):
            metrics[name] = sum(values) / len(values)
    for index, (result, seed) in enumerate(zip(results, seeds)):
        metrics[f"reward_seed{index}"] = result.reward
        metrics[f"seed{index}"] = float(seed)
    return ProxyResult(
        reward=sum(r.reward for r in results) / len(results),
        status=OK,
        metrics=metrics,
        seconds=seconds,
        attempts=attempts,
    )


class ProxyError(RuntimeError):
    """A child finished but gave no usable reward."""


def _reward_from(metrics: Mapping[str, Any]) -> float:
    if REWARD_METRIC not in metrics:
        raise ProxyError(
            f"the child's metrics have no {REWARD_METRIC!r}: {sorted(metrics)}"
        )
    reward = float(metrics[REWARD_METRIC])
    # pycocotools reports -1 when the split has no ground truth to match.
    if not math.isfinite(reward) or reward < 0:
        raise ProxyError(
            f"held-out {REWARD_METRIC} is {reward}; the held-out split may "
            "have no ground-truth boxes"
        )
    return reward


def _finite_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(number):
            out[str(key)] = number
    return out


class _HeldSession:
    """A child's trainer session held across its rungs: each call trains
    on (`fit(until)`) and rates (`evaluate()`) in the same model, data
    iterator and traced functions, as a straight training would.

    The session opens at the first call; after a failure it is closed, and
    a retry opens a new one from the last checkpoint, as it does when
    something else has trained the work directory on since.
    """

    def __init__(
        self,
        open_session: Callable[..., Any],
        config: config_lib.ExperimentConfig,
        work_dir: str,
        **kwargs: Any,
    ):
        self._open = functools.partial(open_session, config, work_dir, **kwargs)
        self._session = None

    @property
    def is_open(self) -> bool:
        return self._session is not None

    def __call__(self, until: int | None) -> Mapping[str, Any]:
        if self._session is not None and not self._session.is_current():
            self.close()
        if self._session is None:
            self._session = self._open()
        try:
            trained = self._session.fit(until)
            return {**self._session.evaluate(), **trained}
        except BaseException:
            self.close()
            raise

    def close(self) -> bool:
        """Closes the session; whether one was open."""
        if self._session is None:
            return False
        self._session.close()
        self._session = None
        return True


def _open_session() -> Callable[..., Any]:
    """The trainer's `open_session` (imported when a child trains)."""
    from nasfpn_tf.train import trainer

    return trainer.open_session


def _free_memory() -> None:
    import tf_keras

    tf_keras.backend.clear_session()
    gc.collect()
