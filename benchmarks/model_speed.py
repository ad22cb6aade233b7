"""Our RetinaNet with the NAS-FPN neck against Model Garden's, side by side.

NAS-FPN (Ghiasi, Lin, Pang, Le, CVPR 2019, arXiv:1904.07392). Ours is
``nasfpn_tf.modeling.detector.build_detector`` with the published spec;
Model Garden's is ``official.vision.modeling.factory.build_retinanet`` with
its ``nasfpn`` decoder, built from its own config
(``official.vision.configs.retinanet.RetinaNet``) with its default detection
generator (NMS "v2", pre-NMS top-k 5000). Both get the same backbone, width,
repeats, head, input size, batch, optimizer (SGD with momentum and gradient
clipping, ``nasfpn_tf.train.schedule``) and loss (focal + Huber,
``nasfpn_tf.modeling.losses``), live in the same process and are timed
alternately (A B A B ...) after warm-up.

Where the two networks have the same structure (ResNet-50 7@256) Model
Garden's gets our weights, so both compute the same numbers
(``weights_equal``). Random weights would leave every class score at the
head's prior (0.01), below the 0.05 score threshold, and NMS would have
nothing to do; so the classifier is set (identically on both sides) to pass
``--score_fraction`` of all anchor-class scores over the threshold, a
load like a trained detector's (default 1e-3: ~7000 candidates per 640
image with 91 classes).

Modes (one case = one mode at one input size and batch):
  train    loss, gradients and the SGD update of one batch (images/s).
  forward  backbone, neck and head, no post-processing; also FLOPs,
           GFLOP/s and the share of the machine's float32 matmul peak.
  e2e      the detector's inference call: network, box decoding and NMS.
           Model Garden twice: its default NMS "v2" and its best CPU
           option, "batched" (``ratio_vs_mg`` / ``ratio_vs_mg_best``).
Variants of our side that change numerics, ``--jit`` (XLA) and ``--bf16``
(mixed_bfloat16), are extra rows of a case, never the equal-numerics rows.
``--frozen`` adds forward and e2e rows of both networks frozen
(``nasfpn_tf.modeling.frozen``, as ``--mode=export --freeze`` serves):
the weights as constants, batch norms folded into the convs. Model
Garden's frozen e2e row uses its batched NMS. Freezing is a TensorFlow
technique, not a property of either network: the two frozen rows show
how much it gives each.

  python benchmarks/model_speed.py --peak_gflops 300     # all cases
  python benchmarks/model_speed.py --cases e2e_r50 --jit --bf16 --breakdown
  python benchmarks/model_speed.py --cases forward_r50 e2e_r50 --frozen
  python benchmarks/model_speed.py --cases e2e_r50_7@256_640 \
      --variants ours mg+batched_nms --repeats 10   # skip the slow "v2"
  python benchmarks/model_speed.py --quick               # smoke test

``--breakdown`` adds, per e2e case, the seconds of backbone, neck, head and
post-processing on each side. ``--peak_gflops`` takes ``peak.py``'s
float32 matmul figure; without it a short in-process measurement is used,
which a busy machine can put far below the roof.

Model Garden's ``nasfpn`` decoder cannot run the NAS-FPNLite input of 320
(not a multiple of 2**7): that case reports its failure, and the Lite
model is compared at 384 too.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import pathlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

if __package__ in (None, ""):  # run as a file: python benchmarks/x.py
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks import common

common.quiet_tensorflow()

import tensorflow as tf
import tf_keras

from benchmarks.retinanets import (
    COCO_CLASSES,
    IMAGE_CHANNELS,
    LITE,
    MG_BEST_NMS,
    POST,
    QUICK,
    QUICK_CLASSES,
    QUICK_LITE,
    R50,
    STAGES,
    ModelShape,
    build_model_garden,
    build_ours,
    calibrate_scores,
    copy_to_model_garden,
    count_params,
    e2e_fn,
    forward_flops,
    forward_fn,
    our_model_config,
    synthetic_labels,
    test_images,
    train_fn,
)
from nasfpn_tf import config as config_lib
from nasfpn_tf.modeling import detector, frozen
from nasfpn_tf.train.trainer import precision_policy

TRAIN, FORWARD, E2E = "train", "forward", "e2e"
MODES = (TRAIN, FORWARD, E2E)
OURS, MODEL_GARDEN = "ours", "model_garden"
# Variant names: one callable each in a case's round-robin.
OURS_FP32, OURS_XLA, OURS_BF16 = "ours", "ours+xla", "ours+bf16"
MG_DEFAULT, MG_BATCHED = "mg", "mg+batched_nms"
# --frozen: forward and e2e with the weights as constants (e2e: Model
# Garden's with batched NMS).
OURS_FROZEN, MG_FROZEN = "ours+frozen", "mg+frozen"
DEFAULT_SCORE_FRACTION = 1e-3
# Matmul sides of the float32 peak measured when --peak_gflops is not given.
IN_PROCESS_PEAK_SIZES = (2048, 4096)
# (mode, size, Model Garden variant, largest ours/theirs time ratio).
TARGETS = (
    (E2E, 640, MG_DEFAULT, 0.6),
    (E2E, 640, MG_BATCHED, 1.0),
)
# (mode, size, smallest share of the float32 peak), for each of our
# float32 variants that ran.
PEAK_TARGETS = ((FORWARD, 640, 0.8),)
PEAK_VARIANTS = (OURS_FP32, OURS_FROZEN)


@dataclasses.dataclass(frozen=True)
class Case:
    """One timed comparison: a mode of one model at one size and batch."""

    shape: ModelShape
    mode: str
    size: int
    batch: int

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode: expected one of {MODES}, got {self.mode}")
        if self.size < 1 or self.batch < 1:
            raise ValueError(
                f"size and batch must be >= 1, got {self.size}, {self.batch}"
            )

    @property
    def name(self) -> str:
        return f"{self.mode}_{self.shape.name}_{self.size}_b{self.batch}"


def default_cases(args: argparse.Namespace) -> list[Case]:
    """R50 7@256 training, forward and inference; NAS-FPNLite inference."""
    cases = [Case(R50, TRAIN, s, args.train_batch) for s in args.train_sizes]
    for mode in (FORWARD, E2E):
        cases += [Case(R50, mode, s, args.infer_batch) for s in args.sizes]
    for mode in (FORWARD, E2E):
        cases += [
            Case(LITE, mode, s, args.infer_batch) for s in args.lite_sizes
        ]
    return cases


def quick_cases() -> list[Case]:
    """Tiny models; 96 is not a multiple of 2**7, as NAS-FPNLite's 320."""
    return [
        Case(QUICK, FORWARD, 128, 1),
        Case(QUICK, E2E, 128, 1),
        Case(QUICK, TRAIN, 128, 2),
        Case(QUICK_LITE, E2E, 96, 1),
    ]


# --------------------------------------------------------------------------
# Running cases.


@dataclasses.dataclass
class Sides:
    """Both sides of one model shape at one input size (built once).

    ``theirs`` is None where Model Garden cannot build or run the model;
    ``theirs_error`` says why.
    """

    shape: ModelShape
    size: int
    ours: tf_keras.Model
    theirs: tf_keras.Model | None
    theirs_batched: tf_keras.Model | None
    theirs_error: str | None
    ours_bf16: tf_keras.Model | None
    weights_equal: bool
    score_fraction: dict[str, float]


def build_sides(
    shape: ModelShape, size: int, args: argparse.Namespace
) -> Sides:
    """Builds ours and Model Garden's (default and batched NMS), copies
    weights where possible and calibrates the class scores."""
    l2 = args.l2_weight_decay
    ours = build_ours(shape, size, args.num_classes, l2)
    threshold = config_lib.NmsConfig().score_threshold
    probe = test_images(1, size)
    fractions = {
        OURS: calibrate_scores(ours, probe, args.score_fraction, threshold)
    }
    theirs = theirs_batched = error = None
    weights_equal = False
    try:
        theirs = build_model_garden(shape, size, args.num_classes, l2)
        weights_equal = copy_to_model_garden(ours, theirs)
        if not weights_equal:
            fractions[MODEL_GARDEN] = calibrate_scores(
                theirs, probe, args.score_fraction, threshold
            )
        else:
            fractions[MODEL_GARDEN] = fractions[OURS]
        theirs_batched = build_model_garden(
            shape,
            size,
            args.num_classes,
            l2,
            nms_version=MG_BEST_NMS,
            backbone=theirs.backbone,
            decoder=theirs.decoder,
        )
        theirs_batched.head.set_weights(theirs.head.get_weights())
    except Exception as exc:  # noqa: BLE001 (a reported failure case)
        theirs = theirs_batched = None
        error = common.describe_error(exc)
    ours_bf16 = None
    if args.bf16:
        with precision_policy("mixed_bfloat16"):
            ours_bf16 = build_ours(shape, size, args.num_classes, l2)
        ours_bf16.set_weights(ours.get_weights())
    return Sides(
        shape,
        size,
        ours,
        theirs,
        theirs_batched,
        error,
        ours_bf16,
        weights_equal,
        fractions,
    )


def model_rows(sides: Sides, args: argparse.Namespace) -> list[dict]:
    """Parameter counts and forward FLOPs of both sides."""
    rows = []
    for side, model in ((OURS, sides.ours), (MODEL_GARDEN, sides.theirs)):
        row = {
            "benchmark": "model_speed",
            "row": "model",
            "model": sides.shape.name,
            "size": sides.size,
            "side": side,
        }
        if model is None:
            row.update(status="failed", error=sides.theirs_error)
        else:
            params, trainable = count_params(model)
            flops = None if args.no_flops else forward_flops(model, sides.size)
            row.update(
                status="ok",
                params=params,
                trainable_params=trainable,
                forward_gflop=round(flops / 1e9, 3) if flops else None,
                weights_equal=sides.weights_equal,
                score_fraction=sides.score_fraction.get(side),
            )
        rows.append(row)
    return rows


def case_callables(
    case: Case, sides: Sides, args: argparse.Namespace
) -> dict[str, Callable[[], Any]]:
    """Variant name -> a callable running one step of ``case``."""
    images = test_images(case.batch, case.size)
    our_config = our_model_config(case.shape, args.num_classes)
    # Equal-numerics variants first, then our options.
    models = {OURS_FP32: sides.ours, MG_DEFAULT: sides.theirs}
    if case.mode == E2E:
        models[MG_BATCHED] = sides.theirs_batched
    models[OURS_BF16] = sides.ours_bf16
    models = {k: m for k, m in models.items() if m is not None}
    fns: dict[str, Callable] = {}
    if case.mode == TRAIN:
        train_config = config_lib.TrainConfig(
            l2_weight_decay=args.l2_weight_decay
        )
        labels = synthetic_labels(
            case.size,
            case.batch,
            args.num_classes,
            detector.anchors_per_location(our_config),
        )
        for name, model in models.items():
            fns[name] = train_fn(model, train_config, args.num_classes)
        if args.jit:
            fns[OURS_XLA] = train_fn(
                sides.ours, train_config, args.num_classes, jit=True
            )
        return {
            name: (lambda fn=fn: fn(images, labels)) for name, fn in fns.items()
        }
    if case.mode == FORWARD:
        for name, model in models.items():
            fns[name] = forward_fn(model)
        if args.jit:
            fns[OURS_XLA] = forward_fn(sides.ours, jit=True)
    else:
        for name, model in models.items():
            fns[name] = e2e_fn(model, case.batch, case.size)
        if args.jit:
            fns[OURS_XLA] = e2e_fn(
                sides.ours, case.batch, case.size, jit_network_of=our_config
            )
    if args.frozen:
        fns.update(frozen_variants(case, fns, args))
    return {name: (lambda fn=fn: fn(images)) for name, fn in fns.items()}


def frozen_variants(
    case: Case, fns: dict[str, Callable], args: argparse.Namespace
) -> dict[str, Callable]:
    """Frozen copies of our float32 and Model Garden's inference functions
    (its batched NMS in e2e), each freezing taking seconds to minutes."""
    sources = {
        OURS_FROZEN: OURS_FP32,
        MG_FROZEN: MG_DEFAULT if case.mode == FORWARD else MG_BATCHED,
    }
    spec = tf.TensorSpec(
        [case.batch, case.size, case.size, IMAGE_CHANNELS], tf.float32
    )
    out = {}
    for name, source in sources.items():
        if source not in fns or (args.variants and name not in args.variants):
            continue
        try:
            out[name] = frozen.freeze(fns[source], spec)
        except Exception as exc:  # noqa: BLE001 (reported as the row's error)
            out[name] = functools.partial(_raise, exc)
    return out


def _raise(error: Exception, *args: Any) -> None:
    raise error


def _ratios(
    ours: common.Timing, theirs: common.Timing | None, suffix: str
) -> dict[str, float | None]:
    """ours / theirs of the medians, and of the fastest calls: on a shared
    machine the minimum is the less disturbed of the two."""
    return {
        f"ratio_vs_mg{suffix}": common.ratio(
            ours.median_s, theirs.median_s if theirs else None
        ),
        f"min_ratio_vs_mg{suffix}": common.ratio(
            ours.min_s, theirs.min_s if theirs else None
        ),
    }


def run_case(
    case: Case,
    sides: Sides,
    args: argparse.Namespace,
    flops: dict[str, int | None],
    peak_gflops: float | None,
) -> list[dict]:
    """Times every variant of ``case`` round-robin; one row each."""
    fns = case_callables(case, sides, args)
    if args.variants:
        fns = {k: v for k, v in fns.items() if k in args.variants}
    errors: dict[str, str] = {}
    timings = common.time_round_robin(
        fns, args.warmup, args.repeats, errors=errors
    )
    base = {
        "benchmark": "model_speed",
        "case": case.name,
        "mode": case.mode,
        "model": case.shape.name,
        "size": case.size,
        "batch": case.batch,
    }
    mg = timings.get(MG_DEFAULT)
    mg_best = timings.get(MG_BATCHED)
    rows = []
    for name in fns:
        side = OURS if name.startswith(OURS) else MODEL_GARDEN
        row = dict(base, side=side, variant=name)
        if name in errors:
            row.update(status="failed", error=errors[name])
            rows.append(row)
            continue
        timing = timings[name]
        row.update(status="ok", **timing.as_dict())
        row["images_per_s"] = round(case.batch / timing.median_s, 3)
        row["weights_equal"] = sides.weights_equal and name in (
            OURS_FP32,
            MG_DEFAULT,
            MG_BATCHED,
            OURS_FROZEN,
            MG_FROZEN,
        )
        model_flops = flops.get(side)
        if case.mode == FORWARD and model_flops:
            gflops = model_flops * case.batch / timing.median_s / 1e9
            row["gflops"] = round(gflops, 2)
            row["share_of_peak"] = common.ratio(gflops, peak_gflops)
        if side == OURS:
            row.update(_ratios(timing, mg, ""))
            if case.mode == E2E:
                row.update(_ratios(timing, mg_best, "_best"))
            if name == OURS_FROZEN:
                row.update(_ratios(timing, timings.get(MG_FROZEN), "_frozen"))
        rows.append(row)
    if sides.theirs is None:
        names = (MG_DEFAULT, MG_BATCHED) if case.mode == E2E else (MG_DEFAULT,)
        for name in names:
            if args.variants and name not in args.variants:
                continue
            rows.append(
                dict(
                    base,
                    side=MODEL_GARDEN,
                    variant=name,
                    status="failed",
                    error=sides.theirs_error,
                )
            )
    return rows


def breakdown_rows(
    case: Case, sides: Sides, args: argparse.Namespace
) -> list[dict]:
    """Where an inference step's time goes: backbone, neck, head, post.

    Times the cumulative prefixes of each side (backbone; + neck; + head;
    + box decoding and NMS) round-robin; a part is the difference of
    consecutive medians, so noise can make a small part slightly negative.
    Model Garden's "batched" side shares its network with the default one
    and differs only in the post-processing.
    """
    images = test_images(case.batch, case.size)
    fns = {}
    for name, model in ((OURS_FP32, sides.ours), (MG_DEFAULT, sides.theirs)):
        if model is None or (args.variants and name not in args.variants):
            continue
        for stage in STAGES:
            fns[f"{name}/{stage}"] = forward_fn(model, stage=stage)
        fns[f"{name}/{POST}"] = e2e_fn(model, case.batch, case.size)
    batched = sides.theirs_batched
    if f"{MG_DEFAULT}/{POST}" in fns and batched is not None:
        fns[f"{MG_BATCHED}/{POST}"] = e2e_fn(batched, case.batch, case.size)
    errors: dict[str, str] = {}
    timings = common.time_round_robin(
        {k: (lambda fn=fn: fn(images)) for k, fn in fns.items()},
        args.warmup,
        args.repeats,
        errors=errors,
    )
    medians = {k: t.median_s for k, t in timings.items()}
    rows = []
    for name in (OURS_FP32, MG_DEFAULT, MG_BATCHED):
        network_of = MG_DEFAULT if name == MG_BATCHED else name
        prefixes = [f"{network_of}/{stage}" for stage in STAGES]
        prefixes.append(f"{name}/{POST}")
        if not all(p in medians for p in prefixes):
            continue
        total = medians[prefixes[-1]]
        previous = 0.0
        for part, prefix in zip((*STAGES, POST), prefixes):
            seconds = medians[prefix] - previous
            previous = medians[prefix]
            rows.append(
                {
                    "benchmark": "model_speed",
                    "row": "breakdown",
                    "case": case.name,
                    "variant": name,
                    "part": part,
                    "seconds": round(seconds, 6),
                    "share": common.ratio(seconds, total),
                }
            )
    for name, error in errors.items():
        rows.append(
            {
                "benchmark": "model_speed",
                "row": "breakdown",
                "case": case.name,
                "variant": name,
                "status": "failed",
                "error": error,
            }
        )
    return rows


def target_rows(rows: Sequence[dict]) -> list[dict]:
    """The speed targets of our float32 side, where their cases ran:
    time ratios against Model Garden, and shares of the float32 peak."""
    out = []
    for mode, size, least in PEAK_TARGETS:
        for row in rows:
            if (
                row.get("mode") == mode
                and row.get("size") == size
                and row.get("variant") in PEAK_VARIANTS
                and row.get("share_of_peak") is not None
            ):
                out.append(
                    {
                        "benchmark": "model_speed",
                        "row": "target",
                        "case": row["case"],
                        "variant": row["variant"],
                        "versus": "float32 peak",
                        "share_of_peak": row["share_of_peak"],
                        "at_least": least,
                        "met": row["share_of_peak"] >= least,
                    }
                )
    for mode, size, versus, limit in TARGETS:
        key = "ratio_vs_mg" if versus == MG_DEFAULT else "ratio_vs_mg_best"
        for row in rows:
            if (
                row.get("mode") == mode
                and row.get("size") == size
                and row.get("variant") == OURS_FP32
                and row.get(key) is not None
            ):
                out.append(
                    {
                        "benchmark": "model_speed",
                        "row": "target",
                        "case": row["case"],
                        "variant": OURS_FP32,
                        "versus": versus,
                        "ratio": row[key],
                        "min_ratio": row.get(f"min_{key}"),
                        "at_most": limit,
                        "met": row[key] <= limit,
                    }
                )
    return out


def select_cases(cases: list[Case], patterns: Sequence[str]) -> list[Case]:
    """Cases whose name contains any of ``patterns`` (all when empty)."""
    if not patterns:
        return cases
    chosen = [c for c in cases if any(p in c.name for p in patterns)]
    if not chosen:
        names = ", ".join(c.name for c in cases)
        raise SystemExit(f"--cases {list(patterns)} matches none of: {names}")
    return chosen


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--cases",
        nargs="*",
        default=[],
        help="run only cases whose name contains one of these, e.g. e2e_r50",
    )
    parser.add_argument(
        "--train_sizes",
        nargs="+",
        type=common.positive_int,
        default=[256, 384],
    )
    parser.add_argument(
        "--sizes",
        nargs="+",
        type=common.positive_int,
        default=[384, 640],
        help="forward and e2e sizes of R50 7@256",
    )
    parser.add_argument(
        "--lite_sizes",
        nargs="+",
        type=common.positive_int,
        default=[320, 384],
        help="forward and e2e sizes of NAS-FPNLite (MobileNetV2 7@64)",
    )
    parser.add_argument("--train_batch", type=common.positive_int, default=2)
    parser.add_argument("--infer_batch", type=common.positive_int, default=1)
    parser.add_argument(
        "--num_classes",
        type=common.positive_int,
        default=COCO_CLASSES,
        help="classes including background",
    )
    parser.add_argument(
        "--l2_weight_decay",
        type=common.non_negative_float,
        default=config_lib.TrainConfig().l2_weight_decay,
    )
    parser.add_argument(
        "--score_fraction",
        type=float,
        default=DEFAULT_SCORE_FRACTION,
        help="share of anchor-class scores set above the NMS threshold",
    )
    parser.add_argument(
        "--variants",
        nargs="*",
        default=[],
        help=f"time only these, of {OURS_FP32}, {MG_DEFAULT}, {MG_BATCHED}, "
        f"{OURS_XLA}, {OURS_BF16}, {OURS_FROZEN}, {MG_FROZEN} (default: "
        "all that apply)",
    )
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="also time backbone, neck, head and NMS of each e2e case",
    )
    parser.add_argument(
        "--jit", action="store_true", help="add XLA rows of our side"
    )
    parser.add_argument(
        "--bf16", action="store_true", help="add mixed_bfloat16 rows of ours"
    )
    parser.add_argument(
        "--frozen",
        action="store_true",
        help="add forward and e2e rows of both networks with the weights "
        "as constants (as export --freeze serves)",
    )
    parser.add_argument(
        "--peak_gflops",
        type=common.non_negative_float,
        default=None,
        help="float32 peak from peak.py; default: measure a quick one; "
        "0: no share of peak",
    )
    parser.add_argument(
        "--no_flops", action="store_true", help="skip the FLOP counts"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny models and one repeat: checks that the script runs",
    )
    common.add_timing_flags(parser, warmup=2, repeats=5)
    args = parser.parse_args(argv)
    if not 0 < args.score_fraction < 1:
        parser.error(
            f"--score_fraction must be in (0, 1): {args.score_fraction}"
        )
    if args.num_classes < 2:
        parser.error("--num_classes counts background too and must be >= 2")
    if args.quick:
        args.warmup, args.repeats = 1, 1
        args.num_classes = QUICK_CLASSES
        args.score_fraction = max(args.score_fraction, 0.05)
    return args


def measure_peak(args: argparse.Namespace) -> float | None:
    if args.peak_gflops is not None:
        return args.peak_gflops or None
    from benchmarks import peak

    if args.quick:
        return peak.peak_gflops(
            "float32",
            peak.QUICK_MATMUL_SIZES,
            repeats=1,
            min_flops=peak.QUICK_MIN_FLOPS_PER_CALL,
        )
    return peak.peak_gflops("float32", sizes=IN_PROCESS_PEAK_SIZES)


def main(argv: Sequence[str] | None = None) -> list[dict]:
    """Runs the selected cases; prints JSON lines and tables; returns rows."""
    args = parse_args(argv)
    cases = quick_cases() if args.quick else default_cases(args)
    cases = select_cases(cases, args.cases)
    peak_gflops = measure_peak(args)
    common.emit(
        {
            "benchmark": "model_speed",
            "machine": common.machine_info(),
            "peak_float32_gflops": peak_gflops,
            "num_classes": args.num_classes,
            "score_fraction": args.score_fraction,
            "warmup": args.warmup,
            "repeats": args.repeats,
        }
    )
    groups: dict[tuple[ModelShape, int], list[Case]] = {}
    for case in cases:
        groups.setdefault((case.shape, case.size), []).append(case)
    model_table, case_table, breakdown_table = [], [], []
    for (shape, size), group in groups.items():
        sides = build_sides(shape, size, args)
        for row in model_rows(sides, args):
            model_table.append(common.emit(row))
        flops = {
            r["side"]: r["forward_gflop"] * 1e9
            for r in model_table[-2:]
            if r.get("forward_gflop")
        }
        # Training changes the weights: run it after inference.
        for case in sorted(group, key=lambda c: c.mode == TRAIN):
            for row in run_case(case, sides, args, flops, peak_gflops):
                case_table.append(common.emit(row))
            if args.breakdown and case.mode == E2E:
                for row in breakdown_rows(case, sides, args):
                    breakdown_table.append(common.emit(row))
        del sides
        tf_keras.backend.clear_session()
    targets = [common.emit(r) for r in target_rows(case_table)]
    common.print_table(
        "Models (forward GFLOP at batch 1; 2 FLOPs per multiply-add)",
        model_table,
        (
            "model",
            "size",
            "side",
            "status",
            "params",
            "trainable_params",
            "forward_gflop",
            "weights_equal",
            "score_fraction",
        ),
    )
    common.print_table(
        "Cases (seconds per step; ratio = ours / Model Garden, median)",
        case_table,
        (
            "case",
            "variant",
            "status",
            "median_s",
            "min_s",
            "max_s",
            "first_call_s",
            "images_per_s",
            "gflops",
            "share_of_peak",
            "ratio_vs_mg",
            "ratio_vs_mg_best",
            "ratio_vs_mg_frozen",
            "min_ratio_vs_mg",
            "min_ratio_vs_mg_best",
        ),
    )
    if breakdown_table:
        common.print_table(
            "Where inference time goes (seconds per step; share of its total)",
            breakdown_table,
            ("case", "variant", "part", "seconds", "share", "status"),
        )
    if targets:
        common.print_table(
            "Targets (ours float32: time / Model Garden's, or share of peak)",
            targets,
            (
                "case",
                "variant",
                "versus",
                "ratio",
                "min_ratio",
                "at_most",
                "share_of_peak",
                "at_least",
                "met",
            ),
        )
    failures = [r for r in case_table if r.get("status") == "failed"]
    for row in failures:
        print(f"FAILED {row['case']} {row['variant']}: {row.get('error')}")
    return model_table + case_table + breakdown_table + targets


if __name__ == "__main__":
    main()
