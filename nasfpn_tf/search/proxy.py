"""The proxy task: a child spec in, a reward out.

NAS-FPN (Ghiasi et al., CVPR 2019, arXiv:1904.07392, Sec. 3) rates each
sampled architecture by training a small RetinaNet with it for a short
schedule and taking its AP on a held-out part of the training images. Here
the child trains with `config.proxy_experiment(config)` (the search's proxy
sizes and steps applied to the main config) through
`trainer.train_and_evaluate(..., eval_split="heldout")`, and its reward is
the held-out COCO AP.

The proxy knows nothing of reinforcement learning: it maps a spec to a
`ProxyResult`. A child that raises is not fatal to the search: it is
recorded as failed with its error and earns `search.penalty_reward`.
Transient errors (a lost connection to storage or to a TPU worker) are
retried up to `search.max_retries` times first; the child's work directory
is kept, so a retry resumes from the child's last checkpoint. Errors that
come with the architecture, such as running out of accelerator memory
(`tf.errors.ResourceExhaustedError`) or a non-finite loss
(`NonFiniteLossError`), would only repeat and are not retried. Errors of
the storage (a full disk, a directory that cannot be written) are not the
child's either: every child would fail alike and their penalty rewards
would mislead the controller, so they propagate and stop the search.

Children train in the search process, not in a subprocess per child: a
subprocess would pay the TensorFlow import and the accelerator set-up
(minutes on a TPU host, which one process may hold at a time) for every
child, while the search's children are short. Between children the Keras
session is cleared and Python garbage collected. A child that crashes the
process itself (a segfault, the kernel's OOM killer) stops the search, and
rerunning the command resumes it. With successive halving a promoted
child keeps its trainer session between rungs (no rebuild, restore or
retrace) and the Keras session is cleared when it stops.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import gc
import hashlib
import math
import os
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import tensorflow as tf
from absl import logging

from nasfpn_tf import compat
from nasfpn_tf import config as config_lib
from nasfpn_tf.arch.spec import NeckSpec
from nasfpn_tf.errors import describe_error
from nasfpn_tf.run_files import CHECKPOINT_SUBDIR as CHECKPOINTS_DIR
from nasfpn_tf.search import objective as objective_lib
from nasfpn_tf.search import rungs as rungs_lib
from nasfpn_tf.search.history import FAILED, OK

# What a training reports (the history adds "cached").
STATUSES = (OK, FAILED)
# The final metric that is the reward, as the evaluator names COCO AP.
REWARD_METRIC = "AP"
EVAL_SPLIT = "heldout"
# Metric of a child rated 0 untrained, its cost over the hard objective's
# target.
OVER_TARGET = "over_target"
# Errors of the machine, not the architecture: worth another try.
TRANSIENT_ERRORS = (
    tf.errors.UnavailableError,
    tf.errors.AbortedError,
    tf.errors.DeadlineExceededError,
    ConnectionError,
    TimeoutError,
)

# Errors of the storage, not of the child: a full disk or quota, a
# read-only or forbidden directory (OSError numbers; TensorFlow's file
# system reports the same conditions as OpErrors with these messages).
STORAGE_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}
)
STORAGE_MESSAGES = (
    "No space left on device",
    "Disk quota exceeded",
    "Read-only file system",
    "Permission denied",
)
# How far down `__cause__` / `__context__` a storage error is looked for.
MAX_ERROR_CHAIN = 8
# Child seeds fit a signed 32-bit int (TensorFlow and NumPy seeds).
SEED_MASK = 0x7FFFFFFF

TrainFn = Callable[..., Mapping[str, Any]]
# A child's training to a step (None: the whole schedule) -> its metrics.
FitFn = Callable[[int | None], Mapping[str, Any]]
CostFn = Callable[..., objective_lib.Costs]


@dataclasses.dataclass(frozen=True)
class ProxyResult:
    """What training one child gave.

    Attributes:
        reward: held-out AP (or `search.objective`'s reward of AP and
            the costs), or the penalty reward when the child failed.
        status: "ok" or "failed".
        metrics: the child's final metrics (AP, AP50, ..., steps,
            train_seconds, final_loss; flops, params and latency_ms when
            measured), finite numbers only.
        seconds: wall time of all attempts together.
        error: "ExceptionType: message" of the last failure, for failed
            children.
        attempts: trainings started (1 + retries).
        rungs: with successive halving, the child's `RungEntry.to_dict()`
            of every rung it was rated at, first rung first.
    """

    reward: float
    status: str
    metrics: Mapping[str, float] = dataclasses.field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None
    attempts: int = 1
    rungs: tuple[Mapping[str, Any], ...] = ()

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(
                f"status must be one of {STATUSES}; got {self.status!r}."
            )
        if not math.isfinite(self.reward):
            raise ValueError(f"reward must be finite; got {self.reward!r}.")
        if (self.status == FAILED) != (self.error is not None):
            raise ValueError(
                "error is set for failed results and only for them; got "
                f"status {self.status!r} with error {self.error!r}."
            )

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["metrics"] = dict(self.metrics)
        if self.rungs:
            data["rungs"] = [dict(r) for r in self.rungs]
        else:
            del data["rungs"]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ProxyResult:
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        if "rungs" in values:
            values["rungs"] = tuple(values["rungs"])
        return cls(**values)


class Proxy(Protocol):
    """Anything that rates a spec. `ProxyTask` trains; tests use formulas.

    A proxy may also define `release(work_dir)`, called once the result is
    stored, to delete what the child no longer needs.
    """

    def reward(self, spec: NeckSpec, work_dir: str) -> ProxyResult:
        """Rates `spec`, using `work_dir` for the child's files."""
        ...


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
        cost_fn: `(model_config, spec, objective_config) -> Costs`; None
            is `objective.shared_meter()` when the task trains for real or
            the objective needs a cost, else no costs are recorded (tests
            with a fake `train_fn`).

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
        cost_fn: CostFn | None = None,
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
        self._init_costs(cost_fn)

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
        reaches (`rungs.py`).

        Returns:
            An "ok" result with reward = held-out AP, or a "failed" one with
            the penalty reward and the error.
        """
        skipped = self._over_hard_target(spec)
        if skipped is not None:
            return skipped
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
            return self._climb_rungs(train, work_dir)
        finally:
            if held is not None and held.close():
                self._free_memory()

    def _climb_rungs(
        self, train: Callable[[int], ProxyResult], work_dir: str
    ) -> ProxyResult:
        log = rungs_lib.RungLog(work_dir)
        board = self.board or rungs_lib.RungBoard(
            os.path.dirname(os.path.normpath(work_dir))
        )
        attempts = 0
        for rung, steps in enumerate(self.rungs):
            entry = log.get(rung)
            if entry is None:
                result = train(steps)
                attempts += result.attempts
                if result.status == FAILED:
                    return dataclasses.replace(
                        result,
                        seconds=result.seconds
                        + sum(e.seconds for e in log.entries),
                        attempts=attempts,
                        rungs=tuple(e.to_dict() for e in log.entries),
                    )
                entry = self._log_rung(
                    result, rung, steps, log, board, work_dir
                )
            if not entry.promoted:
                break
        return self._rungs_result(log.entries, board, work_dir, attempts)

    def _log_rung(
        self,
        result: ProxyResult,
        rung: int,
        steps: int,
        log: rungs_lib.RungLog,
        board: rungs_lib.RungBoard,
        work_dir: str,
    ) -> rungs_lib.RungEntry:
        """Decides the child's promotion at `rung` from the board and logs
        it with the rung's reward."""
        others = board.rewards(rung, exclude=work_dir)
        promoted = rung < len(self.rungs) - 1 and rungs_lib.promotes(
            result.reward, others, self.halving.eta
        )
        logging.info(
            "Child in %s: rung %d (%d steps) reward %.4f among %d others: %s",
            work_dir,
            rung,
            steps,
            result.reward,
            len(others),
            "goes on" if promoted else "stops",
        )
        return log.append(
            rungs_lib.RungEntry(
                rung=rung,
                steps=steps,
                reward=result.reward,
                seconds=result.seconds,
                promoted=promoted,
                metrics=dict(result.metrics),
            )
        )

    def _rungs_result(
        self,
        entries: Sequence[rungs_lib.RungEntry],
        board: rungs_lib.RungBoard,
        work_dir: str,
        attempts: int,
    ) -> ProxyResult:
        """A halving child's result: the rule's reward, the last rung's
        metrics with `rung` (its index) and the rungs' total
        `train_seconds`."""
        last = entries[-1]
        reward = rungs_lib.final_reward(
            self.halving.final_reward,
            entries,
            board.rewards(last.rung, exclude=work_dir),
            len(self.rungs),
        )
        metrics = dict(last.metrics)
        metrics["rung"] = float(last.rung)
        metrics["train_seconds"] = sum(
            e.metrics.get("train_seconds", 0.0) for e in entries
        )
        return ProxyResult(
            reward=reward,
            status=OK,
            metrics=metrics,
            seconds=sum(e.seconds for e in entries),
            attempts=max(attempts, 1),
            rungs=tuple(e.to_dict() for e in entries),
        )

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
                reward, metrics = self.apply_objective(
                    spec, _reward_from(metrics), metrics
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
                    isinstance(error, TRANSIENT_ERRORS)
                    and attempt <= self.max_retries
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

    # -- search.objective: the reward from AP and the child's costs -------

    def _init_costs(self, cost_fn: CostFn | None) -> None:
        objective = self.config.search.objective
        if cost_fn is None and (
            self._train_fn is None or objective.kind != "ap"
        ):
            cost_fn = objective_lib.shared_meter()
        self._cost_fn = cost_fn
        self._costs: dict[str, objective_lib.Costs] = {}

    def apply_objective(
        self, spec: NeckSpec, ap: float, metrics: Mapping[str, Any]
    ) -> tuple[float, dict[str, Any]]:
        """(reward, metrics with the costs) of a child with held-out `ap`;
        the costs are measured once per spec (canonical key)."""
        if self._cost_fn is None:
            return ap, dict(metrics)
        costs = self._costs_of(spec)
        reward = objective_lib.reward(ap, costs, self.config.search.objective)
        return reward, {**metrics, **costs.metrics()}

    def _costs_of(self, spec: NeckSpec) -> objective_lib.Costs:
        key = spec.canonical_key()
        if key not in self._costs:
            self._costs[key] = self._cost_fn(
                self.child_config.model, spec, self.config.search.objective
            )
        return self._costs[key]

    def _over_hard_target(self, spec: NeckSpec) -> ProxyResult | None:
        """Under the hard objective, a child whose cost is over the target
        earns 0 whatever its AP: it is rated without training (reward 0,
        its costs and `over_target` in the metrics, no AP). None when it
        must train, or when its cost cannot be measured here (training
        then measures it again and fails the child on the error)."""
        objective = self.config.search.objective
        if objective.kind != "hard" or self._cost_fn is None:
            return None
        start = time.monotonic()
        try:
            costs = self._costs_of(spec)
        except Exception:  # noqa: BLE001 (training reports it again)
            return None
        cost = objective_lib.cost_value(costs.metrics(), objective.cost)
        if cost is None or cost <= objective.target:
            return None
        logging.info(
            "Child %s: %s %.4g over the hard target %.4g; not trained.",
            spec.canonical_key()[:12],
            objective.cost,
            cost,
            objective.target,
        )
        return ProxyResult(
            reward=0.0,
            status=OK,
            metrics={**costs.metrics(), OVER_TARGET: 1.0},
            seconds=time.monotonic() - start,
            attempts=0,
        )

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


def is_storage_error(error: BaseException) -> bool:
    """Whether `error` (or an error it was raised from) says the storage
    cannot take a write: full, over quota, read-only or forbidden."""
    return storage_error_of(error) is not None


def storage_error_of(error: BaseException) -> BaseException | None:
    """The storage error in `error`'s chain of causes, or None."""
    for _ in range(MAX_ERROR_CHAIN):
        if error is None:
            return None
        if isinstance(error, OSError) and error.errno in STORAGE_ERRNOS:
            return error
        if isinstance(error, tf.errors.PermissionDeniedError):
            return error
        if isinstance(error, tf.errors.OpError) and any(
            text in str(error.message) for text in STORAGE_MESSAGES
        ):
            return error
        error = error.__cause__ or error.__context__
    return None


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
