"""Tests of `runner.search`: outputs, resume after crashes, kill -9."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest
import tensorflow as tf

from nasfpn_tf import config as config_lib
from nasfpn_tf import files, run_files
from nasfpn_tf.arch.spec import NeckSpec
from nasfpn_tf.search import history as history_lib
from nasfpn_tf.search import oracle as oracle_lib
from nasfpn_tf.search import proxy as proxy_lib
from nasfpn_tf.search import runner
from nasfpn_tf.search import search_dir as search_dir_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_SAMPLES = 8
PER_UPDATE = 3


def formula(key):
    """The fake proxy's reward: a pure function of the canonical hash."""
    return int(key[:8], 16) / 16**8


class FormulaProxy:
    """Rates a spec by `formula`; raises `crash` at call `crash_at`."""

    def __init__(self, crash_at=None, crash=None):
        self.calls = []
        self.crash_at, self.crash = crash_at, crash

    def reward(self, spec, work_dir):
        key = spec.canonical_key()
        if len(self.calls) + 1 == self.crash_at:
            raise self.crash
        self.calls.append(key)
        reward = formula(key)
        return proxy_lib.ProxyResult(reward, "ok", {"AP": reward}, 0.01)


class Crash(BaseException):
    """A simulated kill: not an Exception, so nothing catches it."""


def tiny_config(algorithm="random", **search):
    """Two sum cells over levels 3..4: 48 action sequences and fewer
    distinct computations, so repeats occur."""
    return config_lib.override(
        config_lib.ExperimentConfig(),
        {
            "model.max_level": 4,
            "search.space.num_intermediate": 0,
            "search.space.intermediate_levels": [4],
            "search.space.ops": ["sum"],
            # Children are trained (a fake or real proxy), not rated on
            # the supernet of the defaults.
            "search.rater": "proxy",
            "search.algorithm": algorithm,
            "search.num_samples": NUM_SAMPLES,
            "search.samples_per_update": PER_UPDATE,
            "search.controller.lstm_size": 8,
            "search.controller.embedding_size": 8,
            "search.controller.ppo_epochs": 1,
            "search.controller.learning_rate": 0.05,
            **{f"search.{k}": v for k, v in search.items()},
        },
    )


@pytest.fixture(autouse=True)
def _no_distribution(monkeypatch):
    for name in ("TUNER_ID", "ORACLE_IP", "ORACLE_PORT"):
        monkeypatch.delenv(f"KERASTUNER_{name}", raising=False)


def _outcomes(model_dir):
    records, torn = history_lib.read_history(
        os.path.join(model_dir, run_files.HISTORY_FILE)
    )
    assert torn is None
    return [r.outcome() for r in records]


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """Uninterrupted searches, by algorithm: (summary, outcomes, calls)."""
    cache = {}

    def get(algorithm):
        if algorithm not in cache:
            model_dir = str(tmp_path_factory.mktemp(f"baseline_{algorithm}"))
            proxy = FormulaProxy()
            summary = runner.search(
                tiny_config(algorithm), model_dir, proxy=proxy
            )
            cache[algorithm] = (summary, _outcomes(model_dir), proxy.calls)
        return cache[algorithm]

    return get


def test_search_writes_every_result(tmp_path, baseline, capsys):
    summary, _, calls = baseline("random")
    root = os.path.dirname(summary["history"])
    records, _ = history_lib.read_history(summary["history"])
    assert len(records) == NUM_SAMPLES == summary["samples"]
    assert [r.step for r in records] == [i // PER_UPDATE for i in range(8)]
    assert summary["cached"] == sum(r.status == "cached" for r in records) > 0
    assert summary["trained"] == len(calls) == len(set(calls))
    assert summary["unique"] == len({r.hash for r in records})
    assert summary["updates"] == 3 and summary["role"] == "single"
    best = max((r for r in records if r.rated), key=lambda r: r.reward)
    assert summary["best_reward"] == best.reward
    assert NeckSpec.load(summary["best_spec"]) == best.neck_spec()
    top = files.read_json(summary["top_specs"])
    assert [t["reward"] for t in top] == sorted(
        {r.hash: r.reward for r in records if r.rated}.values(), reverse=True
    )
    for key in ("plot", "drawing"):
        with open(summary[key], "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    events = tf.io.gfile.glob(os.path.join(root, "summaries", "events.*"))
    assert events
    tags = {
        v.tag
        for e in tf.compat.v1.train.summary_iterator(events[0])
        for v in e.summary.value
    }
    assert {
        "reward/batch_mean",
        "reward/best",
        "search/unique_architectures",
    } <= tags
    assert os.path.exists(os.path.join(root, "config.yaml"))


def test_final_text_names_the_results(tmp_path, capsys):
    model_dir = str(tmp_path)
    config = tiny_config(num_samples=2, samples_per_update=2)
    runner.search(config, model_dir, proxy=FormulaProxy())
    text = capsys.readouterr().out
    assert f"Search results in {model_dir}" in text
    assert os.path.join(model_dir, "best_spec.json") in text
    assert "NASFPN_BLOCK_SPECS = [" in text
    assert "--arch=" in text


def test_rerun_of_a_finished_search_trains_nothing(tmp_path):
    model_dir = str(tmp_path)
    first = runner.search(tiny_config(), model_dir, proxy=FormulaProxy())
    proxy = FormulaProxy()
    again = runner.search(tiny_config(), model_dir, proxy=proxy)
    assert proxy.calls == []
    for key in ("best_reward", "best_sample", "samples", "updates", "unique"):
        assert again[key] == first[key]


def test_random_search_and_ppo_share_the_harness(baseline):
    random_summary, random_outcomes, _ = baseline("random")
    ppo_summary, ppo_outcomes, _ = baseline("ppo")
    assert ppo_summary["updates"] == random_summary["updates"] == 3
    assert len(ppo_outcomes) == len(random_outcomes) == NUM_SAMPLES
    root = os.path.dirname(ppo_summary["history"])
    pointer = files.read_json(os.path.join(root, "controller", "latest.json"))
    assert pointer == {
        "updates": 3,
        "checkpoint": "update-000003",
        "algorithm": "ppo",
    }


def _crash_in_append(monkeypatch, at, after):
    """History.append raises Crash on its `at`-th call, before or after
    writing the line."""
    original = history_lib.History.append
    count = {"n": 0}

    def append(self, record):
        count["n"] += 1
        if count["n"] == at and not after:
            raise Crash(f"before append {at}")
        original(self, record)
        if count["n"] == at and after:
            raise Crash(f"after append {at}")

    monkeypatch.setattr(history_lib.History, "append", append)


def _crash_in_checkpoint(monkeypatch, at):
    """save_policy writes update `at`'s checkpoint, then Crash before the
    pointer."""
    original = search_dir_lib.SearchDir.save_policy

    def save_policy(self, policy, updates, algorithm):
        if updates == at:
            policy.save(os.path.join(self.controller_dir, "update-torn"))
            raise Crash(f"in checkpoint {at}")
        return original(self, policy, updates, algorithm)

    monkeypatch.setattr(search_dir_lib.SearchDir, "save_policy", save_policy)


CRASHES = {
    "mid_child": lambda mp: {"proxy": FormulaProxy(crash_at=4, crash=Crash())},
    "before_record": lambda mp: _crash_in_append(mp, at=2, after=False),
    "after_batch_recorded": lambda mp: _crash_in_append(mp, at=6, after=True),
    "mid_checkpoint": lambda mp: _crash_in_checkpoint(mp, at=2),
}


# Each learning controller traces its update once (several seconds on a
# CPU), so the fast suite redoes one update; `-m slow` crashes everywhere.
RESUME_CASES = (
    [("random", point) for point in sorted(CRASHES)]
    + [("reinforce", "mid_checkpoint")]
    + [
        pytest.param("reinforce", point, marks=pytest.mark.slow)
        for point in sorted(CRASHES)
        if point != "mid_checkpoint"
    ]
)


@pytest.mark.parametrize("algorithm, point", RESUME_CASES)
def test_resume_after_a_crash_equals_the_uninterrupted_search(
    tmp_path, monkeypatch, baseline, algorithm, point
):
    _, expected, expected_calls = baseline(algorithm)
    model_dir = str(tmp_path)
    with monkeypatch.context() as patch:
        crash_proxy = (CRASHES[point](patch) or {}).get("proxy")
        proxy = crash_proxy or FormulaProxy()
        with pytest.raises(Crash):
            runner.search(tiny_config(algorithm), model_dir, proxy=proxy)
    first_calls = list(proxy.calls)
    resumed = FormulaProxy()
    runner.search(tiny_config(algorithm), model_dir, proxy=resumed)
    assert _outcomes(model_dir) == expected
    # No child trained twice: the two runs together trained what the
    # uninterrupted one did.
    assert first_calls + resumed.calls == expected_calls


def test_search_builds_its_controller_in_float32(monkeypatch):
    import tf_keras

    tf_keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        config = tiny_config("ppo")
        policy = runner.make_policy(config, runner.make_space(config))
        assert policy.sample(2).actions.shape == (2, 8)
        assert tf_keras.mixed_precision.global_policy().name == "mixed_bfloat16"
    finally:
        tf_keras.mixed_precision.set_global_policy("float32")


def test_aborted_search_raises_after_writing_results(tmp_path):
    class Failing:
        def reward(self, spec, work_dir):
            return proxy_lib.ProxyResult(0.0, "failed", error="OOM: no")

    with pytest.raises(oracle_lib.SearchAborted, match="2 children failed"):
        runner.search(
            tiny_config(),
            str(tmp_path),
            proxy=Failing(),
            max_consecutive_failures=2,
        )
    records, _ = history_lib.read_history(str(tmp_path / "history.jsonl"))
    assert [r.status for r in records] == ["failed", "failed"]


def test_oracle_address_comes_from_config(monkeypatch):
    # Set below by the runner: monkeypatch restores them after the test
    # (setenv records their absence), so that later searches in this
    # process are not made workers.
    for name in ("KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT"):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    config = tiny_config(oracle_host="10.0.0.2", oracle_port=8123)
    runner._export_oracle_address(config)
    assert "KERASTUNER_ORACLE_IP" not in os.environ  # not distributed
    monkeypatch.setenv("KERASTUNER_TUNER_ID", "tuner3")
    runner._export_oracle_address(config)
    assert os.environ["KERASTUNER_ORACLE_IP"] == "10.0.0.2"
    assert os.environ["KERASTUNER_ORACLE_PORT"] == "8123"
    assert oracle_lib.role() == "worker"


_KILL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    sys.path.insert(0, {repo!r})
    from nasfpn_tf import config as config_lib
    from nasfpn_tf.search import history as history_lib
    from nasfpn_tf.search import search_dir as search_dir_lib
    from nasfpn_tf.search import proxy as proxy_lib, runner

    point, at = sys.argv[1], int(sys.argv[2])
    calls_path = {calls!r}
    counts = {{"proxy": 0, "append": 0}}

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    class FormulaProxy:
        def reward(self, spec, work_dir):
            key = spec.canonical_key()
            counts["proxy"] += 1
            if point == "proxy" and counts["proxy"] == at:
                die()  # mid-child
            reward = int(key[:8], 16) / 16**8
            with open(calls_path, "a") as f:
                f.write(key + "\\n")
            if point == "result" and counts["proxy"] == at:
                die()  # trained, result not yet stored
            return proxy_lib.ProxyResult(reward, "ok", {{"AP": reward}}, 0.01)

    append = history_lib.History.append

    def dying_append(self, record):
        counts["append"] += 1
        if point == "torn" and counts["append"] == at:
            with open(self.path, "a") as f:
                f.write(record.to_json()[:25])
                f.flush()
            die()
        append(self, record)
        if point == "append" and counts["append"] == at:
            die()

    history_lib.History.append = dying_append
    save_policy = search_dir_lib.SearchDir.save_policy

    def dying_save(self, policy, updates, algorithm):
        if point == "checkpoint" and updates == at:
            policy.save(os.path.join(self.controller_dir, "update-torn"))
            die()
        return save_policy(self, policy, updates, algorithm)

    search_dir_lib.SearchDir.save_policy = dying_save
    config = config_lib.from_yaml(open({config!r}).read())
    runner.search(config, {model_dir!r}, proxy=FormulaProxy())
    """
)


@pytest.mark.slow
@pytest.mark.faults
def test_sigkill_at_several_points_then_rerun(tmp_path, baseline):
    """kill -9 of a real search process, rerun after each kill: the final
    history equals the uninterrupted search's, no child trained twice."""
    _, expected, expected_calls = baseline("ppo")
    config_path = tmp_path / "config.yaml"
    config_path.write_text(config_lib.to_yaml(tiny_config("ppo")))
    calls = tmp_path / "calls.txt"
    model_dir = tmp_path / "search"
    script = tmp_path / "search.py"
    script.write_text(
        _KILL_SCRIPT.format(
            repo=REPO,
            calls=str(calls),
            config=str(config_path),
            model_dir=str(model_dir),
        )
    )
    # Each run dies at its point, counted from the run's own start.
    kills = [
        ("proxy", 2),
        ("result", 2),
        ("torn", 2),
        ("checkpoint", 2),
        ("append", 2),
        ("none", 0),
    ]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    for point, at in kills:
        run = subprocess.run(
            [sys.executable, str(script), point, str(at)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if point == "none":
            assert run.returncode == 0, run.stderr[-3000:]
        else:
            assert run.returncode == -signal.SIGKILL, (
                point,
                run.stderr[-3000:],
            )
    assert _outcomes(str(model_dir)) == expected
    trained = calls.read_text().split()
    # One child was killed after training and before storing its result
    # ("result"): that one, and only that one, was trained again.
    assert len(trained) == len(expected_calls) + 1
    assert sorted(set(trained)) == sorted(expected_calls)


@pytest.mark.slow
def test_real_tiny_search_on_generated_data(tmp_path):
    """Two children really trained on the generated set."""
    config = config_lib.override(
        tiny_config(num_samples=2, samples_per_update=2),
        {
            "model.max_level": 7,
            "search.space.num_intermediate": 1,
            "search.space.intermediate_levels": [4, 5, 6, 7],
            "search.proxy.train_steps": 4,
            "train.warmup_steps": 1,
            "data.synthetic.num_train": 8,
            "data.synthetic.num_heldout": 4,
            "data.synthetic.num_val": 4,
        },
    )
    summary = runner.search(config, str(tmp_path))
    records, _ = history_lib.read_history(summary["history"])
    assert [r.status for r in records] == ["ok", "ok"], records
    assert all(0.0 <= r.reward <= 1.0 for r in records)
    assert all(r.metrics["steps"] == 4 for r in records)
