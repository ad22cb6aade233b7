"""The fidelity run's report: per spec the proxy AP (mean, std over
seeds) and the reference AP; overall the Spearman and Kendall rank
correlations with bootstrap intervals over specs, the proxy's signal
against its seed-to-seed noise, the cost ratio and a one-line verdict;
written as fidelity.json, a text table and fidelity.png. The trainings it
reads are `nasfpn_tf.search.fidelity`'s.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from absl import logging

from nasfpn_tf import config as config_lib
from nasfpn_tf import files
from nasfpn_tf.arch import known
from nasfpn_tf.arch.spec import NeckSpec
from nasfpn_tf.run_files import FIDELITY_PLOT_FILE as PLOT_FILE
from nasfpn_tf.run_files import FIDELITY_REPORT_FILE as REPORT_FILE
from nasfpn_tf.search.ranking import bootstrap_interval, kendall, spearman

PROXY = "proxy"
REFERENCE = "reference"
SETTINGS = (PROXY, REFERENCE)
# Verdict thresholds: a proxy is worth searching with when the rank
# correlation is positive at the interval's low end and the specs differ by
# more than its noise.
MIN_SNR = 2.0
GOOD_CORRELATION = 0.5
# Proxy trainings per spec the verdict asks for when one left the noise
# unknown.
_SEEDS_FOR_NOISE = 3


def report(
    rows: Sequence[Mapping[str, Any]],
    specs: Sequence[NeckSpec],
    config: config_lib.ExperimentConfig,
) -> dict[str, Any]:
    """The fidelity figures from the finished trainings.

    Specs with no finished proxy or reference training are listed but
    left out of the correlations; failed trainings count as missing.
    """
    settings = config.fidelity
    per_spec = []
    for index, spec in enumerate(specs):
        entry: dict[str, Any] = {
            "spec_index": index,
            "hash": spec.canonical_key(),
            "published": spec.canonical_key()
            == known.NASFPN_SPEC.canonical_key(),
        }
        for setting in SETTINGS:
            mine = [
                r
                for r in rows
                if r["spec_index"] == index and r["setting"] == setting
            ]
            rewards = [r["reward"] for r in mine if r["status"] == "ok"]
            entry[setting] = {
                "rewards": rewards,
                "mean": _mean(rewards),
                "std": _std(rewards),
                "failed": sum(r["status"] != "ok" for r in mine),
                "seconds": sum(r["seconds"] for r in mine),
                "trainings": len(mine),
            }
        per_spec.append(entry)
    complete = [
        e
        for e in per_spec
        if e[PROXY]["mean"] is not None and e[REFERENCE]["mean"] is not None
    ]
    x = [e[PROXY]["mean"] for e in complete]
    y = [e[REFERENCE]["mean"] for e in complete]
    result: dict[str, Any] = {
        "specs": per_spec,
        "complete_specs": len(complete),
        "proxy": dataclasses.asdict(config.search.proxy),
        "reference": dataclasses.asdict(settings.reference),
    }
    interval = {
        "samples": settings.bootstrap_samples,
        "confidence": settings.confidence,
        "seed": settings.spec_seed,
    }
    for name, fn in (("spearman", spearman), ("kendall", kendall)):
        if len(complete) >= 3:
            result[name] = _round(fn(x, y))
            result[f"{name}_interval"] = [
                _round(v) for v in bootstrap_interval(x, y, fn, **interval)
            ]
        else:
            result[name] = None
            result[f"{name}_interval"] = [None, None]
    result["confidence"] = settings.confidence
    result.update(noise_figures(per_spec))
    proxy_seconds = _per_training(per_spec, PROXY)
    reference_seconds = _per_training(per_spec, REFERENCE)
    result["proxy_seconds"] = _round(proxy_seconds)
    result["reference_seconds"] = _round(reference_seconds)
    result["cost_ratio"] = (
        _round(proxy_seconds / reference_seconds)
        if proxy_seconds and reference_seconds
        else None
    )
    result["verdict"] = verdict(result)
    return result


def noise_figures(per_spec: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Signal against noise of the proxy: between-spec std of the means,
    mean within-spec std over seeds, their ratio (SNR), the spread (max -
    min) of the means and its ratio to the within-spec std."""
    means = [e[PROXY]["mean"] for e in per_spec if e[PROXY]["mean"] is not None]
    stds = [e[PROXY]["std"] for e in per_spec if e[PROXY]["std"] is not None]
    between = _std(means)
    within = math.sqrt(sum(s**2 for s in stds) / len(stds)) if stds else None
    spread = (max(means) - min(means)) if len(means) >= 2 else None
    published = [
        e[PROXY]["std"]
        for e in per_spec
        if e["published"] and e[PROXY]["std"] is not None
    ]
    return {
        "between_spec_std": _round(between),
        "within_spec_std": _round(within),
        "snr": _round(between / within)
        if between is not None and within
        else None,
        "spread": _round(spread),
        "spread_over_noise": _round(spread / within)
        if spread is not None and within
        else None,
        "published_std": _round(published[0]) if published else None,
    }


def verdict(result: Mapping[str, Any]) -> str:
    """One line: whether the proxy's reward ranks like the reference, what
    the figures leave unknown, and what to run next."""
    rho, (low, high) = result["spearman"], result["spearman_interval"]
    snr = result["snr"]
    if rho is None and result.get("complete_specs", 0) >= 3:
        # Spearman is undefined when one side gives every spec one AP.
        side, steps = (
            (PROXY, "search.proxy.train_steps")
            if result.get("between_spec_std") == 0
            else (REFERENCE, "fidelity.reference.train_steps")
        )
        return (
            f"undecided: {result['complete_specs']} specs have both results, "
            f"but the {side} gave them all the same AP, so there is no "
            f"ranking to compare; lengthen it ({steps})."
        )
    if rho is None:
        return (
            "undecided: fewer than 3 specs have both proxy and reference "
            "results."
        )
    figures = f"Spearman {rho:.2f} [{_fmt(low)}, {_fmt(high)}], SNR {_fmt(snr)}"
    if rho <= 0:
        return (
            f"unusable: the proxy does not rank specs like the reference "
            f"({figures}); a search with it would follow noise."
        )
    ranks_alike = low is not None and low > 0 and rho >= GOOD_CORRELATION
    ranking = (
        "the proxy ranks specs like the reference"
        if ranks_alike
        else "the proxy ranks specs only loosely like the reference"
    )
    if result["within_spec_std"] is None:
        # One proxy training per spec: no within-spec spread to compare.
        return (
            f"undecided: {ranking} ({figures}), but with one proxy training "
            "per spec its seed-to-seed noise is unknown; rerun with "
            f"fidelity.seeds: {_SEEDS_FOR_NOISE} and the same --model_dir "
            "(finished trainings are kept)."
        )
    # No SNR with a known noise: the seeds agreed exactly (noise 0).
    quiet = snr is None or snr >= MIN_SNR
    if ranks_alike and quiet:
        return f"usable: {ranking} ({figures})."
    if ranks_alike:
        return (
            f"weak: {ranking} ({figures}), but its seed-to-seed noise is "
            f"close to the differences between specs (SNR under {MIN_SNR:g}), "
            "so other seeds may reorder them; average seeds "
            "(search.proxy.seeds) or lengthen the proxy "
            "(search.proxy.train_steps, image_size)."
        )
    return (
        f"weak: {ranking} ({figures}); lengthen the proxy "
        "(search.proxy.train_steps, image_size) or average seeds "
        "(search.proxy.seeds)."
    )


def write_report(result: dict[str, Any], model_dir: str) -> dict[str, Any]:
    """Writes fidelity.json and fidelity.png; prints the table."""
    import json

    result = dict(result)
    result["report"] = os.path.join(model_dir, REPORT_FILE)
    result["plot"] = os.path.join(model_dir, PLOT_FILE)
    try:
        plot(result, result["plot"])
    except Exception as error:  # noqa: BLE001 (a figure is not worth the report)
        logging.warning("Could not draw %s: %s", result["plot"], error)
        result["plot"] = None
    files.write_atomic(result["report"], json.dumps(result, indent=1))
    print(format_table(result), flush=True)
    return result


def format_table(result: Mapping[str, Any]) -> str:
    """The report as text: a row per spec, then the overall figures."""
    lines = [
        f"{'spec':<6}{'proxy AP':>20}{'reference AP':>20}  hash",
    ]
    for e in result["specs"]:
        name = f"{e['spec_index']}{'*' if e['published'] else ''}"
        lines.append(
            f"{name:<6}{_mean_std(e[PROXY]):>20}{_mean_std(e[REFERENCE]):>20}"
            f"  {e['hash'][:12]}"
        )
    lines.append("(* the published NAS-FPN spec)")
    lines.append(
        f"Spearman {_fmt(result['spearman'])} "
        f"[{_fmt(result['spearman_interval'][0])}, "
        f"{_fmt(result['spearman_interval'][1])}], Kendall "
        f"{_fmt(result['kendall'])} [{_fmt(result['kendall_interval'][0])}, "
        f"{_fmt(result['kendall_interval'][1])}] "
        f"({result['confidence']:.0%} bootstrap over specs)"
    )
    lines.append(
        f"SNR {_fmt(result['snr'])} (between-spec std "
        f"{_fmt(result['between_spec_std'])} / within-spec std "
        f"{_fmt(result['within_spec_std'])}); spread of proxy means "
        f"{_fmt(result['spread'])} = {_fmt(result['spread_over_noise'])}x the "
        f"within-spec std"
    )
    lines.append(
        f"cost per training: proxy {_fmt(result['proxy_seconds'])} s, "
        f"reference {_fmt(result['reference_seconds'])} s (ratio "
        f"{_fmt(result['cost_ratio'])})"
    )
    lines.append(f"verdict: {result['verdict']}")
    return "\n".join(lines)


def plot(result: Mapping[str, Any], path: str) -> None:
    """Proxy AP (mean +- std) against reference AP, published spec marked."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(5.5, 4.5))
    for e in result["specs"]:
        px, ref = e[PROXY], e[REFERENCE]
        if px["mean"] is None or ref["mean"] is None:
            continue
        axes.errorbar(
            px["mean"],
            ref["mean"],
            xerr=px["std"] or 0.0,
            yerr=ref["std"] or 0.0,
            fmt="*" if e["published"] else "o",
            markersize=14 if e["published"] else 6,
            color="tab:red" if e["published"] else "tab:blue",
            ecolor="0.6",
            capsize=3,
            label="published NAS-FPN" if e["published"] else None,
        )
        axes.annotate(
            str(e["spec_index"]),
            (px["mean"], ref["mean"]),
            textcoords="offset points",
            xytext=(5, 4),
            fontsize=8,
        )
    axes.set_xlabel("proxy held-out AP (mean ± std over seeds)")
    axes.set_ylabel("reference held-out AP")
    axes.set_title(
        f"Proxy fidelity: Spearman {_fmt(result['spearman'])}, "
        f"SNR {_fmt(result['snr'])}",
        fontsize=10,
    )
    axes.grid(alpha=0.3)
    if any(e["published"] for e in result["specs"]):
        axes.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    files.write_atomic(path, buffer.getvalue())


def _per_training(per_spec, setting) -> float | None:
    seconds = sum(e[setting]["seconds"] for e in per_spec)
    count = sum(e[setting]["trainings"] for e in per_spec)
    return seconds / count if count else None


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _std(values: Sequence[float]) -> float | None:
    """Sample standard deviation (n - 1); None below two values."""
    return float(np.std(values, ddof=1)) if len(values) >= 2 else None


def _round(value: float | None, digits: int = 4) -> float | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return round(float(value), digits)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def _mean_std(entry: Mapping[str, Any]) -> str:
    if entry["mean"] is None:
        return "-"
    if entry["std"] is None:
        return f"{entry['mean']:.4f}"
    return f"{entry['mean']:.4f} ± {entry['std']:.4f}"
