"""Tests of ControllerOracle: batches, cache, failures, restore."""

import os

import pytest
import tensorflow as tf
from search_helpers import (
    PENALTY,
    SPACE,
    FormulaProxy,
    ScriptedPolicy,
    formula,
    scheduling,
)
from search_helpers import distinct_rows as _distinct_rows
from search_helpers import key as _key
from search_helpers import twin as _twin

from nasfpn_tf import files
from nasfpn_tf.search import controller
from nasfpn_tf.search import history as history_lib
from nasfpn_tf.search import oracle as oracle_lib
from nasfpn_tf.search import results as results_lib
from nasfpn_tf.search import search_dir as search_dir_lib


@pytest.fixture(autouse=True)
def _no_distribution(monkeypatch):
    for name in ("TUNER_ID", "ORACLE_IP", "ORACLE_PORT"):
        monkeypatch.delenv(f"KERASTUNER_{name}", raising=False)


def _build(tmp_path, policy, proxy, num_samples, per_update, **kwargs):
    search_dir = search_dir_lib.SearchDir(str(tmp_path))
    keywords, seen = scheduling(num_samples, per_update, **kwargs)
    oracle = oracle_lib.ControllerOracle(SPACE, policy, search_dir, **keywords)
    oracle.restore()
    tuner = oracle_lib.SearchTuner(oracle, SPACE, search_dir, lambda: proxy)
    return oracle, tuner, seen


def test_one_int_hyperparameter_per_decision():
    hps = oracle_lib.hyperparameters(SPACE)
    assert [hp.name for hp in hps.space] == list(SPACE.step_names)
    assert [(hp.min_value, hp.max_value) for hp in hps.space] == [
        (0, n - 1) for n in SPACE.num_choices
    ]


def test_keras_tuner_leaves_tf_keras_alone():
    import keras_tuner  # noqa: F401
    import tf_keras

    assert tf_keras.mixed_precision.global_policy().name == "float32"
    layer = tf_keras.layers.Dense(2)
    assert layer(tf.ones([1, 3])).shape == (1, 2)
    assert type(layer).__module__.startswith("tf_keras")


def test_search_trains_each_sample_and_learns_per_batch(tmp_path):
    rows = _distinct_rows(5)
    policy, proxy = ScriptedPolicy(rows), FormulaProxy()
    oracle, tuner, seen = _build(tmp_path, policy, proxy, 5, 2)
    tuner.search()
    records = oracle.records
    assert [(r.step, r.sample) for r in records] == [
        (0, 0),
        (0, 1),
        (1, 2),
        (1, 3),
        (2, 4),
    ]
    assert [list(r.actions) for r in records] == rows
    assert [r.reward for r in records] == [formula(_key(a)) for a in rows]
    assert {r.status for r in records} == {"ok"}
    assert all(
        r.tuner == "tuner0" and r.metrics["AP"] == r.reward for r in records
    )
    assert proxy.calls == [_key(a) for a in rows]
    assert tuner.trained == 5
    # Updates in sample order, the last batch being the remainder.
    assert [u[0] for u in policy.updates] == [rows[0:2], rows[2:4], rows[4:]]
    assert [u[1] for u in policy.updates] == [
        [r.reward for r in records[i : i + 2]] for i in (0, 2, 4)
    ]
    assert [u.step for u in seen["updates"]] == [0, 1, 2]
    assert seen["samples"] == records
    assert oracle.finished and oracle.updates == 3
    search_dir = search_dir_lib.SearchDir(str(tmp_path))
    assert search_dir.latest_policy("scripted")[0] == 3
    stored = files.read_json(search_dir.result_path(3))
    assert stored["hash"] == _key(rows[3]) and stored["status"] == "ok"
    assert history_lib.read_history(search_dir.history_path)[0] == records


def test_repeated_architecture_is_cached_not_retrained(tmp_path):
    a, b = _distinct_rows(2)
    a, a_twin = _twin(a)
    assert a != a_twin and _key(a) == _key(a_twin)
    proxy = FormulaProxy()
    oracle, tuner, _ = _build(
        tmp_path, ScriptedPolicy([a, b, a_twin, a]), proxy, 4, 2
    )
    tuner.search()
    records = oracle.records
    assert [r.status for r in records] == ["ok", "ok", "cached", "cached"]
    assert [r.cached_from for r in records] == [None, None, 0, 0]
    assert records[2].reward == records[3].reward == records[0].reward
    assert records[2].seconds == 0 and list(records[2].actions) == a_twin
    assert proxy.calls == [_key(a), _key(b)]
    assert not os.path.exists(oracle.search_dir.trial_dir(2))


def test_without_reuse_a_repeat_is_trained_again(tmp_path):
    a, b = _distinct_rows(2)
    proxy = FormulaProxy()
    oracle, tuner, _ = _build(
        tmp_path, ScriptedPolicy([a, b, a]), proxy, 3, 3, reuse_rewards=False
    )
    tuner.search()
    assert [r.status for r in oracle.records] == ["ok"] * 3
    assert len(proxy.calls) == 3


def test_failed_child_earns_penalty_and_a_repeat_trains_again(tmp_path):
    a, b = _distinct_rows(2)
    proxy = FormulaProxy(fail=[_key(a)])
    policy = ScriptedPolicy([a, b, a])
    oracle, tuner, _ = _build(tmp_path, policy, proxy, 3, 3)
    tuner.search()
    records = oracle.records
    assert [r.status for r in records] == ["failed", "ok", "failed"]
    assert records[0].reward == PENALTY
    assert records[0].error == "NonFiniteLossError: nan"
    assert proxy.calls == [_key(a), _key(b), _key(a)]
    assert policy.updates[0][1] == [PENALTY, formula(_key(b)), PENALTY]


def test_a_crashing_trial_is_recorded_as_failed(tmp_path):
    a, b = _distinct_rows(2)
    proxy = FormulaProxy(crash=[_key(a)])
    oracle, tuner, _ = _build(tmp_path, ScriptedPolicy([a, b]), proxy, 2, 2)
    tuner.search()
    first, second = oracle.records
    assert first.status == "failed" and first.reward == PENALTY
    assert "ValueError: bug while rating" in first.error
    assert second.status == "ok"


def test_failures_in_a_row_stop_the_search(tmp_path):
    rows = _distinct_rows(6)
    proxy = FormulaProxy(fail=[_key(r) for r in rows])
    oracle, tuner, _ = _build(
        tmp_path, ScriptedPolicy(rows), proxy, 6, 2, max_consecutive_failures=3
    )
    tuner.search()
    assert isinstance(oracle.aborted, oracle_lib.SearchAborted)
    assert "3 children failed in a row" in str(oracle.aborted)
    assert len(oracle.records) == 3 and oracle.finished


def _finish(oracle, trial, proxy):
    """What a tuner does with a trial: rate it, store it, end it."""
    actions = oracle_lib.actions_of(trial, SPACE)
    spec = SPACE.to_spec(actions)
    sample = int(trial.trial_id)
    result = proxy.reward(spec, str(oracle.search_dir.root))
    results_lib.write_result(
        oracle.search_dir, sample, spec.canonical_key(), result, "tuner9"
    )
    trial.status = oracle_lib.COMPLETED
    oracle.end_trial(trial)


def test_parallel_tuners_share_a_batch_and_wait_for_it(tmp_path):
    rows = _distinct_rows(4)
    policy, proxy = ScriptedPolicy(rows), FormulaProxy()
    oracle, _, _ = _build(tmp_path, policy, proxy, 4, 2)
    first = oracle.create_trial("a")
    second = oracle.create_trial("b")
    assert (first.trial_id, second.trial_id) == ("000000", "000001")
    assert oracle_lib.actions_of(second, SPACE) == rows[1]
    assert oracle.create_trial("a") is first  # still running: same trial
    assert oracle.create_trial("c").status == oracle_lib.IDLE
    _finish(oracle, second, proxy)
    assert policy.updates == []  # sample 0 still training
    _finish(oracle, first, proxy)
    assert [u[0] for u in policy.updates] == [rows[:2]]
    assert [r.sample for r in oracle.records] == [1, 0]
    assert oracle.create_trial("c").trial_id == "000002"


def test_a_twin_of_a_running_child_waits_for_its_reward(tmp_path):
    a, b = _distinct_rows(2)
    a, a_twin = _twin(a)
    policy, proxy = ScriptedPolicy([a, a_twin, b, b]), FormulaProxy()
    oracle, _, _ = _build(tmp_path, policy, proxy, 4, 2)
    first = oracle.create_trial("a")
    assert oracle.create_trial("b").status == oracle_lib.IDLE
    _finish(oracle, first, proxy)
    assert [r.status for r in oracle.records] == ["ok", "cached"]
    assert len(policy.updates) == 1
    third = oracle.create_trial("b")
    assert third.trial_id == "000002"
    assert oracle.create_trial("a").status == oracle_lib.IDLE
    _finish(oracle, third, proxy)
    assert [r.status for r in oracle.records] == [
        "ok",
        "cached",
        "ok",
        "cached",
    ]
    assert oracle.finished
    assert oracle.create_trial("a").status == oracle_lib.STOPPED
    assert proxy.calls == [_key(a), _key(b)]


def test_end_of_an_unknown_trial_is_ignored(tmp_path):
    rows = _distinct_rows(2)
    oracle, _, _ = _build(tmp_path, ScriptedPolicy(rows), FormulaProxy(), 2, 2)
    stale = oracle_lib.trial_lib.Trial(
        oracle.get_space(), trial_id="000007", status=oracle_lib.COMPLETED
    )
    oracle.end_trial(stale)
    assert oracle.records == []


def test_restore_replays_finished_samples_of_the_batch(tmp_path):
    rows = _distinct_rows(4)
    proxy = FormulaProxy()
    oracle, tuner, _ = _build(tmp_path, ScriptedPolicy(rows), proxy, 4, 4)
    trial = oracle.create_trial("a")
    tuner.run_trial(trial)  # trained and stored, but never reported
    _finish(oracle, oracle.create_trial("b"), proxy)
    assert [r.sample for r in oracle.records] == [1]
    # A new process: the policy restarts from its (absent) checkpoint.
    policy = ScriptedPolicy(rows)
    oracle, tuner, seen = _build(tmp_path, policy, proxy, 4, 4)
    tuner.search()
    assert [r.sample for r in oracle.records] == [1, 0, 2, 3]
    # Sample 0 came from its stored result, sample 1 from the history.
    assert proxy.calls == [_key(rows[i]) for i in (0, 1, 2, 3)]
    assert tuner.trained == 2
    assert policy.updates == [(rows, [formula(_key(r)) for r in rows])]
    assert [r.sample for r in seen["samples"]] == [0, 2, 3]


def test_restore_refuses_a_history_the_policy_does_not_sample(tmp_path):
    rows = _distinct_rows(4)
    proxy = FormulaProxy()
    oracle, _, _ = _build(tmp_path, ScriptedPolicy(rows), proxy, 4, 4)
    _finish(oracle, oracle.create_trial("a"), proxy)
    with pytest.raises(oracle_lib.SearchStateError, match="has actions"):
        # Another script: the restarted policy samples other actions.
        _build(tmp_path, ScriptedPolicy(rows[::-1]), proxy, 4, 4)


@pytest.mark.parametrize(
    "num_samples, per_update, message",
    [(2, 1, "samples_per_update=1"), (1, 2, "beyond search.num_samples")],
)
def test_restore_refuses_other_batch_sizes(
    tmp_path, num_samples, per_update, message
):
    rows = _distinct_rows(2)
    _, tuner, _ = _build(tmp_path, ScriptedPolicy(rows), FormulaProxy(), 2, 2)
    tuner.search()
    with pytest.raises(oracle_lib.SearchStateError, match=message):
        _build(
            tmp_path,
            ScriptedPolicy(rows),
            FormulaProxy(),
            num_samples,
            per_update,
        )


def test_restore_refuses_a_history_that_lost_learned_samples(tmp_path):
    rows = _distinct_rows(4)
    _, tuner, _ = _build(tmp_path, ScriptedPolicy(rows), FormulaProxy(), 4, 2)
    tuner.search()
    path = tmp_path / "history.jsonl"
    path.write_text("".join(path.read_text().splitlines(True)[:3]))
    with pytest.raises(
        oracle_lib.SearchStateError, match=r"lacks samples \[3\]"
    ):
        _build(tmp_path, ScriptedPolicy(rows), FormulaProxy(), 4, 2)


def test_restore_refuses_a_checkpoint_of_another_controller(tmp_path):
    search_dir = search_dir_lib.SearchDir(str(tmp_path))
    policy = controller.RandomPolicy(SPACE.num_choices, SPACE.mask)
    search_dir.save_policy(policy, 1, "scripted")
    with pytest.raises(oracle_lib.SearchStateError, match="does not fit"):
        _build(
            tmp_path, ScriptedPolicy(_distinct_rows(2)), FormulaProxy(), 2, 2
        )
