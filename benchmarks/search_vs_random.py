"""Controller search against random search at the same sample budget.

Each algorithm runs the whole search harness (`runner.search`: KerasTuner
oracle, proxy, history) on the same space, proxy and budget; random search
is NAS-FPN's baseline (Ghiasi et al., CVPR 2019, arXiv:1904.07392, Sec. 3,
Fig. 5). With `--proxy=train` (the default) every child really trains on
the generated data and its reward is held-out AP; the published NAS-FPN
spec is trained by the same proxy as a reference. `--proxy=match` rates a
spec by the share of its decisions equal to the published spec's instead,
a cheap check of the harness rather than of detection.

With `--retrain_seeds N` the best spec of every search and the published
spec are then trained again with the reference setting (the config's
`fidelity.reference`, longer than the proxy) from N seeds each, and a
summary row per algorithm gives the median best proxy reward, the median
samples to the best, and the retrained AP (mean and std over runs and
seeds) next to the published spec's: whether the search found a neck at
least as good as the published one, measured outside its own proxy.

The default budget (8 samples per algorithm, 60 proxy steps of the tiny
config) shows the harness only: children that short stay near AP 0 (see
`--mode=fidelity`, which measures whether a proxy ranks specs). The
demonstration on the default task needs the 500-step proxy of
`configs/tiny_search.yaml` (about 2 minutes per child on one CPU core).
On a machine with several cores, run one algorithm per process with one
thread each (on 2 cores that trains 1.4x the children per hour of one
process with two threads), then merge what they printed:

  ARGS="--config_file configs/tiny_search.yaml --samples 6 \
      --samples_per_update 3 --train_steps 500 --seeds 3 --retrain_seeds 2 \
      --params_override fidelity.reference.train_steps=700 \
      --out_dir runs/search_vs_random"
  export TF_NUM_INTRAOP_THREADS=1 TF_NUM_INTEROP_THREADS=1
  python benchmarks/search_vs_random.py $ARGS --algorithms ppo > ppo.out &
  python benchmarks/search_vs_random.py $ARGS --algorithms random \
      --no_published > random.out &
  wait
  python benchmarks/search_vs_random.py --merge ppo.out random.out

PPO and random search sample alike until PPO's first update, and a
child's reward depends only on the search seed and the spec
(`proxy.child_seeds`), so the random arm can reuse the PPO arm's rewards
instead of training the same children again: run both in one process,
PPO first, with `--share_rewards` (`--algorithms ppo,random`).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import statistics
import sys
import tempfile
import time

if __package__ in (None, ""):  # run as a file
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks import common

common.quiet_tensorflow()

from nasfpn_tf import config as config_lib
from nasfpn_tf.arch import known
from nasfpn_tf.arch.spec import NeckSpec
from nasfpn_tf.search import fidelity, runner
from nasfpn_tf.search import history as history_lib
from nasfpn_tf.search import proxy as proxy_lib

PROXIES = ("train", "match")
COLUMNS = (
    "case",
    "seed",
    "samples",
    "trained",
    "cached",
    "failed",
    "unique",
    "best",
    "first_half_mean",
    "second_half_mean",
    "samples_to_best",
    "retrained",
    "seconds",
)


class MatchProxy:
    """Reward = share of decisions equal to the published spec's."""

    def __init__(self, space):
        self.space = space
        self.target = space.from_spec(known.NASFPN_SPEC)

    def reward(self, spec, work_dir):
        actions = self.space.from_spec(spec)
        share = sum(a == t for a, t in zip(actions, self.target)) / len(actions)
        return proxy_lib.ProxyResult(share, "ok", {"AP": share}, 0.0)

    def train(self, spec, work_dir, seed):
        del seed
        return self.reward(spec, work_dir)


def summarize(summary: dict) -> dict:
    """Reward figures of one finished search (``runner.search``'s
    summary, and its history for the rewards in sample order)."""
    records, _ = history_lib.read_history(summary["history"])
    records.sort(key=lambda r: r.sample)
    rewards = [r.reward for r in records]
    half = len(rewards) // 2
    best, best_sample = summary["best_reward"], summary["best_sample"]
    return {
        "samples": summary["samples"],
        "best": None if best is None else round(best, 4),
        "first_half_mean": round(statistics.mean(rewards[:half]), 4)
        if half
        else None,
        "second_half_mean": round(statistics.mean(rewards[half:]), 4),
        "samples_to_best": None if best_sample is None else best_sample + 1,
        "rewards": [round(r, 4) for r in rewards],
    }


def run_search(
    config: config_lib.ExperimentConfig,
    algorithm: str,
    seed: int,
    model_dir: str,
    proxy,
    proxy_kind: str,
    warm_start: tuple[str, ...] = (),
) -> dict:
    config = config_lib.override(
        config, {"search.algorithm": algorithm, "runtime.seed": seed}
    )
    start = time.perf_counter()
    summary = runner.search(
        config, model_dir, proxy=proxy, warm_start=warm_start
    )
    seconds = time.perf_counter() - start
    row = {"case": algorithm, "seed": seed, "proxy_kind": proxy_kind}
    row.update(
        {k: summary[k] for k in ("trained", "cached", "failed", "unique")}
    )
    row.update(summarize(summary))
    row["seconds"] = round(seconds, 1)
    row["best_spec"] = summary.get("best_spec")
    return row


def retrain(trainer, spec, seeds: int, config, work_dir: str) -> list[float]:
    """Rewards of `spec` trained by `trainer` (a reference-setting proxy)
    from `seeds` seeds, the search's own seeds for the spec."""
    rewards = []
    keys = proxy_lib.child_seeds(
        config.runtime.seed, spec.canonical_key(), seeds
    )
    for index, seed in enumerate(keys):
        result = trainer.train(spec, os.path.join(work_dir, f"s{index}"), seed)
        if result.status == proxy_lib.OK:
            rewards.append(result.reward)
    return rewards


def summary_rows(rows: list[dict], published: list[float]) -> list[dict]:
    """Per algorithm: median best proxy reward and samples to the best,
    retrained AP over every run's best spec and seed, and the published
    spec's retrained AP beside it."""
    out = []
    for algorithm in dict.fromkeys(r["case"] for r in rows if "seed" in r):
        mine = [r for r in rows if r["case"] == algorithm and "seed" in r]
        retrained = [v for r in mine for v in r.get("retrained_rewards", [])]
        out.append(
            {
                "case": f"{algorithm} (median of {len(mine)})",
                "best": _median([r["best"] for r in mine]),
                "samples_to_best": _median(
                    [r["samples_to_best"] for r in mine]
                ),
                "retrained": _mean_std(retrained),
                "retrained_mean": _mean(retrained),
                "published_retrained": _mean_std(published),
            }
        )
    return out


def _median(values):
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 4) if values else None


def _mean(values):
    return round(statistics.mean(values), 4) if values else None


def _mean_std(values) -> str | None:
    if not values:
        return None
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_search_flags(
        parser,
        samples=8,
        samples_per_update=4,
        train_steps=60,
        proxies=PROXIES,
        algorithms="ppo,random",
    )
    common.add_run_flags(parser)
    parser.add_argument("--seeds", type=common.positive_int, default=1)
    parser.add_argument(
        "--no_published",
        action="store_true",
        help="skip training the published NAS-FPN spec as a reference",
    )
    parser.add_argument(
        "--share_rewards",
        action="store_true",
        help="a random arm reuses the rewards of the specs the arms before "
        "it (same seed) trained, through the search's --warm_start: a "
        "reward depends on the seed and spec only, and random search "
        "learns nothing from them; learning arms are never warm-started",
    )
    return parser.parse_args(argv)


def merge(paths: list[str]) -> list[dict]:
    """The rows printed by earlier runs (their other output lines are
    skipped) and the per-algorithm summary over all of them."""
    rows = []
    for path in paths:
        with open(path) as f:
            for line in f:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a progress line
                case = str(row.get("case")) if isinstance(row, dict) else ""
                if case and case != "machine" and " (median of " not in case:
                    rows.append(row)
    published = [
        value
        for row in rows
        if row["case"] == "published NAS-FPN"
        for value in row.get("retrained_rewards", [])
    ]
    return rows + summary_rows(rows, published)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    if args.merge:
        rows = [common.emit(row) for row in merge(args.merge)]
        common.print_table(
            f"Search vs random, merged from {len(args.merge)} outputs",
            rows,
            COLUMNS,
        )
        return rows
    config = common.search_config(args)
    out_dir = args.out_dir or tempfile.mkdtemp(prefix="search_vs_random_")
    space = runner.make_space(config)
    common.emit({"case": "machine", **common.machine_info()})
    if args.proxy == "match":
        reference = MatchProxy(space)
    else:
        reference = proxy_lib.ProxyTask(
            fidelity.setting_config(config, fidelity.REFERENCE)
        )
    rows = []
    published: list[float] = []
    try:
        for seed in range(args.seeds):
            histories: list[str] = []
            for algorithm in args.algorithms:
                proxy = MatchProxy(space) if args.proxy == "match" else None
                model_dir = os.path.join(out_dir, f"{algorithm}-seed{seed}")
                shared = args.share_rewards and algorithm == "random"
                row = run_search(
                    config,
                    algorithm,
                    seed,
                    model_dir,
                    proxy,
                    args.proxy,
                    warm_start=tuple(histories) if shared else (),
                )
                histories.append(os.path.join(model_dir, "history.jsonl"))
                if args.retrain_seeds and row["best_spec"]:
                    spec = NeckSpec.load(row["best_spec"])
                    row["retrained_rewards"] = retrain(
                        reference,
                        spec,
                        args.retrain_seeds,
                        config,
                        os.path.join(model_dir, "retrained"),
                    )
                    row["retrained"] = _mean_std(row["retrained_rewards"])
                rows.append(common.emit(row))
        if not args.no_published:
            start = time.perf_counter()
            if args.proxy == "match":
                result = MatchProxy(space).reward(known.NASFPN_SPEC, "")
            else:
                work_dir = os.path.join(out_dir, "published")
                result = proxy_lib.ProxyTask(config).reward(
                    known.NASFPN_SPEC, work_dir
                )
            row = {
                "case": "published NAS-FPN",
                "proxy_kind": args.proxy,
                "samples": 1,
                "trained": 1,
                "best": round(result.reward, 4),
                "status": result.status,
                "error": result.error,
            }
            if args.retrain_seeds:
                published = retrain(
                    reference,
                    known.NASFPN_SPEC,
                    args.retrain_seeds,
                    config,
                    os.path.join(out_dir, "published-retrained"),
                )
                row["retrained_rewards"] = published
                row["retrained"] = _mean_std(published)
            row["seconds"] = round(time.perf_counter() - start, 1)
            rows.append(common.emit(row))
        if args.seeds > 1 or args.retrain_seeds:
            for row in summary_rows(rows, published):
                rows.append(common.emit(row))
    finally:
        if not args.out_dir:
            shutil.rmtree(out_dir, ignore_errors=True)
    common.print_table(
        f"Search vs random at {args.samples} samples, proxy={args.proxy} "
        f"({args.train_steps} steps)",
        rows,
        COLUMNS,
    )
    return rows


if __name__ == "__main__":
    main()
