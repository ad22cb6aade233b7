"""The latency parts of ``benchmarks/tflite.py`` (``--part ranking`` and
``--part objective``): does the search's host latency rank Lite specs as
TFLite int8 does, and what ``search.objective.cost: tflite_latency`` costs
a search. ``benchmarks/tflite.py``'s docstring says what each prints; run
them through it.
"""

from __future__ import annotations

import os
import pathlib
import random
import tempfile
import time

from benchmarks import common

REPO = pathlib.Path(__file__).resolve().parents[1]
LITE_CONFIG = str(REPO / "configs" / "nasfpn_lite_mobilenetv2_320.yaml")
LITE_SEARCH_CONFIG = str(
    REPO / "configs" / "nasfpn_lite_mobilenetv2_320_search.yaml"
)
# Training images calibrating each spec's int8 network (--part ranking).
CALIBRATION_IMAGES = 8
RANK_COLUMNS = (
    "spec",
    "host_tf_ms",
    "host_tf_ms_padded",
    "tflite_int8_ms",
    "tflite_bytes",
)
OBJECTIVE_COLUMNS = (
    "spec",
    "latency_ms",
    "latency_s",
    "tflite_latency_ms",
    "tflite_latency_s",
)


def drawn_specs(config, count: int, seed: int) -> dict:
    """The published spec and `count` distinct ones drawn from the space."""
    from nasfpn_tf.arch import known
    from nasfpn_tf.arch.space import SearchSpace

    space = SearchSpace.from_config(config.search.space)
    rng = random.Random(seed)
    specs = {"published": known.NASFPN_SPEC}
    seen = {known.NASFPN_SPEC.canonical_key()}
    while len(specs) < count + 1:
        spec = space.random_spec(rng)
        if spec.canonical_key() not in seen:
            seen.add(spec.canonical_key())
            specs[f"random_{len(specs) - 1}"] = spec
    return specs


def run_objective(args) -> dict:
    """Seconds per child of the latency and tflite_latency costs."""
    import statistics

    import tf_keras

    from nasfpn_tf import config as config_lib
    from nasfpn_tf.search import objective, ranking

    override = {"model.norm.use_sync_bn": False}
    if args.quick:
        override.update(
            {
                "search.proxy.image_size": args.rank_image_size,
                "search.proxy.filters": args.rank_filters,
                "search.proxy.repeats": args.rank_repeats,
                "model.backbone_width": args.backbone_width,
            }
        )
    config = config_lib.load_config(
        [LITE_CONFIG, LITE_SEARCH_CONFIG], common.nested_json(override)
    )
    child = config_lib.proxy_experiment(config).model
    costs = {
        cost: config_lib.ObjectiveConfig(
            kind="soft",
            cost=cost,
            target=1.0,
            latency_runs=args.repeats,
            tflite_threads=args.threads,
        )
        for cost in ("latency", "tflite_latency")
    }
    rows = []
    for name, spec in drawn_specs(config, args.specs, args.seed).items():
        row = {"spec": name}
        for cost, objective_config in costs.items():
            start = time.monotonic()
            measured = objective.measure_costs(child, spec, objective_config)
            metric = objective.COSTS[cost][0]
            row[metric] = round(measured.metrics()[metric], 2)
            row[f"{cost}_s"] = round(time.monotonic() - start, 1)
            tf_keras.backend.clear_session()
        rows.append(common.emit(row))
    host = [r["latency_ms"] for r in rows]
    device = [r["tflite_latency_ms"] for r in rows]
    summary = {
        "summary": "seconds per child of each latency cost",
        "specs": len(rows),
        "image_size": child.image_size,
        "neck": f"{child.neck.repeats}@{child.neck.filters}",
        "runs": args.repeats,
        "threads": args.threads,
        "latency_s_median": statistics.median(r["latency_s"] for r in rows),
        "tflite_latency_s_median": statistics.median(
            r["tflite_latency_s"] for r in rows
        ),
        "spearman": round(ranking.spearman(host, device), 3),
        "kendall": round(ranking.kendall(host, device), 3),
    }
    common.emit(summary)
    common.print_table(
        f"search.objective costs per child at {child.image_size} px, "
        f"{summary['neck']}, median of {args.repeats} runs, "
        f"{args.threads} thread(s): seconds to build, count and time it "
        f"(latency: TensorFlow; tflite_latency: convert to int8 and time in "
        f"TFLite). Spearman {summary['spearman']}, Kendall "
        f"{summary['kendall']}",
        rows,
        OBJECTIVE_COLUMNS,
    )
    return summary


def run_ranking(args) -> dict:
    import tf_keras

    from nasfpn_tf import config as config_lib
    from nasfpn_tf import export_tflite, tflite_detector
    from nasfpn_tf.modeling import detector, latency
    from nasfpn_tf.search import ranking

    config = config_lib.load_config(
        [LITE_CONFIG],
        common.nested_json(
            {
                "model.image_size": args.rank_image_size,
                "model.neck.repeats": args.rank_repeats,
                "model.neck.filters": args.rank_filters,
                "model.norm.use_sync_bn": False,
                "data.train_path": "",
                "data.synthetic.num_train": 16,
                "data.synthetic.num_heldout": 4,
                "data.synthetic.num_val": 4,
            }
        ),
    )
    specs = drawn_specs(config, args.specs, args.seed)
    size = args.rank_image_size
    # TFLite runs at the export's input size (320 -> 384), the size the
    # exported file takes.
    padded = export_tflite.input_size(config)[0]
    calibration = export_tflite.network_inputs(
        export_tflite.calibration_images(config, CALIBRATION_IMAGES)
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, spec in specs.items():
            start = time.monotonic()
            model = detector.build_detector(config.model, spec=spec)
            host = {
                n: latency.model_latency_ms(model, n, args.repeats, args.warmup)
                for n in dict.fromkeys((size, padded))
            }
            content = export_tflite.convert_network(
                model, padded, "int8", calibration
            )
            path = os.path.join(tmp, f"{name}.tflite")
            pathlib.Path(path).write_bytes(content)
            interpreter = tflite_detector.interpreter_class()(
                model_path=path, num_threads=1
            )
            interpreter.allocate_tensors()
            index = interpreter.get_input_details()[0]["index"]

            def call(interpreter=interpreter, index=index):
                interpreter.set_tensor(index, calibration[0])
                interpreter.invoke()

            timing = common.best_of(call, args.warmup, args.repeats)
            row = {
                "spec": name,
                "host_tf_ms": round(host[size], 2),
                "host_tf_ms_padded": round(host[padded], 2),
                "tflite_int8_ms": round(timing.median_s * 1000.0, 2),
                "tflite_bytes": len(content),
                "seconds": round(time.monotonic() - start, 1),
                "spec_json": spec.to_json(),
            }
            rows.append(common.emit(row))
            del model
            tf_keras.backend.clear_session()
    device = [r["tflite_int8_ms"] for r in rows]
    summary = {
        "summary": "rank correlation, host TF latency vs TFLite int8",
        "specs": len(rows),
        "image_size": size,
        "tflite_size": padded,
        "neck": f"{args.rank_repeats}@{args.rank_filters}",
    }
    for key, label in (("host_tf_ms", ""), ("host_tf_ms_padded", "_padded")):
        host_ms = [r[key] for r in rows]
        summary[f"spearman{label}"] = round(
            ranking.spearman(host_ms, device), 3
        )
        summary[f"kendall{label}"] = round(ranking.kendall(host_ms, device), 3)
        summary[f"spearman{label}_90ci"] = [
            round(v, 3)
            for v in ranking.bootstrap_interval(
                host_ms, device, ranking.spearman
            )
        ]
    common.emit(summary)
    common.print_table(
        f"network latency (no NMS), 1 thread, median of {args.repeats}: host "
        f"TF at {size} px (what the search measures) and at {padded} px, "
        f"TFLite int8 at {padded} px. Spearman host@{size} vs TFLite "
        f"{summary['spearman']} (90% CI {summary['spearman_90ci']}), "
        f"Kendall {summary['kendall']}; host@{padded} vs TFLite "
        f"{summary['spearman_padded']} "
        f"(90% CI {summary['spearman_padded_90ci']})",
        rows,
        RANK_COLUMNS,
    )
    return summary
