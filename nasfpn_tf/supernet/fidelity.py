"""Fidelity of the shared-weight reward: does the supernet rank specs as
standalone training does?

Shared-weight rankings are known to fail (Yu et al., "Evaluating the Search
Phase of Neural Architecture Search", ICLR 2020: Kendall tau near 0 on a
small space), so the supernet is judged, not trusted. With
`search.rater: supernet`, `--mode=fidelity` rates `fidelity.num_specs`
specs (the published one and seeded random ones, `search/fidelity.py`'s
draw) in two ways:

- by the supernet (trained, or resumed, in `<model_dir>/supernet` unless
  `search.supernet.path` names one), once per BN mode of
  `config.BN_MODES`;
- by standalone reference training (`fidelity.reference`, e.g. 1,000
  steps), `fidelity.reference.seeds` times each, exactly as the proxy
  fidelity run trains them (same job keys and seeds, so rows of an earlier
  run of the same settings in the same `fidelity.jsonl` are reused).

The report gives, per BN mode, Kendall's tau and Spearman's rho of the
supernet rewards against the reference mean, bootstrap intervals over
specs, one-sided exact (permutation) p-values, the overlap of the top 3;
and the noise
ceiling: the same correlations between two reference seeds, which no
proxy can be expected to beat. The target of the project is tau >= 0.5 and
>= 70% of the ceiling's tau.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats

from nasfpn_tf import config as config_lib
from nasfpn_tf import files
from nasfpn_tf.arch.spec import NeckSpec
from nasfpn_tf.run_files import SUPERNET_FIDELITY_REPORT_FILE as REPORT_FILE
from nasfpn_tf.run_files import SUPERNET_FIDELITY_TABLE_FILE as TABLE_FILE
from nasfpn_tf.search import fidelity as proxy_fidelity
from nasfpn_tf.search.ranking import bootstrap_interval, kendall, spearman

SUPERNET = "supernet"
TARGET_TAU = 0.5
TARGET_OF_CEILING = 0.7
TOP = 3
# Finalist counts whose pre-filter the report measures.
PREFILTER_SIZES = (1, 2, 3, 4, 6)


def setting(bn_mode: str) -> str:
    return f"{SUPERNET}-{bn_mode}"


def run(
    config: config_lib.ExperimentConfig,
    model_dir: str,
    *,
    bn_modes: Sequence[str] = config_lib.BN_MODES,
    reference: Any = None,
    rater: Any = None,
) -> dict[str, Any]:
    """Rates (or resumes rating) the fidelity specs both ways; returns the
    report, also written to `supernet_fidelity.json` and `.txt`.

    Args:
        config: the experiment (`search.supernet`, `fidelity`).
        model_dir: the fidelity run's directory.
        bn_modes: the BN modes rated.
        reference: an object with `train(spec, work_dir, seed) ->
            ProxyResult` and `release(work_dir)`; None trains with
            `proxy.ProxyTask` under the reference settings.
        rater: an object with `rate(spec, bn_mode) -> metrics`; None loads
            a `SupernetRater` of the supernet (training it first).
    """
    from nasfpn_tf.search import proxy as proxy_lib
    from nasfpn_tf.search import runner

    space = runner.make_space(config)
    specs = proxy_fidelity.fidelity_specs(config, space)
    proxy_fidelity._check_specs(model_dir, specs)
    log = files.JsonlLog.open(os.path.join(model_dir, proxy_fidelity.LOG_FILE))
    if rater is None:
        rater = _supernet_rater(config, model_dir)
    rate_specs(log, specs, rater, bn_modes)
    # The supernet's figures come first: reference training takes long.
    write_report(report(log.rows, specs, config, bn_modes), model_dir)
    done = {row["job"] for row in log.rows}

    reference_config = proxy_fidelity.setting_config(
        config, proxy_fidelity.REFERENCE
    )
    seeds = config.fidelity.reference.seeds
    todo = [
        proxy_fidelity.Job(k, proxy_fidelity.REFERENCE, s)
        for s in range(seeds)
        for k in range(len(specs))
        if f"{proxy_fidelity.REFERENCE}/{k}/{s}" not in done
    ]
    if todo and reference is None:
        from nasfpn_tf.train import strategy as strategy_lib

        reference = proxy_lib.ProxyTask(
            reference_config,
            strategy=strategy_lib.make_strategy(config.runtime),
        )
    for number, job in enumerate(todo, start=1):
        result = proxy_fidelity.train_job(
            config, model_dir, log, job, specs, reference
        )
        print(
            f"fidelity reference {number}/{len(todo)}: spec "
            f"{job.spec_index} seed {job.seed_index} -> AP "
            f"{result.reward:.4f} ({result.status})",
            flush=True,
        )
    result = report(log.rows, specs, config, bn_modes)
    return write_report(result, model_dir)


def rate_specs(log, specs, rater, bn_modes) -> None:
    """Appends the supernet's rating of every spec under every BN mode
    to `log`, skipping those it holds."""
    done = {row["job"] for row in log.rows}
    for mode in bn_modes:
        for k, spec in enumerate(specs):
            job = f"{setting(mode)}/{k}/0"
            if job in done:
                continue
            metrics = rater.rate(spec, bn_mode=mode)
            log.append(
                {
                    "job": job,
                    "setting": setting(mode),
                    "spec_index": k,
                    "seed_index": 0,
                    "hash": spec.canonical_key(),
                    "reward": metrics["AP"],
                    "status": "ok",
                    "seconds": round(metrics.get("rate_seconds", 0.0), 4),
                    "metrics": metrics,
                    "time": time.time(),
                }
            )
        print(f"fidelity: {len(specs)} specs rated by the supernet ({mode})")


def _supernet_rater(config, model_dir) -> Any:
    from nasfpn_tf.supernet import rater as rater_lib
    from nasfpn_tf.supernet import training

    supernet_dir = rater_lib.default_supernet_dir(config, model_dir)
    rater_lib.check_supernet_matches(config, supernet_dir)
    training.train_supernet(config, supernet_dir)
    return rater_lib.SupernetRater(config, supernet_dir)


def _table(rows, setting_name: str, count: int) -> list[list[float]]:
    """Per spec, the rewards of `setting_name`'s finished rows, by seed."""
    out: list[list[float]] = [[] for _ in range(count)]
    for row in sorted(rows, key=lambda r: r.get("seed_index", 0)):
        if row.get("setting") == setting_name and row.get("status") == "ok":
            out[row["spec_index"]].append(float(row["reward"]))
    return out


def correlation(
    x: Sequence[float], y: Sequence[float], config: config_lib.ExperimentConfig
) -> dict[str, Any]:
    """Kendall and Spearman of x against y with bootstrap intervals and
    exact (permutation) p-values, and the overlap of the top `TOP`."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    settings = config.fidelity
    out: dict[str, Any] = {"n": len(x)}
    for name, fn in (("kendall", kendall), ("spearman", spearman)):
        value = fn(x, y)
        low, high = bootstrap_interval(
            x,
            y,
            fn,
            samples=settings.bootstrap_samples,
            confidence=settings.confidence,
        )
        out[name] = _round(value)
        out[f"{name}_interval"] = [_round(low), _round(high)]
    if len(x) >= 3 and np.ptp(x) > 0 and np.ptp(y) > 0:
        # One-sided: the chance that unrelated rankings agree this well.
        out["kendall_p"] = _round(
            float(
                stats.kendalltau(
                    x, y, method="exact", alternative="greater"
                ).pvalue
            ),
            6,
        )
        out["spearman_p"] = _round(_spearman_p(x, y), 6)
    top = min(TOP, len(x))
    out["top3_overlap"] = len(
        set(np.argsort(-x)[:top]) & set(np.argsort(-y)[:top])
    )
    return out


def prefilter(
    rated: Sequence[float],
    reference: Sequence[float],
    sizes: Sequence[int] = PREFILTER_SIZES,
) -> list[dict[str, Any]]:
    """What a two-stage search (`search.supernet.finalists`) keeps: for
    each k, the reference value of the best of the k specs the supernet
    rates highest, against the best of all and the expected best of k
    specs drawn at random (exact, over every k-subset)."""
    rated = np.asarray(rated, float)
    reference = np.asarray(reference, float)
    n = len(rated)
    ascending = np.sort(reference)
    out = []
    for k in sizes:
        if k >= n:
            continue
        top = np.argsort(-rated, kind="stable")[:k]
        # P(the i-th smallest is the largest of a random k-subset).
        weights = np.array(
            [math.comb(i, k - 1) for i in range(n)], float
        ) / math.comb(n, k)
        out.append(
            {
                "k": k,
                "best_of_top_k": _round(float(reference[top].max())),
                "best_of_random_k": _round(float(weights @ ascending)),
                "best": _round(float(reference.max())),
            }
        )
    return out


def _spearman_p(x: np.ndarray, y: np.ndarray) -> float:
    """One-sided permutation p-value of Spearman's rho (exact for up to 8
    specs, else 20,000 random pairings), vectorised over resamples."""
    rx = stats.rankdata(x)
    ry = stats.rankdata(y)

    def rho(a, b, axis):
        a = a - a.mean(axis=axis, keepdims=True)
        b = b - b.mean(axis=axis, keepdims=True)
        return (a * b).sum(axis) / np.sqrt(
            (a * a).sum(axis) * (b * b).sum(axis)
        )

    return float(
        stats.permutation_test(
            (rx, ry),
            rho,
            permutation_type="pairings",
            vectorized=True,
            n_resamples=20000,
            alternative="greater",
            random_state=0,
        ).pvalue
    )


def report(
    rows: Sequence[Mapping[str, Any]],
    specs: Sequence[NeckSpec],
    config: config_lib.ExperimentConfig,
    bn_modes: Sequence[str] = config_lib.BN_MODES,
) -> dict[str, Any]:
    """The fidelity figures of the finished rows."""
    count = len(specs)
    reference = _table(rows, proxy_fidelity.REFERENCE, count)
    complete = [k for k in range(count) if reference[k]]
    ref_mean = [float(np.mean(reference[k])) for k in complete]
    result: dict[str, Any] = {
        "specs": [
            {
                "spec_index": k,
                "hash": specs[k].canonical_key(),
                "reference": reference[k],
                **{
                    setting(m): _first(_table(rows, setting(m), count)[k])
                    for m in bn_modes
                },
            }
            for k in range(count)
        ],
        "reference_specs": len(complete),
        "reference_seeds": config.fidelity.reference.seeds,
        "modes": {},
    }
    both = [k for k in complete if len(reference[k]) >= 2]
    if len(both) >= 3:
        result["ceiling"] = correlation(
            [reference[k][0] for k in both],
            [reference[k][1] for k in both],
            config,
        )
    for mode in bn_modes:
        table = _table(rows, setting(mode), count)
        keys = [k for k in complete if table[k]]
        if len(keys) < 3:
            continue
        entry = correlation(
            [table[k][0] for k in keys],
            [float(np.mean(reference[k])) for k in keys],
            config,
        )
        seconds = [
            r["seconds"] for r in rows if r.get("setting") == setting(mode)
        ]
        entry["seconds_per_spec"] = _round(float(np.median(seconds)), 4)
        ceiling = result.get("ceiling", {}).get("kendall")
        if ceiling and not math.isnan(ceiling) and ceiling > 0:
            entry["of_ceiling"] = _round(entry["kendall"] / ceiling)
        entry["prefilter"] = prefilter(
            [table[k][0] for k in keys],
            [float(np.mean(reference[k])) for k in keys],
        )
        entry["meets_target"] = bool(
            entry["kendall"] is not None
            and entry["kendall"] >= TARGET_TAU
            and entry.get("of_ceiling", 0) >= TARGET_OF_CEILING
        )
        result["modes"][mode] = entry
    if result["modes"]:
        best = max(
            result["modes"],
            key=lambda m: (
                -2
                if result["modes"][m]["kendall"] is None
                else result["modes"][m]["kendall"]
            ),
        )
        result["best_mode"] = best
    result["reference_mean"] = dict(zip(complete, _rounded(ref_mean)))
    return result


def write_report(result: dict[str, Any], model_dir: str) -> dict[str, Any]:
    result = dict(result)
    result["report"] = os.path.join(model_dir, REPORT_FILE)
    files.write_atomic(result["report"], json.dumps(result, indent=1) + "\n")
    text = format_table(result)
    files.write_atomic(os.path.join(model_dir, TABLE_FILE), text + "\n")
    print(text, flush=True)
    return result


def format_table(result: Mapping[str, Any]) -> str:
    lines = [
        (
            f"supernet fidelity: {result['reference_specs']} specs with a "
            f"reference ({result['reference_seeds']} seeds)"
        ),
        (
            "mode         kendall [interval]      p        spearman "
            "[interval]     p        top3  of ceiling  s/spec"
        ),
    ]
    rows = dict(result.get("modes", {}))
    if "ceiling" in result:
        rows = {"ceiling": result["ceiling"], **rows}
    for name, e in rows.items():
        lines.append(
            f"{name:<12} {_fmt(e.get('kendall'))} "
            f"[{_fmt(e['kendall_interval'][0])}, "
            f"{_fmt(e['kendall_interval'][1])}]  "
            f"{_fmt(e.get('kendall_p'), 4)}  "
            f"{_fmt(e.get('spearman'))} [{_fmt(e['spearman_interval'][0])}, "
            f"{_fmt(e['spearman_interval'][1])}]  "
            f"{_fmt(e.get('spearman_p'), 4)}  {e['top3_overlap']}/{TOP}   "
            f"{_fmt(e.get('of_ceiling'))}       "
            f"{_fmt(e.get('seconds_per_spec'))}"
        )
    for name, e in result.get("modes", {}).items():
        if e.get("prefilter"):
            lines.append(
                f"{name}: reference AP of the best of the supernet's top k "
                "(of k random specs, expected; best of all "
                f"{e['prefilter'][0]['best']:.4f}): "
                + ", ".join(
                    f"k={p['k']} {p['best_of_top_k']:.4f} "
                    f"({p['best_of_random_k']:.4f})"
                    for p in e["prefilter"]
                )
            )
    return "\n".join(lines)


def _first(values: Sequence[float]) -> float | None:
    return _round(values[0]) if values else None


def _round(value, digits: int = 4):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return round(float(value), digits)


def _rounded(values):
    return [_round(v) for v in values]


def _fmt(value, digits: int = 2) -> str:
    return "  n/a" if value is None else f"{value:+.{digits}f}"
