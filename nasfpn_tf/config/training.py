"""Config sections of a run: `train`, `eval` and `runtime`."""

from __future__ import annotations

import dataclasses

from nasfpn_tf.config.checks import (
    ConfigError,
    _choice,
    _fraction,
    _non_negative,
    _positive,
)

SCHEDULES = ("cosine", "step")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
STRATEGIES = ("default", "mirrored", "multi_worker_mirrored", "tpu")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimization, losses and bookkeeping of training.

    Attributes:
        batch_size: global batch (all replicas together).
        steps: total training steps.
        learning_rate: peak learning rate of SGD with momentum.
        warmup_steps: linear warmup from `warmup_learning_rate`.
        warmup_learning_rate: learning rate at step 0.
        schedule: "cosine" decay to 0 or "step" decay.
        step_boundaries: steps at which "step" multiplies by `step_factor`.
        step_factor: multiplier at each boundary.
        momentum: SGD momentum.
        l2_weight_decay: L2 penalty on kernels.
        gradient_clip_norm: global-norm clipping; None turns it off.
        focal_alpha: focal loss alpha.
        focal_gamma: focal loss gamma.
        huber_delta: Huber delta of the box loss.
        box_loss_weight: weight of the box loss against the class loss.
        init_checkpoint: checkpoint to initialize the backbone from
            (ImageNet pretraining); "" trains from scratch.
        checkpoint_every: steps between checkpoints.
        keep_checkpoints: checkpoints kept on disk.
        summary_every: steps between TensorBoard summaries.
        log_every: steps between log lines / metrics.jsonl rows.
        mixed_precision: Keras mixed precision policy name.
        jit_compile: XLA-compile the train step.
    """

    batch_size: int = 16
    steps: int = 700
    learning_rate: float = 0.08
    warmup_steps: int = 100
    warmup_learning_rate: float = 0.001
    schedule: str = "cosine"
    step_boundaries: tuple[int, ...] = ()
    step_factor: float = 0.1
    momentum: float = 0.9
    l2_weight_decay: float = 4e-5
    gradient_clip_norm: float | None = 10.0
    focal_alpha: float = 0.25
    focal_gamma: float = 1.5
    huber_delta: float = 0.1
    box_loss_weight: float = 50.0
    init_checkpoint: str = ""
    checkpoint_every: int = 100
    keep_checkpoints: int = 3
    summary_every: int = 20
    log_every: int = 10
    mixed_precision: str = "float32"
    jit_compile: bool = False

    def __post_init__(self):
        _positive("train.batch_size", self.batch_size)
        _positive("train.steps", self.steps)
        _positive("train.learning_rate", self.learning_rate)
        _non_negative("train.warmup_steps", self.warmup_steps)
        if self.warmup_steps >= self.steps:
            raise ConfigError(
                f"train.warmup_steps ({self.warmup_steps}) must be below "
                f"train.steps ({self.steps})."
            )
        _non_negative("train.warmup_learning_rate", self.warmup_learning_rate)
        _choice("train.schedule", self.schedule, SCHEDULES)
        bounds = self.step_boundaries
        if any(b <= 0 for b in bounds) or list(bounds) != sorted(set(bounds)):
            raise ConfigError(
                "train.step_boundaries must be positive and strictly "
                f"increasing; got {list(bounds)}."
            )
        if self.schedule == "step" and not bounds:
            raise ConfigError(
                "train.schedule 'step' needs train.step_boundaries."
            )
        _fraction("train.step_factor", self.step_factor, low_open=True)
        if not 0 <= self.momentum < 1:
            raise ConfigError(
                f"train.momentum must be in [0, 1); got {self.momentum}."
            )
        _non_negative("train.l2_weight_decay", self.l2_weight_decay)
        if self.gradient_clip_norm is not None:
            _positive("train.gradient_clip_norm", self.gradient_clip_norm)
        _fraction("train.focal_alpha", self.focal_alpha)
        _non_negative("train.focal_gamma", self.focal_gamma)
        _positive("train.huber_delta", self.huber_delta)
        _non_negative("train.box_loss_weight", self.box_loss_weight)
        for name in (
            "checkpoint_every",
            "keep_checkpoints",
            "summary_every",
            "log_every",
        ):
            _positive(f"train.{name}", getattr(self, name))
        _choice("train.mixed_precision", self.mixed_precision, PRECISIONS)


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Evaluation: `steps` batches (0 = the whole split), run every
    `every` training steps in train_and_eval mode."""

    batch_size: int = 16
    steps: int = 0
    every: int = 350

    def __post_init__(self):
        _positive("eval.batch_size", self.batch_size)
        _non_negative("eval.steps", self.steps)
        _positive("eval.every", self.every)


@dataclasses.dataclass(frozen=True)
class RuntimeConfig:
    """Where training runs.

    Attributes:
        strategy: tf.distribute strategy kind.
        tpu: TPU name or grpc address for strategy "tpu" ("" = local TPU
            VM).
        num_gpus: GPUs used by "mirrored"; 0 means every visible GPU.
        seed: global random seed.
    """

    strategy: str = "default"
    tpu: str = ""
    num_gpus: int = 0
    seed: int = 0

    def __post_init__(self):
        _choice("runtime.strategy", self.strategy, STRATEGIES)
        _non_negative("runtime.num_gpus", self.num_gpus)
        _non_negative("runtime.seed", self.seed)
        if self.tpu and self.strategy != "tpu":
            raise ConfigError(
                f"runtime.tpu is set ({self.tpu!r}) but runtime.strategy is "
                f"{self.strategy!r}; use strategy 'tpu'."
            )
