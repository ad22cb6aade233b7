"""YOLO text splits -> TFRecords (read by ``nasfpn_tf.data.yolo``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from nasfpn_tf.data import yolo
from nasfpn_tf.data.convert.writing import SplitOutput, convert_splits
from nasfpn_tf.data.sources import (
    ConversionStats,
    assign_image_ids,
    load_label_map,
)


def convert_yolo(
    output_dir: str,
    sources: Mapping[str, Sequence[str]],
    label_map: Mapping[str, int] | None = None,
    **kwargs,
) -> dict[str, SplitOutput]:
    """Converts YOLO splits: split name -> [image folder].

    Args:
      output_dir: destination folder.
      sources: per split, folders of images (labels beside them or in the
        matching ``labels`` folder; see ``yolo.labels_dir``).
      label_map: class name -> id in class index order; None reads the
        class file found near the first folder (``yolo.find_class_file``).
      **kwargs: those of ``convert_splits``.
    """
    if label_map is None:
        first = next(d for dirs in sources.values() for d in dirs)
        label_map = load_label_map(yolo.find_class_file(first))
    stats = {split: ConversionStats() for split in sources}
    image_ids = assign_image_ids(
        name
        for dirs in sources.values()
        for folder in dirs
        for name, _, _ in yolo.list_yolo(folder)
    )
    sets = {
        split: yolo.read_yolo(dirs, label_map, image_ids, stats[split])
        for split, dirs in sources.items()
    }
    return convert_splits(output_dir, sets, stats=stats, **kwargs)
