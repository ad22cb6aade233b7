"""Warm starts: a search that begins where earlier searches left off.

`--warm_start=PATH` (repeatable; PATH is an earlier search's history.jsonl
or its directory) hands this search the rewards the earlier ones earned:

- their rated records (ok or cached, not failed: a failure may be the
  machine's, not the architecture's) fill the reward cache first, so a spec
  rated there is recorded here as `cached` without training; its record's
  `cached_from` is the sample that earned the reward and `cached_source`
  the history it lies in;
- a learning controller (PPO, REINFORCE; random search learns nothing) is
  updated on those records before it samples: in history order, source
  after source, in batches of this search's `samples_per_update` (the last
  one may be short), with the records' action sequences as the samples.

Reusing a reward is only right when it would be earned again here, so the
earlier search must have rated its children with the same settings. The
rule: the child configs (`config.proxy_experiment`) of both searches are
compared key by key, every key but those in `IGNORED`, which cannot change
a child's reward, not even its rounding. New config sections (such as
`search.rungs` or `search.objective`) are therefore compared without
being named here. `runtime.seed` is compared: the children's seeds derive
from it (`proxy.child_seeds`). A source without its `config.yaml` is
refused, as its settings are unknown.

Resuming. Everything a warm start uses is fixed in `warm_start.json` in the
search directory before the controller is touched: each source's path, the
number of its records used and a digest of them, the cache entries and the
updates replayed. A rerun must name the same sources (in the same order);
it uses the same first records of each (a source still running may have
grown; one that changed is refused) and replays only when no controller
checkpoint exists yet: the checkpoint saved right after the replay
(`update-000000`, counting none of this search's own updates) holds it. A
search that started without a warm start cannot be given one later.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf
from absl import logging

from nasfpn_tf import config as config_lib
from nasfpn_tf import files
from nasfpn_tf.arch.space import SearchSpace
from nasfpn_tf.errors import UserError
from nasfpn_tf.run_files import HISTORY_FILE, WARM_START_FILE
from nasfpn_tf.search import controller as controller_lib
from nasfpn_tf.search import history as history_lib
from nasfpn_tf.search import search_dir as search_dir_lib

FLAG = "--warm_start"
VERSION = 1

# Child-config keys (and sections) that cannot change a child's reward;
# every other key must be equal. Orchestration and the controller decide
# which children train, not what they earn; the child's neck is the
# sampled spec whatever model.neck says; failed records are not reused, so
# their penalty and retries do not matter; the rest is bookkeeping.
IGNORED = (
    "search.algorithm",
    "search.num_samples",
    "search.samples_per_update",
    "search.parallel_trials",
    "search.max_retries",
    "search.penalty_reward",
    "search.reuse_rewards",
    "search.controller",
    "search.oracle_host",
    "search.oracle_port",
    "search.worker_timeout",
    "model.neck.type",
    "model.neck.arch",
    "runtime.tpu",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.summary_every",
    "train.log_every",
    "data.cache",
    "fidelity",
)


class WarmStartError(UserError, ValueError):
    """A warm start that cannot be used: other settings, a missing file, or
    other sources than the search started with."""


def ignored(key: str) -> bool:
    """Whether dotted config key `key` is one that cannot change a reward."""
    return any(key == i or key.startswith(i + ".") for i in IGNORED)


def differences(
    earlier: config_lib.ExperimentConfig, current: config_lib.ExperimentConfig
) -> dict[str, tuple[Any, Any]]:
    """Reward-determining keys whose values differ: key -> (earlier value,
    current value), compared on the child configs."""
    changed = config_lib.diff(
        config_lib.proxy_experiment(earlier),
        config_lib.proxy_experiment(current),
    )
    return {k: v for k, v in changed.items() if not ignored(k)}


def history_path(path: str) -> str:
    """The history file `path` names: itself, or a directory's."""
    path = path.rstrip("/")
    if path.endswith(".jsonl"):
        return path
    return os.path.join(path, HISTORY_FILE)


def _same_file(a: str, b: str) -> bool:
    if "://" in a or "://" in b:
        return a == b
    return os.path.abspath(a) == os.path.abspath(b)


def digest(records: Sequence[history_lib.SampleRecord]) -> str:
    """sha256 of what the records decided (`outcome`), in order."""
    text = json.dumps([list(r.outcome()) for r in records])
    return hashlib.sha256(text.encode()).hexdigest()


@dataclasses.dataclass(frozen=True)
class Source:
    """One earlier search's history.

    Attributes:
        path: its history.jsonl.
        records: the records used, in file order.
    """

    path: str
    records: tuple[history_lib.SampleRecord, ...]

    @property
    def rated(self) -> list[history_lib.SampleRecord]:
        return [r for r in self.records if r.rated]

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "records": len(self.records),
            "rated": len(self.rated),
            "digest": digest(self.records),
        }


@dataclasses.dataclass(frozen=True)
class WarmStart:
    """The earlier searches a search starts from, in flag order."""

    sources: tuple[Source, ...]

    @property
    def paths(self) -> list[str]:
        return [s.path for s in self.sources]

    def rated(self) -> Iterator[tuple[Source, history_lib.SampleRecord]]:
        """Rated records in history order, source after source."""
        for source in self.sources:
            for record in source.rated:
                yield source, record

    def batches(
        self, size: int
    ) -> list[list[tuple[Source, history_lib.SampleRecord]]]:
        """The rated records in batches of `size` (the last may be short)."""
        rated = list(self.rated())
        return [rated[i : i + size] for i in range(0, len(rated), size)]

    def num_updates(self, size: int) -> int:
        return math.ceil(len(list(self.rated())) / size)

    def fill(self, cache: history_lib.RewardCache) -> None:
        """Adds every rated record to `cache` (earlier sources first)."""
        for source, record in self.rated():
            cache.add_from(record, source.path)

    def summary(self, samples_per_update: int, replayed: int) -> dict:
        """What `warm_start.json` holds."""
        return {
            "version": VERSION,
            "sources": [s.to_dict() for s in self.sources],
            "cached": len({r.hash for _, r in self.rated()}),
            "samples_per_update": samples_per_update,
            "replayed_updates": replayed,
        }

    def pinned(self, saved: Mapping[str, Any], where: str) -> WarmStart:
        """The records `saved` (a `summary`) used: each source's first ones.

        Raises:
            WarmStartError: a source holds fewer records or other ones.
        """
        sources = []
        for source, entry in zip(self.sources, saved["sources"]):
            try:
                count, kept = int(entry["records"]), str(entry["digest"])
            except (KeyError, TypeError, ValueError):
                raise WarmStartError(
                    f"{where}: expected records and digest of each source; "
                    f"got {entry!r}"
                ) from None
            used = source.records[:count]
            if len(used) < count or digest(used) != kept:
                raise WarmStartError(
                    f"{where}: this search was warm-started from the first "
                    f"{count} records of {source.path}, which have changed "
                    "since; restore that history or use a new model_dir"
                )
            sources.append(Source(source.path, used))
        return WarmStart(tuple(sources))


def load(
    paths: Sequence[str],
    config: config_lib.ExperimentConfig,
    model_dir: str,
) -> WarmStart | None:
    """Reads the histories `paths` name and checks their settings.

    Args:
        paths: history.jsonl files or their search directories, as given
            to `--warm_start`.
        config: this search's config.
        model_dir: this search's directory (not a source of itself).

    Returns:
        The sources, or None without paths.

    Raises:
        WarmStartError: a path is this search's, given twice or missing,
            has no config.yaml beside it, or its config differs in a
            reward-determining key (each named with both values).
        history.HistoryError: a history that cannot be read.
    """
    if not paths:
        return None
    own = history_path(model_dir)
    sources: list[Source] = []
    for given in paths:
        path = history_path(given)
        where = f"{FLAG}={given}"
        if _same_file(path, own):
            raise WarmStartError(
                f"{where} is this search's own history; name earlier searches"
            )
        if any(_same_file(path, s.path) for s in sources):
            raise WarmStartError(f"{where} is given twice")
        if not tf.io.gfile.exists(path):
            raise WarmStartError(
                f"{where}: {path} does not exist; name an earlier search's "
                f"{HISTORY_FILE} or its directory"
            )
        directory = os.path.dirname(path)
        try:
            earlier = config_lib.load_saved(directory)
        except config_lib.ConfigError as error:
            raise WarmStartError(
                f"{where}: {config_lib.config_path(directory)} cannot be "
                f"read: {error}"
            ) from None
        if earlier is None:
            raise WarmStartError(
                f"{where}: no {config_lib.CONFIG_FILENAME} beside {path}, so "
                "the settings its rewards were earned with are unknown"
            )
        changed = differences(earlier, config)
        if changed:
            text = "; ".join(
                f"{key} {there!r} there, {here!r} here"
                for key, (there, here) in sorted(changed.items())
            )
            raise WarmStartError(
                f"{where}: that search rated its children with other "
                f"settings ({text}); warm-start only from searches with the "
                "same proxy settings"
            )
        records, _ = history_lib.read_history(path)
        sources.append(Source(path, tuple(records)))
    return WarmStart(tuple(sources))


def settle(
    search_dir: search_dir_lib.SearchDir,
    warm: WarmStart | None,
    *,
    started: bool,
    samples_per_update: int,
    learns: bool,
) -> WarmStart | None:
    """Fixes the warm start in `warm_start.json`, or checks a rerun
    against it.

    Args:
        search_dir: this search's directory.
        warm: the sources the command names (None: no --warm_start).
        started: the search has recorded samples already.
        samples_per_update: this search's batch size.
        learns: the policy learns (replay updates it).

    Returns:
        The warm start to use (a rerun's: the records it started with), or
        None without one.

    Raises:
        WarmStartError: other sources than the search started with, a
            warm start given to a search that started without, or a source
            that changed.
    """
    path = os.path.join(search_dir.root, WARM_START_FILE)
    try:
        saved = files.read_json(path)
    except files.JsonFileError as error:
        raise WarmStartError(str(error)) from None
    given = [] if warm is None else warm.paths
    if saved is None:
        if warm is None:
            return None
        if started:
            raise WarmStartError(
                f"{search_dir.root} holds a search started without "
                f"{FLAG}; a warm start must come first: use a new model_dir"
            )
        replayed = warm.num_updates(samples_per_update) if learns else 0
        files.write_json_atomic(
            path, warm.summary(samples_per_update, replayed)
        )
        return warm
    try:
        recorded = [s["path"] for s in saved["sources"]]
        replayed = int(saved["replayed_updates"])
    except (KeyError, TypeError, ValueError):
        raise WarmStartError(
            f"{path}: expected sources and replayed_updates; got {saved!r}"
        ) from None
    if recorded != given:
        flags = " ".join(f"{FLAG}={p}" for p in recorded)
        raise WarmStartError(
            f"{path}: this search started from {recorded}, the command names "
            f"{given}; rerun it with {flags} or use a new model_dir"
        )
    if warm is None:
        return None
    warm = warm.pinned(saved, path)
    now = warm.num_updates(samples_per_update) if learns else 0
    if now != replayed:
        raise WarmStartError(
            f"{path}: the warm start replayed {replayed} updates, "
            f"search.samples_per_update={samples_per_update} gives {now}; "
            "the search was run with another batch size"
        )
    return warm


def replay(
    policy: controller_lib.Policy,
    warm: WarmStart,
    space: SearchSpace,
    samples_per_update: int,
) -> int:
    """Updates `policy` on the warm start's rated records, batch by batch.

    The samples are the records' action sequences (the controller scores
    them under its current weights); each must encode its recorded spec
    in `space`.

    Returns:
        The updates done.

    Raises:
        WarmStartError: a record's actions do not encode its spec here.
    """
    batches = warm.batches(samples_per_update)
    for batch in batches:
        for source, record in batch:
            try:
                key = space.to_spec(list(record.actions)).canonical_key()
            except (ValueError, IndexError) as error:
                key = f"none ({error})"
            if key != record.hash:
                raise WarmStartError(
                    f"{source.path}: sample {record.sample}'s actions encode "
                    f"spec {key} in this search space, not its {record.hash}"
                )
        actions = np.asarray([r.actions for _, r in batch], dtype=np.int32)
        rewards = np.asarray([r.reward for _, r in batch], dtype=np.float64)
        policy.update(actions, rewards)
    logging.info(
        "warm start: the controller learned from %d rated samples of %s in "
        "%d updates",
        sum(len(b) for b in batches),
        ", ".join(warm.paths),
        len(batches),
    )
    return len(batches)
