"""Pascal VOC XML splits -> TFRecords (read by ``nasfpn_tf.data.voc``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from nasfpn_tf.data import voc
from nasfpn_tf.data.convert.writing import SplitOutput, convert_splits
from nasfpn_tf.data.sources import (
    ConversionStats,
    SourceError,
    assign_image_ids,
)


def convert_voc(
    output_dir: str,
    sources: Mapping[str, Sequence[tuple[str, str | None]]],
    label_map: Mapping[str, int] | None = None,
    difficult_as_crowd: bool = True,
    **kwargs,
) -> dict[str, SplitOutput]:
    """Converts VOC splits: split name -> [(VOC folder, image set or None)].

    Args:
      output_dir: destination folder.
      sources: per split, VOC folders with an ``ImageSets/Main`` list name
        or None for every XML file (see ``voc.list_voc``).
      label_map: class name -> id; None takes the classes the files of all
        splits use, sorted (on Pascal VOC: its 20 classes in their order).
      difficult_as_crowd: as in ``voc.voc_source``.
      **kwargs: those of ``convert_splits``.
    """
    stats = {split: ConversionStats() for split in sources}
    parsed = {
        split: voc.read_voc_annotations(image_sets, stats[split])
        for split, image_sets in sources.items()
    }
    if label_map is None:
        label_map = voc.voc_label_map(
            a for annotations in parsed.values() for a in annotations
        )
        if not label_map:
            raise SourceError(
                f"{_folders(sources)}: no <object> with a <name> in any "
                "readable XML file"
            )
    image_ids = assign_image_ids(
        a.name for annotations in parsed.values() for a in annotations
    )
    sets = {
        split: voc.voc_source(
            annotations, label_map, image_ids, difficult_as_crowd, stats[split]
        )
        for split, annotations in parsed.items()
    }
    return convert_splits(output_dir, sets, stats=stats, **kwargs)


def _folders(sources: Mapping[str, Sequence[tuple[str, str | None]]]) -> str:
    return ", ".join(folder for sets in sources.values() for folder, _ in sets)
