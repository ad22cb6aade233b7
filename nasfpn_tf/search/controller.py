"""The search policy: an LSTM controller trained by PPO or REINFORCE.

NAS-FPN (Ghiasi et al., CVPR 2019, arXiv:1904.07392, Sec. 3) samples
architectures with a recurrent controller trained by Proximal Policy
Optimization (Schulman et al., 2017, arXiv:1707.06347), as in Zoph et al.
(CVPR 2018, arXiv:1707.07012): a one-layer LSTM initialised uniformly in
[-0.1, 0.1] and an exponential moving average of past rewards as the
baseline. Its hyperparameters are `config.ControllerConfig`, the
`search.controller` section, whose defaults serve the library and the
command line alike (Zoph et al. used learning rate 3.5e-4 and entropy weight
1e-5; the defaults learn faster on the small searches a CPU affords).
Temperature and tanh-constant logit squashing follow ENAS (Pham et al., ICML
2018, arXiv:1802.03268).

A policy sees only the search space's choice counts and its validity masks
(``space.num_choices``, ``space.mask``) and the rewards it is given; it knows
nothing about detection. `RandomPolicy` (``nasfpn_tf.search.policy``, with
the sampling both share) has the same surface and samples uniformly among
valid choices, the random-search baseline.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras

from nasfpn_tf.config import ControllerConfig
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
        config: the hyperparameters (LSTM and embedding sizes, temperature,
            tanh constant, entropy weight, Adam learning rate, PPO clip and
            epochs, baseline decay), checked by `ControllerConfig`; None
            takes its defaults.
        algorithm: "ppo" or "reinforce".
        seed: seeds weight initialisation and sampling.
    """

    def __init__(
        self,
        num_choices: Sequence[int],
        mask_fn: MaskFn | None = None,
        config: ControllerConfig | None = None,
        *,
        algorithm: str = "ppo",
        seed: int = 0,
    ):
        super().__init__(num_choices, mask_fn, seed, name="controller")
        if algorithm not in ALGORITHMS:
            raise ValueError(
                f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}."
            )
        self.config = config if config is not None else ControllerConfig()
        self.algorithm = algorithm

        # One table, offset per step: row 0 is the start token, then the
        # choices of step 0, step 1, ... (each step's previous choice).
        self._offsets = np.cumsum((1,) + self.num_choices[:-1], dtype=np.int32)
        rows = 1 + sum(self.num_choices[:-1])
        self._embedding = tf.Variable(
            tf.random.stateless_uniform(
                [rows, self.config.embedding_size],
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
        self._lstm = self._make_lstm()
        # One projection per step, stacked and padded to the widest step so
        # all steps score in one batched matmul; a padded column is always
        # masked, so it gets no gradient and stays zero.
        shape = [self.num_steps, self.config.lstm_size, self.max_choices]
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
            self.config.learning_rate, jit_compile=False
        )
        # Built now, so a restore fills the slots at once instead of waiting
        # for the first update.
        self._optimizer.build(self._weights)
        self._baseline = tf.Variable(0.0, dtype=tf.float64, trainable=False)
        self._updates = tf.Variable(0, dtype=tf.int64, trainable=False)
        self._evaluate_fn, self._train_fn = self._make_functions()

    def _make_lstm(self) -> tf_keras.layers.RNN:
        """The LSTM over a whole sequence, built (its weights exist)."""
        lstm = tf_keras.layers.RNN(
            tf_keras.layers.LSTMCell(
                self.config.lstm_size,
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
        lstm.build(tf.TensorShape([None, None, self.config.embedding_size]))
        return lstm

    def _make_functions(self) -> tuple[Any, Any]:
        """`_evaluate` and `_train_step` as tf.functions of fixed
        signatures (actions, masks[, old log-probs, advantages])."""
        signature = [
            tf.TensorSpec([None, self.num_steps], tf.int32),
            tf.TensorSpec([None, self.num_steps, self.max_choices], tf.bool),
        ]
        evaluate_fn = tf.function(self._evaluate, input_signature=signature)
        train_fn = tf.function(
            self._train_step,
            input_signature=signature + [tf.TensorSpec([None], tf.float32)] * 2,
        )
        return evaluate_fn, train_fn

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
        zeros = tf.zeros([n, self.config.lstm_size])
        return [zeros, zeros]

    def _squash(self, logits: tf.Tensor) -> tf.Tensor:
        logits = logits / self.config.temperature
        if self.config.tanh_constant is not None:
            logits = self.config.tanh_constant * tf.tanh(logits)
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
                    ratio,
                    1.0 - self.config.ppo_clip,
                    1.0 + self.config.ppo_clip,
                )
                objective = tf.minimum(ratio * advantages, clipped * advantages)
            else:
                objective = log_probs * advantages
            policy_loss = -tf.reduce_mean(objective)
            entropy = tf.reduce_mean(entropies)
            loss = policy_loss - self.config.entropy_weight * entropy
        grads = tape.gradient(loss, self._weights)
        self._optimizer.apply_gradients(zip(grads, self._weights))
        outside = tf.abs(ratio - 1.0) > self.config.ppo_clip
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
        epochs = self.config.ppo_epochs if self.algorithm == "ppo" else 1
        for _ in range(epochs):
            stats = self._train_fn(actions, masks, old_log_probs, advantages)
        for reward in rewards:
            decay = self.config.baseline_decay
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


def make_policy(
    algorithm: str,
    num_choices: Sequence[int],
    mask_fn: MaskFn | None = None,
    controller_config: ControllerConfig | None = None,
    *,
    seed: int = 0,
) -> Policy:
    """The policy a search algorithm uses.

    Args:
        algorithm: "ppo", "reinforce" or "random".
        num_choices: choices per step.
        mask_fn: validity masks.
        controller_config: the controller's hyperparameters; None takes
            the defaults (ignored for "random").
        seed: seeds the policy.
    """
    if algorithm == "random":
        return RandomPolicy(num_choices, mask_fn, seed=seed)
    if algorithm not in ALGORITHMS:
        raise ValueError(
            f"Unknown search algorithm {algorithm!r}; expected one of "
            f"{ALGORITHMS + ('random',)}."
        )
    return Controller(
        num_choices, mask_fn, controller_config, algorithm=algorithm, seed=seed
    )
