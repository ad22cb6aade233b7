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

`--breakdown` looks inside the children instead: it trains `--children`
default children one after another in this process (as a search does:
`ProxyTask.reward` then `release`, with the quickstart's 100 proxy steps
unless `--train_steps` says otherwise) and splits each one's wall time
into phases (`child_breakdown`). The first child pays the process's
one-time costs as well; the table shows the first and the mean of the
others. `--baseline=DIR` runs the same children, alternately, in
subprocesses that import `nasfpn_tf` from the checkout DIR, and prints its
table beside this checkout's: a before/after comparison under the same
load. A phase or part whose method does not exist here (renamed) stops
the run with an error naming it; only the baseline, which may predate a
method, lists such phases and skips them (`--skip_missing_phases`). Pin
it to one core for figures that compare:

  python benchmarks/search_overhead.py --samples 6 --algorithms ppo,random
  python benchmarks/search_overhead.py --proxy sleep --child_seconds 2 \
      --samples 40
  TF_NUM_INTRAOP_THREADS=1 TF_NUM_INTEROP_THREADS=1 taskset -c 1 \
      python benchmarks/search_overhead.py --breakdown --train_steps 100 \
      --children 3 --baseline=/path/to/other/checkout
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import json
import os
import pathlib
import random
import shutil
import subprocess
import sys
import tempfile
import time
import types

_START = time.perf_counter()

if __package__ in (None, ""):  # run as a file
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks import common

common.quiet_tensorflow()

from nasfpn_tf import config as config_lib
from nasfpn_tf.search import controller as controller_lib
from nasfpn_tf.search import history as history_lib
from nasfpn_tf.search import proxy as proxy_lib
from nasfpn_tf.search import report as report_lib
from nasfpn_tf.search import results as results_lib
from nasfpn_tf.search import runner
from nasfpn_tf.search import search_dir as search_dir_lib

_IMPORTED = time.perf_counter()

PROXIES = ("train", "sleep")
# Training steps of each child of the timed search.
SEARCH_TRAIN_STEPS = 10
# (part, class, method): the harness's work outside the children.
PARTS = (
    ("sample", controller_lib.Controller, "sample"),
    ("sample", controller_lib.RandomPolicy, "sample"),
    ("update", controller_lib.Controller, "update"),
    ("checkpoint", search_dir_lib.SearchDir, "save_policy"),
    ("history", history_lib.History, "append"),
    ("results", search_dir_lib.SearchDir, "write_results"),
    ("result_files", results_lib, "write_result"),
    ("report", report_lib.Reporter, "on_sample"),
    ("report", report_lib.Reporter, "on_update"),
    ("final_report", report_lib.Reporter, "finish"),
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


class MissingMethodError(AttributeError):
    """A method this benchmark times is not there (renamed or removed):
    the figures would silently leave its time out."""


def _missing(what: str, table: str, error: Exception) -> MissingMethodError:
    return MissingMethodError(
        f"{what}, which this nasfpn_tf does not have ({error}); when a "
        f"method is renamed, rename it in {table} of "
        "benchmarks/search_overhead.py too"
    )


@contextlib.contextmanager
def timed_parts(totals: dict[str, float]):
    """Adds the seconds of each PARTS method to `totals[part]`.

    A part called inside another (results inside a report) counts in both.

    Raises:
        MissingMethodError: a PARTS method does not exist.
    """
    for part, owner, name in PARTS:
        if not hasattr(owner, name):
            where = (
                owner.__name__
                if isinstance(owner, types.ModuleType)
                else f"{owner.__module__}.{owner.__qualname__}"
            )
            raise _missing(
                f"part {part!r} times {where}.{name}",
                "PARTS",
                AttributeError(name),
            )
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


# --------------------------------------------------------------------------
# Inside a child (--breakdown).

# (phase, owner, attribute) of the methods a child's phases are timed by,
# each by its own time, less the time of the phases called inside it, so
# that the phases of a child add up to its wall time. Owners are named
# "module:object"; one missing in the checkout measured stops the run
# (MissingMethodError), unless --skip_missing_phases (an older checkout
# under --baseline) lists and skips it.
CHILD_PHASES = (
    ("proxy: other", "nasfpn_tf.search.proxy:ProxyTask", "train"),
    ("session set-up", "nasfpn_tf.train.trainer:Session", "__init__"),
    ("run files", "nasfpn_tf.train.trainer:Session", "_write_run_files"),
    ("data check", "nasfpn_tf.train.trainer:Session", "_check_data"),
    ("model build", "nasfpn_tf.modeling.detector", "build_detector"),
    (
        "optimizer build",
        "nasfpn_tf.train.trainer:Session",
        "_build_trainer",
    ),
    ("trainer set-up", "nasfpn_tf.train.loops:DetectionTrainer", "__init__"),
    (
        "checkpoint manager",
        "nasfpn_tf.train.trainer:Session",
        "_make_checkpoint_manager",
    ),
    (
        "orbit controller",
        "nasfpn_tf.train.trainer:Session",
        "_make_controller",
    ),
    ("datasets", "nasfpn_tf.data.pipeline", "build_dataset"),
    ("fit: other", "nasfpn_tf.train.trainer:Session", "fit"),
    ("orbit train: other", "orbit:Controller", "train"),
    ("train loops", "nasfpn_tf.train.loops:DetectionTrainer", "train"),
    (
        "loop-end checks",
        "nasfpn_tf.train.loops:DetectionTrainer",
        "train_loop_end",
    ),
    (
        "progress: logs, summaries",
        "nasfpn_tf.train.progress:Progress",
        "on_train",
    ),
    ("checkpoint saves", "tensorflow:train.CheckpointManager", "save"),
    ("eval: tracing + run", "orbit:Controller", "evaluate"),
    (
        "eval: COCO set-up",
        "nasfpn_tf.train.loops:DetectionTrainer",
        "eval_begin",
    ),
    (
        "eval: COCO update",
        "nasfpn_tf.train.loops:DetectionTrainer",
        "eval_reduce",
    ),
    (
        "eval: COCO result",
        "nasfpn_tf.train.loops:DetectionTrainer",
        "eval_end",
    ),
    ("eval: bookkeeping", "nasfpn_tf.train.progress:Progress", "on_eval"),
    ("clear_session + gc", "nasfpn_tf.search.proxy", "_free_memory"),
    ("release", "nasfpn_tf.search.proxy:ProxyTask", "release"),
)
# "train loops" is split into these two: the first loop's time beyond
# what its steps take at the later loops' pace is tracing (and graph
# optimisation, the iterator's creation); the rest is steps.
TRACING = "train: tracing (first loop)"
STEPS = "train steps"
IMPORTS = "imports (first child only)"
UNTIMED = "untimed"


def _resolve(owner: str):
    """ "module:dotted.object" (or a module) -> the object."""
    import importlib

    module, _, path = owner.partition(":")
    value = importlib.import_module(module)
    for name in filter(None, path.split(".")):
        value = getattr(value, name)
    return value


def resolve_phases(
    skip_missing: bool = False,
) -> tuple[list[tuple[str, object, str]], list[str]]:
    """The owner object of each `CHILD_PHASES` method.

    Args:
        skip_missing: leave out a phase whose owner or method does not
            exist, instead of raising.

    Returns:
        (phase, owner, attribute) of the phases found, and the names of
        those left out.

    Raises:
        MissingMethodError: a phase's owner or method does not exist and
            ``skip_missing`` is False.
    """
    found, missing = [], []
    for phase, owner_name, name in CHILD_PHASES:
        try:
            owner = _resolve(owner_name)
            getattr(owner, name)
        except (ImportError, AttributeError) as error:
            if not skip_missing:
                raise _missing(
                    f"phase {phase!r} times {owner_name}.{name}",
                    "CHILD_PHASES",
                    error,
                ) from error
            missing.append(phase)
            continue
        found.append((phase, owner, name))
    return found, missing


class PhaseClock:
    """Times the `CHILD_PHASES` methods, each by its own (exclusive) time.

    Train loops are also recorded one by one with their step counts, for
    the split into tracing and steps.
    """

    def __init__(self, skip_missing: bool = False):
        self.skip_missing = skip_missing
        self.missing: list[str] = []  # phases left out (skip_missing)
        self.seconds: dict[str, float] = collections.defaultdict(float)
        self.calls: dict[str, int] = collections.defaultdict(int)
        self.loops: list[tuple[float, int]] = []
        self._inner: list[float] = []  # time of nested phases, per level

    def reset(self):
        self.seconds.clear()
        self.calls.clear()
        self.loops = []

    def wrap(self, phase: str, fn):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            start = time.perf_counter()
            self._inner.append(0.0)
            result = None
            try:
                result = fn(*args, **kwargs)
                return result
            finally:
                elapsed = time.perf_counter() - start
                own = elapsed - self._inner.pop()
                if self._inner:
                    self._inner[-1] += elapsed
                self.seconds[phase] += own
                # A manager's save returns None when it is not yet due.
                if phase != "checkpoint saves" or result is not None:
                    self.calls[phase] += 1
                if phase == "train loops":
                    self.loops.append((own, int(args[1])))

        return timed

    @contextlib.contextmanager
    def installed(self):
        """Wraps every phase's method while inside (`resolve_phases`: a
        missing one raises, or with ``skip_missing`` is listed in
        ``missing`` and on stderr)."""
        found, self.missing = resolve_phases(self.skip_missing)
        if self.missing:
            sys.stderr.write(f"phases not timed: {', '.join(self.missing)}\n")
        undo = []
        for phase, owner, name in found:
            own = vars(owner).get(name, _MISSING)
            setattr(owner, name, self.wrap(phase, getattr(owner, name)))
            undo.append((owner, name, own))
        try:
            yield self
        finally:
            for owner, name, own in reversed(undo):
                if own is _MISSING:
                    delattr(owner, name)  # inherited: unshadow it
                else:
                    setattr(owner, name, own)

    def phases(self, wall: float) -> dict[str, float]:
        """Phase -> seconds of the child just timed, `train loops` split
        into tracing and steps, and `untimed` the rest of `wall`."""
        phases = dict(self.seconds)
        loops = phases.pop("train loops", 0.0)
        tracing = 0.0
        if len(self.loops) > 1:
            later_s = sum(s for s, _ in self.loops[1:])
            later_steps = sum(n for _, n in self.loops[1:])
            first_s, first_steps = self.loops[0]
            tracing = max(0.0, first_s - first_steps * later_s / later_steps)
        phases[TRACING] = tracing
        phases[STEPS] = loops - tracing
        phases[UNTIMED] = wall - sum(phases.values())
        return phases


_MISSING = object()


def child_specs(config, count: int, seed: int) -> list:
    """The specs of the children: drawn from the search space by `seed`,
    the same sequence in every checkout."""
    space = runner.make_space(config)
    rng = random.Random(seed)
    return [space.random_spec(rng) for _ in range(count)]


def run_children(
    config, count: int, seed: int, skip_missing: bool = False
) -> list[dict]:
    """Trains `count` children as a search does and times their phases.

    Args:
        skip_missing: see `resolve_phases`.

    Returns:
        One row per child: `child`, `wall_s`, `reward`, `steps`, `phases`
        (phase -> seconds; see `PhaseClock.phases`) and, if any phase was
        skipped, `missing_phases`.
    """
    proxy = proxy_lib.ProxyTask(config)
    clock = PhaseClock(skip_missing)
    rows = []
    out_dir = tempfile.mkdtemp(prefix="child_breakdown_")
    try:
        with clock.installed():
            for index, spec in enumerate(child_specs(config, count, seed)):
                work_dir = os.path.join(out_dir, f"child{index}")
                clock.reset()
                start = time.perf_counter()
                with contextlib.redirect_stdout(sys.stderr):
                    result = proxy.reward(spec, work_dir)
                    proxy.release(work_dir)
                wall = time.perf_counter() - start
                phases = clock.phases(wall)
                if index == 0:
                    phases[IMPORTS] = _IMPORTED - _START
                    wall += phases[IMPORTS]
                rows.append(
                    {
                        "case": "child",
                        "child": index,
                        "spec": spec.canonical_key()[:12],
                        "status": result.status,
                        "reward": result.reward,
                        "steps": result.metrics.get("steps"),
                        "wall_s": round(wall, 3),
                        "checkpoint_saves": clock.calls["checkpoint saves"],
                        "phases": {k: round(v, 4) for k, v in phases.items()},
                    }
                )
                if clock.missing:
                    rows[-1]["missing_phases"] = clock.missing
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    return rows


def phase_names(rows: list[dict]) -> list[str]:
    """The phases of `rows` in a child's order."""
    order = [p for p, _, _ in CHILD_PHASES if p != "train loops"]
    names = [IMPORTS, *order, TRACING, STEPS, UNTIMED]
    names += [p for row in rows for p in row["phases"]]
    return list(dict.fromkeys(names))


def mean_phases(rows: list[dict]) -> tuple[dict[str, float], float]:
    """Mean seconds of each phase over `rows`, and their mean wall time."""
    names = phase_names(rows)
    means = {
        name: sum(r["phases"].get(name, 0.0) for r in rows) / len(rows)
        for name in names
    }
    return means, sum(r["wall_s"] for r in rows) / len(rows)


def breakdown_rows(columns: dict[str, list[dict]]) -> list[dict]:
    """Table rows: per phase, `<column>_s` and `<column>_share` (of that
    column's wall time) for each column's mean child; the last row is
    the wall time."""
    means = {name: mean_phases(rows) for name, rows in columns.items()}
    names = phase_names([r for rows in columns.values() for r in rows])
    table = []
    for phase in [*names, "child wall time"]:
        row = {"phase": phase}
        for name, (phases, wall) in means.items():
            seconds = wall if phase == "child wall time" else phases[phase]
            row[f"{name}_s"] = round(seconds, 3)
            row[f"{name}_share"] = round(seconds / wall, 4)
        table.append(row)
    return table


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    # --train_steps: default SEARCH_TRAIN_STEPS, with --breakdown the
    # config's.
    common.add_search_flags(
        parser,
        samples=6,
        samples_per_update=3,
        train_steps=None,
        proxies=PROXIES,
        algorithms="ppo,random",
    )
    parser.add_argument(
        "--child_seconds",
        type=common.non_negative_float,
        default=1.0,
        help="duration of each child with --proxy=sleep",
    )
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="time the phases inside children instead of a search",
    )
    parser.add_argument(
        "--children",
        type=common.positive_int,
        default=3,
        help="children trained one after another with --breakdown",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the children's specs with --breakdown",
    )
    parser.add_argument(
        "--baseline",
        default="",
        help="with --breakdown: a checkout whose nasfpn_tf is timed too, "
        "alternately with this one's, each in its own processes",
    )
    parser.add_argument(
        "--rounds",
        type=common.positive_int,
        default=1,
        help="with --baseline: processes per checkout, taken alternately",
    )
    parser.add_argument(
        "--skip_missing_phases",
        action="store_true",
        help="with --breakdown: a phase whose method this nasfpn_tf lacks "
        "is listed and skipped instead of stopping the run (how --baseline "
        "times an older checkout)",
    )
    args = parser.parse_args(argv)
    if args.baseline and not args.breakdown:
        parser.error("--baseline needs --breakdown")
    return args


def breakdown_config(args: argparse.Namespace):
    """The files and override; `--train_steps` if given."""
    config = config_lib.load_config(args.config_file, args.params_override)
    if args.train_steps is None:
        return config
    return config_lib.override(
        config, {"search.proxy.train_steps": args.train_steps}
    )


def side_command(
    args: argparse.Namespace, script: str, skip_missing: bool = False
) -> list[str]:
    """The command that times children in another process."""
    command = [
        sys.executable,
        script,
        "--breakdown",
        f"--children={args.children}",
        f"--seed={args.seed}",
        f"--params_override={args.params_override}",
    ]
    if skip_missing:
        command.append("--skip_missing_phases")
    command += [f"--config_file={path}" for path in args.config_file]
    if args.train_steps is not None:
        command.append(f"--train_steps={args.train_steps}")
    return command


def compare_checkouts(args: argparse.Namespace) -> list[dict]:
    """Times the children under `--baseline`'s nasfpn_tf and this one's,
    alternately, each in fresh processes; prints both tables side by side
    and each child's reward under both."""
    sides = {
        "before": os.path.abspath(args.baseline),
        "after": str(pathlib.Path(__file__).resolve().parents[1]),
    }
    # A copy of these benchmarks outside both checkouts, so that the
    # PYTHONPATH alone says whose nasfpn_tf a process imports.
    copy_dir = tempfile.mkdtemp(prefix="search_overhead_bench_")
    shutil.copytree(
        pathlib.Path(__file__).resolve().parent,
        os.path.join(copy_dir, "benchmarks"),
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    script = os.path.join(copy_dir, "benchmarks", "search_overhead.py")
    children: dict[str, list[dict]] = {side: [] for side in sides}
    try:
        for round_ in range(args.rounds):
            order = list(sides) if round_ % 2 == 0 else list(sides)[::-1]
            for side in order:
                env = dict(os.environ, PYTHONPATH=sides[side])
                # The baseline may predate a phase's method; this
                # checkout must have them all.
                done = subprocess.run(
                    side_command(args, script, side == "before"),
                    env=env,
                    capture_output=True,
                    text=True,
                    check=False,
                )
                rows = [
                    json.loads(line)
                    for line in done.stdout.splitlines()
                    if line.startswith("{")
                ]
                rows = [r for r in rows if r.get("case") == "child"]
                if done.returncode or not rows:
                    sys.stderr.write(done.stderr[-4000:])
                    raise RuntimeError(f"the {side} side failed")
                for row in rows:
                    common.emit({**row, "side": side, "round": round_})
                children[side] += rows
    finally:
        shutil.rmtree(copy_dir, ignore_errors=True)
    return report_breakdown(children)


def report_breakdown(children: dict[str, list[dict]]) -> list[dict]:
    """Prints the phase tables (warm children, first children) and the
    rewards of `children` (column -> child rows)."""
    warm = {k: [r for r in v if r["child"] > 0] for k, v in children.items()}
    first = {k: [r for r in v if r["child"] == 0] for k, v in children.items()}
    tables = []
    for title, columns in (
        ("children after the first (mean)", warm),
        ("first child of a process (mean)", first),
    ):
        if not all(columns.values()):
            continue
        rows = breakdown_rows(columns)
        names = [
            f"{name}_{unit}" for name in columns for unit in ("s", "share")
        ]
        common.print_table(
            f"Phases of a child: {title}", rows, ["phase", *names]
        )
        tables += rows
    for name, rows in children.items():
        missing = dict.fromkeys(
            p for r in rows for p in r.get("missing_phases", ())
        )
        if missing:
            sys.stdout.write(
                f"\nPhases not timed in {name} (their time is in their "
                f"caller's phase or untimed): {', '.join(missing)}\n"
            )
    rewards = collections.defaultdict(dict)
    for name, rows in children.items():
        for row in rows:
            key = (row["child"], row["spec"])
            rewards[key].setdefault(f"{name}_reward", []).append(row["reward"])
            rewards[key].setdefault(f"{name}_wall_s", []).append(row["wall_s"])
            rewards[key][f"{name}_saves"] = row["checkpoint_saves"]
    reward_rows = []
    for (child, spec), values in sorted(rewards.items()):
        row = {"child": child, "spec": spec}
        for key, value in values.items():
            row[key] = (
                " ".join(f"{v:.4f}" for v in value)
                if key.endswith("reward")
                else (
                    round(sum(value) / len(value), 2)
                    if isinstance(value, list)
                    else value
                )
            )
        reward_rows.append(row)
    columns = ["child", "spec"] + [
        k for k in reward_rows[0] if k not in ("child", "spec")
    ]
    common.print_table(
        "Rewards and wall times of the children", reward_rows, columns
    )
    return tables


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    if args.breakdown:
        if args.baseline:
            return compare_checkouts(args)
        common.emit({"case": "machine", **common.machine_info()})
        rows = run_children(
            breakdown_config(args),
            args.children,
            args.seed,
            args.skip_missing_phases,
        )
        for row in rows:
            common.emit(row)
        return report_breakdown({"this": rows})
    if args.train_steps is None:
        args.train_steps = SEARCH_TRAIN_STEPS
    config = common.search_config(args)
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
