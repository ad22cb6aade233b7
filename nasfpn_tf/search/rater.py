"""What the search asks of whatever rates its specs: the `Rater` protocol
and the rated record, `ProxyResult`.

A rater turns a spec into a rated record: `proxy.ProxyTask` trains each
child briefly and takes its held-out AP; a shared-weight rater evaluates
it through weights trained once for all; tests use formulas. The search
(oracle, scheduler, cache, history, resume, plots, the Pareto front)
depends on this protocol alone, never on which rater it has.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, Protocol

from nasfpn_tf.arch.spec import NeckSpec
from nasfpn_tf.search.history import FAILED, OK

# What a rating reports (the history adds "cached").
STATUSES = (OK, FAILED)


@dataclasses.dataclass(frozen=True)
class ProxyResult:
    """What rating one child gave.

    Attributes:
        reward: held-out AP (or `search.objective`'s reward of AP and
            the costs), or the penalty reward when the child failed.
        status: "ok" or "failed".
        metrics: the child's final metrics (AP, AP50, ..., steps,
            train_seconds, final_loss; flops, params and latency_ms when
            measured), finite numbers only.
        seconds: wall time of all attempts together.
        error: "ExceptionType: message" of the last failure, for failed
            children.
        attempts: trainings started (1 + retries).
        rungs: with successive halving, the child's `RungEntry.to_dict()`
            of every rung it was rated at, first rung first.
    """

    reward: float
    status: str
    metrics: Mapping[str, float] = dataclasses.field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None
    attempts: int = 1
    rungs: tuple[Mapping[str, Any], ...] = ()

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(
                f"status must be one of {STATUSES}; got {self.status!r}."
            )
        if not math.isfinite(self.reward):
            raise ValueError(f"reward must be finite; got {self.reward!r}.")
        if (self.status == FAILED) != (self.error is not None):
            raise ValueError(
                "error is set for failed results and only for them; got "
                f"status {self.status!r} with error {self.error!r}."
            )

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["metrics"] = dict(self.metrics)
        if self.rungs:
            data["rungs"] = [dict(r) for r in self.rungs]
        else:
            del data["rungs"]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ProxyResult:
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        if "rungs" in values:
            values["rungs"] = tuple(values["rungs"])
        return cls(**values)


class Rater(Protocol):
    """Anything that rates a spec.

    A rater may also define `release(work_dir)`, called once the result
    is stored, to delete what the child no longer needs.
    """

    def reward(self, spec: NeckSpec, work_dir: str) -> ProxyResult:
        """Rates `spec`, using `work_dir` for the child's files. A child
        that fails is a "failed" result; only errors that are not the
        child's (the storage's, an interrupt) propagate."""
        ...
