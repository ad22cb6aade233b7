"""Every setting has one default: the command line (the config dataclasses
and configs/tiny.yaml), the library (Controller, SearchSpace,
build_dataset with no config) and the benchmarks get the same values."""

import dataclasses
import pathlib
import sys

import pytest
import tensorflow as tf

from nasfpn_tf import config as config_lib
from nasfpn_tf.arch.space import SearchSpace
from nasfpn_tf.data import pipeline
from nasfpn_tf.search import controller as controller_lib
from nasfpn_tf.search import runner

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="module")
def cli():
    """What `python -m nasfpn_tf.main` runs with no flags."""
    config = config_lib.ExperimentConfig()
    tiny = config_lib.load_config([str(ROOT / "configs" / "tiny.yaml")])
    assert config_lib.diff(tiny, config) == {}
    return config


def test_controller_defaults_are_the_configs(cli):
    controller = controller_lib.Controller((3, 2))
    assert controller.config == cli.search.controller
    assert controller.algorithm == cli.search.algorithm
    assert controller.seed == cli.runtime.seed
    policy = controller_lib.make_policy("ppo", (3, 2))
    assert policy.config == cli.search.controller
    space = runner.make_space(cli)
    assert runner.make_policy(cli, space).config == controller.config


def test_space_defaults_are_the_configs(cli):
    space = SearchSpace()
    assert runner.make_space(cli) == space
    assert cli.search.space.num_intermediate == space.num_intermediate
    assert cli.search.space.intermediate_levels == space.intermediate_levels
    assert cli.search.space.ops == space.ops
    assert (cli.model.min_level, cli.model.max_level) == (
        space.min_level,
        space.max_level,
    )


def test_input_defaults_are_the_configs(cli, tmp_path, monkeypatch):
    assert pipeline.InputConfig() == pipeline.InputConfig.from_experiment(cli)
    seen = []
    make_parse_fn = pipeline.make_parse_fn

    def spy(config, is_training):
        seen.append(config)
        return make_parse_fn(config, is_training)

    monkeypatch.setattr(pipeline, "make_parse_fn", spy)
    path = str(tmp_path / "empty.tfrecord")
    tf.io.TFRecordWriter(path).close()
    pipeline.build_dataset(path, is_training=True, batch_size=1)
    assert seen == [pipeline.InputConfig.from_experiment(cli)]


def test_benchmark_base_configs_are_the_clis(cli):
    from benchmarks import (
        common,
        controller_synthetic,
        input_pipeline,
        search_vs_random,
    )

    args = controller_synthetic.parse_args([])
    assert controller_synthetic.controller_config(args) == (
        cli.search.controller
    )
    # The search benchmark changes only the budget it is given, and trains
    # its children (the defaults rate on a supernet).
    args = search_vs_random.parse_args([])
    changed = config_lib.diff(common.search_config(args), cli)
    assert set(changed) <= {
        "search.rater",
        "search.num_samples",
        "search.samples_per_update",
        "search.proxy.train_steps",
    }
    # The input benchmark measures the paper config's input settings.
    paper = config_lib.load_config([str(input_pipeline.PAPER_CONFIG)])
    measured = input_pipeline.input_config(paper.model.image_size)
    expected = pipeline.InputConfig.from_experiment(paper)
    assert measured == dataclasses.replace(
        expected, dtype="float32", cache=True
    )
