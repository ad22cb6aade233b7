"""What a search costs with successive halving, against full-budget children.

Both arms run the whole search harness (`runner.search`: controller,
oracle, proxy, history) with the same controller seeds. The "full" arm
trains every child the whole proxy schedule (`search.proxy.train_steps`);
the "halving" arm rates children at rungs (`search.rungs`: `--min_steps`,
`--eta`) and trains on only the ones in the top 1/eta of their rung. For
each search the output gives the compute spent (child training steps;
the children's wall seconds, one thread each; the process's CPU seconds)
and the best reward at the last rung (the full schedule's held-out AP,
the one reward both arms measure alike) as it grew. The summary pairs the
arms seed by seed: the compute the halving arm needed to reach the full
arm's best, against what the full arm needed to reach it.

`--proxy=train` (the default) trains real children on the generated data;
with `--retrain_seeds N` each search's best spec is then trained with the
reference setting (`fidelity.reference`) from N seeds, so the two arms'
finds are compared outside their proxy too. `--proxy=curve` rates a spec
by a synthetic learning curve instead (its quality, the share of its
decisions equal to the published spec's, times a saturating curve of the
steps, plus noise that shrinks with the steps) and costs no training: it
compares the cross-rung reward rules (`--rules`) over many seeds in
seconds.

The figures in docs/results.md (raw rows: docs/figures/search_cost_*.txt)
came from:

  ARGS="--config_file configs/tiny_search.yaml --train_steps 500 \
      --min_steps 56 --eta 3 --samples_full 6 --samples_halving 12 \
      --samples_per_update 3 --retrain_seeds 2 \
      --params_override fidelity.reference.train_steps=700 --out_dir DIR"
  export TF_NUM_INTRAOP_THREADS=1 TF_NUM_INTEROP_THREADS=1
  python benchmarks/search_cost.py $ARGS --seeds 0,2 > a.out &
  python benchmarks/search_cost.py $ARGS --seeds 1 > b.out &
  wait
  python benchmarks/search_cost.py --merge a.out b.out

  python benchmarks/search_cost.py --proxy curve --seeds 0-7 \
      --samples_full 24 --samples_halving 48 --samples_per_update 4 \
      --train_steps 500 --min_steps 56 --rules highest,rank,first
"""

from __future__ import annotations

import argparse
import json
import math
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

import numpy as np

from benchmarks import search_vs_random
from nasfpn_tf import config as config_lib
from nasfpn_tf.arch import known
from nasfpn_tf.arch.spec import NeckSpec
from nasfpn_tf.search import fidelity, runner
from nasfpn_tf.search import history as history_lib
from nasfpn_tf.search import proxy as proxy_lib
from nasfpn_tf.search import rungs as rungs_lib

FULL = "full"
HALVING = "halving"
ARMS = (FULL, HALVING)
PROXIES = ("train", "curve")
COLUMNS = (
    "case",
    "seed",
    "samples",
    "trained",
    "per_rung",
    "child_steps",
    "child_seconds",
    "cpu_seconds",
    "best_top",
    "best_quality",
    "retrained",
)
SUMMARY_COLUMNS = (
    "case",
    "seeds",
    "best_top",
    "best_quality",
    "child_steps",
    "steps_to_full_best",
    "share_of_full",
    "reached",
    "retrained",
)
# The synthetic curve: AP = CURVE_SCALE * quality * (1 - exp(-RATE * s / T))
# plus noise of std CURVE_NOISE * sqrt(T / s), at s of T steps.
CURVE_SCALE = 0.3
CURVE_RATE = 3.0
CURVE_NOISE = 0.01


class CurveTrain:
    """A `train_fn` whose held-out AP follows a synthetic learning curve
    (see the module docstring); deterministic in the child's seed, the
    spec and the steps."""

    def __init__(self, space):
        self.space = space
        self.target = space.from_spec(known.NASFPN_SPEC)

    def quality(self, spec: NeckSpec) -> float:
        actions = self.space.from_spec(spec)
        same = sum(a == t for a, t in zip(actions, self.target))
        return same / len(actions)

    def __call__(
        self, config, model_dir, *, strategy, spec, eval_split, until=None
    ):
        del model_dir, strategy, eval_split
        total = config.train.steps
        steps = total if until is None else until
        rng = np.random.default_rng(
            [config.runtime.seed, steps, int(spec.canonical_key()[:8], 16)]
        )
        curve = 1.0 - math.exp(-CURVE_RATE * steps / total)
        noise = CURVE_NOISE * math.sqrt(total / steps) * rng.standard_normal()
        ap = max(0.0, CURVE_SCALE * self.quality(spec) * curve + noise)
        return {
            "AP": ap,
            "steps": steps,
            "quality": self.quality(spec),
        }


def arm_config(
    base: config_lib.ExperimentConfig,
    arm: str,
    rule: str,
    args: argparse.Namespace,
    seed: int,
) -> config_lib.ExperimentConfig:
    halving = arm == HALVING
    return config_lib.override(
        base,
        {
            "runtime.seed": seed,
            "search.algorithm": args.algorithm,
            "search.num_samples": args.samples_halving
            if halving
            else args.samples_full,
            "search.rungs.min_steps": args.min_steps if halving else 0,
            "search.rungs.eta": args.eta,
            "search.rungs.final_reward": rule,
        },
    )


def child_steps(record: history_lib.SampleRecord, top_steps: int) -> int:
    """Training steps a trained child cost: its last rung's steps (each
    rung resumes the previous one); 0 for a repeat."""
    if record.status == history_lib.CACHED:
        return 0
    if record.rungs:
        return int(record.rungs[-1]["steps"])
    return int(record.metrics.get("steps", top_steps))


def top_reward(record: history_lib.SampleRecord, top_steps: int):
    """The reward at the last rung (the full schedule), or None."""
    if not record.rated:
        return None
    if record.rungs:
        last = record.rungs[-1]
        return float(last["reward"]) if last["steps"] == top_steps else None
    return float(record.metrics.get("AP", record.reward))


def trajectory(
    records: list[history_lib.SampleRecord], top_steps: int, curve=None
) -> list[dict]:
    """After each sample: compute so far and the best last-rung reward
    (and, on the synthetic curve, the best find's true quality)."""
    points, steps, seconds = [], 0, 0.0
    best, best_quality = None, None
    for record in sorted(records, key=lambda r: r.sample):
        steps += child_steps(record, top_steps)
        if record.status != history_lib.CACHED:
            seconds += record.seconds
        reward = top_reward(record, top_steps)
        if reward is not None and (best is None or reward > best):
            best = reward
            if curve is not None:
                best_quality = curve.quality(record.neck_spec())
        points.append(
            {
                "steps": steps,
                "seconds": round(seconds, 1),
                "best": best,
                "quality": best_quality,
            }
        )
    return points


def run_arm(
    base, arm, rule, seed, args, out_dir, curve=None
) -> tuple[dict, str | None]:
    config = arm_config(base, arm, rule, args, seed)
    name = arm if arm == FULL else f"{arm}-{rule}"
    model_dir = os.path.join(out_dir, f"{name}-{args.algorithm}-seed{seed}")
    proxy = (
        None if curve is None else proxy_lib.ProxyTask(config, train_fn=curve)
    )
    cpu = time.process_time()
    summary = runner.search(config, model_dir, proxy=proxy)
    cpu = time.process_time() - cpu
    records, _ = history_lib.read_history(summary["history"])
    top_steps = config.search.proxy.train_steps
    points = trajectory(records, top_steps, curve)
    per_rung: dict[int, int] = {}
    for record in records:
        if record.status != history_lib.CACHED:
            rung = len(record.rungs) - 1 if record.rungs else 0
            per_rung[rung] = per_rung.get(rung, 0) + 1
    best_spec = None
    rated = [
        (top_reward(r, top_steps), r.sample, r)
        for r in records
        if top_reward(r, top_steps) is not None
    ]
    if rated:
        # The best last-rung reward; the earlier sample on a tie.
        _, _, record = max(rated, key=lambda t: (t[0], -t[1]))
        best_spec = record.neck_spec()
    row = {
        "case": name,
        "seed": seed,
        "samples": summary["samples"],
        "trained": summary["trained"],
        "per_rung": "/".join(
            str(per_rung.get(r, 0)) for r in range(max(per_rung) + 1)
        )
        if per_rung
        else "",
        "child_steps": points[-1]["steps"] if points else 0,
        "child_seconds": points[-1]["seconds"] if points else 0.0,
        "cpu_seconds": round(cpu, 1),
        "best_top": _round(points[-1]["best"]) if points else None,
        "best_quality": _round(points[-1]["quality"]) if points else None,
        "trajectory": points,
    }
    path = None
    if best_spec is not None:
        path = os.path.join(model_dir, "best_top_spec.json")
        best_spec.save(path)
    return row, path


def steps_to_reach(points: list[dict], target: float | None) -> int | None:
    """Child steps spent when the best last-rung reward first reached
    `target`; None if it never did."""
    if target is None:
        return None
    for point in points:
        if point["best"] is not None and point["best"] >= target:
            return point["steps"]
    return None


def summary_rows(rows: list[dict]) -> list[dict]:
    """Per arm over the seeds: median best, compute, and (for halving
    arms) the compute needed to reach the same seed's full-arm best, as a
    share of what the full arm needed to reach it."""
    searches = [r for r in rows if "trajectory" in r]
    full = {r["seed"]: r for r in searches if r["case"] == FULL}
    out = []
    for case in dict.fromkeys(r["case"] for r in searches):
        mine = [r for r in searches if r["case"] == case]
        shares, needed, reached = [], [], 0
        for row in mine:
            pair = full.get(row["seed"])
            if pair is None or pair["trajectory"][-1]["best"] is None:
                continue
            target = pair["trajectory"][-1]["best"]
            full_steps = steps_to_reach(pair["trajectory"], target)
            steps = steps_to_reach(row["trajectory"], target)
            if steps is not None:
                reached += 1
                needed.append(steps)
                shares.append(steps / full_steps)
        retrained = [v for r in mine for v in r.get("retrained_rewards", [])]
        out.append(
            {
                "case": f"{case} (median of {len(mine)})",
                "seeds": len(mine),
                "best_top": _median([r["best_top"] for r in mine]),
                "best_quality": _median([r["best_quality"] for r in mine]),
                "child_steps": _median([r["child_steps"] for r in mine]),
                "steps_to_full_best": _median(needed),
                "share_of_full": _median(shares),
                "reached": f"{reached}/{len(mine)}",
                "retrained": search_vs_random._mean_std(retrained),
                "retrained_mean": search_vs_random._mean(retrained),
            }
        )
    return out


def _median(values):
    values = [v for v in values if v is not None]
    return _round(statistics.median(values)) if values else None


def _round(value):
    return None if value is None else round(float(value), 4)


def parse_seeds(text: str) -> list[int]:
    """ "0,2" -> [0, 2]; "0-3" -> [0, 1, 2, 3]."""
    seeds = []
    for part in text.split(","):
        if "-" in part:
            low, high = part.split("-")
            seeds.extend(range(int(low), int(high) + 1))
        elif part:
            seeds.append(int(part))
    return seeds


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_search_flags(
        parser,
        samples=None,
        samples_per_update=3,
        train_steps=60,
        proxies=PROXIES,
    )
    common.add_run_flags(parser)
    parser.add_argument("--algorithm", default="ppo")
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument(
        "--rules",
        default=rungs_lib.HIGHEST,
        help="halving arms' cross-rung reward rules (search.rungs."
        f"final_reward), comma-separated from {rungs_lib.FINAL_REWARDS}",
    )
    parser.add_argument("--seeds", default="0", help='e.g. "0,2" or "0-9"')
    parser.add_argument("--samples_full", type=common.positive_int, default=6)
    parser.add_argument(
        "--samples_halving", type=common.positive_int, default=12
    )
    parser.add_argument(
        "--min_steps",
        type=common.positive_int,
        default=7,
        help="the first rung's steps (search.rungs.min_steps)",
    )
    parser.add_argument("--eta", type=common.positive_int, default=3)
    args = parser.parse_args(argv)
    args.seeds = parse_seeds(args.seeds)
    args.arms = [a for a in args.arms.split(",") if a]
    args.rules = [r for r in args.rules.split(",") if r]
    for arm in args.arms:
        if arm not in ARMS:
            parser.error(f"unknown arm {arm!r}; expected from {ARMS}")
    for rule in args.rules:
        if rule not in rungs_lib.FINAL_REWARDS:
            parser.error(
                f"unknown rule {rule!r}; expected from "
                f"{rungs_lib.FINAL_REWARDS}"
            )
    return args


def merge(paths: list[str]) -> list[dict]:
    """The search rows earlier runs printed, and their summary."""
    rows = []
    for path in paths:
        with open(path) as f:
            for line in f:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a progress line
                if isinstance(row, dict) and "trajectory" in row:
                    rows.append(row)
    return rows + summary_rows(rows)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    if args.merge:
        rows = merge(args.merge)
    else:
        rows = run(args)
    searches = [r for r in rows if "trajectory" in r]
    summaries = [r for r in rows if "trajectory" not in r]
    common.print_table(
        f"Search cost, {args.algorithm}: searches", searches, COLUMNS
    )
    common.print_table(
        "Search cost: per arm (share_of_full: child steps the arm needed "
        "to reach the same seed's full-budget best, over the full arm's)",
        summaries,
        SUMMARY_COLUMNS,
    )
    return rows


def run(args: argparse.Namespace) -> list[dict]:
    base = common.search_config(args, samples=args.samples_full)
    # The rung settings are checked now, not after the first arm.
    rungs_lib.rung_steps(args.min_steps, args.eta, args.train_steps)
    out_dir = args.out_dir or tempfile.mkdtemp(prefix="search_cost_")
    curve = None
    if args.proxy == "curve":
        curve = CurveTrain(runner.make_space(base))
    common.emit({"case": "machine", **common.machine_info()})
    reference = None
    if args.retrain_seeds and curve is None:
        reference = proxy_lib.ProxyTask(
            fidelity.setting_config(base, fidelity.REFERENCE)
        )
    rows = []
    try:
        for seed in args.seeds:
            for arm in args.arms:
                for rule in args.rules if arm == HALVING else [args.rules[0]]:
                    row, best = run_arm(
                        base, arm, rule, seed, args, out_dir, curve
                    )
                    if reference is not None and best is not None:
                        spec = NeckSpec.load(best)
                        row["retrained_rewards"] = search_vs_random.retrain(
                            reference,
                            spec,
                            args.retrain_seeds,
                            config_lib.override(base, {"runtime.seed": seed}),
                            os.path.join(os.path.dirname(best), "retrained"),
                        )
                        row["retrained"] = search_vs_random._mean_std(
                            row["retrained_rewards"]
                        )
                    rows.append(common.emit(row))
        for row in summary_rows(rows):
            rows.append(common.emit(row))
    finally:
        if not args.out_dir:
            shutil.rmtree(out_dir, ignore_errors=True)
    return rows


if __name__ == "__main__":
    main()
