"""``dataset.json``: what a converted data folder holds, for ``--data_dir``.

The converter writes it beside the records; ``python -m nasfpn_tf.main
--data_dir=DIR`` reads it and fills the config's data paths, COCO
annotation files, ``model.num_classes`` and ``data.class_names``. Paths are
kept relative to the folder, so it can be moved or copied to a bucket.

  {"version": 1,
   "categories": [{"id": 1, "name": "tree"}, ...],
   "num_classes": 2,
   "splits": {"train": {"file_pattern": "train-*-of-*.tfrecord",
                        "annotations": "train.json",
                        "num_images": 120, "num_boxes": 950}, ...}}
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

import tensorflow as tf

from nasfpn_tf import files
from nasfpn_tf.errors import UserError

DATASET_FILENAME = "dataset.json"
SUMMARY_FILENAME = "summary.json"
VERSION = 1
SPLITS = ("train", "heldout", "val")


class DatasetError(UserError, ValueError):
    """A data folder without a readable ``dataset.json``."""


@dataclasses.dataclass(frozen=True)
class SplitInfo:
    """One converted split.

    Attributes:
      file_pattern: glob of its TFRecord shards.
      annotations: its COCO JSON ground truth.
      num_images, num_boxes: what was written.
    """

    file_pattern: str
    annotations: str
    num_images: int
    num_boxes: int


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """A converted data set: its classes and splits.

    Attributes:
      categories: (id, name) pairs, ids >= 1, sorted by id.
      splits: (split name, SplitInfo) pairs, in SPLITS order.
    """

    categories: tuple[tuple[int, str], ...]
    splits: tuple[tuple[str, SplitInfo], ...]

    def __post_init__(self):
        ids = [i for i, _ in self.categories]
        if not ids:
            raise DatasetError("categories: no class")
        if min(ids) < 1 or len(set(ids)) != len(ids):
            raise DatasetError(
                f"categories: ids must be unique and >= 1; got {ids}"
            )
        unknown = [name for name, _ in self.splits if name not in SPLITS]
        if unknown:
            raise DatasetError(
                f"splits: unknown {unknown}; expected some of {SPLITS}"
            )

    @property
    def num_classes(self) -> int:
        """Classes as Model Garden counts them: the largest id + 1 (class
        0 is background)."""
        return max(i for i, _ in self.categories) + 1

    @property
    def class_names(self) -> tuple[str, ...]:
        """Names of classes 1..num_classes - 1; "" for an unused id."""
        names = dict(self.categories)
        return tuple(names.get(i, "") for i in range(1, self.num_classes))

    def split(self, name: str) -> SplitInfo | None:
        return dict(self.splits).get(name)

    def to_json(self) -> str:
        return json.dumps(
            {
                "version": VERSION,
                "categories": [
                    {"id": i, "name": n} for i, n in self.categories
                ],
                "num_classes": self.num_classes,
                "splits": {
                    name: dataclasses.asdict(info) for name, info in self.splits
                },
            },
            indent=1,
        )

    @classmethod
    def from_json(cls, text: str, source: str = "dataset.json") -> DatasetInfo:
        """Reads ``to_json``'s text; paths are kept as written.

        Raises:
          DatasetError: not valid JSON, another version or a missing or
            mistyped field (the message names ``source`` and the field).
        """
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise DatasetError(f"{source}: not valid JSON ({error})") from None
        if not isinstance(data, dict) or data.get("version") != VERSION:
            version = data.get("version") if isinstance(data, dict) else None
            raise DatasetError(
                f"{source}: expected version {VERSION}, got {version!r}"
            )
        try:
            categories = tuple(
                sorted(
                    (int(c["id"]), str(c["name"])) for c in data["categories"]
                )
            )
            splits = tuple(
                (name, SplitInfo(**data["splits"][name]))
                for name in SPLITS
                if name in data["splits"]
            )
            extra = set(data["splits"]) - set(SPLITS)
            if extra:
                raise DatasetError(f"unknown splits {sorted(extra)}")
            return cls(categories=categories, splits=splits)
        except (KeyError, TypeError, ValueError) as error:
            message = str(error).strip("'\"")
            raise DatasetError(f"{source}: {message}") from None

    def resolved(self, folder: str) -> DatasetInfo:
        """This info with relative paths joined to ``folder``."""
        splits = tuple(
            (
                name,
                dataclasses.replace(
                    info,
                    file_pattern=_join(folder, info.file_pattern),
                    annotations=_join(folder, info.annotations),
                ),
            )
            for name, info in self.splits
        )
        return dataclasses.replace(self, splits=splits)

    def config_overrides(self) -> dict[str, Any]:
        """Config keys this data set sets (dotted), for every split it has."""
        overrides: dict[str, Any] = {
            "model.num_classes": self.num_classes,
            "data.class_names": list(self.class_names),
        }
        for name, info in self.splits:
            overrides[f"data.{name}_path"] = info.file_pattern
            if name != "train":
                overrides[f"data.{name}_annotations"] = info.annotations
        return overrides


def save(info: DatasetInfo, folder: str) -> str:
    """Writes ``folder/dataset.json`` (paths inside ``folder`` made
    relative); returns its path."""
    splits = tuple(
        (
            name,
            dataclasses.replace(
                info_,
                file_pattern=_relative(folder, info_.file_pattern),
                annotations=_relative(folder, info_.annotations),
            ),
        )
        for name, info_ in info.splits
    )
    path = os.path.join(folder, DATASET_FILENAME)
    text = dataclasses.replace(info, splits=splits).to_json() + "\n"
    files.write_atomic(path, text)
    return path


def load(folder: str) -> DatasetInfo:
    """Reads ``folder/dataset.json``, paths joined to ``folder``.

    Raises:
      DatasetError: no such folder or file, or an invalid one.
    """
    path = os.path.join(folder, DATASET_FILENAME)
    if not tf.io.gfile.exists(path):
        what = (
            "no such folder"
            if not tf.io.gfile.isdir(folder)
            else (f"no {DATASET_FILENAME}")
        )
        raise DatasetError(
            f"--data_dir={folder}: {what}; write one with "
            "python -m nasfpn_tf.data.convert --output_dir=..."
        )
    with tf.io.gfile.GFile(path) as f:
        text = f.read()
    return DatasetInfo.from_json(text, path).resolved(folder)


def save_summary(stats: Mapping[str, Mapping[str, Any]], folder: str) -> str:
    """Writes ``folder/summary.json``: split -> {"counts", "examples"}."""
    path = os.path.join(folder, SUMMARY_FILENAME)
    files.write_atomic(path, json.dumps(dict(stats), indent=1) + "\n")
    return path


def _join(folder: str, path: str) -> str:
    if not path or "://" in path or os.path.isabs(path):
        return path
    return os.path.join(folder, path)


def _relative(folder: str, path: str) -> str:
    prefix = folder.rstrip("/") + "/"
    return path.removeprefix(prefix)
