"""Versioned JSON formats: upgraders from every earlier version.

A format that a run writes and a later release must read (a spec,
`arch/versions.py`; a history record, `search/history.py`) carries a
``"version"``. When the format changes, its current version goes up by one
and an upgrader from the previous version is registered, so files written
by every earlier release still load. Each format keeps its own table of
upgraders (from_version -> a function taking a dict of that version to one
of the next) and passes it here with its current version.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from nasfpn_tf.checks import is_int

Upgrader = Callable[[dict[str, Any]], dict[str, Any]]


class VersionError(ValueError):
    """A version that this release cannot read."""


def register(
    upgraders: dict[int, Upgrader], from_version: int, what: str
) -> Callable[[Upgrader], Upgrader]:
    """Decorator: registers in `upgraders` the upgrader of format `what`
    from ``from_version`` to the next."""

    def decorate(function: Upgrader) -> Upgrader:
        if from_version in upgraders:
            raise ValueError(
                f"an upgrader from {what} version {from_version} is already "
                f"registered ({upgraders[from_version].__name__})"
            )
        upgraders[from_version] = function
        return function

    return decorate


def upgrade(
    data: Mapping[str, Any], target: int, upgraders: Mapping[int, Upgrader]
) -> dict[str, Any]:
    """``data`` (a dict of any readable version) as a dict of version
    ``target``, through `upgraders`; a copy, ``data`` is not changed.

    Raises:
      VersionError: the version is not an int, is newer than ``target``,
        or has no chain of upgraders to ``target``.
    """
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
        upgrader = upgraders.get(version)
        if upgrader is None:
            raise VersionError(
                f"no upgrader from version {version} (this release reads "
                f"versions {_readable(target, upgraders)})"
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


def readable_versions(
    target: int, upgraders: Mapping[int, Upgrader]
) -> tuple[int, ...]:
    """The versions `upgrade` takes to ``target``: ``target`` and the
    unbroken chain of `upgraders` below it."""
    versions = [target]
    while versions[-1] - 1 in upgraders:
        versions.append(versions[-1] - 1)
    return tuple(sorted(versions))


def _readable(target: int, upgraders: Mapping[int, Upgrader]) -> str:
    versions = readable_versions(target, upgraders)
    if len(versions) == 1:
        return str(versions[0])
    return f"{versions[0]}..{versions[-1]}"
