"""Attainable matmul and 3x3 conv throughput of this machine (GFLOP/s).

The model benchmarks state their throughput as a share of these figures.
FLOPs count a multiply and an add as two, as ``tf.compat.v1.profiler``
(and so ``model_speed.py``) does: a square matmul of side n is 2 n^3 FLOPs,
a stride-1 "same" conv 2 * B * H * W * C_in * C_out * k^2.

  python benchmarks/peak.py                 # float32 and bfloat16
  python benchmarks/peak.py --dtypes float32 --sizes 2048 4096
  python benchmarks/peak.py --quick         # seconds, for a smoke test

The matmul figure is the best over ``--sizes`` of the fastest call: TF's
(oneDNN's) best case, the roof a model can be held against. The conv is a
3x3 conv of the NAS-FPN 7@256 neck and heads (256 -> 256 channels on the
80x80 P3 map of a 640 input), which tells how much of that roof a
well-shaped conv of the model reaches. bfloat16 runs on the CPU's native
bfloat16 units where it has them (AVX512_BF16, AMX); elsewhere it is
emulated and slower than float32.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import sys
from collections.abc import Sequence

if __package__ in (None, ""):  # run as a file: python benchmarks/peak.py
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks import common

common.quiet_tensorflow()

DTYPES = ("float32", "bfloat16")
MATMUL_SIZES = (1024, 2048, 4096)
QUICK_MATMUL_SIZES = (128,)
# Repeat small ops inside one call so that each call does at least this
# much work and Python's call overhead (~50 us) stays under ~1% of it.
MIN_FLOPS_PER_CALL = 2e9
QUICK_MIN_FLOPS_PER_CALL = 1e7
CONV_KERNEL = 3


@dataclasses.dataclass(frozen=True)
class ConvShape:
    """A stride-1 "same" conv: [batch, size, size, channels] -> channels."""

    batch: int
    size: int
    channels: int
    kernel: int = CONV_KERNEL

    @property
    def flops(self) -> float:
        return conv_flops(
            self.batch,
            self.size,
            self.size,
            self.channels,
            self.channels,
            self.kernel,
        )

    def label(self) -> str:
        return (
            f"{self.kernel}x{self.kernel} {self.channels}->{self.channels} "
            f"{self.size}x{self.size} b{self.batch}"
        )


# P3 of a 640 input (stride 8) at the neck's and heads' width.
NECK_CONV = ConvShape(batch=1, size=80, channels=256)
QUICK_CONV = ConvShape(batch=1, size=16, channels=16)


def matmul_flops(n: int) -> float:
    """FLOPs of an [n, n] x [n, n] matmul."""
    return 2.0 * n**3


def conv_flops(
    batch: int, height: int, width: int, cin: int, cout: int, kernel: int
) -> float:
    """FLOPs of a stride-1 "same" conv (2 per multiply-add)."""
    return 2.0 * batch * height * width * cin * cout * kernel * kernel


def _inner_steps(flops_per_op: float, min_flops: float) -> int:
    return max(1, round(min_flops / flops_per_op))


def _check_dtype(dtype: str) -> None:
    if dtype not in DTYPES:
        raise ValueError(f"dtype: expected one of {DTYPES}, got {dtype!r}")


def measure_matmul(
    n: int,
    dtype: str = "float32",
    warmup: int = 1,
    repeats: int = 5,
    min_flops: float = MIN_FLOPS_PER_CALL,
) -> dict:
    """Times chained [n, n] matmuls in one TF function.

    The matmuls are chained (each multiplies the last result) so that no
    graph optimisation can merge or drop them; the right factor is scaled
    by 1/sqrt(n) to keep the values bounded.

    Returns:
        A row: op, dtype, shape, flops per call, timing and ``gflops``
        (at the fastest call) and ``gflops_median``.
    """
    import tensorflow as tf

    _check_dtype(dtype)
    if n < 1:
        raise ValueError(f"matmul size must be >= 1, got {n}")
    steps = _inner_steps(matmul_flops(n), min_flops)
    seeds = tf.constant([1, 2]), tf.constant([3, 4])
    a = tf.cast(tf.random.stateless_normal([n, n], seeds[0]), dtype)
    b = tf.cast(tf.random.stateless_normal([n, n], seeds[1]) / n**0.5, dtype)

    @tf.function
    def run(x, y):
        for _ in range(steps):
            x = tf.matmul(x, y)
        return x[0, 0]

    timing = common.best_of(lambda: run(a, b), warmup, repeats)
    return _row("matmul", dtype, f"{n}x{n}", steps * matmul_flops(n), timing)


def measure_conv(
    shape: ConvShape = NECK_CONV,
    dtype: str = "float32",
    warmup: int = 1,
    repeats: int = 5,
    min_flops: float = MIN_FLOPS_PER_CALL,
) -> dict:
    """Times chained stride-1 "same" convs of ``shape`` in one TF function.

    Returns:
        A row as ``measure_matmul``'s.
    """
    import tensorflow as tf

    _check_dtype(dtype)
    steps = _inner_steps(shape.flops, min_flops)
    fan_in = shape.kernel * shape.kernel * shape.channels
    x = tf.cast(
        tf.random.stateless_normal(
            [shape.batch, shape.size, shape.size, shape.channels], [5, 6]
        ),
        dtype,
    )
    w = tf.cast(
        tf.random.stateless_normal(
            [shape.kernel, shape.kernel, shape.channels, shape.channels],
            [7, 8],
        )
        / fan_in**0.5,
        dtype,
    )

    @tf.function
    def run(x, w):
        for _ in range(steps):
            x = tf.nn.conv2d(x, w, strides=1, padding="SAME")
        return x[0, 0, 0, 0]

    timing = common.best_of(lambda: run(x, w), warmup, repeats)
    return _row("conv", dtype, shape.label(), steps * shape.flops, timing)


def _row(op: str, dtype: str, shape: str, flops: float, timing) -> dict:
    return {
        "benchmark": "peak",
        "op": op,
        "dtype": dtype,
        "shape": shape,
        "gflop_per_call": round(flops / 1e9, 4),
        **timing.as_dict(),
        "gflops": round(flops / timing.min_s / 1e9, 2),
        "gflops_median": round(flops / timing.median_s / 1e9, 2),
    }


def peak_gflops(
    dtype: str = "float32",
    sizes: Sequence[int] = MATMUL_SIZES,
    warmup: int = 1,
    repeats: int = 3,
    min_flops: float = MIN_FLOPS_PER_CALL,
) -> float:
    """The machine's attainable matmul GFLOP/s: best over ``sizes``."""
    if not sizes:
        raise ValueError("peak_gflops: no matmul size given")
    return max(
        measure_matmul(n, dtype, warmup, repeats, min_flops)["gflops"]
        for n in sizes
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--dtypes", nargs="+", choices=DTYPES, default=list(DTYPES)
    )
    parser.add_argument(
        "--sizes",
        nargs="+",
        type=common.positive_int,
        default=None,
        help=f"square matmul sides (default {list(MATMUL_SIZES)})",
    )
    parser.add_argument(
        "--no_conv", action="store_true", help="skip the 3x3 conv rows"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny shapes and one repeat: checks that the script runs",
    )
    common.add_timing_flags(parser, warmup=1, repeats=5)
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes = args.sizes or list(QUICK_MATMUL_SIZES)
        args.warmup, args.repeats = 1, 1
    args.sizes = args.sizes or list(MATMUL_SIZES)
    return args


def main(argv: Sequence[str] | None = None) -> list[dict]:
    """Measures and prints every row; returns them."""
    args = parse_args(argv)
    min_flops = QUICK_MIN_FLOPS_PER_CALL if args.quick else MIN_FLOPS_PER_CALL
    conv = QUICK_CONV if args.quick else NECK_CONV
    common.emit({"benchmark": "peak", "machine": common.machine_info()})
    rows = []
    for dtype in args.dtypes:
        for n in args.sizes:
            rows.append(
                common.emit(
                    measure_matmul(
                        n, dtype, args.warmup, args.repeats, min_flops
                    )
                )
            )
        if not args.no_conv:
            rows.append(
                common.emit(
                    measure_conv(
                        conv, dtype, args.warmup, args.repeats, min_flops
                    )
                )
            )
    summary = [
        {
            "benchmark": "peak",
            "summary": f"{op}_{dtype}",
            "gflops": max(
                r["gflops"]
                for r in rows
                if r["op"] == op and r["dtype"] == dtype
            ),
        }
        for dtype in args.dtypes
        for op in ("matmul", "conv")
        if any(r["op"] == op and r["dtype"] == dtype for r in rows)
    ]
    for row in summary:
        common.emit(row)
    common.print_table(
        "Attainable throughput (GFLOP/s at the fastest call; median beside)",
        rows,
        (
            "op",
            "dtype",
            "shape",
            "gflop_per_call",
            "min_s",
            "median_s",
            "gflops",
            "gflops_median",
        ),
    )
    return rows + summary


if __name__ == "__main__":
    main()
