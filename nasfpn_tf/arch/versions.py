"""Versions of the spec JSON format and the upgraders between them.

Every spec a run writes (``best_spec.json``, the specs inside
``history.jsonl``, ``fidelity_specs.json``) carries ``"version"``. When the
format changes, ``SPEC_VERSION`` goes up by one and an upgrader from the
previous version is registered here, so files written by every earlier
release still load::

    @register(1)
    def _v1_to_v2(data):  # returns a version-2 dict
        ...

`upgrade` applies the upgraders in order (`nasfpn_tf.versioning`, which
history records use too); `NeckSpec.from_dict` calls it before reading any
other key. Each version has a pinned JSON fixture in ``tests/data/specs/``
that must keep loading.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from nasfpn_tf import versioning
from nasfpn_tf.versioning import Upgrader, VersionError

__all__ = [
    "SPEC_VERSION",
    "UPGRADERS",
    "Upgrader",
    "VersionError",
    "readable_versions",
    "register",
    "upgrade",
]

# The version `NeckSpec.to_dict` writes.
SPEC_VERSION = 1

# from_version -> function taking a from_version dict to from_version + 1.
UPGRADERS: dict[int, Upgrader] = {}


def register(from_version: int) -> Callable[[Upgrader], Upgrader]:
    """Decorator: registers the upgrader from ``from_version`` to the next."""
    return versioning.register(UPGRADERS, from_version, "spec")


def upgrade(
    data: Mapping[str, Any], target: int | None = None
) -> dict[str, Any]:
    """``data`` (a spec dict of any readable version) as a dict of version
    ``target`` (default `SPEC_VERSION`); a copy, ``data`` is not changed.

    Raises:
      VersionError: the version is not an int, is newer than this release
        writes, or has no chain of upgraders to ``target``.
    """
    target = SPEC_VERSION if target is None else target
    return versioning.upgrade(data, target, UPGRADERS)


def readable_versions(target: int | None = None) -> tuple[int, ...]:
    """The versions `upgrade` takes to ``target``: ``target`` and the
    unbroken chain of registered upgraders below it."""
    target = SPEC_VERSION if target is None else target
    return versioning.readable_versions(target, UPGRADERS)
