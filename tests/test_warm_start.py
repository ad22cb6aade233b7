"""Tests of warm starts: cache, replay, settings check, resume, the flag."""

import json
import os

import numpy as np
import pytest
from search_helpers import (
    SPACE,
    FormulaProxy,
    ScriptedPolicy,
    distinct_rows,
    formula,
    key,
    scheduling,
)

from nasfpn_tf import config as config_lib
from nasfpn_tf import files
from nasfpn_tf import main as main_lib
from nasfpn_tf.search import controller as controller_lib
from nasfpn_tf.search import history as history_lib
from nasfpn_tf.search import results as results_lib
from nasfpn_tf.search import search_dir as search_dir_lib
from nasfpn_tf.search import warm_start
from nasfpn_tf.search.scheduler import RUN, Scheduler
from nasfpn_tf.search.warm_start import WarmStartError

# The config of SPACE (levels 3..4, one intermediate cell at level 4).
CONFIG = config_lib.override(
    config_lib.ExperimentConfig(),
    {
        "model.max_level": 4,
        "search.space.num_intermediate": 1,
        "search.space.intermediate_levels": [4],
    },
)
TINY_CONTROLLER = config_lib.ControllerConfig(
    lstm_size=8, embedding_size=8, learning_rate=0.05
)


class Crash(BaseException):
    """A simulated kill: not an Exception, so nothing catches it."""


def _controller(seed=0):
    return controller_lib.make_policy(
        "reinforce", SPACE.num_choices, SPACE.mask, TINY_CONTROLLER, seed=seed
    )


def _scheduler(root, policy, num_samples, per_update, warm=None, **kwargs):
    keywords, _ = scheduling(num_samples, per_update, **kwargs)
    scheduler = Scheduler(
        SPACE,
        policy,
        search_dir_lib.SearchDir(str(root)),
        warm_start=warm,
        **keywords,
    )
    scheduler.restore()
    return scheduler


def _run(scheduler, proxy, limit=None):
    """Trains samples as a tuner would, `limit` of them at most."""
    trained = 0
    while limit is None or trained < limit:
        assignment = scheduler.assign("t")
        if assignment.status != RUN:
            break
        spec = SPACE.to_spec(scheduler.actions(assignment.sample))
        results_lib.rate(
            scheduler.search_dir, assignment.sample, spec, proxy, "t"
        )
        scheduler.finish(assignment.sample)
        trained += 1
    return scheduler


def _earlier(root, rows, per_update=2, proxy=None, config=CONFIG):
    """A finished scripted search of `rows` in `root`, with its config."""
    config_lib.save(config, str(root))
    proxy = proxy or FormulaProxy()
    _run(_scheduler(root, ScriptedPolicy(rows), len(rows), per_update), proxy)
    return str(root)


def _load(paths, root):
    return warm_start.load(paths, CONFIG, str(root))


def _lines(path):
    with open(path) as f:
        return f.read().splitlines()


def _saved(root):
    return files.read_json(os.path.join(root, "warm_start.json"))


def test_rewards_rated_before_are_cached_not_trained(tmp_path):
    a, b, c, d, e, f = distinct_rows(6)
    first = _earlier(
        tmp_path / "first", [a, b, c, d], proxy=FormulaProxy(fail=[key(b)])
    )
    history = os.path.join(first, "history.jsonl")
    policy, proxy = ScriptedPolicy([c, e, a, b, f, d]), FormulaProxy()
    root = tmp_path / "second"
    warm = _load([first], root)
    scheduler = _run(_scheduler(root, policy, 6, 2, warm), proxy)
    records = sorted(scheduler.records, key=lambda r: r.sample)
    assert [(r.status, r.cached_from, r.cached_source) for r in records] == [
        ("cached", 2, history),
        ("ok", None, None),
        ("cached", 0, history),
        ("ok", None, None),  # failed there: trained again
        ("ok", None, None),
        ("cached", 3, history),
    ]
    assert proxy.calls == [key(e), key(b), key(f)]
    assert records[0].reward == formula(key(c))
    # The rated records of the first search, 2 per update, come first.
    rated = [a, c, d]
    assert policy.updates[:2] == [
        (rated[:2], [formula(key(r)) for r in rated[:2]]),
        (rated[2:], [formula(key(d))]),
    ]
    assert len(policy.updates) == 2 + 3 and scheduler.updates == 3
    assert policy.num_updates == 5
    saved = _saved(root)
    assert saved["sources"][0]["path"] == history
    assert (saved["sources"][0]["records"], saved["sources"][0]["rated"]) == (
        4,
        3,
    )
    assert (saved["cached"], saved["replayed_updates"]) == (3, 2)
    # The history keeps the source; records cached here do not name one.
    lines = _lines(scheduler.search_dir.history_path)
    again = [history_lib.SampleRecord.from_dict(json.loads(x)) for x in lines]
    assert again == scheduler.records
    assert sum('"cached_source"' in line for line in lines) == 3


def test_a_source_cached_from_a_third_search_points_at_the_first(tmp_path):
    a, b = distinct_rows(2)
    first = _earlier(tmp_path / "first", [a])
    second = tmp_path / "second"
    config_lib.save(CONFIG, str(second))
    warm = _load([first], second)
    _run(_scheduler(second, ScriptedPolicy([a, b]), 2, 1, warm), FormulaProxy())
    third = tmp_path / "third"
    warm = _load([first, str(second)], third)
    scheduler = _run(
        _scheduler(third, ScriptedPolicy([a]), 1, 1, warm), FormulaProxy()
    )
    (record,) = scheduler.records
    history = os.path.join(first, "history.jsonl")
    assert (record.cached_from, record.cached_source) == (0, history)


def test_replay_equals_updating_the_controller_by_hand(tmp_path):
    rows = distinct_rows(5)
    first = _earlier(tmp_path / "first", rows)
    root = tmp_path / "second"
    warmed = _controller()
    _scheduler(root, warmed, 4, 2, _load([first], root), algorithm="reinforce")
    by_hand = _controller()
    for batch in (rows[:2], rows[2:4], rows[4:]):
        rewards = [formula(key(r)) for r in batch]
        by_hand.update(np.asarray(batch, dtype=np.int32), rewards)
    assert warmed.num_updates == by_hand.num_updates == 3
    assert warmed.baseline == by_hand.baseline
    for got, want in zip(
        warmed.trainable_variables, by_hand.trainable_variables
    ):
        np.testing.assert_array_equal(got.numpy(), want.numpy())
    pointer = files.read_json(os.path.join(root, "controller", "latest.json"))
    assert pointer["updates"] == 0  # the replay counts none of its own


def _warm_search(root, first, policy, crash=None):
    """A warm-started search of 4 samples, 2 per update, with `policy` (a
    new one per process); trains `crash` children at most."""
    algorithm = "reinforce" if hasattr(policy, "baseline") else "scripted"
    warm = _load([first], root)
    scheduler = _scheduler(root, policy, 4, 2, warm, algorithm=algorithm)
    return _run(scheduler, FormulaProxy(), limit=crash)


def _resume_after(tmp_path, monkeypatch, point, make_policy):
    """An uninterrupted warm-started search and one interrupted at `point`
    then rerun: (uninterrupted, rerun)."""
    first = _earlier(tmp_path / "first", distinct_rows(5))
    expected = _warm_search(tmp_path / "baseline", first, make_policy())
    root = tmp_path / "resumed"
    if point == "mid_batch":
        _warm_search(root, first, make_policy(), crash=1)
    else:
        with monkeypatch.context() as patch:

            def save_policy(self, policy, updates, algorithm):
                raise Crash("before the pointer")

            patch.setattr(search_dir_lib.SearchDir, "save_policy", save_policy)
            with pytest.raises(Crash):
                _warm_search(root, first, make_policy())
        assert _saved(root)["replayed_updates"] == 3
    resumed = _warm_search(root, first, make_policy())
    assert [r.outcome() for r in resumed.records] == [
        r.outcome() for r in expected.records
    ]
    # Replayed once: 3 warm updates and the search's 2.
    assert resumed.policy.num_updates == expected.policy.num_updates == 5
    return expected, resumed


POINTS = ["in_the_replay_checkpoint", "mid_batch"]


@pytest.mark.parametrize("point", POINTS)
def test_resume_replays_once_and_equals_the_uninterrupted_search(
    tmp_path, monkeypatch, point
):
    rows = distinct_rows(9, seed=1)
    expected, resumed = _resume_after(
        tmp_path, monkeypatch, point, lambda: ScriptedPolicy(rows)
    )
    # The rerun's own calls: the replay again when its checkpoint was not
    # written, else only the search's two updates.
    replayed = 3 if point == "in_the_replay_checkpoint" else 0
    assert resumed.policy.updates == expected.policy.updates[3 - replayed :]


@pytest.mark.slow
@pytest.mark.parametrize("point", POINTS)
def test_a_resumed_controller_equals_the_uninterrupted_one(
    tmp_path, monkeypatch, point
):
    expected, resumed = _resume_after(tmp_path, monkeypatch, point, _controller)
    for got, want in zip(
        resumed.policy.trainable_variables, expected.policy.trainable_variables
    ):
        np.testing.assert_array_equal(got.numpy(), want.numpy())


def test_a_rerun_must_name_the_same_sources(tmp_path):
    a, b, c = distinct_rows(3)
    first = _earlier(tmp_path / "first", [a])
    other = _earlier(tmp_path / "other", [b])
    root = tmp_path / "second"
    _run(
        _scheduler(root, ScriptedPolicy([c]), 1, 1, _load([first], root)),
        FormulaProxy(),
    )
    for warm in (None, _load([other], root), _load([first, other], root)):
        with pytest.raises(WarmStartError, match="started from .*rerun it"):
            _scheduler(root, ScriptedPolicy([c]), 1, 1, warm)
    plain = tmp_path / "plain"
    _run(_scheduler(plain, ScriptedPolicy([c, a]), 2, 1), FormulaProxy(), 1)
    with pytest.raises(WarmStartError, match="started without --warm_start"):
        _scheduler(plain, ScriptedPolicy([c, a]), 2, 1, _load([first], plain))


def test_a_grown_source_is_used_as_it_was_a_changed_one_refused(tmp_path):
    a, b, c = distinct_rows(3)
    first = _earlier(tmp_path / "first", [a, b], per_update=1)
    history = os.path.join(first, "history.jsonl")
    lines = [line + "\n" for line in _lines(history)]
    with open(history, "w") as f:
        f.write(lines[0])
    root = tmp_path / "second"
    policy = ScriptedPolicy([c, b, c])
    scheduler = _scheduler(root, policy, 2, 1, _load([first], root))
    _run(scheduler, FormulaProxy(), limit=1)
    with open(history, "a") as f:
        f.write(lines[1])  # the source went on: b is rated there now
    proxy = FormulaProxy()
    scheduler = _run(
        _scheduler(root, ScriptedPolicy([c, b]), 2, 1, _load([first], root)),
        proxy,
    )
    assert proxy.calls == [key(b)]  # as when the search started
    with open(history, "w") as f:
        f.write(lines[1])
    with pytest.raises(WarmStartError, match="have changed since"):
        _scheduler(root, ScriptedPolicy([c, b]), 2, 1, _load([first], root))


def test_a_record_whose_actions_encode_another_spec_is_refused(tmp_path):
    a, b = distinct_rows(2)
    first = _earlier(tmp_path / "first", [a])
    history = os.path.join(first, "history.jsonl")
    (line,) = _lines(history)
    with open(history, "w") as f:
        f.write(line.replace(key(a), key(b)) + "\n")
    root = tmp_path / "second"
    with pytest.raises(WarmStartError, match="actions encode spec"):
        _scheduler(root, ScriptedPolicy([a]), 1, 1, _load([first], root))


def test_random_search_fills_the_cache_and_replays_nothing(tmp_path):
    a, b = distinct_rows(2)
    first = _earlier(tmp_path / "first", [a])
    root = tmp_path / "second"
    policy = ScriptedPolicy([a, b])
    warm = _load([first], root)
    scheduler = _scheduler(root, policy, 2, 2, warm, algorithm="random")
    _run(scheduler, FormulaProxy())
    assert [r.status for r in scheduler.records] == ["cached", "ok"]
    assert len(policy.updates) == 1 and _saved(root)["replayed_updates"] == 0


def test_other_proxy_settings_are_refused_naming_the_keys(tmp_path):
    earlier = config_lib.override(
        CONFIG,
        {
            "search.proxy.train_steps": 50,
            "runtime.seed": 3,
            # Settings that do not change a reward may differ.
            "search.algorithm": "random",
            "search.num_samples": 99,
            "search.controller.lstm_size": 7,
            "search.oracle_port": 9000,
            "train.log_every": 3,
        },
    )
    first = _earlier(tmp_path / "first", distinct_rows(1), config=earlier)
    with pytest.raises(WarmStartError) as raised:
        _load([first], tmp_path / "second")
    message = str(raised.value)
    assert message.startswith(f"--warm_start={first}: ")
    assert "search.proxy.train_steps 50 there, 100 here" in message
    assert "runtime.seed 3 there, 0 here" in message
    assert "train.steps 50 there, 100 here" in message  # the child's
    for key_ in ("algorithm", "num_samples", "lstm_size", "port", "log_every"):
        assert key_ not in message
    assert "\n" not in message
    same = config_lib.override(earlier, {"search.proxy.train_steps": 100})
    config_lib.save(same, first)
    with pytest.raises(WarmStartError, match="runtime.seed"):
        _load([first], tmp_path / "second")
    config_lib.save(config_lib.override(same, {"runtime.seed": 0}), first)
    assert _load([first], tmp_path / "second").paths == [
        os.path.join(first, "history.jsonl")
    ]


def test_new_config_keys_are_compared_unless_ignored():
    flat = config_lib.diff(
        config_lib.ExperimentConfig(),
        config_lib.override(
            config_lib.ExperimentConfig(), {"search.proxy.seeds": 2}
        ),
    )
    assert list(flat) == ["search.proxy.seeds"]
    assert not warm_start.ignored("search.proxy.seeds")
    assert warm_start.ignored("search.controller.lstm_size")
    assert not warm_start.ignored("search.controllers")
    # Every ignored key names a key or section of the config.
    keys = _flat_keys(config_lib.to_dict(config_lib.ExperimentConfig()))
    for name in warm_start.IGNORED:
        assert any(k == name or k.startswith(name + ".") for k in keys), name


def _flat_keys(data, prefix=""):
    keys = []
    for name, value in data.items():
        dotted = f"{prefix}.{name}" if prefix else name
        if isinstance(value, dict):
            keys += _flat_keys(value, dotted)
        else:
            keys.append(dotted)
    return keys


def test_unusable_paths_are_refused(tmp_path):
    first = _earlier(tmp_path / "first", distinct_rows(1))
    os.remove(os.path.join(first, "config.yaml"))
    with pytest.raises(WarmStartError, match="no config.yaml beside"):
        _load([first], tmp_path / "second")
    with pytest.raises(WarmStartError, match="does not exist"):
        _load([str(tmp_path / "none")], tmp_path / "second")
    config_lib.save(CONFIG, first)
    with pytest.raises(WarmStartError, match="given twice"):
        _load([first, os.path.join(first, "history.jsonl")], tmp_path)
    with pytest.raises(WarmStartError, match="this search's own history"):
        _load([first], first)
    assert _load([], tmp_path) is None


def test_the_flag_is_repeatable_and_for_search_only():
    parser = main_lib.build_parser()
    args = parser.parse_args(["--warm_start=runs/a", "--warm_start", "runs/b"])
    assert args.warm_start == ["runs/a", "runs/b"]
    assert parser.parse_args([]).warm_start == []
    with pytest.raises(SystemExit) as raised:
        main_lib.main(["prog", "--mode=train", "--warm_start=runs/a"])
    assert raised.value.code == 2


def test_the_search_starts_from_an_earlier_one(tmp_path, monkeypatch):
    from nasfpn_tf.search import runner

    for name in ("TUNER_ID", "ORACLE_IP", "ORACLE_PORT"):
        monkeypatch.delenv(f"KERASTUNER_{name}", raising=False)
    config = config_lib.override(
        CONFIG,
        {
            "search.algorithm": "random",
            "search.num_samples": 3,
            "search.samples_per_update": 3,
        },
    )
    first = str(tmp_path / "first")
    runner.search(config, first, proxy=FormulaProxy())
    longer = config_lib.override(config, {"search.num_samples": 5})
    second, proxy = str(tmp_path / "second"), FormulaProxy()
    summary = runner.search(longer, second, proxy=proxy, warm_start=[first])
    # The same seed samples the first search's three again: all cached.
    records, _ = history_lib.read_history(summary["history"])
    assert [r.status for r in records[:3]] == ["cached"] * 3
    assert len(proxy.calls) == summary["trained"] == 5 - summary["cached"]
    assert _saved(second)["sources"][0]["records"] == 3
    with pytest.raises(WarmStartError, match="rerun it with --warm_start="):
        runner.search(longer, second, proxy=FormulaProxy())
