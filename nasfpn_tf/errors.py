"""Errors a user can fix, and how any error is described in one line.

Every error that reports a problem with what the user gave (a config, a
spec, data, a run directory, a history) derives from `UserError`; the
command line prints its message and exits with status 1, without a
traceback. Each keeps a builtin base too (``ValueError``, ``RuntimeError``)
so library callers can catch it the usual way.
"""

from __future__ import annotations

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
