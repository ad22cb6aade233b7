"""The held-out and val splits carved from the training images.

The held-out split that scores architectures during the NAS-FPN search
(Ghiasi et al., CVPR 2019, arXiv:1904.07392) is carved from the training
images by a stable hash of the image id, and never shares an image with val.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable, Mapping

from nasfpn_tf.data.sources import ConversionStats, ImageRecord, SourceSet

HELDOUT = "heldout"
_HASH_BYTES = 8


def heldout_score(image_id: int | str) -> float:
    """A stable pseudo-random number in [0, 1) for an image id (SHA-1)."""
    digest = hashlib.sha1(str(image_id).encode("utf-8")).digest()
    return int.from_bytes(digest[:_HASH_BYTES], "big") / 2 ** (8 * _HASH_BYTES)


def split_heldout(
    images: Iterable[ImageRecord],
    fraction: float,
    exclude_ids: Iterable[int] = (),
    stats: ConversionStats | None = None,
) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """Splits images into (train, heldout) by ``heldout_score(id) < fraction``.

    The choice depends on the id alone, so it is stable under reordering and
    subsetting. Images whose id is in ``exclude_ids`` (the val split) go to
    neither side, so held-out and val never overlap.

    Raises:
      ValueError: fraction outside [0, 1).
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"heldout_fraction: expected [0, 1), got {fraction}")
    excluded = set(exclude_ids)
    train, heldout = [], []
    for record in images:
        if record.image_id in excluded:
            if stats is not None:
                stats.add("images_in_val")
            continue
        side = heldout if heldout_score(record.image_id) < fraction else train
        side.append(record)
    return train, heldout


def carve_splits(
    sources: Mapping[str, SourceSet],
    stats: Mapping[str, ConversionStats] | None,
    *,
    heldout_fraction: float,
    heldout_from: str,
    val_fraction: float,
    val_split: str,
) -> tuple[dict[str, SourceSet], dict[str, ConversionStats]]:
    """The splits to write and their counters, with ``heldout`` (and
    ``val``) carved from ``heldout_from`` if asked (see
    ``convert_splits``); ``val_split`` images are dropped from every other
    split.

    Raises:
      ValueError: a split to carve is given too, ``heldout_from`` is not a
        split, or the fractions sum to 1 or more.
    """
    sources = dict(sources)
    if heldout_fraction > 0:
        if HELDOUT in sources:
            raise ValueError(
                f"heldout_fraction={heldout_fraction} but a {HELDOUT!r} split "
                "is already given; use one or the other"
            )
        if heldout_from not in sources:
            raise ValueError(
                f"heldout_from: no split {heldout_from!r} in {list(sources)}"
            )
    stats = {
        split: (stats or {}).get(split) or ConversionStats()
        for split in sources
    }
    if val_fraction > 0:
        carve_val(sources, stats, val_fraction, heldout_fraction,
                  heldout_from, val_split)  # fmt: skip
    val_ids = (
        {r.image_id for r in sources[val_split].images}
        if val_split in sources
        else set()
    )
    for split, source in list(sources.items()):
        if split == val_split:
            continue
        fraction = heldout_fraction if split == heldout_from else 0.0
        kept, heldout = split_heldout(
            source.images, fraction, val_ids, stats[split]
        )
        sources[split] = dataclasses.replace(source, images=tuple(kept))
        if heldout:
            sources[HELDOUT] = dataclasses.replace(
                source, images=tuple(heldout)
            )
            stats[HELDOUT] = ConversionStats()
    return sources, stats


def carve_val(
    sources: dict[str, SourceSet],
    stats: dict[str, ConversionStats],
    val_fraction: float,
    heldout_fraction: float,
    carve_from: str,
    val_split: str,
) -> None:
    """Moves ``carve_from`` images whose ``heldout_score`` is at least
    1 - ``val_fraction`` to a new ``val_split``, in place."""
    if val_split in sources:
        raise ValueError(
            f"val_fraction={val_fraction} but a {val_split!r} split is "
            "already given; use one or the other"
        )
    if carve_from not in sources:
        raise ValueError(f"no split {carve_from!r} in {list(sources)}")
    if not 0.0 < val_fraction + heldout_fraction < 1.0:
        raise ValueError(
            f"val_fraction ({val_fraction}) + heldout_fraction "
            f"({heldout_fraction}) must be below 1"
        )
    source = sources[carve_from]
    is_val = [
        heldout_score(r.image_id) >= 1.0 - val_fraction for r in source.images
    ]
    sources[carve_from] = dataclasses.replace(
        source,
        images=tuple(r for r, v in zip(source.images, is_val) if not v),
    )
    sources[val_split] = dataclasses.replace(
        source, images=tuple(r for r, v in zip(source.images, is_val) if v)
    )
    stats[val_split] = ConversionStats()
