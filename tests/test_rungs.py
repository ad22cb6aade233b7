"""Tests of successive halving: rung arithmetic, promotion, rung logs, the
proxy's rungs, and a search with rungs."""

import functools
import json
import os
import random

import pytest

from nasfpn_tf import config as config_lib
from nasfpn_tf.arch import known
from nasfpn_tf.arch.space import SearchSpace
from nasfpn_tf.search import proxy as proxy_lib
from nasfpn_tf.search import rungs as rungs_lib
from nasfpn_tf.search import runner

# -- arithmetic ----------------------------------------------------------------


@pytest.mark.parametrize(
    "min_steps, eta, max_steps, expected",
    [
        (0, 3, 500, (500,)),
        (56, 3, 500, (56, 168, 500)),
        (100, 2, 700, (100, 200, 400, 700)),
        (167, 3, 500, (167, 500)),  # 501 is past the last rung
        (50, 3, 450, (50, 150, 450)),  # 450 is itself the last rung
        (1, 10, 5, (1, 5)),
    ],
)
def test_rung_steps(min_steps, eta, max_steps, expected):
    assert rungs_lib.rung_steps(min_steps, eta, max_steps) == expected


@pytest.mark.parametrize("min_steps, eta", [(500, 3), (600, 3), (10, 1)])
def test_rung_steps_refuses_impossible_settings(min_steps, eta):
    with pytest.raises(ValueError, match="min_steps"):
        rungs_lib.rung_steps(min_steps, eta, 500)


def test_expected_steps_per_child():
    # 56 for all, 112 more for a third, 332 more for a ninth.
    assert rungs_lib.expected_steps((56, 168, 500), 3) == pytest.approx(
        56 + 112 / 3 + 332 / 9
    )
    assert rungs_lib.expected_steps((500,), 3) == 500


@pytest.mark.parametrize(
    "reward, others, eta, expected",
    [
        (0.1, [], 3, True),  # the first child at a rung goes on
        (0.1, [0.2], 3, False),  # top 1 of 2
        (0.3, [0.2], 3, True),
        (0.2, [0.2], 3, True),  # ties rank alike
        (0.2, [0.3, 0.1], 3, False),  # top 1 of 3
        (0.2, [0.3, 0.1, 0.05, 0.0, 0.01], 3, True),  # 2nd, top 2 of 6
        (0.2, [0.3, 0.25, 0.05, 0.0, 0.01], 3, False),  # 3rd of 6
        (0.2, [0.3, 0.1, 0.0], 2, True),  # top 2 of 4
    ],
)
def test_promotes_the_top_share_of_a_rung(reward, others, eta, expected):
    assert rungs_lib.promotes(reward, others, eta) is expected


def _entry(rung, reward, promoted=False, steps=None):
    return rungs_lib.RungEntry(
        rung=rung,
        steps=steps if steps is not None else 10 * (rung + 1),
        reward=reward,
        seconds=1.0,
        promoted=promoted,
    )


def test_final_reward_rules():
    entries = [_entry(0, 0.05, True), _entry(1, 0.2)]
    others = [0.1, 0.3, 0.2]  # at rung 1: 0.1 and 0.2 are at most 0.2
    assert rungs_lib.final_reward("highest", entries, others, 3) == 0.2
    assert rungs_lib.final_reward("first", entries, others, 3) == 0.05
    # rung 1 of 3, and 3 of 4 rewards at most its own.
    assert rungs_lib.final_reward("rank", entries, others, 3) == pytest.approx(
        (1 + 3 / 4) / 3
    )
    # Alone at the last rung: the top of the range.
    last = [_entry(0, 0.0, True), _entry(1, 0.0, True), _entry(2, 0.1)]
    assert rungs_lib.final_reward("rank", last, [], 3) == 1.0
    with pytest.raises(ValueError, match="rule"):
        rungs_lib.final_reward("best", entries, others, 3)


def test_rung_entry_checks_itself():
    with pytest.raises(rungs_lib.RungError, match="reward"):
        _entry(0, float("nan"))
    with pytest.raises(rungs_lib.RungError, match="promoted"):
        rungs_lib.RungEntry(0, 5, 0.1, 1.0, promoted=1)
    with pytest.raises(rungs_lib.RungError, match="missing"):
        rungs_lib.RungEntry.from_dict({"rung": 0})


# -- logs and the board --------------------------------------------------------


def test_rung_log_round_trips_and_drops_a_torn_line(tmp_path):
    log = rungs_lib.RungLog(str(tmp_path))
    log.append(_entry(0, 0.1, True))
    with open(log.path, "a") as f:
        f.write('{"rung": 1, "ste')  # a kill in the middle of an append
    again = rungs_lib.RungLog(str(tmp_path))
    assert again.entries == [_entry(0, 0.1, True)]
    assert again.get(0).promoted and again.get(1) is None
    again.append(_entry(1, 0.3))
    assert [e.rung for e in rungs_lib.RungLog(str(tmp_path)).entries] == [0, 1]


def test_board_reads_every_child_but_the_one_asking(tmp_path):
    for name, rewards in (("a", [0.1, 0.2]), ("b", [0.3]), ("c", [])):
        log = rungs_lib.RungLog(str(tmp_path / name))
        os.makedirs(tmp_path / name, exist_ok=True)
        for rung, reward in enumerate(rewards):
            log.append(_entry(rung, reward, promoted=True))
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "rungs.jsonl").write_text("not json\n{}\n")
    board = rungs_lib.RungBoard(str(tmp_path))
    assert sorted(board.rewards(0)) == [0.1, 0.3]
    assert board.rewards(0, exclude=str(tmp_path / "a")) == [0.3]
    assert board.rewards(1) == [0.2]
    assert board.rewards(2) == []


# -- the proxy's rungs ---------------------------------------------------------


class Killed(BaseException):
    """A simulated SIGKILL: nothing in the proxy catches it."""


class CurveTrain:
    """A training whose held-out AP follows a learning curve.

    The step a model_dir reached is kept in a file, as a checkpoint keeps
    it, so a later call resumes from it. AP = quality(spec) x steps /
    schedule. `kill_at` = (model_dir name, until) raises Killed there.
    """

    def __init__(self, quality, kill_at=None):
        self.quality = quality
        self.kill_at = kill_at
        self.calls = []

    def __call__(
        self, config, model_dir, *, strategy, spec, eval_split, until=None
    ):
        del strategy, eval_split
        total = config.train.steps
        stop = total if until is None else until
        path = os.path.join(model_dir, "step.json")
        start = 0
        if os.path.exists(path):
            with open(path) as f:
                start = json.load(f)
        self.calls.append((os.path.basename(model_dir), start, stop))
        if self.kill_at == (os.path.basename(model_dir), stop):
            raise Killed()
        os.makedirs(model_dir, exist_ok=True)
        with open(path, "w") as f:
            json.dump(stop, f)
        ap = self.quality(spec) * stop / total
        # As the trainer does: this call's seconds only.
        return {"AP": ap, "steps": stop, "train_seconds": (stop - start) / 100}


def _halving_config(**changes):
    base = {
        "search.rater": "proxy",
        "search.proxy.train_steps": 90,
        "search.rungs.min_steps": 10,
        "search.rungs.eta": 3,
        "train.warmup_steps": 5,
    }
    base.update(changes)
    return config_lib.override(config_lib.ExperimentConfig(), base)


def _specs(n, seed=0):
    space = SearchSpace()
    rng = random.Random(seed)
    specs, seen = [], set()
    while len(specs) < n:
        spec = space.random_spec(rng)
        if spec.canonical_key() not in seen:
            seen.add(spec.canonical_key())
            specs.append(spec)
    return specs


def test_children_stop_at_the_rung_where_they_fall_behind(tmp_path):
    specs = _specs(4)
    quality = {
        s.canonical_key(): q for s, q in zip(specs, [0.5, 0.2, 0.9, 0.1])
    }
    train = CurveTrain(lambda spec: quality[spec.canonical_key()])
    task = proxy_lib.ProxyTask(_halving_config(), train_fn=train)
    assert task.rungs == (10, 30, 90)
    results = []
    for index, spec in enumerate(specs):
        work_dir = tmp_path / f"trial_{index}"
        work_dir.mkdir()
        results.append(task.reward(spec, str(work_dir)))
    # 0.5: first at every rung. 0.2: 2nd of 2 at rung 0, stops.
    # 0.9: best of 3 at rung 0 and of 2 at rung 1. 0.1: last, stops.
    assert [len(r.rungs) for r in results] == [3, 1, 3, 1]
    assert [r.metrics["rung"] for r in results] == [2, 0, 2, 0]
    assert results[0].reward == pytest.approx(0.5)  # "highest": last rung
    assert results[1].reward == pytest.approx(0.2 * 10 / 90)
    assert [e["promoted"] for e in results[2].rungs] == [True, True, False]
    assert [e["steps"] for e in results[2].rungs] == [10, 30, 90]
    # Each rung resumed where the previous stopped.
    assert [c for c in train.calls if c[0] == "trial_2"] == [
        ("trial_2", 0, 10),
        ("trial_2", 10, 30),
        ("trial_2", 30, 90),
    ]
    assert results[2].metrics["train_seconds"] == pytest.approx(0.9)
    assert results[2].seconds == pytest.approx(
        sum(e["seconds"] for e in results[2].rungs)
    )


def test_a_kill_during_a_promotion_resumes_without_retraining(tmp_path):
    (spec,) = _specs(1)
    work_dir = tmp_path / "trial_0"
    work_dir.mkdir()
    train = CurveTrain(lambda spec: 0.6, kill_at=("trial_0", 30))
    task = proxy_lib.ProxyTask(_halving_config(), train_fn=train)
    with pytest.raises(Killed):
        task.reward(spec, str(work_dir))
    assert [e.rung for e in rungs_lib.RungLog(str(work_dir)).entries] == [0]
    again = CurveTrain(lambda spec: 0.6)
    result = proxy_lib.ProxyTask(_halving_config(), train_fn=again).reward(
        spec, str(work_dir)
    )
    # Rung 0 is neither trained nor decided again; rung 1 starts at 10.
    assert again.calls == [("trial_0", 10, 30), ("trial_0", 30, 90)]
    assert [e["rung"] for e in result.rungs] == [0, 1, 2]
    assert result.reward == pytest.approx(0.6)


def test_a_failed_rung_fails_the_child_with_its_earlier_rungs(tmp_path):
    (spec,) = _specs(1)
    work_dir = tmp_path / "trial_0"
    work_dir.mkdir()

    def train(config, model_dir, *, strategy, spec, eval_split, until=None):
        if until == 30:
            raise FloatingPointError("nan loss")
        return {"AP": 0.1, "steps": until}

    task = proxy_lib.ProxyTask(
        _halving_config(**{"search.penalty_reward": -0.5}), train_fn=train
    )
    result = task.reward(spec, str(work_dir))
    assert result.status == "failed" and result.reward == -0.5
    assert "nan loss" in result.error
    assert [e["rung"] for e in result.rungs] == [0]


@pytest.mark.parametrize("rule", ["rank", "first"])
def test_final_reward_rule_from_the_config(tmp_path, rule):
    specs = _specs(2)
    train = CurveTrain(lambda spec: 0.3)
    task = proxy_lib.ProxyTask(
        _halving_config(**{"search.rungs.final_reward": rule}), train_fn=train
    )
    (tmp_path / "t0").mkdir()
    first = task.reward(specs[0], str(tmp_path / "t0"))
    expected = 1.0 if rule == "rank" else pytest.approx(0.3 * 10 / 90)
    assert first.reward == expected


class FakeSession:
    """`trainer.open_session`'s session over a `CurveTrain`: `fit` trains
    on, `evaluate` rates what it reached; `events` records the calls."""

    def __init__(self, curve, events, config, model_dir, **kwargs):
        self.curve, self.events = curve, events
        self.config, self.model_dir, self.kwargs = config, model_dir, kwargs
        self.name = os.path.basename(model_dir)
        self.current = True
        events.append(("open", self.name))

    def is_current(self):
        return self.current

    def fit(self, until):
        self.events.append(("fit", self.name, until))
        self.last = self.curve(
            self.config, self.model_dir, until=until, **self.kwargs
        )
        return {"steps": self.last["steps"], "train_seconds": 0.01}

    def evaluate(self):
        return {"AP": self.last["AP"]}

    def close(self):
        self.events.append(("close", self.name))


def _fake_sessions(monkeypatch, curve):
    """Fakes the trainer's sessions and the freeing of memory; returns
    (events, freed, sessions opened)."""
    from nasfpn_tf.train import trainer

    events, freed, opened = [], [], []

    def open_session(config, model_dir, **kwargs):
        opened.append(FakeSession(curve, events, config, model_dir, **kwargs))
        return opened[-1]

    monkeypatch.setattr(trainer, "open_session", open_session)
    monkeypatch.setattr(proxy_lib, "_free_memory", lambda: freed.append(1))
    return events, freed, opened


def test_a_promoted_child_holds_one_trainer_session(tmp_path, monkeypatch):
    """With the trainer's own training, a child opens one session at its
    first rung, trains on in it at each promotion, and closes it when it
    stops, freeing memory once."""
    curve = CurveTrain(lambda spec: 0.5)
    events, freed, _ = _fake_sessions(monkeypatch, curve)
    task = proxy_lib.ProxyTask(_halving_config())
    spec_a, spec_b = _specs(2)
    a, b = tmp_path / "trial_0", tmp_path / "trial_1"
    a.mkdir()
    b.mkdir()
    result = task.reward(spec_a, str(a))
    assert len(result.rungs) == 3 and result.reward == pytest.approx(0.5)
    assert events == [
        ("open", "trial_0"),
        ("fit", "trial_0", 10),
        ("fit", "trial_0", 30),
        ("fit", "trial_0", 90),
        ("close", "trial_0"),
    ]
    assert len(freed) == 1
    curve.quality = lambda spec: 0.1  # behind trial_0 at rung 0: stops
    assert len(task.reward(spec_b, str(b)).rungs) == 1
    assert events[5:] == [
        ("open", "trial_1"),
        ("fit", "trial_1", 10),
        ("close", "trial_1"),
    ]
    assert len(freed) == 2


def test_a_held_session_opens_anew_after_a_failure_or_when_stale(
    tmp_path, monkeypatch
):
    """A transient failure closes the held session (memory freed) and the
    retry opens a new one; so does a session whose work directory was
    trained on elsewhere."""
    curve = CurveTrain(lambda spec: 0.5)
    events, freed, opened = _fake_sessions(monkeypatch, curve)
    fit = FakeSession.fit
    failures = [ConnectionError("storage blinked")]

    def flaky_fit(self, until):
        if until == 30 and failures:
            self.events.append(("fit", self.name, until))
            raise failures.pop()
        result = fit(self, until)
        if until == 30:
            self.current = False  # as if another worker trained it on
        return result

    monkeypatch.setattr(FakeSession, "fit", flaky_fit)
    work_dir = tmp_path / "trial_0"
    work_dir.mkdir()
    result = proxy_lib.ProxyTask(_halving_config()).reward(
        _specs(1)[0], str(work_dir)
    )
    assert result.status == "ok" and result.attempts == 4
    assert [e["rung"] for e in result.rungs] == [0, 1, 2]
    assert events == [
        ("open", "trial_0"),
        ("fit", "trial_0", 10),
        ("fit", "trial_0", 30),  # fails
        ("close", "trial_0"),
        ("open", "trial_0"),
        ("fit", "trial_0", 30),
        ("close", "trial_0"),  # stale
        ("open", "trial_0"),
        ("fit", "trial_0", 90),
        ("close", "trial_0"),
    ]
    assert len(opened) == 3
    assert len(freed) == 2  # after the failure, and at the end


def test_without_rungs_the_trainer_is_called_as_before(tmp_path):
    calls = []

    def train(config, model_dir, *, strategy, spec, eval_split):
        calls.append(config.train.steps)
        return {"AP": 0.25, "steps": config.train.steps}

    config = _halving_config(**{"search.rungs.min_steps": 0})
    result = proxy_lib.ProxyTask(config, train_fn=train).reward(
        _specs(1)[0], str(tmp_path)
    )
    assert calls == [90] and result.reward == 0.25 and result.rungs == ()
    assert "rungs" not in result.to_dict()


def test_halving_config_errors_name_the_key():
    base = config_lib.ExperimentConfig()
    with pytest.raises(config_lib.ConfigError, match="search.rungs.min_steps"):
        config_lib.override(base, {"search.rungs.min_steps": 100})
    with pytest.raises(config_lib.ConfigError, match="search.rungs.eta"):
        config_lib.override(base, {"search.rungs.eta": 1})
    with pytest.raises(
        config_lib.ConfigError, match="search.rungs.final_reward"
    ):
        config_lib.override(base, {"search.rungs.final_reward": "max"})
    with pytest.raises(config_lib.ConfigError, match="search.rungs.min_steps"):
        config_lib.override(base, {"search.rungs.min_steps": -1})


# -- a search with rungs -------------------------------------------------------


def test_a_search_records_every_rung_of_every_child(tmp_path):
    config = config_lib.override(
        _halving_config(),
        {
            "model.max_level": 4,
            "search.space.num_intermediate": 0,
            "search.space.intermediate_levels": [4],
            "search.space.ops": ["sum", "global_attention"],
            "search.algorithm": "random",
            "search.num_samples": 9,
            "search.samples_per_update": 3,
        },
    )

    def quality(spec):
        return int(spec.canonical_key()[:8], 16) / 16**8

    train = CurveTrain(quality)
    proxy = proxy_lib.ProxyTask(config, train_fn=train)
    model_dir = str(tmp_path / "search")
    summary = runner.search(config, model_dir, proxy=proxy)
    with open(os.path.join(model_dir, "history.jsonl")) as f:
        records = [json.loads(line) for line in f]
    assert len(records) == 9 and summary["samples"] == 9
    trained = [r for r in records if r["status"] == "ok"]
    assert trained, "every sample was a repeat"
    for record in trained:
        rungs = record["rungs"]
        assert [e["rung"] for e in rungs] == list(range(len(rungs)))
        assert all(e["promoted"] for e in rungs[:-1])
        assert not rungs[-1]["promoted"]
        assert record["reward"] == rungs[-1]["reward"]
        assert record["metrics"]["rung"] == len(rungs) - 1
    # The first child trained goes through every rung.
    assert len(trained[0]["rungs"]) == 3
    for record in records:
        if record["status"] == "cached":
            source = next(
                r for r in records if r["sample"] == record["cached_from"]
            )
            assert record["rungs"] == source["rungs"]
    # Rerun: the finished search trains nothing again.
    calls = len(train.calls)
    runner.search(
        config, model_dir, proxy=proxy_lib.ProxyTask(config, train_fn=train)
    )
    assert len(train.calls) == calls


def test_progress_plot_counts_children_per_rung(tmp_path):
    from nasfpn_tf.search import history as history_lib
    from nasfpn_tf.search import plots

    def record(sample, rungs, status="ok"):
        return history_lib.SampleRecord(
            step=0,
            sample=sample,
            actions=(0,),
            spec=known.NASFPN_SPEC.to_dict(),
            hash=f"h{sample}",
            reward=0.1,
            status=status,
            cached_from=0 if status == "cached" else None,
            rungs=[_entry(r, 0.1, steps=s).to_dict() for r, s in rungs],
        )

    records = [
        record(0, [(0, 10), (1, 30), (2, 90)]),
        record(1, [(0, 10)]),
        record(2, [(0, 10), (1, 30)]),
        record(3, [(0, 10), (1, 30), (2, 90)], status="cached"),
    ]
    assert plots.rung_counts(records) == [(10, 3), (30, 2), (90, 1)]
    assert plots.rung_counts([record(0, [])]) == []
    assert len(plots.progress_figure(records).axes) == 3
    assert len(plots.progress_figure([record(0, [])]).axes) == 2
    path = str(tmp_path / "progress.png")
    plots.save_progress_plot(records, path)
    assert os.path.getsize(path) > 0


def test_climb_trains_through_the_callable_it_is_given(tmp_path):
    """`rungs.climb` knows no trainer: `train(steps)` trains and rates; a
    second climb of the same work directory finds every rung logged."""
    from nasfpn_tf.search.rater import ProxyResult

    trained = []

    def train(until):
        trained.append(until)
        metrics = {"AP": until / 900, "train_seconds": 1.0}
        return ProxyResult(until / 900, "ok", metrics, seconds=2.0)

    work_dir = tmp_path / "trial_0"
    work_dir.mkdir()
    climb = functools.partial(
        rungs_lib.climb, eta=3, final_rule=rungs_lib.HIGHEST
    )
    result = climb(train, str(work_dir), (10, 30, 90))
    assert trained == [10, 30, 90]  # the first child goes on at every rung
    assert result.reward == pytest.approx(0.1)
    assert result.metrics["rung"] == 2 and result.attempts == 3
    assert result.metrics["train_seconds"] == 3.0 and result.seconds == 6.0
    again = climb(train, str(work_dir), (10, 30, 90))
    assert trained == [10, 30, 90]
    assert (again.reward, again.rungs) == (result.reward, result.rungs)
