"""A child's reward from its held-out AP and its costs (`search.objective`).

MnasNet (Tan et al., CVPR 2019, arXiv:1807.11626, Eq. 2) searches for
accuracy under a latency target T with the reward ``ACC * (LAT / T) ** w``:
the soft form uses ``w = -0.07`` on both sides of the target (a child twice
as costly as another earns about 5% less); the hard form here gives AP at
or below the target and 0 above it. The cost is the analytic FLOPs of the
child's network at the proxy image size (`modeling/flops.py`, cheap and
the same on every host), its median measured latency on the search host
in TensorFlow, or that of the network converted to TFLite and run in the
TFLite interpreter, as a phone or edge board runs it
(`modeling/latency.py`; seconds more per child for the conversion).

FLOPs and parameters are recorded for every child whatever the objective
(they take a build and a trace, seconds for a proxy child); latency only
when the objective uses it, as timing takes longer and varies with the
host.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

from absl import logging

from nasfpn_tf import config as config_lib
from nasfpn_tf.arch.spec import NeckSpec

# The metric names the costs have in a child's metrics (history.jsonl).
FLOPS = "flops"
PARAMS = "params"
LATENCY_MS = "latency_ms"
TFLITE_LATENCY_MS = "tflite_latency_ms"
# Metric of a child rated 0 untrained, its cost over the hard objective's
# target.
OVER_TARGET = "over_target"
# `search.objective.target` is in GFLOPs for the "flops" cost.
FLOPS_PER_GFLOP = 1e9
# Cost name -> (metric, units per target unit, axis label).
COSTS = {
    "flops": (FLOPS, FLOPS_PER_GFLOP, "GFLOPs"),
    "latency": (LATENCY_MS, 1.0, "latency (ms)"),
    "tflite_latency": (TFLITE_LATENCY_MS, 1.0, "TFLite latency (ms)"),
}


@dataclasses.dataclass(frozen=True)
class Costs:
    """What a child's network costs.

    Attributes:
        flops: FLOPs of one forward pass at batch 1 (`modeling/flops.py`).
        params: weights of the detector.
        latency_ms: median forward time on the search host, or None when
            not measured.
        tflite_latency_ms: median forward time in the TFLite
            interpreter, or None when not measured.
    """

    flops: int
    params: int
    latency_ms: float | None = None
    tflite_latency_ms: float | None = None

    def metrics(self) -> dict[str, float]:
        """The costs under their metric names (latencies only if
        measured)."""
        out = {FLOPS: float(self.flops), PARAMS: float(self.params)}
        if self.latency_ms is not None:
            out[LATENCY_MS] = float(self.latency_ms)
        if self.tflite_latency_ms is not None:
            out[TFLITE_LATENCY_MS] = float(self.tflite_latency_ms)
        return out


CostFn = Callable[
    [config_lib.ModelConfig, NeckSpec, config_lib.ObjectiveConfig], Costs
]


def cost_value(costs: Mapping[str, float], cost: str) -> float | None:
    """The cost `cost` (of COSTS) in a child's metrics, in the target's
    units (GFLOPs or ms); None when the metrics lack it (a history older
    than the costs, or latency not measured)."""
    metric, per_unit, _ = COSTS[cost]
    value = costs.get(metric)
    return None if value is None else float(value) / per_unit


def reward(
    ap: float, costs: Costs, config: config_lib.ObjectiveConfig
) -> float:
    """The reward of a child with held-out `ap` and `costs`.

    Raises:
        ValueError: the objective needs a cost `costs` does not have.
    """
    if config.kind == "ap":
        return ap
    cost = cost_value(costs.metrics(), config.cost)
    if cost is None:
        raise ValueError(
            f"search.objective.cost {config.cost!r}: the child's costs "
            "have no measured latency"
        )
    ratio = cost / config.target
    if config.kind == "hard":
        return ap if ratio <= 1 else 0.0
    return ap * math.pow(ratio, config.weight)


class Objective:
    """`search.objective` applied to a search's children: the reward of a
    child from its held-out AP and its costs, which are measured once per
    spec (canonical key) and model config.

    Args:
        config: `search.objective`.
        cost_fn: `(model_config, spec, objective_config) -> Costs`, e.g.
            `shared_meter()`; None records no costs and the reward is the
            AP (for the "ap" objective only).
    """

    def __init__(
        self,
        config: config_lib.ObjectiveConfig,
        cost_fn: CostFn | None = None,
    ):
        self.config = config
        self.cost_fn = cost_fn
        self._costs: dict[tuple[config_lib.ModelConfig, str], Costs] = {}

    def costs(
        self, model_config: config_lib.ModelConfig, spec: NeckSpec
    ) -> Costs:
        """What the child `spec` with `model_config` costs."""
        key = (model_config, spec.canonical_key())
        if key not in self._costs:
            self._costs[key] = self.cost_fn(model_config, spec, self.config)
        return self._costs[key]

    def rate(
        self,
        model_config: config_lib.ModelConfig,
        spec: NeckSpec,
        ap: float,
        metrics: Mapping[str, Any],
    ) -> tuple[float, dict[str, Any]]:
        """(reward, `metrics` with the costs) of a child with held-out
        `ap`."""
        if self.cost_fn is None:
            return ap, dict(metrics)
        costs = self.costs(model_config, spec)
        return reward(ap, costs, self.config), {**metrics, **costs.metrics()}

    def over_target(
        self, model_config: config_lib.ModelConfig, spec: NeckSpec
    ) -> dict[str, float] | None:
        """Under the hard objective, a child whose cost is over the target
        earns 0 whatever its AP, so it need not train: its metrics then
        (its costs and `over_target`, no AP). None when it must train, or
        when its cost cannot be measured here (training then measures it
        again and fails the child on the error)."""
        if self.config.kind != "hard" or self.cost_fn is None:
            return None
        try:
            costs = self.costs(model_config, spec)
        except Exception:  # noqa: BLE001 (training reports it again)
            return None
        cost = cost_value(costs.metrics(), self.config.cost)
        if cost is None or cost <= self.config.target:
            return None
        logging.info(
            "Child %s: %s %.4g over the hard target %.4g; not trained.",
            spec.canonical_key()[:12],
            self.config.cost,
            cost,
            self.config.target,
        )
        return {**costs.metrics(), OVER_TARGET: 1.0}


def measure_costs(
    model_config: config_lib.ModelConfig,
    spec: NeckSpec,
    objective: config_lib.ObjectiveConfig,
) -> Costs:
    """Builds the child's detector at `model_config.image_size` and
    counts its FLOPs and parameters, and times it in TensorFlow or TFLite
    when the objective's cost is that latency."""
    from nasfpn_tf.modeling import detector, flops, latency

    size = model_config.image_size
    model = detector.build_detector(model_config, spec=spec, input_size=size)
    latency_ms = tflite_latency_ms = None
    if objective.uses_latency and objective.cost == "latency":
        latency_ms = latency.model_latency_ms(
            model, size, objective.latency_runs
        )
    elif objective.uses_latency:
        tflite_latency_ms = latency.tflite_latency_ms(
            model,
            size,
            objective.latency_runs,
            objective.tflite_quantization,
            objective.tflite_threads,
        )
    return Costs(
        flops=flops.model_flops(model, size),
        params=flops.count_params(model),
        latency_ms=latency_ms,
        tflite_latency_ms=tflite_latency_ms,
    )


class CostMeter:
    """`measure_costs` for the children of one search: the same costs,
    but the backbone and head, which all children share, are counted once
    (`flops.NeckCounter`); only a latency objective builds each child."""

    def __init__(self):
        self._counters: dict[config_lib.ModelConfig, object] = {}

    def __call__(
        self,
        model_config: config_lib.ModelConfig,
        spec: NeckSpec,
        objective: config_lib.ObjectiveConfig,
    ) -> Costs:
        if objective.uses_latency:
            return measure_costs(model_config, spec, objective)
        from nasfpn_tf.modeling import flops

        counter = self._counters.get(model_config)
        if counter is None:
            counter = self._counters[model_config] = flops.NeckCounter(
                model_config
            )
        count, params = counter(spec)
        return Costs(flops=count, params=params)


_SHARED_METER = CostMeter()


def shared_meter() -> CostMeter:
    """The process's `CostMeter`: the proxy's children and the search's
    end (the published spec's cost) count the shared backbone and head
    once between them."""
    return _SHARED_METER
