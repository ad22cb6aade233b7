"""Timing and printing helpers shared by the benchmark scripts.

Every benchmark prints one JSON object per line for each case (machine
readable, ``json.loads`` of each line starting with ``{``) and a readable
table at the end. Times are wall-clock seconds of calls that have finished:
a TF function called eagerly on CPU returns once its outputs exist, and
``fetch`` copies a result to host memory to make sure of it.

Competing callables are timed round-robin (A B C A B C ...) after their
warm-up, so that a change of machine load (other processes, turbo,
thermal limits) falls on all of them alike; ratios are taken between their
medians.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TextIO

from nasfpn_tf import errors

# Shown for missing values in tables (a failed case, a ratio without base).
MISSING = "-"
CPU_FLAGS_OF_INTEREST = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
# An error is reported by its first lines (Keras puts the cause second).
ERROR_LINES = 2
ERROR_CHARS = 400


def quiet_tensorflow() -> None:
    """Hides TF's C++ info logs (set before TensorFlow is imported)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@dataclasses.dataclass(frozen=True)
class Timing:
    """Wall-clock seconds of repeated calls of one callable.

    Attributes:
        samples: seconds of each timed call, in order.
        first_call_s: seconds of the first warm-up call (tracing, graph
            optimisation or XLA compilation included).
    """

    samples: tuple[float, ...]
    first_call_s: float = float("nan")

    def __post_init__(self):
        if not self.samples:
            raise ValueError("Timing needs at least one sample")

    @property
    def median_s(self) -> float:
        return statistics.median(self.samples)

    @property
    def min_s(self) -> float:
        return min(self.samples)

    @property
    def max_s(self) -> float:
        return max(self.samples)

    def as_dict(self) -> dict[str, float]:
        """Median, min, max and count, rounded for printing."""
        return {
            "median_s": round(self.median_s, 6),
            "min_s": round(self.min_s, 6),
            "max_s": round(self.max_s, 6),
            "repeats": len(self.samples),
            "first_call_s": round(self.first_call_s, 3),
        }


def fetch(value: Any) -> Any:
    """Copies every tensor in ``value`` to host memory (numpy).

    Returns the numpy structure; plain Python values pass through.
    """

    def to_host(x):
        return x.numpy() if hasattr(x, "numpy") else x

    import tensorflow as tf

    return tf.nest.map_structure(to_host, value)


def time_call(fn: Callable[[], Any]) -> float:
    """Seconds of one call of ``fn``, its result fetched to the host."""
    start = time.perf_counter()
    fetch(fn())
    return time.perf_counter() - start


def time_round_robin(
    fns: Mapping[str, Callable[[], Any]],
    warmup: int,
    repeats: int,
    errors: dict[str, str] | None = None,
) -> dict[str, Timing]:
    """Times several callables alternately: A B A B ... after warm-up.

    Args:
        fns: name -> callable without arguments; its result is fetched.
        warmup: untimed calls of each before timing (>= 1: the first call
            traces and compiles).
        repeats: timed calls of each.
        errors: if given, a callable whose first call raises is dropped and
            ``errors[name]`` gets the exception's type and first line;
            otherwise the exception propagates.

    Returns:
        name -> Timing, in the order of ``fns``, for those that ran.

    Raises:
        ValueError: no callable, ``warmup < 1`` or ``repeats < 1``.
    """
    if not fns:
        raise ValueError("time_round_robin: no callable to time")
    if warmup < 1 or repeats < 1:
        raise ValueError(
            f"warmup and repeats must be >= 1, got {warmup} and {repeats}"
        )
    first = {}
    for name, fn in fns.items():
        try:
            first[name] = time_call(fn)
        except Exception as error:
            if errors is None:
                raise
            errors[name] = describe_error(error)
            continue
        for _ in range(warmup - 1):
            time_call(fn)
    running = {name: fn for name, fn in fns.items() if name in first}
    samples: dict[str, list[float]] = {name: [] for name in running}
    for _ in range(repeats):
        for name, fn in running.items():
            samples[name].append(time_call(fn))
    return {
        name: Timing(tuple(samples[name]), first_call_s=first[name])
        for name in running
    }


def describe_error(error: BaseException) -> str:
    """``Type: the first lines of the message`` (TF errors run long)."""
    return errors.describe_error(error, ERROR_CHARS, ERROR_LINES)


def best_of(fn: Callable[[], Any], warmup: int, repeats: int) -> Timing:
    """Times one callable alone (``repeats`` calls after ``warmup``)."""
    return time_round_robin({"fn": fn}, warmup, repeats)["fn"]


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator rounded to 3 digits, None if undefined."""
    if numerator is None or not denominator:
        return None
    return round(numerator / denominator, 3)


def cpu_flags() -> set[str]:
    """Instruction-set flags of the CPU (empty where /proc is absent)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """What the figures were measured on: CPU, cores, TF and its threads."""
    import tensorflow as tf

    flags = cpu_flags()
    return {
        "cpu": cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "cpu_flags": [f for f in CPU_FLAGS_OF_INTEREST if f in flags],
        "load_average_1m": round(os.getloadavg()[0], 2)
        if hasattr(os, "getloadavg")
        else None,
        "tensorflow": tf.__version__,
        "gpus": len(tf.config.list_physical_devices("GPU")),
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
    }


def emit(row: Mapping[str, Any], out: TextIO | None = None) -> dict:
    """Prints ``row`` as one JSON line (flushed) and returns it as a dict."""
    row = dict(row)
    out = out or sys.stdout
    out.write(json.dumps(row, sort_keys=False, default=_json_default) + "\n")
    out.flush()
    return row


def _json_default(value: Any) -> Any:
    # numpy scalars and tuples of them.
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, set | frozenset):
        return sorted(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def _cell(value: Any) -> str:
    if value is None:
        return MISSING
    if isinstance(value, float):
        if math.isnan(value):
            return MISSING
        if abs(value) >= 100:
            return f"{value:.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        if abs(value) >= 1:
            # Three decimals: a ratio of 1.004 must not read as 1.00.
            return f"{value:.3f}"
        return f"{value:.3g}"
    return str(value)


def format_table(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[str]
) -> str:
    """A plain-text table of ``rows`` with one column per key.

    Missing keys and None print as ``-``.
    """
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [
        max([len(c)] + [len(r[i]) for r in cells])
        for i, c in enumerate(columns)
    ]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(columns, widths)),
        "  ".join("-" * w for w in widths),
    ]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)


def print_table(
    title: str,
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str],
    out: TextIO | None = None,
) -> None:
    """Prints a titled table (after the JSON lines) to ``out`` or stdout."""
    out = out or sys.stdout
    out.write(f"\n{title}\n{format_table(rows, columns)}\n")
    out.flush()


def positive_int(text: str) -> int:
    """argparse type: an int >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an int >= 1, got {text}")
    return value


def non_negative_float(text: str) -> float:
    """argparse type: a float >= 0."""
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a float >= 0, got {text}")
    return value


def add_timing_flags(
    parser: argparse.ArgumentParser, warmup: int = 2, repeats: int = 5
) -> None:
    """--warmup and --repeats with the given defaults."""
    parser.add_argument(
        "--warmup",
        type=positive_int,
        default=warmup,
        help="untimed calls of each callable first (the first one traces)",
    )
    parser.add_argument(
        "--repeats",
        type=positive_int,
        default=repeats,
        help="timed calls of each callable, taken alternately",
    )


# --------------------------------------------------------------------------
# The search benchmarks' flags, defined once here so that a flag means the
# same in every script and a README command has one spelling. They are
# `--snake_case`, `--name=value` (or `--name value`), as in
# `python -m nasfpn_tf.main`.


class _AppendOrDefault(argparse.Action):
    """Appends like ``action="append"``, but the first value given
    replaces the default list instead of adding to it."""

    def __call__(self, parser, namespace, values, option_string=None):
        given = getattr(namespace, self.dest)
        items = [] if given is self.default else list(given)
        setattr(namespace, self.dest, items + [values])


def add_config_flags(
    parser: argparse.ArgumentParser,
    files: Sequence[str] = (),
    override: str = "",
) -> None:
    """--config_file (repeatable) and --params_override, as main reads
    them.

    Args:
        parser: gets the two flags.
        files: the config files when no --config_file is given (default:
            none, the built-in tiny config).
        override: the default --params_override.
    """
    parser.add_argument(
        "--config_file",
        action=_AppendOrDefault,
        default=list(files),
        help="YAML config file (repeatable: later files win); default: "
        f"{', '.join(files) or 'the built-in tiny config'}",
    )
    parser.add_argument(
        "--params_override",
        default=override,
        help="applied after the files: 'train.steps=8,...' or YAML/JSON "
        f"text; default: {override!r}",
    )


def algorithm_list(text: str) -> list[str]:
    """argparse type: ``ppo,random`` -> ["ppo", "random"], each one of the
    config's search algorithms."""
    from nasfpn_tf import config as config_lib

    algorithms = [a for a in text.split(",") if a]
    for algorithm in algorithms:
        if algorithm not in config_lib.SEARCH_ALGORITHMS:
            raise argparse.ArgumentTypeError(
                f"unknown algorithm {algorithm!r}; expected from "
                f"{config_lib.SEARCH_ALGORITHMS}"
            )
    return algorithms


def add_search_flags(
    parser: argparse.ArgumentParser,
    *,
    samples: int | None,
    samples_per_update: int,
    train_steps: int | None,
    proxies: Sequence[str],
    algorithms: str | None = None,
) -> None:
    """The config flags and a small search's budget, as `search_config`
    reads them.

    Args:
        parser: gets --config_file, --params_override, --samples (unless
            ``samples`` is None), --samples_per_update, --train_steps,
            --proxy and, if ``algorithms`` is given, --algorithms.
        samples: default samples (children) per search.
        samples_per_update: default samples per controller update.
        train_steps: default training steps of a child (None: the
            config's).
        proxies: the --proxy choices, the first the default.
        algorithms: default comma-separated --algorithms.
    """
    add_config_flags(parser)
    add = parser.add_argument
    budget = (  # flag, default, what it sets, its meaning
        ("samples", samples, "search.num_samples", "children per search"),
        (
            "samples_per_update",
            samples_per_update,
            "search.samples_per_update",
            "children per controller update",
        ),
        (
            "train_steps",
            train_steps,
            "search.proxy.train_steps",
            "steps of each child (the last rung's)",
        ),
    )
    for name, default, key, meaning in budget:
        if name != "samples" or samples is not None:
            help = f"{meaning} ({key})"
            add(f"--{name}", type=positive_int, default=default, help=help)
    add("--proxy", choices=tuple(proxies), default=proxies[0])
    if algorithms is not None:
        add(
            "--algorithms",
            type=algorithm_list,
            default=algorithms,
            help="comma-separated search.algorithm values",
        )


def add_run_flags(parser: argparse.ArgumentParser) -> None:
    """--retrain_seeds, --merge and --out_dir of the searches that compare
    their finds."""
    parser.add_argument(
        "--retrain_seeds",
        type=int,
        default=0,
        help="retrain each search's best spec with fidelity.reference from "
        "this many seeds (0: no retraining)",
    )
    parser.add_argument(
        "--merge",
        nargs="+",
        default=[],
        metavar="OUTPUT",
        help="instead of searching, summarize the rows earlier runs "
        "printed (files of their output), e.g. runs started side by side",
    )
    parser.add_argument(
        "--out_dir",
        default="",
        help="where the searches run (kept; a rerun resumes them); "
        "default: a temporary folder",
    )


def search_config(args: argparse.Namespace, samples: int | None = None):
    """The files and override of ``args``, then its search budget, with
    children trained (`search.rater: proxy`): the search benchmarks measure
    standalone children (`supernet_search.py` rates on a supernet).

    Args:
        args: parsed `add_search_flags` flags.
        samples: search.num_samples instead of ``args.samples``.

    Returns:
        The `ExperimentConfig` (the children's warm-up is cut to their
        steps by ``proxy_experiment``).
    """
    from nasfpn_tf import config as config_lib

    config = config_lib.load_config(args.config_file, args.params_override)
    return config_lib.override(
        config,
        {
            "search.rater": "proxy",
            "search.num_samples": args.samples if samples is None else samples,
            "search.samples_per_update": args.samples_per_update,
            "search.proxy.train_steps": args.train_steps,
        },
    )


def nested_json(flat: dict[str, Any]) -> str:
    """``{"a.b": 1}`` as the JSON text ``--params_override`` takes."""
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = nested
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return json.dumps(nested)
