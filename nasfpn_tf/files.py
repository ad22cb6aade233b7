"""Atomic file writes, local or on a remote file system (gs://).

Everything a run decides (config, spec, metrics, search history and
results) is rewritten through ``write_atomic``: the data goes to a
temporary file beside the target, is fsynced when local, and is renamed
over it, so a reader (or a rerun after a kill) sees the old file or the
new one, never half of one. `write_json_atomic` and `read_json` do it for
one JSON value; `JsonlLog` keeps a file of JSON rows, one a line.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from typing import Any

import tensorflow as tf
from absl import logging

from nasfpn_tf.errors import UserError

_LOCAL_SCHEMES = ("", "file")


def is_local(path: str) -> bool:
    """Whether `path` is on the local file system (not gs://, ram://, ...)."""
    scheme = path.split("://", 1)[0] if "://" in path else ""
    return scheme in _LOCAL_SCHEMES


def local_path(path: str) -> str:
    """A local path without its ``file://`` scheme, for ``open``."""
    return path.removeprefix("file://")


def write_atomic(path: str, data: str | bytes) -> None:
    """Writes `data` to `path` so readers see the old or the new file.

    The data goes to a uniquely named temporary file in the same
    directory (made if missing), is fsynced when local, and is renamed
    over `path`.
    """
    parent = os.path.dirname(path)
    if parent:
        tf.io.gfile.makedirs(parent)
    temp = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    mode = "wb" if isinstance(data, bytes) else "w"
    if is_local(path):
        encoding = None if isinstance(data, bytes) else "utf-8"
        with open(local_path(temp), mode, encoding=encoding) as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    else:
        with tf.io.gfile.GFile(temp, mode) as f:
            f.write(data)
    tf.io.gfile.rename(temp, path, overwrite=True)


def append_line(path: str, line: str, whole_text: Callable[[], str]) -> None:
    """Adds `line` (ending in a newline) to `path` durably.

    A local file gets an fsynced append; a remote file system (gs://, no
    append) gets `whole_text()`, the file with the line, written
    atomically.
    """
    if not is_local(path):
        write_atomic(path, whole_text())
        return
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(local_path(parent), exist_ok=True)
    with open(local_path(path), "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


class JsonFileError(UserError, ValueError):
    """A file that should hold JSON does not."""


def write_json_atomic(path: str, value: Any) -> None:
    """Writes `value` as indented JSON, atomically."""
    write_atomic(path, json.dumps(value, indent=2) + "\n")


def read_json(path: str) -> Any | None:
    """The JSON value in `path`, or None when the file does not exist.

    Raises:
        JsonFileError: the file exists but is not JSON.
    """
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path, "r") as f:
        text = f.read()
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise JsonFileError(f"{path}: not valid JSON ({error})") from None


class JsonlError(UserError, ValueError):
    """A line of a JSONL file (other than a torn last one) is unreadable."""


def _json_object(value: Any) -> dict:
    if not isinstance(value, dict):
        raise TypeError(f"expected an object, got {type(value).__name__}")
    return value


def _json_line(row: dict) -> str:
    return json.dumps(row, separators=(",", ":")) + "\n"


def read_jsonl(
    path: str,
    parse: Callable[[Any], Any] = _json_object,
    what: str = "a JSON object",
) -> tuple[list[Any], str | None, bool]:
    """Reads a file of JSON values, one a line, tolerating a torn last line.

    A kill during an append can leave the last line incomplete, its JSON
    cut short: it is returned separately, not as a row. A last line that
    is complete JSON but lacks only its newline is read as a row.

    Args:
        path: the file; missing is empty.
        parse: turns a decoded line into a row; raises ValueError or
            TypeError (the reason) when the value is not a valid row.
        what: the row's name for error messages.

    Returns:
        (rows in file order, the torn last line's text or None, whether
        the file ends with a newline).

    Raises:
        JsonlError: a line other than a torn last one is not ``what``,
            naming the file, the line and the reason.
    """
    if not tf.io.gfile.exists(path):
        return [], None, True
    with tf.io.gfile.GFile(path, "r") as f:
        lines = f.read().split("\n")
    tail = lines[-1]  # "" when the file ends with a newline
    rows = []
    torn = None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as error:
            if number == len(lines):  # the tail: a row cut short
                torn = tail
                break
            raise JsonlError(
                f"{path}:{number}: not {what} (not JSON: {error})"
            ) from None
        try:
            rows.append(parse(value))
        except (TypeError, ValueError) as error:
            raise JsonlError(f"{path}:{number}: not {what} ({error})") from None
    return rows, torn, not tail


class JsonlLog:
    """An append-only file of JSON rows, one a line, that survives kills.

    The search history, the training metrics and the fidelity log are
    each one. Local appends are fsynced before `append` returns; on a
    remote file system (no append) the file is rewritten atomically.
    `JsonlLog.open` drops a torn last line (a kill mid-append), logs it,
    and rewrites the file without it, so the next append starts on a line
    of its own.

    Rows are dicts by default; `parse` and `encode` give typed rows (the
    history's `SampleRecord`).

    Attributes:
        path: the file.
        rows: every row in file order.
        torn: the torn last line dropped by `open`, or None.
    """

    def __init__(
        self,
        path: str,
        rows: list[Any] | None = None,
        encode: Callable[[Any], str] = _json_line,
    ):
        self.path = path
        self.rows: list[Any] = list(rows or [])
        self.torn: str | None = None
        self._encode = encode

    @classmethod
    def open(
        cls,
        path: str,
        parse: Callable[[Any], Any] = _json_object,
        encode: Callable[[Any], str] = _json_line,
        what: str = "a JSON object",
    ) -> JsonlLog:
        """Reads `path` (missing: empty) and repairs a torn last line.

        Raises:
            JsonlError: see `read_jsonl`.
        """
        rows, torn, clean = read_jsonl(path, parse, what)
        log = cls(path, rows, encode)
        if not clean:
            if torn is not None:
                log.torn = torn
                logging.warning(
                    "%s: dropped a torn last line (%d characters) left by an "
                    "interrupted write: %.80r",
                    path,
                    len(torn),
                    torn,
                )
            log.rewrite()
        return log

    def append(self, row: Any) -> None:
        """Adds `row` durably before returning."""
        self.rows.append(row)
        try:
            append_line(self.path, self._encode(row), self._text)
        except BaseException:
            self.rows.pop()
            raise

    def rewrite(self, rows: list[Any] | None = None) -> None:
        """Replaces the file's rows with `rows` (default: `self.rows`),
        atomically."""
        if rows is not None:
            self.rows = list(rows)
        write_atomic(self.path, self._text())

    def _text(self) -> str:
        return "".join(self._encode(r) for r in self.rows)
