"""Tests of nasfpn_tf.search.objective and `search.objective`: the reward
from AP and costs, config checks, the proxy's costs per spec."""

import math

import pytest

from nasfpn_tf import config as config_lib
from nasfpn_tf.arch import known
from nasfpn_tf.config import ConfigError, ObjectiveConfig
from nasfpn_tf.search import objective
from nasfpn_tf.search import proxy as proxy_lib

AP = 0.4
GFLOP = objective.FLOPS_PER_GFLOP


def _costs(gflops=2.0, latency_ms=None):
    return objective.Costs(int(gflops * GFLOP), 1000, latency_ms)


def test_ap_objective_is_the_ap():
    assert objective.reward(AP, _costs(), ObjectiveConfig()) == AP


def test_soft_objective_is_mnasnet_reward():
    config = ObjectiveConfig(kind="soft", target=1.0)
    assert objective.reward(AP, _costs(2.0), config) == pytest.approx(
        AP * 2.0**-0.07
    )
    # Cheaper than the target earns more than the AP.
    assert objective.reward(AP, _costs(0.5), config) > AP
    latency = ObjectiveConfig(kind="soft", cost="latency", target=10.0)
    assert objective.reward(
        AP, _costs(latency_ms=20.0), latency
    ) == pytest.approx(AP * 2.0**-0.07)


def test_hard_objective_is_zero_above_the_target():
    config = ObjectiveConfig(kind="hard", target=2.0)
    assert objective.reward(AP, _costs(2.0), config) == AP
    assert objective.reward(AP, _costs(1.0), config) == AP
    assert objective.reward(AP, _costs(2.5), config) == 0.0


def test_latency_objective_without_latency_raises():
    config = ObjectiveConfig(kind="hard", cost="latency", target=5.0)
    with pytest.raises(ValueError, match="latency"):
        objective.reward(AP, _costs(), config)


def test_costs_become_metrics_and_back():
    metrics = _costs(1.5, latency_ms=3.0).metrics()
    assert metrics == {"flops": 1.5e9, "params": 1000.0, "latency_ms": 3.0}
    assert objective.cost_value(metrics, "flops") == 1.5
    assert objective.cost_value(metrics, "latency") == 3.0
    assert objective.cost_value({"AP": 0.1}, "flops") is None
    tflite = objective.Costs(1, 2, tflite_latency_ms=4.0).metrics()
    assert tflite == {"flops": 1.0, "params": 2.0, "tflite_latency_ms": 4.0}
    assert objective.cost_value(tflite, "tflite_latency") == 4.0
    assert objective.cost_value(tflite, "latency") is None


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"kind": "mnas"}, "search.objective.kind must be one of"),
        ({"cost": "energy"}, "search.objective.cost must be one of"),
        ({"kind": "soft"}, "search.objective.target must be > 0"),
        ({"kind": "hard", "target": 0}, "search.objective.target must be > 0"),
        (
            {"kind": "soft", "target": 1.0, "weight": 0.07},
            "search.objective.weight must be < 0",
        ),
        ({"latency_runs": 0}, "search.objective.latency_runs must be"),
        (
            {"cost": "tflite_latency", "tflite_quantization": "int4"},
            "search.objective.tflite_quantization must be one of 'float32'",
        ),
        ({"tflite_threads": 0}, "search.objective.tflite_threads must be"),
    ],
)
def test_bad_values_give_one_line_errors(changes, message):
    override = {f"search.objective.{k}": v for k, v in changes.items()}
    with pytest.raises(ConfigError) as raised:
        config_lib.override(config_lib.ExperimentConfig(), override)
    text = str(raised.value)
    assert text.startswith(message)
    assert "\n" not in text


def test_unknown_objective_key_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("search:\n  objective: {kind: soft, targt: 1.0}\n")
    with pytest.raises(ConfigError, match="search.objective.targt"):
        config_lib.load_config([str(path)])


def test_uses_latency_only_when_the_reward_needs_it():
    assert not ObjectiveConfig(cost="latency").uses_latency
    assert ObjectiveConfig(kind="soft", cost="latency", target=1).uses_latency
    assert not ObjectiveConfig(kind="soft", target=1).uses_latency
    assert ObjectiveConfig(
        kind="hard", cost="tflite_latency", target=1
    ).uses_latency
    assert not ObjectiveConfig(cost="tflite_latency").uses_latency


# -- the proxy's hook ----------------------------------------------------------


class FakeTrain:
    def __init__(self, ap=AP):
        self.ap = ap
        self.calls = 0

    def __call__(self, config, model_dir, *, strategy, spec, eval_split):
        self.calls += 1
        return {"AP": self.ap, "steps": 7}


class FakeCosts:
    def __init__(self, gflops=2.0):
        self.gflops = gflops
        self.calls = []

    def __call__(self, model_config, spec, objective_config):
        self.calls.append((model_config.image_size, spec.canonical_key()))
        return _costs(self.gflops)


def _config(**objective_changes):
    changes = {
        "search.proxy.image_size": 32,
        "search.proxy.filters": 8,
        "search.proxy.repeats": 1,
        **{f"search.objective.{k}": v for k, v in objective_changes.items()},
    }
    return config_lib.override(config_lib.ExperimentConfig(), changes)


def _objective(config, cost_fn):
    return objective.Objective(config.search.objective, cost_fn)


def test_objective_measures_once_per_spec_and_model():
    costs = FakeCosts(gflops=2.0)
    config = _config(kind="soft", target=1.0)
    rates = _objective(config, costs)
    child = config_lib.proxy_experiment(config).model
    spec = known.NASFPN_SPEC
    reward, metrics = rates.rate(child, spec, AP, {"AP": AP})
    assert reward == pytest.approx(AP * 2.0**-0.07)
    assert metrics == {"AP": AP, "flops": 2e9, "params": 1000.0}
    assert rates.rate(child, spec, AP, {})[0] == reward
    assert rates.over_target(child, spec) is None  # soft: always trains
    assert costs.calls == [(32, spec.canonical_key())]
    bigger = config_lib.override(config, {"search.proxy.image_size": 64})
    rates.costs(config_lib.proxy_experiment(bigger).model, spec)
    assert [size for size, _ in costs.calls] == [32, 64]
    # Without a cost function the reward is the AP, nothing measured.
    plain = objective.Objective(ObjectiveConfig())
    assert plain.rate(child, spec, AP, {"AP": AP}) == (AP, {"AP": AP})
    assert plain.over_target(child, spec) is None


def test_proxy_rewards_by_the_objective_and_records_costs(tmp_path):
    costs = FakeCosts(gflops=2.0)
    config = _config(kind="soft", target=1.0)
    config = config_lib.override(config, {"search.proxy.seeds": 2})
    task = proxy_lib.ProxyTask(
        config, train_fn=FakeTrain(), objective=_objective(config, costs)
    )
    spec = known.NASFPN_SPEC
    result = task.reward(spec, str(tmp_path / "a"))
    again = task.reward(spec, str(tmp_path / "b"))
    assert result.reward == pytest.approx(AP * 2.0**-0.07)
    assert again.reward == result.reward
    assert result.metrics["AP"] == AP
    assert result.metrics["flops"] == 2e9
    assert result.metrics["params"] == 1000
    assert "latency_ms" not in result.metrics
    # Measured once per spec (2 seeds, 2 calls), at the proxy's size.
    assert costs.calls == [(32, spec.canonical_key())]


def test_hard_objective_does_not_train_children_over_the_target(tmp_path):
    train = FakeTrain()
    config = _config(kind="hard", target=1.0)
    over = proxy_lib.ProxyTask(
        config, train_fn=train, objective=_objective(config, FakeCosts(2.0))
    )
    result = over.reward(known.NASFPN_SPEC, str(tmp_path / "over"))
    assert train.calls == 0
    assert (result.status, result.reward, result.attempts) == ("ok", 0.0, 0)
    assert result.metrics == {
        "flops": 2e9,
        "params": 1000,
        objective.OVER_TARGET: 1.0,
    }
    # At the target it trains, and earns its AP.
    config = _config(kind="hard", target=2.0)
    at = proxy_lib.ProxyTask(
        config, train_fn=train, objective=_objective(config, FakeCosts(2.0))
    )
    result = at.reward(known.NASFPN_SPEC, str(tmp_path / "at"))
    assert train.calls == 1 and result.reward == AP
    assert objective.OVER_TARGET not in result.metrics


def test_fake_training_alone_records_no_costs(tmp_path):
    task = proxy_lib.ProxyTask(_config(), train_fn=FakeTrain())
    result = task.reward(known.NASFPN_SPEC, str(tmp_path))
    assert result.reward == AP
    assert "flops" not in result.metrics


def test_failing_cost_measurement_fails_the_child(tmp_path):
    def broken(*args):
        raise MemoryError("too big")

    config = _config(kind="hard", target=1.0)
    task = proxy_lib.ProxyTask(
        config, train_fn=FakeTrain(), objective=_objective(config, broken)
    )
    result = task.reward(known.NASFPN_SPEC, str(tmp_path))
    assert result.status == "failed"
    assert "MemoryError" in result.error


def test_measured_costs_of_a_tiny_child():
    config = _config(kind="soft", cost="latency", target=5.0, latency_runs=2)
    child = config_lib.proxy_experiment(config).model
    costs = objective.measure_costs(
        child, known.NASFPN_SPEC, config.search.objective
    )
    assert costs.flops > 0 and costs.params > 0
    assert math.isfinite(costs.latency_ms) and costs.latency_ms > 0


def test_tflite_latency_of_a_tiny_child_is_measured_once_and_recorded(
    tmp_path,
):
    """The child's network converted to TFLite int8 at 32 px (which
    2**max_level does not divide) and timed; cached per spec like the
    other costs, and in the child's metrics."""
    config = _config(
        kind="soft", cost="tflite_latency", target=5.0, latency_runs=2
    )
    config = config_lib.override(config, {"search.proxy.seeds": 2})
    calls = []

    def measure(*args):
        calls.append(args)
        return objective.measure_costs(*args)

    task = proxy_lib.ProxyTask(
        config, train_fn=FakeTrain(), objective=_objective(config, measure)
    )
    result = task.reward(known.NASFPN_SPEC, str(tmp_path / "a"))
    again = task.reward(known.NASFPN_SPEC, str(tmp_path / "b"))
    ms = result.metrics["tflite_latency_ms"]
    assert math.isfinite(ms) and ms > 0
    assert "latency_ms" not in result.metrics
    assert result.metrics["flops"] > 0
    assert result.reward == pytest.approx(AP * (ms / 5.0) ** -0.07)
    assert again.metrics["tflite_latency_ms"] == ms
    assert len(calls) == 1
