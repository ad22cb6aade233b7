"""Inner loops of detector training and evaluation, run by orbit.

`DetectionTrainer` is an `orbit.StandardTrainer` and
`orbit.StandardEvaluator`: a training loop is a `tf.while_loop` of
synchronous steps over a distributed dataset, an evaluation feeds the
detections of every replica to the COCO evaluator.

Each replica's loss is its share of the global batch's loss
(`nasfpn_tf.modeling.losses` normalises by the positives of the whole
global batch and adds 1/num_replicas of the L2), so the optimizer's sum of
the replicas' gradients is the gradient of the global batch, and the
losses the loop reports are the replicas' shares summed.

A non-finite loss is noted with its step inside the loop and raised as
`NonFiniteLossError` when the loop ends, as are non-finite weights: before
the orbit Controller would save a checkpoint, so a diverged state never
reaches the disk.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import orbit
import tensorflow as tf
import tf_keras

from nasfpn_tf import config as config_lib
from nasfpn_tf import evaluation
from nasfpn_tf.modeling import losses
from nasfpn_tf.train import checkpoints

LOSS_NAMES = ("total_loss", "cls_loss", "box_loss", "model_loss", "l2_loss")
# Loop ends whose weight check runs eagerly before it is traced (see
# `DetectionTrainer.state_is_finite`).
EAGER_FINITE_CHECKS = 20


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss (or weights).

    Attributes:
        step: the 1-based step whose loss was not finite (or after which
            the weights were not).
        loss: that loss.
        checkpoint: the newest checkpoint with finite values, or None.
    """

    def __init__(
        self,
        step: int,
        loss: float,
        checkpoint: str | None = None,
        what: str = "loss",
    ):
        super().__init__(step, loss)
        self.step = int(step)
        self.loss = float(loss)
        self.checkpoint = checkpoint
        self.what = what

    def __str__(self) -> str:
        kept = (
            f"the last good checkpoint is {self.checkpoint}"
            if self.checkpoint
            else "no good checkpoint was found"
        )
        return (
            f"Non-finite {self.what} at step {self.step} (loss "
            f"{self.loss}): training stopped without saving; {kept}. Lower "
            "train.learning_rate or raise train.warmup_steps."
        )


class DetectionTrainer(orbit.StandardTrainer, orbit.StandardEvaluator):
    """Inner training and evaluation loops of a detector.

    Build the model and optimizer in `strategy.scope()` first. Datasets
    may be set later through the `train_dataset` / `eval_dataset`
    properties (orbit's), e.g. once the resumed step is known.

    Args:
        config: the run's config.
        strategy: the strategy the model was built under.
        model: the detector (`nasfpn_tf.modeling.detector`).
        optimizer: from `schedule.build_optimizer`.
        train_dataset: distributed (images, labels) training batches.
        eval_dataset: distributed eval batches (labels with ground truth).
        annotation_file: COCO JSON of the eval split ("" = from labels).
    """

    def __init__(
        self,
        config: config_lib.ExperimentConfig,
        strategy: tf.distribute.Strategy,
        model: tf_keras.Model,
        optimizer: tf_keras.optimizers.Optimizer,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        annotation_file: str = "",
    ):
        self.config = config
        self.strategy = strategy
        self.model = model
        self.optimizer = optimizer
        self.annotation_file = annotation_file
        with strategy.scope():
            self.global_step = orbit.utils.create_global_step()
            # Cross-replica accumulators of the loop's summed losses.
            self._loss_sums = {
                name: tf.Variable(0.0, trainable=False, name=name)
                for name in LOSS_NAMES
            }
            self._loss_steps = tf.Variable(0.0, trainable=False)
            self._bad_step = tf.Variable(
                -1, dtype=tf.int64, trainable=False, name="bad_step"
            )
            self._bad_loss = tf.Variable(0.0, trainable=False)
        self.checkpoint = checkpoints.make_checkpoint(
            model, optimizer, self.global_step
        )
        self.loop_seconds = 0.0
        self.loop_means: dict[str, float] = {}
        self._loop_start = 0.0
        self._coco: evaluation.CocoEvaluator | None = None
        self._finite_checks = 0
        self._traced_finite_check: Callable[[], tf.Tensor] | None = None
        self._gradients = self._loss_and_gradients
        if config.train.jit_compile and not isinstance(
            strategy, tf.distribute.TPUStrategy
        ):
            # TPUs compile everything already.
            self._gradients = tf.function(
                self._loss_and_gradients, jit_compile=True
            )
        orbit.StandardTrainer.__init__(
            self,
            train_dataset,
            options=orbit.StandardTrainerOptions(use_tf_while_loop=True),
        )
        orbit.StandardEvaluator.__init__(
            self,
            eval_dataset,
            options=orbit.StandardEvaluatorOptions(use_tf_while_loop=False),
        )

    # ------------------------------------------------------------------
    # Training.

    def _loss_and_gradients(self, images, labels):
        """One replica's losses and gradients (unscaled, not yet summed)."""
        optimizer = self.optimizer
        scaled = isinstance(
            optimizer, tf_keras.mixed_precision.LossScaleOptimizer
        )
        with tf.GradientTape() as tape:
            outputs = self.model(images, training=True)
            total, parts = losses.detection_loss(
                outputs,
                labels,
                self.config.train,
                self.config.model.num_classes,
                self.model.losses,
            )
            loss = optimizer.get_scaled_loss(total) if scaled else total
        variables = self.model.trainable_variables
        gradients = tape.gradient(loss, variables)
        if scaled:
            gradients = optimizer.get_unscaled_gradients(gradients)
        parts = dict(parts, total_loss=total)
        parts["l2_loss"] = total - parts["model_loss"]
        return parts, gradients

    def train_step(self, iterator: Iterator) -> None:
        """One synchronous step over all replicas (cross-replica context)."""

        def replica_step(inputs):
            images, labels = inputs
            parts, gradients = self._gradients(images, labels)
            self.optimizer.apply_gradients(
                zip(gradients, self.model.trainable_variables)
            )
            return parts

        shares = self.strategy.run(replica_step, args=(next(iterator),))
        # Each replica holds its share of the global loss: sum them.
        parts = {
            name: self.strategy.reduce(
                tf.distribute.ReduceOp.SUM, shares[name], axis=None
            )
            for name in LOSS_NAMES
        }
        step = self.global_step + 1
        first_bad = tf.logical_and(
            tf.logical_not(tf.math.is_finite(parts["total_loss"])),
            self._bad_step < 0,
        )
        self._bad_step.assign(tf.where(first_bad, step, self._bad_step))
        self._bad_loss.assign(
            tf.where(first_bad, parts["total_loss"], self._bad_loss)
        )
        for name in LOSS_NAMES:
            self._loss_sums[name].assign_add(parts[name])
        self._loss_steps.assign_add(1.0)
        self.global_step.assign_add(1)

    def train_loop_begin(self) -> None:
        self._loop_start = time.time()

    def train_loop_end(self) -> dict[str, float]:
        """Mean losses of the loop; raises on a non-finite loss or weight.

        Runs before the Controller saves a checkpoint, so raising here
        keeps a diverged state off the disk. The means also land in
        `loop_means`; only the total goes to the Controller, which prints
        what it gets (`progress` reports the parts).

        Raises:
            NonFiniteLossError: naming the first bad step.
        """
        self.loop_seconds = time.time() - self._loop_start
        bad_step = int(self._bad_step.numpy())
        if bad_step >= 0:
            raise NonFiniteLossError(bad_step, float(self._bad_loss.numpy()))
        count = float(self._loss_steps.numpy())
        means = {
            name: float(total.numpy()) / count
            for name, total in self._loss_sums.items()
        }
        for total in self._loss_sums.values():
            total.assign(0.0)
        self._loss_steps.assign(0.0)
        if not self.state_is_finite():
            raise NonFiniteLossError(
                int(self.global_step.numpy()),
                means["total_loss"],
                what="weights",
            )
        self.loop_means = means
        return {"total_loss": means["total_loss"]}

    def state_is_finite(self) -> bool:
        """Whether every float weight of the model and optimizer is finite.

        The first `EAGER_FINITE_CHECKS` calls run eagerly and later ones
        trace the check once: on the tiny detector an eager check takes
        about 0.08 s and tracing it 1.7 s, so short trainings (a search's
        children check twice) skip the trace while long ones get the
        traced check's 4 ms. Under a TPUStrategy, where each eager op is
        a dispatch to the device, it is traced at once.
        """
        self._finite_checks += 1
        if self._finite_checks <= EAGER_FINITE_CHECKS and not isinstance(
            self.strategy, tf.distribute.TPUStrategy
        ):
            return bool(self._finite_check())
        if self._traced_finite_check is None:
            self._traced_finite_check = tf.function(self._finite_check)
        return bool(self._traced_finite_check())

    def _finite_check(self) -> tf.Tensor:
        optimizer_variables = self.optimizer.variables
        if callable(optimizer_variables):  # the legacy optimizers' method
            optimizer_variables = optimizer_variables()
        checks = [
            tf.reduce_all(tf.math.is_finite(v))
            for v in [*self.model.variables, *optimizer_variables]
            if v.dtype.is_floating
        ]
        return tf.reduce_all(tf.stack(checks))

    # ------------------------------------------------------------------
    # Evaluation.

    def eval_begin(self) -> None:
        """Starts a COCO evaluation (orbit calls it eagerly)."""
        if self._coco is None:
            self._coco = evaluation.CocoEvaluator(
                self.annotation_file,
                class_names=self.config.data.class_names,
            )
        self._coco.reset()

    def eval_step(self, iterator: Iterator) -> list[tuple[Any, Any]]:
        """Detections of one global batch, one (labels, outputs) per local
        replica."""

        def replica_step(inputs):
            images, labels = inputs
            outputs = self.model(
                images,
                image_shape=labels["image_info"][:, 1, :],
                anchor_boxes=labels["anchor_boxes"],
                training=False,
            )
            # Mixed precision detections; the evaluator wants float32.
            outputs = {
                key: tf.cast(outputs[key], tf.float32)
                if outputs[key].dtype.is_floating
                else outputs[key]
                for key in evaluation.PREDICTION_KEYS
            }
            keep = {
                "groundtruths": labels["groundtruths"],
                "image_info": labels["image_info"],
            }
            return keep, outputs

        results = self.strategy.run(replica_step, args=(next(iterator),))
        local = self.strategy.experimental_local_results
        replicas = len(local(tf.nest.flatten(results)[0]))
        return [
            tf.nest.map_structure(lambda v, i=i: local(v)[i], results)
            for i in range(replicas)
        ]

    def eval_reduce(self, state=None, step_outputs=None) -> bool:
        """Feeds each replica's detections to the COCO evaluator (eager)."""
        for labels, outputs in step_outputs:
            self._coco.update(labels, outputs)
        return True

    def eval_end(self, state=None) -> dict[str, float]:
        return self._coco.result()
