"""What every search policy shares, and the random-search policy.

A policy samples decision sequences in the search space
(``nasfpn_tf.arch.space``) one step at a time, each step's choices masked
to the valid ones given the steps before (``space.mask``). ``PolicyBase``
holds that: the masks, batched sampling into ``Samples`` (actions,
log-probabilities, entropies and the masks used), input checks and
checkpoints of the policy's state, random generator included.
``RandomPolicy`` samples uniformly among the valid choices and learns
nothing: the random-search baseline of the paper's Figure 5.
``nasfpn_tf.search.controller`` adds the LSTM trained by PPO or REINFORCE.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

MaskFn = Callable[[int, tuple[int, ...]], Sequence[bool]]


@dataclasses.dataclass(frozen=True, eq=False)
class Samples:
    """A batch of sampled decision sequences and how they were sampled.

    Attributes:
        actions: [n, steps] int32, the choice index taken at each step.
        log_probs: [n] float32, log-probability of each whole sequence under
            the policy that sampled it (the "old" policy of a PPO update).
        entropies: [n] float32, sum over steps of the entropy of each step's
            masked distribution along the sampled path.
        masks: [n, steps, max_choices] bool, the valid choices at each step,
            recorded at sample time; False beyond a step's choice count.
    """

    actions: np.ndarray
    log_probs: np.ndarray
    entropies: np.ndarray
    masks: np.ndarray

    def __len__(self) -> int:
        return int(self.actions.shape[0])

    def take(self, indices: Sequence[int]) -> Samples:
        """The samples at `indices`, in that order."""
        index = np.asarray(indices, dtype=np.int64)
        return Samples(*(np.asarray(f)[index] for f in self._fields()))

    @classmethod
    def concat(cls, parts: Sequence[Samples]) -> Samples:
        """One batch holding `parts` in order (e.g. one-at-a-time samples)."""
        if not parts:
            raise ValueError("Samples.concat needs at least one batch.")
        return cls(
            *(np.concatenate(f) for f in zip(*(p._fields() for p in parts)))
        )

    def _fields(self) -> tuple[np.ndarray, ...]:
        return (self.actions, self.log_probs, self.entropies, self.masks)


def masked_log_softmax(logits: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """Log-probabilities with invalid choices at exactly -inf.

    Args:
        logits: [n, k] float32.
        mask: [n, k] bool, True where a choice is valid; each row has one.

    Returns:
        [n, k] float32.
    """
    minus_inf = tf.fill(tf.shape(logits), -np.inf)
    return tf.nn.log_softmax(tf.where(mask, logits, minus_inf))


def masked_entropy(log_probs: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """Entropy of each row of masked log-probabilities, [n, k] -> [n].

    Invalid entries are zeroed *before* the product: 0 * -inf would be NaN
    and its gradient NaN even where tf.where discards it.
    """
    safe = tf.where(mask, log_probs, tf.zeros_like(log_probs))
    return -tf.reduce_sum(tf.exp(safe) * safe * tf.cast(mask, safe.dtype), -1)


class PolicyBase(tf.Module):
    """What both policies share: the space, masks, sampling and checkpoints."""

    def __init__(
        self,
        num_choices: Sequence[int],
        mask_fn: MaskFn | None,
        seed: int,
        name: str,
    ):
        super().__init__(name=name)
        choices = tuple(int(c) for c in num_choices)
        if not choices or any(c < 1 for c in choices):
            raise ValueError(
                "num_choices must be a non-empty sequence of positive ints, "
                f"got {tuple(num_choices)!r}."
            )
        self.num_choices = choices
        self.mask_fn = mask_fn
        self.seed = int(seed)
        self.num_steps = len(choices)
        self.max_choices = max(choices)
        self._rng = tf.random.Generator.from_seed(self.seed)

    # -- masks --------------------------------------------------------------

    def _step_mask(self, step: int, prefix: tuple[int, ...]) -> np.ndarray:
        """[max_choices] bool: the valid choices at `step` after `prefix`."""
        count = self.num_choices[step]
        row = np.zeros([self.max_choices], dtype=bool)
        if self.mask_fn is None:
            row[:count] = True
            return row
        valid = tuple(bool(v) for v in self.mask_fn(step, prefix))
        if len(valid) != count:
            raise ValueError(
                f"mask_fn({step}, {prefix}) returned {len(valid)} entries; "
                f"step {step} has {count} choices."
            )
        if not any(valid):
            raise ValueError(
                f"mask_fn({step}, {prefix}) allows no choice: the search "
                "space has a dead end there."
            )
        row[:count] = valid
        return row

    def masks_for(self, actions: Any) -> np.ndarray:
        """Masks of each step given the earlier actions.

        Args:
            actions: [n, steps] ints.

        Returns:
            [n, steps, max_choices] bool.
        """
        actions = self._check_actions(actions)
        masks = np.zeros(actions.shape + (self.max_choices,), dtype=bool)
        for i, row in enumerate(actions.tolist()):
            for step in range(self.num_steps):
                masks[i, step] = self._step_mask(step, tuple(row[:step]))
        return masks

    def _check_actions(self, actions: Any) -> np.ndarray:
        actions = np.asarray(actions)
        if actions.ndim != 2 or actions.shape[1] != self.num_steps:
            raise ValueError(
                f"actions must have shape [n, {self.num_steps}], got "
                f"{actions.shape}."
            )
        if not np.issubdtype(actions.dtype, np.integer):
            raise ValueError(f"actions must be ints, got {actions.dtype}.")
        return actions.astype(np.int32)

    def _check_batch(
        self, actions: Any, masks: Any | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Validated actions and masks; masks derived when not given."""
        actions = self._check_actions(actions)
        if masks is None:
            masks = self.masks_for(actions)
        masks = np.asarray(masks, dtype=bool)
        want = actions.shape + (self.max_choices,)
        if masks.shape != want:
            raise ValueError(
                f"masks must have shape {want}, got {masks.shape}."
            )
        in_range = (actions >= 0) & (actions < np.array(self.num_choices))
        inside = np.where(in_range, actions, 0)[..., None]
        valid = in_range & np.take_along_axis(masks, inside, -1)[..., 0]
        if not valid.all():
            sample, step = np.argwhere(~valid)[0]
            raise ValueError(
                f"Sample {sample} takes invalid choice "
                f"{actions[sample, step]} at step {step}."
            )
        return actions, masks

    # -- sampling -----------------------------------------------------------

    def _initial_state(self, n: int) -> Any:
        return None

    def _step_logits(
        self, step: int, previous: tf.Tensor | None, state: Any
    ) -> tuple[tf.Tensor, Any]:
        """Logits [n, num_choices[step]] of one step and the next state."""
        raise NotImplementedError

    def sample(self, n: int) -> Samples:
        """Draws `n` decision sequences, advancing the policy's RNG.

        Args:
            n: number of sequences, >= 1.

        Returns:
            `Samples` with actions [n, steps].
        """
        if int(n) < 1:
            raise ValueError(f"sample(n) needs n >= 1, got {n}.")
        n = int(n)
        actions = np.zeros([n, self.num_steps], dtype=np.int32)
        masks = np.zeros([n, self.num_steps, self.max_choices], dtype=bool)
        log_probs = tf.zeros([n])
        entropies = tf.zeros([n])
        state = self._initial_state(n)
        previous = None
        for step, count in enumerate(self.num_choices):
            for i, row in enumerate(actions[:, :step].tolist()):
                masks[i, step] = self._step_mask(step, tuple(row))
            logits, state = self._step_logits(step, previous, state)
            mask = tf.constant(masks[:, step, :count])
            step_log_probs = masked_log_softmax(logits, mask)
            # Stateless draws from seeds of the checkpointed generator: the
            # same generator state gives the same samples after a restore.
            seed = self._rng.make_seeds(1)[:, 0]
            choice = tf.random.stateless_categorical(
                step_log_probs, 1, seed, dtype=tf.int32
            )[:, 0]
            log_probs += tf.gather(step_log_probs, choice, batch_dims=1)
            entropies += masked_entropy(step_log_probs, mask)
            actions[:, step] = choice.numpy()
            previous = choice
        return Samples(actions, log_probs.numpy(), entropies.numpy(), masks)

    # -- state --------------------------------------------------------------

    def _checkpoint(self) -> tf.train.Checkpoint:
        return tf.train.Checkpoint(rng=self._rng)

    def save(self, path: str) -> str:
        """Writes the whole policy state to checkpoint prefix `path`."""
        return self._checkpoint().write(path)

    def restore(self, path: str) -> None:
        """Reads a state written by `save` of a policy built the same way."""
        self._checkpoint().read(path).assert_consumed()


class RandomPolicy(PolicyBase):
    """Uniform over valid choices at every step; `update` learns nothing.

    Args:
        num_choices: choices per step.
        mask_fn: validity masks, as for `Controller`.
        seed: seeds sampling.
    """

    def __init__(
        self,
        num_choices: Sequence[int],
        mask_fn: MaskFn | None = None,
        *,
        seed: int = 0,
    ):
        super().__init__(num_choices, mask_fn, seed, name="random_policy")

    def _step_logits(
        self, step: int, previous: tf.Tensor | None, state: Any
    ) -> tuple[tf.Tensor, Any]:
        return tf.zeros([state, self.num_choices[step]]), state

    def _initial_state(self, n: int) -> int:
        return n

    def log_prob(self, actions: Any, masks: Any | None = None) -> np.ndarray:
        """Log-probability [n]: minus the log of the valid counts summed."""
        return -self.entropy(actions, masks)

    def entropy(self, actions: Any, masks: Any | None = None) -> np.ndarray:
        """Entropy [n]: the log of the valid counts summed over steps."""
        if isinstance(actions, Samples):
            actions, masks = actions.actions, actions.masks
        _, masks = self._check_batch(actions, masks)
        return np.log(masks.sum(-1)).sum(-1).astype(np.float32)

    def update(
        self,
        samples: Samples | Any,
        rewards: Sequence[float],
        masks: Any | None = None,
    ) -> dict[str, float]:
        """Does nothing (random search does not learn); returns {}."""
        del samples, rewards, masks
        return {}
