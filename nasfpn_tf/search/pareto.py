"""The search's AP-versus-cost trade-off: Pareto front, specs and figure.

A child is on the front when no other child has at least its AP at no
more cost and is strictly better in one of the two. AP is the held-out AP
of the child (the `AP` metric, whatever the objective made of it); the cost
is `search.objective.cost` in the target's units (GFLOPs or milliseconds).
Each architecture counts once (its first rated sample, as in
`top_specs.json`); records without the cost (histories written before
costs were recorded, or latency never measured) are left out.

At the end of a search `write` puts the front in `pareto_specs.json`
(cheapest first) and draws `pareto.png`: every rated child, the front
highlighted and connected, and the published NAS-FPN spec's cost as a
vertical line (its point too when it was sampled).
"""

from __future__ import annotations

import dataclasses
import io
import os
from collections.abc import Sequence
from typing import Any

from absl import logging
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from nasfpn_tf import config as config_lib
from nasfpn_tf import files
from nasfpn_tf.arch.known import NASFPN_SPEC
from nasfpn_tf.arch.spec import SpecError
from nasfpn_tf.run_files import PARETO_PLOT_FILE, PARETO_SPECS_FILE
from nasfpn_tf.search import history as history_lib
from nasfpn_tf.search import objective as objective_lib
from nasfpn_tf.search.proxy import REWARD_METRIC as AP_METRIC

FIGURE_SIZE = (6.0, 4.5)
DPI = 120
CHILD_COLOR = "#9ecae1"
FRONT_COLOR = "#e6550d"
PUBLISHED_COLOR = "#636363"


@dataclasses.dataclass(frozen=True)
class Point:
    """One rated architecture on the AP-cost plane."""

    ap: float
    cost: float
    record: history_lib.SampleRecord


def points(
    records: Sequence[history_lib.SampleRecord], cost: str
) -> list[Point]:
    """The rated architectures that have an AP and the cost `cost`
    (of `objective.COSTS`), one per hash, in sample order. With successive
    halving only the children rated at the highest rung any reached count:
    an AP after fewer steps is not comparable."""
    ranked = history_lib.ranked(records)
    last_rung = max((len(r.rungs) for r in ranked), default=0)
    out = []
    for record in sorted(ranked, key=lambda r: r.sample):
        if len(record.rungs) < last_rung:
            continue
        value = objective_lib.cost_value(record.metrics, cost)
        ap = record.metrics.get(AP_METRIC)
        if value is not None and ap is not None:
            out.append(Point(ap=float(ap), cost=value, record=record))
    return out


def front(candidates: Sequence[Point]) -> list[Point]:
    """The non-dominated points (AP high, cost low), cheapest first.

    Points with the same AP and cost are all kept: neither dominates.
    """
    ordered = sorted(candidates, key=lambda p: (p.cost, -p.ap, p.record.sample))
    kept: list[Point] = []
    best_cheaper = float("-inf")  # best AP among strictly cheaper points
    index = 0
    while index < len(ordered):
        cost = ordered[index].cost
        group = [p for p in ordered[index:] if p.cost == cost]
        top = group[0].ap
        if top > best_cheaper:
            kept += [p for p in group if p.ap == top]
            best_cheaper = top
        index += len(group)
    return kept


def front_entries(members: Sequence[Point], cost: str) -> list[dict]:
    """`pareto_specs.json`: per front member its AP, cost (and unit),
    reward, sample, hash, every recorded cost and the spec."""
    unit = objective_lib.COSTS[cost][2]
    entries = []
    for point in members:
        record = point.record
        costs = {
            name: record.metrics[name]
            for name in (
                objective_lib.FLOPS,
                objective_lib.PARAMS,
                objective_lib.LATENCY_MS,
                objective_lib.TFLITE_LATENCY_MS,
            )
            if name in record.metrics
        }
        entries.append(
            {
                "AP": point.ap,
                "cost": point.cost,
                "cost_unit": unit,
                "reward": record.reward,
                "sample": record.sample,
                "hash": record.hash,
                **costs,
                "spec": dict(record.spec),
            }
        )
    return entries


def pareto_figure(
    candidates: Sequence[Point],
    cost: str,
    published_cost: float | None = None,
    published_hash: str | None = None,
    title: str = "",
) -> Figure:
    """AP against cost of every point, the front highlighted and
    connected, the published spec's cost as a vertical line."""
    members = front(candidates)
    figure = Figure(figsize=FIGURE_SIZE, dpi=DPI)
    axes = figure.subplots()
    axes.scatter(
        [p.cost for p in candidates],
        [p.ap for p in candidates],
        s=14,
        color=CHILD_COLOR,
        label="children",
    )
    axes.plot(
        [p.cost for p in members],
        [p.ap for p in members],
        "o-",
        color=FRONT_COLOR,
        ms=5,
        drawstyle="steps-post",
        label="Pareto front",
    )
    if published_cost is not None:
        axes.axvline(
            published_cost,
            color=PUBLISHED_COLOR,
            linestyle="--",
            label="published NAS-FPN spec",
        )
    sampled = [p for p in candidates if p.record.hash == published_hash]
    if sampled:
        axes.scatter(
            [sampled[0].cost],
            [sampled[0].ap],
            marker="*",
            s=120,
            color=PUBLISHED_COLOR,
            zorder=3,
        )
    axes.set_xlabel(objective_lib.COSTS[cost][2])
    axes.set_ylabel("held-out AP")
    axes.legend(loc="lower right", fontsize=8)
    axes.grid(alpha=0.3)
    if title:
        axes.set_title(title, fontsize=10)
    figure.tight_layout()
    return figure


def write(
    root: str,
    candidates: Sequence[Point],
    cost: str,
    published_cost: float | None = None,
    published_hash: str | None = None,
    title: str = "",
) -> dict[str, Any]:
    """Writes `pareto_specs.json` and `pareto.png` to the search
    directory `root`, atomically; returns their paths and the front's
    size."""
    specs_path = os.path.join(root, PARETO_SPECS_FILE)
    plot_path = os.path.join(root, PARETO_PLOT_FILE)
    members = front(candidates)
    files.write_json_atomic(specs_path, front_entries(members, cost))
    figure = pareto_figure(
        candidates, cost, published_cost, published_hash, title
    )
    buffer = io.BytesIO()
    FigureCanvasAgg(figure).print_png(buffer)
    files.write_atomic(plot_path, buffer.getvalue())
    return {"specs": specs_path, "plot": plot_path, "front": len(members)}


def published_cost(
    config: config_lib.ExperimentConfig, candidates: Sequence[Point]
) -> float | None:
    """The published spec's cost at the proxy's size: as recorded when it
    was sampled, else measured; None when it cannot be measured (a model
    with other levels than the published P3-P7)."""
    key = NASFPN_SPEC.canonical_key()
    for point in candidates:
        if point.record.hash == key:
            return point.cost
    objective = config.search.objective
    model = config.model
    try:
        NASFPN_SPEC.check_levels(model.min_level, model.max_level)
    except SpecError:
        return None
    try:
        # The children's meter: only the published neck is traced anew.
        costs = objective_lib.shared_meter()(
            config_lib.proxy_experiment(config).model, NASFPN_SPEC, objective
        )
    except Exception as error:  # noqa: BLE001 (the line is optional)
        logging.warning("No cost for the published spec: %s", error)
        return None
    return objective_lib.cost_value(costs.metrics(), objective.cost)


def write_for_search(
    config: config_lib.ExperimentConfig,
    root: str,
    records: Sequence[history_lib.SampleRecord],
) -> dict[str, Any] | None:
    """The front, specs and figure of a search's `records` in `root`;
    None (nothing written) when no record has the objective's cost."""
    objective = config.search.objective
    candidates = points(records, objective.cost)
    if not candidates:
        return None
    title = (
        f"{config.search.algorithm} search: {len(candidates)} architectures, "
        f"objective {objective.kind}"
    )
    return write(
        root,
        candidates,
        objective.cost,
        published_cost(config, candidates),
        NASFPN_SPEC.canonical_key(),
        title,
    )
