"""Rating a spec through the supernet: held-out AP without training.

``SupernetRater`` is the search's second ``Rater`` (``search/rater.py``;
the first is the standalone proxy, ``search/proxy.py``): a spec in, a rated
record out, so the history, reward cache, resume, workers, plots and the
Pareto front work unchanged. At start it loads the trained supernet
(``training.py``) and runs the backbone once over the held-out split and
over ``search.supernet.calibration_batches`` training batches (in file
order, not augmented, so a rating is the same in every process), keeping the
projected input pyramids. Rating a spec then runs only its path through the
neck, the head and NMS over the cached pyramids, in functions traced once
for every spec, and scores the detections against a ground truth converted
once (``scoring.SplitScorer``).

BN statistics of the path (``search.supernet.bn_mode``): ``inherited`` uses
the supernet's moving averages, which mix every path that trained a
weight; ``recalibrate`` re-estimates them on the calibration batches
through the path first (SPOS, DetNAS); ``batch`` normalises each held-out
batch with its own statistics. The mode is recorded in each rated record's
metrics (``bn_mode_index``: the index in ``config.BN_MODES``).
"""

from __future__ import annotations

import os
import time
import traceback

import numpy as np
import tensorflow as tf
import tf_keras

from nasfpn_tf import config as config_lib
from nasfpn_tf.arch.spec import NeckSpec
from nasfpn_tf.data import inputs
from nasfpn_tf.errors import UserError, describe_error
from nasfpn_tf.run_files import SUPERNET_SUBDIR
from nasfpn_tf.search import objective as objective_lib
from nasfpn_tf.search.history import FAILED, OK
from nasfpn_tf.search.rater import ProxyResult
from nasfpn_tf.supernet import model as model_lib
from nasfpn_tf.supernet import scoring, training
from nasfpn_tf.supernet.neck import BATCH, CALIBRATE, CALIBRATED, INHERITED

# search.supernet.bn_mode -> the neck's BN mode when detecting.
DETECT_MODES = {
    "inherited": INHERITED,
    "recalibrate": CALIBRATED,
    "batch": BATCH,
}
EVAL_SPLIT = "heldout"


class SupernetMissingError(UserError, FileNotFoundError):
    """No trained supernet where one was asked for."""


def latest_checkpoint(supernet_dir: str) -> str:
    """The supernet's newest checkpoint, or a `SupernetMissingError`."""
    from nasfpn_tf.train import checkpoints

    path = tf.train.latest_checkpoint(checkpoints.checkpoint_dir(supernet_dir))
    if path is None:
        raise SupernetMissingError(
            f"{supernet_dir}: no trained supernet (no checkpoint); train one "
            "with --mode=supernet or point search.supernet.path at one"
        )
    return path


class SupernetRater:
    """Rates specs by their path through a trained supernet.

    Args:
      config: the search's experiment (its `search.supernet`, proxy sizes,
        data and objective).
      supernet_dir: the trained supernet's directory.
      bn_mode: overrides `search.supernet.bn_mode`.
      backend: the COCO scorer (`scoring.PYCOCOTOOLS` or `scoring.FASTER`);
        None takes the faster one where it is installed.
      objective: the reward from AP and costs; None is `search.objective`
        (costs measured by `objective.shared_meter()` when it needs them).
    """

    def __init__(
        self,
        config: config_lib.ExperimentConfig,
        supernet_dir: str,
        *,
        bn_mode: str | None = None,
        backend: str | None = None,
        objective: objective_lib.Objective | None = None,
    ):
        from nasfpn_tf.search import runner

        settings = config.search.supernet
        self.config = config
        self.supernet_dir = supernet_dir
        self.bn_mode = bn_mode or settings.bn_mode
        if self.bn_mode not in DETECT_MODES:
            raise ValueError(f"bn_mode: unknown {self.bn_mode!r}")
        self.experiment = training.supernet_experiment(config)
        self.space = runner.make_space(config)
        self.penalty_reward = float(config.search.penalty_reward)
        if objective is None:
            kind = config.search.objective.kind
            objective = objective_lib.Objective(
                config.search.objective,
                None if kind == "ap" else objective_lib.shared_meter(),
            )
        self.objective = objective
        self.checkpoint = latest_checkpoint(supernet_dir)
        tf_keras.utils.set_random_seed(config.runtime.seed)
        self.model = model_lib.build_supernet(self.experiment, self.space)
        tf.train.Checkpoint(model=self.model).restore(
            self.checkpoint
        ).expect_partial()
        start = time.monotonic()
        self._cache_heldout(settings.eval_steps)
        self._calibration_batches = settings.calibration_batches
        self._calibration = None  # cached at the first re-estimation
        if backend is None:
            backend = (
                scoring.FASTER
                if scoring.faster_available()
                else scoring.PYCOCOTOOLS
            )
        self.scorer = scoring.SplitScorer(
            self._groundtruths,
            [b["image_info"] for b in self._heldout],
            backend,
            annotation_file=self._annotations,
        )
        self.setup_seconds = time.monotonic() - start
        self._detect = {}
        self._calibrate = tf.function(self._calibrate_fn)
        self._reset = tf.function(self.model.neck.reset_calibration)
        self.ratings = 0

    # -- the cached inputs ---------------------------------------------------

    def _features(self):
        if not hasattr(self, "_features_fn"):
            self._features_fn = tf.function(
                lambda images: self.model.features(images, training=False)
            )
        return self._features_fn

    def _cache_heldout(self, eval_steps: int) -> None:
        data = inputs.resolve_split(self.experiment, EVAL_SPLIT)
        inputs.check_split(EVAL_SPLIT, data)
        self._annotations = data.annotations
        dataset = inputs.dataset_fn(
            self.experiment,
            data.file_pattern,
            is_training=False,
            drop_remainder=False,
        )(None)
        if eval_steps:
            dataset = dataset.take(eval_steps)
        self._heldout, self._groundtruths = [], []
        for images, labels in dataset:
            self._heldout.append(
                {
                    "feats": self._features()(images),
                    "image_shape": labels["image_info"][:, 1, :],
                    "anchor_boxes": dict(labels["anchor_boxes"]),
                    "image_info": labels["image_info"].numpy(),
                }
            )
            self._groundtruths.append(
                {k: v.numpy() for k, v in labels["groundtruths"].items()}
            )
        if not self._heldout:
            raise UserError(f"the {EVAL_SPLIT} split has no images to rate on")

    def _cache_calibration(self, batches: int) -> None:
        self._calibration = []
        # The training images in file order without augmentation: the
        # parser's random augmentation runs in a parallel map, so augmented
        # batches (and the statistics re-estimated on them) would differ
        # from process to process, and so would the rewards.
        data = inputs.resolve_split(self.experiment, "train")
        dataset = inputs.dataset_fn(
            self.experiment, data.file_pattern, is_training=False
        )(None).map(lambda images, labels: (images, 0))
        for images, _ in dataset.take(batches):
            self._calibration.append(self._features()(images))

    # -- rating ---------------------------------------------------------------

    def _calibrate_fn(self, feats, arch):
        self.model.neck(feats, arch, mode=CALIBRATE)

    def _detect_fn(self, mode: str):
        if mode not in self._detect:
            model = self.model

            def detect(feats, arch, image_shape, anchor_boxes):
                return model.detect(
                    feats, arch, image_shape, anchor_boxes, mode=mode
                )

            self._detect[mode] = tf.function(detect, reduce_retracing=True)
        return self._detect[mode]

    def tracing_counts(self) -> dict[str, int]:
        """Traces of each rating function so far (one each, whatever the
        number of specs)."""
        counts = {
            f"detect/{m}": f.experimental_get_tracing_count()
            for m, f in self._detect.items()
        }
        counts["calibrate"] = self._calibrate.experimental_get_tracing_count()
        return counts

    def rate(
        self, spec: NeckSpec, bn_mode: str | None = None
    ) -> dict[str, float]:
        """Held-out COCO metrics of ``spec``'s path (``AP``, ``AP50``, ...,
        ``rate_seconds``, ``bn_mode_index``) under ``bn_mode`` (None: the
        rater's); one rater serves every mode from one cache."""
        start = time.monotonic()
        bn_mode = bn_mode or self.bn_mode
        arch = model_lib.arch_tensors(self.space, spec)
        if bn_mode == "recalibrate":
            if self._calibration is None:
                self._cache_calibration(self._calibration_batches)
            self._reset()
            for feats in self._calibration:
                self._calibrate(feats, arch)
        detect = self._detect_fn(DETECT_MODES[bn_mode])
        detections = []
        for batch in self._heldout:
            out = detect(
                batch["feats"],
                arch,
                batch["image_shape"],
                batch["anchor_boxes"],
            )
            detections.append({k: v.numpy() for k, v in out.items()})
        metrics = self.scorer.score(detections)
        self.ratings += 1
        metrics["rate_seconds"] = time.monotonic() - start
        metrics["bn_mode_index"] = float(config_lib.BN_MODES.index(bn_mode))
        return metrics

    def reward(self, spec: NeckSpec, work_dir: str) -> ProxyResult:
        """Rates ``spec`` (the `Rater` protocol); never raises Exception.
        ``work_dir`` is not written: a rating leaves no files."""
        del work_dir
        start = time.monotonic()
        try:
            metrics = self.rate(spec)
            reward, metrics = self.objective.rate(
                self.experiment.model, spec, metrics["AP"], metrics
            )
            metrics = {
                k: float(v)
                for k, v in metrics.items()
                if isinstance(v, (int, float)) and np.isfinite(v)
            }
            return ProxyResult(
                reward=float(reward),
                status=OK,
                metrics=metrics,
                seconds=time.monotonic() - start,
            )
        except Exception as error:  # noqa: BLE001 - a failed rating
            traceback.print_exc()
            return ProxyResult(
                reward=self.penalty_reward,
                status=FAILED,
                seconds=time.monotonic() - start,
                error=describe_error(error),
            )

    def release(self, work_dir: str) -> None:
        del work_dir


def default_supernet_dir(config: config_lib.ExperimentConfig, model_dir: str):
    """`search.supernet.path`, or `<model_dir>/supernet`."""
    return config.search.supernet.path or os.path.join(
        model_dir, SUPERNET_SUBDIR
    )


def check_supernet_matches(
    config: config_lib.ExperimentConfig, supernet_dir: str
) -> None:
    """Fails, naming the keys, when the supernet in ``supernet_dir`` was
    trained for other model sizes or another space than ``config``'s."""
    saved = config_lib.load_saved(supernet_dir)
    if saved is None:
        return
    want = training.supernet_experiment(config)
    differ = [
        k
        for k in config_lib.diff(saved, want)
        if k.startswith(("model.", "search.space"))
    ]
    if differ:
        raise UserError(
            f"{supernet_dir}: the supernet was trained for other settings "
            f"({', '.join(sorted(differ)[:5])}); use another "
            "search.supernet.path or the same model settings"
        )
