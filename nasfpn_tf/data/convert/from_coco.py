"""COCO JSON splits -> TFRecords (read by ``nasfpn_tf.data.sources``)."""

from __future__ import annotations

from collections.abc import Mapping

from nasfpn_tf.data.convert.writing import SplitOutput, convert_splits
from nasfpn_tf.data.sources import ConversionStats, read_coco


def convert_coco(
    output_dir: str,
    sources: Mapping[str, tuple[str, str]],
    **kwargs,
) -> dict[str, SplitOutput]:
    """Converts COCO splits: split name -> (annotations JSON, image folder).

    Keyword arguments are those of ``convert_splits``.
    """
    stats = {split: ConversionStats() for split in sources}
    sets = {
        split: read_coco(annotations, images, stats[split])
        for split, (annotations, images) in sources.items()
    }
    return convert_splits(output_dir, sets, stats=stats, **kwargs)
