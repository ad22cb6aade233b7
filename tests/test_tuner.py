"""Tests of SearchTuner (search/oracle.py): trials, stored results, chief
and workers."""

import os
import subprocess
import sys
import textwrap

import pytest

from nasfpn_tf import files
from nasfpn_tf.arch.space import SearchSpace
from nasfpn_tf.search import controller
from nasfpn_tf.search import history as history_lib
from nasfpn_tf.search import oracle as oracle_lib
from nasfpn_tf.search import proxy as proxy_lib
from nasfpn_tf.search import results as results_lib
from nasfpn_tf.search import search_dir as search_dir_lib

SPACE = SearchSpace(
    num_intermediate=1, intermediate_levels=(4,), min_level=3, max_level=4
)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def formula(key):
    """The fake proxy's reward: a pure function of the canonical hash."""
    return int(key[:8], 16) / 16**8


class CountingProxy:
    """Rates by `formula`; counts calls and releases."""

    def __init__(self):
        self.calls, self.released = [], []

    def reward(self, spec, work_dir):
        self.calls.append(work_dir)
        reward = formula(spec.canonical_key())
        return proxy_lib.ProxyResult(reward, "ok", {"AP": reward}, 0.01)

    def release(self, work_dir):
        self.released.append(work_dir)


@pytest.fixture(autouse=True)
def _no_distribution(monkeypatch):
    for name in ("TUNER_ID", "ORACLE_IP", "ORACLE_PORT"):
        monkeypatch.delenv(f"KERASTUNER_{name}", raising=False)


def _tuner(tmp_path, proxy, num_samples=2):
    search_dir = search_dir_lib.SearchDir(str(tmp_path))
    oracle = oracle_lib.ControllerOracle(
        SPACE,
        controller.RandomPolicy(SPACE.num_choices, SPACE.mask, seed=3),
        search_dir,
        num_samples=num_samples,
        samples_per_update=num_samples,
        algorithm="random",
    )
    oracle.restore()
    return oracle, oracle_lib.SearchTuner(
        oracle, SPACE, search_dir, lambda: proxy
    )


def test_run_trial_stores_the_result_then_releases(tmp_path):
    proxy = CountingProxy()
    oracle, tuner = _tuner(tmp_path, proxy)
    trial = oracle.create_trial("tuner0")
    spec = SPACE.to_spec(oracle_lib.actions_of(trial, SPACE))
    metrics = tuner.run_trial(trial)
    assert metrics == {"reward": formula(spec.canonical_key())}
    work_dir = oracle.search_dir.trial_dir(0)
    assert proxy.calls == proxy.released == [work_dir]
    stored = files.read_json(oracle.search_dir.result_path(0))
    assert stored["hash"] == spec.canonical_key()
    assert stored["tuner"] == "tuner0" and stored["status"] == "ok"
    # Run again (a restart before the report): the stored result is used.
    assert tuner.run_trial(trial) == metrics
    assert len(proxy.calls) == 1 and tuner.trained == 1


def test_a_stored_result_of_another_spec_is_not_reused(tmp_path):
    proxy = CountingProxy()
    oracle, tuner = _tuner(tmp_path, proxy)
    trial = oracle.create_trial("tuner0")
    result = proxy_lib.ProxyResult(0.5, "ok")
    results_lib.write_result(oracle.search_dir, 0, "another-hash", result, "x")
    tuner.run_trial(trial)
    assert len(proxy.calls) == 1


def test_the_proxy_is_made_only_when_a_child_trains(tmp_path):
    made = []
    search_dir = search_dir_lib.SearchDir(str(tmp_path))
    oracle = oracle_lib.ControllerOracle(
        SPACE,
        controller.RandomPolicy(SPACE.num_choices, SPACE.mask),
        search_dir,
        num_samples=1,
        samples_per_update=1,
    )
    oracle.restore()
    tuner = oracle_lib.SearchTuner(
        oracle, SPACE, search_dir, lambda: made.append(1) or CountingProxy()
    )
    assert made == []
    tuner.search()
    assert made == [1] and len(oracle.records) == 1


def test_role_follows_keras_tuner_environment(monkeypatch):
    assert oracle_lib.role() == "single"
    monkeypatch.setenv("KERASTUNER_TUNER_ID", "chief")
    assert oracle_lib.role() == "single"  # no oracle address: not distributed
    monkeypatch.setenv("KERASTUNER_ORACLE_IP", "127.0.0.1")
    with pytest.raises(RuntimeError, match="KERASTUNER_ORACLE_PORT"):
        oracle_lib.role()
    monkeypatch.setenv("KERASTUNER_ORACLE_PORT", "8000")
    assert oracle_lib.role() == "chief"
    monkeypatch.setenv("KERASTUNER_TUNER_ID", "tuner1")
    assert oracle_lib.role() == "worker"
    # An empty id is a worker to KerasTuner, which wraps its oracle: so here.
    monkeypatch.setenv("KERASTUNER_TUNER_ID", "")
    assert oracle_lib.role() == "worker"


_PROCESS_SCRIPT = textwrap.dedent(
    """
    import glob, os, sys, time
    sys.path.insert(0, {repo!r})
    from nasfpn_tf import config as config_lib
    from nasfpn_tf.search import proxy as proxy_lib, runner

    class FormulaProxy:
        def reward(self, spec, work_dir):
            # Hold the first child until both workers train, so that each
            # takes part whichever starts first.
            name = os.environ["KERASTUNER_TUNER_ID"]
            open(os.path.join({calls_dir!r}, "started-" + name), "w").close()
            deadline = time.time() + 120
            while (len(glob.glob(os.path.join({calls_dir!r}, "started-*")))
                   < 2 and time.time() < deadline):
                time.sleep(0.1)
            key = spec.canonical_key()
            with open(os.path.join({calls_dir!r}, os.environ[
                    "KERASTUNER_TUNER_ID"]), "a") as f:
                f.write(key + "\\n")
            reward = int(key[:8], 16) / 16**8
            return proxy_lib.ProxyResult(reward, "ok", {{"AP": reward}}, 0.01)

    config = config_lib.from_yaml(open({config!r}).read())
    print(runner.search(config, {model_dir!r}, proxy=FormulaProxy()))
    """
)


def _tiny_search_config(**search):
    from nasfpn_tf import config as config_lib

    return config_lib.override(
        config_lib.ExperimentConfig(),
        {
            "model.max_level": 4,
            "search.space.num_intermediate": 1,
            "search.space.intermediate_levels": [4],
            "search.controller.lstm_size": 8,
            "search.controller.embedding_size": 8,
            **{f"search.{k}": v for k, v in search.items()},
        },
    )


@pytest.mark.slow
def test_chief_and_two_workers_over_grpc(tmp_path):
    """A chief and two worker processes on 127.0.0.1 share one search."""
    import socket

    from nasfpn_tf import config as config_lib
    from nasfpn_tf.search import runner

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = _tiny_search_config(
        algorithm="random",
        num_samples=8,
        samples_per_update=4,
        parallel_trials=2,
    )
    config_path = tmp_path / "config.yaml"
    config_path.write_text(config_lib.to_yaml(config))
    calls_dir = tmp_path / "calls"
    calls_dir.mkdir()
    model_dir = tmp_path / "search"
    script = tmp_path / "run.py"
    script.write_text(
        _PROCESS_SCRIPT.format(
            repo=REPO,
            calls_dir=str(calls_dir),
            config=str(config_path),
            model_dir=str(model_dir),
        )
    )
    processes = {}
    for tuner_id in ("chief", "tuner0", "tuner1"):
        env = dict(
            os.environ,
            KERASTUNER_TUNER_ID=tuner_id,
            KERASTUNER_ORACLE_IP="127.0.0.1",
            KERASTUNER_ORACLE_PORT=str(port),
            TF_CPP_MIN_LOG_LEVEL="2",
        )
        processes[tuner_id] = subprocess.Popen(
            [sys.executable, str(script)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    outputs = {}
    for tuner_id, process in processes.items():
        outputs[tuner_id] = process.communicate(timeout=300)[0]
        assert process.returncode == 0, outputs[tuner_id][-3000:]
    records, torn = history_lib.read_history(str(model_dir / "history.jsonl"))
    assert torn is None
    assert sorted(r.sample for r in records) == list(range(8))
    assert not (calls_dir / "chief").exists()  # the chief trains nothing
    trained = {
        name: (calls_dir / name).read_text().split()
        for name in ("tuner0", "tuner1")
    }
    assert all(trained.values())  # both workers trained children
    assert {r.tuner for r in records if r.status == "ok"} == set(trained)
    keys = [k for calls in trained.values() for k in calls]
    assert len(keys) == len(set(keys))  # no architecture trained twice
    assert len(keys) == sum(r.status == "ok" for r in records)
    # The same search as one process gives: the same samples and rewards.
    single = runner.search(
        config, str(tmp_path / "single"), proxy=_LocalProxy()
    )
    alone, _ = history_lib.read_history(single["history"])
    by_sample = {r.sample: r for r in records}
    for record in alone:
        other = by_sample[record.sample]
        assert (other.actions, other.reward) == (record.actions, record.reward)
    assert "role': 'worker'" in outputs["tuner0"]


class _LocalProxy:
    def reward(self, spec, work_dir):
        reward = formula(spec.canonical_key())
        return proxy_lib.ProxyResult(reward, "ok", {"AP": reward}, 0.01)
