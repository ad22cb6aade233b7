"""Experiment configuration: frozen dataclasses are the schema.

`schema` holds `ExperimentConfig` and re-exports the sections (frozen
dataclasses), which live by concern with their value checks and allowed
choices: `model`, `data`, `training`, `search`, `fidelity`, on `checks`;
`loading` resolves, overrides, saves and compares configs. Everything
public is re-exported here, so callers use
`from nasfpn_tf import config as config_lib` alone.

The defaults describe the tiny CPU demo: `python -m nasfpn_tf.main` with no
flags runs a small complete search on generated data on a laptop CPU.
Paper-scale settings of NAS-FPN (Ghiasi, Lin, Pang, Le, CVPR 2019,
arXiv:1904.07392) live in `configs/*.yaml`.

A config is resolved as defaults <- each YAML file in order <- an override
string, then checked once: unknown keys fail with the valid keys of their
section and a close match, leaves are type-checked by their annotation, and
each section's `__post_init__` checks its values and their relations.

Example:
    config = load_config(
        ["configs/nasfpn_r50_640.yaml"], "train.batch_size=8"
    )
    save(config, "runs/r50")  # runs/r50/config.yaml
"""

from nasfpn_tf.config.loading import (
    CONFIG_FILENAME,
    check_batch,
    config_path,
    diff,
    from_dict,
    from_yaml,
    load_config,
    load_saved,
    override,
    parse_override,
    proxy_experiment,
    save,
    to_dict,
    to_yaml,
)
from nasfpn_tf.config.schema import (
    ACTIVATIONS,
    BACKBONES,
    BN_MODES,
    IMAGE_SIZE_MULTIPLE,
    MAX_PORT,
    NECK_TYPES,
    NMS_TYPES,
    PRECISIONS,
    RATERS,
    RUNG_REWARDS,
    SCHEDULES,
    SEARCH_ALGORITHMS,
    STRATEGIES,
    AnchorConfig,
    ConfigError,
    ControllerConfig,
    DataConfig,
    EvalConfig,
    ExperimentConfig,
    FidelityConfig,
    HalvingConfig,
    HeadConfig,
    ModelConfig,
    NeckConfig,
    NmsConfig,
    NormConfig,
    ObjectiveConfig,
    ProxyConfig,
    RuntimeConfig,
    SearchConfig,
    SpaceConfig,
    SupernetConfig,
    SyntheticConfig,
    TrainConfig,
)

__all__ = [
    "ACTIVATIONS",
    "BACKBONES",
    "BN_MODES",
    "CONFIG_FILENAME",
    "IMAGE_SIZE_MULTIPLE",
    "MAX_PORT",
    "NECK_TYPES",
    "NMS_TYPES",
    "PRECISIONS",
    "RATERS",
    "RUNG_REWARDS",
    "SCHEDULES",
    "SEARCH_ALGORITHMS",
    "STRATEGIES",
    "AnchorConfig",
    "ConfigError",
    "ControllerConfig",
    "DataConfig",
    "EvalConfig",
    "ExperimentConfig",
    "FidelityConfig",
    "HalvingConfig",
    "HeadConfig",
    "ModelConfig",
    "NeckConfig",
    "NmsConfig",
    "NormConfig",
    "ObjectiveConfig",
    "ProxyConfig",
    "RuntimeConfig",
    "SearchConfig",
    "SpaceConfig",
    "SupernetConfig",
    "SyntheticConfig",
    "TrainConfig",
    "check_batch",
    "config_path",
    "diff",
    "from_dict",
    "from_yaml",
    "load_config",
    "load_saved",
    "override",
    "parse_override",
    "proxy_experiment",
    "save",
    "to_dict",
    "to_yaml",
]
