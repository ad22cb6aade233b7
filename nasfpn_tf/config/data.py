"""Config sections of the input data: `data` and its generated set."""

from __future__ import annotations

import dataclasses

from nasfpn_tf.config.checks import ConfigError, _non_negative, _positive


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """The generated data set used when no TFRecord paths are given.

    `num_classes` counts object classes only (ids 1..num_classes).
    """

    num_train: int = 512
    num_heldout: int = 128
    num_val: int = 128
    num_classes: int = 2
    seed: int = 0

    def __post_init__(self):
        for name in ("num_train", "num_heldout", "num_val", "num_classes"):
            _positive(f"data.synthetic.{name}", getattr(self, name))
        _non_negative("data.synthetic.seed", self.seed)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Input data and augmentation.

    Attributes:
        train_path: TFRecord glob of training tf.Examples; "" generates
            the synthetic set. The same holds for `val_path` (final
            evaluation) and `heldout_path` (the search's reward split,
            carved from the training images as in the paper).
        val_annotations: COCO JSON of `val_path`; "" builds the ground
            truth from the records themselves.
        heldout_annotations: COCO JSON of `heldout_path`; "" as above.
        class_names: names of classes 1..model.num_classes - 1 of your
            own data ("" for an unused id), set by `--data_dir` from the
            converter's dataset.json; they name per-class AP, exported
            models' classes and drawn predictions. Empty for the
            generated set.
        max_instances: boxes per image after padding (static shapes).
        aug_scale_min: smallest random rescale in training.
        aug_scale_max: largest random rescale in training.
        aug_rand_hflip: random horizontal flips in training.
        shuffle_buffer: tf.data shuffle buffer of training examples.
        cache: cache decoded examples in memory.
        autotune: let tf.data tune its parallelism and buffers as it
            runs. A search's children turn it off (`proxy_experiment`):
            deleting an iterator waits for the tuning thread's sleep (up
            to a minute), which a short child pays at its end.
        deterministic_augmentation: parse training images one at a time,
            so the random flip and scale each image gets follow from the
            seed (the parser's random ops are stateful: in a parallel map
            the draws go to whichever image asks first). A search's
            children set it (`proxy_experiment`): a child trained through
            rungs in one session ends with a straight child's weights,
            and one seed gives one child. On 2 busy cores, 40 proxy steps
            (128 px, batch 16) took as long either way.
    """

    train_path: str = ""
    val_path: str = ""
    heldout_path: str = ""
    val_annotations: str = ""
    heldout_annotations: str = ""
    class_names: tuple[str, ...] = ()
    max_instances: int = 100
    aug_scale_min: float = 0.8
    aug_scale_max: float = 1.2
    aug_rand_hflip: bool = True
    shuffle_buffer: int = 64
    cache: bool = False
    autotune: bool = True
    deterministic_augmentation: bool = False
    synthetic: SyntheticConfig = dataclasses.field(
        default_factory=SyntheticConfig
    )

    def __post_init__(self):
        _positive("data.max_instances", self.max_instances)
        _positive("data.aug_scale_min", self.aug_scale_min)
        if self.aug_scale_min > self.aug_scale_max:
            raise ConfigError(
                f"data.aug_scale_min ({self.aug_scale_min}) must not exceed "
                f"data.aug_scale_max ({self.aug_scale_max})."
            )
        _positive("data.shuffle_buffer", self.shuffle_buffer)

    @property
    def uses_synthetic(self) -> bool:
        """True when any split comes from the generated set."""
        return not (self.train_path and self.val_path and self.heldout_path)
