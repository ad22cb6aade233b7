"""The search policy: an LSTM controller trained by PPO or REINFORCE.

NAS-FPN (Ghiasi et al., CVPR 2019, arXiv:1904.07392, Sec. 3) samples
architectures with a recurrent controller trained by Proximal Policy
Optimization (Schulman et al., 2017, arXiv:1707.06347), as in Zoph et al.
(CVPR 2018, arXiv:1707.07012), whose settings are the defaults here: a
one-layer LSTM of 100 units initialised uniformly in [-0.1, 0.1], learning
rate 3.5e-4, entropy weight 1e-5 and an exponential moving average of past
rewards with decay 0.95 as the baseline. Temperature and tanh-constant
logit squashing follow ENAS (Pham et al., ICML 2018, arXiv:1802.03268).

A policy sees only the search space's choice counts and its validity masks
(``space.num_choices``, ``space.mask``) and the rewards it is given; it knows
nothing about detection. `RandomPolicy` (``nasfpn_tf.search.policy``, with
the sampling both share) has the same surface and samples uniformly among
valid choices, the random-search baseline.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras

from nasfpn_tf.search.policy import (
    MaskFn,
    PolicyBase,
    RandomPolicy,
    Samples,
    masked_entropy,
    masked_log_softmax,
)

ALGORITHMS = ("ppo", "reinforce")
# Zoph et al. (2018) initialise every controller weight in this range.
INIT_SCALE = 0.1
# (hyperparameter, is it valid, what valid means), checked at construction.
_HYPERPARAMETER_RANGES = (
    ("lstm_size", lambda v: v >= 1, ">= 1"),
    ("embedding_size", lambda v: v >= 1, ">= 1"),
    ("temperature", lambda v: v > 0, "> 0"),
    ("tanh_constant", lambda v: v is None or v > 0, "> 0 or None"),
    ("entropy_weight", lambda v: v >= 0, ">= 0"),
    ("learning_rate", lambda v: v > 0, "> 0"),
    ("algorithm", lambda v: v in ALGORITHMS, f"one of {ALGORITHMS}"),
    ("ppo_clip", lambda v: 0 < v < 1, "in (0, 1)"),
    ("ppo_epochs", lambda v: v >= 1, ">= 1"),
    ("baseline_decay", lambda v: 0 <= v < 1, "in [0, 1)"),
)
# An LSTM state is a [hidden, cell] pair.
_LSTMState = list[tf.Tensor]


class Controller(PolicyBase):
    """LSTM policy over a sequence of masked categorical decisions.

    At each step the previous choice is embedded (a learned start token
    first) and fed to the LSTM, whose output goes through that step's own
    projection to one logit per choice; logits are divided by `temperature`,
    optionally squashed to `tanh_constant * tanh(.)`, and invalid choices
    set to -inf. Output projections start at zero, so the initial policy is
    uniform over valid choices.

    Args:
        num_choices: choices per step, e.g. `space.num_choices`.
        mask_fn: `(step, prefix_actions) -> [num_choices[step]] bools`, e.g.
            `space.mask`; None allows every choice.
        lstm_size: LSTM units.
        embedding_size: width of the choice embeddings.
        temperature: logits are divided by it (> 0).
        tanh_constant: if set, logits become `tanh_constant * tanh(logits)`.
        entropy_weight: weight of the entropy bonus in the loss.
        learning_rate: Adam learning rate.
        algorithm: "ppo" or "reinforce".
        ppo_clip: PPO's ratio clip epsilon.
        ppo_epochs: gradient steps per PPO update over the same batch.
        baseline_decay: decay of the reward moving average.
        seed: seeds weight initialisation and sampling.
    """

    def __init__(
        self,
        num_choices: Sequence[int],
        mask_fn: MaskFn | None = None,
        *,
        lstm_size: int = 100,
        embedding_size: int = 64,
        temperature: float = 1.0,
        tanh_constant: float | None = None,
        entropy_weight: float = 1e-5,
        learning_rate: float = 3.5e-4,
        algorithm: str = "ppo",
        ppo_clip: float = 0.2,
        ppo_epochs: int = 4,
        baseline_decay: float = 0.95,
        seed: int = 0,
    ):
        super().__init__(num_choices, mask_fn, seed, name="controller")
        self.lstm_size = int(lstm_size)
        self.embedding_size = int(embedding_size)
        self.temperature = float(temperature)
        self.tanh_constant = (
            None if tanh_constant is None else float(tanh_constant)
        )
        self.entropy_weight = float(entropy_weight)
        self.learning_rate = float(learning_rate)
        self.algorithm = algorithm
        self.ppo_clip = float(ppo_clip)
        self.ppo_epochs = int(ppo_epochs)
        self.baseline_decay = float(baseline_decay)
        for key, valid, expected in _HYPERPARAMETER_RANGES:
            if not valid(getattr(self, key)):
                raise ValueError(
                    f"{key} must be {expected}, got {getattr(self, key)!r}."
                )

        # One table, offset per step: row 0 is the start token, then the
        # choices of step 0, step 1, ... (each step's previous choice).
        self._offsets = np.cumsum((1,) + self.num_choices[:-1], dtype=np.int32)
        rows = 1 + sum(self.num_choices[:-1])
        self._embedding = tf.Variable(
            tf.random.stateless_uniform(
                [rows, self.embedding_size],
                [self.seed, 0],
                -INIT_SCALE,
                INIT_SCALE,
            ),
            name="embedding",
        )
        # The whole-sequence layer scores given actions in one pass (a
        # symbolic loop: tracing does not grow with the number of steps);
        # sampling steps its cell, the same weights. A generic RNN over the
        # cell traces twice as fast as the LSTM layer, which also builds a
        # cuDNN variant that a controller this small never needs.
        self._lstm = tf_keras.layers.RNN(
            tf_keras.layers.LSTMCell(
                self.lstm_size,
                kernel_initializer=tf_keras.initializers.RandomUniform(
                    -INIT_SCALE, INIT_SCALE, seed=self.seed
                ),
                recurrent_initializer=tf_keras.initializers.RandomUniform(
                    -INIT_SCALE, INIT_SCALE, seed=self.seed + 1
                ),
                # The policy stays float32 whatever mixed precision the
                # children train with: log-probs and PPO ratios need it.
                dtype="float32",
            ),
            return_sequences=True,
            dtype="float32",
            name="lstm",
        )
        self._lstm.build(tf.TensorShape([None, None, self.embedding_size]))
        # One projection per step, stacked and padded to the widest step so
        # all steps score in one batched matmul; a padded column is always
        # masked, so it gets no gradient and stays zero.
        shape = [self.num_steps, self.lstm_size, self.max_choices]
        self._kernel = tf.Variable(tf.zeros(shape), name="kernel")
        self._bias = tf.Variable(tf.zeros(shape[::2]), name="bias")
        self._weights = [
            self._embedding,
            *self._lstm.trainable_variables,
            self._kernel,
            self._bias,
        ]
        # XLA off: compiling pays for big models, not this one, and would add
        # start-up time to every search and resume.
        self._optimizer = tf_keras.optimizers.Adam(
            self.learning_rate, jit_compile=False
        )
        # Built now, so a restore fills the slots at once instead of waiting
        # for the first update.
        self._optimizer.build(self._weights)
        self._baseline = tf.Variable(0.0, dtype=tf.float64, trainable=False)
        self._updates = tf.Variable(0, dtype=tf.int64, trainable=False)
        signature = [
            tf.TensorSpec([None, self.num_steps], tf.int32),
            tf.TensorSpec([None, self.num_steps, self.max_choices], tf.bool),
        ]
        self._evaluate_fn = tf.function(
            self._evaluate, input_signature=signature
        )
        self._train_fn = tf.function(
            self._train_step,
            input_signature=signature + [tf.TensorSpec([None], tf.float32)] * 2,
        )

    @classmethod
    def from_config(
        cls,
        cfg: Any,
        num_choices: Sequence[int],
        mask_fn: MaskFn | None = None,
        **overrides: Any,
    ) -> Controller:
        """Builds a controller from the same-named attributes of `cfg`.

        Args:
            cfg: any object (e.g. the search config's controller section);
                attributes named like constructor keywords are used, others
                ignored, missing ones keep their defaults.
            num_choices: choices per step.
            mask_fn: validity masks, as in the constructor.
            **overrides: keywords that win over `cfg` (e.g. `algorithm`,
                `seed`, which live in other config sections).
        """
        kwargs = {
            key: getattr(cfg, key) for key in _CONFIG_KEYS if hasattr(cfg, key)
        }
        kwargs.update(overrides)
        return cls(num_choices, mask_fn, **kwargs)

    @property
    def baseline(self) -> float:
        """Moving average of past rewards (0.0 before the first update)."""
        return float(self._baseline.numpy())

    @property
    def num_updates(self) -> int:
        return int(self._updates.numpy())

    @property
    def trainable_variables(self) -> tuple[tf.Variable, ...]:
        return tuple(self._weights)

    # -- the policy network ---------------------------------------------------

    def _initial_state(self, n: int) -> _LSTMState:
        zeros = tf.zeros([n, self.lstm_size])
        return [zeros, zeros]

    def _squash(self, logits: tf.Tensor) -> tf.Tensor:
        logits = logits / self.temperature
        if self.tanh_constant is not None:
            logits = self.tanh_constant * tf.tanh(logits)
        return logits

    def _step_logits(
        self, step: int, previous: tf.Tensor | None, state: _LSTMState
    ) -> tuple[tf.Tensor, _LSTMState]:
        if previous is None:
            ids = tf.zeros_like(state[0][:, 0], dtype=tf.int32)
        else:
            ids = previous + self._offsets[step - 1]
        output, state = self._lstm.cell(tf.gather(self._embedding, ids), state)
        count = self.num_choices[step]
        kernel, bias = self._kernel[step, :, :count], self._bias[step, :count]
        return self._squash(tf.matmul(output, kernel) + bias), state

    def _evaluate(
        self, actions: tf.Tensor, masks: tf.Tensor
    ) -> tuple[tf.Tensor, tf.Tensor]:
        """Log-prob and entropy [n] of given sequences under current weights.

        Args:
            actions: [n, steps] int32.
            masks: [n, steps, max_choices] bool.
        """
        # Step t reads the embedding of step t-1's choice; step 0 the start.
        previous = actions[:, :-1] + self._offsets[:-1]
        ids = tf.concat([tf.zeros_like(actions[:, :1]), previous], axis=1)
        outputs = self._lstm(tf.gather(self._embedding, ids))
        logits = tf.einsum("nth,thc->ntc", outputs, self._kernel) + self._bias
        log_probs = masked_log_softmax(self._squash(logits), masks)
        taken = tf.gather(log_probs, actions, batch_dims=2)
        return (
            tf.reduce_sum(taken, axis=1),
            tf.reduce_sum(masked_entropy(log_probs, masks), axis=1),
        )

    def log_prob(self, actions: Any, masks: Any | None = None) -> np.ndarray:
        """Log-probability [n] of each sequence under the current weights.

        Args:
            actions: [n, steps] ints (or a `Samples`, whose masks are used).
            masks: [n, steps, max_choices] bool; None recomputes them.
        """
        return self._evaluate_batch(actions, masks)[0]

    def entropy(self, actions: Any, masks: Any | None = None) -> np.ndarray:
        """Entropy [n] summed over steps along each sequence's path."""
        return self._evaluate_batch(actions, masks)[1]

    def _evaluate_batch(
        self, actions: Any, masks: Any | None
    ) -> tuple[np.ndarray, np.ndarray]:
        if isinstance(actions, Samples):
            actions, masks = actions.actions, actions.masks
        actions, masks = self._check_batch(actions, masks)
        log_probs, entropies = self._evaluate_fn(actions, masks)
        return log_probs.numpy(), entropies.numpy()

    # -- learning -------------------------------------------------------------

    def _train_step(
        self,
        actions: tf.Tensor,
        masks: tf.Tensor,
        old_log_probs: tf.Tensor,
        advantages: tf.Tensor,
    ) -> dict[str, tf.Tensor]:
        """One Adam step on the policy loss; returns loss statistics."""
        with tf.GradientTape() as tape:
            log_probs, entropies = self._evaluate(actions, masks)
            ratio = tf.exp(log_probs - old_log_probs)
            if self.algorithm == "ppo":
                clipped = tf.clip_by_value(
                    ratio, 1.0 - self.ppo_clip, 1.0 + self.ppo_clip
                )
                objective = tf.minimum(ratio * advantages, clipped * advantages)
            else:
                objective = log_probs * advantages
            policy_loss = -tf.reduce_mean(objective)
            entropy = tf.reduce_mean(entropies)
            loss = policy_loss - self.entropy_weight * entropy
        grads = tape.gradient(loss, self._weights)
        self._optimizer.apply_gradients(zip(grads, self._weights))
        outside = tf.abs(ratio - 1.0) > self.ppo_clip
        return {
            "loss": loss,
            "policy_loss": policy_loss,
            "entropy": entropy,
            # Mean of old - new log-prob: an estimate of KL(old || new).
            "approx_kl": tf.reduce_mean(old_log_probs - log_probs),
            "clip_fraction": tf.reduce_mean(tf.cast(outside, tf.float32)),
        }

    def update(
        self,
        samples: Samples | Any,
        rewards: Sequence[float],
        masks: Any | None = None,
    ) -> dict[str, float]:
        """Learns from rewarded samples.

        Advantage = reward - baseline, the baseline being the moving average
        of all earlier rewards (the first batch's mean before any). PPO then
        takes `ppo_epochs` clipped-ratio steps on the batch against the
        log-probs it was sampled with; REINFORCE takes one step. The baseline
        then absorbs the batch's rewards one by one, so its horizon does not
        depend on the batch size.

        Args:
            samples: `Samples` from `sample`, or [n, steps] int actions (old
                log-probs are then those under the current weights).
            rewards: [n] finite floats.
            masks: with bare actions, their masks; None recomputes them.

        Returns:
            Statistics of the last gradient step and of the rewards, as
            Python floats: loss, policy_loss, entropy, approx_kl,
            clip_fraction, mean_reward, mean_advantage, baseline (after the
            update), update (count after this one).
        """
        if isinstance(samples, Samples):
            actions, masks = self._check_batch(samples.actions, samples.masks)
            old_log_probs = np.asarray(samples.log_probs, dtype=np.float32)
        else:
            actions, masks = self._check_batch(samples, masks)
            old_log_probs = self._evaluate_fn(actions, masks)[0].numpy()
        rewards = np.asarray(rewards, dtype=np.float64)
        if rewards.shape != (len(actions),):
            raise ValueError(
                f"rewards must have shape [{len(actions)}] (one per sample), "
                f"got {rewards.shape}."
            )
        if not np.isfinite(rewards).all():
            raise ValueError(f"rewards must be finite, got {rewards.tolist()}.")

        baseline = self.baseline if self.num_updates else rewards.mean()
        advantages = (rewards - baseline).astype(np.float32)
        epochs = self.ppo_epochs if self.algorithm == "ppo" else 1
        for _ in range(epochs):
            stats = self._train_fn(actions, masks, old_log_probs, advantages)
        for reward in rewards:
            decay = self.baseline_decay
            baseline = decay * baseline + (1.0 - decay) * reward
        self._baseline.assign(baseline)
        self._updates.assign_add(1)
        result = {key: float(value) for key, value in stats.items()}
        result.update(
            mean_reward=float(rewards.mean()),
            mean_advantage=float(advantages.mean()),
            baseline=self.baseline,
            update=float(self.num_updates),
        )
        return result

    def _checkpoint(self) -> tf.train.Checkpoint:
        return tf.train.Checkpoint(
            rng=self._rng,
            weights=self._weights,
            optimizer=self._optimizer,
            baseline=self._baseline,
            updates=self._updates,
        )


Policy = Controller | RandomPolicy

# The keywords `Controller.from_config` reads from a config object.
_CONFIG_KEYS = tuple(
    p.name
    for p in inspect.signature(Controller).parameters.values()
    if p.kind is p.KEYWORD_ONLY
)


def make_policy(
    algorithm: str,
    num_choices: Sequence[int],
    mask_fn: MaskFn | None = None,
    controller_config: Any = None,
    *,
    seed: int = 0,
) -> Policy:
    """The policy a search algorithm uses.

    Args:
        algorithm: "ppo", "reinforce" or "random".
        num_choices: choices per step.
        mask_fn: validity masks.
        controller_config: object with `Controller` keyword attributes
            (ignored for "random").
        seed: seeds the policy.
    """
    if algorithm == "random":
        return RandomPolicy(num_choices, mask_fn, seed=seed)
    if algorithm not in ALGORITHMS:
        raise ValueError(
            f"Unknown search algorithm {algorithm!r}; expected one of "
            f"{ALGORITHMS + ('random',)}."
        )
    return Controller.from_config(
        controller_config, num_choices, mask_fn, algorithm=algorithm, seed=seed
    )
