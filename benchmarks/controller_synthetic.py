"""How fast each search policy finds a hidden architecture: a synthetic reward.

The space is NAS-FPN's (``nasfpn_tf.arch.space.SearchSpace()``: 7 cells of 4
masked decisions, 28 in all). A hidden target action sequence is drawn
uniformly from it; a sample's reward is the share of its decisions that
match the target plus Gaussian noise. For PPO, REINFORCE and random search
it reports, per seed, the samples needed until

  * ``to_best``: some sample matches >= THRESHOLD of the target (the running
    best of the noise-free match; noise would let a lucky 0.93 count), and
  * ``to_average``: the moving average of the last WINDOW noisy rewards is
    >= THRESHOLD, i.e. the policy itself has settled on the target,

then the median over seeds, where a run that never gets there counts as the
sample cap (so a median at the cap means "not reached").

  python benchmarks/controller_synthetic.py --seeds 5 --budget 4000
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import pathlib
import statistics
import sys
import time
from collections.abc import Sequence

if __package__ in (None, ""):  # run as a file
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks import common

common.quiet_tensorflow()

import numpy as np

from nasfpn_tf import config as config_lib
from nasfpn_tf.arch.space import SearchSpace
from nasfpn_tf.config import ControllerConfig
from nasfpn_tf.search.controller import RandomPolicy, make_policy

ALGORITHMS = config_lib.SEARCH_ALGORITHMS
THRESHOLD = 0.95
NOISE_SIGMA = 0.05
WINDOW = 64
# Targets come from a seed stream apart from the policies' own seeds.
TARGET_SEED_OFFSET = 10_000


def run_one(
    algorithm: str,
    seed: int,
    space: SearchSpace,
    controller: ControllerConfig,
    budget: int,
    batch: int,
) -> dict:
    """Searches until both criteria are met or `budget` samples are spent."""
    num_choices, mask = space.num_choices, space.mask
    hidden = RandomPolicy(num_choices, mask, seed=seed + TARGET_SEED_OFFSET)
    target = hidden.sample(1).actions[0]
    policy = make_policy(algorithm, num_choices, mask, controller, seed=seed)
    noise = np.random.default_rng(seed)
    recent = collections.deque(maxlen=WINDOW)
    to_best = to_average = None
    best = 0.0
    spent = 0
    start = time.perf_counter()
    while spent < budget and (to_best is None or to_average is None):
        samples = policy.sample(batch)
        match = (samples.actions == target).mean(axis=1)
        rewards = match + noise.normal(0.0, NOISE_SIGMA, size=len(match))
        policy.update(samples, rewards)
        for i, (m, r) in enumerate(zip(match, rewards), start=spent + 1):
            best = max(best, float(m))
            recent.append(float(r))
            if to_best is None and best >= THRESHOLD:
                to_best = i
            full = len(recent) == WINDOW
            if to_average is None and full and np.mean(recent) >= THRESHOLD:
                to_average = i
        spent += len(match)
    return {
        "algorithm": algorithm,
        "seed": seed,
        "to_best": to_best,
        "to_average": to_average,
        "best_match": round(best, 4),
        "final_average": round(float(np.mean(recent)), 4),
        "samples": spent,
        "seconds": round(time.perf_counter() - start, 2),
    }


def median_or_cap(values: list[int | None], cap: int) -> float:
    return statistics.median(cap if v is None else v for v in values)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--seeds", type=common.positive_int, default=5, help="seeds 0..N-1"
    )
    parser.add_argument(
        "--budget",
        type=common.positive_int,
        default=4000,
        help="sample cap per run",
    )
    parser.add_argument(
        "--batch",
        type=common.positive_int,
        default=16,
        help="samples per policy update",
    )
    parser.add_argument(
        "--algorithms",
        type=common.algorithm_list,
        default=",".join(ALGORITHMS),
        help="comma-separated, as in the other search benchmarks",
    )
    parser.add_argument("--learning_rate", type=float, default=None)
    parser.add_argument(
        "--entropy_weight", type=common.non_negative_float, default=None
    )
    parser.add_argument("--ppo_epochs", type=common.positive_int, default=None)
    return parser.parse_args(argv)


def controller_config(args: argparse.Namespace) -> ControllerConfig:
    """The search's controller settings with the flags that are given."""
    overrides = {
        key: getattr(args, key)
        for key in ("learning_rate", "entropy_weight", "ppo_epochs")
        if getattr(args, key) is not None
    }
    return ControllerConfig(**overrides)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    controller = controller_config(args)
    space = SearchSpace()
    common.emit(
        {
            "benchmark": "controller_synthetic",
            "machine": common.machine_info(),
            "space_steps": len(space.num_choices),
            "space_size": space.size(),
            "budget": args.budget,
            "batch": args.batch,
            "threshold": THRESHOLD,
            "noise_sigma": NOISE_SIGMA,
            "window": WINDOW,
            "controller": dataclasses.asdict(controller),
        }
    )

    rows = []
    for algorithm in args.algorithms:
        results = [
            common.emit(
                run_one(
                    algorithm, seed, space, controller, args.budget, args.batch
                )
            )
            for seed in range(args.seeds)
        ]
        seeds = len(results)
        to_best = [r["to_best"] for r in results]
        to_average = [r["to_average"] for r in results]
        rows.append(
            common.emit(
                {
                    "algorithm": algorithm,
                    "seeds": seeds,
                    "median_to_best": median_or_cap(to_best, args.budget),
                    "reached_best": f"{seeds - to_best.count(None)}/{seeds}",
                    "median_to_average": median_or_cap(to_average, args.budget),
                    "reached_average": (
                        f"{seeds - to_average.count(None)}/{seeds}"
                    ),
                    "median_seconds": statistics.median(
                        r["seconds"] for r in results
                    ),
                }
            )
        )
    common.print_table(
        f"Samples to reach {THRESHOLD}: median of seeds, the cap "
        f"({args.budget}) where a run never did",
        rows,
        [
            "algorithm",
            "median_to_best",
            "reached_best",
            "median_to_average",
            "reached_average",
            "median_seconds",
        ],
    )


if __name__ == "__main__":
    main()
