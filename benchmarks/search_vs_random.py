"""Controller search against random search at the same sample budget.

Each algorithm runs the whole search harness (`runner.search`: KerasTuner
oracle, proxy, history) on the same space, proxy and budget; random search
is NAS-FPN's baseline (Ghiasi et al., CVPR 2019, arXiv:1904.07392, Sec. 3,
Fig. 5). With `--proxy=train` (the default) every child really trains on
the generated data and its reward is held-out AP; the published NAS-FPN
spec is trained by the same proxy as a reference. `--proxy=match` rates a
spec by the share of its decisions equal to the published spec's instead,
a cheap check of the harness rather than of detection.

The default budget (8 samples per algorithm, 60 proxy steps of the tiny
64 px config) takes about 5-10 minutes on a 2-core CPU. It shows the
harness, not the paper's result: the tiny children reach a held-out AP
below 0.01 in that many steps (0.007 at 200 steps), so the rewards are
mostly noise and neither algorithm can pull ahead. Larger runs:

  python benchmarks/search_vs_random.py --samples 200 --samples-per-update 20 \
      --train-steps 200 --seeds 3 --params_override=data.synthetic.num_train=512
"""

from __future__ import annotations

import argparse
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
from nasfpn_tf.search import history as history_lib
from nasfpn_tf.search import proxy as proxy_lib
from nasfpn_tf.search import runner

ALGORITHMS = config_lib.SEARCH_ALGORITHMS
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


def base_config(args: argparse.Namespace) -> config_lib.ExperimentConfig:
    """The files and override, then the small search of ``args`` (the
    children's warm-up is cut to their steps by ``proxy_experiment``)."""
    config = config_lib.load_config(args.config_file, args.params_override)
    return config_lib.override(
        config,
        {
            "search.num_samples": args.samples,
            "search.samples_per_update": args.samples_per_update,
            "search.proxy.train_steps": args.train_steps,
        },
    )


def parse_algorithms(parser: argparse.ArgumentParser, text: str) -> list[str]:
    """``ppo,random`` -> ["ppo", "random"]; an unknown name is a usage
    error."""
    algorithms = [a for a in text.split(",") if a]
    for algorithm in algorithms:
        if algorithm not in ALGORITHMS:
            parser.error(
                f"unknown algorithm {algorithm!r}; expected from {ALGORITHMS}"
            )
    return algorithms


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
) -> dict:
    config = config_lib.override(
        config, {"search.algorithm": algorithm, "runtime.seed": seed}
    )
    start = time.perf_counter()
    summary = runner.search(config, model_dir, proxy=proxy)
    seconds = time.perf_counter() - start
    row = {"case": algorithm, "seed": seed, "proxy_kind": proxy_kind}
    row.update(
        {k: summary[k] for k in ("trained", "cached", "failed", "unique")}
    )
    row.update(summarize(summary))
    row["seconds"] = round(seconds, 1)
    return row


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--samples",
        type=common.positive_int,
        default=8,
        help="samples (children) per search",
    )
    parser.add_argument(
        "--samples-per-update",
        type=common.positive_int,
        default=4,
        help="samples per controller update",
    )
    parser.add_argument(
        "--train-steps",
        type=common.positive_int,
        default=60,
        help="training steps of each child (search.proxy.train_steps)",
    )
    parser.add_argument(
        "--algorithms",
        default="ppo,random",
        help=f"comma-separated, from {','.join(ALGORITHMS)}",
    )
    parser.add_argument("--seeds", type=common.positive_int, default=1)
    parser.add_argument("--proxy", choices=PROXIES, default="train")
    parser.add_argument(
        "--no-published",
        action="store_true",
        help="skip training the published NAS-FPN spec as a reference",
    )
    parser.add_argument(
        "--config_file",
        action="append",
        default=[],
        help="YAML config (repeatable); default: the built-in tiny config",
    )
    parser.add_argument("--params_override", default="")
    parser.add_argument(
        "--out-dir",
        default="",
        help="where the searches run (kept); default: a temporary folder",
    )
    args = parser.parse_args(argv)
    args.algorithms = parse_algorithms(parser, args.algorithms)
    return args


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    config = base_config(args)
    out_dir = args.out_dir or tempfile.mkdtemp(prefix="search_vs_random_")
    space = runner.make_space(config)
    common.emit({"case": "machine", **common.machine_info()})
    rows = []
    try:
        for seed in range(args.seeds):
            for algorithm in args.algorithms:
                proxy = MatchProxy(space) if args.proxy == "match" else None
                model_dir = os.path.join(out_dir, f"{algorithm}-seed{seed}")
                row = run_search(
                    config, algorithm, seed, model_dir, proxy, args.proxy
                )
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
            rows.append(
                common.emit(
                    {
                        "case": "published NAS-FPN",
                        "proxy_kind": args.proxy,
                        "samples": 1,
                        "trained": 1,
                        "best": round(result.reward, 4),
                        "status": result.status,
                        "error": result.error,
                        "seconds": round(time.perf_counter() - start, 1),
                    }
                )
            )
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
