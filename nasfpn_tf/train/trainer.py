"""Training and evaluation of a NAS-FPN detector under tf.distribute.

NAS-FPN (Ghiasi, Lin, Pang, Le, CVPR 2019, arXiv:1904.07392) models are
RetinaNets trained with SGD; this trains them, the full models as well as
the search's short proxy runs (`train_and_evaluate`, or an `open_session`
held across successive halving's rungs).

Orbit runs it, as Model Garden's `train_lib` does: `loops.DetectionTrainer`
holds the inner loops, an `orbit.Controller` the outer one, and restores
and saves checkpoints. Model, optimizer and step live in
`strategy.scope()`; the data comes from `strategy.
distribute_datasets_from_function`, each pipeline reading its shard.

A model_dir holds `config.yaml`, `spec.json` (when a spec is given),
`checkpoints/` (`ckpt-<step>`, the newest `train.keep_checkpoints`),
TensorBoard summaries in `train/` and `eval/`, and `metrics.jsonl`.
Rerunning with the same model_dir resumes from the last checkpoint and the
step count goes on.

A non-finite loss (or weights) stops training with `NonFiniteLossError`
before anything is saved; the error names the newest checkpoint whose
values are all finite.

Over 500 lines, yet one concern: a `Session`'s steps (build, checkpoints,
the orbit controller, fit, evaluate, close) share one state, and the parts
that stand alone already live beside it (`loops.py`, `checkpoints.py`,
`progress.py`, `schedule.py`).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Mapping
from typing import Any

import orbit
import tensorflow as tf
import tf_keras

from nasfpn_tf import config as config_lib
from nasfpn_tf import evaluation
from nasfpn_tf.arch.spec import NeckSpec
from nasfpn_tf.data import inputs
from nasfpn_tf.modeling import detector
from nasfpn_tf.run_files import EVAL_SUBDIR, SPEC_FILENAME
from nasfpn_tf.train import checkpoints, progress, schedule
from nasfpn_tf.train import strategy as strategy_lib
from nasfpn_tf.train.loops import DetectionTrainer, NonFiniteLossError

__all__ = [
    "DetectionTrainer",
    "NonFiniteLossError",
    "Session",
    "open_session",
    "run",
    "train_and_evaluate",
]

MODES = ("train", "eval", "train_and_eval")
# orbit's sentinel for "evaluate until the dataset ends".
WHOLE_SPLIT = -1


def run(
    mode: str,
    config: config_lib.ExperimentConfig,
    model_dir: str,
    strategy: tf.distribute.Strategy | None = None,
) -> dict[str, Any]:
    """Trains, evaluates, or trains with interleaved evaluations.

    Args:
        mode: "train" (to `train.steps`), "eval" (the latest checkpoint on
            the val split) or "train_and_eval" (an evaluation every
            `eval.every` steps and at the end).
        config: the run's config.
        model_dir: the run's directory; a rerun resumes from it.
        strategy: from `make_strategy`; None makes the config's.

    Returns:
        `steps` (the global step reached) and, when training,
        `train_seconds` (this call's) and `final_loss` (mean total loss of
        the last logged interval); when evaluating, the val COCO metrics
        (`AP`, `AP50`, `AP75`, `APs`, `APm`, `APl`).

    Raises:
        ValueError: an unknown mode.
        FileNotFoundError: "eval" without a checkpoint.
        NonFiniteLossError: training diverged.
        config_lib.ConfigError: a data path that matches no file.
        pipeline.UnusableDataError: no record of the training split can
            be read and decoded.
        checkpoints.UnreadableCheckpointError: checkpoints exist but
            none can be restored.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}; got {mode!r}.")
    session = Session(config, model_dir, strategy, mode=mode)
    try:
        if mode == "eval":
            return session.evaluate_latest()
        eval_every = config.eval.every if mode != "train" else 0
        trained = session.fit(eval_every=eval_every)
        # It evaluated on the way unless eval_every is 0 or no step was left.
        evaluated = any(evaluation.is_metric(name) for name in trained)
        if session.evaluating and not evaluated:
            return {**session.evaluate(), **trained}
        return trained
    finally:
        session.close()


def open_session(
    config: config_lib.ExperimentConfig,
    model_dir: str,
    *,
    strategy: tf.distribute.Strategy | None = None,
    spec: NeckSpec | None = None,
    eval_split: str = "val",
) -> Session:
    """A training run the caller holds across calls: `fit(until)` trains
    on, `evaluate()` rates, `close()` lets go.

    Successive halving holds one per promoted child, so each rung goes on
    in the same model, data iterator and traced functions (no rebuild,
    restore or retrace): the batches are those a straight training takes,
    and a child that reaches the last rung ends with the same weights.
    The session builds and restores once, here; it assumes nothing else
    trains `model_dir` while it is open (`is_current` says whether that
    still holds).

    Args:
        config: the run's config.
        model_dir: the run's directory; an open session resumes from it.
        strategy: None makes the config's.
        spec: the neck topology; None resolves `model.neck.arch`.
        eval_split: the split `evaluate` reads: "val" or "heldout".
    """
    return Session(
        config,
        model_dir,
        strategy,
        mode="train_and_eval",
        spec=spec,
        eval_split=eval_split,
    )


def train_and_evaluate(
    config: config_lib.ExperimentConfig,
    model_dir: str,
    strategy: tf.distribute.Strategy | None = None,
    spec: NeckSpec | None = None,
    eval_split: str = "val",
    until: int | None = None,
) -> dict[str, Any]:
    """Trains to `train.steps` (resuming), then evaluates once.

    The search's proxy task calls this with `proxy_experiment(config)` and
    `eval_split="heldout"`; a child that goes through rungs holds an
    `open_session` instead.

    Args:
        config: the run's config.
        model_dir: the run's directory.
        strategy: None makes the config's.
        spec: the neck topology; None resolves `model.neck.arch`.
        eval_split: "val" or "heldout".
        until: stop at this step (<= `train.steps`) and checkpoint; the
            learning rate schedule stays that of `train.steps`, so a rerun
            with a larger `until` goes on as if never stopped.

    Returns:
        `AP`, `AP50`, `AP75`, `APs`, `APm`, `APl` on `eval_split`,
        `steps`, `train_seconds` (this call's) and `final_loss`.

    Raises:
        NonFiniteLossError: training diverged.
    """
    session = open_session(
        config, model_dir, strategy=strategy, spec=spec, eval_split=eval_split
    )
    try:
        trained = session.fit(until)
        return {**session.evaluate(), **trained}
    finally:
        session.close()


class Session:
    """One run's model, data, trainer and orbit Controller.

    Made by `open_session` (or `run`); `close` drops what it holds in
    memory, the files stay.
    """

    def __init__(
        self,
        config: config_lib.ExperimentConfig,
        model_dir: str,
        strategy: tf.distribute.Strategy | None,
        mode: str,
        spec: NeckSpec | None = None,
        eval_split: str = "val",
    ):
        self.config = config
        self.model_dir = model_dir
        self.eval_split = eval_split
        self.closed = False
        self.training = mode != "eval"
        self.evaluating = mode != "train"
        self.strategy = strategy or strategy_lib.make_strategy(config.runtime)
        config_lib.check_batch(config, self.strategy.num_replicas_in_sync)
        # Workers other than a multi-worker run's chief train alike but
        # keep their files out of model_dir.
        self.chief = strategy_lib.is_chief(self.strategy)
        self._write_run_files(spec)
        # The data is checked before the model is built: a typo in a
        # path costs seconds, not a model build.
        self._check_data()
        self._build_trainer(spec)
        self._make_checkpoint_manager()
        self.progress = progress.Progress(
            model_dir,
            total_steps=config.train.steps,
            global_batch=config.train.batch_size,
            log_every=config.train.log_every,
            summary_every=config.train.summary_every,
            learning_rate=self.learning_rate,
            write=self.chief,
        )
        self._make_controller()  # restores the latest checkpoint, if any
        self.start_step = self.step
        if self.evaluating:
            self._attach_eval_dataset()

    def _write_run_files(self, spec: NeckSpec | None) -> None:
        """config.yaml (and spec.json) of a training run, by the chief."""
        tf.io.gfile.makedirs(self.model_dir)
        if self.training and self.chief:
            config_lib.save(self.config, self.model_dir)
            if spec is not None:
                spec.save(os.path.join(self.model_dir, SPEC_FILENAME))

    def _check_data(self) -> None:
        """Resolves and checks the splits this session reads."""
        self.train_data = None
        if self.training:
            self.train_data = inputs.resolve_split(self.config, "train")
            inputs.check_split("train", self.train_data)
        self.eval_data = None
        if self.evaluating:
            split = self.eval_split
            self.eval_data = inputs.resolve_split(self.config, split)
            inputs.check_split(split, self.eval_data)
            inputs.log_split(split, self.eval_data)

    def _build_trainer(self, spec: NeckSpec | None) -> None:
        """The detector, learning rate, optimizer (with its slots) and
        the orbit trainer, under the precision policy and strategy."""
        config, train = self.config, self.config.train
        with precision_policy(train.mixed_precision), self.strategy.scope():
            tf_keras.utils.set_random_seed(config.runtime.seed)
            kwargs = {} if spec is None else {"spec": spec}
            model = detector.build_detector(
                config.model, l2_weight_decay=train.l2_weight_decay, **kwargs
            )
            self.learning_rate = schedule.build_learning_rate(train)
            optimizer = schedule.build_optimizer(train, self.learning_rate)
            # Slots now, so checkpoints restore them at once.
            optimizer.build(model.trainable_variables)
        self.trainer = DetectionTrainer(
            config,
            self.strategy,
            model,
            optimizer,
            annotation_file=(
                self.eval_data.annotations if self.evaluating else ""
            ),
        )

    def _make_checkpoint_manager(self) -> None:
        """The checkpoint manager: the chief's writes to model_dir; another
        worker restores the chief's latest and writes to a temporary
        folder. Sets `resumed`."""
        train = self.config.train
        model = self.trainer.model
        init_fn = None
        if self.training and train.init_checkpoint:
            init_fn = checkpoints.backbone_initializer(
                model, train.init_checkpoint
            )
        write_dir = self.model_dir
        restored_step = None
        if not self.chief:
            # Every worker saves (variables are read collectively), only
            # the chief's copy counts; all resume from the chief's.
            write_dir = tempfile.mkdtemp(prefix="nasfpn_tf_worker_")
            latest = tf.train.latest_checkpoint(
                checkpoints.checkpoint_dir(self.model_dir)
            )
            if latest:
                with self.strategy.scope():
                    self.trainer.checkpoint.restore(latest)
                init_fn = None
                restored_step = int(self.trainer.global_step.numpy())
        self.manager = checkpoints.make_manager(
            self.trainer.checkpoint,
            write_dir,
            self.trainer.global_step,
            every=train.checkpoint_every,
            keep=train.keep_checkpoints,
            init_fn=init_fn,
            # As the chief's manager does after its restore: count the
            # save interval from the restored step, so all save alike.
            last_checkpoint_step=restored_step,
        )
        # Whether training goes on from a checkpoint of model_dir, the same
        # on every worker (a worker's own manager starts empty).
        self.resumed = (
            self.manager.latest_checkpoint is not None
            if self.chief
            else restored_step is not None
        )

    def _make_controller(self) -> None:
        """orbit's Controller, which restores the latest checkpoint."""
        with progress.library_lines_to_log():
            self.controller = orbit.Controller(
                global_step=self.trainer.global_step,
                trainer=self.trainer if self.training else None,
                evaluator=self.trainer if self.evaluating else None,
                strategy=self.strategy,
                train_actions=[self._after_train_loop]
                if self.training
                else None,
                steps_per_loop=self._steps_to_next_event,
                checkpoint_manager=self.manager,
                summary_dir=None,  # `progress` writes the train summaries
                eval_summary_dir=(
                    os.path.join(self.model_dir, EVAL_SUBDIR)
                    if self.chief
                    else None
                ),
            )

    def _attach_eval_dataset(self) -> None:
        self.trainer.eval_dataset = orbit.utils.make_distributed_dataset(
            self.strategy,
            inputs.dataset_fn(
                self.config,
                self.eval_data.file_pattern,
                is_training=False,
                # Static shapes on TPU; elsewhere every image counts.
                drop_remainder=isinstance(
                    self.strategy, tf.distribute.TPUStrategy
                ),
            ),
        )

    @property
    def step(self) -> int:
        return int(self.trainer.global_step.numpy())

    def _steps_to_next_event(self, step: int) -> int:
        """Inner loops end at every log, summary and checkpoint step."""
        train = self.config.train
        intervals = (
            train.log_every,
            train.summary_every,
            train.checkpoint_every,
        )
        return min(n - step % n for n in intervals)

    def _after_train_loop(self, output: Mapping[str, Any]) -> None:
        del output  # the total only; the trainer keeps every part
        self.progress.on_train(
            self.step, self.trainer.loop_means, self.trainer.loop_seconds
        )

    def fit(
        self, until: int | None = None, *, eval_every: int = 0
    ) -> dict[str, Any]:
        """Trains to `train.steps` (or step `until`, before it) and
        checkpoints there; a later call goes on from that step.

        Args:
            until: the step to stop at; the learning rate schedule stays
                that of `train.steps`.
            eval_every: evaluate every this many steps on the way (0:
                not at all).

        Returns:
            `steps` (the global step reached), `train_seconds` (this
            call's) and `final_loss` (mean total loss of the last logged
            interval); with `eval_every`, the metrics of the last
            evaluation on the way, if any.
        """
        self._check_open()
        total = self.config.train.steps
        if until is not None:
            if not 0 < until <= total:
                raise ValueError(
                    f"until must be in 1..train.steps ({total}); got {until}."
                )
            total = until
        train_data = self.train_data
        if self.trainer.train_dataset is None:  # a later fit goes on
            inputs.log_split("train", train_data)
            # A rerun reshuffles from another seed rather than replaying
            # the batches the first run began with.
            self.trainer.train_dataset = orbit.utils.make_distributed_dataset(
                self.strategy,
                inputs.dataset_fn(
                    self.config,
                    train_data.file_pattern,
                    is_training=True,
                    seed=self.config.runtime.seed + self.start_step,
                ),
            )
        self.progress.start(self.step)
        seconds_before = self.progress.train_seconds
        if not self.resumed:
            # Step 0 (or the pretrained start) is the first good state, and
            # it starts the checkpoint interval at 0. Every worker saves or
            # none does: a save reads variables collectively.
            with progress.library_lines_to_log():
                self.controller.save_checkpoint()
        metrics: dict[str, Any] = {}
        try:
            while self.step < total:
                target = total
                if eval_every:
                    target = min(
                        total, (self.step // eval_every + 1) * eval_every
                    )
                with progress.library_lines_to_log():
                    self.controller.train(
                        target, checkpoint_at_completion=False
                    )
                if eval_every and self.evaluating:
                    metrics = self.evaluate()
            with progress.library_lines_to_log():
                self.controller.save_checkpoint()
        except NonFiniteLossError as error:
            error.checkpoint = checkpoints.last_good(self.manager)
            raise
        except tf.errors.OutOfRangeError:
            # The training data repeats forever unless a whole pass
            # yields no usable example.
            raise inputs.no_examples_error("train", train_data) from None
        self.resumed = True  # a later fit goes on from here
        last = self.progress.last_train or {}
        return {
            **metrics,
            "steps": self.step,
            "train_seconds": self.progress.train_seconds - seconds_before,
            "final_loss": last.get("total_loss", float("nan")),
        }

    def evaluate_latest(self) -> dict[str, Any]:
        """Evaluates the restored checkpoint (mode "eval")."""
        if self.manager.latest_checkpoint is None:
            raise FileNotFoundError(
                f"No checkpoint in {checkpoints.checkpoint_dir(self.model_dir)}"
                "; train first (--mode=train)."
            )
        return {**self.evaluate(), "steps": self.step}

    def evaluate(self) -> dict[str, float]:
        """COCO metrics (`AP`, `AP50`, `AP75`, `APs`, `APm`, `APl`) of the
        current weights on the session's eval split, also written to
        metrics.jsonl and the eval summaries."""
        self._check_open()
        if not self.evaluating:
            raise ValueError("A session of mode 'train' does not evaluate.")
        steps = self.config.eval.steps or WHOLE_SPLIT
        with progress.library_lines_to_log():
            metrics = self.controller.evaluate(steps=steps)
        metrics = {
            k: float(v) for k, v in metrics.items() if evaluation.is_metric(k)
        }
        self.progress.on_eval(self.step, self.eval_split, metrics)
        return metrics

    def is_current(self) -> bool:
        """Whether the newest checkpoint of model_dir is still the one this
        session saved last (nothing else has trained model_dir on)."""
        self._check_open()
        latest = tf.train.latest_checkpoint(
            checkpoints.checkpoint_dir(self.model_dir)
        )
        return latest == self.manager.latest_checkpoint

    def close(self) -> None:
        """Lets go of the model, optimizer, data and traced functions (the
        files stay); clearing the Keras session then frees their memory.
        Closing twice is harmless."""
        self.trainer = self.controller = self.manager = None
        self.closed = True

    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeError(f"The session of {self.model_dir} is closed.")


@contextlib.contextmanager
def precision_policy(name: str) -> Iterator[None]:
    """Builds layers under mixed precision policy `name`, then restores.

    main.py sets the policy for a whole process; this also covers callers
    such as the search's proxy that train several configs in one process.
    """
    previous = tf_keras.mixed_precision.global_policy()
    tf_keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        tf_keras.mixed_precision.set_global_policy(previous)
