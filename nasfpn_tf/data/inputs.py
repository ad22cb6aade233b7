"""What a run reads: the TFRecords of each split and their tf.data input.

A split whose path is empty in `config.data` comes from the generated
set (`nasfpn_tf.data.synthetic`). It is written once per set of generation
parameters into a shared cache, `$NASFPN_TF_DATA_DIR` or else
`~/.cache/nasfpn_tf/synthetic`, under a folder named after the parameters
(e.g. `64px-2cls-64-16-16-seed0`), so all the children of a search and
every rerun read one copy. A file lock lets parallel trials generate it
without tearing each other's files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
from collections.abc import Callable, Iterator

import tensorflow as tf
from absl import logging
from official.core import input_reader

from nasfpn_tf import config as config_lib
from nasfpn_tf.data import pipeline, synthetic

DATA_DIR_ENV = "NASFPN_TF_DATA_DIR"
SPLITS = ("train", "heldout", "val")


@dataclasses.dataclass(frozen=True)
class SplitData:
    """Where one split lives.

    Attributes:
        file_pattern: TFRecord glob.
        annotations: COCO JSON of the split; "" lets the evaluator build
            the ground truth from the records.
        synthetic: whether it is the generated set.
    """

    file_pattern: str
    annotations: str
    synthetic: bool = False


def data_root() -> str:
    """Folder that caches generated sets (`$NASFPN_TF_DATA_DIR` wins)."""
    root = os.environ.get(DATA_DIR_ENV)
    if root:
        return root
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(
        os.path.expanduser("~"), ".cache"
    )
    return os.path.join(cache, "nasfpn_tf", "synthetic")


def synthetic_dir(config: config_lib.ExperimentConfig) -> str:
    """The cache folder of the generated set `config` asks for."""
    synth = config.data.synthetic
    name = (
        f"v{synthetic.GENERATOR_VERSION}-{config.model.image_size}px-{synth.num_classes}cls-"
        f"{synth.num_train}-{synth.num_heldout}-{synth.num_val}-"
        f"seed{synth.seed}"
    )
    return os.path.join(data_root(), name)


def resolve_split(config: config_lib.ExperimentConfig, split: str) -> SplitData:
    """The files of `split`, generating the synthetic set if it is needed.

    Args:
        config: the run's config.
        split: "train", "heldout" or "val".

    Raises:
        ValueError: an unknown split.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}; got {split!r}.")
    data = config.data
    path = getattr(data, f"{split}_path")
    if path:
        annotations = {
            "train": "",
            "heldout": data.heldout_annotations,
            "val": data.val_annotations,
        }[split]
        return SplitData(path, annotations)
    output = generate_synthetic(config)[split]
    return SplitData(output.file_pattern, output.annotations, synthetic=True)


def check_split(split: str, data: SplitData) -> None:
    """Fails before any work when a split's files do not exist.

    Args:
        split: "train", "heldout" or "val" (names the config keys).
        data: from `resolve_split`.

    Raises:
        config_lib.ConfigError: naming the key and the pattern or file
            that is missing.
    """
    if data.synthetic:
        return
    key = f"data.{split}_path"
    try:
        files = input_reader.match_files(data.file_pattern)
    except ValueError:
        raise config_lib.ConfigError(
            f"{key} {data.file_pattern!r} matches no file."
        ) from None
    missing = [path for path in files if not tf.io.gfile.exists(path)]
    if missing:
        raise config_lib.ConfigError(
            f"{key} {data.file_pattern!r} names missing file(s): "
            f"{', '.join(missing)}."
        )
    if data.annotations and not tf.io.gfile.exists(data.annotations):
        raise config_lib.ConfigError(
            f"data.{split}_annotations {data.annotations!r}: no such file."
        )


def no_examples_error(
    split: str, data: SplitData
) -> pipeline.UnusableDataError:
    """The error for a split none of whose records is usable.

    Reads the split once more (`pipeline.audit_records`) to say why.
    """
    audit = pipeline.audit_records(data.file_pattern)
    corrupt = ", ".join(audit.corrupt_files) or "none"
    return pipeline.UnusableDataError(
        f"data.{split}_path {data.file_pattern!r} holds no usable example: "
        f"{audit.files} file(s), {audit.records} intact record(s) of which "
        f"{audit.undecodable} do not decode; corrupt file(s): {corrupt}. "
        "Convert the data again (python -m nasfpn_tf.data.convert)."
    )


def generate_synthetic(config: config_lib.ExperimentConfig) -> dict:
    """Writes (or finds) the generated set; returns split -> SplitOutput."""
    synth = config.data.synthetic
    out_dir = synthetic_dir(config)
    with _locked(out_dir):
        return synthetic.generate_tfrecords(
            out_dir,
            {
                "train": synth.num_train,
                "heldout": synth.num_heldout,
                "val": synth.num_val,
            },
            image_size=config.model.image_size,
            num_classes=synth.num_classes,
            seed=synth.seed,
        )


@contextlib.contextmanager
def _locked(out_dir: str) -> Iterator[None]:
    """Holds an exclusive lock on `out_dir` across processes."""
    os.makedirs(os.path.dirname(out_dir) or ".", exist_ok=True)
    with open(f"{out_dir}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def dataset_fn(
    config: config_lib.ExperimentConfig,
    file_pattern: str,
    *,
    is_training: bool,
    seed: int | None = None,
    drop_remainder: bool = True,
) -> Callable[[tf.distribute.InputContext | None], tf.data.Dataset]:
    """A function of the input context giving one pipeline's batches.

    For `strategy.distribute_datasets_from_function`: each input pipeline
    reads its shard of the files at the per-replica batch size.

    Args:
        config: the run's config (`pipeline.InputConfig.from_experiment`
            takes model sizes, anchors, augmentation and reading from it).
        file_pattern: TFRecord glob of the split.
        is_training: shuffle, repeat and augment; else one ordered pass
            with ground truth in the labels.
        seed: shuffle seed (training).
        drop_remainder: drop a final partial batch (static shapes).
    """
    input_config = pipeline.InputConfig.from_experiment(config)
    batch_size = (
        config.train.batch_size if is_training else config.eval.batch_size
    )

    def make(input_context=None) -> tf.data.Dataset:
        return pipeline.build_dataset(
            file_pattern,
            input_config,
            is_training=is_training,
            batch_size=batch_size,
            seed=seed,
            drop_remainder=drop_remainder,
            input_context=input_context,
        )

    return make


def log_split(split: str, data: SplitData) -> None:
    logging.info(
        "%s split: %s%s",
        split,
        data.file_pattern,
        " (generated)" if data.synthetic else "",
    )
