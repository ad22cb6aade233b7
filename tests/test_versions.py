"""Spec format versions: every pinned fixture loads, upgraders chain."""

import json
import pathlib
import re

import pytest

from nasfpn_tf.arch import known, versions
from nasfpn_tf.arch.spec import NeckSpec, SpecError

SPECS = pathlib.Path(__file__).parent / "data" / "specs"
# One fixture per released version, named v{N}_<what>.json: files written
# by that release that this one must still read.
FIXTURES = sorted(SPECS.glob("v*_*.json"))


def _version(path: pathlib.Path) -> int:
    return int(re.match(r"v(\d+)_", path.name).group(1))


def test_every_version_up_to_the_current_one_has_a_fixture():
    assert sorted({_version(p) for p in FIXTURES}) == list(
        range(1, versions.SPEC_VERSION + 1)
    )


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.name)
def test_pinned_fixture_loads_as_the_published_spec(path):
    assert NeckSpec.load(str(path)) == known.NASFPN_SPEC


def test_current_version_is_what_to_dict_writes():
    assert known.NASFPN_SPEC.to_dict()["version"] == versions.SPEC_VERSION


def test_readable_versions_without_upgraders_is_the_current_one():
    assert versions.readable_versions() == (versions.SPEC_VERSION,)


@pytest.fixture
def version_3(monkeypatch):
    """A pretend release at version 3: v1 named the op "attention" (as
    Model Garden does), v2 put the cells under "nodes"."""
    upgraders = {}
    monkeypatch.setattr(versions, "UPGRADERS", upgraders)
    monkeypatch.setattr(versions, "SPEC_VERSION", 3)

    @versions.register(1)
    def _v1_to_v2(data):
        cells = [
            {
                **c,
                "op": "attention" if c["op"] == "global_attention" else c["op"],
            }
            for c in data["cells"]
        ]
        return {**data, "version": 2, "nodes": cells, "cells": None}

    @versions.register(2)
    def _v2_to_v3(data):
        cells = [
            {
                **c,
                "op": "global_attention" if c["op"] == "attention" else c["op"],
            }
            for c in data.pop("nodes")
        ]
        return {**data, "version": 3, "cells": cells}

    return upgraders


def test_upgraders_apply_in_order(version_3):
    v1 = json.loads((SPECS / "v1_nasfpn.json").read_text())
    upgraded = versions.upgrade(v1)
    assert upgraded["version"] == 3
    assert "nodes" not in upgraded
    assert upgraded["cells"] == v1["cells"]
    assert v1["version"] == 1  # the input is not changed
    assert versions.readable_versions() == (1, 2, 3)


def test_from_dict_reads_an_older_version_through_the_upgraders(version_3):
    v1 = json.loads((SPECS / "v1_nasfpn.json").read_text())
    assert NeckSpec.from_dict(v1).cells == known.NASFPN_SPEC.cells


def test_a_gap_in_the_chain_names_the_missing_upgrader(version_3):
    del version_3[1]
    with pytest.raises(
        versions.VersionError, match="no upgrader from version 1"
    ):
        versions.upgrade({"version": 1, "cells": []})


def test_an_upgrader_must_return_the_next_version(version_3):
    version_3[2] = lambda data: {**data, "version": 7}
    with pytest.raises(versions.VersionError, match="returned version 7"):
        versions.upgrade({"version": 2, "cells": []})


def test_registering_a_version_twice_is_refused(version_3):
    with pytest.raises(ValueError, match="already registered"):
        versions.register(1)(lambda data: data)


@pytest.mark.parametrize(
    "version, message",
    [
        (99, "newer than this release reads"),
        (0, "expected an int version >= 1"),
        ("1", "expected an int version >= 1"),
        (True, "expected an int version >= 1"),
    ],
)
def test_unreadable_versions_are_spec_errors(version, message):
    data = {**known.NASFPN_SPEC.to_dict(), "version": version}
    with pytest.raises(SpecError, match=rf"spec\.version: .*{message}"):
        NeckSpec.from_dict(data)
