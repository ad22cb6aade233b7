"""Config sections of the architecture search: `search` and its space,
controller, proxy, rungs, objective and supernet."""

from __future__ import annotations

import dataclasses

from nasfpn_tf.arch import space as space_lib
from nasfpn_tf.config.checks import (
    ConfigError,
    _choice,
    _image_size,
    _non_negative,
    _positive,
)

SEARCH_ALGORITHMS = ("ppo", "reinforce", "random")
# How a child stopped at some rung of successive halving is rewarded
# (`search.rungs.final_reward`; see `nasfpn_tf/search/rungs.py`).
RUNG_REWARDS = ("highest", "rank", "first")
OBJECTIVE_KINDS = ("ap", "soft", "hard")
RATERS = ("proxy", "supernet")
SUPERNET_SAMPLING = ("uniform", "balanced")
BN_MODES = ("inherited", "recalibrate", "batch")
OBJECTIVE_COSTS = ("flops", "latency", "tflite_latency")
# What the TFLite export writes (`export_tflite.QUANTIZATIONS`); the
# "tflite_latency" cost times one of them.
TFLITE_QUANTIZATIONS = ("float32", "float16", "int8")
MAX_PORT = 65535


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
            image size), "latency" (median measured forward time on the
            search host, in TensorFlow) or "tflite_latency" (the network
            converted to TFLite with `tflite_quantization` and timed in
            the TFLite interpreter on `tflite_threads` threads).
        target: the cost aimed at, in GFLOPs (1e9 FLOPs) for "flops" and
            milliseconds for the latencies; required unless kind is "ap".
        weight: the exponent of the soft reward, < 0 (MnasNet's -0.07:
            twice the cost costs about 5% of the reward).
        latency_runs: timed forward passes per child, of which the median
            is taken (the latency costs only).
        tflite_quantization: how "tflite_latency" converts the network:
            "int8" (full-integer, as it is deployed; calibrated on
            generated inputs), "float16" or "float32".
        tflite_threads: interpreter threads of "tflite_latency".
    """

    kind: str = "ap"
    cost: str = "flops"
    target: float | None = None
    weight: float = -0.07
    latency_runs: int = 20
    tflite_quantization: str = "int8"
    tflite_threads: int = 1

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
        _choice(
            "search.objective.tflite_quantization",
            self.tflite_quantization,
            TFLITE_QUANTIZATIONS,
        )
        _positive("search.objective.tflite_threads", self.tflite_threads)

    @property
    def uses_latency(self) -> bool:
        """Whether children's latency (in TensorFlow or TFLite) must be
        measured: each child is then built and timed."""
        return self.kind != "ap" and self.cost in ("latency", "tflite_latency")


@dataclasses.dataclass(frozen=True)
class SupernetConfig:
    """The shared-weight supernet that rates specs without training them
    (`search.rater: supernet`; `nasfpn_tf.supernet`).

    The supernet has the proxy's sizes (`search.proxy`: image size, width,
    repeats) and trains with `train.*` (batch, learning rate, schedule),
    for `train_steps` steps, one spec sampled per step.

    The defaults are the quickstart's supernet, sized to its budget: on
    the tiny task 600 steps (300 warm) train in about 2 minutes on 2
    cores and rank 12 specs as 1,000-step standalone training does with
    Kendall tau 0.67 with inherited BN statistics (71% of the noise
    ceiling; recalibrated 0.58, batch 0.48). `configs/tiny_search.yaml`
    has the larger one: 1,500 steps (500 warm), recalibrated, tau 0.76
    (81%). docs/supernet.md has the measurements.

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
        warmup_steps: the first steps train one path alone (the
            published spec's, or a seeded random spec where the space does
            not hold it); then every level row of each cell takes that
            path's weights and sampling goes on (`supernet/training.py`);
            0 = sample from the first step.
        finalists: a two-stage search: after the samples are rated on
            the supernet, the `finalists` distinct specs with the best
            supernet rewards train as standalone proxy children
            (`search.proxy`) and the best of them by that reward is the
            search's answer (`search/finalists.py`); 0 = off.
    """

    train_steps: int = 600
    warmup_steps: int = 300
    sampling: str = "uniform"
    bn_mode: str = "inherited"
    calibration_batches: int = 4
    eval_steps: int = 0
    checkpoint_every: int = 250
    path: str = ""
    finalists: int = 0

    def __post_init__(self):
        _positive("search.supernet.train_steps", self.train_steps)
        _non_negative("search.supernet.finalists", self.finalists)
        _non_negative("search.supernet.warmup_steps", self.warmup_steps)
        if self.warmup_steps >= self.train_steps:
            raise ConfigError(
                "search.supernet.warmup_steps must be below train_steps "
                f"({self.train_steps}); got {self.warmup_steps}"
            )
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
        num_samples: specs sampled and rated in total.
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
    num_samples: int = 200
    samples_per_update: int = 10
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
    rater: str = "supernet"
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
        if self.rungs.min_steps and self.rater == "supernet":
            raise ConfigError(
                "search.rungs (successive halving) shortens the training of "
                "children, and search.rater: supernet trains none: set "
                "search.rater: proxy, or search.rungs.min_steps: 0."
            )
        if not self.oracle_host:
            raise ConfigError("search.oracle_host must not be empty.")
        if not 0 < self.oracle_port <= MAX_PORT:
            raise ConfigError(
                f"search.oracle_port must be in 1..{MAX_PORT}; got "
                f"{self.oracle_port}."
            )
