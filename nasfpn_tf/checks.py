"""Type checks shared by the validators of specs, spaces, configs and
histories. JSON and YAML give ``true`` as a bool, which Python counts as
an int; none of our numbers may be a bool."""

from __future__ import annotations

from typing import Any


def is_int(value: Any) -> bool:
    """An int, not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """An int or a float, not a bool."""
    return isinstance(value, int | float) and not isinstance(value, bool)
