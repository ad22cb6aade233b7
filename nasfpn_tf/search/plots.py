"""The search's progress as a figure, after Figure 5 of NAS-FPN.

Ghiasi et al., CVPR 2019 (arXiv:1904.07392), Figure 5 shows the reward of
the sampled architectures over the controller's training and the number of
unique architectures against the number sampled: as the controller
converges it samples more repeats. `progress_figure` draws both from the
history: left, the mean reward of each controller step's batch and the best
reward so far; right, unique canonical architectures against samples.
With successive halving a third panel counts the children rated at each
rung (trained children only; a repeat is rated by its source).
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from nasfpn_tf import files
from nasfpn_tf.search import history as history_lib

FIGURE_SIZE = (10.0, 4.0)
DPI = 120
MEAN_COLOR = "#3182bd"
BEST_COLOR = "#e6550d"
UNIQUE_COLOR = "#31a354"
RUNG_COLOR = "#756bb1"
REFERENCE_COLOR = "#969696"


def progress_curves(
    records: Sequence[history_lib.SampleRecord],
) -> dict[str, np.ndarray]:
    """The curves of the figure.

    Returns:
        steps [S]: controller steps with at least one sample, ascending;
        mean_reward [S]: mean reward of each step's samples (failed ones
            count with their penalty, as the controller sees them);
        best_reward [S]: best rated reward up to and including the step
            (NaN before the first);
        samples [N]: 1..N, samples in sample order;
        unique [N]: distinct hashes among the first n samples.
    """
    ordered = sorted(records, key=lambda r: r.sample)
    steps = np.array(sorted({r.step for r in ordered}), dtype=np.int64)
    mean, best = [], []
    running = -np.inf
    for step in steps:
        batch = [r for r in ordered if r.step == step]
        mean.append(np.mean([r.reward for r in batch]))
        rated = [r.reward for r in batch if r.rated]
        running = max([running, *rated])
        best.append(running if np.isfinite(running) else np.nan)
    seen: set[str] = set()
    unique = []
    for record in ordered:
        seen.add(record.hash)
        unique.append(len(seen))
    return {
        "steps": steps,
        "mean_reward": np.array(mean, dtype=np.float64),
        "best_reward": np.array(best, dtype=np.float64),
        "samples": np.arange(1, len(ordered) + 1),
        "unique": np.array(unique, dtype=np.int64),
    }


def rung_counts(
    records: Sequence[history_lib.SampleRecord],
) -> list[tuple[int, int]]:
    """(steps, children rated there) per rung, lowest rung first, over the
    records that trained (cached ones repeat their source's rungs); empty
    without successive halving."""
    counts: dict[int, int] = {}
    steps: dict[int, int] = {}
    for record in records:
        if record.status == history_lib.CACHED:
            continue
        for entry in record.rungs:
            rung = int(entry["rung"])
            counts[rung] = counts.get(rung, 0) + 1
            steps[rung] = int(entry["steps"])
    return [(steps[r], counts[r]) for r in sorted(counts)]


def progress_figure(
    records: Sequence[history_lib.SampleRecord], title: str = ""
) -> Figure:
    """The two-panel progress figure (see the module docstring)."""
    curves = progress_curves(records)
    per_rung = rung_counts(records)
    if per_rung:
        width, height = FIGURE_SIZE
        figure = Figure(figsize=(width * 1.5, height), dpi=DPI)
        left, right, rungs = figure.subplots(1, 3)
        _draw_rungs(rungs, per_rung)
    else:
        figure = Figure(figsize=FIGURE_SIZE, dpi=DPI)
        left, right = figure.subplots(1, 2)
    left.plot(
        curves["steps"],
        curves["mean_reward"],
        "o-",
        color=MEAN_COLOR,
        ms=3,
        label="mean reward of the step",
    )
    left.plot(
        curves["steps"],
        curves["best_reward"],
        "-",
        color=BEST_COLOR,
        drawstyle="steps-post",
        label="best reward so far",
    )
    left.xaxis.set_major_locator(MaxNLocator(integer=True))
    left.set_xlabel("controller step")
    left.set_ylabel("reward (held-out AP)")
    left.legend(loc="lower right", fontsize=8)
    left.grid(alpha=0.3)
    n = len(curves["samples"])
    right.plot([0, n], [0, n], "--", color=REFERENCE_COLOR, label="all unique")
    right.plot(
        curves["samples"],
        curves["unique"],
        "-",
        color=UNIQUE_COLOR,
        label="unique architectures",
    )
    right.xaxis.set_major_locator(MaxNLocator(integer=True))
    right.yaxis.set_major_locator(MaxNLocator(integer=True))
    right.set_xlabel("architectures sampled")
    right.set_ylabel("unique architectures")
    right.legend(loc="upper left", fontsize=8)
    right.grid(alpha=0.3)
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return figure


def _draw_rungs(axes, per_rung: Sequence[tuple[int, int]]) -> None:
    positions = np.arange(len(per_rung))
    axes.bar(positions, [n for _, n in per_rung], color=RUNG_COLOR)
    axes.set_xticks(
        positions, [f"rung {i}\n{s} steps" for i, (s, _) in enumerate(per_rung)]
    )
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_ylabel("children rated")
    axes.set_title("successive halving", fontsize=9)
    axes.grid(alpha=0.3, axis="y")


def save_progress_plot(
    records: Sequence[history_lib.SampleRecord], path: str, title: str = ""
) -> None:
    """Writes the progress figure as a PNG to `path` (local or gs://),
    atomically."""
    figure = progress_figure(records, title)
    buffer = io.BytesIO()
    FigureCanvasAgg(figure).print_png(buffer)
    files.write_atomic(path, buffer.getvalue())
