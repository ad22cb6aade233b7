"""Injected faults in the search: kill -9, lost workers, failing children,
a full or read-only disk.

`test_runner` kills a search at fixed points of the code (mid-child, in an
append, in a checkpoint); here the kills come from outside at seeded random
moments, a worker of a distributed search dies for good, children raise or
diverge, and the disk under the search fills up or turns read-only. The
children are rated by `test_runner`'s formula (a pure function of the
spec), so every run can be compared with an uninterrupted one.
"""

import contextlib
import errno
import glob
import json
import math
import os
import random
import socket
import subprocess
import sys
import textwrap
import time

import faults_helpers as fh
import numpy as np
import pytest
import tensorflow as tf
from test_runner import FormulaProxy, formula, tiny_config
from test_scheduler import Clock

from nasfpn_tf import config as config_lib
from nasfpn_tf import files, run_files
from nasfpn_tf import main as main_lib
from nasfpn_tf.arch import known
from nasfpn_tf.search import history as history_lib
from nasfpn_tf.search import oracle as oracle_lib
from nasfpn_tf.search import proxy as proxy_lib
from nasfpn_tf.search import results as results_lib
from nasfpn_tf.search import runner
from nasfpn_tf.search import search_dir as search_dir_lib
from nasfpn_tf.train.loops import NonFiniteLossError

KILL_SEED = 11
NUM_KILLS = 5
# The killed search: 6 controller updates of 3, PPO, children that take a
# moment, so that kills land in children, appends and updates alike.
KILL_SAMPLES = 18
KILL_PER_UPDATE = 3
CHILD_SECONDS = 0.3
# Kill after this many children of the run have started, and a random part
# of a child's time later.
KILL_AFTER_STARTS = (1, 2)
# A lost worker: the chief takes its child back after this much silence.
WORKER_TIMEOUT_S = 3.0
SMALL_DISK = "256k"


@pytest.fixture(autouse=True)
def _no_distribution(monkeypatch):
    for name in ("TUNER_ID", "ORACLE_IP", "ORACLE_PORT"):
        monkeypatch.delenv(f"KERASTUNER_{name}", raising=False)


def _records(model_dir):
    records, torn = history_lib.read_history(
        os.path.join(str(model_dir), run_files.HISTORY_FILE)
    )
    assert torn is None
    return records


def _sample_of(work_dir):
    return int(os.path.basename(work_dir.rstrip("/")).split("_")[-1])


# --------------------------------------------------------------------------
# Children that raise or diverge: failed with their error, search goes on.


class _Trainer:
    """A `train_fn` for `ProxyTask`: per sample, raise something or return
    metrics whose AP is the formula's."""

    def __init__(self, faults):
        self.faults = faults
        self.attempts = {}

    def __call__(self, config, work_dir, strategy, spec, eval_split):
        sample = _sample_of(work_dir)
        self.attempts[sample] = self.attempts.get(sample, 0) + 1
        fault = self.faults.get(sample)
        if fault == "nan":
            raise NonFiniteLossError(7, float("nan"))
        if fault == "exception":
            raise RuntimeError("the child's neck does not build")
        if fault == "nan AP":
            return {"AP": float("nan"), "steps": 30}
        if fault == "transient" and self.attempts[sample] == 1:
            raise tf.errors.UnavailableError(None, None, "lost the TPU")
        return {"AP": formula(spec.canonical_key()), "steps": 30}


@pytest.mark.faults
def test_failing_children_are_recorded_and_the_search_goes_on(
    tmp_path, record_property
):
    faults = {1: "nan", 3: "exception", 4: "nan AP", 6: "transient"}
    config = tiny_config(
        reuse_rewards=False, penalty_reward=-1.0, max_retries=1
    )
    train_fn = _Trainer(faults)
    proxy = proxy_lib.ProxyTask(config, train_fn=train_fn)
    summary = runner.search(config, str(tmp_path), proxy=proxy)
    records = {r.sample: r for r in _records(tmp_path)}
    assert sorted(records) == list(range(config.search.num_samples))
    expected_errors = {
        1: "NonFiniteLossError: Non-finite loss at step 7",
        3: "RuntimeError: the child's neck does not build",
        4: "ProxyError: held-out AP is nan",
    }
    for sample, text in expected_errors.items():
        record = records[sample]
        assert record.status == "failed" and record.reward == -1.0
        assert record.error.startswith(text), record.error
        assert train_fn.attempts[sample] == 1  # not retried: would repeat
    # A transient error is retried (search.max_retries=1) and then counts.
    assert records[6].status == "ok" and train_fn.attempts[6] == 2
    for sample, record in records.items():
        if sample not in expected_errors:
            assert record.status == "ok"
            assert record.reward == formula(record.hash)
    assert summary["failed"] == len(expected_errors)
    assert summary["updates"] == math.ceil(
        config.search.num_samples / config.search.samples_per_update
    )
    fh.record_fault(
        record_property,
        "search: children raising NonFiniteLossError, RuntimeError, a NaN "
        "AP; one transient UnavailableError",
        f"{len(expected_errors)} recorded failed with their error and "
        "penalty, the transient one retried and rated; "
        f"{summary['samples']} samples, search finished",
    )


# --------------------------------------------------------------------------
# A full disk, a read-only directory: a clear error, the history intact.


def _mount(*args):
    """Runs mount; returns "" on success, else why it failed."""
    done = subprocess.run(
        ["mount", *args], capture_output=True, text=True, check=False
    )
    if done.returncode:
        return done.stderr.strip() or f"mount exited {done.returncode}"
    return ""


@contextlib.contextmanager
def _small_disk(path):
    """A SMALL_DISK tmpfs at `path` under a bind mount of itself, whose
    writability `_set_writable` toggles. Skips the test, saying why, where
    mounting is not allowed (not root, no CAP_SYS_ADMIN)."""
    os.makedirs(path, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("needs a real tmpfs mount: not root")
    mounts = 0
    try:
        failure = _mount(
            "-t", "tmpfs", "-o", f"size={SMALL_DISK}", "tmpfs", path
        )
        if not failure:
            mounts += 1
            failure = _mount("--bind", path, path)
            mounts += not failure
        if failure:
            pytest.skip(f"needs a real tmpfs mount: {failure}")
        yield
    finally:
        for _ in range(mounts):
            subprocess.run(["umount", "-l", path], check=False)


def _set_writable(path, writable):
    """Remounts the bind mount of `_small_disk` read-write or read-only
    (files already open stay writable, as on a real remount)."""
    mode = "rw" if writable else "ro"
    assert not _mount("-o", f"remount,bind,{mode}", path)


def _fill(folder):
    """Writes a file until the disk is full; returns its path."""
    filler = os.path.join(folder, "filler")
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as error:
            assert error.errno == errno.ENOSPC
    return filler


class _Breaker(FormulaProxy):
    """Rates by formula; breaks the storage while training child `at`."""

    def __init__(self, at, breaks):
        super().__init__()
        self.at, self.breaks = at, breaks

    def reward(self, spec, work_dir):
        if len(self.calls) + 1 == self.at:
            self.breaks()
        return super().reward(spec, work_dir)


@pytest.mark.faults
def test_full_disk_stops_with_a_clear_error_and_loses_nothing(
    tmp_path, record_property
):
    disk = str(tmp_path / "disk")
    with _small_disk(disk):
        filler = []
        _storage_failure(
            tmp_path,
            os.path.join(disk, "search"),
            errno.ENOSPC,
            breaks=lambda: filler.append(_fill(disk)),
            repair=lambda: os.remove(filler[0]),
            record=lambda fault, outcome: fh.record_fault(
                record_property, f"search: a real full tmpfs {fault}", outcome
            ),
        )


@pytest.mark.faults
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_failing_writes_stop_with_a_clear_error_and_lose_nothing(
    tmp_path, monkeypatch, record_property, code
):
    # Every atomic write of the search directory raises, as on a full disk
    # or a directory made read-only. (Linux will not remount read-only a
    # file system with files open for writing, such as the search's
    # TensorBoard events, so this one is not a real remount.)
    broken = []
    real_write = files.write_atomic

    def write_atomic(path, data):
        if broken:
            raise OSError(code, os.strerror(code), path)
        return real_write(path, data)

    monkeypatch.setattr(files, "write_atomic", write_atomic)
    _storage_failure(
        tmp_path,
        str(tmp_path / "search"),
        code,
        breaks=lambda: broken.append(True),
        repair=broken.clear,
        record=lambda fault, outcome: fh.record_fault(
            record_property,
            f"search: writes raising {errno.errorcode[code]} {fault}",
            outcome,
        ),
    )


def _storage_failure(tmp_path, model_dir, code, breaks, repair, record):
    """Breaks the storage while child BREAK_AT trains; checks the error,
    that nothing stored is lost, and that a rerun after `repair` ends
    equal to an uninterrupted search."""
    config = tiny_config()
    baseline = FormulaProxy()
    expected = [
        r.outcome() for r in _baseline(tmp_path / "baseline", config, baseline)
    ]
    break_at = 4
    first = _Breaker(break_at, breaks)
    with pytest.raises(oracle_lib.SearchStorageError) as raised:
        runner.search(config, model_dir, proxy=first)
    message = str(raised.value)
    reason = os.strerror(code)
    assert reason in message, message
    assert f"{model_dir} cannot be written" in message
    assert "are intact" in message and "rerun the same command" in message
    assert main_lib.is_user_error(raised.value)  # one line on the CLI
    kept = _records(model_dir)
    # The child trained when the disk broke was not recorded as a
    # failure (a penalty would mislead the controller): the search
    # stopped before recording it.
    assert all(r.status != "failed" for r in kept)
    assert [r.outcome() for r in kept] == expected[: len(kept)]
    repair()
    second = FormulaProxy()
    runner.search(config, model_dir, proxy=second)
    assert [r.outcome() for r in _records(model_dir)] == expected
    # Only the child whose result could not be stored was trained again.
    assert second.calls[0] == first.calls[-1]
    assert first.calls + second.calls[1:] == baseline.calls
    record(
        f"while training child {break_at}",
        f"SearchStorageError ({reason}), {len(kept)} records intact; "
        "rerun finished equal to the uninterrupted search",
    )


def _script_command(
    tmp_path, template, config, model_dir, name="search.py", **fields
):
    """Writes `config` to tmp_path/config.yaml and `template`, filled with
    the checkout, that config, `model_dir` and `fields`, to tmp_path/name;
    returns the command that runs the script."""
    config_path = tmp_path / "config.yaml"
    config_path.write_text(config_lib.to_yaml(config))
    script = tmp_path / name
    script.write_text(
        template.format(
            repo=fh.REPO,
            config=str(config_path),
            model_dir=model_dir,
            **fields,
        )
    )
    return [sys.executable, str(script)]


def _baseline(model_dir, config, proxy):
    runner.search(config, str(model_dir), proxy=proxy)
    return _records(model_dir)


@pytest.mark.faults
def test_unwritable_model_dir_on_the_command_line_is_one_line(
    tmp_path, record_property
):
    disk = str(tmp_path / "disk")
    with _small_disk(disk):
        _set_writable(disk, False)
        done = subprocess.run(
            fh.main_command("--mode=search", f"--model_dir={disk}/search"),
            cwd=fh.REPO,
            env=fh.child_env(str(tmp_path / "data")),
            capture_output=True,
            text=True,
            timeout=fh.RUN_TIMEOUT_S,
            check=False,
        )
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert "Read-only file system" in done.stderr
    fh.record_fault(
        record_property,
        "search: --model_dir on a read-only file system",
        "one-line error naming it, exit status 1",
    )


# --------------------------------------------------------------------------
# kill -9 of a search at random moments.


_SEARCH_SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    sys.path.insert(0, {repo!r})
    from nasfpn_tf import config as config_lib
    from nasfpn_tf.search import proxy as proxy_lib, runner

    class SlowFormulaProxy:
        def reward(self, spec, work_dir):
            sample = os.path.basename(work_dir)
            with open({log!r}, "a") as f:
                f.write(f"start {{os.getpid()}} {{sample}}\\n")
            time.sleep({seconds!r})
            key = spec.canonical_key()
            reward = int(key[:8], 16) / 16**8
            return proxy_lib.ProxyResult(reward, "ok", {{"AP": reward}}, 0.01)

    config = config_lib.from_yaml(open({config!r}).read())
    runner.search(config, {model_dir!r}, proxy=SlowFormulaProxy())
    """
)


def _starts(log, pid=None):
    """(pid, trial dir name) of each child start in the log."""
    if not os.path.exists(log):
        return []
    with open(log) as f:
        rows = [line.split() for line in f if line.startswith("start")]
    return [
        (int(p), name) for _, p, name in rows if pid is None or int(p) == pid
    ]


def _stored(model_dir):
    """Samples whose result.json is stored."""
    paths = glob.glob(os.path.join(model_dir, "trials", "*", "result.json"))
    return {_sample_of(os.path.dirname(p)) for p in paths}


def _policy_values(model_dir):
    latest = files.read_json(
        os.path.join(model_dir, "controller", "latest.json")
    )
    reader = tf.train.load_checkpoint(
        os.path.join(model_dir, "controller", latest["checkpoint"])
    )
    return latest["updates"], {
        name: reader.get_tensor(name)
        for name in reader.get_variable_to_shape_map()
    }


@pytest.mark.slow
@pytest.mark.faults
def test_sigkill_at_random_moments_then_rerun(tmp_path, record_property):
    """kill -9 of a search process at NUM_KILLS seeded random moments,
    rerun after each: no child stored before a kill is trained again, and
    history and controller end as the uninterrupted search's."""
    # Without reward reuse every sample trains: the tiny space has few
    # distinct architectures.
    config = tiny_config(
        "ppo",
        num_samples=KILL_SAMPLES,
        samples_per_update=KILL_PER_UPDATE,
        reuse_rewards=False,
    )
    baseline_dir = tmp_path / "baseline"
    expected = [
        r.outcome() for r in _baseline(baseline_dir, config, FormulaProxy())
    ]
    model_dir = str(tmp_path / "search")
    log = str(tmp_path / "children.log")
    command = _script_command(
        tmp_path,
        _SEARCH_SCRIPT,
        config,
        model_dir,
        log=log,
        seconds=CHILD_SECONDS,
    )
    env = fh.child_env(str(tmp_path / "data"))
    rng = random.Random(KILL_SEED)
    output = str(tmp_path / "runs.log")
    kills, stored_at_kill, records_at_kill = [], [], []
    started = time.monotonic()
    while len(kills) < NUM_KILLS:
        starts = rng.choice(KILL_AFTER_STARTS)
        delay = rng.uniform(0.0, CHILD_SECONDS * 1.5)
        process = fh.start(command, env, output)
        killed = fh.kill_when(process, _Due(log, process.pid, starts, delay))
        assert killed, "the search finished before the kills: " + fh.tail(
            output
        )
        kills.append(f"{starts} start(s)+{delay:.2f}s")
        stored_at_kill.append(_stored(model_dir))
        records_at_kill.append(len(_records_allowing_torn(model_dir)))
    process = fh.start(command, env, output)
    assert fh.finish(process) == 0, fh.tail(output)
    seconds = time.monotonic() - started

    records = _records(model_dir)
    assert [r.outcome() for r in records] == expected
    # The controller is the uninterrupted one: same updates, same weights.
    updates, values = _policy_values(model_dir)
    base_updates, base_values = _policy_values(str(baseline_dir))
    assert updates == base_updates
    assert values.keys() == base_values.keys()
    numeric = [
        n for n, v in values.items() if np.asarray(v).dtype.kind in "fiu"
    ]
    assert len(numeric) > 4  # LSTM and heads, Adam slots, RNG state
    for name in numeric:
        np.testing.assert_allclose(
            values[name], base_values[name], rtol=1e-5, atol=1e-6, err_msg=name
        )
    # No child whose result was stored before a kill trained again after.
    trained = [name for _, name in _starts(log)]
    pids = [pid for pid, _ in _starts(log)]
    runs = list(dict.fromkeys(pids))
    for k, stored in enumerate(stored_at_kill):
        later = [
            _sample_of(name)
            for pid, name in _starts(log)
            if runs.index(pid) > k
        ]
        assert not stored & set(later), (k, stored, later)
    retrained = len(trained) - len(set(trained))
    fh.record_fault(
        record_property,
        f"search (ppo, {KILL_SAMPLES} samples): SIGKILL at {NUM_KILLS} "
        f"seeded random moments [{', '.join(kills)}] with "
        f"{records_at_kill} samples recorded",
        f"no stored child lost or trained again ({retrained} child(ren) "
        "cut mid-training trained again), history and controller weights "
        f"equal to the uninterrupted search; {len(runs)} launches in "
        f"{seconds:.0f} s",
    )


class _Due:
    """True `delay` seconds after the run's `starts`-th child started."""

    def __init__(self, log, pid, starts, delay):
        self.log, self.pid, self.starts, self.delay = log, pid, starts, delay
        self.since = None

    def __call__(self):
        if self.since is None:
            if len(_starts(self.log, self.pid)) < self.starts:
                return False
            self.since = time.monotonic()
        return time.monotonic() - self.since >= self.delay


def _records_allowing_torn(model_dir):
    records, _ = history_lib.read_history(
        os.path.join(model_dir, run_files.HISTORY_FILE)
    )
    return records


# --------------------------------------------------------------------------
# A worker of a distributed search killed mid-child, for good.


def _oracle(tmp_path, max_retries, clock):
    from nasfpn_tf.arch.space import SearchSpace
    from nasfpn_tf.search import controller

    space = SearchSpace(
        num_intermediate=1, intermediate_levels=(4,), min_level=3, max_level=4
    )
    oracle = oracle_lib.ControllerOracle(
        space,
        controller.RandomPolicy(space.num_choices, space.mask, seed=3),
        search_dir_lib.SearchDir(str(tmp_path)),
        num_samples=2,
        samples_per_update=2,
        algorithm="random",
        reuse_rewards=False,
        penalty_reward=-1.0,
        max_retries=max_retries,
        clock=clock,
    )
    oracle.restore()
    return oracle


def test_a_silent_tuner_loses_its_child_to_the_next_then_it_fails(tmp_path):
    """The chief's side of a lost worker, in process: heartbeats keep a
    child; silence past the timeout hands it out again (max_retries=1),
    a second loss records it as failed."""
    clock = Clock()
    oracle = _oracle(tmp_path, max_retries=1, clock=clock)
    trial = oracle.create_trial("t0")
    assert trial.trial_id == "000000"
    clock.now = 5.0
    oracle.get_trial(trial.trial_id)  # a heartbeat
    clock.now = 8.0
    assert oracle.reclaim_lost_trials(silent_for=4.0) == []
    clock.now = 10.0
    assert oracle.reclaim_lost_trials(silent_for=4.0) == ["000000"]
    assert "t0" not in oracle.scheduler.running
    again = oracle.create_trial("t1")
    assert again.trial_id == "000000"  # the same child, the same directory
    other = oracle.create_trial("t2")
    assert other.trial_id == "000001"
    clock.now = 20.0
    oracle.get_trial(other.trial_id)
    assert oracle.reclaim_lost_trials(silent_for=4.0) == ["000000"]
    (record,) = oracle.records
    assert record.sample == 0 and record.status == "failed"
    assert record.reward == -1.0
    assert "tuner t1 was silent" in record.error
    assert "lost 2 time(s)" in record.error
    assert oracle.create_trial("t3").status == oracle_lib.IDLE


def test_a_lost_worker_that_stored_its_result_is_not_retrained(tmp_path):
    clock = Clock()
    oracle = _oracle(tmp_path, max_retries=3, clock=clock)
    trial = oracle.create_trial("t0")
    key = oracle.scheduler.spec_key(0)
    result = proxy_lib.ProxyResult(0.25, "ok", {"AP": 0.25}, 1.0)
    results_lib.write_result(oracle.search_dir, 0, key, result, "t0")
    clock.now = 10.0  # died after storing, before reporting
    assert oracle.reclaim_lost_trials(silent_for=1.0) == [trial.trial_id]
    (record,) = oracle.records
    assert (record.status, record.reward, record.tuner) == ("ok", 0.25, "t0")


@pytest.mark.parametrize(
    "error, storage",
    [
        (OSError(errno.ENOSPC, "No space left on device"), True),
        (OSError(errno.EROFS, "Read-only file system"), True),
        (PermissionError(errno.EACCES, "Permission denied"), True),
        (OSError(errno.ENOENT, "No such file or directory"), False),
        (
            tf.errors.ResourceExhaustedError(
                None, None, "/x/ckpt_temp; No space left on device"
            ),
            True,
        ),
        (
            tf.errors.ResourceExhaustedError(None, None, "OOM when allocating"),
            False,
        ),
        (tf.errors.PermissionDeniedError(None, None, "/x; denied"), True),
        (NonFiniteLossError(3, float("nan")), False),
    ],
)
def test_storage_errors_are_told_from_child_errors(error, storage):
    assert proxy_lib.is_storage_error(error) == storage
    try:
        try:
            raise error
        except Exception as inner:
            raise RuntimeError("orbit wrapped it") from inner
    except RuntimeError as outer:
        assert proxy_lib.is_storage_error(outer) == storage


def test_proxy_task_stops_on_a_full_disk_instead_of_failing_the_child(
    tmp_path,
):
    def full(*args, **kwargs):
        raise tf.errors.ResourceExhaustedError(
            None, None, "ckpt-10_temp: No space left on device"
        )

    task = proxy_lib.ProxyTask(tiny_config(), train_fn=full)
    with pytest.raises(tf.errors.ResourceExhaustedError):
        task.reward(known.NASFPN_SPEC, str(tmp_path))


@pytest.mark.slow
@pytest.mark.faults
def test_a_real_full_disk_under_a_child_stops_the_proxy(
    tmp_path, record_property
):
    """TensorFlow's own "No space left on device" from a real child's
    checkpoint write is told from a child error: the proxy raises it
    instead of rating the child as failed. SMALL_DISK holds the child's
    config, spec and events, not its first checkpoint (3 MB)."""
    config = config_lib.override(
        config_lib.ExperimentConfig(),
        {
            "search.rater": "proxy",
            "search.proxy.train_steps": 4,
            "train.warmup_steps": 1,
            "data.synthetic.num_train": 8,
            "data.synthetic.num_heldout": 4,
            "data.synthetic.num_val": 4,
        },
    )
    disk = str(tmp_path / "disk")
    work_dir = os.path.join(disk, "child")
    with _small_disk(disk):
        task = proxy_lib.ProxyTask(config)
        with pytest.raises(Exception) as raised:
            task.reward(known.NASFPN_SPEC, work_dir)
        task.release(work_dir)
    error = proxy_lib.storage_error_of(raised.value)
    assert error is not None, repr(raised.value)
    text = str(getattr(error, "message", error))
    assert "No space left on device" in text, text
    assert os.path.join(work_dir, "checkpoints") in text, text
    fh.record_fault(
        record_property,
        "proxy: a real child's checkpoint on a full tmpfs",
        f"{type(error).__name__} (No space left on device) raised, the "
        "child not rated",
    )


_WORKER_SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    sys.path.insert(0, {repo!r})
    from nasfpn_tf import config as config_lib
    from nasfpn_tf.search import proxy as proxy_lib, runner

    class Proxy:
        def reward(self, spec, work_dir):
            tuner = os.environ["KERASTUNER_TUNER_ID"]
            sample = int(os.path.basename(work_dir).split("_")[-1])
            if sample == 0:
                # The long child: trains until the test kills its worker.
                n = len(os.listdir({marks!r})) + 1
                open(os.path.join({marks!r}, f"{{n}}-{{tuner}}"), "w").close()
                time.sleep(600)
            key = spec.canonical_key()
            reward = int(key[:8], 16) / 16**8
            return proxy_lib.ProxyResult(reward, "ok", {{"AP": reward}}, 0.01)

    config = config_lib.from_yaml(open({config!r}).read())
    print(runner.search(config, {model_dir!r}, proxy=Proxy()))
    """
)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(condition, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(fh.POLL_SECONDS)
    raise TimeoutError(what)


@pytest.mark.slow
@pytest.mark.faults
def test_killed_worker_child_is_retried_then_failed(tmp_path, record_property):
    """Chief and three workers on 127.0.0.1. The worker training sample 0
    is killed; after WORKER_TIMEOUT_S the chief hands the child to another
    worker (search.max_retries=1), which is killed too: the child is then
    recorded as failed, and the last worker finishes the search."""
    config = tiny_config(
        "random",
        num_samples=6,
        samples_per_update=2,
        parallel_trials=3,
        max_retries=1,
        worker_timeout=WORKER_TIMEOUT_S,
    )
    marks = tmp_path / "marks"
    marks.mkdir()
    model_dir = str(tmp_path / "search")
    command = _script_command(
        tmp_path,
        _WORKER_SCRIPT,
        config,
        model_dir,
        "run.py",
        marks=str(marks),
    )
    port = _free_port()
    processes, logs = {}, {}
    for tuner_id in ("chief", "tuner0", "tuner1", "tuner2"):
        env = fh.child_env(
            str(tmp_path / "data"),
            KERASTUNER_TUNER_ID=tuner_id,
            KERASTUNER_ORACLE_IP="127.0.0.1",
            KERASTUNER_ORACLE_PORT=str(port),
        )
        logs[tuner_id] = str(tmp_path / f"{tuner_id}.log")
        processes[tuner_id] = fh.start(command, env, logs[tuner_id])
    try:
        first = _wait_for(
            lambda: sorted(os.listdir(marks)), fh.RUN_TIMEOUT_S, "sample 0"
        )[0]
        victim = first.split("-", 1)[1]
        # Alive, it keeps its child past the timeout: heartbeats.
        time.sleep(WORKER_TIMEOUT_S * 2)
        assert sorted(os.listdir(marks)) == [first]
        fh.sigkill(processes.pop(victim))
        second = _wait_for(
            lambda: [m for m in sorted(os.listdir(marks)) if m != first],
            fh.RUN_TIMEOUT_S,
            "sample 0 handed out again",
        )[0]
        retry_tuner = second.split("-", 1)[1]
        assert retry_tuner != victim
        fh.sigkill(processes.pop(retry_tuner))
        for tuner_id, process in processes.items():
            assert fh.finish(process) == 0, fh.tail(logs[tuner_id])
    finally:
        for process in processes.values():
            if process.poll() is None:
                fh.sigkill(process)
    records = {r.sample: r for r in _records(model_dir)}
    assert sorted(records) == list(range(6))
    lost = records[0]
    assert lost.status == "failed" and lost.reward == 0.0
    assert f"tuner {retry_tuner} was silent" in lost.error
    assert "lost 2 time(s)" in lost.error
    survivor = next(iter(set(processes) - {"chief"}))
    assert all(
        r.status in ("ok", "cached") for s, r in records.items() if s != 0
    )
    assert {r.tuner for r in records.values() if r.status == "ok"} <= {
        survivor,
        victim,
        retry_tuner,
    }
    fh.record_fault(
        record_property,
        f"distributed search: worker {victim} killed mid-child, then "
        f"{retry_tuner} killed on the retry (worker_timeout "
        f"{WORKER_TIMEOUT_S:g} s, max_retries 1)",
        "child handed out again once, then recorded failed; "
        f"{survivor} finished all {len(records)} samples",
    )


# --------------------------------------------------------------------------
# kill -9 of a search with successive halving, in the middle of promotions.


_RUNGS_SCRIPT = textwrap.dedent(
    """
    import json, os, sys, time
    sys.path.insert(0, {repo!r})
    from nasfpn_tf import config as config_lib
    from nasfpn_tf.search import proxy as proxy_lib, runner

    def train(config, model_dir, *, strategy, spec, eval_split, until=None):
        # A learning curve; the step reached is kept as a checkpoint would.
        path = os.path.join(model_dir, "step.json")
        start = json.load(open(path)) if os.path.exists(path) else 0
        with open({log!r}, "a") as f:
            f.write(
                f"start {{os.getpid()}} {{os.path.basename(model_dir)}} "
                f"{{start}} {{until}}\\n"
            )
        time.sleep({seconds!r})
        os.makedirs(model_dir, exist_ok=True)
        with open(path, "w") as f:
            json.dump(until, f)
        quality = int(spec.canonical_key()[:8], 16) / 16**8
        return {{"AP": quality * until / config.train.steps, "steps": until}}

    config = config_lib.from_yaml(open({config!r}).read())
    proxy = proxy_lib.ProxyTask(config, train_fn=train)
    runner.search(config, {model_dir!r}, proxy=proxy)
    """
)


def _rung_starts(log, pid=None):
    """(pid, trial, start step, until) of each rung started."""
    if not os.path.exists(log):
        return []
    with open(log) as f:
        rows = [line.split() for line in f if line.startswith("start")]
    return [
        (int(p), name, int(start), int(until))
        for _, p, name, start, until in rows
        if pid is None or int(p) == pid
    ]


def _logged_rungs(model_dir):
    """(trial, rung steps) of every rung logged in a rungs.jsonl."""
    done = set()
    for path in glob.glob(
        os.path.join(model_dir, "trials", "*", "rungs.jsonl")
    ):
        name = os.path.basename(os.path.dirname(path))
        with open(path) as f:
            for line in f:
                try:
                    done.add((name, json.loads(line)["steps"]))
                except ValueError:
                    pass  # a torn last line
    return done


class _DuePromoted:
    """True `delay` s after the run's first rung past the first started."""

    def __init__(self, log, pid, delay):
        self.log, self.pid, self.delay = log, pid, delay
        self.since = None

    def __call__(self):
        if self.since is None:
            if not any(
                s > 0 for _, _, s, _ in _rung_starts(self.log, self.pid)
            ):
                return False
            self.since = time.monotonic()
        return time.monotonic() - self.since >= self.delay


@pytest.mark.slow
@pytest.mark.faults
def test_sigkill_during_promotions_then_rerun(tmp_path, record_property):
    """kill -9 of a halving search while promoted children train their
    next rung, rerun after each: no logged rung is trained or decided
    again, a promoted child resumes from its step, and the history ends
    as the uninterrupted search's."""
    config = config_lib.override(
        tiny_config("ppo", num_samples=9, samples_per_update=3),
        {
            "search.reuse_rewards": False,
            "search.proxy.train_steps": 90,
            "search.rungs.min_steps": 10,
            "train.warmup_steps": 5,
        },
    )
    env = fh.child_env(str(tmp_path / "data"))

    def script(model_dir, log):
        return _script_command(
            tmp_path,
            _RUNGS_SCRIPT,
            config,
            model_dir,
            f"{os.path.basename(model_dir)}.py",
            log=log,
            seconds=CHILD_SECONDS,
        )

    baseline_dir = str(tmp_path / "baseline")
    output = str(tmp_path / "runs.log")
    baseline = fh.start(
        script(baseline_dir, str(tmp_path / "baseline.log")), env, output
    )
    assert fh.finish(baseline) == 0, fh.tail(output)
    expected = [r.outcome() for r in _records(baseline_dir)]
    expected_rungs = [r.rungs for r in _records(baseline_dir)]
    assert any(len(r) > 1 for r in expected_rungs), "no child was promoted"

    model_dir = str(tmp_path / "search")
    log = str(tmp_path / "children.log")
    command = script(model_dir, log)
    rng = random.Random(KILL_SEED)
    logged_at_kill, kills = [], []
    for _ in range(3):
        delay = rng.uniform(0.0, CHILD_SECONDS)
        process = fh.start(command, env, output)
        killed = fh.kill_when(process, _DuePromoted(log, process.pid, delay))
        if not killed:
            break  # the search finished first
        kills.append(f"{delay:.2f}s")
        logged_at_kill.append(_logged_rungs(model_dir))
    process = fh.start(command, env, output)
    assert fh.finish(process) == 0, fh.tail(output)
    assert kills, "the search finished before the first kill"

    records = _records(model_dir)
    assert [r.outcome() for r in records] == expected

    def untimed(all_rungs):
        return [
            [{k: v for k, v in e.items() if k != "seconds"} for e in rungs]
            for rungs in all_rungs
        ]

    assert untimed(r.rungs for r in records) == untimed(expected_rungs)
    starts = _rung_starts(log)
    runs = list(dict.fromkeys(pid for pid, *_ in starts))
    for k, logged in enumerate(logged_at_kill):
        later = {
            (name, until)
            for pid, name, _, until in starts
            if runs.index(pid) > k
        }
        assert not logged & later, (k, logged & later)
    # A rung cut by a kill resumed from the step its child had reached (a
    # kill after the training but before the log: rated again, not
    # trained: start == until).
    for _, name, start, until in starts:
        assert start in (0, 10, 30) and start <= until, (name, start, until)
    fh.record_fault(
        record_property,
        f"search with successive halving (rungs 10/30/90): SIGKILL at "
        f"[{', '.join(kills)}] after a promoted rung started",
        "no logged rung trained or decided again, history and rungs "
        f"equal to the uninterrupted search's; {len(runs)} launches",
    )


# The same kill with the real trainer: the promoted child goes on in its
# held session, and after the kill from its checkpoint at the rung.
_REAL_RUNGS_SCRIPT = textwrap.dedent(
    """
    import os, sys
    sys.path.insert(0, {repo!r})
    from nasfpn_tf import config as config_lib
    from nasfpn_tf.search import runner
    from nasfpn_tf.train import trainer

    fit = trainer.Session.fit

    def logged_fit(self, until=None, **kwargs):
        with open({log!r}, "a") as f:
            f.write(
                f"start {{os.getpid()}} {{os.path.basename(self.model_dir)}} "
                f"{{self.step}} {{until}}\\n"
            )
        return fit(self, until, **kwargs)

    trainer.Session.fit = logged_fit
    config = config_lib.from_yaml(open({config!r}).read())
    runner.search(config, {model_dir!r})
    """
)
# Rungs 10 -> 30 steps of a tiny real child (enough for a held-out AP
# above 0 on 16 images); the kill comes a random part of
# REAL_KILL_WINDOW_S after the promoted rung started (its 20 steps and
# held-out rating took 2-5 s on 2 busy cores).
REAL_RUNG_STEPS = (10, 30)
REAL_KILL_WINDOW_S = 3.0


@pytest.mark.slow
@pytest.mark.faults
def test_sigkill_of_a_real_halving_search_during_a_promotion(
    tmp_path, record_property
):
    """kill -9 of a search with rungs and the real trainer while its
    promoted child trains (or rates) its second rung; the rerun of the
    same command finishes every sample once, trains no logged rung
    again, resumes the cut rung from the child's checkpoint, and each
    reward is the one its rungs.jsonl logged."""
    low, high = REAL_RUNG_STEPS
    config = config_lib.override(
        tiny_config("random", num_samples=2, samples_per_update=2),
        {
            "search.reuse_rewards": False,
            "search.proxy.train_steps": high,
            "search.proxy.image_size": 64,
            "search.proxy.repeats": 1,
            "search.proxy.filters": 8,
            "search.rungs.min_steps": low,
            "model.image_size": 64,
            "train.batch_size": 2,
            "train.warmup_steps": 1,
            "eval.batch_size": 8,
            "data.synthetic.num_train": 8,
            "data.synthetic.num_heldout": 16,
            "data.synthetic.num_val": 4,
        },
    )
    model_dir = str(tmp_path / "search")
    log = str(tmp_path / "fits.log")
    command = _script_command(
        tmp_path, _REAL_RUNGS_SCRIPT, config, model_dir, log=log
    )
    env = fh.child_env(str(tmp_path / "data"))
    output = str(tmp_path / "runs.log")
    delay = random.Random(KILL_SEED).uniform(0.0, REAL_KILL_WINDOW_S)
    process = fh.start(command, env, output)
    killed = fh.kill_when(process, _DuePromoted(log, process.pid, delay))
    assert killed, "the search finished before the kill: " + fh.tail(output)
    logged_at_kill = _logged_rungs(model_dir)
    process = fh.start(command, env, output)
    assert fh.finish(process) == 0, fh.tail(output)

    records = _records(model_dir)
    assert sorted(r.sample for r in records) == [0, 1]
    starts = _rung_starts(log)
    _, rerun = list(dict.fromkeys(pid for pid, *_ in starts))
    trained_again = {(n, u) for p, n, _, u in starts if p == rerun}
    assert not logged_at_kill & trained_again, logged_at_kill & trained_again
    rerun_starts = [(n, u) for p, n, _, u in starts if p == rerun]
    assert len(rerun_starts) == len(set(rerun_starts)), rerun_starts
    # The cut rung went on from the checkpoint at the first rung (a kill
    # after its training but before its log: rated again, not trained).
    for pid, name, start, until in starts:
        allowed = [(0, low), (low, high)]
        if pid == rerun:
            allowed.append((high, high))
        assert (start, until) in allowed, (pid, name, start, until)
    for record in records:
        work_dir = search_dir_lib.SearchDir(model_dir).trial_dir(record.sample)
        logged = fh.jsonl_rows(os.path.join(work_dir, "rungs.jsonl"))
        assert [dict(r) for r in record.rungs] == logged
        assert record.reward == logged[-1]["reward"]  # final_reward highest
        assert all(r["reward"] == r["metrics"]["AP"] for r in logged)
        assert [r["steps"] for r in logged] == list(
            REAL_RUNG_STEPS[: len(logged)]
        )
    fh.record_fault(
        record_property,
        f"search with successive halving and the real trainer (rungs "
        f"{low}/{high}): SIGKILL {delay:.2f} s after a promoted rung started",
        f"rerun finished samples 0 and 1 once; rungs logged at the kill "
        f"({len(logged_at_kill)}) not trained again, rewards from rungs.jsonl",
    )
