"""Shared helpers of the search tests: a tiny space, a scripted policy and
a proxy whose reward is a pure function of the spec.

Free of KerasTuner, so that the scheduler's tests run without it.
"""

import os
import random

import numpy as np
import tensorflow as tf

from nasfpn_tf.arch.space import SearchSpace
from nasfpn_tf.search import controller
from nasfpn_tf.search import history as history_lib
from nasfpn_tf.search import proxy as proxy_lib

# 3 cells over levels 3..4: 12 decisions, small enough to repeat itself.
SPACE = SearchSpace(
    num_intermediate=1, intermediate_levels=(4,), min_level=3, max_level=4
)
PENALTY = -1.0


def formula(key):
    """The fake proxy's reward: a pure function of the canonical hash."""
    return int(key[:8], 16) / 16**8


class FormulaProxy:
    """Rates a spec by `formula`; specs whose hash is in `fail` fail, and
    those in `crash` raise from `reward` (a bug, not a failed child)."""

    def __init__(self, fail=(), crash=()):
        self.fail, self.crash = set(fail), set(crash)
        self.calls = []

    def reward(self, spec, work_dir):
        key = spec.canonical_key()
        self.calls.append(key)
        assert os.path.isdir(work_dir)
        if key in self.crash:
            raise ValueError(f"bug while rating {key}")
        if key in self.fail:
            return proxy_lib.ProxyResult(
                PENALTY, "failed", error="NonFiniteLossError: nan"
            )
        reward = formula(key)
        return proxy_lib.ProxyResult(reward, "ok", {"AP": reward}, 0.01)


class ScriptedPolicy(tf.Module):
    """Samples the given action rows in order; records its updates."""

    def __init__(self, rows):
        super().__init__()
        self.rows = np.asarray(rows, dtype=np.int32)
        self.position = tf.Variable(0, dtype=tf.int64)
        self.learned = tf.Variable(0, dtype=tf.int64)
        self.updates = []

    @property
    def num_updates(self):
        return int(self.learned.numpy())

    def sample(self, n):
        start = int(self.position.numpy())
        actions = self.rows[start : start + n]
        assert len(actions) == n, "script exhausted"
        self.position.assign_add(n)
        zeros = np.zeros([n], np.float32)
        masks = np.ones(actions.shape + (1,), dtype=bool)
        return controller.Samples(actions, zeros, zeros, masks)

    def update(self, samples, rewards):
        # `Samples`, or bare actions (a warm start's replay).
        actions = np.asarray(getattr(samples, "actions", samples))
        self.updates.append((actions.tolist(), list(rewards)))
        self.learned.assign_add(1)
        return {"loss": float(np.mean(rewards))}

    def _checkpoint(self):
        return tf.train.Checkpoint(position=self.position, learned=self.learned)

    def save(self, path):
        return self._checkpoint().write(path)

    def restore(self, path):
        self._checkpoint().read(path).assert_consumed()


def distinct_rows(n, seed=0):
    """`n` random action rows of `n` different architectures."""
    rng, rows, keys = random.Random(seed), [], set()
    while len(rows) < n:
        actions = SPACE.random_actions(rng)
        if key(actions) not in keys:
            keys.add(key(actions))
            rows.append(actions)
    return rows


def twin(actions):
    """Same computation, other actions: cell 0 as a sum of swapped inputs."""
    other = list(actions)
    other[0], other[1] = other[1], other[0]
    other[3] = SPACE.ops.index("sum")
    original = list(actions)
    original[3] = other[3]
    return original, other


def key(actions):
    """The canonical hash of the spec `actions` encode."""
    return SPACE.to_spec(actions).canonical_key()


def scheduling(num_samples, per_update, **kwargs):
    """The scheduling keywords the scheduler and the oracle share in these
    tests (scripted policy, PENALTY), and the dict that records what their
    callbacks saw: ``(keywords, {"samples": [...], "updates": [...]})``."""
    seen = {"samples": [], "updates": []}
    keywords = {
        "num_samples": num_samples,
        "samples_per_update": per_update,
        "algorithm": "scripted",
        "penalty_reward": PENALTY,
        "on_sample": seen["samples"].append,
        "on_update": seen["updates"].append,
        **kwargs,
    }
    return keywords, seen


# The default space, for records of the published spec.
FULL_SPACE = SearchSpace()


def sample_record(sample, reward=0.5, status="ok", step=None, spec=None, **kw):
    """A history record of sample `sample`: by default a random spec of
    `FULL_SPACE` (seeded by `sample`) rated `reward`, at step sample // 3."""
    spec = spec or FULL_SPACE.to_spec(
        FULL_SPACE.random_actions(random.Random(sample))
    )
    if status == "cached":
        kw.setdefault("cached_from", 0)
    if status == "failed":
        kw.setdefault("error", "ValueError: boom")
    return history_lib.SampleRecord(
        step=sample // 3 if step is None else step,
        sample=sample,
        actions=tuple(FULL_SPACE.from_spec(spec)),
        spec=spec.to_dict(),
        hash=spec.canonical_key(),
        reward=reward,
        status=status,
        **kw,
    )
