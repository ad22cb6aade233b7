"""Tests of nasfpn_tf.search.pareto: the AP-cost front and its files."""

import json
import os

import pytest

from nasfpn_tf import config as config_lib
from nasfpn_tf.arch import known
from nasfpn_tf.run_files import PARETO_PLOT_FILE, PARETO_SPECS_FILE
from nasfpn_tf.search import history as history_lib
from nasfpn_tf.search import pareto, runner
from nasfpn_tf.search import proxy as proxy_lib

GFLOP = 1e9
SPEC = known.NASFPN_SPEC.to_dict()
PUBLISHED = known.NASFPN_SPEC.canonical_key()

# name: (AP, GFLOPs). Front: H, A, B, F and G (F and G tie).
CRAFTED = {
    "A": (0.30, 1.0),
    "B": (0.35, 2.0),
    "C": (0.32, 2.5),  # B: more AP for less
    "D": (0.35, 3.0),  # B: the same AP for less
    "E": (0.20, 1.0),  # A: more AP at the same cost
    "F": (0.40, 4.0),
    "G": (0.40, 4.0),  # F's twin: neither dominates
    "H": (0.10, 0.5),
}


def _record(sample, key, ap, gflops=None, status="ok", **kwargs):
    metrics = {"AP": ap}
    if gflops is not None:
        metrics.update(flops=gflops * GFLOP, params=1000.0)
    return history_lib.SampleRecord(
        step=0,
        sample=sample,
        actions=(0,),
        spec=SPEC,
        hash=key,
        reward=ap,
        status=status,
        metrics=metrics if status == "ok" else {},
        **kwargs,
    )


def _crafted():
    return [
        _record(i, name, ap, gflops)
        for i, (name, (ap, gflops)) in enumerate(CRAFTED.items())
    ]


def test_front_of_a_crafted_set():
    members = pareto.front(pareto.points(_crafted(), "flops"))
    assert [p.record.hash for p in members] == ["H", "A", "B", "F", "G"]
    assert [p.cost for p in members] == [0.5, 1.0, 2.0, 4.0, 4.0]


def test_points_skip_old_failed_and_repeated_records():
    records = _crafted() + [
        _record(8, "old", 0.9),  # no flops: a history from before costs
        _record(9, "bad", -1.0, status="failed", error="NaN"),
        _record(10, "A", 0.30, status="cached", cached_from=0),
    ]
    hashes = [p.record.hash for p in pareto.points(records, "flops")]
    assert hashes == list(CRAFTED)
    assert pareto.points(records, "latency") == []
    assert pareto.front([]) == []


def test_with_successive_halving_only_the_last_rung_counts():
    rung = {"steps": 10, "reward": 0.0, "seconds": 1.0, "promoted": True}
    records = [
        _record(
            0, "top", 0.30, 2.0, rungs=[{**rung, "rung": r} for r in (0, 1)]
        ),
        _record(1, "stopped", 0.01, 0.5, rungs=[{**rung, "rung": 0}]),
    ]
    assert [p.record.hash for p in pareto.points(records, "flops")] == ["top"]


def test_write_for_search_writes_specs_and_figure(tmp_path):
    records = _crafted() + [_record(8, PUBLISHED, 0.33, 3.5)]
    config = config_lib.ExperimentConfig()
    out = pareto.write_for_search(config, str(tmp_path), records)
    assert out["front"] == 5
    with open(tmp_path / PARETO_SPECS_FILE) as f:
        entries = json.load(f)
    assert [e["sample"] for e in entries] == [7, 0, 1, 5, 6]
    first = entries[0]
    assert (first["AP"], first["cost"], first["cost_unit"]) == (
        0.10,
        0.5,
        "GFLOPs",
    )
    assert first["reward"] == 0.10 and first["flops"] == 0.5 * GFLOP
    assert first["spec"] == SPEC
    assert (tmp_path / PARETO_PLOT_FILE).read_bytes()[:4] == b"\x89PNG"


def test_published_cost_is_the_sampled_one():
    records = [_record(0, PUBLISHED, 0.3, 3.5), _record(1, "x", 0.1, 1.0)]
    config = config_lib.ExperimentConfig()
    assert pareto.published_cost(config, pareto.points(records, "flops")) == (
        3.5
    )


def test_an_old_history_writes_nothing(tmp_path):
    records = [_record(0, "old", 0.5)]
    config = config_lib.ExperimentConfig()
    assert pareto.write_for_search(config, str(tmp_path), records) is None
    assert os.listdir(tmp_path) == []


class CostlyProxy:
    """AP and GFLOPs from the spec's hash."""

    def reward(self, spec, work_dir):
        key = spec.canonical_key()
        ap = int(key[:4], 16) / 16**4
        metrics = {"AP": ap, "flops": int(key[4:8], 16), "params": 10.0}
        return proxy_lib.ProxyResult(ap, "ok", metrics, 0.01)


@pytest.fixture
def _single_process(monkeypatch):
    for name in ("TUNER_ID", "ORACLE_IP", "ORACLE_PORT"):
        monkeypatch.delenv(f"KERASTUNER_{name}", raising=False)


def test_search_ends_with_the_pareto_files(tmp_path, _single_process):
    # Levels 3..4: the published spec (3..7) has no cost here, no line.
    config = config_lib.override(
        config_lib.ExperimentConfig(),
        {
            "model.max_level": 4,
            "search.space.num_intermediate": 0,
            "search.space.intermediate_levels": [4],
            "search.space.ops": ["sum"],
            "search.algorithm": "random",
            "search.num_samples": 4,
            "search.samples_per_update": 2,
        },
    )
    summary = runner.search(config, str(tmp_path), proxy=CostlyProxy())
    assert summary["pareto_specs"] == str(tmp_path / PARETO_SPECS_FILE)
    assert summary["pareto_plot"] == str(tmp_path / PARETO_PLOT_FILE)
    with open(summary["pareto_specs"]) as f:
        assert json.load(f)
