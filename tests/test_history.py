"""Tests of the sample history: records, the history file, reward cache."""

import json
import pathlib
import re

import pytest
import tensorflow as tf
from search_helpers import sample_record as _record

from nasfpn_tf import files, versioning
from nasfpn_tf.arch import known
from nasfpn_tf.search import history as history_lib


def test_record_round_trips_through_json():
    record = _record(4, reward=0.25, seconds=1.5, tuner="tuner1")
    line = record.to_json()
    assert "\n" not in line
    again = history_lib.SampleRecord.from_dict(json.loads(line))
    assert again == record
    assert again.neck_spec() == record.neck_spec()
    assert again.outcome() == record.outcome()


@pytest.mark.parametrize(
    "change, message",
    [
        ({"status": "done"}, "status"),
        ({"reward": float("nan")}, "reward"),
        ({"sample": -1}, "sample"),
        ({"actions": (0, "a")}, "actions"),
        ({"status": "cached"}, "cached_from"),
        ({"cached_source": "runs/a/history.jsonl"}, "cached_source"),
    ],
)
def test_bad_record_fields_are_named(change, message):
    fields = _record(0).to_dict()
    fields.update(change)
    with pytest.raises(history_lib.HistoryError, match=message):
        history_lib.SampleRecord.from_dict(fields)


def test_unknown_and_missing_fields_are_named():
    fields = _record(0).to_dict()
    with pytest.raises(history_lib.HistoryError, match="unknown.*colour"):
        history_lib.SampleRecord.from_dict({**fields, "colour": 1})
    del fields["hash"]
    with pytest.raises(history_lib.HistoryError, match="missing.*hash"):
        history_lib.SampleRecord.from_dict(fields)


def test_append_then_read(tmp_path):
    path = str(tmp_path / "history.jsonl")
    history = history_lib.History.open(path)
    assert len(history) == 0
    records = [_record(i, reward=i / 10) for i in range(4)]
    for record in records:
        history.append(record)
    assert 2 in history
    again, torn = history_lib.read_history(path)
    assert torn is None
    assert again == records
    text = (tmp_path / "history.jsonl").read_text()
    assert text.endswith("\n") and text.count("\n") == 4


def test_a_sample_is_recorded_once(tmp_path):
    history = history_lib.History.open(str(tmp_path / "h.jsonl"))
    history.append(_record(0))
    with pytest.raises(history_lib.HistoryError, match="already recorded"):
        history.append(_record(0, reward=0.9))


def test_torn_last_line_is_reported_and_dropped(tmp_path):
    path = tmp_path / "history.jsonl"
    good = [_record(0), _record(1)]
    torn_text = _record(2).to_json()[:37]
    path.write_text("".join(r.to_json() + "\n" for r in good) + torn_text)
    records, torn = history_lib.read_history(str(path))
    assert records == good
    assert torn == torn_text
    history = history_lib.History.open(str(path))
    assert history.records == good
    # Repaired on open, so the next append starts on a line of its own.
    assert path.read_text() == "".join(r.to_json() + "\n" for r in good)
    history.append(_record(2))
    assert history_lib.read_history(str(path)) == (good + [_record(2)], None)


def test_complete_last_line_without_newline_is_kept(tmp_path):
    path = tmp_path / "history.jsonl"
    records = [_record(0), _record(1)]
    path.write_text(records[0].to_json() + "\n" + records[1].to_json())
    assert history_lib.read_history(str(path)) == (records, None)
    history = history_lib.History.open(str(path))
    history.append(_record(2))
    assert len(history_lib.read_history(str(path))[0]) == 3


def test_corrupt_middle_line_names_the_line(tmp_path):
    path = tmp_path / "history.jsonl"
    path.write_text(
        _record(0).to_json() + "\n{not json\n" + _record(1).to_json() + "\n"
    )
    with pytest.raises(history_lib.HistoryError, match=r"history.jsonl:2"):
        history_lib.read_history(str(path))


def test_history_on_a_store_without_append():
    # ram:// stands in for GCS: not local, so each append rewrites the file.
    path = "ram://search_history_test/history.jsonl"
    assert not files.is_local(path)
    history = history_lib.History.open(path)
    for i in range(3):
        history.append(_record(i))
    assert history_lib.read_history(path) == (history.records, None)
    assert not tf.io.gfile.glob(path + ".tmp-*")


def test_reward_cache_keeps_first_successful_reward():
    spec = known.NASFPN_SPEC
    cache = history_lib.RewardCache(
        [
            _record(0, reward=0.0, status="failed", spec=spec),
            _record(1, reward=0.3, spec=spec),
            _record(2, reward=0.9, spec=spec),
        ]
    )
    assert cache.get(spec.canonical_key()) == (0.3, 1)
    assert len(cache) == 1
    failed_only = history_lib.RewardCache([_record(5, status="failed")])
    assert len(failed_only) == 0


def test_a_record_cached_from_another_history_names_it():
    source = "runs/first/history.jsonl"
    record = _record(4, status="cached", cached_from=2, cached_source=source)
    again = history_lib.SampleRecord.from_dict(json.loads(record.to_json()))
    assert again == record and again.cached_source == source
    # Records of this search keep the old line format.
    assert "cached_source" not in _record(5, status="cached").to_dict()


def test_reward_cache_takes_other_histories_rewards_with_their_source():
    spec = known.NASFPN_SPEC
    first, third = "runs/a/history.jsonl", "runs/c/history.jsonl"
    cache = history_lib.RewardCache()
    cache.add_from(_record(0, status="failed", spec=spec), first)
    assert spec.canonical_key() not in cache
    cached_there = _record(
        3, 0.4, status="cached", spec=spec, cached_from=1, cached_source=third
    )
    cache.add_from(cached_there, first)
    cache.add(_record(5, reward=0.9, spec=spec))
    assert cache.get(spec.canonical_key()) == (0.4, 1)
    assert cache.source(spec.canonical_key()) == third
    cache.add_from(_record(7, reward=0.2), first)
    assert cache.source(_record(7).hash) == first
    assert cache.source("unknown") is None


def test_ranked_is_best_first_one_per_hash():
    spec = known.NASFPN_SPEC
    records = [
        _record(0, reward=0.2),
        _record(1, reward=0.7, spec=spec),
        _record(2, reward=0.7, status="cached", spec=spec, cached_from=1),
        _record(3, reward=0.9, status="failed"),
        _record(4, reward=0.4),
    ]
    best = history_lib.ranked(records)
    assert [r.sample for r in best] == [1, 4, 0]


# One pinned history per record version, v{N}_history.jsonl: files written
# by the releases of that version that this one must still read. Each holds
# the same records (ok, failed, cached, with rungs, from another history).
HISTORIES = pathlib.Path(__file__).parent / "data" / "history"
PINNED = sorted(HISTORIES.glob("v*_history.jsonl"))


def test_every_record_version_has_a_pinned_history():
    versions = [int(re.match(r"v(\d+)_", p.name).group(1)) for p in PINNED]
    assert versions == list(range(1, history_lib.RECORD_VERSION + 1))


@pytest.mark.parametrize("path", PINNED, ids=lambda p: p.name)
def test_pinned_history_loads_as_the_current_one(path):
    records, torn = history_lib.read_history(str(path))
    current, _ = history_lib.read_history(str(PINNED[-1]))
    assert torn is None and len(records) == 5
    assert records == current
    assert {r.status for r in records} == set(history_lib.STATUSES)


def test_records_lead_with_their_version():
    line = _record(0).to_json()
    assert line.startswith(f'{{"version":{history_lib.RECORD_VERSION},')


def test_a_record_without_version_is_upgraded():
    # Written before records named their version: read as version 1.
    record = _record(3, metrics={"AP": 0.5})
    fields = record.to_dict()
    del fields["version"]
    upgraded = history_lib.upgrade_record(fields)
    assert upgraded["version"] == history_lib.RECORD_VERSION
    assert "version" not in fields  # the input is not changed
    assert history_lib.SampleRecord.from_dict(fields) == record


def test_record_upgraders_apply_in_order(monkeypatch):
    # A pretend release at version 3 that renamed "tuner" to "worker".
    upgraders = dict(history_lib.RECORD_UPGRADERS)
    monkeypatch.setattr(history_lib, "RECORD_UPGRADERS", upgraders)
    monkeypatch.setattr(history_lib, "RECORD_VERSION", 3)

    @versioning.register(upgraders, 2, "record")
    def _v2_to_v3(data):
        worker = data.pop("tuner")
        return {**data, "version": 3, "worker": worker}

    fields = _record(0, tuner="tuner7").to_dict()
    del fields["version"]
    upgraded = history_lib.upgrade_record(fields)
    assert upgraded["version"] == 3
    assert upgraded["worker"] == "tuner7" and "tuner" not in upgraded
    with pytest.raises(ValueError, match="record version 2 is already"):
        versioning.register(upgraders, 2, "record")(_v2_to_v3)


@pytest.mark.parametrize(
    "version, message",
    [
        (99, "version 99 is newer than this release reads"),
        (0, "expected an int version >= 1"),
        ("2", "expected an int version >= 1"),
        (None, "expected an int version >= 1"),
    ],
)
def test_unreadable_record_versions_are_named(version, message):
    fields = {**_record(0).to_dict(), "version": version}
    with pytest.raises(history_lib.HistoryError, match=f"version: {message}"):
        history_lib.SampleRecord.from_dict(fields)


@pytest.mark.parametrize("newline", ["\n", ""], ids=["ended", "last"])
def test_a_newer_record_names_file_line_and_version(tmp_path, newline):
    # Even as the last line without its newline, a newer release's
    # record is complete JSON, not a torn write: it is named, not dropped.
    path = tmp_path / "history.jsonl"
    newer = json.dumps({**_record(2).to_dict(), "version": 99})
    text = _record(0).to_json() + "\n" + _record(1).to_json() + "\n" + newer
    path.write_text(text + newline)
    pattern = r"history\.jsonl:3: .*version 99 is newer than this release"
    with pytest.raises(history_lib.HistoryError, match=pattern):
        history_lib.History.open(str(path))
    assert path.read_text() == text + newline  # not rewritten
