"""Memory of a training step: the supernet against a standalone child.

For a config (e.g. ``configs/proxy_search.yaml``: ResNet-10 at 512²,
3@256), each case runs in its own process: build the network of the proxy's
sizes (the supernet, or a standalone detector of the published spec), then
one forward and backward pass at ``--batch`` images under a gradient tape
(float32 on the CPU); it prints the weights' bytes and the growth of the
process's peak resident memory over the built model's, per image.

    python benchmarks/supernet_memory.py --config_file configs/proxy_search.yaml
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common

CASES = ("standalone", "supernet")


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def measure(case: str, config_files: list[str], override: str, batch: int):
    common.quiet_tensorflow()
    import random

    import tensorflow as tf

    from nasfpn_tf import config as config_lib
    from nasfpn_tf.arch.known import NASFPN_SPEC
    from nasfpn_tf.modeling import detector
    from nasfpn_tf.search import runner
    from nasfpn_tf.supernet import model as model_lib
    from nasfpn_tf.supernet import training

    config = config_lib.load_config(config_files, override)
    config = config_lib.override(config, {"train.mixed_precision": "float32"})
    experiment = training.supernet_experiment(config)
    size = experiment.model.image_size
    space = runner.make_space(config)
    if case == "supernet":
        model = model_lib.build_supernet(experiment, space)
        arch = model_lib.arch_tensors(
            space, space.random_spec(random.Random(0))
        )

        def forward(images):
            return model(images, arch, mode="train")
    else:
        model = detector.build_detector(experiment.model, NASFPN_SPEC)

        def forward(images):
            return model(images, training=True)

    images = tf.random.normal([batch, size, size, 3])

    @tf.function
    def step(images):
        with tf.GradientTape() as tape:
            outputs = forward(images)
            loss = tf.add_n(
                [tf.reduce_sum(v) for v in tf.nest.flatten(outputs)]
            )
        return tape.gradient(loss, model.trainable_variables)

    step.get_concrete_function(images)
    built = _peak_mb()
    step(images)
    peak = _peak_mb()
    weights = sum(v.shape.num_elements() for v in model.variables) * 4
    return {
        "case": case,
        "image_size": size,
        "batch": batch,
        "weights_mb": round(weights / 2**20, 1),
        "built_peak_mb": round(built, 1),
        "step_peak_mb": round(peak, 1),
        "step_mb_per_image": round((peak - built) / batch, 1),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_config_flags(parser)
    parser.add_argument("--batch", type=common.positive_int, default=1)
    parser.add_argument("--case", choices=CASES, default=None)
    args = parser.parse_args(argv)
    if args.case:
        row = measure(
            args.case, args.config_file, args.params_override, args.batch
        )
        print(json.dumps(row), flush=True)
        return row
    rows = []
    for case in CASES:
        command = [sys.executable, os.path.abspath(__file__), "--case", case]
        command += [f"--config_file={f}" for f in args.config_file]
        command += [f"--params_override={args.params_override}"]
        command += [f"--batch={args.batch}"]
        out = subprocess.run(
            command, check=False, capture_output=True, text=True
        )
        lines = [x for x in out.stdout.splitlines() if x.startswith("{")]
        if out.returncode or not lines:
            row = {"case": case, "error": out.stderr.strip()[-400:]}
        else:
            row = json.loads(lines[-1])
        rows.append(common.emit(row))
    return rows


if __name__ == "__main__":
    main()
