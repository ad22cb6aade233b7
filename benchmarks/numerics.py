"""Opt-in numerics against float32: train-step speed and the accuracy reached.

A faster numerics is only worth having with its accuracy effect beside it.
For each variant, the same experiment trains from the same seed with the
project's trainer (``nasfpn_tf.train.trainer.train_and_evaluate``), and
this prints per run the steady seconds per step (median of the logged
loops after the first, which traces and compiles), the whole training
time (compilation included), the final training loss and the eval
AP/AP50; then per variant the step-time ratio and the AP
difference against float32. Several ``--seeds`` give the spread of AP
within a variant: the yardstick for differences between variants.

Variants (config keys they set):
  float32   the equal-numerics baseline
  bf16      train.mixed_precision=mixed_bfloat16
  xla       train.jit_compile=true (loss and gradients XLA-compiled)
  bf16+xla  both

The default experiment is the tiny CPU config trained 600 steps (the
default ``--params_override``; ``--steps`` overrides both); AP takes
off late in the schedule and varies between seeds, so on this CPU the
table mostly shows the speed and that the variants learn alike. On a GPU or TPU
pass a real experiment:

  python benchmarks/numerics.py                       # tiny, 3 seeds
  python benchmarks/numerics.py --config_file configs/X.yaml \
      --params_override 'train.steps=2000' --seeds 0 1 --variants float32 bf16
  python benchmarks/numerics.py --quick               # smoke test
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

if __package__ in (None, ""):  # run as a file: python benchmarks/x.py
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks import common

common.quiet_tensorflow()

import tf_keras
from absl import logging

from nasfpn_tf import config as config_lib
from nasfpn_tf.train import progress, trainer

BASELINE = "float32"
VARIANTS = {
    BASELINE: {},
    "bf16": {"train.mixed_precision": "mixed_bfloat16"},
    "xla": {"train.jit_compile": True},
    "bf16+xla": {
        "train.mixed_precision": "mixed_bfloat16",
        "train.jit_compile": True,
    },
}
DEFAULT_CONFIG = "configs/tiny.yaml"
# The tiny config's 200 steps are too few to compare; a given
# --params_override replaces this one.
DEFAULT_OVERRIDE = "train.steps=600"
LOG_EVERY = 50
QUICK_STEPS = 20
METRICS = ("AP", "AP50")


def experiment(
    args: argparse.Namespace, variant: str, seed: int
) -> config_lib.ExperimentConfig:
    """The run's config: the files, the override, then the variant."""
    config = config_lib.load_config(args.config_file, args.params_override)
    steps = args.steps or config.train.steps
    overrides = {
        "runtime.seed": seed,
        "train.steps": steps,
        # A short --steps keeps the warm-up inside the run, as a proxy does.
        "train.warmup_steps": min(config.train.warmup_steps, steps - 1),
        "train.log_every": min(LOG_EVERY, steps),
        "train.checkpoint_every": steps,
        **VARIANTS[variant],
    }
    return config_lib.override(config, overrides)


def steady_seconds_per_step(model_dir: str) -> float | None:
    """Median seconds per step of the logged loops after the first."""
    rows = progress.MetricsLog(model_dir).rows()
    times = [
        r["seconds_per_step"]
        for r in rows
        if r.get("kind") == progress.TRAIN and "seconds_per_step" in r
    ]
    steady = times[1:] or times
    return statistics.median(steady) if steady else None


def run_one(args: argparse.Namespace, variant: str, seed: int) -> dict:
    """Trains and evaluates one variant from one seed; one row."""
    row: dict[str, Any] = {
        "benchmark": "numerics",
        "row": "run",
        "variant": variant,
        "seed": seed,
    }
    config = experiment(args, variant, seed)
    model_dir = str(pathlib.Path(args.model_dir) / f"{variant}_seed{seed}")
    try:
        result = trainer.train_and_evaluate(config, model_dir)
    except Exception as error:  # noqa: BLE001 (reported as the row's error)
        row.update(status="failed", error=common.describe_error(error))
        return row
    finally:
        tf_keras.backend.clear_session()
    row.update(
        status="ok",
        steps=result["steps"],
        seconds_per_step=steady_seconds_per_step(model_dir),
        train_seconds=result["train_seconds"],
        final_loss=result["final_loss"],
        **{name: result[name] for name in METRICS},
    )
    return row


def summary_rows(runs: Sequence[dict]) -> list[dict]:
    """Per variant: medians over seeds and the differences to float32."""
    ok = [r for r in runs if r.get("status") == "ok"]
    by_variant: dict[str, list[dict]] = {}
    for row in ok:
        by_variant.setdefault(row["variant"], []).append(row)

    def median(rows: list[dict], key: str) -> float | None:
        values = [r[key] for r in rows if r.get(key) is not None]
        return statistics.median(values) if values else None

    base = by_variant.get(BASELINE, [])
    base_step = median(base, "seconds_per_step")
    out = []
    for variant, rows in by_variant.items():
        row = {
            "benchmark": "numerics",
            "row": "summary",
            "variant": variant,
            "seeds": len(rows),
            "seconds_per_step": median(rows, "seconds_per_step"),
            "train_seconds": median(rows, "train_seconds"),
            "final_loss": median(rows, "final_loss"),
        }
        row["step_ratio_vs_float32"] = common.ratio(
            row["seconds_per_step"], base_step
        )
        for name in METRICS:
            values = [r[name] for r in rows]
            row[name] = statistics.median(values)
            row[f"{name}_spread"] = max(values) - min(values)
            base_value = median(base, name)
            row[f"{name}_vs_float32"] = (
                None if base_value is None else row[name] - base_value
            )
        out.append(row)
    return out


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    common.add_config_flags(parser, [DEFAULT_CONFIG], DEFAULT_OVERRIDE)
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=sorted(VARIANTS),
        default=[BASELINE, "bf16", "xla"],
    )
    parser.add_argument(
        "--seeds", nargs="+", type=int, default=[0, 1, 2], help="runtime.seed"
    )
    parser.add_argument(
        "--steps",
        type=common.positive_int,
        default=None,
        help="train.steps of every run (default: the experiment's)",
    )
    parser.add_argument(
        "--model_dir",
        default="",
        help="where the runs are written (default: a temporary directory)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a few steps, one seed"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.seeds = QUICK_STEPS, args.seeds[:1]
    return args


def main(argv: Sequence[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    # The trainer's progress lines stay; orbit's and TF's INFO logs go.
    logging.set_verbosity(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="numerics-") as scratch:
        args.model_dir = args.model_dir or scratch
        common.emit(
            {
                "benchmark": "numerics",
                "machine": common.machine_info(),
                "config_file": args.config_file,
                "params_override": args.params_override,
                "steps": args.steps,
            }
        )
        runs = [
            common.emit(run_one(args, variant, seed))
            for seed in args.seeds
            for variant in args.variants
        ]
    summary = [common.emit(r) for r in summary_rows(runs)]
    common.print_table(
        "Runs (seconds per step: median of the loops after the first)",
        runs,
        (
            "variant",
            "seed",
            "status",
            "seconds_per_step",
            "train_seconds",
            "final_loss",
            "AP",
            "AP50",
            "error",
        ),
    )
    common.print_table(
        "Variants (medians over seeds; *_vs_float32: difference)",
        summary,
        (
            "variant",
            "seeds",
            "seconds_per_step",
            "step_ratio_vs_float32",
            "train_seconds",
            "final_loss",
            "AP",
            "AP_spread",
            "AP_vs_float32",
            "AP50",
            "AP50_spread",
            "AP50_vs_float32",
        ),
    )
    return runs + summary


if __name__ == "__main__":
    main()
