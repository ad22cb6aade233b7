"""KerasTuner adapter: the search's one contact with KerasTuner.

NAS-FPN (Ghiasi et al., CVPR 2019, arXiv:1904.07392, Sec. 3) trains many
children at once. KerasTuner (keras_tuner, the range pinned in
pyproject.toml) is the distributed engine here: every process runs the
same command, the one whose `KERASTUNER_TUNER_ID` contains "chief" serves
`ControllerOracle` over gRPC at `KERASTUNER_ORACLE_IP:KERASTUNER_ORACLE_PORT`,
and each other process is a `SearchTuner` that asks it for trials, trains
them with the proxy (one worker per accelerator host) and reports the
rewards. Without those variables one process does both. KerasTuner imports
Keras 3 as `keras`; nothing here builds a Keras model, and the project's
layers stay `tf_keras`.

What the search decides lives elsewhere: `scheduler.Scheduler` hands out
samples and learns from their rewards, `results.py` rates a child and
stores its result. This module only translates: a trial is a sample (its
id the zero-padded sample index, stable across restarts), its
hyperparameters are the sample's actions (one `hp.Int` per decision, named
after the step, `cell2.input1`), and KerasTuner's own sampling, ranking
and `oracle.json`/`trial.json` files are unused.

KerasTuner APIs used (each checked by tests/test_keras_tuner_compat.py):
the public `Oracle` (constructor arguments; `create_trial`,
`update_trial`, `end_trial`, `get_trial`, `populate_space`, `save`,
`reload` overridden as its documentation allows; `get_space`),
`Objective`, `HyperParameters`, `engine.trial.Trial`/`TrialStatus`,
`engine.base_tuner.BaseTuner` (constructor, `tuner_id`, `run_trial`,
`on_search_begin`/`on_trial_begin`/`on_trial_end`/`on_search_end`, its
swap of the oracle for a gRPC client in a worker); and two private ones,
listed in `nasfpn_tf/compat.py`: `keras_tuner.src.distribute.utils` (who is
chief) and the gRPC servicer (`keras_tuner.src.protos`,
`keras_tuner.src.distribute.oracle_chief.OracleServicer`).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from concurrent import futures
from typing import Any

import keras_tuner as kt
from absl import logging
from keras_tuner.engine import base_tuner
from keras_tuner.engine import trial as trial_lib
from keras_tuner.src.distribute import utils as distribute_utils

from nasfpn_tf import run_files
from nasfpn_tf.arch.space import SearchSpace
from nasfpn_tf.search import controller as controller_lib
from nasfpn_tf.search import history as history_lib
from nasfpn_tf.search import proxy as proxy_lib
from nasfpn_tf.search import results as results_lib
from nasfpn_tf.search import scheduler as scheduler_lib
from nasfpn_tf.search import search_dir as search_dir_lib
from nasfpn_tf.search.results import SearchStorageError
from nasfpn_tf.search.resume import SearchStateError
from nasfpn_tf.search.scheduler import SearchAborted

# The search's errors, re-exported: callers of the engine catch them here.
__all__ = [
    "ControllerOracle",
    "SearchAborted",
    "SearchStateError",
    "SearchStorageError",
    "SearchTuner",
    "role",
    "serve",
]

REWARD = "reward"
RUNNING = trial_lib.TrialStatus.RUNNING
IDLE = trial_lib.TrialStatus.IDLE
STOPPED = trial_lib.TrialStatus.STOPPED
COMPLETED = trial_lib.TrialStatus.COMPLETED
# What KerasTuner's own tuner marks a trial that raised.
INVALID = trial_lib.TrialStatus.INVALID
ENV_TUNER_ID = "KERASTUNER_TUNER_ID"
ENV_ORACLE_IP = "KERASTUNER_ORACLE_IP"
ENV_ORACLE_PORT = "KERASTUNER_ORACLE_PORT"
# A tuner told to wait asks again after this long.
IDLE_WAIT_SECONDS = 1.0
# The chief checks this often whether the search is over.
SERVER_POLL_SECONDS = 0.2
# Once the search is over, the chief keeps answering STOPPED this long for
# tuners that have not asked yet (they ask every IDLE_WAIT_SECONDS).
CHIEF_LINGER_SECONDS = 5 * IDLE_WAIT_SECONDS
SERVER_STOP_GRACE_SECONDS = 1.0
# Heartbeats a worker sends per `search.worker_timeout`: a few may be late
# (a long trace holding the GIL) before the chief counts the worker lost.
HEARTBEATS_PER_TIMEOUT = 4

ProxyFactory = Callable[[], proxy_lib.Proxy]


def hyperparameters(space: SearchSpace) -> kt.HyperParameters:
    """One `Int` per decision, `0 .. num_choices - 1`, named by step."""
    hps = kt.HyperParameters()
    for name, count in zip(space.step_names, space.num_choices):
        hps.Int(name, 0, count - 1)
    return hps


def actions_of(trial: trial_lib.Trial, space: SearchSpace) -> list[int]:
    """The action sequence a trial's hyperparameter values encode."""
    return [int(trial.hyperparameters.get(n)) for n in space.step_names]


def role() -> str:
    """This process's part: "single", "chief" (serves the oracle) or
    "worker" (trains children), by the rule `BaseTuner` itself follows
    when it wraps the oracle in a gRPC client.

    Raises:
        RuntimeError: KERASTUNER_ORACLE_IP without the port or tuner id
            (KerasTuner's message names the missing variable).
    """
    if not distribute_utils.has_chief_oracle():
        return "single"
    return "chief" if distribute_utils.is_chief_oracle() else "worker"


def _sample_of(trial_id: str) -> int | None:
    return int(trial_id) if trial_id.isdigit() else None


class ControllerOracle(kt.Oracle):
    """KerasTuner Oracle whose trials are a `Scheduler`'s samples.

    Args:
        space: the search space.
        policy: a `Controller` or `RandomPolicy`; None for a worker's
            stand-in oracle, which only forwards to the chief.
        search_dir: where history, checkpoints and trials live; None for a
            worker's stand-in.
        **settings: the `Scheduler`'s (num_samples, samples_per_update,
            algorithm, penalty_reward, ...).
    """

    def __init__(
        self,
        space: SearchSpace,
        policy: controller_lib.Policy | None,
        search_dir: search_dir_lib.SearchDir | None,
        **settings: Any,
    ):
        super().__init__(
            objective=kt.Objective(REWARD, "max"),
            max_trials=settings["num_samples"],
            hyperparameters=hyperparameters(space),
            allow_new_entries=False,
            tune_new_entries=False,
            max_retries_per_trial=0,
            # KerasTuner's own sampling is unused; a fixed seed also keeps it
            # from drawing one from Python's global `random`.
            seed=1,
        )
        self.space = space
        self.scheduler: scheduler_lib.Scheduler | None = None
        if policy is None or search_dir is None:
            scheduler_lib.check_settings(
                settings["num_samples"],
                settings["samples_per_update"],
                settings.get("max_consecutive_failures", 0),
            )
        else:
            self.scheduler = scheduler_lib.Scheduler(
                space, policy, search_dir, **settings
            )
        # Trial id -> the trial handed out for it (KerasTuner's base-class
        # bookkeeping is left unused).
        self._trials: dict[str, trial_lib.Trial] = {}
        # Reentrant, and released when a call raises (KerasTuner's
        # `synchronized` would keep it). The gRPC handler and the chief's
        # polling loop call in from two threads.
        self._lock = threading.RLock()

    # -- the scheduler's state, for the runner -------------------------------

    def restore(self) -> None:
        """`Scheduler.restore`; see there."""
        if self.scheduler is None:
            raise SearchStateError("a worker's stand-in oracle has no state")
        with self._lock:
            self.scheduler.restore()

    @property
    def search_dir(self) -> search_dir_lib.SearchDir | None:
        return None if self.scheduler is None else self.scheduler.search_dir

    @property
    def records(self) -> list[history_lib.SampleRecord]:
        return [] if self.scheduler is None else self.scheduler.records

    @property
    def updates(self) -> int:
        return 0 if self.scheduler is None else self.scheduler.updates

    @property
    def finished(self) -> bool:
        return self.scheduler is not None and self.scheduler.finished

    @property
    def aborted(self) -> SearchAborted | None:
        return None if self.scheduler is None else self.scheduler.aborted

    def serving_state(self) -> tuple[bool, bool]:
        """(the search is over and no child trains, some tuner has not yet
        been told to stop), read together."""
        with self._lock:
            return self.scheduler.over, bool(self.scheduler.tuners)

    def reclaim_lost_trials(self, silent_for: float) -> list[str]:
        """`Scheduler.reclaim_lost`; returns the trial ids taken back."""
        with self._lock:
            lost = self.scheduler.reclaim_lost(silent_for)
            return [search_dir_lib.trial_id(sample) for sample in lost]

    # -- KerasTuner's Oracle interface ---------------------------------------

    def create_trial(self, tuner_id: str) -> trial_lib.Trial:
        """The next sample to train for `tuner_id`, or IDLE / STOPPED."""
        with self._lock:
            assignment = self.scheduler.assign(tuner_id)
            if assignment.status == scheduler_lib.WAIT:
                return trial_lib.Trial(self.get_space(), status=IDLE)
            if assignment.status == scheduler_lib.STOP:
                return trial_lib.Trial(self.get_space(), status=STOPPED)
            trial_id = search_dir_lib.trial_id(assignment.sample)
            if assignment.again and trial_id in self._trials:
                return self._trials[trial_id]
            hps = self.get_space()
            hps.values = self.populate_space(trial_id)["values"]
            trial = trial_lib.Trial(hps, trial_id=trial_id, status=RUNNING)
            self._trials[trial_id] = trial
            return trial

    def populate_space(self, trial_id: str) -> dict[str, Any]:
        """The hyperparameter values (the actions) of sample `trial_id`,
        which must be in the current batch."""
        with self._lock:
            actions = self.scheduler.actions(int(trial_id))
            values = dict(zip(self.space.step_names, actions))
            return {"status": RUNNING, "values": values}

    def update_trial(
        self, trial_id: str, metrics: Mapping[str, float], step: int = 0
    ) -> trial_lib.Trial:
        """Notes the reported metrics on the trial (the history takes the
        reward from the stored result)."""
        with self._lock:
            trial = self._trials.get(trial_id)
            if trial is None:
                # From a tuner still running a trial of an earlier chief.
                return trial_lib.Trial(self.get_space(), trial_id, RUNNING)
            for name, value in metrics.items():
                if not trial.metrics.exists(name):
                    direction = "max" if name == REWARD else None
                    trial.metrics.register(name, direction=direction)
                trial.metrics.update(name, value, step=step)
            return trial

    def get_trial(self, trial_id: str) -> trial_lib.Trial:
        """The trial; a worker's heartbeat while it trains the child."""
        with self._lock:
            sample = _sample_of(trial_id)
            if sample is not None:
                self.scheduler.heartbeat(sample)
            trial = self._trials.get(trial_id)
            if trial is None:
                return trial_lib.Trial(self.get_space(), trial_id, RUNNING)
            return trial

    def end_trial(self, trial: trial_lib.Trial) -> None:
        """Records a finished child; learns when its batch is complete."""
        with self._lock:
            known = self._trials.get(trial.trial_id)
            if known is not None:
                known.status, known.message = trial.status, trial.message
            sample = _sample_of(trial.trial_id)
            if sample is None:
                logging.warning("Ignoring the end of trial %s", trial.trial_id)
                return
            record = self.scheduler.finish(sample, trial.message)
            if record is not None and known is not None:
                # KerasTuner ranks trials by score: the recorded reward,
                # penalty included.
                known.score = record.reward

    def save(self) -> None:
        """Writes nothing: history and controller checkpoint are the state."""

    def reload(self) -> None:
        """Reads nothing: `restore` resumes from history and checkpoint."""


class SearchTuner(base_tuner.BaseTuner):
    """KerasTuner tuner whose trials are children rated by a proxy.

    `BaseTuner` rather than `keras_tuner.Tuner`: the latter fits and saves
    Keras models, and a child here is trained by the proxy.

    Args:
        oracle: a `ControllerOracle` (a worker's stand-in in worker
            processes: KerasTuner swaps it for a gRPC client).
        space: the search space.
        search_dir: the search directory (shared by chief and workers).
        proxy_factory: makes the proxy on first use, so a chief, which
            trains nothing, never builds a strategy.
        worker_timeout: seconds of silence after which the chief takes
            back a worker's child; workers send HEARTBEATS_PER_TIMEOUT
            heartbeats in that time while training. None: no heartbeats,
            nothing taken back.
    """

    def __init__(
        self,
        oracle: ControllerOracle,
        space: SearchSpace,
        search_dir: search_dir_lib.SearchDir,
        proxy_factory: ProxyFactory,
        worker_timeout: float | None = None,
    ):
        self.space = space
        self.search_dir = search_dir
        self.worker_timeout = worker_timeout
        self._proxy_factory = proxy_factory
        self._proxy: proxy_lib.Proxy | None = None
        self.trained = 0
        super().__init__(
            oracle=oracle,
            directory=search_dir.root,
            project_name=run_files.TRIALS_DIR,
        )

    @property
    def proxy(self) -> proxy_lib.Proxy:
        if self._proxy is None:
            self._proxy = self._proxy_factory()
        return self._proxy

    def run_trial(self, trial: trial_lib.Trial) -> dict[str, float]:
        """Rates the trial's spec; a result stored earlier is reused.

        Raises:
            SearchStorageError: the search directory cannot be written (a
                full disk, no permission): the search stops.
        """
        beat = None
        if self.worker_timeout is not None and role() == "worker":
            beat = self.worker_timeout / HEARTBEATS_PER_TIMEOUT
        spec = self.space.to_spec(actions_of(trial, self.space))
        try:
            with _heartbeats(self.oracle, trial.trial_id, beat):
                result, trained = results_lib.rate(
                    self.search_dir,
                    int(trial.trial_id),
                    spec,
                    self.proxy,
                    self.tuner_id,
                )
        except Exception as error:
            cause = proxy_lib.storage_error_of(error)
            if cause is None:
                raise
            raise SearchStorageError(proxy_lib.describe_error(cause)) from error
        self.trained += int(trained)
        return {REWARD: float(result.reward)}

    def search(self) -> None:
        """Serves the oracle (chief) or trains trials until STOPPED.

        Replaces `BaseTuner.search`, whose tuners re-ask a waiting oracle
        without pause and whose chief polls for the end every 20 s.
        """
        if role() == "chief":
            serve(self.oracle, self.worker_timeout)
            return
        self.on_search_begin()
        while True:
            trial = self.oracle.create_trial(self.tuner_id)
            if trial.status == STOPPED:
                break
            if trial.status == IDLE:
                time.sleep(IDLE_WAIT_SECONDS)
                continue
            self.on_trial_begin(trial)
            self._run(trial)
            self.on_trial_end(trial)
        self.on_search_end()

    def _run(self, trial: trial_lib.Trial) -> None:
        """Runs the trial and reports its reward; a child that raises is
        marked INVALID with the traceback as its message, as KerasTuner's
        own tuner does, and a storage error stops the search."""
        try:
            metrics = self.run_trial(trial)
            self.oracle.update_trial(trial.trial_id, metrics)
            trial.status = COMPLETED
        except SearchStorageError:
            raise
        except Exception:  # noqa: BLE001 (recorded as a failed child)
            trial.status = INVALID
            trial.message = traceback.format_exc()

    def save(self) -> None:
        """Writes nothing: history and controller checkpoint are the state."""

    def reload(self) -> None:
        """Reads nothing: the oracle restores from the history."""


@contextlib.contextmanager
def _heartbeats(
    oracle: ControllerOracle, trial_id: str, seconds: float | None
) -> Iterator[None]:
    """Asks the oracle for the trial every `seconds` (a heartbeat) in a
    thread while the body runs; nothing when `seconds` is None."""
    if seconds is None:
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(seconds):
            try:
                oracle.get_trial(trial_id)
            except Exception as error:  # noqa: BLE001 (the next may pass)
                logging.warning("Heartbeat for trial %s: %s", trial_id, error)

    thread = threading.Thread(target=beat, name="heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()


def serve(
    oracle: ControllerOracle, worker_timeout: float | None = None
) -> None:
    """Serves `oracle` to worker tuners over gRPC until the search is over.

    Listens on KERASTUNER_ORACLE_IP:KERASTUNER_ORACLE_PORT with
    KerasTuner's servicer. Returns when every batch is learned from (or the
    search aborted), no trial is running, and every tuner has been told to
    stop or CHIEF_LINGER_SECONDS have passed. With `worker_timeout`, the
    children of workers silent that long are taken back
    (`Scheduler.reclaim_lost`).

    Raises:
        RuntimeError: the address cannot be bound.
    """
    import grpc
    from keras_tuner.src import protos
    from keras_tuner.src.distribute import oracle_chief

    address = f"{os.environ[ENV_ORACLE_IP]}:{os.environ[ENV_ORACLE_PORT]}"
    # One handler thread, as KerasTuner's: the oracle is serial anyway.
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    protos.get_service_grpc().add_OracleServicer_to_server(
        oracle_chief.OracleServicer(oracle), server
    )
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as error:
        raise RuntimeError(f"cannot listen on {address}: {error}") from None
    if not port:
        raise RuntimeError(f"cannot listen on {address}")
    server.start()
    logging.info("Oracle serving on %s", address)
    over_since = None
    try:
        while True:
            time.sleep(SERVER_POLL_SECONDS)
            if worker_timeout is not None:
                oracle.reclaim_lost_trials(worker_timeout)
            over, waiting = oracle.serving_state()
            if not over:
                over_since = None
                continue
            over_since = over_since or time.monotonic()
            lingered = time.monotonic() - over_since
            if not waiting or lingered > CHIEF_LINGER_SECONDS:
                break
    finally:
        server.stop(SERVER_STOP_GRACE_SECONDS).wait()
