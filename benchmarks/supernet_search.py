"""Does the search find better necks? PPO, REINFORCE and random search on
one frozen supernet, side by side, then the best specs retrained.

Every arm searches with the same trained supernet and BN mode, so their
rewards are comparable and the supernet is paid for once. A rating is
deterministic, so one cache by canonical key serves every arm and seed
(``SharedCache``): a spec two arms both sample is rated once, and
``--ratings_from`` reuses an earlier run's ratings on the same supernet
(a longer budget then rates only its new samples). Each run is
``runner.search`` itself (history, controller, resume), with the cache as
its rater.

Prints and writes (``--out_dir``): one JSON row per run (best reward,
samples to it, top-10 mean, mean of the last 50 samples), the median and
range over seeds of those three against samples per algorithm
(``curves.json``, ``supernet_search.png``; the last is what the policy
itself samples, which the best-so-far of a random search can match by
luck), the supernet's reward of the published spec and
of random specs, and with ``--retrain_steps`` the standalone AP of each
run's best spec, the published spec and ``--random_specs`` random specs
(``--retrain_seeds`` seeds). With ``--finalists k`` each run is the
two-stage search (``search.supernet.finalists``): its k best distinct specs
train as standalone proxy children and the best of them is its answer,
beside the published spec and 5 random specs trained alike.

    python benchmarks/supernet_search.py --config_file configs/tiny_search.yaml \\
        --supernet runs/supernet --samples 300 --seeds 5 --out_dir runs/demo
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common

common.quiet_tensorflow()

from nasfpn_tf import config as config_lib
from nasfpn_tf import files
from nasfpn_tf.arch.known import NASFPN_SPEC
from nasfpn_tf.arch.spec import NeckSpec
from nasfpn_tf.search import finalists, runner
from nasfpn_tf.search import history as history_lib
from nasfpn_tf.search import proxy as proxy_lib

ALGORITHMS = ("ppo", "reinforce", "random")
TOP = 10
# The policy's own quality: the mean reward of the last WINDOW samples.
WINDOW = 50


class StandaloneCache:
    """Standalone proxy children (`search.proxy`) shared by every run's
    finalists and the baselines: a spec trains once whichever runs pick
    it, and its result is kept in `path` (JSON lines by canonical key), so
    a rerun of the benchmark trains no spec again."""

    def __init__(self, config, path: str):
        self.proxy = proxy_lib.ProxyTask(config)
        self.log = files.JsonlLog.open(path)
        self.results: dict[str, proxy_lib.ProxyResult] = {
            row["hash"]: proxy_lib.ProxyResult(
                row["reward"], row["status"], row.get("metrics", {})
            )
            for row in self.log.rows
        }

    def reward(self, spec: NeckSpec, work_dir: str):
        key = spec.canonical_key()
        if key not in self.results:
            result = self.proxy.reward(spec, work_dir)
            self.proxy.release(work_dir)
            self.results[key] = result
            if result.status == history_lib.OK:
                self.log.append(
                    {
                        "hash": key,
                        "reward": result.reward,
                        "status": result.status,
                        "metrics": dict(result.metrics),
                    }
                )
        return self.results[key]

    def release(self, work_dir: str) -> None:
        del work_dir


class SharedCache:
    """A rater shared by every run: the supernet's rating of a spec,
    computed once per canonical key."""

    def __init__(self, rater):
        self.rater = rater
        self.results: dict[str, proxy_lib.ProxyResult] = {}
        self.rated_seconds = 0.0
        self.reused = 0

    def load(self, out_dir: str, supernet: str) -> int:
        """Adds the ratings recorded by the runs of an earlier benchmark
        `out_dir` on the same supernet and BN mode (a rating is a function
        of the spec, the weights and the mode); returns how many were
        new. A folder rated on another supernet or mode is a ValueError."""
        earlier = files.read_json(os.path.join(out_dir, "curves.json"))
        if earlier is None:
            raise ValueError(
                f"{out_dir} has no curves.json: not a supernet_search --out_dir"
            )
        if (
            os.path.realpath(earlier["supernet"]) != os.path.realpath(supernet)
            or earlier["bn_mode"] != self.rater.bn_mode
        ):
            raise ValueError(
                f"{out_dir} was rated on {earlier['supernet']} "
                f"({earlier['bn_mode']}), not {supernet} "
                f"({self.rater.bn_mode})"
            )
        added = 0
        for name in sorted(os.listdir(out_dir)):
            path = os.path.join(out_dir, name, "history.jsonl")
            if not os.path.exists(path):
                continue
            records, _ = history_lib.read_history(path)
            for record in records:
                if (
                    record.status != history_lib.OK
                    or record.hash in self.results
                ):
                    continue
                self.results[record.hash] = proxy_lib.ProxyResult(
                    record.reward, record.status, record.metrics, 0.0
                )
                added += 1
        self.reused += added
        return added

    def reward(self, spec: NeckSpec, work_dir: str):
        key = spec.canonical_key()
        if key not in self.results:
            result = self.rater.reward(spec, work_dir)
            self.rated_seconds += result.seconds
            self.results[key] = result
        return self.results[key]

    def release(self, work_dir: str) -> None:
        del work_dir


def curves(
    rewards: list[float],
) -> tuple[list[float], list[float], list[float]]:
    """Per sample: the best and the top-10 mean of the rewards so far, and
    the mean of the last `WINDOW` (what the policy samples now)."""
    best, top, recent, seen = [], [], [], []
    for reward in rewards:
        seen.append(reward)
        ranked = sorted(seen, reverse=True)[:TOP]
        best.append(ranked[0])
        top.append(statistics.mean(ranked))
        recent.append(statistics.mean(seen[-WINDOW:]))
    return best, top, recent


def run(args, config, cache, algorithm: str, seed: int) -> dict:
    run_config = config_lib.override(
        config,
        {
            "search.algorithm": algorithm,
            "runtime.seed": seed,
            "search.num_samples": args.samples,
            "search.samples_per_update": args.samples_per_update,
        },
    )
    model_dir = os.path.join(args.out_dir, f"{algorithm}-s{seed}")
    start = time.perf_counter()
    summary = runner.search(run_config, model_dir, proxy=cache)
    records, _ = history_lib.read_history(summary["history"])
    records.sort(key=lambda r: r.sample)
    rewards = [r.reward for r in records]
    best, top, recent = curves(rewards)
    row = {
        "algorithm": algorithm,
        "seed": seed,
        "samples": len(rewards),
        "unique": summary["unique"],
        "best": round(best[-1], 4),
        "top10_mean": round(top[-1], 4),
        "samples_to_best": summary["best_sample"] + 1,
        "best_hash": summary["best_hash"],
        "best_spec": summary["best_spec"],
        "seconds": round(time.perf_counter() - start, 1),
        "best_curve": [round(v, 4) for v in best],
        "top10_curve": [round(v, 4) for v in top],
        "recent_curve": [round(v, 4) for v in recent],
        "last_window_mean": round(recent[-1], 4),
    }
    return row


def two_stage(args, config, row: dict, standalone) -> None:
    """The run's finalists trained standalone (`finalists.run`); their
    best is the run's answer (added to `row`)."""
    model_dir = os.path.join(args.out_dir, f"{row['algorithm']}-s{row['seed']}")
    records, _ = history_lib.read_history(
        os.path.join(model_dir, "history.jsonl")
    )
    run_config = config_lib.override(
        config,
        {
            "runtime.seed": row["seed"],
            "search.supernet.finalists": args.finalists,
        },
    )
    summary = finalists.run(run_config, model_dir, records, proxy=standalone)
    row["finalist_reward"] = summary["best_reward"]
    row["finalist_hash"] = summary["best_hash"]
    row["finalist_rank"] = summary["best_supernet_rank"]
    common.emit(
        {
            "case": "finalist",
            **{
                k: row[k]
                for k in (
                    "algorithm",
                    "seed",
                    "best",
                    "finalist_reward",
                    "finalist_hash",
                    "finalist_rank",
                )
            },
        }
    )


def standalone_baselines(args, randoms, standalone, baseline: dict) -> None:
    """The published spec and 5 random specs trained as the finalists are."""
    for name, spec in [("published", NASFPN_SPEC)] + [
        (f"random{i}", s) for i, s in enumerate(randoms[:5])
    ]:
        result = standalone.reward(
            spec, os.path.join(args.out_dir, "standalone", name)
        )
        baseline[f"standalone_{name}"] = result.reward
        common.emit(
            {"case": "standalone", "name": name, "reward": result.reward}
        )
    baseline["standalone_random_median"] = statistics.median(
        baseline[f"standalone_random{i}"] for i in range(5)
    )


def aggregate(rows: list[dict]) -> dict:
    out = {}
    for algorithm in sorted({r["algorithm"] for r in rows}):
        mine = [r for r in rows if r["algorithm"] == algorithm]
        length = min(len(r["best_curve"]) for r in mine)
        entry = {}
        for name in ("best_curve", "top10_curve", "recent_curve"):
            columns = list(zip(*(r[name][:length] for r in mine)))
            entry[name] = {
                "median": [round(statistics.median(c), 4) for c in columns],
                "low": [min(c) for c in columns],
                "high": [max(c) for c in columns],
            }
        entry["best_median"] = statistics.median(r["best"] for r in mine)
        entry["top10_median"] = statistics.median(r["top10_mean"] for r in mine)
        entry["last_window_median"] = statistics.median(
            r["last_window_mean"] for r in mine
        )
        finals = [r["finalist_reward"] for r in mine if "finalist_reward" in r]
        if finals:
            entry["finalist_median"] = statistics.median(finals)
            entry["finalist_range"] = [min(finals), max(finals)]
        out[algorithm] = entry
    return out


def plot(curve_table: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4), sharey=False)
    for ax, name, title in (
        (axes[0], "best_curve", "best reward so far"),
        (axes[1], "top10_curve", "top-10 mean reward so far"),
        (axes[2], "recent_curve", f"mean reward of the last {WINDOW}"),
    ):
        for algorithm, entry in curve_table.items():
            c = entry[name]
            xs = range(1, len(c["median"]) + 1)
            ax.plot(xs, c["median"], label=algorithm)
            ax.fill_between(xs, c["low"], c["high"], alpha=0.2)
        ax.set_xlabel("samples")
        ax.set_ylabel("supernet held-out AP")
        ax.set_title(title + " (median, range over seeds)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def retrain_all(args, config, rows, randoms) -> dict:
    """Standalone AP (mean over `--retrain_seeds`) of each distinct best
    spec, the published spec and the first 5 random specs."""
    from search_vs_random import retrain

    reference = config_lib.override(
        config, {"search.proxy.train_steps": args.retrain_steps}
    )
    trainer = proxy_lib.ProxyTask(reference)
    specs = {"published": NASFPN_SPEC}
    for i, spec in enumerate(randoms[:5]):
        specs[f"random{i}"] = spec
    for row in rows:
        specs.setdefault(row["best_hash"], NeckSpec.load(row["best_spec"]))
    out = {}
    for name, spec in specs.items():
        work_dir = os.path.join(args.out_dir, "retrain", name)
        rewards = retrain(
            trainer, spec, args.retrain_seeds, reference, work_dir
        )
        out[name] = {
            "hash": spec.canonical_key(),
            "rewards": [round(r, 4) for r in rewards],
            "mean": round(statistics.mean(rewards), 4) if rewards else None,
        }
        common.emit({"case": "retrained", "name": name, **out[name]})
    by_algorithm = {}
    for row in rows:
        by_algorithm.setdefault(row["algorithm"], []).append(
            out[row["best_hash"]]["mean"]
        )
    out["by_algorithm"] = {
        a: statistics.median(v) for a, v in by_algorithm.items()
    }
    return out


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_config_flags(parser)
    parser.add_argument(
        "--supernet", required=True, help="trained supernet dir"
    )
    parser.add_argument("--bn_mode", default=None)
    parser.add_argument(
        "--algorithms",
        type=common.algorithm_list,
        default=",".join(ALGORITHMS),
    )
    parser.add_argument("--samples", type=common.positive_int, default=300)
    parser.add_argument(
        "--samples_per_update", type=common.positive_int, default=10
    )
    parser.add_argument("--seeds", type=common.positive_int, default=5)
    parser.add_argument("--random_specs", type=int, default=20)
    parser.add_argument(
        "--finalists",
        type=int,
        default=0,
        help="two-stage: each run's k best distinct specs train standalone "
        "(search.proxy) and the best is the run's answer; the published "
        "spec and 5 random specs train alike for comparison",
    )
    parser.add_argument("--retrain_steps", type=int, default=0)
    parser.add_argument("--retrain_seeds", type=int, default=2)
    parser.add_argument(
        "--ratings_from",
        action="append",
        default=[],
        help="an earlier --out_dir rated on the same supernet and BN mode "
        "(repeatable): its ratings are reused, not computed again; the "
        "--out_dir itself is read when it has curves.json",
    )
    parser.add_argument("--out_dir", required=True)
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    from nasfpn_tf.supernet import rater as rater_lib

    config = config_lib.load_config(args.config_file, args.params_override)
    config = config_lib.override(config, {"search.rater": "supernet"})
    os.makedirs(args.out_dir, exist_ok=True)
    rater = rater_lib.SupernetRater(config, args.supernet, bn_mode=args.bn_mode)
    cache = SharedCache(rater)
    sources = list(args.ratings_from)
    if os.path.exists(os.path.join(args.out_dir, "curves.json")):
        sources.append(args.out_dir)
    for source in sources:
        common.emit(
            {
                "case": "reused",
                "from": source,
                "ratings": cache.load(source, args.supernet),
            }
        )
    space = runner.make_space(config)
    baseline = {"published": cache.reward(NASFPN_SPEC, "").reward}
    rng = random.Random(12345)
    randoms = [space.random_spec(rng) for _ in range(args.random_specs)]
    random_rewards = [cache.reward(s, "").reward for s in randoms]
    baseline["random_median"] = statistics.median(random_rewards)
    baseline["random_max"] = max(random_rewards)
    common.emit({"case": "baselines", **baseline, "bn_mode": rater.bn_mode})
    rows = []
    for seed in range(args.seeds):
        for algorithm in args.algorithms:
            row = run(args, config, cache, algorithm, seed)
            rows.append(row)
            common.emit(
                {k: v for k, v in row.items() if not k.endswith("_curve")}
            )
    # The curves are written before the (long) standalone trainings.
    write_results(args, rows, baseline, cache, rater)
    if args.finalists:
        standalone = StandaloneCache(
            config, os.path.join(args.out_dir, "standalone", "results.jsonl")
        )
        standalone_baselines(args, randoms, standalone, baseline)
        for row in rows:
            two_stage(args, config, row, standalone)
            write_results(args, rows, baseline, cache, rater)
    result = write_results(args, rows, baseline, cache, rater)
    if args.retrain_steps:
        result["retrained"] = retrain_all(args, config, rows, randoms)
        with open(os.path.join(args.out_dir, "curves.json"), "w") as f:
            json.dump(result, f, indent=1)
    return result


def write_results(args, rows, baseline, cache, rater) -> dict:
    table = aggregate(rows)
    result = {
        "baselines": baseline,
        "bn_mode": rater.bn_mode,
        "supernet": args.supernet,
        "rated_specs": len(cache.results),
        "reused_ratings": cache.reused,
        "rated_seconds": round(cache.rated_seconds, 1),
        "runs": rows,
        "curves": table,
    }
    for algorithm, entry in table.items():
        common.emit(
            {
                "case": algorithm,
                "best_median": entry["best_median"],
                "top10_median": entry["top10_median"],
                "last_window_median": entry["last_window_median"],
                "finalist_median": entry.get("finalist_median"),
                "finalist_range": entry.get("finalist_range"),
            }
        )
    with open(os.path.join(args.out_dir, "curves.json"), "w") as f:
        json.dump(result, f, indent=1)
    plot(table, os.path.join(args.out_dir, "supernet_search.png"))
    return result


if __name__ == "__main__":
    main()
