"""Shared fixtures: seeds everything, quiets TensorFlow."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    import tf_keras

    tf_keras.utils.set_random_seed(0)
    yield
    tf_keras.backend.clear_session()
