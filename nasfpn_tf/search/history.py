"""The search directory: sample history, reward cache, best specs, state.

An architecture search (NAS-FPN, Ghiasi et al., CVPR 2019,
arXiv:1904.07392, Sec. 3) keeps everything it decides in one directory,
local or `gs://`:

  config.yaml        the resolved config (written by `main`)
  history.jsonl      one `SampleRecord` per sample, in the order recorded
  controller/        the policy checkpoint of each of the last updates and
                     `latest.json`, naming the one to resume from
  trials/trial_N/    the work directory of child N and its `result.json`
  best_spec.json     the best spec so far (`--arch` reads it)
  top_specs.json     the best specs with their rewards
  search_progress.png, best_spec.png, summaries/   plots, drawing, scalars
  warm_start.json    what a warm start used (`warm_start.py`)

`history.jsonl` plus the controller checkpoint are the source of truth a
resumed search restarts from. Appends to a local history are flushed and
fsynced; object stores such as GCS cannot append, so there the whole file is
rewritten (atomically) at each append, a few MB at most for thousands of
samples. Every other file is written atomically: to a temporary name, then
renamed. A write cut short by a kill leaves at most a torn last line in the
history, which `read_history` reports and `History.open` drops.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import tensorflow as tf

from nasfpn_tf import files
from nasfpn_tf.arch.spec import NeckSpec, SpecError
from nasfpn_tf.checks import is_int, is_number
from nasfpn_tf.errors import UserError
from nasfpn_tf.files import write_atomic
from nasfpn_tf.run_files import (
    BEST_SPEC_FILE,
    CONTROLLER_DIR,
    DRAWING_FILE,
    HISTORY_FILE,
    LATEST_FILE,
    RESULT_FILE,
    SUMMARIES_DIR,
    TOP_SPECS_FILE,
    TRIALS_DIR,
)
from nasfpn_tf.run_files import SEARCH_PLOT_FILE as PLOT_FILE

# A record's status; the one place these are defined.
OK = "ok"
FAILED = "failed"
CACHED = "cached"
STATUSES = (OK, FAILED, CACHED)
# Statuses whose reward measures the architecture (a failure's is a penalty).
RATED_STATUSES = (OK, CACHED)

# Controller checkpoints kept: the last one, and the one before in case the
# last is unreadable.
KEEP_CHECKPOINTS = 2
DEFAULT_TOP_K = 10
# Zero-padded width of sample numbers in trial directory names.
SAMPLE_DIGITS = 6
_CHECKPOINT_PREFIX = "update-"


class HistoryError(UserError, ValueError):
    """A history file or search directory that cannot be read as written."""


# --------------------------------------------------------------------------
# Files.


def write_json_atomic(path: str, value: Any) -> None:
    """Writes `value` as indented JSON, atomically."""
    write_atomic(path, json.dumps(value, indent=2) + "\n")


def read_json(path: str) -> Any | None:
    """The JSON value in `path`, or None when the file does not exist.

    Raises:
        HistoryError: the file exists but is not JSON.
    """
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path, "r") as f:
        text = f.read()
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise HistoryError(f"{path}: not valid JSON ({error})") from None


# --------------------------------------------------------------------------
# Records.


@dataclasses.dataclass(frozen=True)
class SampleRecord:
    """One sampled architecture and what it earned.

    Attributes:
        step: the controller update this sample belongs to (its batch).
        sample: the sample's index over the whole search, from 0.
        actions: the controller's choice at every decision.
        spec: the spec's JSON object (`NeckSpec.to_dict`).
        hash: `NeckSpec.canonical_key()`, equal for specs that compute the
            same function.
        reward: held-out AP of the child, or the penalty if it failed.
        status: "ok" (trained), "failed" (penalty), "cached" (the reward of
            an earlier sample with the same hash, not trained again).
        error: what went wrong, for failed samples.
        seconds: time the child took (0 when cached).
        tuner: the KerasTuner tuner id that trained it ("" when cached).
        time: UNIX time the record was written.
        metrics: the child's other final metrics (AP50, steps, ...).
        cached_from: for cached samples, the sample whose reward is reused.
        cached_source: for a sample cached from an earlier search's
            history (a warm start, `warm_start.py`): that history's path,
            in which `cached_from` counts; None (and absent from the JSON
            line, so older readers and histories agree) when `cached_from`
            is a sample of this search.
        rungs: with successive halving, the child's rating at every rung
            it reached (`rungs.RungEntry.to_dict()`: rung, steps, reward,
            seconds, promoted, metrics), first rung first; a cached
            sample has its source's (when the source is of this search).
    """

    step: int
    sample: int
    actions: tuple[int, ...]
    spec: Mapping[str, Any]
    hash: str
    reward: float
    status: str
    error: str | None = None
    seconds: float = 0.0
    tuner: str = ""
    time: float = 0.0
    metrics: Mapping[str, float] = dataclasses.field(default_factory=dict)
    cached_from: int | None = None
    cached_source: str | None = None
    rungs: tuple[Mapping[str, Any], ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "actions", tuple(self.actions))
        if not isinstance(self.rungs, (list, tuple)) or not all(
            isinstance(r, Mapping) for r in self.rungs
        ):
            raise HistoryError(
                f"rungs: expected a list of objects, got {self.rungs!r}"
            )
        object.__setattr__(self, "rungs", tuple(self.rungs))
        for name in ("step", "sample"):
            value = getattr(self, name)
            if not is_int(value) or value < 0:
                raise HistoryError(
                    f"{name}: expected an int >= 0, got {value!r}"
                )
        if not all(is_int(a) and a >= 0 for a in self.actions):
            raise HistoryError(
                f"actions: expected ints >= 0, got {list(self.actions)!r}"
            )
        if self.status not in STATUSES:
            raise HistoryError(
                f"status: expected one of {STATUSES}, got {self.status!r}"
            )
        if not is_number(self.reward) or not math.isfinite(self.reward):
            raise HistoryError(
                f"reward: expected a finite number, got {self.reward!r}"
            )
        if not isinstance(self.hash, str) or not self.hash:
            raise HistoryError(f"hash: expected a string, got {self.hash!r}")
        if (self.status == CACHED) != (self.cached_from is not None):
            raise HistoryError(
                "cached_from: set for cached samples and only for them; got "
                f"status {self.status!r} with cached_from {self.cached_from!r}"
            )
        if self.cached_source is not None and (
            self.cached_from is None
            or not isinstance(self.cached_source, str)
            or not self.cached_source
        ):
            raise HistoryError(
                "cached_source: a non-empty path, set only with cached_from; "
                f"got {self.cached_source!r} with cached_from "
                f"{self.cached_from!r}"
            )

    def neck_spec(self) -> NeckSpec:
        """The sampled spec."""
        return NeckSpec.from_dict(self.spec)

    @property
    def rated(self) -> bool:
        """Whether the reward measures the architecture (not a penalty)."""
        return self.status in RATED_STATUSES

    def outcome(self) -> tuple:
        """What the search decided, without timing: equal for two runs that
        sampled and rewarded the same way."""
        return (
            self.step,
            self.sample,
            self.actions,
            self.hash,
            self.reward,
            self.status,
            self.cached_from,
            self.cached_source,
        )

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["actions"] = list(self.actions)
        data["spec"] = dict(self.spec)
        data["metrics"] = dict(self.metrics)
        if self.cached_source is None:
            del data["cached_source"]
        if self.rungs:
            data["rungs"] = [dict(r) for r in self.rungs]
        else:
            del data["rungs"]  # histories without halving read as before
        return data

    def to_json(self) -> str:
        """One line of JSON (no newline)."""
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SampleRecord:
        if not isinstance(data, Mapping):
            raise HistoryError(
                f"expected a JSON object, got {type(data).__name__}"
            )
        names = {f.name for f in dataclasses.fields(cls)}
        required = {
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        }
        missing = sorted(required - set(data))
        if missing:
            raise HistoryError(f"missing field(s): {', '.join(missing)}")
        unknown = sorted(set(data) - names)
        if unknown:
            raise HistoryError(f"unknown field(s): {', '.join(unknown)}")
        return cls(**data)


def read_history(path: str) -> tuple[list[SampleRecord], str | None]:
    """Reads a history file, tolerating a torn last line.

    Each record is written as one line ending in a newline. A kill during an
    append can leave the last line incomplete: it is returned separately and
    not as a record. A last line that is complete JSON but lacks only its
    newline is kept.

    Args:
        path: the history file; a missing file is an empty history.

    Returns:
        (records in file order, the torn last line's text or None).

    Raises:
        HistoryError: a line other than the last is not a valid record,
            naming the file and line number.
    """
    records, torn, _ = _read_history(path)
    return records, torn


def _read_history(path: str) -> tuple[list[SampleRecord], str | None, bool]:
    """As `read_history`, plus whether the file ends cleanly."""
    try:
        return files.read_jsonl(path, _parse_record, RECORD)
    except files.JsonlError as error:
        raise HistoryError(str(error)) from None


# What a history line is, in error messages.
RECORD = "a valid sample record"


def _parse_record(data: Any) -> SampleRecord:
    try:
        return SampleRecord.from_dict(data)
    except HistoryError as error:
        raise ValueError(str(error)) from None


def _encode(record: SampleRecord) -> str:
    return record.to_json() + "\n"


class History:
    """The append-only sample history of a search.

    Use `History.open(path)`: it reads what is there and drops a torn last
    line. `records` holds every record in file order.
    """

    def __init__(self, path: str, records: Sequence[SampleRecord] = ()):
        self.path = path
        self._log = files.JsonlLog(path, list(records), _encode)
        # The log's rows: `append` adds to both.
        self.records: list[SampleRecord] = self._log.rows
        self._samples = {r.sample for r in self.records}
        if len(self._samples) != len(self.records):
            raise HistoryError(f"{path}: a sample is recorded twice")

    @classmethod
    def open(cls, path: str) -> History:
        """Reads `path` and repairs a torn last line.

        Raises:
            HistoryError: see `read_history`, or a sample recorded twice.
        """
        try:
            log = files.JsonlLog.open(path, _parse_record, _encode, RECORD)
        except files.JsonlError as error:
            raise HistoryError(str(error)) from None
        return cls(path, log.rows)

    def __len__(self) -> int:
        return len(self.records)

    def __contains__(self, sample: int) -> bool:
        return sample in self._samples

    def append(self, record: SampleRecord) -> None:
        """Adds `record` durably before returning.

        Raises:
            HistoryError: the sample is already recorded.
        """
        if record.sample in self._samples:
            raise HistoryError(
                f"{self.path}: sample {record.sample} is already recorded"
            )
        self._log.append(record)
        self._samples.add(record.sample)


class RewardCache:
    """Rewards of trained architectures, keyed by canonical hash.

    Only successful children are cached: a failure may come from the
    machine (a lost host, a full disk) rather than the architecture, so a
    repeat of a failed spec is trained again. The first reward of a hash is
    kept; later samples of it are marked cached, so they agree. Rewards of
    earlier searches (`add_from`, a warm start) name the history they come
    from (`source`).
    """

    def __init__(self, records: Iterable[SampleRecord] = ()):
        # hash -> (reward, sample that earned it, its history or None).
        self._entries: dict[str, tuple[float, int, str | None]] = {}
        for record in records:
            self.add(record)

    def add(self, record: SampleRecord) -> None:
        if record.status == OK and record.hash not in self._entries:
            self._entries[record.hash] = (record.reward, record.sample, None)

    def add_from(self, record: SampleRecord, history_path: str) -> None:
        """Adds a rated record of another search's history; a record cached
        there points at the sample that earned the reward."""
        if not record.rated or record.hash in self._entries:
            return
        if record.status == CACHED:
            origin = (record.cached_from, record.cached_source or history_path)
        else:
            origin = (record.sample, history_path)
        self._entries[record.hash] = (record.reward, *origin)

    def get(self, key: str) -> tuple[float, int] | None:
        """(reward, sample that earned it) for hash `key`, or None."""
        entry = self._entries.get(key)
        return None if entry is None else entry[:2]

    def source(self, key: str) -> str | None:
        """The history of the sample that earned `key`'s reward; None for
        this search's (or an unknown key)."""
        entry = self._entries.get(key)
        return None if entry is None else entry[2]

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)


# --------------------------------------------------------------------------
# Results.


def ranked(records: Iterable[SampleRecord]) -> list[SampleRecord]:
    """Rated records best first, one per hash (its first sample).

    Ties are broken by the earlier sample.
    """
    first: dict[str, SampleRecord] = {}
    for record in sorted(records, key=lambda r: r.sample):
        if record.rated and record.hash not in first:
            first[record.hash] = record
    return sorted(first.values(), key=lambda r: (-r.reward, r.sample))


def _top_entry(rank: int, record: SampleRecord) -> dict[str, Any]:
    spec = record.neck_spec()
    try:
        block_specs = [list(b) for b in spec.to_block_specs()]
    except SpecError:
        block_specs = None
    return {
        "rank": rank,
        "reward": record.reward,
        "sample": record.sample,
        "step": record.step,
        "hash": record.hash,
        "metrics": dict(record.metrics),
        "spec": dict(record.spec),
        "block_specs": block_specs,
    }


# --------------------------------------------------------------------------
# The directory.


class SearchDir:
    """Paths and state files of one search directory.

    Args:
        root: the search's model_dir (local or gs://).
    """

    def __init__(self, root: str):
        if not root:
            raise HistoryError("the search directory must not be empty")
        self.root = root

    def _path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    @property
    def history_path(self) -> str:
        return self._path(HISTORY_FILE)

    @property
    def best_spec_path(self) -> str:
        return self._path(BEST_SPEC_FILE)

    @property
    def top_specs_path(self) -> str:
        return self._path(TOP_SPECS_FILE)

    @property
    def controller_dir(self) -> str:
        return self._path(CONTROLLER_DIR)

    @property
    def trials_dir(self) -> str:
        return self._path(TRIALS_DIR)

    @property
    def plot_path(self) -> str:
        return self._path(PLOT_FILE)

    @property
    def drawing_path(self) -> str:
        return self._path(DRAWING_FILE)

    @property
    def summaries_dir(self) -> str:
        return self._path(SUMMARIES_DIR)

    def trial_dir(self, sample: int) -> str:
        """Work directory of child `sample` (KerasTuner's trial_<id>)."""
        return self._path(TRIALS_DIR, f"trial_{trial_id(sample)}")

    def result_path(self, sample: int) -> str:
        return os.path.join(self.trial_dir(sample), RESULT_FILE)

    # -- controller state ---------------------------------------------------

    def save_policy(self, policy: Any, updates: int, algorithm: str) -> str:
        """Checkpoints `policy` after `updates` updates; returns the prefix.

        The checkpoint is written under a fresh name first and
        `controller/latest.json` is pointed at it afterwards, so a kill at
        any moment leaves `latest.json` naming a complete checkpoint.
        Checkpoints beyond the last `KEEP_CHECKPOINTS` are deleted.
        """
        name = f"{_CHECKPOINT_PREFIX}{updates:06d}"
        prefix = os.path.join(self.controller_dir, name)
        tf.io.gfile.makedirs(self.controller_dir)
        policy.save(prefix)
        write_json_atomic(
            os.path.join(self.controller_dir, LATEST_FILE),
            {"updates": updates, "checkpoint": name, "algorithm": algorithm},
        )
        self._prune_checkpoints(updates)
        return prefix

    def _prune_checkpoints(self, updates: int) -> None:
        pattern = os.path.join(self.controller_dir, f"{_CHECKPOINT_PREFIX}*")
        kept = {
            f"{_CHECKPOINT_PREFIX}{u:06d}"
            for u in range(updates - KEEP_CHECKPOINTS + 1, updates + 1)
        }
        for path in tf.io.gfile.glob(pattern):
            name = os.path.basename(path).split(".", 1)[0]
            if name not in kept:
                tf.io.gfile.remove(path)

    def latest_policy(self, algorithm: str) -> tuple[int, str] | None:
        """(updates, checkpoint prefix) to resume from, or None if none.

        Raises:
            HistoryError: the pointer names another algorithm or a
                checkpoint that is not there.
        """
        pointer = os.path.join(self.controller_dir, LATEST_FILE)
        data = read_json(pointer)
        if data is None:
            return None
        try:
            updates = int(data["updates"])
            name = str(data["checkpoint"])
            saved_algorithm = str(data["algorithm"])
        except (KeyError, TypeError, ValueError):
            raise HistoryError(
                f"{pointer}: expected updates, checkpoint and algorithm; "
                f"got {data!r}"
            ) from None
        if saved_algorithm != algorithm:
            raise HistoryError(
                f"{pointer}: this search ran with algorithm "
                f"{saved_algorithm!r}, the config asks for {algorithm!r}; use "
                "a new model_dir"
            )
        prefix = os.path.join(self.controller_dir, name)
        if not tf.io.gfile.exists(f"{prefix}.index"):
            raise HistoryError(
                f"{pointer}: names checkpoint {prefix}, which is missing"
            )
        return updates, prefix

    # -- results ------------------------------------------------------------

    def write_results(
        self, records: Iterable[SampleRecord], top_k: int = DEFAULT_TOP_K
    ) -> SampleRecord | None:
        """Writes best_spec.json and top_specs.json; returns the best record.

        Nothing is written while no sample has a rated reward.
        """
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        best = ranked(records)
        if not best:
            return None
        write_atomic(self.best_spec_path, best[0].neck_spec().to_json() + "\n")
        write_json_atomic(
            self.top_specs_path,
            [_top_entry(i + 1, r) for i, r in enumerate(best[:top_k])],
        )
        return best[0]


def trial_id(sample: int) -> str:
    """KerasTuner trial id of a sample: its index, zero-padded."""
    return f"{sample:0{SAMPLE_DIGITS}d}"
