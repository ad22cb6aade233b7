"""Training the supernet: one sampled path a step (single-path one-shot).

Each step draws a spec from the search space (``Sampler``: uniform under
the masks, as SPOS does, or balanced so that every cell position takes each
of its levels and ops equally often, as FairNAS does), feeds it to the
supernet as tensors and takes one SGD step on that path. The step is traced
once for every spec (``arch`` is a tensor argument).

The first `search.supernet.warmup_steps` steps train one path alone (the
published spec's, or a seeded random spec where the space does not hold
it), so the backbone, projections and head learn to detect before paths
compete: a tiny detector learns nothing in the ~125 steps each of four
alternating paths gets (measured: the published path's held-out AP 0.19
after 500 steps alone, 0.005 after 500 steps shared with 3 other specs).
Then every level row of each cell bank takes the warm path's row (weights,
BN statistics, momentum) and single-path sampling goes on from there, as
progressive shrinking starts from one trained network (Cai et al.,
Once-for-All, 2020). Measured on the default task: Kendall tau 0.70 against
standalone training where 3,000 uniform steps from scratch reach 0.24-0.42
(`docs/supernet.md`).

Weights a path does not use are not moved: their gradient is zero, but SGD
with momentum would still move them, so the step puts the rows of every
cell bank that the path did not take back as they were, in the variables
and their momentum (``_keep_unused``). The L2 of the cells counts the path's kernels only
(``SupernetNeck.path_l2``).

A run lives in its own directory (`supernet_dir`): `config.yaml` (the
experiment it trains, with the proxy's sizes), checkpoints every
`search.supernet.checkpoint_every` steps, `metrics.jsonl` and TensorBoard
scalars through the trainer's ``Progress`` (one line with the ETA), and
`supernet.json` when done. The spec of each step depends only on the seed
and the step, so a run killed (even by SIGKILL) and started again with the
same command resumes from its last checkpoint and samples what it would
have sampled; the data order restarts from a seed derived from the step.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from typing import Any

import tensorflow as tf
import tf_keras

from nasfpn_tf import compat, files
from nasfpn_tf import config as config_lib
from nasfpn_tf.arch.known import NASFPN_SPEC
from nasfpn_tf.arch.space import STEPS_PER_CELL, SearchSpace
from nasfpn_tf.arch.spec import NeckSpec
from nasfpn_tf.data import inputs
from nasfpn_tf.modeling import losses
from nasfpn_tf.run_files import SUPERNET_DONE_FILE as DONE_FILE
from nasfpn_tf.supernet import encoding
from nasfpn_tf.supernet import model as model_lib
from nasfpn_tf.supernet.neck import TRAIN
from nasfpn_tf.train import checkpoints, progress, schedule
from nasfpn_tf.train import strategy as strategy_lib
from nasfpn_tf.train.loops import NonFiniteLossError
from nasfpn_tf.train.trainer import precision_policy

CHECKPOINTS_KEPT = 2
LOSS_NAMES = ("total_loss", "cls_loss", "box_loss", "model_loss")
UNIFORM = "uniform"
BALANCED = "balanced"


def supernet_experiment(
    config: config_lib.ExperimentConfig,
) -> config_lib.ExperimentConfig:
    """The experiment the supernet trains: the proxy's sizes
    (`proxy_experiment`) with `search.supernet`'s steps and saves."""
    settings = config.search.supernet
    child = config_lib.proxy_experiment(config)
    steps = settings.train_steps
    return config_lib.override(
        child,
        {
            "train.steps": steps,
            "train.warmup_steps": min(config.train.warmup_steps, steps - 1),
            "train.step_boundaries": [
                b for b in config.train.step_boundaries if b < steps
            ],
            "train.schedule": config.train.schedule
            if any(b < steps for b in config.train.step_boundaries)
            else "cosine",
            "train.checkpoint_every": settings.checkpoint_every,
            # A long training keeps tf.data's autotuning (`data.autotune`).
            "data.autotune": config.data.autotune,
            "data.deterministic_augmentation": (
                config.data.deterministic_augmentation
            ),
        },
    )


def warm_spec(space: SearchSpace, seed: int) -> NeckSpec:
    """The path the warm-up trains: the published spec where the space
    holds it, else a random spec of the seed."""
    if space.contains(NASFPN_SPEC):
        return NASFPN_SPEC
    return space.random_spec(random.Random(json.dumps([seed, "warm"])))


class Sampler:
    """The spec each training step takes, a function of (seed, step).

    Args:
      space: the search space.
      kind: "uniform" or "balanced".
      seed: the run's seed.
      warmup_steps: steps at the start that all take `warm_spec`.
    """

    def __init__(
        self, space: SearchSpace, kind: str, seed: int, warmup_steps: int = 0
    ):
        if kind not in (UNIFORM, BALANCED):
            raise ValueError(f"sampling: unknown {kind!r}")
        self.space = space
        self.kind = kind
        self.seed = seed
        self.warmup_steps = warmup_steps
        self.warm = warm_spec(space, seed)

    def _rng(self, *key: Any) -> random.Random:
        return random.Random(json.dumps([self.seed, self.kind, *key]))

    def spec(self, step: int) -> NeckSpec:
        if step < self.warmup_steps:
            return self.warm
        if self.kind == UNIFORM:
            return self.space.random_spec(self._rng(step))
        return self._balanced(step)

    def _balanced(self, step: int) -> NeckSpec:
        """Levels and ops cycle through a block-wise permutation per cell
        position (outputs: a Latin square over the output levels), so
        over each block every branch is taken once; inputs stay uniform."""
        space = self.space
        rng = self._rng(step)
        outputs = space.num_inputs
        block = self._rng("outputs", step // outputs).sample(
            range(outputs), outputs
        )
        actions: list[int] = []
        for cell in range(space.num_cells):
            for decision in range(2):
                valid = [
                    c
                    for c, ok in enumerate(space.mask(len(actions), actions))
                    if ok
                ]
                actions.append(rng.choice(valid))
            if cell < space.num_intermediate:
                count = len(space.intermediate_levels)
                order = self._rng("level", cell, step // count).sample(
                    range(count), count
                )
                actions.append(order[step % count])
            else:
                position = cell - space.num_intermediate
                actions.append(block[(position + step) % outputs])
            ops = len(space.ops)
            order = self._rng("op", cell, step // ops).sample(range(ops), ops)
            actions.append(order[step % ops])
        assert len(actions) == space.num_cells * STEPS_PER_CELL
        return space.to_spec(actions)


def _slot(optimizer, variable) -> list[tf.Variable]:
    """The optimizer's slot variables of ``variable`` (SGD's momentum)."""
    slot = compat.momentum_slot(optimizer, variable)
    return [] if slot is None else [slot]


class SupernetTrainer:
    """Trains (or resumes) the supernet of ``config`` in ``supernet_dir``.

    Args:
      config: the search's experiment; the supernet trains
        `supernet_experiment(config)`.
      supernet_dir: the run's directory.
      strategy: the tf.distribute strategy; None makes `runtime`'s.
    """

    def __init__(
        self,
        config: config_lib.ExperimentConfig,
        supernet_dir: str,
        strategy: tf.distribute.Strategy | None = None,
    ):
        from nasfpn_tf.search import runner

        self.search_config = config
        self.settings = config.search.supernet
        self.config = supernet_experiment(config)
        self.dir = supernet_dir
        self.space = runner.make_space(config)
        self.strategy = strategy or strategy_lib.make_strategy(config.runtime)
        config_lib.check_batch(self.config, self.strategy.num_replicas_in_sync)
        self.sampler = Sampler(
            self.space,
            self.settings.sampling,
            self.config.runtime.seed,
            self.settings.warmup_steps,
        )
        self.chief = strategy_lib.is_chief(self.strategy)
        tf.io.gfile.makedirs(supernet_dir)
        if self.chief:
            config_lib.save(self.config, supernet_dir)
        self._build()

    def _build(self) -> None:
        train = self.config.train
        with precision_policy(train.mixed_precision), self.strategy.scope():
            tf_keras.utils.set_random_seed(self.config.runtime.seed)
            self.model = model_lib.build_supernet(self.config, self.space)
            self.learning_rate = schedule.build_learning_rate(train)
            self.optimizer = schedule.build_optimizer(train, self.learning_rate)
            self.variables = self.model.trainable_variables
            self.optimizer.build(self.variables)
            self.step = tf.Variable(0, dtype=tf.int64, name="step")
            # 1 once the warm path's rows were spread to every row.
            self.spread = tf.Variable(0, dtype=tf.int64, name="spread")
        self.checkpoint = tf.train.Checkpoint(
            model=self.model,
            optimizer=self.optimizer,
            step=self.step,
            spread=self.spread,
        )
        self.manager = checkpoints.make_manager(
            self.checkpoint,
            self.dir,
            self.step,
            every=self.settings.checkpoint_every,
            keep=CHECKPOINTS_KEPT,
        )
        # (position, rows, bank variables + their momentum) of every bank.
        self._banks = [
            (
                i,
                len(bank.levels),
                [
                    *bank.trainable_weights,
                    *(
                        s
                        for v in bank.trainable_weights
                        for s in _slot(self.optimizer, v)
                    ),
                ],
            )
            for i, bank in self.model.neck.all_banks()
        ]

    # -- one step ----------------------------------------------------------

    def _replica_step(self, inputs, arch):
        images, labels = inputs
        train = self.config.train
        with tf.GradientTape() as tape:
            outputs = self.model(images, arch, mode=TRAIN)
            regularization = list(self.model.losses) + [
                self.model.neck.path_l2(arch, train.l2_weight_decay)
            ]
            total, parts = losses.detection_loss(
                outputs,
                labels,
                train,
                self.config.model.num_classes,
                regularization,
            )
        gradients = tape.gradient(total, self.variables)
        gradients = [
            tf.zeros_like(v) if g is None else g
            for g, v in zip(gradients, self.variables)
        ]
        self.optimizer.apply_gradients(zip(gradients, self.variables))
        return dict(parts, total_loss=total)

    def _step(self, iterator, arch):
        before = [[tf.identity(v) for v in vs] for _, _, vs in self._banks]
        shares = self.strategy.run(
            self._replica_step, args=(next(iterator), arch)
        )
        self._keep_unused(arch, before)
        self.step.assign_add(1)
        return {
            name: self.strategy.reduce(
                tf.distribute.ReduceOp.SUM, shares[name], axis=None
            )
            for name in LOSS_NAMES
        }

    def _keep_unused(self, arch, before) -> None:
        """Puts back the rows (levels) of every bank that the path did not
        take, in the variables and their momentum."""
        for (i, rows, variables), old in zip(self._banks, before):
            used = tf.equal(tf.range(rows), arch["branch"][i])
            for variable, value in zip(variables, old):
                mask = tf.reshape(
                    used, [rows] + [1] * (variable.shape.rank - 1)
                )
                variable.assign(tf.where(mask, variable, value))

    def _spread_warm_path(self) -> None:
        """Every row of each bank takes the warm path's row: its weights,
        BN statistics and momentum (dead positions keep theirs)."""
        branch = encoding.encode(self.space, self.sampler.warm).branch
        for (i, rows, variables), (_, bank) in zip(
            self._banks, self.model.neck.all_banks()
        ):
            row = int(branch[i])
            if row >= rows:
                continue
            statistics = (bank.moving_mean, bank.moving_variance)
            for variable in (*variables, *statistics):
                variable.assign(
                    tf.repeat(variable[row : row + 1], rows, axis=0)
                )
        self.spread.assign(1)

    # -- the loop ----------------------------------------------------------

    def _dataset(self, start: int):
        data = inputs.resolve_split(self.config, "train")
        inputs.check_split("train", data)
        make = inputs.dataset_fn(
            self.config,
            data.file_pattern,
            is_training=True,
            seed=self.config.runtime.seed + start,
        )
        return iter(self.strategy.distribute_datasets_from_function(make))

    def fit(self) -> dict[str, Any]:
        """Trains to `search.supernet.train_steps` (resuming); returns the
        run's summary (also `supernet.json`)."""
        total = self.config.train.steps
        self.manager.restore_or_initialize()
        start = int(self.step.numpy())
        report = progress.Progress(
            self.dir,
            total_steps=total,
            global_batch=self.config.train.batch_size,
            log_every=self.config.train.log_every,
            summary_every=self.config.train.summary_every,
            learning_rate=self.learning_rate,
            write=self.chief,
        )
        report.start(start)
        if start >= total and self.done():
            return self.summary()
        if start:
            print(f"supernet | resumed at step {start}/{total}", flush=True)
        iterator = self._dataset(start)
        step_fn = tf.function(self._step)
        sums = {name: 0.0 for name in LOSS_NAMES}
        count, loop_start, began = 0, time.time(), time.time()
        warmup = self.settings.warmup_steps
        for step in range(start, total):
            if step >= warmup > 0 and not int(self.spread.numpy()):
                self._spread_warm_path()
                print(
                    f"supernet | step {step}: the warm path's weights "
                    "spread to every row; single-path sampling from here",
                    flush=True,
                )
            arch = model_lib.arch_tensors(self.space, self.sampler.spec(step))
            parts = step_fn(iterator, arch)
            count += 1
            for name in LOSS_NAMES:
                sums[name] += float(parts[name])
            done = step + 1
            if done % self.config.train.log_every == 0 or done == total:
                means = {k: v / count for k, v in sums.items()}
                if not all(map(_finite, means.values())):
                    raise NonFiniteLossError(done, means["total_loss"])
                means["l2_loss"] = means["total_loss"] - means["model_loss"]
                report.on_train(done, means, time.time() - loop_start)
                sums = {name: 0.0 for name in LOSS_NAMES}
                count, loop_start = 0, time.time()
            if self.chief:
                self.manager.save(checkpoint_number=done, check_interval=True)
        if self.chief:
            self.manager.save(checkpoint_number=total, check_interval=False)
            summary = {
                "steps": total,
                "sampling": self.settings.sampling,
                "warmup_steps": warmup,
                "train_seconds": round(report.train_seconds, 3),
                "seconds_this_run": round(time.time() - began, 3),
                "resumed_from": start,
                "parameters": int(
                    sum(v.shape.num_elements() for v in self.variables)
                ),
                "time": time.time(),
            }
            files.write_atomic(
                os.path.join(self.dir, DONE_FILE),
                json.dumps(summary, indent=1) + "\n",
            )
        return self.summary()

    def done(self) -> bool:
        return tf.io.gfile.exists(os.path.join(self.dir, DONE_FILE))

    def summary(self) -> dict[str, Any]:
        with tf.io.gfile.GFile(os.path.join(self.dir, DONE_FILE)) as f:
            return json.load(f)


def _finite(value: float) -> bool:
    return math.isfinite(value)


def train_supernet(
    config: config_lib.ExperimentConfig,
    supernet_dir: str,
    strategy: tf.distribute.Strategy | None = None,
) -> dict[str, Any]:
    """Trains (or resumes, or finds finished) the supernet of ``config``."""
    trainer = SupernetTrainer(config, supernet_dir, strategy)
    return trainer.fit()
