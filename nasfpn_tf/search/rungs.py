"""Asynchronous successive halving of the children (ASHA).

Successive halving (Jamieson & Talwalkar, AISTATS 2016) trains many
configurations briefly and only the best longer; its asynchronous form
(Li et al., "A System for Massively Parallel Hyperparameter Tuning",
MLSys 2020) decides each promotion as soon as a child reaches a rung, so
parallel workers never wait for a rung to fill. Here, with
`search.rungs.min_steps` = m > 0, `eta` = e and `search.proxy.train_steps`
= T, the rungs are m, m·e, m·e², ... steps, the last being T. The child
trains with the whole proxy schedule (its learning rate decays over T
steps) but stops at each rung to be rated on the held-out split. It goes
on to the next rung only while it is in the top 1/e of the children rated
at that rung so far (itself included; the first child at a rung always
goes on). A promoted child goes on in the same trainer session (model,
data iterator and traced functions kept: `trainer.open_session`, held by
the proxy across the child's rungs), so a child that reaches the last
rung has trained exactly as a child without rungs does; after a restart
it resumes from its own checkpoint at the rung.

The decision is made by the worker that trains the child, from what every
child of the search has logged: each child's work directory holds
`rungs.jsonl`, one `RungEntry` per rung it was rated at, written (and
fsynced) with the decision before training goes on. A child killed in the
middle resumes from its log and checkpoint: no rung is trained or decided
twice.

The controller learns one reward per child, but rewards of different
rungs are not comparable: the AP after m steps is lower than after T for
every spec. `final_reward` chooses the rule (`search.rungs.final_reward`):

  highest  the reward at the highest rung the child reached (default);
           promotion itself is then part of the reward, as promoted
           children train longer and score higher;
  rank     (r + q) / R for a child stopped at rung r of R, q being the
           share of the children rated at rung r (so far) with a reward
           at most its own: in (0, 1], monotone in the rung reached and
           comparable across rungs by construction;
  first    the reward at the first rung, which every child has: one
           fidelity for all, the longer rungs then only choose the best
           spec.

`benchmarks/search_cost.py --rules` compares them on synthetic learning
curves.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import tensorflow as tf
from absl import logging

from nasfpn_tf import files
from nasfpn_tf.checks import is_int, is_number
from nasfpn_tf.errors import UserError
from nasfpn_tf.run_files import RUNGS_FILE
from nasfpn_tf.search.history import FAILED, OK
from nasfpn_tf.search.rater import ProxyResult

HIGHEST = "highest"
RANK = "rank"
FIRST = "first"
FINAL_REWARDS = (HIGHEST, RANK, FIRST)


class RungError(UserError, ValueError):
    """A rung log that cannot be read as written."""


def rung_steps(min_steps: int, eta: int, max_steps: int) -> tuple[int, ...]:
    """The training steps at which a child is rated.

    Args:
        min_steps: the first rung's steps; 0 means no halving.
        eta: the factor between rungs (>= 2).
        max_steps: the last rung's steps (the proxy's schedule).

    Returns:
        Ascending steps ending with `max_steps`: `(max_steps,)` without
        halving; else min_steps·eta**k (rounded) while below max_steps.
    """
    if min_steps <= 0:
        return (max_steps,)
    if min_steps >= max_steps or eta < 2:
        raise ValueError(
            f"need 0 < min_steps < max_steps and eta >= 2; got min_steps "
            f"{min_steps}, max_steps {max_steps}, eta {eta}."
        )
    steps = []
    value = float(min_steps)
    while round(value) < max_steps:
        steps.append(round(value))
        value *= eta
    return (*steps, max_steps)


def expected_steps(rungs: Sequence[int], eta: int) -> float:
    """Training steps per child when 1/eta of each rung goes on: the
    budget a halving search spends per sample, against `rungs[-1]`."""
    total, previous = 0.0, 0
    for index, steps in enumerate(rungs):
        total += (steps - previous) / eta**index
        previous = steps
    return total


def promotes(reward: float, others: Sequence[float], eta: int) -> bool:
    """Whether a child with `reward` goes on from a rung where `others`
    (the other children's rewards) were rated before it.

    It goes on when its rank among all n = len(others) + 1 (1 = best;
    ties rank alike) is within the top max(1, floor(n / eta)).
    """
    rank = 1 + sum(1 for other in others if other > reward)
    return rank <= max(1, (len(others) + 1) // eta)


def final_reward(
    rule: str,
    entries: Sequence[RungEntry],
    others_at_last: Sequence[float],
    num_rungs: int,
) -> float:
    """The controller's reward of a child from its rung entries.

    Args:
        rule: one of FINAL_REWARDS (see the module docstring).
        entries: the child's entries, first rung first; the last is the
            highest rung it reached.
        others_at_last: the other children's rewards at that rung.
        num_rungs: rungs in the search.
    """
    if rule not in FINAL_REWARDS:
        raise ValueError(f"rule must be one of {FINAL_REWARDS}; got {rule!r}.")
    last = entries[-1]
    if rule == HIGHEST:
        return last.reward
    if rule == FIRST:
        return entries[0].reward
    at_most = 1 + sum(1 for other in others_at_last if other <= last.reward)
    share = at_most / (len(others_at_last) + 1)
    return (last.rung + share) / num_rungs


def climb(
    train: Callable[[int], ProxyResult],
    work_dir: str,
    rungs: Sequence[int],
    *,
    eta: int,
    final_rule: str,
    board: RungBoard | None = None,
) -> ProxyResult:
    """Successive halving of one child: trains it to each rung's steps in
    turn, rated at each, while the rung's board promotes it.

    What `work_dir` logged (`rungs.jsonl`) is neither trained nor decided
    again, so a child killed in the middle resumes at its next rung.

    Args:
        train: `train(steps)` trains the child on to `steps` and rates it
            there (a "failed" result stops the climb).
        work_dir: the child's directory (its `rungs.jsonl`).
        rungs: the steps of each rung (`rung_steps`).
        eta: the promotion factor.
        final_rule: one of FINAL_REWARDS.
        board: the other children's rewards; None reads the folders beside
            `work_dir` (the search's trials).

    Returns:
        The rule's reward, the last rung's metrics with `rung` (its index)
        and the rungs' total `train_seconds`, every rung in `rungs`; or the
        failed rung's result with the rungs before it.
    """
    log = RungLog(work_dir)
    board = board or RungBoard(os.path.dirname(os.path.normpath(work_dir)))
    attempts = 0
    for rung, steps in enumerate(rungs):
        entry = log.get(rung)
        if entry is None:
            result = train(steps)
            attempts += result.attempts
            if result.status == FAILED:
                return dataclasses.replace(
                    result,
                    seconds=result.seconds
                    + sum(e.seconds for e in log.entries),
                    attempts=attempts,
                    rungs=tuple(e.to_dict() for e in log.entries),
                )
            others = board.rewards(rung, exclude=work_dir)
            promoted = rung < len(rungs) - 1 and promotes(
                result.reward, others, eta
            )
            logging.info(
                "Child in %s: rung %d (%d steps) reward %.4f among %d others: %s",
                work_dir,
                rung,
                steps,
                result.reward,
                len(others),
                "goes on" if promoted else "stops",
            )
            entry = log.append(
                RungEntry(
                    rung=rung,
                    steps=steps,
                    reward=result.reward,
                    seconds=result.seconds,
                    promoted=promoted,
                    metrics=dict(result.metrics),
                )
            )
        if not entry.promoted:
            break
    return _climbed(log.entries, board, work_dir, attempts, final_rule, rungs)


def _climbed(
    entries: Sequence[RungEntry],
    board: RungBoard,
    work_dir: str,
    attempts: int,
    final_rule: str,
    rungs: Sequence[int],
) -> ProxyResult:
    """A halving child's result from its rung entries."""
    last = entries[-1]
    reward = final_reward(
        final_rule,
        entries,
        board.rewards(last.rung, exclude=work_dir),
        len(rungs),
    )
    metrics = dict(last.metrics)
    metrics["rung"] = float(last.rung)
    metrics["train_seconds"] = sum(
        e.metrics.get("train_seconds", 0.0) for e in entries
    )
    return ProxyResult(
        reward=reward,
        status=OK,
        metrics=metrics,
        seconds=sum(e.seconds for e in entries),
        attempts=max(attempts, 1),
        rungs=tuple(e.to_dict() for e in entries),
    )


@dataclasses.dataclass(frozen=True)
class RungEntry:
    """A child rated at one rung.

    Attributes:
        rung: the rung's index, from 0.
        steps: training steps reached.
        reward: the reward there (held-out AP, mean over the seeds).
        seconds: wall time of that rung's training and rating.
        promoted: whether the child went on to the next rung.
        metrics: the rating's metrics (AP, AP50, ..., steps).
    """

    rung: int
    steps: int
    reward: float
    seconds: float
    promoted: bool
    metrics: Mapping[str, float] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        for name in ("rung", "steps"):
            value = getattr(self, name)
            if not is_int(value) or value < 0:
                raise RungError(f"{name}: expected an int >= 0, got {value!r}")
        for name in ("reward", "seconds"):
            value = getattr(self, name)
            if not is_number(value) or not math.isfinite(value):
                raise RungError(
                    f"{name}: expected a finite number, got {value!r}"
                )
        if not isinstance(self.promoted, bool):
            raise RungError(
                f"promoted: expected true or false, got {self.promoted!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["metrics"] = dict(self.metrics)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RungEntry:
        names = {f.name for f in dataclasses.fields(cls)}
        missing = {"rung", "steps", "reward", "seconds", "promoted"} - set(data)
        if missing:
            raise RungError(f"missing {sorted(missing)}")
        return cls(**{k: v for k, v in data.items() if k in names})


def _entry_of(row: Mapping[str, Any]) -> RungEntry:
    if not isinstance(row, Mapping):
        raise RungError(f"expected an object, got {row!r}")
    return RungEntry.from_dict(row)


def _line_of(entry: RungEntry) -> str:
    return json.dumps(entry.to_dict(), separators=(",", ":")) + "\n"


class RungLog:
    """A child's `rungs.jsonl`: its entries, appended and fsynced; a torn
    last line (a kill mid-append) is dropped on opening."""

    def __init__(self, work_dir: str):
        self.path = os.path.join(work_dir, RUNGS_FILE)
        self._log = files.JsonlLog.open(
            self.path, parse=_entry_of, encode=_line_of, what="a rung entry"
        )

    @property
    def entries(self) -> list[RungEntry]:
        """The entries, in the order rated (the live list: read only)."""
        return self._log.rows

    def get(self, rung: int) -> RungEntry | None:
        """The entry of `rung`, if the child was rated there."""
        for entry in self.entries:
            if entry.rung == rung:
                return entry
        return None

    def append(self, entry: RungEntry) -> RungEntry:
        """Adds `entry` durably before returning it."""
        self._log.append(entry)
        return entry


class RungBoard:
    """Every child's rung entries, read from the children's work
    directories under `trials_dir` (`*/rungs.jsonl`)."""

    def __init__(self, trials_dir: str):
        self.trials_dir = trials_dir

    def rewards(self, rung: int, *, exclude: str = "") -> list[float]:
        """The rewards logged at `rung` by children other than the one in
        work directory `exclude`."""
        pattern = os.path.join(self.trials_dir, "*", RUNGS_FILE)
        rewards = []
        skip = os.path.normpath(exclude) if exclude else None
        for path in sorted(tf.io.gfile.glob(pattern)):
            if os.path.normpath(os.path.dirname(path)) == skip:
                continue
            try:
                rows, _, _ = files.read_jsonl(path, _entry_of, "a rung entry")
            except UserError as error:
                # Another child's unreadable log must not stop this one.
                logging.warning("Ignoring %s: %s", path, error)
                continue
            rewards.extend(e.reward for e in rows if e.rung == rung)
        return rewards
