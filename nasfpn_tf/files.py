"""Atomic file writes, local or on a remote file system (gs://).

Everything a run decides (config, spec, metrics, search history and
results) is rewritten through ``write_atomic``: the data goes to a
temporary file beside the target, is fsynced when local, and is renamed
over it, so a reader (or a rerun after a kill) sees the old file or the
new one, never half of one.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable

import tensorflow as tf

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


class JsonlLog:
    """An append-only file of JSON objects, one a line, that survives kills.

    Local appends are fsynced before `append` returns; on a remote file
    system (no append) the file is rewritten atomically. `JsonlLog.open`
    drops a torn last line (a kill mid-append) and rewrites the file
    without it, so the next append starts on a line of its own.

    Attributes:
        path: the file.
        rows: every object in file order.
    """

    def __init__(self, path: str, rows: list[dict] | None = None):
        self.path = path
        self.rows: list[dict] = list(rows or [])

    @classmethod
    def open(cls, path: str) -> JsonlLog:
        """Reads `path` (missing: empty).

        Raises:
            ValueError: a line other than the last is not a JSON object,
                naming the file and line.
        """
        import json

        log = cls(path)
        if not tf.io.gfile.exists(path):
            return log
        with tf.io.gfile.GFile(path, "r") as f:
            lines = f.read().split("\n")
        tail = lines.pop()  # "" when the file ends with a newline
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(
                    f"{path}:{number}: not JSON ({error})"
                ) from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{number}: not a JSON object")
            log.rows.append(row)
        if tail.strip():
            try:
                row = json.loads(tail)
            except json.JSONDecodeError:
                row = None  # torn by a kill mid-append: dropped
            if isinstance(row, dict):
                log.rows.append(row)
            log._rewrite()
        return log

    def append(self, row: dict) -> None:
        """Adds `row` durably before returning."""
        self.rows.append(row)
        try:
            append_line(self.path, _json_line(row), self._text)
        except BaseException:
            self.rows.pop()
            raise

    def _text(self) -> str:
        return "".join(_json_line(r) for r in self.rows)

    def _rewrite(self) -> None:
        write_atomic(self.path, self._text())


def _json_line(row: dict) -> str:
    import json

    return json.dumps(row, separators=(",", ":")) + "\n"
