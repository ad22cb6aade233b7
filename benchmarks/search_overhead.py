"""Share of a search's wall time not spent training children.

Runs a small search (`runner.search`) and splits its wall time into the
children's (the proxy's `reward` calls: build, train, evaluate) and the
rest: KerasTuner's oracle and tuner, controller sampling and updates,
controller checkpoints, history appends, result files, plots, drawing and
TensorBoard scalars. The parts of the rest are timed by wrapping the
methods that do them.

`--proxy=train` (the default) trains real tiny children on the generated
data; `--proxy=sleep` replaces each child by a fixed sleep, which isolates
the harness's cost from the trainer's.

  python benchmarks/search_overhead.py --samples 6 --algorithms ppo,random
  python benchmarks/search_overhead.py --proxy sleep --child-seconds 2 \
      --samples 40
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import os
import pathlib
import shutil
import sys
import tempfile
import time

if __package__ in (None, ""):  # run as a file
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks import common

common.quiet_tensorflow()

from benchmarks.search_vs_random import base_config, parse_algorithms
from nasfpn_tf import config as config_lib
from nasfpn_tf.search import controller as controller_lib
from nasfpn_tf.search import history as history_lib
from nasfpn_tf.search import proxy as proxy_lib
from nasfpn_tf.search import results as results_lib
from nasfpn_tf.search import runner

PROXIES = ("train", "sleep")
# (part, class, method): the harness's work outside the children.
PARTS = (
    ("sample", controller_lib.Controller, "sample"),
    ("sample", controller_lib.RandomPolicy, "sample"),
    ("update", controller_lib.Controller, "update"),
    ("checkpoint", history_lib.SearchDir, "save_policy"),
    ("history", history_lib.History, "append"),
    ("results", history_lib.SearchDir, "write_results"),
    ("result_files", results_lib, "write_result"),
    ("report", runner.Reporter, "on_sample"),
    ("report", runner.Reporter, "on_update"),
    ("final_report", runner.Reporter, "finish"),
)
COLUMNS = (
    "case",
    "samples",
    "wall_s",
    "children_s",
    "overhead_s",
    "overhead_share",
    "per_sample_overhead_s",
    "sample_s",
    "update_s",
    "checkpoint_s",
    "history_s",
    "report_s",
    "final_report_s",
)


class TimedProxy:
    """Wraps a proxy; sums the seconds of its `reward` calls."""

    def __init__(self, inner):
        self.inner = inner
        self.seconds = 0.0
        self.calls = 0

    def reward(self, spec, work_dir):
        start = time.perf_counter()
        try:
            return self.inner.reward(spec, work_dir)
        finally:
            self.seconds += time.perf_counter() - start
            self.calls += 1

    def release(self, work_dir):
        release = getattr(self.inner, "release", None)
        if release is not None:
            release(work_dir)


class SleepProxy:
    """A child that takes `seconds` and earns a reward from its hash."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def reward(self, spec, work_dir):
        time.sleep(self.seconds)
        reward = int(spec.canonical_key()[:8], 16) / 16**8
        return proxy_lib.ProxyResult(reward, "ok", {"AP": reward}, self.seconds)


@contextlib.contextmanager
def timed_parts(totals: dict[str, float]):
    """Adds the seconds of each PARTS method to `totals[part]`.

    A part called inside another (results inside a report) counts in both.
    """
    originals = []

    def wrap(part, fn):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                totals[part] += time.perf_counter() - start

        return timed

    for part, owner, name in PARTS:
        original = getattr(owner, name)
        originals.append((owner, name, original))
        setattr(owner, name, wrap(part, original))
    try:
        yield
    finally:
        for owner, name, original in reversed(originals):
            setattr(owner, name, original)


def run_case(config, algorithm, model_dir, proxy) -> dict:
    config = config_lib.override(config, {"search.algorithm": algorithm})
    totals: dict[str, float] = collections.defaultdict(float)
    timed = TimedProxy(proxy)
    start = time.perf_counter()
    with timed_parts(totals):
        runner.search(config, model_dir, proxy=timed)
    wall = time.perf_counter() - start
    overhead = wall - timed.seconds
    row = {
        "case": algorithm,
        "samples": config.search.num_samples,
        "children": timed.calls,
        "wall_s": round(wall, 2),
        "children_s": round(timed.seconds, 2),
        "overhead_s": round(overhead, 2),
        "overhead_share": round(overhead / wall, 4),
        "per_sample_overhead_s": round(overhead / config.search.num_samples, 3),
    }
    for part in dict.fromkeys(p for p, _, _ in PARTS):
        row[f"{part}_s"] = round(totals[part], 3)
    return row


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=common.positive_int, default=6)
    parser.add_argument(
        "--samples-per-update", type=common.positive_int, default=3
    )
    parser.add_argument(
        "--train-steps",
        type=common.positive_int,
        default=10,
        help="training steps of each child (search.proxy.train_steps)",
    )
    parser.add_argument("--algorithms", default="ppo,random")
    parser.add_argument("--proxy", choices=PROXIES, default="train")
    parser.add_argument(
        "--child-seconds",
        type=common.non_negative_float,
        default=1.0,
        help="duration of each child with --proxy=sleep",
    )
    parser.add_argument("--config_file", action="append", default=[])
    parser.add_argument("--params_override", default="")
    args = parser.parse_args(argv)
    args.algorithms = parse_algorithms(parser, args.algorithms)
    return args


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    config = base_config(args)
    common.emit({"case": "machine", **common.machine_info()})
    out_dir = tempfile.mkdtemp(prefix="search_overhead_")
    rows = []
    try:
        for algorithm in args.algorithms:
            if args.proxy == "sleep":
                proxy = SleepProxy(args.child_seconds)
            else:
                proxy = proxy_lib.ProxyTask(config)
            model_dir = os.path.join(out_dir, algorithm)
            row = run_case(config, algorithm, model_dir, proxy)
            row["proxy"] = args.proxy
            rows.append(common.emit(row))
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    common.print_table(
        f"Search overhead: {args.samples} samples, proxy={args.proxy}",
        rows,
        COLUMNS,
    )
    return rows


if __name__ == "__main__":
    main()
