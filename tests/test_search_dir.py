"""Tests of the search directory: result files, controller state, trials."""

import os

import pytest
import tensorflow as tf
from search_helpers import sample_record as _record

from nasfpn_tf import files
from nasfpn_tf.arch import known
from nasfpn_tf.arch.spec import NeckSpec
from nasfpn_tf.search import controller
from nasfpn_tf.search import history as history_lib
from nasfpn_tf.search import search_dir as search_dir_lib


def test_write_results_best_spec_loads_as_arch(tmp_path):
    search_dir = search_dir_lib.SearchDir(str(tmp_path))
    assert search_dir.write_results([_record(0, status="failed")]) is None
    assert not os.path.exists(search_dir.best_spec_path)
    records = [_record(i, reward=r) for i, r in enumerate([0.1, 0.5, 0.3])]
    records.append(_record(3, reward=0.6, spec=known.NASFPN_SPEC))
    best = search_dir.write_results(records, top_k=2)
    assert best.sample == 3
    assert NeckSpec.load(search_dir.best_spec_path) == known.NASFPN_SPEC
    top = files.read_json(search_dir.top_specs_path)
    assert [(t["rank"], t["sample"], t["reward"]) for t in top] == [
        (1, 3, 0.6),
        (2, 1, 0.5),
    ]
    assert [tuple(b[:2]) for b in top[0]["block_specs"]] == [
        (b[0], b[1]) for b in known.NASFPN_BLOCK_SPECS
    ]
    assert NeckSpec.from_dict(top[1]["spec"]) == records[1].neck_spec()


def test_policy_checkpoints_and_pointer(tmp_path):
    search_dir = search_dir_lib.SearchDir(str(tmp_path))
    assert search_dir.latest_policy("random") is None
    policy = controller.RandomPolicy((3, 4), seed=1)
    for updates in range(1, 5):
        policy.sample(2)
        search_dir.save_policy(policy, updates, "random")
    updates, prefix = search_dir.latest_policy("random")
    assert updates == 4
    names = {p.split(".")[0] for p in os.listdir(search_dir.controller_dir)}
    assert names == {"update-000003", "update-000004", "latest"}
    restored = controller.RandomPolicy((3, 4), seed=1)
    restored.restore(prefix)
    assert (restored.sample(5).actions == policy.sample(5).actions).all()
    with pytest.raises(history_lib.HistoryError, match="algorithm 'random'"):
        search_dir.latest_policy("ppo")
    for path in tf.io.gfile.glob(prefix + "*"):
        os.remove(path)
    with pytest.raises(history_lib.HistoryError, match="missing"):
        search_dir.latest_policy("random")


def test_trial_dirs_are_named_by_sample(tmp_path):
    search_dir = search_dir_lib.SearchDir(str(tmp_path))
    assert search_dir.trial_dir(12).endswith(
        os.path.join("trials", "trial_000012")
    )
    assert search_dir.result_path(3).endswith("trial_000003/result.json")
