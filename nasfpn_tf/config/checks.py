"""Value checks shared by the config sections, and the error they raise.

Each section's `__post_init__` calls these with the dotted key it checks,
so a message names the key as a user writes it (`model.neck.filters`).
The helpers keep their leading underscore: they serve the sections of
this package, not its callers.
"""

from __future__ import annotations

from collections.abc import Sequence

from nasfpn_tf.errors import UserError

# Every feature level must survive the backbone's stride-8 stem and first
# stage, so an input side must be a multiple of 2**3. Deeper levels are
# resampled by the neck, which copes with odd sizes (the Lite model at 320).
IMAGE_SIZE_MULTIPLE = 8


class ConfigError(UserError, ValueError):
    """A config file, override or value is invalid."""


def _choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ConfigError(
            f"{name} must be one of {', '.join(map(repr, choices))}; "
            f"got {value!r}."
        )


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{name} must be positive; got {value!r}.")


def _non_negative(name: str, value: float) -> None:
    if not value >= 0:
        raise ConfigError(f"{name} must be >= 0; got {value!r}.")


def _fraction(name: str, value: float, *, low_open: bool = False) -> None:
    """Checks `value` in [0, 1], or (0, 1] with `low_open`."""
    low_ok = value > 0 if low_open else value >= 0
    if not (low_ok and value <= 1):
        bounds = "(0, 1]" if low_open else "[0, 1]"
        raise ConfigError(f"{name} must be in {bounds}; got {value!r}.")


def _image_size(name: str, value: int) -> None:
    _positive(name, value)
    if value % IMAGE_SIZE_MULTIPLE:
        raise ConfigError(
            f"{name} must be divisible by {IMAGE_SIZE_MULTIPLE}; got {value}."
        )
