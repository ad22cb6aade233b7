"""Experiment config schema: frozen dataclasses and their value checks.

The defaults describe the tiny CPU demo: `python -m nasfpn_tf.main` with no
flags runs a small complete search on generated data on a laptop CPU.
Paper-scale settings of NAS-FPN (Ghiasi, Lin, Pang, Le, CVPR 2019,
arXiv:1904.07392) live in `configs/*.yaml`.

Each section's `__post_init__` checks its values and their relations;
`ExperimentConfig.__post_init__` checks relations across sections.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from nasfpn_tf.arch import space as space_lib
from nasfpn_tf.arch import spec as spec_lib
from nasfpn_tf.errors import UserError

BACKBONES = ("resnet10", "resnet18", "resnet50", "resnet101", "mobilenetv2")
NECK_TYPES = ("nasfpn", "fpn")
NMS_TYPES = ("batched", "v2", "v1")
ACTIVATIONS = ("relu", "relu6", "swish", "hard_swish")
SCHEDULES = ("cosine", "step")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
STRATEGIES = ("default", "mirrored", "multi_worker_mirrored", "tpu")
SEARCH_ALGORITHMS = ("ppo", "reinforce", "random")
# How a child stopped at some rung of successive halving is rewarded
# (`search.rungs.final_reward`; see `nasfpn_tf/search/rungs.py`).
RUNG_REWARDS = ("highest", "rank", "first")
OBJECTIVE_KINDS = ("ap", "soft", "hard")
RATERS = ("proxy", "supernet")
SUPERNET_SAMPLING = ("uniform", "balanced")
BN_MODES = ("inherited", "recalibrate", "batch")
OBJECTIVE_COSTS = ("flops", "latency")

# Every feature level must survive the backbone's stride-8 stem and first
# stage, so an input side must be a multiple of 2**3. Deeper levels are
# resampled by the neck, which copes with odd sizes (the Lite model at 320).
IMAGE_SIZE_MULTIPLE = 8
MAX_PORT = 65535


class ConfigError(UserError, ValueError):
    """A config file, override or value is invalid."""


# --------------------------------------------------------------------------
# Checks used by the sections' __post_init__.


def _choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ConfigError(
            f"{name} must be one of {', '.join(map(repr, choices))}; "
            f"got {value!r}."
        )


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{name} must be positive; got {value!r}.")


def _non_negative(name: str, value: float) -> None:
    if not value >= 0:
        raise ConfigError(f"{name} must be >= 0; got {value!r}.")


def _fraction(name: str, value: float, *, low_open: bool = False) -> None:
    """Checks `value` in [0, 1], or (0, 1] with `low_open`."""
    low_ok = value > 0 if low_open else value >= 0
    if not (low_ok and value <= 1):
        bounds = "(0, 1]" if low_open else "[0, 1]"
        raise ConfigError(f"{name} must be in {bounds}; got {value!r}.")


def _image_size(name: str, value: int) -> None:
    _positive(name, value)
    if value % IMAGE_SIZE_MULTIPLE:
        raise ConfigError(
            f"{name} must be divisible by {IMAGE_SIZE_MULTIPLE}; got {value}."
        )


# --------------------------------------------------------------------------
# model


@dataclasses.dataclass(frozen=True)
class NeckConfig:
    """The feature pyramid between backbone and heads.

    Attributes:
        type: "nasfpn" (merging cells from a spec) or "fpn" (top-down FPN).
        filters: channels of every pyramid level.
        repeats: how many times the NAS-FPN cell stack is stacked.
        use_separable_conv: separable 3x3 convs in cells (NAS-FPNLite).
        dropblock_keep_prob: DropBlock keep probability in cells; None
            turns DropBlock off.
        dropblock_size: DropBlock square size in pixels of the feature map.
        arch: path of a spec JSON (e.g. a search's best_spec.json); None
            means the published NAS-FPN spec.
    """

    type: str = "nasfpn"
    filters: int = 16
    repeats: int = 2
    use_separable_conv: bool = False
    dropblock_keep_prob: float | None = None
    dropblock_size: int = 3
    arch: str | None = None

    def __post_init__(self):
        _choice("model.neck.type", self.type, NECK_TYPES)
        _positive("model.neck.filters", self.filters)
        _positive("model.neck.repeats", self.repeats)
        if self.dropblock_keep_prob is not None:
            _fraction(
                "model.neck.dropblock_keep_prob",
                self.dropblock_keep_prob,
                low_open=True,
            )
        _positive("model.neck.dropblock_size", self.dropblock_size)
        if self.arch is not None and not self.arch:
            raise ConfigError(
                "model.neck.arch must be a spec JSON path or null; got ''."
            )


@dataclasses.dataclass(frozen=True)
class AnchorConfig:
    """RetinaNet anchors: `num_scales` octave scales x aspect ratios.

    `anchor_size` is the base anchor side in units of the level's stride.
    An anchor is positive when its IoU with a box is >= `match_threshold`
    and negative below `unmatched_threshold` (between: ignored); each box
    also gets its best anchor, whatever its IoU (Model Garden's matcher).
    `python -m nasfpn_tf.data.stats` shows how well they fit a data set.
    """

    num_scales: int = 3
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    anchor_size: float = 1.5
    match_threshold: float = 0.5
    unmatched_threshold: float = 0.5

    def __post_init__(self):
        _positive("model.anchor.num_scales", self.num_scales)
        if not self.aspect_ratios:
            raise ConfigError("model.anchor.aspect_ratios must not be empty.")
        for ratio in self.aspect_ratios:
            _positive("model.anchor.aspect_ratios[*]", ratio)
        _positive("model.anchor.anchor_size", self.anchor_size)
        _fraction("model.anchor.match_threshold", self.match_threshold)
        if not 0 <= self.unmatched_threshold <= self.match_threshold:
            raise ConfigError(
                "model.anchor.unmatched_threshold must be in [0, "
                f"match_threshold={self.match_threshold}]; got "
                f"{self.unmatched_threshold}."
            )


@dataclasses.dataclass(frozen=True)
class HeadConfig:
    """RetinaNet class and box heads, shared across levels."""

    num_convs: int = 2
    num_filters: int = 16
    use_separable_conv: bool = False

    def __post_init__(self):
        _non_negative("model.head.num_convs", self.num_convs)
        _positive("model.head.num_filters", self.num_filters)


@dataclasses.dataclass(frozen=True)
class NormConfig:
    """Batch norm and activation used by backbone, neck and heads."""

    activation: str = "relu"
    momentum: float = 0.99
    epsilon: float = 1e-3
    use_sync_bn: bool = False

    def __post_init__(self):
        _choice("model.norm.activation", self.activation, ACTIVATIONS)
        if not 0 < self.momentum < 1:
            raise ConfigError(
                f"model.norm.momentum must be in (0, 1); got {self.momentum}."
            )
        _positive("model.norm.epsilon", self.epsilon)


@dataclasses.dataclass(frozen=True)
class NmsConfig:
    """Post-processing by Model Garden's detection generator.

    `type` is its `nms_version`. `pre_nms_top_k` boxes per image enter NMS
    with "v1" and "v2" only: Model Garden's "batched" path takes every box
    above `score_threshold` and ignores it.
    """

    type: str = "batched"
    pre_nms_top_k: int = 1000
    iou_threshold: float = 0.5
    score_threshold: float = 0.05
    max_detections: int = 100

    def __post_init__(self):
        _choice("model.nms.type", self.type, NMS_TYPES)
        _positive("model.nms.pre_nms_top_k", self.pre_nms_top_k)
        _fraction("model.nms.iou_threshold", self.iou_threshold, low_open=True)
        _fraction("model.nms.score_threshold", self.score_threshold)
        _positive("model.nms.max_detections", self.max_detections)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """RetinaNet with a NAS-FPN (or FPN) neck.

    Attributes:
        backbone: one of BACKBONES, built by Model Garden.
        backbone_width: channel multiplier of the backbone (ResNet
            `depth_multiplier`, MobileNet `filter_size_scale`); 1.0 is the
            published width.
        image_size: side of the square input in pixels.
        num_classes: classes including background, as Model Garden counts
            them (class 0 is background).
        min_level: finest pyramid level (stride 2**min_level).
        max_level: coarsest pyramid level; both within a spec's bounds
            (`arch.spec.MIN_LEVEL_BOUND` .. `MAX_LEVEL_BOUND`).
        anytime: attach a head after every neck repeat (anytime detection,
            paper Sec. 3), not only after the last.
    """

    backbone: str = "resnet10"
    backbone_width: float = 0.25
    image_size: int = 128
    num_classes: int = 3
    min_level: int = 3
    max_level: int = 7
    neck: NeckConfig = dataclasses.field(default_factory=NeckConfig)
    anchor: AnchorConfig = dataclasses.field(default_factory=AnchorConfig)
    head: HeadConfig = dataclasses.field(default_factory=HeadConfig)
    norm: NormConfig = dataclasses.field(default_factory=NormConfig)
    anytime: bool = False
    nms: NmsConfig = dataclasses.field(default_factory=NmsConfig)

    def __post_init__(self):
        _choice("model.backbone", self.backbone, BACKBONES)
        _positive("model.backbone_width", self.backbone_width)
        _image_size("model.image_size", self.image_size)
        if self.num_classes < 2:
            raise ConfigError(
                "model.num_classes counts background too and must be >= 2; "
                f"got {self.num_classes}."
            )
        for name in ("min_level", "max_level"):
            if not (
                spec_lib.MIN_LEVEL_BOUND
                <= getattr(self, name)
                <= spec_lib.MAX_LEVEL_BOUND
            ):
                raise ConfigError(
                    f"model.{name} must be in {spec_lib.MIN_LEVEL_BOUND}.."
                    f"{spec_lib.MAX_LEVEL_BOUND}; got {getattr(self, name)}."
                )
        if self.min_level >= self.max_level:
            raise ConfigError(
                f"model.min_level ({self.min_level}) must be below "
                f"model.max_level ({self.max_level})."
            )


# --------------------------------------------------------------------------
# data


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """The generated data set used when no TFRecord paths are given.

    `num_classes` counts object classes only (ids 1..num_classes).
    """

    num_train: int = 512
    num_heldout: int = 128
    num_val: int = 128
    num_classes: int = 2
    seed: int = 0

    def __post_init__(self):
        for name in ("num_train", "num_heldout", "num_val", "num_classes"):
            _positive(f"data.synthetic.{name}", getattr(self, name))
        _non_negative("data.synthetic.seed", self.seed)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Input data and augmentation.

    Attributes:
        train_path: TFRecord glob of training tf.Examples; "" generates
            the synthetic set. The same holds for `val_path` (final
            evaluation) and `heldout_path` (the search's reward split,
            carved from the training images as in the paper).
        val_annotations: COCO JSON of `val_path`; "" builds the ground
            truth from the records themselves.
        heldout_annotations: COCO JSON of `heldout_path`; "" as above.
        class_names: names of classes 1..model.num_classes - 1 of your
            own data ("" for an unused id), set by `--data_dir` from the
            converter's dataset.json; they name per-class AP, exported
            models' classes and drawn predictions. Empty for the
            generated set.
        max_instances: boxes per image after padding (static shapes).
        aug_scale_min: smallest random rescale in training.
        aug_scale_max: largest random rescale in training.
        aug_rand_hflip: random horizontal flips in training.
        shuffle_buffer: tf.data shuffle buffer of training examples.
        cache: cache decoded examples in memory.
        autotune: let tf.data tune its parallelism and buffers as it
            runs. A search's children turn it off (`proxy_experiment`):
            deleting an iterator waits for the tuning thread's sleep (up
            to a minute), which a short child pays at its end.
    """

    train_path: str = ""
    val_path: str = ""
    heldout_path: str = ""
    val_annotations: str = ""
    heldout_annotations: str = ""
    class_names: tuple[str, ...] = ()
    max_instances: int = 100
    aug_scale_min: float = 0.8
    aug_scale_max: float = 1.2
    aug_rand_hflip: bool = True
    shuffle_buffer: int = 64
    cache: bool = False
    autotune: bool = True
    synthetic: SyntheticConfig = dataclasses.field(
        default_factory=SyntheticConfig
    )

    def __post_init__(self):
        _positive("data.max_instances", self.max_instances)
        _positive("data.aug_scale_min", self.aug_scale_min)
        if self.aug_scale_min > self.aug_scale_max:
            raise ConfigError(
                f"data.aug_scale_min ({self.aug_scale_min}) must not exceed "
                f"data.aug_scale_max ({self.aug_scale_max})."
            )
        _positive("data.shuffle_buffer", self.shuffle_buffer)

    @property
    def uses_synthetic(self) -> bool:
        """True when any split comes from the generated set."""
        return not (self.train_path and self.val_path and self.heldout_path)


# --------------------------------------------------------------------------
# train / eval / runtime


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


# --------------------------------------------------------------------------
# search


_SPACE = space_lib.SearchSpace()


@dataclasses.dataclass(frozen=True)
class SpaceConfig:
    """The NAS-FPN search space (paper Sec. 3): `arch.space.SearchSpace`
    without the levels, which are the model's.

    Its defaults are the space's, and the space checks the values (in
    `ExperimentConfig`, which knows the levels).

    Attributes:
        num_intermediate: cells whose output is not a pyramid level; the
            other max_level - min_level + 1 cells emit the levels.
        intermediate_levels: levels an intermediate cell may output.
        ops: binary merge ops a cell may choose (of `arch.spec.OPS`).
    """

    num_intermediate: int = _SPACE.num_intermediate
    intermediate_levels: tuple[int, ...] = _SPACE.intermediate_levels
    ops: tuple[str, ...] = _SPACE.ops


@dataclasses.dataclass(frozen=True)
class ControllerConfig:
    """The RNN controller that samples specs (paper Sec. 3).

    Attributes:
        lstm_size: LSTM units.
        embedding_size: size of the embedding of the previous action.
        temperature: softmax temperature of the logits.
        tanh_constant: logits become c * tanh(logits / temperature) (ENAS);
            None keeps them.
        entropy_weight: entropy bonus in the policy loss.
        learning_rate: Adam learning rate of the controller.
        ppo_clip: PPO ratio clipping epsilon, in (0, 1).
        ppo_epochs: passes over each batch of samples (PPO only).
        baseline_decay: exponential moving average decay of the reward
            baseline.
    """

    lstm_size: int = 100
    embedding_size: int = 100
    temperature: float = 1.0
    tanh_constant: float | None = None
    entropy_weight: float = 1e-4
    learning_rate: float = 1e-3
    ppo_clip: float = 0.2
    ppo_epochs: int = 4
    baseline_decay: float = 0.95

    def __post_init__(self):
        _positive("search.controller.lstm_size", self.lstm_size)
        _positive("search.controller.embedding_size", self.embedding_size)
        _positive("search.controller.temperature", self.temperature)
        if self.tanh_constant is not None:
            _positive("search.controller.tanh_constant", self.tanh_constant)
        _non_negative("search.controller.entropy_weight", self.entropy_weight)
        _positive("search.controller.learning_rate", self.learning_rate)
        if not 0 < self.ppo_clip < 1:
            raise ConfigError(
                "search.controller.ppo_clip must be in (0, 1); got "
                f"{self.ppo_clip}."
            )
        _positive("search.controller.ppo_epochs", self.ppo_epochs)
        if not 0 <= self.baseline_decay < 1:
            raise ConfigError(
                "search.controller.baseline_decay must be in [0, 1); got "
                f"{self.baseline_decay}."
            )


@dataclasses.dataclass(frozen=True)
class ProxyConfig:
    """The short proxy training that turns a child spec into a reward.

    These replace model/train/eval values when a child is trained (see
    `proxy_experiment`); everything else comes from the main config.

    Attributes:
        train_steps: training steps of each child.
        eval_steps: held-out batches for the reward AP (0 = whole split).
        repeats: neck repeats of a child.
        filters: neck (and head) channels of a child.
        image_size: input side of a child.
        seeds: trainings per child, from seeds derived from
            `runtime.seed` and the spec (`proxy.child_seeds`); the reward
            is their mean AP.
    """

    train_steps: int = 100
    eval_steps: int = 0
    repeats: int = 2
    filters: int = 16
    image_size: int = 128
    seeds: int = 1

    def __post_init__(self):
        _positive("search.proxy.train_steps", self.train_steps)
        _non_negative("search.proxy.eval_steps", self.eval_steps)
        _positive("search.proxy.repeats", self.repeats)
        _positive("search.proxy.filters", self.filters)
        _image_size("search.proxy.image_size", self.image_size)
        _positive("search.proxy.seeds", self.seeds)


@dataclasses.dataclass(frozen=True)
class HalvingConfig:
    """Asynchronous successive halving of the children (ASHA).

    With `min_steps` > 0 every child first trains `min_steps` steps of the
    proxy's schedule and is rated; it goes on (from its checkpoint) to
    `eta` times the steps only while it is in the top 1/`eta` of the
    children rated at that rung so far, up to `search.proxy.train_steps`
    (see `nasfpn_tf/search/rungs.py`).

    Attributes:
        min_steps: training steps of the first rung; 0 trains every child
            the whole proxy schedule.
        eta: the factor between rungs' steps, and 1/eta the share of a
            rung's children that go on.
        final_reward: the controller's reward of a child: "highest" (the
            reward at the highest rung it reached), "rank" ((rung + quantile
            within that rung) / rungs) or "first" (its first rung's).
    """

    min_steps: int = 0
    eta: int = 3
    final_reward: str = "highest"

    def __post_init__(self):
        _non_negative("search.rungs.min_steps", self.min_steps)
        if not self.eta >= 2:
            raise ConfigError(
                f"search.rungs.eta must be >= 2; got {self.eta!r}."
            )
        _choice("search.rungs.final_reward", self.final_reward, RUNG_REWARDS)


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
    """What a child's reward is: its held-out AP, or AP traded against a
    cost (MnasNet, Tan et al., CVPR 2019, Eq. 2; `search/objective.py`).

    Attributes:
        kind: "ap" (the reward is AP), "soft" (AP * (cost / target) **
            weight) or "hard" (AP at or below the target, 0 above).
        cost: "flops" (analytic FLOPs of the child's network at the proxy
            image size) or "latency" (median measured forward time on the
            search host).
        target: the cost aimed at, in GFLOPs (1e9 FLOPs) for "flops" and
            milliseconds for "latency"; required unless kind is "ap".
        weight: the exponent of the soft reward, < 0 (MnasNet's -0.07:
            twice the cost costs about 5% of the reward).
        latency_runs: timed forward passes per child, of which the median
            is taken (cost "latency" only).
    """

    kind: str = "ap"
    cost: str = "flops"
    target: float | None = None
    weight: float = -0.07
    latency_runs: int = 20

    def __post_init__(self):
        _choice("search.objective.kind", self.kind, OBJECTIVE_KINDS)
        _choice("search.objective.cost", self.cost, OBJECTIVE_COSTS)
        if self.kind != "ap" and not (
            self.target is not None and self.target > 0
        ):
            raise ConfigError(
                f"search.objective.target must be > 0 for kind {self.kind!r} "
                f"(GFLOPs or milliseconds); got {self.target!r}."
            )
        if self.kind == "soft" and not self.weight < 0:
            raise ConfigError(
                "search.objective.weight must be < 0 (a costlier child earns "
                f"less); got {self.weight!r}."
            )
        _positive("search.objective.latency_runs", self.latency_runs)

    @property
    def uses_latency(self) -> bool:
        """Whether children's latency must be measured."""
        return self.kind != "ap" and self.cost == "latency"


@dataclasses.dataclass(frozen=True)
class SupernetConfig:
    """The shared-weight supernet that rates specs without training them
    (`search.rater: supernet`; `nasfpn_tf.supernet`).

    The supernet has the proxy's sizes (`search.proxy`: image size, width,
    repeats) and trains with `train.*` (batch, learning rate, schedule),
    for `train_steps` steps, one spec sampled per step.

    Attributes:
        train_steps: supernet training steps.
        sampling: "uniform" (single-path one-shot: each step's spec drawn
            uniformly under the space's masks) or "balanced" (FairNAS-like:
            each cell position cycles through its levels and ops, so every
            branch trains equally often).
        bn_mode: how a rated path's BN statistics are had: "inherited"
            (the supernet's moving averages), "recalibrate" (re-estimated
            on `calibration_batches` training batches through the path) or
            "batch" (the held-out batch's own statistics).
        calibration_batches: training batches of the re-estimation.
        eval_steps: held-out batches a spec is rated on (0 = all).
        checkpoint_every: steps between supernet checkpoints.
        path: a trained supernet's directory (its `config.yaml` and
            checkpoints) to rate with; "" trains one in
            `<model_dir>/supernet` (or resumes it).
    """

    train_steps: int = 2000
    sampling: str = "uniform"
    bn_mode: str = "recalibrate"
    calibration_batches: int = 4
    eval_steps: int = 0
    checkpoint_every: int = 250
    path: str = ""

    def __post_init__(self):
        _positive("search.supernet.train_steps", self.train_steps)
        _choice("search.supernet.sampling", self.sampling, SUPERNET_SAMPLING)
        _choice("search.supernet.bn_mode", self.bn_mode, BN_MODES)
        _positive(
            "search.supernet.calibration_batches", self.calibration_batches
        )
        _non_negative("search.supernet.eval_steps", self.eval_steps)
        _positive("search.supernet.checkpoint_every", self.checkpoint_every)


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """The architecture search.

    Attributes:
        algorithm: controller update rule ("random" samples uniformly).
        num_samples: child specs trained in total.
        samples_per_update: rewards gathered per controller update.
        parallel_trials: children trained at once (KerasTuner workers).
        penalty_reward: reward of a child that fails to build or train.
        max_retries: retries of a failed child before the penalty.
        reuse_rewards: a spec seen before (same canonical hash) gets its
            recorded reward instead of being trained again.
        oracle_host: address of the KerasTuner oracle for parallel trials.
        oracle_port: its port.
        rungs: successive halving of the children (off by default).
        worker_timeout: seconds a worker training a child may go without
            a heartbeat before the chief counts it lost and hands the
            child to another worker (`max_retries` times) or records it
            as failed.
        objective: what a child's reward is (AP, or AP against a cost).
        rater: what rates a sampled spec: "proxy" trains it (the paper's
            search), "supernet" evaluates its path through a shared-weight
            supernet (`supernet`), about a second a spec.
        supernet: the shared-weight supernet's settings.
    """

    algorithm: str = "ppo"
    num_samples: int = 8
    samples_per_update: int = 4
    parallel_trials: int = 1
    penalty_reward: float = 0.0
    max_retries: int = 1
    reuse_rewards: bool = True
    space: SpaceConfig = dataclasses.field(default_factory=SpaceConfig)
    controller: ControllerConfig = dataclasses.field(
        default_factory=ControllerConfig
    )
    proxy: ProxyConfig = dataclasses.field(default_factory=ProxyConfig)
    rungs: HalvingConfig = dataclasses.field(default_factory=HalvingConfig)
    objective: ObjectiveConfig = dataclasses.field(
        default_factory=ObjectiveConfig
    )
    oracle_host: str = "127.0.0.1"
    oracle_port: int = 8000
    worker_timeout: float = 600.0
    rater: str = "proxy"
    supernet: SupernetConfig = dataclasses.field(default_factory=SupernetConfig)

    def __post_init__(self):
        _choice("search.algorithm", self.algorithm, SEARCH_ALGORITHMS)
        _choice("search.rater", self.rater, RATERS)
        _positive("search.num_samples", self.num_samples)
        _positive("search.samples_per_update", self.samples_per_update)
        _positive("search.parallel_trials", self.parallel_trials)
        _non_negative("search.max_retries", self.max_retries)
        _positive("search.worker_timeout", self.worker_timeout)
        if self.rungs.min_steps >= self.proxy.train_steps:
            raise ConfigError(
                f"search.rungs.min_steps ({self.rungs.min_steps}) must be "
                "below search.proxy.train_steps "
                f"({self.proxy.train_steps}), the last rung's steps; 0 "
                "turns successive halving off."
            )
        if not self.oracle_host:
            raise ConfigError("search.oracle_host must not be empty.")
        if not 0 < self.oracle_port <= MAX_PORT:
            raise ConfigError(
                f"search.oracle_port must be in 1..{MAX_PORT}; got "
                f"{self.oracle_port}."
            )


# --------------------------------------------------------------------------
# fidelity


def _default_reference() -> ProxyConfig:
    # The tiny demo's full training (train.steps) as the reference.
    return ProxyConfig(train_steps=700)


@dataclasses.dataclass(frozen=True)
class FidelityConfig:
    """`--mode=fidelity`: does the proxy rank specs as longer training does?

    Attributes:
        num_specs: specs trained, the published one included.
        include_published: make the published NAS-FPN spec the first.
        spec_seed: seeds the draw of the other specs from the space.
        seeds: proxy trainings per spec (`search.proxy` settings).
        reference: the reference training, in `search.proxy`'s form (its
            `seeds` is the number of reference trainings per spec).
        bootstrap_samples: resamples of the rank-correlation intervals.
        confidence: coverage of those intervals.
    """

    num_specs: int = 10
    include_published: bool = True
    spec_seed: int = 0
    seeds: int = 3
    reference: ProxyConfig = dataclasses.field(
        default_factory=_default_reference
    )
    bootstrap_samples: int = 1000
    confidence: float = 0.9

    def __post_init__(self):
        _positive("fidelity.num_specs", self.num_specs)
        _non_negative("fidelity.spec_seed", self.spec_seed)
        _positive("fidelity.seeds", self.seeds)
        _positive("fidelity.bootstrap_samples", self.bootstrap_samples)
        if not 0 < self.confidence < 1:
            raise ConfigError(
                f"fidelity.confidence must be in (0, 1); got {self.confidence}."
            )


# --------------------------------------------------------------------------
# experiment


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """Everything a run decides; saved as `model_dir/config.yaml`."""

    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    runtime: RuntimeConfig = dataclasses.field(default_factory=RuntimeConfig)
    search: SearchConfig = dataclasses.field(default_factory=SearchConfig)
    fidelity: FidelityConfig = dataclasses.field(default_factory=FidelityConfig)

    def __post_init__(self):
        model, data = self.model, self.data
        if data.class_names and len(data.class_names) != model.num_classes - 1:
            raise ConfigError(
                f"data.class_names has {len(data.class_names)} names but "
                f"model.num_classes ({model.num_classes}) counts "
                f"{model.num_classes - 1} classes besides background."
            )
        # Class names say the data is the user's (a split left without a
        # path is refused by the command line, not generated).
        if (
            data.uses_synthetic
            and not data.class_names
            and model.num_classes <= data.synthetic.num_classes
        ):
            raise ConfigError(
                f"model.num_classes ({model.num_classes}) must exceed "
                f"data.synthetic.num_classes ({data.synthetic.num_classes}) "
                "by at least one: it also counts background."
            )
        try:
            space_lib.SearchSpace.from_config(
                self.search.space,
                min_level=model.min_level,
                max_level=model.max_level,
            )
        except space_lib.SpaceError as error:
            raise ConfigError(f"search.space.{error}.") from None
        for boundary in self.train.step_boundaries:
            if boundary >= self.train.steps:
                raise ConfigError(
                    f"train.step_boundaries has {boundary}, not below "
                    f"train.steps ({self.train.steps})."
                )
        if (
            self.runtime.strategy == "tpu"
            and self.train.mixed_precision == "mixed_float16"
        ):
            raise ConfigError(
                "train.mixed_precision 'mixed_float16' does not run on TPU; "
                "use 'mixed_bfloat16'."
            )
