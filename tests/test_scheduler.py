"""Tests of Scheduler, without KerasTuner: batches, cache, failures, lost
tuners, restore."""

import pytest
from search_helpers import (
    PENALTY,
    SPACE,
    FormulaProxy,
    ScriptedPolicy,
    distinct_rows,
    formula,
    key,
    scheduling,
    twin,
)

from nasfpn_tf.search import results as results_lib
from nasfpn_tf.search import resume
from nasfpn_tf.search import scheduler as scheduler_lib
from nasfpn_tf.search import search_dir as search_dir_lib
from nasfpn_tf.search.scheduler import RUN, STOP, WAIT


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _scheduler(tmp_path, rows, num_samples, per_update, **kwargs):
    keywords, seen = scheduling(num_samples, per_update, **kwargs)
    scheduler = scheduler_lib.Scheduler(
        SPACE,
        ScriptedPolicy(rows),
        search_dir_lib.SearchDir(str(tmp_path)),
        **keywords,
    )
    scheduler.restore()
    return scheduler, seen


def _train(scheduler, sample, proxy, tuner="t"):
    """What a tuner does with a sample: rate it, store it, report it."""
    spec = SPACE.to_spec(scheduler.actions(sample))
    results_lib.rate(scheduler.search_dir, sample, spec, proxy, tuner)
    return scheduler.finish(sample)


def _run_all(scheduler, proxy):
    while (assignment := scheduler.assign("t")).status == RUN:
        _train(scheduler, assignment.sample, proxy)
    return assignment


def test_a_batch_is_handed_out_in_order_and_learned_when_complete(tmp_path):
    rows = distinct_rows(4)
    scheduler, seen = _scheduler(tmp_path, rows, 4, 2)
    first, second = scheduler.assign("a"), scheduler.assign("b")
    assert (first.status, first.sample, second.sample) == (RUN, 0, 1)
    assert first.actions == tuple(rows[0]) and not first.again
    assert scheduler.assign("c").status == WAIT
    again = scheduler.assign("a")  # a restarted tuner: the same child
    assert (again.sample, again.again) == (0, True)
    assert scheduler.running == {"a": 0, "b": 1}
    _train(scheduler, 1, FormulaProxy())
    assert scheduler.policy.updates == [] and scheduler.updates == 0
    _train(scheduler, 0, FormulaProxy())
    assert [u[0] for u in scheduler.policy.updates] == [rows[:2]]
    assert [r.sample for r in scheduler.records] == [1, 0]
    assert [u.step for u in seen["updates"]] == [0]
    assert seen["samples"] == scheduler.records
    assert scheduler.assign("c").sample == 2


def test_the_last_batch_is_short_and_then_every_tuner_stops(tmp_path):
    rows = distinct_rows(3)
    scheduler, seen = _scheduler(tmp_path, rows, 3, 2)
    assert _run_all(scheduler, FormulaProxy()).status == STOP
    records = scheduler.records
    assert [(r.step, r.sample, r.status) for r in records] == [
        (0, 0, "ok"),
        (0, 1, "ok"),
        (1, 2, "ok"),
    ]
    assert [r.reward for r in records] == [formula(key(a)) for a in rows]
    assert [u[0] for u in scheduler.policy.updates] == [rows[:2], rows[2:]]
    assert [u.rewards for u in seen["updates"]][1] == (records[2].reward,)
    assert scheduler.finished and scheduler.over
    assert scheduler.tuners == set() and scheduler.updates == 2


def test_a_twin_waits_for_the_running_child_then_is_cached(tmp_path):
    a, b = distinct_rows(2)
    a, a_twin = twin(a)
    proxy = FormulaProxy()
    scheduler, _ = _scheduler(tmp_path, [a, a_twin, b, a], 4, 2)
    assert scheduler.assign("x").sample == 0
    assert scheduler.assign("y").status == WAIT
    _train(scheduler, 0, proxy)
    assert [(r.status, r.cached_from) for r in scheduler.records] == [
        ("ok", None),
        ("cached", 0),
    ]
    _run_all(scheduler, proxy)
    assert [r.status for r in scheduler.records] == [
        "ok",
        "cached",
        "ok",
        "cached",
    ]
    assert proxy.calls == [key(a), key(b)]


def test_without_reuse_a_repeat_is_handed_out_again(tmp_path):
    a, b = distinct_rows(2)
    proxy = FormulaProxy()
    scheduler, _ = _scheduler(tmp_path, [a, b, a], 3, 3, reuse_rewards=False)
    _run_all(scheduler, proxy)
    assert [r.status for r in scheduler.records] == ["ok"] * 3
    assert len(proxy.calls) == 3


def test_a_child_without_a_result_fails_with_its_error(tmp_path):
    rows = distinct_rows(2)
    scheduler, _ = _scheduler(tmp_path, rows, 2, 2)
    scheduler.assign("a"), scheduler.assign("b")
    scheduler.finish(0, "Traceback (most recent call last):\nValueError: x")
    scheduler.finish(1)
    first, second = scheduler.records
    assert (first.status, first.reward) == ("failed", PENALTY)
    assert first.error == "run_trial: ValueError: x"
    assert "ended without a result" in second.error
    assert scheduler.policy.updates[0][1] == [PENALTY, PENALTY]


def test_failures_in_a_row_abort_the_search(tmp_path):
    rows = distinct_rows(4)
    proxy = FormulaProxy(fail=[key(r) for r in rows])
    scheduler, _ = _scheduler(tmp_path, rows, 4, 1, max_consecutive_failures=2)
    assert _run_all(scheduler, proxy).status == STOP
    assert isinstance(scheduler.aborted, scheduler_lib.SearchAborted)
    assert "2 children failed in a row" in str(scheduler.aborted)
    assert len(scheduler.records) == 2 and scheduler.finished


def test_the_end_of_a_sample_outside_the_batch_is_ignored(tmp_path):
    scheduler, _ = _scheduler(tmp_path, distinct_rows(2), 2, 2)
    assert scheduler.finish(7) is None and scheduler.records == []


def test_a_silent_tuner_loses_its_child_then_it_fails(tmp_path):
    clock = Clock()
    scheduler, _ = _scheduler(
        tmp_path, distinct_rows(2), 2, 2, max_retries=1, clock=clock
    )
    assert scheduler.assign("t0").sample == 0
    clock.now = 5.0
    scheduler.heartbeat(0)
    clock.now = 8.0
    assert scheduler.reclaim_lost(silent_for=4.0) == []
    clock.now = 10.0
    assert scheduler.reclaim_lost(silent_for=4.0) == [0]
    assert scheduler.running == {} and scheduler.records == []
    assert scheduler.assign("t1").sample == 0  # handed out again
    assert scheduler.assign("t2").sample == 1
    clock.now = 20.0
    scheduler.heartbeat(1)
    assert scheduler.reclaim_lost(silent_for=4.0) == [0]
    (record,) = scheduler.records
    assert (record.sample, record.status, record.reward) == (
        0,
        "failed",
        PENALTY,
    )
    assert "tuner t1 was silent" in record.error
    assert "lost 2 time(s)" in record.error
    assert scheduler.assign("t3").status == WAIT


def test_a_lost_child_with_a_stored_result_is_recorded(tmp_path):
    clock = Clock()
    scheduler, _ = _scheduler(
        tmp_path, distinct_rows(1), 1, 1, max_retries=3, clock=clock
    )
    scheduler.assign("t0")
    result = results_lib.proxy_lib.ProxyResult(0.25, "ok", {"AP": 0.25}, 1.0)
    results_lib.write_result(
        scheduler.search_dir, 0, scheduler.spec_key(0), result, "t0"
    )
    clock.now = 10.0  # died after storing, before reporting
    assert scheduler.reclaim_lost(silent_for=1.0) == [0]
    (record,) = scheduler.records
    assert (record.status, record.reward, record.tuner) == ("ok", 0.25, "t0")
    assert scheduler.finished


def test_restore_replays_the_finished_samples_of_the_batch(tmp_path):
    rows = distinct_rows(4)
    proxy = FormulaProxy()
    scheduler, _ = _scheduler(tmp_path, rows, 4, 4)
    scheduler.assign("a"), scheduler.assign("b")
    _train(scheduler, 1, proxy)
    # A new process: the batch is sampled again, sample 1 replayed.
    scheduler, seen = _scheduler(tmp_path, rows, 4, 4)
    assert scheduler.assign("a").sample == 0
    _train(scheduler, 0, proxy)
    _run_all(scheduler, proxy)
    assert [r.sample for r in scheduler.records] == [1, 0, 2, 3]
    assert [r.sample for r in seen["samples"]] == [0, 2, 3]
    assert scheduler.policy.updates == [(rows, [formula(key(r)) for r in rows])]
    assert not seen["updates"][0].replayed


def test_restore_refuses_a_history_of_other_actions(tmp_path):
    rows = distinct_rows(2)
    scheduler, _ = _scheduler(tmp_path, rows, 2, 2)
    scheduler.assign("a")
    _train(scheduler, 0, FormulaProxy())
    with pytest.raises(resume.SearchStateError, match="has actions"):
        _scheduler(tmp_path, rows[::-1], 2, 2)


def test_restore_refuses_another_batch_size(tmp_path):
    rows = distinct_rows(2)
    _run_all(_scheduler(tmp_path, rows, 2, 2)[0], FormulaProxy())
    with pytest.raises(resume.SearchStateError, match="samples_per_update"):
        _scheduler(tmp_path, rows, 2, 1)


@pytest.mark.parametrize(
    "settings", [(0, 1, 0), (1, 0, 0), (1, 1, -1)], ids=str
)
def test_settings_no_search_can_run_with_are_refused(settings):
    with pytest.raises(ValueError, match="must be >= "):
        scheduler_lib.check_settings(*settings)
