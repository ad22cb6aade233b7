"""Experiment config schema: frozen dataclasses and their value checks.

The defaults describe the tiny CPU demo: `python -m nasfpn_tf.main` with no
flags runs a small complete search on generated data on a laptop CPU.
Paper-scale settings of NAS-FPN (Ghiasi, Lin, Pang, Le, CVPR 2019,
arXiv:1904.07392) live in `configs/*.yaml`.

The sections live by concern: `model` (the detector), `data`, `training`
(train, eval, runtime), `search` (space, controller, proxy, rungs,
objective, supernet) and `fidelity`, on the shared checks of `checks`.
Each section's `__post_init__` checks its values and their relations;
`ExperimentConfig.__post_init__` here checks relations across sections.
Every name of the sections is re-exported, so `schema.X` reads as before.
"""

from __future__ import annotations

import dataclasses

from nasfpn_tf.arch import space as space_lib
from nasfpn_tf.config.checks import (  # noqa: F401 (re-exported)
    IMAGE_SIZE_MULTIPLE,
    ConfigError,
)
from nasfpn_tf.config.data import (  # noqa: F401 (re-exported)
    DataConfig,
    SyntheticConfig,
)
from nasfpn_tf.config.fidelity import FidelityConfig
from nasfpn_tf.config.model import (  # noqa: F401 (re-exported)
    ACTIVATIONS,
    BACKBONES,
    NECK_TYPES,
    NMS_TYPES,
    AnchorConfig,
    HeadConfig,
    ModelConfig,
    NeckConfig,
    NmsConfig,
    NormConfig,
)
from nasfpn_tf.config.search import (  # noqa: F401 (re-exported)
    BN_MODES,
    MAX_PORT,
    OBJECTIVE_COSTS,
    OBJECTIVE_KINDS,
    RATERS,
    RUNG_REWARDS,
    SEARCH_ALGORITHMS,
    SUPERNET_SAMPLING,
    ControllerConfig,
    HalvingConfig,
    ObjectiveConfig,
    ProxyConfig,
    SearchConfig,
    SpaceConfig,
    SupernetConfig,
)
from nasfpn_tf.config.training import (  # noqa: F401 (re-exported)
    PRECISIONS,
    SCHEDULES,
    STRATEGIES,
    EvalConfig,
    RuntimeConfig,
    TrainConfig,
)


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """Everything a run decides; saved as `model_dir/config.yaml`."""

    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    runtime: RuntimeConfig = dataclasses.field(default_factory=RuntimeConfig)
    search: SearchConfig = dataclasses.field(default_factory=SearchConfig)
    fidelity: FidelityConfig = dataclasses.field(default_factory=FidelityConfig)

    def __post_init__(self):
        model, data = self.model, self.data
        if data.class_names and len(data.class_names) != model.num_classes - 1:
            raise ConfigError(
                f"data.class_names has {len(data.class_names)} names but "
                f"model.num_classes ({model.num_classes}) counts "
                f"{model.num_classes - 1} classes besides background."
            )
        # Class names say the data is the user's (a split left without a
        # path is refused by the command line, not generated).
        if (
            data.uses_synthetic
            and not data.class_names
            and model.num_classes <= data.synthetic.num_classes
        ):
            raise ConfigError(
                f"model.num_classes ({model.num_classes}) must exceed "
                f"data.synthetic.num_classes ({data.synthetic.num_classes}) "
                "by at least one: it also counts background."
            )
        try:
            space_lib.SearchSpace.from_config(
                self.search.space,
                min_level=model.min_level,
                max_level=model.max_level,
            )
        except space_lib.SpaceError as error:
            raise ConfigError(f"search.space.{error}.") from None
        for boundary in self.train.step_boundaries:
            if boundary >= self.train.steps:
                raise ConfigError(
                    f"train.step_boundaries has {boundary}, not below "
                    f"train.steps ({self.train.steps})."
                )
        if (
            self.runtime.strategy == "tpu"
            and self.train.mixed_precision == "mixed_float16"
        ):
            raise ConfigError(
                "train.mixed_precision 'mixed_float16' does not run on TPU; "
                "use 'mixed_bfloat16'."
            )
