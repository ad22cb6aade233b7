"""What a rated spec costs: a standalone proxy child against the supernet,
side by side in one process (same threads, same load).

Trains one standalone child of the published spec with the search's proxy
settings (``search.proxy``, e.g. the 500 steps of
``configs/tiny_search.yaml``) and rates ``--specs`` random specs with a
trained supernet (``--supernet``), then prints the CPU and wall seconds per
rated spec of each and their ratio, and the supernet's one-off costs
(loading and caching the held-out pyramids; its training time from its
``supernet.json``), with the number of ratings after which the supernet
has paid for itself.

    python benchmarks/supernet_cost.py --config_file configs/tiny_search.yaml \\
        --supernet runs/supernet --specs 30
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common

common.quiet_tensorflow()

from nasfpn_tf import config as config_lib
from nasfpn_tf.arch.known import NASFPN_SPEC
from nasfpn_tf.search import proxy as proxy_lib
from nasfpn_tf.search import runner


def _cpu() -> float:
    return time.process_time()


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_config_flags(parser)
    parser.add_argument("--supernet", required=True)
    parser.add_argument("--bn_mode", default=None)
    parser.add_argument("--specs", type=common.positive_int, default=30)
    parser.add_argument(
        "--skip_child", action="store_true", help="rate with the supernet only"
    )
    args = parser.parse_args(argv)
    from nasfpn_tf.supernet import rater as rater_lib

    config = config_lib.load_config(args.config_file, args.params_override)
    rows = {"machine": common.machine_info()}
    start, cpu = time.perf_counter(), _cpu()
    rater = rater_lib.SupernetRater(config, args.supernet, bn_mode=args.bn_mode)
    rows["supernet_setup"] = {
        "wall_s": round(time.perf_counter() - start, 2),
        "cpu_s": round(_cpu() - cpu, 2),
    }
    rng = random.Random(0)
    space = runner.make_space(config)
    specs = [NASFPN_SPEC] + [space.random_spec(rng) for _ in range(args.specs)]
    walls, cpus = [], []
    for spec in specs:
        start, cpu = time.perf_counter(), _cpu()
        rater.rate(spec)
        walls.append(time.perf_counter() - start)
        cpus.append(_cpu() - cpu)
    # The first rating traces the functions; the rest is the steady cost.
    rows["supernet_rating"] = {
        "first_wall_s": round(walls[0], 3),
        "median_wall_s": round(statistics.median(walls[1:]), 3),
        "median_cpu_s": round(statistics.median(cpus[1:]), 3),
        "bn_mode": rater.bn_mode,
        "specs": len(specs) - 1,
    }
    done = os.path.join(args.supernet, "supernet.json")
    if os.path.exists(done):
        with open(done) as f:
            rows["supernet_training_s"] = json.load(f).get("train_seconds")
    if not args.skip_child:
        task = proxy_lib.ProxyTask(config)
        with tempfile.TemporaryDirectory() as work_dir:
            start, cpu = time.perf_counter(), _cpu()
            result = task.train(NASFPN_SPEC, work_dir, seed=0)
            rows["standalone_child"] = {
                "steps": config.search.proxy.train_steps,
                "wall_s": round(time.perf_counter() - start, 2),
                "cpu_s": round(_cpu() - cpu, 2),
                "AP": round(result.reward, 4),
            }
        child = rows["standalone_child"]
        rating = rows["supernet_rating"]
        rows["ratio_wall"] = round(child["wall_s"] / rating["median_wall_s"], 1)
        rows["ratio_cpu"] = round(child["cpu_s"] / rating["median_cpu_s"], 1)
        if rows.get("supernet_training_s"):
            rows["break_even_specs"] = round(
                rows["supernet_training_s"] / child["wall_s"], 1
            )
    common.emit(rows)
    return rows


if __name__ == "__main__":
    main()
