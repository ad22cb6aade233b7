"""The one place that creates a tf.distribute strategy.

Models, optimizers and metrics are built inside `strategy.scope()` by the
trainer; everything else only asks the strategy for its replica count.

Kinds (`runtime.strategy`):
  default                the ambient strategy (`tf.distribute.get_strategy()`),
                         or a OneDeviceStrategy on the first GPU when there
                         is one, so variables and steps land on it.
  mirrored               synchronous data parallelism on the GPUs of this
                         host (`runtime.num_gpus`, 0 = all); without a GPU,
                         on every logical CPU device (one unless configured
                         with `tf.config.set_logical_device_configuration`).
  multi_worker_mirrored  synchronous across hosts, the cluster read from the
                         TF_CONFIG environment variable.
  tpu                    TPUStrategy on `runtime.tpu` ("" or "local": the
                         TPU VM this runs on), through Model Garden's
                         `distribute_utils`.
"""

from __future__ import annotations

import os

import tensorflow as tf
from absl import logging
from official.common import distribute_utils

from nasfpn_tf import config as config_lib

# Names Model Garden's distribute_utils gives our strategy kinds.
_MODEL_GARDEN_KINDS = {
    "multi_worker_mirrored": "multi_worker_mirrored",
    "tpu": "tpu",
}


def make_strategy(runtime: config_lib.RuntimeConfig) -> tf.distribute.Strategy:
    """Creates the strategy `runtime` names.

    Call it once, early: TPU and multi-worker strategies initialise the
    runtime, which TensorFlow allows only before other work.

    Args:
        runtime: the run's RuntimeConfig.

    Returns:
        The strategy; models and optimizers go in its `scope()`.

    Raises:
        ValueError: an unknown kind, or more GPUs asked for than visible.
    """
    kind = runtime.strategy
    if kind == "default":
        return _default_strategy()
    if kind == "mirrored":
        return tf.distribute.MirroredStrategy(
            devices=mirrored_devices(runtime.num_gpus)
        )
    if kind in _MODEL_GARDEN_KINDS:
        strategy = distribute_utils.get_distribution_strategy(
            distribution_strategy=_MODEL_GARDEN_KINDS[kind],
            tpu_address=runtime.tpu,
        )
        logging.info(
            "%s strategy with %d replicas",
            kind,
            strategy.num_replicas_in_sync,
        )
        return strategy
    raise ValueError(
        f"runtime.strategy must be one of {config_lib.STRATEGIES}; got "
        f"{kind!r}."
    )


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run's files.

    Every worker of a multi-worker run trains, but only the chief (task
    "chief", else "worker" 0) owns model_dir; single-process strategies
    are their own chief.
    """
    resolver = getattr(strategy, "cluster_resolver", None)
    task_type = getattr(resolver, "task_type", None)
    if not task_type:
        return True
    if task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type == "worker" and resolver.task_id == 0 and not has_chief


def owns_model_dir(runtime: config_lib.RuntimeConfig) -> bool:
    """Whether this process writes the run's files, before any strategy
    exists (``is_chief``'s rule read from TF_CONFIG): only the chief of a
    multi-worker run does."""
    if runtime.strategy != "multi_worker_mirrored" or not os.environ.get(
        "TF_CONFIG"
    ):
        return True
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    if not resolver.task_type:
        return True
    return is_chief(_Clustered(resolver))


class _Clustered:
    """What ``is_chief`` reads of a strategy: its cluster resolver."""

    def __init__(self, resolver):
        self.cluster_resolver = resolver


def mirrored_devices(num_gpus: int = 0) -> list[str]:
    """Devices a MirroredStrategy on this host replicates over.

    Args:
        num_gpus: GPUs to use; 0 means every visible GPU.

    Returns:
        Device names: the first `num_gpus` GPUs, or every logical CPU when
        no GPU is visible.

    Raises:
        ValueError: `num_gpus` exceeds the visible GPUs.
    """
    gpus = tf.config.list_logical_devices("GPU")
    if num_gpus > len(gpus):
        raise ValueError(
            f"runtime.num_gpus is {num_gpus} but only {len(gpus)} GPU(s) "
            "are visible."
        )
    if gpus:
        return [gpu.name for gpu in gpus[: num_gpus or len(gpus)]]
    return [cpu.name for cpu in tf.config.list_logical_devices("CPU")]


def _default_strategy() -> tf.distribute.Strategy:
    strategy = tf.distribute.get_strategy()
    if tf.distribute.has_strategy():
        return strategy  # a caller's scope is already active: keep it
    gpus = tf.config.list_logical_devices("GPU")
    if gpus:
        if len(gpus) > 1:
            logging.info(
                "%d GPUs visible; the default strategy uses the first. "
                "Set runtime.strategy=mirrored to use them all.",
                len(gpus),
            )
        return tf.distribute.OneDeviceStrategy(gpus[0].name)
    return strategy
