"""tf.data input pipeline for RetinaNet with a NAS-FPN neck.

Decoding and target assignment are Model Garden's: ``TfExampleDecoder``
reads the records written by :mod:`nasfpn_tf.data.convert` and RetinaNet's
``Parser`` resizes (with scale jitter), flips, pads, builds anchors
(``official.vision.ops.anchor``) and labels them, yielding ``(images,
labels)`` exactly as Model Garden's RetinaNet task consumes them.

Sizes. The parser scales each image to fit ``image_size`` (keeping its
aspect ratio) and zero-pads bottom/right to the next multiple of
``2**max_level`` (``padded_image_size``): 640 stays 640 at max_level 7, 320
becomes 384 with the picture in the top-left 320x320. Padded, every level
of a NAS-FPN neck (Ghiasi et al., CVPR 2019, arXiv:1904.07392) is exactly
half the one below and each anchor sits on its feature cell. Unpadded
(``pad=False``), Model Garden's anchors for 320 put ceil(320 / 128) = 3 cells
at P7 with a 106.7 px stride, while the network's P7 cells are 128 px apart:
it runs (the neck crops when upsampling), but the coarse anchors no longer
line up with their feature cells.

Why not Model Garden's ``InputReader``: it caches parsed examples, which
freezes the random flip and scale of the first epoch; here the serialized
records are cached and augmentation stays fresh every epoch. Records that
cannot be read (truncated or corrupt TFRecord files: the rest of that file is
lost) and images that cannot be decoded are skipped
(``Dataset.ignore_errors``) instead of failing a training step. Each skip
logs a TF warning (hidden when ``TF_CPP_MIN_LOG_LEVEL`` >= 2); their count
comes from ``audit_records``, one eager pass that logs a summary.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import tensorflow as tf
from absl import logging
from official.core import input_reader
from official.vision.dataloaders import retinanet_input, tf_example_decoder
from official.vision.ops import preprocess_ops

from nasfpn_tf import config as config_lib
from nasfpn_tf.errors import UserError

DTYPES = ("float32", "bfloat16", "float16")
# Pipeline image dtype of each mixed precision policy (Model Garden's
# parser casts the image; the model's first layer takes that dtype).
IMAGE_DTYPES = {
    "float32": "float32",
    "mixed_bfloat16": "bfloat16",
    "mixed_float16": "float16",
}
# Files read in parallel; more only costs memory on the hosts.
MAX_PARALLEL_FILES = 16
# The experiment config's defaults are the pipeline's (see `InputConfig`).
_DEFAULT = config_lib.ExperimentConfig()


class UnusableDataError(UserError, ValueError):
    """Not one record of a split can be read and decoded."""


@dataclasses.dataclass(frozen=True)
class InputConfig:
    """What turns serialized examples into (image, labels) and how they
    are read: the experiment config's input settings in one value.

    `from_experiment` derives it from an `ExperimentConfig`; the defaults
    are those of the default experiment (`configs/tiny.yaml`), so the
    library and the command line read data alike.

    Attributes:
      image_size: target (height, width) in pixels, or one int for a
        square (``model.image_size``).
      min_level, max_level: pyramid levels that get anchors.
      num_scales: anchor scales per octave (``model.anchor``, as the rest
        of the anchor settings).
      aspect_ratios: anchor width/height ratios.
      anchor_size: anchor side as a multiple of the level's stride.
      match_threshold, unmatched_threshold: IoU above which an anchor is
        positive and below which it is negative (ignored in between).
      max_num_instances: boxes kept (and padded to) in eval ground truth
        (``data.max_instances``).
      aug_scale_min, aug_scale_max: random scale jitter range (training
        only: Model Garden's evaluation parser neither jitters nor flips).
      aug_rand_hflip: random horizontal flip (training).
      shuffle_buffer: records in the shuffle buffer (training).
      cache: keep the serialized records in memory after the first pass.
      autotune: tf.data autotuning (``data.autotune``).
      deterministic_augmentation: parse training images one at a time, so
        their random flip and scale follow from the seed
        (``data.deterministic_augmentation``).
      dtype: image dtype, ``"bfloat16"`` on TPU (``IMAGE_DTYPES`` of
        ``train.mixed_precision``).
      pad: pad to a multiple of 2**max_level (see the module docstring).
        Not a config key: export and prediction always pad, so a model
        trained unpadded would not see at serving what it trained on.
    """

    image_size: int | tuple[int, int] = _DEFAULT.model.image_size
    min_level: int = _DEFAULT.model.min_level
    max_level: int = _DEFAULT.model.max_level
    num_scales: int = _DEFAULT.model.anchor.num_scales
    aspect_ratios: tuple[float, ...] = _DEFAULT.model.anchor.aspect_ratios
    anchor_size: float = _DEFAULT.model.anchor.anchor_size
    match_threshold: float = _DEFAULT.model.anchor.match_threshold
    unmatched_threshold: float = _DEFAULT.model.anchor.unmatched_threshold
    max_num_instances: int = _DEFAULT.data.max_instances
    aug_scale_min: float = _DEFAULT.data.aug_scale_min
    aug_scale_max: float = _DEFAULT.data.aug_scale_max
    aug_rand_hflip: bool = _DEFAULT.data.aug_rand_hflip
    shuffle_buffer: int = _DEFAULT.data.shuffle_buffer
    cache: bool = _DEFAULT.data.cache
    autotune: bool = _DEFAULT.data.autotune
    deterministic_augmentation: bool = _DEFAULT.data.deterministic_augmentation
    dtype: str = IMAGE_DTYPES[_DEFAULT.train.mixed_precision]
    pad: bool = True

    @classmethod
    def from_experiment(
        cls, config: config_lib.ExperimentConfig
    ) -> InputConfig:
        """The input settings of an experiment config."""
        model, anchor, data = config.model, config.model.anchor, config.data
        return cls(
            image_size=model.image_size,
            min_level=model.min_level,
            max_level=model.max_level,
            num_scales=anchor.num_scales,
            aspect_ratios=tuple(anchor.aspect_ratios),
            anchor_size=anchor.anchor_size,
            match_threshold=anchor.match_threshold,
            unmatched_threshold=anchor.unmatched_threshold,
            max_num_instances=data.max_instances,
            aug_scale_min=data.aug_scale_min,
            aug_scale_max=data.aug_scale_max,
            aug_rand_hflip=data.aug_rand_hflip,
            shuffle_buffer=data.shuffle_buffer,
            cache=data.cache,
            autotune=data.autotune,
            deterministic_augmentation=data.deterministic_augmentation,
            dtype=IMAGE_DTYPES[config.train.mixed_precision],
        )

    def __post_init__(self):
        size = self.image_size
        if isinstance(size, int):
            size = (size, size)
        size = tuple(size)
        if len(size) != 2 or not all(
            isinstance(s, int) and s > 0 for s in size
        ):
            raise ValueError(
                f"image_size: expected a positive int or (height, width), got "
                f"{self.image_size!r}"
            )
        object.__setattr__(self, "image_size", size)
        object.__setattr__(self, "aspect_ratios", tuple(self.aspect_ratios))
        if not 1 <= self.min_level <= self.max_level:
            raise ValueError(
                f"levels: expected 1 <= min_level <= max_level, got "
                f"min_level={self.min_level}, max_level={self.max_level}"
            )
        if self.num_scales < 1 or not self.aspect_ratios:
            raise ValueError(
                f"anchors: expected num_scales >= 1 and aspect ratios, got "
                f"{self.num_scales}, {self.aspect_ratios}"
            )
        if min(self.aspect_ratios) <= 0 or self.anchor_size <= 0:
            raise ValueError(
                f"anchors: aspect ratios and anchor_size must be > 0, got "
                f"{self.aspect_ratios}, {self.anchor_size}"
            )
        if self.max_num_instances < 1:
            raise ValueError(
                f"max_num_instances: expected >= 1, got "
                f"{self.max_num_instances}"
            )
        if not 0 < self.aug_scale_min <= self.aug_scale_max:
            raise ValueError(
                f"scale jitter: expected 0 < aug_scale_min <= aug_scale_max, "
                f"got {self.aug_scale_min}, {self.aug_scale_max}"
            )
        if not 0 <= self.unmatched_threshold <= self.match_threshold <= 1:
            raise ValueError(
                f"thresholds: expected 0 <= unmatched <= match <= 1, got "
                f"{self.unmatched_threshold}, {self.match_threshold}"
            )
        if self.shuffle_buffer < 1:
            raise ValueError(
                f"shuffle_buffer: expected >= 1, got {self.shuffle_buffer}"
            )
        if self.dtype not in DTYPES:
            raise ValueError(
                f"dtype: expected one of {DTYPES}, got {self.dtype}"
            )

    @property
    def padded_size(self) -> tuple[int, int]:
        """(height, width) of the images the pipeline yields."""
        return padded_image_size(self.image_size, self.max_level, self.pad)


def padded_image_size(
    image_size: int | Sequence[int], max_level: int, pad: bool = True
) -> tuple[int, int]:
    """The model's input size: ``image_size`` padded to 2**max_level.

    Args:
      image_size: an int (square) or (height, width).
      max_level: coarsest pyramid level.
      pad: False returns ``image_size`` unchanged.

    Returns:
      (height, width), e.g. (384, 384) for 320 at max_level 7.
    """
    size = [image_size] * 2 if isinstance(image_size, int) else list(image_size)
    if not pad:
        return tuple(size)
    return tuple(preprocess_ops.compute_padded_size(size, 2**max_level))


def make_parser(config: InputConfig) -> retinanet_input.Parser:
    """Model Garden's RetinaNet parser for ``config``."""
    return retinanet_input.Parser(
        output_size=list(config.image_size),
        min_level=config.min_level,
        max_level=config.max_level,
        num_scales=config.num_scales,
        aspect_ratios=list(config.aspect_ratios),
        anchor_size=config.anchor_size,
        match_threshold=config.match_threshold,
        unmatched_threshold=config.unmatched_threshold,
        aug_rand_hflip=config.aug_rand_hflip,
        aug_scale_min=config.aug_scale_min,
        aug_scale_max=config.aug_scale_max,
        skip_crowd_during_training=True,
        max_num_instances=config.max_num_instances,
        dtype=config.dtype,
        pad=config.pad,
        keep_aspect_ratio=True,
    )


def make_parse_fn(
    config: InputConfig, is_training: bool
) -> Callable[[tf.Tensor], tuple[tf.Tensor, dict]]:
    """serialized tf.Example -> (image, labels), eager or inside tf.data.

    Returns:
      A function of a scalar string tensor returning
      image: [H, W, 3] ``config.dtype``, normalised, H, W = padded_size.
      labels: ``cls_targets`` / ``box_targets``: level key -> [H_l, W_l, A]
        int32 / [H_l, W_l, 4 A] float32; ``anchor_boxes``: level key ->
        [H_l, W_l, 4 A] yxyx in pixels of the padded image;
        ``cls_weights`` / ``box_weights``: [num_anchors] float32;
        ``image_info``: [4, 2] (original, scaled size, scale, offset);
        eval only: ``groundtruths`` with boxes [max_num_instances, 4] yxyx
        in original pixels, padded with -1.
    """
    decoder = tf_example_decoder.TfExampleDecoder()
    parse = make_parser(config).parse_fn(is_training)

    # Model Garden's decoder and parser are graph code already (tf.cond,
    # no Python control flow on tensors): converting them with AutoGraph
    # would only cost seconds per trace.
    @tf.autograph.experimental.do_not_convert
    def parse_fn(serialized: tf.Tensor):
        return parse(decoder.decode(serialized))

    return parse_fn


def build_dataset(
    file_pattern: str | Sequence[str],
    config: InputConfig | None = None,
    *,
    is_training: bool,
    batch_size: int,
    seed: int | None = None,
    drop_remainder: bool = True,
    skip_errors: bool = True,
    input_context: tf.distribute.InputContext | None = None,
) -> tf.data.Dataset:
    """Batched (images, labels) for training or evaluation.

    Training shuffles files and records, repeats forever and augments only
    there (flip, scale jitter); when not one record of a pass is usable,
    the training dataset ends instead (nothing to repeat). Evaluation
    reads once in order and adds ``labels["groundtruths"]``. Every shape
    is static when ``drop_remainder`` (TPU); evaluation with
    ``drop_remainder`` drops the last ``num_images % batch_size`` images,
    so pass False off TPU.

    Args:
      file_pattern: TFRecord path(s), globs or comma-separated lists.
      config: sizes, anchors, augmentation, shuffle buffer, cache and
        dtype; None takes ``InputConfig()``'s defaults.
      is_training: training or evaluation behaviour.
      batch_size: global batch size; split over replicas by
        ``input_context``.
      seed: shuffle seed; also makes the element order deterministic
        (the parser's random flip and scale come from stateful ops in a
        parallel map, so which image gets which draw may still vary,
        unless ``config.deterministic_augmentation``).
      drop_remainder: drop a final partial batch.
      skip_errors: skip unreadable records and undecodable images with a
        warning instead of raising.
      input_context: from ``strategy.distribute_datasets_from_function``:
        shards the input per host and sets the per-replica batch.

    Returns:
      A dataset of (images [B, H, W, 3], labels) with B the per-replica
      batch and labels batched as in ``make_parse_fn``.

    Raises:
      ValueError: a bad argument, or a pattern that matches no file.
    """
    config = config if config is not None else InputConfig()
    per_replica_batch = _per_replica_batch(batch_size, input_context)
    # Without a seed, training order may follow whichever file is ready.
    deterministic = not is_training or seed is not None
    records = read_records(
        file_pattern,
        is_training=is_training,
        seed=seed,
        skip_errors=skip_errors,
        input_context=input_context,
    )
    records = _cache_and_shuffle(records, config, is_training, seed)
    examples = _parse(records, config, is_training, skip_errors)
    return _batch(
        examples,
        per_replica_batch,
        drop_remainder,
        deterministic,
        autotune=config.autotune,
    )


def _per_replica_batch(
    batch_size: int, input_context: tf.distribute.InputContext | None
) -> int:
    if batch_size < 1:
        raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
    if input_context is None:
        return batch_size
    return input_context.get_per_replica_batch_size(batch_size)


def _cache_and_shuffle(
    records: tf.data.Dataset,
    config: InputConfig,
    is_training: bool,
    seed: int | None,
) -> tf.data.Dataset:
    """Caches the serialized records, not parsed ones, so augmentation
    stays fresh every epoch; training shuffles them."""
    if config.cache:
        records = records.cache()
    if is_training:
        records = records.shuffle(config.shuffle_buffer, seed=seed)
    return records


def _parse(
    records: tf.data.Dataset,
    config: InputConfig,
    is_training: bool,
    skip_errors: bool,
) -> tf.data.Dataset:
    """(image, labels) per record; training repeats."""
    one_at_a_time = is_training and config.deterministic_augmentation
    examples = records.map(
        make_parse_fn(config, is_training),
        # None: in order, so each image's random draws follow the seed.
        num_parallel_calls=None if one_at_a_time else tf.data.AUTOTUNE,
    )
    if skip_errors:
        examples = examples.ignore_errors(log_warning=True)
    if is_training:
        # Repeat after skipping: an epoch that yields nothing ends the
        # repetition (tf.data's rule), so a split without one usable
        # example ends the dataset instead of looping forever.
        examples = examples.repeat()
    return examples


def _batch(
    examples: tf.data.Dataset,
    batch_size: int,
    drop_remainder: bool,
    deterministic: bool,
    autotune: bool = True,
) -> tf.data.Dataset:
    batches = examples.batch(batch_size, drop_remainder=drop_remainder)
    options = tf.data.Options()
    options.deterministic = deterministic
    # Autotuning's model thread sleeps between optimisations (periods
    # doubling up to a minute) and deleting an iterator waits for it: a
    # search child's clear_session + gc.collect waited 7-30 s for the
    # training iterator. Without it, parallel calls and prefetch left at
    # AUTOTUNE use the cores' count; the training steps of a child on one
    # core were no slower (benchmarks/search_overhead.py --breakdown).
    options.autotune.enabled = autotune
    return batches.with_options(options).prefetch(tf.data.AUTOTUNE)


def read_records(
    file_pattern: str | Sequence[str],
    *,
    is_training: bool = False,
    seed: int | None = None,
    skip_errors: bool = True,
    input_context: tf.distribute.InputContext | None = None,
) -> tf.data.Dataset:
    """Serialized records of the matched files, sharded per input pipeline.

    Files are sharded when each pipeline gets at least one, records
    otherwise; training shuffles the file order every epoch.
    """
    files = input_reader.match_files(file_pattern)
    num_pipelines = input_context.num_input_pipelines if input_context else 1
    pipeline_id = input_context.input_pipeline_id if input_context else 0
    shard_files = num_pipelines > 1 and len(files) >= num_pipelines
    dataset = tf.data.Dataset.from_tensor_slices(files)
    if shard_files:
        dataset = dataset.shard(num_pipelines, pipeline_id)
    if is_training:
        dataset = dataset.shuffle(len(files), seed=seed)

    def read(path):
        records = tf.data.TFRecordDataset(path)
        return (
            records.ignore_errors(log_warning=True) if skip_errors else records
        )

    records = dataset.interleave(
        read,
        cycle_length=min(len(files), MAX_PARALLEL_FILES),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=not is_training or seed is not None,
    )
    if num_pipelines > 1 and not shard_files:
        records = records.shard(num_pipelines, pipeline_id)
    return records


@dataclasses.dataclass(frozen=True)
class RecordAudit:
    """What ``audit_records`` found.

    Attributes:
      files: files read.
      records: records read intact.
      undecodable: intact records whose example or image does not decode.
      corrupt_files: files with a truncated or corrupt record (the rest of
        each such file is unreadable).
    """

    files: int
    records: int
    undecodable: int
    corrupt_files: tuple[str, ...]

    @property
    def usable(self) -> int:
        return self.records - self.undecodable


def audit_records(file_pattern: str | Sequence[str]) -> RecordAudit:
    """Reads every record eagerly and counts what the pipeline would skip.

    A warning names the corrupt files and the count of undecodable records.
    Costs one pass over the data; meant for checks before long runs.
    """
    decoder = tf_example_decoder.TfExampleDecoder()
    files = input_reader.match_files(file_pattern)
    records = undecodable = 0
    corrupt = []
    for path in files:
        iterator = iter(tf.data.TFRecordDataset(path))
        while True:
            try:
                serialized = next(iterator)
            except StopIteration:
                break
            except tf.errors.DataLossError:
                corrupt.append(path)
                break
            records += 1
            try:
                decoder.decode(serialized)
            except (tf.errors.InvalidArgumentError, tf.errors.UnknownError):
                undecodable += 1
    audit = RecordAudit(len(files), records, undecodable, tuple(corrupt))
    if corrupt or undecodable:
        logging.warning(
            "Skipping %d undecodable record(s) of %d, and the unreadable rest "
            "of %d corrupt file(s): %s",
            undecodable,
            records,
            len(corrupt),
            ", ".join(corrupt) or "none",
        )
    return audit
