"""One test per private-API touch in nasfpn_tf/compat.py.

Each fails naming the private API and the module that relies on it, so an
upgrade of tf_keras, TensorFlow or Model Garden that removes or changes it
says what broke. KerasTuner's touches are checked, with its public APIs,
by test_keras_tuner_compat.py.
"""

import contextlib
import os
import time

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from nasfpn_tf import compat


@contextlib.contextmanager
def _touch(api, user):
    """Turns any failure of the body into one naming `api` and `user`."""
    try:
        yield
    except Exception as error:  # noqa: BLE001 (reported, with its type)
        pytest.fail(
            f"{api} (used by {user} through nasfpn_tf/compat.py) is missing "
            f"or changed: {type(error).__name__}: {error}",
            pytrace=False,
        )


def test_keras_option_scope_turns_off_call_traces():
    api = "tf_keras.src.saving.legacy.saved_model.utils.keras_option_scope"
    with _touch(api, "nasfpn_tf/export.py"):
        from tf_keras.src.saving.legacy.saved_model import utils

        assert utils.should_save_traces()
        with compat.keras_option_scope(save_traces=False):
            assert not utils.should_save_traces(), "traces still saved"
        assert utils.should_save_traces()


def test_retinanet_config_is_what_get_config_returns_and_from_config_takes():
    with _touch(
        "official.vision.modeling.retinanet_model.RetinaNetModel._config_dict",
        "nasfpn_tf/modeling/detector.py",
    ):
        from official.vision.modeling import retinanet_model

        class Extended(retinanet_model.RetinaNetModel):
            def __init__(self, extra=0, **kwargs):
                super().__init__(**kwargs)
                compat.retinanet_config(self).update(extra=extra)

        parts = {
            name: tf_keras.layers.Layer()
            for name in ("backbone", "decoder", "head", "detection_generator")
        }
        model = Extended(extra=3, min_level=3, max_level=5, **parts)
        config = model.get_config()
        assert config["extra"] == 3 and config["min_level"] == 3
        rebuilt = Extended.from_config(config)
        assert compat.retinanet_config(rebuilt)["extra"] == 3


def _export_module():
    from official.vision.serving import export_base

    class Module(export_base.ExportModule):
        def serve(self, images):
            return {}

    model = tf_keras.Sequential([tf_keras.layers.Dense(1)])
    return Module(
        params=None, batch_size=None, input_image_size=[8, 6], model=model
    )


def _png():
    image = np.arange(8 * 6 * 3, dtype=np.uint8).reshape([8, 6, 3])
    return image, tf.io.encode_png(image)


def test_export_module_keeps_its_image_size():
    with _touch(
        "official.vision.serving.export_base.ExportModule._input_image_size",
        "nasfpn_tf/export.py",
    ):
        assert compat.export_image_size(_export_module()) == [8, 6]


def test_export_module_decodes_an_encoded_image():
    with _touch(
        "official.vision.serving.export_base.ExportModule._decode_image",
        "nasfpn_tf/export.py",
    ):
        image, png = _png()
        decoded = compat.export_image_decoder(_export_module())(png)
        assert decoded.dtype == tf.uint8
        np.testing.assert_array_equal(decoded.numpy(), image)


def test_export_module_decodes_a_tf_example():
    with _touch(
        "official.vision.serving.export_base.ExportModule._decode_tf_example",
        "nasfpn_tf/export.py",
    ):
        image, png = _png()
        feature = tf.train.Feature(
            bytes_list=tf.train.BytesList(value=[png.numpy()])
        )
        example = tf.train.Example(
            features=tf.train.Features(feature={"image/encoded": feature})
        )
        decode = compat.export_example_decoder(_export_module())
        decoded = decode(tf.constant(example.SerializeToString()))
        np.testing.assert_array_equal(decoded.numpy(), image)


def test_update_checkpoint_state_writes_what_tf_reads(tmp_path):
    with _touch(
        "tf.__internal__.train.update_checkpoint_state",
        "nasfpn_tf/train/checkpoints.py",
    ):
        directory = str(tmp_path)
        paths = [os.path.join(directory, f"ckpt-{i}") for i in (1, 2)]
        compat.update_checkpoint_state(
            directory,
            paths[-1],
            all_model_checkpoint_paths=paths,
            all_model_checkpoint_timestamps=[1.0, 2.0],
            last_preserved_timestamp=0.5,
        )
        state = tf.train.get_checkpoint_state(directory)
        assert state.model_checkpoint_path == paths[-1]
        assert list(state.all_model_checkpoint_paths) == paths
        assert list(state.all_model_checkpoint_timestamps) == [1.0, 2.0]
        assert state.last_preserved_timestamp == 0.5
        text = (tmp_path / "checkpoint").read_text()
        assert directory not in text, "paths not written relative"


def test_reload_checkpoint_manager_rereads_a_rewritten_state(tmp_path):
    with _touch(
        "tf.train.CheckpointManager.__init__ run again on a live manager",
        "nasfpn_tf/train/checkpoints.py",
    ):
        step = tf.Variable(0, dtype=tf.int64)
        checkpoint = tf.train.Checkpoint(step=step)
        directory = str(tmp_path)
        kwargs = {
            "max_to_keep": 3,
            "step_counter": step,
            "checkpoint_interval": 1,
        }
        manager = tf.train.CheckpointManager(checkpoint, directory, **kwargs)
        first = manager.save(checkpoint_number=1)
        step.assign(2)
        manager.save(checkpoint_number=2)
        compat.update_checkpoint_state(
            directory,
            first,
            all_model_checkpoint_paths=[first],
            all_model_checkpoint_timestamps=[time.time()],
            last_preserved_timestamp=0.0,
        )
        compat.reload_checkpoint_manager(
            manager, checkpoint, directory, last_checkpoint_step=1, **kwargs
        )
        assert manager.checkpoints == [first]
        assert manager.latest_checkpoint == first
        # The interval counts from the given step: step 2 saves again.
        assert manager.save(check_interval=True) is not None


def test_convert_variables_to_constants_freezes_a_function():
    with _touch(
        "tensorflow.python.framework.convert_to_constants"
        ".convert_variables_to_constants_v2",
        "nasfpn_tf/modeling/frozen.py",
    ):
        weight = tf.Variable([[2.0], [3.0]])
        concrete = tf.function(
            lambda x: tf.matmul(x, weight)
        ).get_concrete_function(tf.TensorSpec([None, 2], tf.float32))
        frozen = compat.convert_variables_to_constants(concrete)
        kinds = {op.type for op in frozen.graph.get_operations()}
        assert not kinds & {"VarHandleOp", "ReadVariableOp"}, kinds
        x = tf.constant([[1.0, 1.0]])
        np.testing.assert_allclose(frozen(x)[0].numpy(), [[5.0]])


def test_custom_gradients_traced_in_a_graph_can_be_dropped():
    with _touch(
        "tensorflow.python.framework.ops._gradient_registry",
        "nasfpn_tf/search/proxy.py",
    ):
        before = compat.custom_gradient_names()

        @tf.custom_gradient
        def doubled_gradient(x):
            return tf.identity(x), lambda dy: 2.0 * dy

        @tf.function
        def gradient(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = doubled_gradient(x)
            return tape.gradient(y, x)

        assert float(gradient(tf.constant(1.0))) == 2.0
        added = compat.custom_gradient_names() - before
        assert len(added) == 1, added
        assert compat.drop_custom_gradients(before) == 1
        assert compat.custom_gradient_names() == before
        # The traced function has its gradient already: it still runs.
        assert float(gradient(tf.constant(3.0))) == 2.0


def test_momentum_slot_finds_the_momentum_of_each_variable():
    import tf_keras

    variables = [tf.Variable(tf.ones([2])), tf.Variable(tf.ones([3]))]
    optimizer = tf_keras.optimizers.SGD(0.1, momentum=0.9)
    optimizer.build(variables)
    for variable in variables:
        slot = compat.momentum_slot(optimizer, variable)
        assert slot.shape == variable.shape
    slots = {id(compat.momentum_slot(optimizer, v)) for v in variables}
    assert len(slots) == len(variables)
