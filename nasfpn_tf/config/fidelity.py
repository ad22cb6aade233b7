"""Config section of `--mode=fidelity`: `fidelity`."""

from __future__ import annotations

import dataclasses

from nasfpn_tf.config.checks import ConfigError, _non_negative, _positive
from nasfpn_tf.config.search import ProxyConfig


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
