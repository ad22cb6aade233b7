"""Every use of another library's private API, in one place.

The project calls tf_keras, TensorFlow, Model Garden and KerasTuner through
their public APIs, except for the few things below that they offer no
public way to do. Each is one function here, so that an upgrade that
removes or changes one breaks in one place, and `tests/test_compat.py`
holds one test per touch that fails naming it. The versions they were
written against are the ranges pinned in `pyproject.toml`.

tf_keras (2.20):
  `keras_option_scope` (export.py): `tf_keras.src.saving.legacy.saved_model
  .utils.keras_option_scope`, to save a SavedModel without Keras' per-layer
  call traces.
  `momentum_slot` (supernet/training.py): the SGD optimizer's
  `_index_dict` and `_var_key`, the only way to find the momentum of one
  variable, which the supernet puts back for the weights a path did not
  use.

Model Garden (tf-models-official 2.20):
  `retinanet_config` (modeling/detector.py): `RetinaNetModel._config_dict`,
  the dict its `get_config` returns, which the detector extends with its
  own arguments so that a reloaded model is the one built.
  `export_image_size`, `export_image_decoder`, `export_example_decoder`
  (export.py): the vision `ExportModule`'s `_input_image_size`,
  `_decode_image` and `_decode_tf_example`, its decoding of encoded images
  and tf.Examples.

TensorFlow (2.20):
  `update_checkpoint_state` (train/checkpoints.py):
  `tf.__internal__.train.update_checkpoint_state`, the function
  `tf.train.CheckpointManager` records its state with (the public
  `tf.compat.v1` one is deprecated).
  `reload_checkpoint_manager` (train/checkpoints.py): runs
  `tf.train.CheckpointManager.__init__` again on a live manager, its only
  way to re-read a state file rewritten underneath it.
  `convert_variables_to_constants` (modeling/frozen.py):
  `tensorflow.python.framework.convert_to_constants
  .convert_variables_to_constants_v2`, which freezes a concrete function.
  `custom_gradient_names`, `drop_custom_gradients` (search/proxy.py):
  `tensorflow.python.framework.ops._gradient_registry`, where every
  `tf.custom_gradient` traced into a graph registers its gradient as
  "CustomGradient-<uid>" and is never removed; each entry holds its
  graph, so a search leaked one child's graph per child (about 55,000
  objects and 50 MB each) until its children's entries were dropped.

KerasTuner (1.4): kept in `search/oracle.py`, the one module that imports
keras_tuner, and checked with every public KerasTuner API it relies on by
`tests/test_keras_tuner_compat.py`:
  `role`: `keras_tuner.src.distribute.utils.has_chief_oracle` and
  `is_chief_oracle`, the rule by which `BaseTuner` decides that a process
  is a worker.
  `serve`: `keras_tuner.src.protos.get_service_grpc()
  .add_OracleServicer_to_server` and
  `keras_tuner.src.distribute.oracle_chief.OracleServicer`, the chief's
  gRPC service (KerasTuner's own server loop polls for the end every 20 s).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import tensorflow as tf


@contextlib.contextmanager
def keras_option_scope(save_traces: bool) -> Iterator[None]:
    """tf_keras' saving options while the body runs.

    Args:
        save_traces: save each layer's call traces with a SavedModel (the
            default); without them it saves in half the time.
    """
    from tf_keras.src.saving.legacy.saved_model import utils

    with utils.keras_option_scope(save_traces=save_traces):
        yield


def momentum_slot(optimizer: Any, variable: Any) -> Any | None:
    """The momentum variable tf_keras' SGD keeps for ``variable`` (through
    a LossScaleOptimizer too); None without momentum."""
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    momentums = getattr(inner, "momentums", None)
    if not momentums:
        return None
    return momentums[inner._index_dict[inner._var_key(variable)]]


def retinanet_config(model: Any) -> dict[str, Any]:
    """The live dict a Model Garden `RetinaNetModel`'s `get_config`
    returns: an entry added here is in the model's config."""
    return model._config_dict


def export_image_size(module: Any) -> list[int]:
    """The [height, width] a vision `ExportModule` was built with."""
    return module._input_image_size


def export_image_decoder(module: Any) -> Callable[[tf.Tensor], tf.Tensor]:
    """A vision `ExportModule`'s decoder of one encoded image string into
    [H, W, channels] uint8."""
    return module._decode_image


def export_example_decoder(
    module: Any,
) -> Callable[[tf.Tensor], tf.Tensor]:
    """A vision `ExportModule`'s decoder of one serialized tf.Example into
    its [H, W, channels] uint8 image."""
    return module._decode_tf_example


def update_checkpoint_state(directory: str, latest: str, **kwargs) -> None:
    """Writes `directory`'s checkpoint state file, as CheckpointManager
    does (relative paths).

    Args:
        directory: the checkpoint directory.
        latest: the checkpoint prefix to resume from.
        **kwargs: all_model_checkpoint_paths, all_model_checkpoint_timestamps,
            last_preserved_timestamp.
    """
    tf.__internal__.train.update_checkpoint_state(
        directory, latest, save_relative_paths=True, **kwargs
    )


def reload_checkpoint_manager(
    manager: tf.train.CheckpointManager,
    checkpoint: tf.train.Checkpoint,
    directory: str,
    **kwargs,
) -> None:
    """Makes `manager` re-read its directory's state file, by running its
    constructor again with `checkpoint`, `directory` and `kwargs`."""
    tf.train.CheckpointManager.__init__(
        manager, checkpoint, directory, **kwargs
    )


def convert_variables_to_constants(concrete: Any) -> Any:
    """A copy of the concrete function with its variables as constants."""
    from tensorflow.python.framework import convert_to_constants

    return convert_to_constants.convert_variables_to_constants_v2(concrete)


CUSTOM_GRADIENT_PREFIX = "CustomGradient-"


def _gradient_registry() -> dict[str, Any]:
    from tensorflow.python.framework import ops

    return ops._gradient_registry._registry


def custom_gradient_names() -> frozenset[str]:
    """The custom gradients registered so far in this process."""
    return frozenset(
        name
        for name in _gradient_registry()
        if name.startswith(CUSTOM_GRADIENT_PREFIX)
    )


def drop_custom_gradients(keep: frozenset[str]) -> int:
    """Unregisters the custom gradients registered since `keep` was
    taken (`custom_gradient_names`), and returns how many.

    Only for graphs that are done with: a graph whose gradient is built
    after this (a tf.function differentiated from outside) no longer finds
    the gradients of its custom_gradient ops.
    """
    registry = _gradient_registry()
    added = [
        name
        for name in registry
        if name.startswith(CUSTOM_GRADIENT_PREFIX) and name not in keep
    ]
    for name in added:
        del registry[name]
    return len(added)
