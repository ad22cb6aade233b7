"""One controller step's samples and what is known of them.

The policy samples a batch of action sequences at once (NAS-FPN, Ghiasi et
al., CVPR 2019, arXiv:1904.07392, Sec. 3: the controller learns from the
rewards of a batch of children). `Batch` holds them with their specs and
canonical hashes, the rewards recorded so far and which samples are handed
out to tuners; `scheduler.Scheduler` decides what to do with them.
Positions (`pos`) count within the batch; global sample indices are
`start + pos`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from typing import Any

from nasfpn_tf.arch.space import SearchSpace
from nasfpn_tf.arch.spec import NeckSpec
from nasfpn_tf.search import controller as controller_lib
from nasfpn_tf.search import history as history_lib


@dataclasses.dataclass
class Batch:
    """The samples of one controller step.

    Attributes:
        step: the controller step.
        start: the global index of the first sample.
        samples: the policy's samples (actions [size, steps], ...).
        specs: the spec of each sample.
        hashes: the canonical hash of each spec.
        rewards: the recorded reward of each sample, None while unknown.
        replayed: whether each reward came from an earlier run's history.
        handed: positions handed out to a tuner and not yet recorded.
    """

    step: int
    start: int
    samples: controller_lib.Samples
    specs: list[NeckSpec]
    hashes: list[str]
    rewards: list[float | None]
    replayed: list[bool]
    handed: set[int] = dataclasses.field(default_factory=set)

    @classmethod
    def sample(
        cls,
        policy: controller_lib.Policy,
        space: SearchSpace,
        step: int,
        start: int,
        size: int,
    ) -> Batch:
        """Samples `size` action sequences from `policy` for `step`."""
        samples = policy.sample(size)
        specs = [
            space.to_spec([int(a) for a in samples.actions[pos]])
            for pos in range(size)
        ]
        return cls(
            step=step,
            start=start,
            samples=samples,
            specs=specs,
            hashes=[spec.canonical_key() for spec in specs],
            rewards=[None] * size,
            replayed=[False] * size,
        )

    @property
    def size(self) -> int:
        return len(self.specs)

    @property
    def done(self) -> bool:
        """Every sample has a reward."""
        return all(r is not None for r in self.rewards)

    def holds(self, sample: int) -> bool:
        """Whether global sample index `sample` is in this batch."""
        return 0 <= sample - self.start < self.size

    def actions(self, pos: int) -> tuple[int, ...]:
        """The action sequence of position `pos`."""
        return tuple(int(a) for a in self.samples.actions[pos])

    def keys_in_flight(self) -> set[str]:
        """Hashes of the samples being trained now."""
        return {
            self.hashes[pos] for pos in self.handed if self.rewards[pos] is None
        }

    def waiting(self) -> Iterator[int]:
        """Positions neither recorded nor handed out, in order (checked as
        the iteration reaches each, so a caller may record as it goes)."""
        for pos in range(self.size):
            if self.rewards[pos] is None and pos not in self.handed:
                yield pos

    def record(self, pos: int, **fields: Any) -> history_lib.SampleRecord:
        """A history record of position `pos`, stamped now, with `fields`
        (reward, status, ...)."""
        return history_lib.SampleRecord(
            step=self.step,
            sample=self.start + pos,
            actions=self.actions(pos),
            spec=self.specs[pos].to_dict(),
            hash=self.hashes[pos],
            time=time.time(),
            **fields,
        )
