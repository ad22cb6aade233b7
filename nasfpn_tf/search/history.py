"""The sample history of a search: records, the log, the reward cache.

An architecture search (NAS-FPN, Ghiasi et al., CVPR 2019,
arXiv:1904.07392, Sec. 3) rates one sampled spec after another; each
sample becomes a `SampleRecord` (step, spec, reward, status, seconds),
appended as one JSON line to `history.jsonl` in the search directory
(`search_dir.py` lists the directory). The history plus the controller
checkpoint are the source of truth a resumed search restarts from; the
`RewardCache` built from it lets a repeat of a rated spec reuse its reward.

Appends to a local history are flushed and fsynced; object stores such as
GCS cannot append, so there the whole file is rewritten (atomically) at
each append, a few MB at most for thousands of samples. A write cut short
by a kill leaves at most a torn last line, which `read_history` reports
and `History.open` drops.

Each line leads with the record's format version (`RECORD_VERSION`), as a
spec does (`arch/versions.py`): when the record changes, the version goes
up and an upgrader from the previous one is registered here, so the
histories of earlier releases still load (`tests/data/history/` pins one
per version); a line of a newer version is refused, naming it.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from nasfpn_tf import files, versioning
from nasfpn_tf.arch.spec import NeckSpec
from nasfpn_tf.checks import is_int, is_number
from nasfpn_tf.errors import UserError

# A record's status; the one place these are defined.
OK = "ok"
FAILED = "failed"
CACHED = "cached"
STATUSES = (OK, FAILED, CACHED)
# Statuses whose reward measures the architecture (a failure's is a penalty).
RATED_STATUSES = (OK, CACHED)


class HistoryError(UserError, ValueError):
    """A history file or search directory that cannot be read as written."""


# The version `SampleRecord.to_dict` writes. Version 1 is the record of the
# releases before records named their version: the same fields and no
# "version" key, which reads as version 1.
RECORD_VERSION = 2
UNVERSIONED = 1
# from_version -> function taking a from_version dict to from_version + 1.
RECORD_UPGRADERS: dict[int, versioning.Upgrader] = {}


def upgrade_record(data: Mapping[str, Any]) -> dict[str, Any]:
    """A record's JSON object of any readable version as one of
    `RECORD_VERSION`; a copy, `data` is not changed.

    Raises:
        HistoryError: the version is not an int >= 1, or is newer than
            this release reads.
    """
    data = {"version": UNVERSIONED, **data}
    try:
        return versioning.upgrade(data, RECORD_VERSION, RECORD_UPGRADERS)
    except versioning.VersionError as error:
        raise HistoryError(f"version: {error}") from None


@versioning.register(RECORD_UPGRADERS, 1, "record")
def _v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    # Version 2 only names its version.
    return {**data, "version": 2}


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
        """The record's JSON object, led by its format version."""
        data = {"version": RECORD_VERSION, **dataclasses.asdict(self)}
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
        """Reads a record's JSON object of any readable version.

        Raises:
            HistoryError: a field is missing, unknown or invalid, or the
                version is not one this release reads (a newer one).
        """
        if not isinstance(data, Mapping):
            raise HistoryError(
                f"expected a JSON object, got {type(data).__name__}"
            )
        data = upgrade_record(data)
        del data["version"]
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
    try:
        records, torn, _ = files.read_jsonl(path, _parse_record, RECORD)
    except files.JsonlError as error:
        raise HistoryError(str(error)) from None
    return records, torn


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


def ranked(records: Iterable[SampleRecord]) -> list[SampleRecord]:
    """Rated records best first, one per hash (its first sample).

    Ties are broken by the earlier sample.
    """
    first: dict[str, SampleRecord] = {}
    for record in sorted(records, key=lambda r: r.sample):
        if record.rated and record.hash not in first:
            first[record.hash] = record
    return sorted(first.values(), key=lambda r: (-r.reward, r.sample))
