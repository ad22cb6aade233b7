"""Tests for nasfpn_tf.train.strategy.

The TPU and multi-worker paths are checked through their configuration:
their constructors are replaced, so no TPU is looked for and no cluster is
joined.
"""

import json

import pytest
import tensorflow as tf

from nasfpn_tf import config as config_lib
from nasfpn_tf.train import strategy as strategy_lib


class _Stop(Exception):
    """Raised by the stand-ins once they have recorded their call."""


def _runtime(**changes):
    return config_lib.RuntimeConfig(**changes)


def test_default_is_the_ambient_strategy_without_a_gpu():
    if tf.config.list_logical_devices("GPU"):
        pytest.skip("a GPU is visible: the default is OneDevice on it")
    strategy = strategy_lib.make_strategy(_runtime())
    assert strategy is tf.distribute.get_strategy()
    assert strategy.num_replicas_in_sync == 1


def test_default_on_a_gpu_is_one_device_on_the_first():
    gpus = tf.config.list_logical_devices("GPU")
    if not gpus:
        pytest.skip("no GPU visible")
    strategy = strategy_lib.make_strategy(_runtime())
    assert isinstance(strategy, tf.distribute.OneDeviceStrategy)
    assert strategy.extended.worker_devices == (gpus[0].name,)


def test_default_keeps_a_strategy_already_in_scope():
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0"])
    with mirrored.scope():
        assert strategy_lib.make_strategy(_runtime()) is mirrored


def test_mirrored_replicates_over_the_cpus_without_a_gpu():
    if tf.config.list_logical_devices("GPU"):
        pytest.skip("a GPU is visible")
    strategy = strategy_lib.make_strategy(_runtime(strategy="mirrored"))
    assert isinstance(strategy, tf.distribute.MirroredStrategy)
    cpus = tf.config.list_logical_devices("CPU")
    assert strategy.num_replicas_in_sync == len(cpus)


def test_mirrored_refuses_more_gpus_than_visible():
    visible = len(tf.config.list_logical_devices("GPU"))
    with pytest.raises(ValueError, match=f"only {visible} GPU"):
        strategy_lib.mirrored_devices(num_gpus=visible + 1)


def test_tpu_resolves_the_configured_name(monkeypatch):
    calls = []

    def fake_resolver(tpu=None, **kwargs):
        calls.append(tpu)
        raise _Stop

    monkeypatch.setattr(
        tf.distribute.cluster_resolver, "TPUClusterResolver", fake_resolver
    )
    with pytest.raises(_Stop):
        strategy_lib.make_strategy(_runtime(strategy="tpu", tpu="my-tpu"))
    assert calls == ["my-tpu"]


def test_tpu_connects_to_a_remote_tpu_before_initialising(monkeypatch):
    events = []

    class FakeResolver:
        def __init__(self, tpu=None):
            events.append(("resolve", tpu))

    def connect(resolver):
        events.append(("connect", type(resolver).__name__))

    def initialize(resolver):
        events.append(("initialize", type(resolver).__name__))
        raise _Stop

    monkeypatch.setattr(
        tf.distribute.cluster_resolver, "TPUClusterResolver", FakeResolver
    )
    monkeypatch.setattr(tf.config, "experimental_connect_to_cluster", connect)
    monkeypatch.setattr(
        tf.tpu.experimental, "initialize_tpu_system", initialize
    )
    with pytest.raises(_Stop):
        strategy_lib.make_strategy(
            _runtime(strategy="tpu", tpu="grpc://10.0.0.2:8470")
        )
    assert events == [
        ("resolve", "grpc://10.0.0.2:8470"),
        ("connect", "FakeResolver"),
        ("initialize", "FakeResolver"),
    ]
    # A TPU VM's own TPU ("") needs no remote connection.
    events.clear()
    with pytest.raises(_Stop):
        strategy_lib.make_strategy(_runtime(strategy="tpu"))
    assert [e[0] for e in events] == ["resolve", "initialize"]


def test_multi_worker_mirrored_is_built_for_the_cluster(monkeypatch):
    made = []

    class FakeStrategy:
        num_replicas_in_sync = 8

        def __init__(self, communication=None):
            made.append(communication)

    monkeypatch.setattr(
        tf.distribute.experimental, "MultiWorkerMirroredStrategy", FakeStrategy
    )
    strategy = strategy_lib.make_strategy(
        _runtime(strategy="multi_worker_mirrored")
    )
    assert isinstance(strategy, FakeStrategy)
    assert made == [tf.distribute.experimental.CommunicationImplementation.AUTO]


def test_unknown_kind_is_named():
    runtime = _runtime()
    # Bypasses the config's own check to reach make_strategy's.
    object.__setattr__(runtime, "strategy", "parameter_server")
    with pytest.raises(ValueError, match="parameter_server"):
        strategy_lib.make_strategy(runtime)


class _Resolver:
    def __init__(self, task_type, task_id, jobs):
        self.task_type, self.task_id = task_type, task_id
        self._jobs = jobs

    def cluster_spec(self):
        return tf.train.ClusterSpec(
            {job: [f"host{i}:1" for i in range(n)] for job, n in self._jobs}
        )


class _Clustered:
    def __init__(self, resolver):
        self.cluster_resolver = resolver


@pytest.mark.parametrize(
    ("task_type", "task_id", "jobs", "chief"),
    [
        ("worker", 0, [("worker", 2)], True),
        ("worker", 1, [("worker", 2)], False),
        ("chief", 0, [("chief", 1), ("worker", 2)], True),
        ("worker", 0, [("chief", 1), ("worker", 2)], False),
        (None, None, [], True),
    ],
)
def test_only_the_chief_writes(task_type, task_id, jobs, chief):
    strategy = _Clustered(_Resolver(task_type, task_id, jobs))
    assert strategy_lib.is_chief(strategy) is chief
    assert strategy_lib.is_chief(tf.distribute.get_strategy())


def _tf_config(jobs, task_type, index):
    return json.dumps(
        {
            "cluster": {job: [f"h{i}:1" for i in range(n)] for job, n in jobs},
            "task": {"type": task_type, "index": index},
        }
    )


TWO_WORKERS = [("worker", 2)]
CHIEF_AND_WORKER = [("chief", 1), ("worker", 1)]


@pytest.mark.parametrize(
    ("strategy", "tf_config", "owns"),
    [
        ("default", _tf_config(TWO_WORKERS, "worker", 1), True),
        ("multi_worker_mirrored", "", True),
        ("multi_worker_mirrored", _tf_config(TWO_WORKERS, "worker", 0), True),
        ("multi_worker_mirrored", _tf_config(TWO_WORKERS, "worker", 1), False),
        ("multi_worker_mirrored", _tf_config(CHIEF_AND_WORKER, "chief", 0), True),
        ("multi_worker_mirrored", _tf_config(CHIEF_AND_WORKER, "worker", 0), False),
    ],
)  # fmt: skip
def test_only_the_chief_owns_model_dir_before_a_strategy_exists(
    monkeypatch, strategy, tf_config, owns
):
    monkeypatch.setenv("TF_CONFIG", tf_config)
    assert strategy_lib.owns_model_dir(_runtime(strategy=strategy)) is owns
