"""A child's result: rated once, stored in its trial directory, reused.

A child (one sampled spec) is rated by the proxy in its work directory,
`trials/trial_N/`, and its `proxy.ProxyResult` is stored there as
`result.json`, tagged with the spec's canonical hash and the tuner that
trained it, before the scheduler hears of it. A process that dies after
storing and before reporting therefore loses nothing: whoever is handed
sample N next (the same tuner after a restart, another after the chief
took the child back) finds the result and does not train it again. The
hash guards against a result of another spec, left by a search run with
another config in the same directory.
"""

from __future__ import annotations

import tensorflow as tf
from absl import logging

from nasfpn_tf import files
from nasfpn_tf.arch.spec import NeckSpec
from nasfpn_tf.errors import UserError
from nasfpn_tf.search import proxy as proxy_lib
from nasfpn_tf.search import search_dir as search_dir_lib


class SearchStorageError(UserError, RuntimeError):
    """The search directory cannot be written (full disk, no permission).

    It stops the search instead of counting the child as failed: every
    child would fail alike, and penalty rewards for a full disk would
    mislead the controller.
    """


def write_result(
    search_dir: search_dir_lib.SearchDir,
    sample: int,
    key: str,
    result: proxy_lib.ProxyResult,
    tuner_id: str,
) -> None:
    """Stores a child's result in its trial directory, atomically."""
    files.write_json_atomic(
        search_dir.result_path(sample),
        {"hash": key, "tuner": tuner_id, **result.to_dict()},
    )


def read_result(
    search_dir: search_dir_lib.SearchDir, sample: int, key: str
) -> tuple[proxy_lib.ProxyResult, str] | None:
    """(result, tuner id) stored for `sample`, if it is for hash `key`."""
    path = search_dir.result_path(sample)
    try:
        data = files.read_json(path)
    except files.JsonFileError as error:
        logging.warning("Ignoring %s", error)
        return None
    if not isinstance(data, dict) or data.get("hash") != key:
        return None
    try:
        return proxy_lib.ProxyResult.from_dict(data), str(data.get("tuner", ""))
    except (TypeError, ValueError) as error:
        logging.warning("Ignoring %s: %s", path, error)
        return None


def rate(
    search_dir: search_dir_lib.SearchDir,
    sample: int,
    spec: NeckSpec,
    proxy: proxy_lib.Proxy,
    tuner_id: str,
) -> tuple[proxy_lib.ProxyResult, bool]:
    """Rates child `sample`: its stored result, or the proxy's.

    A result the proxy computes is stored before this returns; then the
    proxy may `release` the work directory (drop checkpoints it no longer
    needs), if it has that method.

    Returns:
        (the result, whether the proxy trained the child now).
    """
    key = spec.canonical_key()
    stored = read_result(search_dir, sample, key)
    if stored is not None:
        logging.info(
            "Sample %d: reusing its result stored by an earlier run", sample
        )
        return stored[0], False
    work_dir = search_dir.trial_dir(sample)
    tf.io.gfile.makedirs(work_dir)
    result = proxy.reward(spec, work_dir)
    write_result(search_dir, sample, key, result, tuner_id)
    release = getattr(proxy, "release", None)
    if release is not None:
        release(work_dir)
    return result, True
