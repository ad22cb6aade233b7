"""Versions of the spec JSON format and the upgraders between them.

Every spec a run writes (``best_spec.json``, the specs inside
``history.jsonl``, ``fidelity_specs.json``) carries ``"version"``. When the
format changes, ``SPEC_VERSION`` goes up by one and an upgrader from the
previous version is registered here, so files written by every earlier
release still load::

    @register(1)
    def _v1_to_v2(data):  # returns a version-2 dict
        ...

`upgrade` applies the upgraders in order; `NeckSpec.from_dict` calls it
before reading any other key. Each version has a pinned JSON fixture in
``tests/data/specs/`` that must keep loading.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from nasfpn_tf.checks import is_int

# The version `NeckSpec.to_dict` writes.
SPEC_VERSION = 1

Upgrader = Callable[[dict[str, Any]], dict[str, Any]]

# from_version -> function taking a from_version dict to from_version + 1.
UPGRADERS: dict[int, Upgrader] = {}


class VersionError(ValueError):
    """A spec's version is not one this release can read."""


def register(from_version: int) -> Callable[[Upgrader], Upgrader]:
    """Decorator: registers the upgrader from ``from_version`` to the next."""

    def decorate(function: Upgrader) -> Upgrader:
        if from_version in UPGRADERS:
            raise ValueError(
                f"an upgrader from spec version {from_version} is already "
                f"registered ({UPGRADERS[from_version].__name__})"
            )
        UPGRADERS[from_version] = function
        return function

    return decorate


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
    version = data.get("version")
    if not is_int(version) or version < 1:
        raise VersionError(f"expected an int version >= 1, got {version!r}")
    if version > target:
        raise VersionError(
            f"version {version} is newer than this release reads "
            f"(up to {target}); upgrade nasfpn_tf to read it"
        )
    data = dict(data)
    while version < target:
        upgrader = UPGRADERS.get(version)
        if upgrader is None:
            raise VersionError(
                f"no upgrader from version {version} (this release reads "
                f"versions {_readable(target)})"
            )
        data = dict(upgrader(data))
        if data.get("version") != version + 1:
            raise VersionError(
                f"the upgrader from version {version} "
                f"({upgrader.__name__}) returned version "
                f"{data.get('version')!r}, expected {version + 1}"
            )
        version += 1
    return data


def readable_versions(target: int | None = None) -> tuple[int, ...]:
    """The versions `upgrade` takes to ``target``: ``target`` and the
    unbroken chain of registered upgraders below it."""
    target = SPEC_VERSION if target is None else target
    versions = [target]
    while versions[-1] - 1 in UPGRADERS:
        versions.append(versions[-1] - 1)
    return tuple(sorted(versions))


def _readable(target: int) -> str:
    versions = readable_versions(target)
    if len(versions) == 1:
        return str(versions[0])
    return f"{versions[0]}..{versions[-1]}"

