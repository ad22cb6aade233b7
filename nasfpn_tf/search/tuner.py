"""KerasTuner's Tuner for the search: trains children, or serves the oracle.

NAS-FPN (Ghiasi et al., CVPR 2019, arXiv:1904.07392, Sec. 3) trains many
children at once. KerasTuner's chief/worker mode does that here: every
process runs the same command, the one whose `KERASTUNER_TUNER_ID`
contains "chief" serves `oracle.ControllerOracle` over gRPC at
`KERASTUNER_ORACLE_IP:KERASTUNER_ORACLE_PORT`, and each other process is a
`SearchTuner` that asks it for trials, trains them with the proxy (one
worker per accelerator host) and reports the rewards. Without those
variables one process does both.

A trial's result is stored as `result.json` in its trial directory before
the oracle hears of it, so a child trained by a process that dies before
reporting is not trained again: the next tuner handed the same sample
reuses the stored result. While a worker trains, a heartbeat thread tells
the chief it is alive; the chief takes back the children of silent ones
(`oracle.ControllerOracle.reclaim_lost_trials`).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures

import tensorflow as tf
from absl import logging
from keras_tuner.engine import base_tuner
from keras_tuner.engine import trial as trial_lib
from keras_tuner.src.distribute import utils as distribute_utils

from nasfpn_tf.arch.space import SearchSpace
from nasfpn_tf.search import history as history_lib
from nasfpn_tf.search import oracle as oracle_lib
from nasfpn_tf.search import proxy as proxy_lib

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
        oracle: oracle_lib.ControllerOracle,
        space: SearchSpace,
        search_dir: history_lib.SearchDir,
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
            project_name=history_lib.TRIALS_DIR,
        )

    @property
    def proxy(self) -> proxy_lib.Proxy:
        if self._proxy is None:
            self._proxy = self._proxy_factory()
        return self._proxy

    def run_trial(self, trial: trial_lib.Trial) -> dict[str, float]:
        """Rates the trial's spec; a result stored earlier is reused.

        Raises:
            oracle.SearchStorageError: the search directory cannot be
                written (a full disk, no permission): the search stops.
        """
        beat = None
        if self.worker_timeout is not None and role() == "worker":
            beat = self.worker_timeout / HEARTBEATS_PER_TIMEOUT
        try:
            with _heartbeats(self.oracle, trial.trial_id, beat):
                return self._rate(trial)
        except Exception as error:
            cause = proxy_lib.storage_error_of(error)
            if cause is None:
                raise
            raise oracle_lib.SearchStorageError(
                proxy_lib.describe_error(cause)
            ) from error

    def _rate(self, trial: trial_lib.Trial) -> dict[str, float]:
        sample = int(trial.trial_id)
        spec = self.space.to_spec(oracle_lib.actions_of(trial, self.space))
        key = spec.canonical_key()
        stored = oracle_lib.read_result(self.search_dir, sample, key)
        if stored is not None:
            result = stored[0]
            logging.info(
                "Sample %d: reusing its result stored by an earlier run",
                sample,
            )
        else:
            work_dir = self.search_dir.trial_dir(sample)
            tf.io.gfile.makedirs(work_dir)
            result = self.proxy.reward(spec, work_dir)
            self.trained += 1
            oracle_lib.write_result(
                self.search_dir, sample, key, result, self.tuner_id
            )
            release = getattr(self.proxy, "release", None)
            if release is not None:
                release(work_dir)
        return {oracle_lib.REWARD: float(result.reward)}

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
            if trial.status == oracle_lib.STOPPED:
                break
            if trial.status == oracle_lib.IDLE:
                time.sleep(IDLE_WAIT_SECONDS)
                continue
            self.on_trial_begin(trial)
            self._try_run_and_update_trial(trial)
            self.on_trial_end(trial)
        self.on_search_end()

    def save(self) -> None:
        """Writes nothing: history and controller checkpoint are the state."""

    def reload(self) -> None:
        """Reads nothing: the oracle restores from the history."""


@contextlib.contextmanager
def _heartbeats(
    oracle: oracle_lib.ControllerOracle, trial_id: str, seconds: float | None
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
    oracle: oracle_lib.ControllerOracle, worker_timeout: float | None = None
) -> None:
    """Serves `oracle` to worker tuners over gRPC until the search is over.

    Listens on KERASTUNER_ORACLE_IP:KERASTUNER_ORACLE_PORT with
    KerasTuner's servicer. Returns when every batch is learned from (or the
    search aborted), no trial is running, and every tuner has been told to
    stop or CHIEF_LINGER_SECONDS have passed. With `worker_timeout`, the
    children of workers silent that long are taken back
    (`oracle.reclaim_lost_trials`).

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
