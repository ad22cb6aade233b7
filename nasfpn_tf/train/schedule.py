"""Learning rate schedule and optimizer of detector training.

SGD with momentum, a linear warm-up from `train.warmup_learning_rate` to
`train.learning_rate`, then cosine decay to zero at `train.steps` or a step
decay, as RetinaNet and NAS-FPN (Ghiasi et al., CVPR 2019,
arXiv:1904.07392) are trained. The pieces are Model Garden's schedules
(`official.modeling.optimization.lr_schedule`) and tf_keras' SGD; L2 comes
from the model's kernel regularizers, not from the optimizer.
"""

from __future__ import annotations

import tf_keras
from official.modeling.optimization import lr_schedule

from nasfpn_tf import config as config_lib

Schedule = tf_keras.optimizers.schedules.LearningRateSchedule


def build_learning_rate(train: config_lib.TrainConfig) -> Schedule:
    """The learning rate as a function of the step (updates done so far).

    With W = warmup_steps, T = steps and peak = learning_rate:
      step < W:   warmup_learning_rate + (peak - warmup_learning_rate) * step / W
      cosine:     peak * (1 + cos(pi * (step - W) / (T - W))) / 2, 0 from T on
      step decay: peak * step_factor ** (boundaries b with b < step)

    Args:
        train: the TrainConfig.

    Returns:
        A tf_keras LearningRateSchedule.
    """
    peak = train.learning_rate
    if train.schedule == "cosine":
        decay = lr_schedule.CosineDecayWithOffset(
            offset=train.warmup_steps,
            initial_learning_rate=peak,
            decay_steps=train.steps - train.warmup_steps,
            alpha=0.0,
        )
    elif train.schedule == "step":
        # Model Garden's piecewise constant: a boundary b keeps its old rate
        # at step b and switches on the step after.
        decay = tf_keras.optimizers.schedules.PiecewiseConstantDecay(
            boundaries=list(train.step_boundaries),
            values=[
                peak * train.step_factor**i
                for i in range(len(train.step_boundaries) + 1)
            ],
        )
    else:
        raise ValueError(
            f"train.schedule must be one of {config_lib.SCHEDULES}; got "
            f"{train.schedule!r}."
        )
    if not train.warmup_steps:
        return decay
    return lr_schedule.LinearWarmup(
        after_warmup_lr_sched=decay,
        warmup_steps=train.warmup_steps,
        warmup_learning_rate=train.warmup_learning_rate,
    )


def build_optimizer(
    train: config_lib.TrainConfig, learning_rate: Schedule | None = None
) -> tf_keras.optimizers.Optimizer:
    """SGD with momentum on the schedule, clipped by the global norm.

    tf_keras sums the replicas' gradients before clipping, so the clip
    applies to the gradient of the global batch. Under "mixed_float16" the
    optimizer is wrapped in a dynamic LossScaleOptimizer, which also skips
    steps whose scaled gradients overflow. Call inside `strategy.scope()`.

    Args:
        train: the TrainConfig.
        learning_rate: the schedule; None builds `build_learning_rate`'s.

    Returns:
        The optimizer; its `iterations` count the updates.
    """
    if learning_rate is None:
        learning_rate = build_learning_rate(train)
    optimizer = tf_keras.optimizers.SGD(
        learning_rate=learning_rate,
        momentum=train.momentum,
        global_clipnorm=train.gradient_clip_norm,
    )
    if train.mixed_precision == "mixed_float16":
        optimizer = tf_keras.mixed_precision.LossScaleOptimizer(optimizer)
    return optimizer
