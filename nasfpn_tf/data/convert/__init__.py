r"""COCO JSON, Pascal VOC XML or YOLO text -> sharded TFRecords.

The records follow the TF Object Detection API schema that Model Garden's
``TfExampleDecoder`` reads: ``image/encoded``, ``image/source_id`` (the
numeric image id), ``image/height``, ``image/width``,
``image/object/bbox/{xmin,ymin,xmax,ymax}`` normalised to [0, 1],
``image/object/class/label``, ``image/object/area`` (pixels) and
``image/object/is_crowd``. Each split also gets ``{split}.json``: the COCO
ground truth of exactly what was written, for the COCO evaluator (image
entries keep the original file name). Beside them go ``dataset.json`` (the
splits, class names and ``num_classes``, read by ``--data_dir``) and
``summary.json`` (per split, what was written, fixed and skipped, with
example file names).

Bad data is fixed or skipped and counted, never a crash (``cleaning`` says
what is fixed and what is skipped); images without boxes are kept as valid
negatives. What cannot be read at all (a missing folder, a malformed label
map) stops the command line with one line naming the file.

The annotations are read by ``nasfpn_tf.data.sources`` (COCO),
``nasfpn_tf.data.voc`` and ``nasfpn_tf.data.yolo``. Here, ``from_coco``,
``from_voc`` and ``from_yolo`` (one per format) hand the splits read to
``writing``, which carves the held-out (and val) split with ``splits``,
cleans each image with ``cleaning`` and writes shards and JSON; ``cli`` is
the command line.

The held-out split that scores architectures during the NAS-FPN search
(Ghiasi et al., CVPR 2019, arXiv:1904.07392) is carved from the training
images by a stable hash of the image id, and never shares an image with val.

  python -m nasfpn_tf.data.convert --format=coco --output_dir=OUT \
      --train_annotations=annotations/instances_train2017.json \
      --train_images=train2017 \
      --val_annotations=annotations/instances_val2017.json \
      --val_images=val2017 --heldout_fraction=0.05
  python -m nasfpn_tf.data.convert --format=voc --output_dir=OUT \
      --train_sets=VOCdevkit/VOC2007:trainval \
      --train_sets=VOCdevkit/VOC2012:trainval \
      --val_sets=VOCdevkit/VOC2007:test --heldout_fraction=0.05
  python -m nasfpn_tf.data.convert --format=voc --output_dir=OUT \
      --train_sets=my_labelimg_folder --val_fraction=0.15 \
      --heldout_fraction=0.15
  python -m nasfpn_tf.data.convert --format=yolo --output_dir=OUT \
      --train_images=export/train/images --val_images=export/valid/images \
      --heldout_fraction=0.1
"""

import os

# TensorFlow's C++ start-up lines (CUDA probing, CPU features) say nothing
# a user of the command can act on; set in the environment, it still wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from nasfpn_tf.data.convert.cleaning import (
    JPEG_QUALITY,
    TF_FORMATS,
    TF_MODES,
    clean_image,
)
from nasfpn_tf.data.convert.cli import FORMATS, main, parse_args
from nasfpn_tf.data.convert.from_coco import convert_coco
from nasfpn_tf.data.convert.from_voc import convert_voc
from nasfpn_tf.data.convert.from_yolo import convert_yolo
from nasfpn_tf.data.convert.splits import (
    HELDOUT,
    heldout_score,
    split_heldout,
)
from nasfpn_tf.data.convert.writing import (
    DEFAULT_IMAGES_PER_SHARD,
    SplitOutput,
    convert_splits,
    write_split,
)

__all__ = [
    "DEFAULT_IMAGES_PER_SHARD",
    "FORMATS",
    "HELDOUT",
    "JPEG_QUALITY",
    "TF_FORMATS",
    "TF_MODES",
    "SplitOutput",
    "clean_image",
    "convert_coco",
    "convert_splits",
    "convert_voc",
    "convert_yolo",
    "heldout_score",
    "main",
    "parse_args",
    "split_heldout",
    "write_split",
]
