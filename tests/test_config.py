"""Tests for nasfpn_tf.config: schema checks, overrides, files, round trips."""

import dataclasses
import pathlib

import pytest

from nasfpn_tf import config as config_lib
from nasfpn_tf.config import ConfigError, ExperimentConfig

CONFIG_DIR = pathlib.Path(__file__).resolve().parents[1] / "configs"
CONFIG_FILES = sorted(CONFIG_DIR.glob("*.yaml"))
EXPECTED_FILES = {
    "proxy_search.yaml",
    "nasfpn_r50_640.yaml",
    "nasfpn_r50_1024.yaml",
    "nasfpn_r50_1280_384.yaml",
    "nasfpn_lite_mobilenetv2_320.yaml",
    "nasfpn_lite_mobilenetv2_320_search.yaml",
    "fpn_r50_640.yaml",
    "tiny.yaml",
}
TINY_MAX_IMAGE = 128
TINY_MAX_FILTERS = 16


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# -- the shipped configs -------------------------------------------------------


def test_expected_config_files_exist():
    assert EXPECTED_FILES <= {p.name for p in CONFIG_FILES}


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.name)
def test_every_config_file_loads_and_says_what_it_is(path):
    config = config_lib.load_config([str(path)])
    assert isinstance(config, ExperimentConfig)
    first_line = path.read_text().splitlines()[0]
    assert first_line.startswith(f"# configs/{path.name}")


def test_paper_configs_set_paper_sizes():
    r50 = config_lib.load_config([str(CONFIG_DIR / "nasfpn_r50_640.yaml")])
    assert (r50.model.backbone, r50.model.image_size) == ("resnet50", 640)
    assert (r50.model.neck.repeats, r50.model.neck.filters) == (7, 256)
    assert r50.model.backbone_width == 1.0
    big = config_lib.load_config([str(CONFIG_DIR / "nasfpn_r50_1280_384.yaml")])
    assert (big.model.image_size, big.model.neck.filters) == (1280, 384)
    assert big.model.neck.dropblock_keep_prob is not None
    lite = config_lib.load_config(
        [str(CONFIG_DIR / "nasfpn_lite_mobilenetv2_320.yaml")]
    )
    assert lite.model.backbone == "mobilenetv2"
    assert lite.model.image_size == 320  # not a multiple of 2**7
    assert lite.model.neck.use_separable_conv
    assert lite.model.head.use_separable_conv
    lite_search = config_lib.load_config(
        [
            str(CONFIG_DIR / "nasfpn_lite_mobilenetv2_320.yaml"),
            str(CONFIG_DIR / "nasfpn_lite_mobilenetv2_320_search.yaml"),
        ]
    )
    assert lite_search.model == lite.model
    assert lite_search.search.proxy.image_size == 320
    objective = lite_search.search.objective
    assert (objective.kind, objective.cost) == ("soft", "latency")
    assert objective.weight == -0.07 and objective.target > 0
    fpn = config_lib.load_config([str(CONFIG_DIR / "fpn_r50_640.yaml")])
    assert fpn.model.neck.type == "fpn"
    proxy = config_lib.load_config([str(CONFIG_DIR / "proxy_search.yaml")])
    assert proxy.model.backbone == "resnet10"
    assert proxy.train.init_checkpoint == ""
    assert proxy.search.proxy.image_size == 512
    assert proxy.search.proxy.repeats == 3


def test_tiny_yaml_spells_out_the_defaults():
    tiny = config_lib.load_config([str(CONFIG_DIR / "tiny.yaml")])
    assert config_lib.diff(tiny, ExperimentConfig()) == {}


def test_defaults_are_the_tiny_cpu_demo():
    config = ExperimentConfig()
    assert config.model.image_size <= TINY_MAX_IMAGE
    assert config.model.neck.filters <= TINY_MAX_FILTERS
    assert config.search.proxy.image_size <= TINY_MAX_IMAGE
    assert config.search.proxy.filters <= TINY_MAX_FILTERS
    assert config.data.uses_synthetic
    assert config.runtime.strategy == "default"
    assert config.train.mixed_precision == "float32"
    assert config_lib.load_config() == config
    assert config_lib.from_dict({}) == config


# -- unknown keys and types ----------------------------------------------------


def test_unknown_key_lists_valid_keys_and_close_match():
    with pytest.raises(ConfigError) as info:
        config_lib.load_config(params_override="train.batch_sze=8")
    message = str(info.value)
    assert "train.batch_sze" in message
    assert "did you mean 'batch_size'?" in message.lower()
    assert "learning_rate" in message  # the valid keys of the section


def test_unknown_section_suggests_close_match():
    with pytest.raises(ConfigError, match="Did you mean 'train'"):
        config_lib.from_dict({"trian": {"steps": 3}})


def test_unknown_nested_key_names_the_file(tmp_path):
    path = _write(tmp_path, "bad.yaml", "model:\n  neck:\n    filtres: 8\n")
    with pytest.raises(ConfigError) as info:
        config_lib.load_config([path])
    message = str(info.value)
    assert path in message
    assert "model.neck.filtres" in message
    assert "Did you mean 'filters'?" in message


def test_wrong_type_names_key_expected_and_given():
    with pytest.raises(ConfigError) as info:
        config_lib.from_dict({"train": {"batch_size": "eight"}})
    message = str(info.value)
    assert "train.batch_size" in message
    assert "int" in message and "str" in message and "eight" in message


@pytest.mark.parametrize(
    "changes",
    [
        {"train.batch_size": 2.5},  # float for int
        {"train.batch_size": True},  # bool is not an int here
        {"train.jit_compile": 1},  # int is not a bool
        {"model.backbone": 50},
        {"model.anchor.aspect_ratios": 1.0},  # scalar for a tuple
        {"model.anchor.aspect_ratios": [1.0, "wide"]},
        {"train.gradient_clip_norm": "abc"},
        {"model.neck": 3},  # a section needs a mapping
    ],
)
def test_wrong_types_fail(changes):
    with pytest.raises(ConfigError):
        config_lib.override(ExperimentConfig(), changes)


def test_type_coercions():
    config = config_lib.override(
        ExperimentConfig(),
        {
            "train.learning_rate": 1,  # int accepted for float
            "model.anchor.aspect_ratios": [1, 2],  # list -> tuple of float
            "search.controller.entropy_weight": "1e-3",  # YAML 1.1 string
            "train.gradient_clip_norm": None,
            "model.neck.dropblock_keep_prob": 0.9,
        },
    )
    assert config.train.learning_rate == 1.0
    assert isinstance(config.train.learning_rate, float)
    assert config.model.anchor.aspect_ratios == (1.0, 2.0)
    assert all(isinstance(r, float) for r in config.model.anchor.aspect_ratios)
    assert config.search.controller.entropy_weight == pytest.approx(1e-3)
    assert config.train.gradient_clip_norm is None
    assert config.model.neck.dropblock_keep_prob == 0.9


def test_config_is_frozen():
    config = ExperimentConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.train.batch_size = 8


# -- cross-field checks --------------------------------------------------------


@pytest.mark.parametrize(
    "changes, fragment",
    [
        ({"model.min_level": 7}, "model.min_level"),
        ({"model.image_size": 100}, "divisible by 8"),
        ({"model.image_size": 0}, "model.image_size"),
        ({"model.backbone": "resnet34"}, "'resnet50'"),
        ({"model.neck.type": "bifpn"}, "model.neck.type"),
        ({"model.nms.type": "soft"}, "model.nms.type"),
        ({"model.num_classes": 2}, "data.synthetic.num_classes"),
        ({"train.warmup_steps": 700}, "train.warmup_steps"),
        ({"train.schedule": "step"}, "train.step_boundaries"),
        (
            {"train.schedule": "step", "train.step_boundaries": [50, 20]},
            "strictly increasing",
        ),
        (
            {"train.schedule": "step", "train.step_boundaries": [900]},
            "not below train.steps",
        ),
        ({"train.mixed_precision": "float16"}, "train.mixed_precision"),
        ({"runtime.strategy": "parameter_server"}, "runtime.strategy"),
        ({"runtime.tpu": "my-tpu"}, "strategy 'tpu'"),
        (
            {
                "runtime.strategy": "tpu",
                "train.mixed_precision": "mixed_float16",
            },
            "mixed_bfloat16",
        ),
        ({"search.algorithm": "evolution"}, "search.algorithm"),
        ({"search.space.ops": ["sum", "max"]}, "search.space.ops"),
        ({"search.space.intermediate_levels": [2, 4]}, "level 2"),
        ({"search.space.num_intermediate": 100}, "search.space.num_inter"),
        ({"model.max_level": 11}, "model.max_level"),
        ({"search.oracle_port": 70000}, "search.oracle_port"),
        ({"search.proxy.image_size": 60}, "search.proxy.image_size"),
        ({"model.neck.dropblock_keep_prob": 0.0}, "dropblock_keep_prob"),
        ({"data.aug_scale_min": 2.0}, "data.aug_scale_max"),
        ({"train.focal_alpha": 1.5}, "train.focal_alpha"),
    ],
)
def test_invalid_values_fail_naming_the_key(changes, fragment):
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.")):
        config_lib.override(ExperimentConfig(), changes)


def test_sizes_not_divisible_by_128_are_allowed():
    config = config_lib.override(ExperimentConfig(), {"model.image_size": 320})
    assert config.model.image_size == 320


def test_real_data_lifts_the_synthetic_class_check():
    paths = {
        "data.train_path": "a*",
        "data.val_path": "b*",
        "data.heldout_path": "c*",
        "model.num_classes": 2,
    }
    config = config_lib.override(ExperimentConfig(), paths)
    assert not config.data.uses_synthetic


def test_check_batch():
    config = ExperimentConfig()
    config_lib.check_batch(config, 1)
    config_lib.check_batch(config, 4)
    with pytest.raises(ConfigError, match=r"train\.batch_size \(16\).*\(3\)"):
        config_lib.check_batch(config, 3)
    odd_eval = config_lib.override(config, {"eval.batch_size": 6})
    with pytest.raises(ConfigError, match=r"eval\.batch_size"):
        config_lib.check_batch(odd_eval, 4)
    with pytest.raises(ConfigError, match="num_replicas"):
        config_lib.check_batch(config, 0)


# -- overrides and layering ----------------------------------------------------


def test_parse_override_key_value_form():
    parsed = config_lib.parse_override(
        "train.batch_size=8, model.anchor.aspect_ratios=[1, 2.5],"
        "train.jit_compile=true,model.neck.arch=,runtime.tpu='a,b'"
    )
    assert parsed == {
        "train.batch_size": 8,
        "model.anchor.aspect_ratios": [1, 2.5],
        "train.jit_compile": True,
        "model.neck.arch": None,
        "runtime.tpu": "a,b",
    }


def test_parse_override_yaml_and_json_forms():
    yaml_form = config_lib.parse_override("{train: {batch_size: 8}}")
    json_form = config_lib.parse_override('{"train": {"batch_size": 8}}')
    block_form = config_lib.parse_override("train:\n  batch_size: 8\n")
    assert yaml_form == json_form == block_form
    assert config_lib.parse_override("  ") == {}


@pytest.mark.parametrize("text", ["train.batch_size=8,steps", "[1, 2]", "7"])
def test_parse_override_rejects_malformed_text(text):
    with pytest.raises(ConfigError):
        config_lib.parse_override(text)


def test_both_override_forms_give_the_same_config():
    a = config_lib.load_config(
        params_override="train.batch_size=8,model.image_size=128"
    )
    b = config_lib.load_config(
        params_override="{train: {batch_size: 8}, model: {image_size: 128}}"
    )
    c = config_lib.load_config(
        params_override="{train.batch_size: 8, model.image_size: 128}"
    )
    assert a == b == c
    assert a.train.batch_size == 8 and a.model.image_size == 128


def test_later_file_wins_and_override_wins_last(tmp_path):
    first = _write(
        tmp_path,
        "first.yaml",
        "train: {batch_size: 2, steps: 500}\nmodel: {image_size: 96}\n",
    )
    second = _write(tmp_path, "second.yaml", "train: {batch_size: 8}\n")
    config = config_lib.load_config([first, second])
    assert config.train.batch_size == 8  # second file
    assert config.train.steps == 500  # kept from the first
    assert config.model.image_size == 96
    config = config_lib.load_config([second, first])
    assert config.train.batch_size == 2
    config = config_lib.load_config([first, second], "train.batch_size=16")
    assert config.train.batch_size == 16


def test_intermediate_states_need_not_be_valid(tmp_path):
    # steps=5 alone clashes with the default warmup of 100; the next file
    # fixes it, and only the result is checked.
    first = _write(tmp_path, "a.yaml", "train: {steps: 5}\n")
    second = _write(tmp_path, "b.yaml", "train: {warmup_steps: 1}\n")
    config = config_lib.load_config([first, second])
    assert (config.train.steps, config.train.warmup_steps) == (5, 1)


def test_empty_file_and_missing_file(tmp_path):
    empty = _write(tmp_path, "empty.yaml", "# nothing\n")
    assert config_lib.load_config([empty]) == ExperimentConfig()
    with pytest.raises(ConfigError, match="not found"):
        config_lib.load_config([str(tmp_path / "missing.yaml")])


def test_invalid_yaml_names_the_file(tmp_path):
    path = _write(tmp_path, "broken.yaml", "train: {batch_size: 8\n")
    with pytest.raises(ConfigError, match="broken.yaml: invalid YAML"):
        config_lib.load_config([path])


def test_non_mapping_file_fails(tmp_path):
    path = _write(tmp_path, "list.yaml", "- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        config_lib.load_config([path])


# -- serialization -------------------------------------------------------------


def _custom_config():
    return config_lib.override(
        ExperimentConfig(),
        {
            "model.anchor.aspect_ratios": [1.0, 2.0],
            "model.neck.arch": "runs/search/best_spec.json",
            "train.schedule": "step",
            "train.step_boundaries": [100, 150],
            "train.gradient_clip_norm": None,
            "search.space.ops": ["sum"],
        },
    )


def test_yaml_round_trip():
    for config in (ExperimentConfig(), _custom_config()):
        text = config_lib.to_yaml(config)
        assert config_lib.from_yaml(text) == config
    assert "step_boundaries:\n  - 100\n  - 150" in config_lib.to_yaml(
        _custom_config()
    )


def test_to_dict_is_plain_data():
    data = config_lib.to_dict(_custom_config())
    assert data["train"]["step_boundaries"] == [100, 150]
    assert data["model"]["neck"]["arch"] == "runs/search/best_spec.json"
    assert config_lib.from_dict(data) == _custom_config()


def test_save_and_load_saved(tmp_path):
    model_dir = str(tmp_path / "run")
    assert config_lib.load_saved(model_dir) is None
    config = _custom_config()
    path = config_lib.save(config, model_dir)
    assert path == str(tmp_path / "run" / "config.yaml")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "config.yaml"
    ]  # no temporary file left behind
    assert config_lib.load_saved(model_dir) == config
    config_lib.save(ExperimentConfig(), model_dir)  # overwrites
    assert config_lib.load_saved(model_dir) == ExperimentConfig()


def test_diff_lists_changed_keys():
    changed = config_lib.override(
        ExperimentConfig(), "train.batch_size=8,model.neck.filters=8"
    )
    assert config_lib.diff(ExperimentConfig(), changed) == {
        "train.batch_size": (16, 8),
        "model.neck.filters": (16, 8),
    }


def test_proxy_experiment_applies_the_proxy_sizes():
    base = config_lib.override(
        ExperimentConfig(),
        {
            "train.schedule": "step",
            "train.step_boundaries": [150],
            "train.warmup_steps": 10,
            "search.proxy.train_steps": 20,
            "search.proxy.image_size": 96,
            "search.proxy.repeats": 3,
            "search.proxy.filters": 8,
            "search.proxy.eval_steps": 2,
        },
    )
    child = config_lib.proxy_experiment(base)
    assert child.model.image_size == 96
    assert child.model.neck.repeats == 3
    assert child.model.neck.filters == child.model.head.num_filters == 8
    assert child.train.steps == 20
    assert child.train.warmup_steps == 10
    assert child.train.schedule == "cosine"  # its only boundary fell away
    assert child.train.step_boundaries == ()
    assert child.eval.steps == 2
    assert child.search == base.search


def test_halving_with_the_supernet_rater_is_a_config_error():
    with pytest.raises(ConfigError, match="search.rater: proxy"):
        config_lib.load_config(params_override="search.rungs.min_steps=10")
    config = config_lib.load_config(
        params_override="search.rater=proxy,search.rungs.min_steps=10"
    )
    assert config.search.rungs.min_steps == 10
