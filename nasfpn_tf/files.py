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
