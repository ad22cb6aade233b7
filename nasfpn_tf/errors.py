"""Errors a user can fix, and how any error is described in one line.

Every error that reports a problem with what the user gave (a config, a
spec, data, a run directory, a history) derives from `UserError`; the
command line prints its message and exits with status 1, without a
traceback. Each keeps a builtin base too (``ValueError``, ``RuntimeError``)
so library callers can catch it the usual way.

Errors that are not the user's are sorted here too: transient ones (worth
another try) and those of the storage (a full disk, a directory that
cannot be written), which no retry or other child would escape.
"""

from __future__ import annotations

import errno
import sys
from types import ModuleType

# Longest error text kept in a history record or a benchmark row.
MAX_ERROR_CHARS = 2000


class UserError(Exception):
    """A problem with the user's input or run directory; the message names
    what is wrong and what to do."""


def describe_error(
    error: BaseException,
    max_chars: int = MAX_ERROR_CHARS,
    max_lines: int | None = None,
) -> str:
    """``"Type: message"``, cut to ``max_chars`` (ending in "...").

    With ``max_lines`` only the message's first non-blank lines are kept,
    joined by spaces (TensorFlow's errors run long).
    """
    message = str(error)
    if max_lines is not None:
        lines = [line.strip() for line in message.splitlines() if line.strip()]
        message = " ".join(lines[:max_lines])
    text = f"{type(error).__name__}: {message}".strip()
    if len(text) > max_chars:
        text = text[: max_chars - 3] + "..."
    return text


# Errors of the machine, not the architecture: worth another try. With
# TensorFlow's (`tf.errors`, by name: this module loads without it).
TRANSIENT_ERRORS = (ConnectionError, TimeoutError)
TRANSIENT_TF_ERRORS = (
    "UnavailableError",
    "AbortedError",
    "DeadlineExceededError",
)
# Errors of the storage, not of the work: a full disk or quota, a
# read-only or forbidden directory (OSError numbers; TensorFlow's file
# system reports the same conditions as OpErrors with these messages).
STORAGE_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}
)
STORAGE_MESSAGES = (
    "No space left on device",
    "Disk quota exceeded",
    "Read-only file system",
    "Permission denied",
)
# How far down `__cause__` / `__context__` a storage error is looked for.
MAX_ERROR_CHAIN = 8


def is_transient_error(error: BaseException) -> bool:
    """Whether `error` is of the machine (a lost connection to storage or
    to a TPU worker, a timeout), so that another try may succeed."""
    if isinstance(error, TRANSIENT_ERRORS):
        return True
    tf_errors = _tf_errors()
    return tf_errors is not None and isinstance(
        error, tuple(getattr(tf_errors, name) for name in TRANSIENT_TF_ERRORS)
    )


def is_storage_error(error: BaseException) -> bool:
    """Whether `error` (or an error it was raised from) says the storage
    cannot take a write: full, over quota, read-only or forbidden."""
    return storage_error_of(error) is not None


def storage_error_of(error: BaseException | None) -> BaseException | None:
    """The storage error in `error`'s chain of causes, or None."""
    tf_errors = _tf_errors()
    for _ in range(MAX_ERROR_CHAIN):
        if error is None:
            return None
        if isinstance(error, OSError) and error.errno in STORAGE_ERRNOS:
            return error
        if tf_errors is not None and (
            isinstance(error, tf_errors.PermissionDeniedError)
            or (
                isinstance(error, tf_errors.OpError)
                and any(text in str(error.message) for text in STORAGE_MESSAGES)
            )
        ):
            return error
        error = error.__cause__ or error.__context__
    return None


def _tf_errors() -> ModuleType | None:
    """`tf.errors` once TensorFlow is loaded; before, none of its errors
    can have been raised."""
    tf = sys.modules.get("tensorflow")
    return None if tf is None else tf.errors
