"""The two-stage search's finalists (search/finalists.py)."""

import json
import os
import random

import pytest

from nasfpn_tf import config as config_lib
from nasfpn_tf.arch.known import NASFPN_SPEC
from nasfpn_tf.arch.spec import NeckSpec
from nasfpn_tf.search import finalists, runner
from nasfpn_tf.search.history import CACHED, FAILED, OK, SampleRecord
from nasfpn_tf.search.rater import ProxyResult


def _config(count):
    return config_lib.load_config(
        params_override=f"search.rater=supernet,search.supernet.finalists={count}"
    )


def _records(rewards, statuses=None):
    space = runner.make_space(_config(1))
    rng = random.Random(0)
    specs = [space.random_spec(rng) for _ in rewards]
    statuses = statuses or [OK] * len(rewards)
    return [
        SampleRecord(
            step=0,
            sample=i,
            actions=(),
            spec=spec.to_dict(),
            hash=spec.canonical_key(),
            reward=reward,
            status=status,
            error="E: failed" if status == FAILED else None,
        )
        for i, (spec, reward, status) in enumerate(
            zip(specs, rewards, statuses)
        )
    ]


class FakeProxy:
    """Standalone rewards by spec hash; counts the trainings."""

    def __init__(self, rewards):
        self.rewards = rewards
        self.trained = []

    def reward(self, spec, work_dir):
        key = spec.canonical_key()
        self.trained.append(key)
        return ProxyResult(reward=self.rewards[key], status=OK, seconds=1.0)

    def release(self, work_dir):
        pass


def test_pick_keeps_the_best_distinct_specs_and_never_a_failed_one():
    records = _records([0.1, 0.5, 0.3, 0.9, 0.2], [OK, OK, OK, FAILED, OK])
    # Sample 5 repeats sample 1's spec (cached): one finalist, sample 1.
    repeat = SampleRecord(
        **{
            **records[1].__dict__,
            "sample": 5,
            "status": CACHED,
            "cached_from": 1,
        }
    )
    chosen = finalists.pick([*records, repeat], 3)
    assert [r.sample for r in chosen] == [1, 2, 4]


def test_the_answer_is_the_best_finalist_by_its_standalone_reward(tmp_path):
    records = _records([0.1, 0.5, 0.3, 0.4])
    # The supernet ranks 1 > 3 > 2; standalone training says 3 is best.
    standalone = {r.hash: s for r, s in zip(records, [0.9, 0.2, 0.3, 0.6])}
    proxy = FakeProxy(standalone)
    summary = finalists.run(_config(3), str(tmp_path), records, proxy=proxy)
    assert [f["sample"] for f in summary["finalists"]] == [1, 3, 2]
    assert summary["best_sample"] == 3
    assert summary["best_reward"] == 0.6
    assert summary["best_supernet_rank"] == 2
    saved = NeckSpec.load(summary["best_spec"])
    assert saved.canonical_key() == records[3].hash
    with open(tmp_path / "finalists.json") as f:
        assert json.load(f)["best_hash"] == records[3].hash
    text = finalists.final_text(summary, str(tmp_path))
    assert "..." not in text
    assert f"--arch={summary['best_spec']}" in text


def test_a_rerun_trains_only_the_missing_finalists(tmp_path):
    records = _records([0.1, 0.5, 0.3, 0.4])
    standalone = {r.hash: 0.1 * r.sample for r in records}
    first = FakeProxy(standalone)
    finalists.run(_config(2), str(tmp_path), records, proxy=first)
    assert len(first.trained) == 2
    again = FakeProxy(standalone)
    summary = finalists.run(_config(3), str(tmp_path), records, proxy=again)
    assert again.trained == [records[2].hash]
    assert len(summary["finalists"]) == 3


def test_a_log_of_other_finalists_is_named_not_mixed_in(tmp_path):
    records = _records([0.1, 0.5, 0.3, 0.4])
    finalists.run(
        _config(1),
        str(tmp_path),
        records,
        proxy=FakeProxy({r.hash: 0.5 for r in records}),
    )
    # The search went on: another spec now rates best on the supernet.
    changed = [
        SampleRecord(
            **{**r.__dict__, "reward": 1.0 if r.sample == 0 else r.reward}
        )
        for r in records
    ]
    with pytest.raises(finalists.FinalistsError, match="finalists.jsonl"):
        finalists.run(
            _config(1),
            str(tmp_path),
            changed,
            proxy=FakeProxy({r.hash: 0.5 for r in records}),
        )


def test_no_finalist_finished(tmp_path):
    records = _records([0.5])

    class Failing(FakeProxy):
        def reward(self, spec, work_dir):
            return ProxyResult(reward=-1.0, status=FAILED, error="E: boom")

    summary = finalists.run(
        _config(1), str(tmp_path), records, proxy=Failing({})
    )
    assert summary["best_spec"] is None
    assert not os.path.exists(tmp_path / "best_finalist_spec.json")
    assert "no finalist finished" in finalists.final_text(
        summary, str(tmp_path)
    )


def test_finalists_must_not_be_negative():
    with pytest.raises(config_lib.ConfigError, match="finalists"):
        _config(-1)


def test_published_spec_round_trips_as_a_finalist(tmp_path):
    record = SampleRecord(
        step=0,
        sample=0,
        actions=(),
        spec=NASFPN_SPEC.to_dict(),
        hash=NASFPN_SPEC.canonical_key(),
        reward=0.2,
        status=OK,
    )
    summary = finalists.run(
        _config(1),
        str(tmp_path),
        [record],
        proxy=FakeProxy({NASFPN_SPEC.canonical_key(): 0.3}),
    )
    assert NeckSpec.load(summary["best_spec"]) == NASFPN_SPEC
