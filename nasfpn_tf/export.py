"""SavedModel export of a trained NAS-FPN detector for TF Serving.

NAS-FPN (Ghiasi, Lin, Pang, Le, CVPR 2019, arXiv:1904.07392) is a
RetinaNet; its exported form follows Model Garden's detection export
(``official/vision/serving/detection.py``) and the TF Object Detection
API's conventions: pre- and post-processing live inside the graph, so a
client sends raw images and gets boxes back.

Signatures, each taking a batch of N images under the input key
``inputs`` and returning ``detection_boxes`` [N, max_detections, 4]
float32 (ymin, xmin, ymax, xmax normalised to the ORIGINAL image),
``detection_scores`` [N, max_detections] float32, ``detection_classes``
[N, max_detections] int32 (1-based class ids, as in training) and
``num_detections`` [N] int32. Slots past an image's ``num_detections``
are zeros (class PADDING_CLASS). The signatures:

  serving_default    uint8 images [N, H, W, 3], any H and W;
  image_bytes        encoded JPEG, PNG or BMP strings [N];
  tf_example         serialized tf.Example strings [N] with the image in
                     ``image/encoded``, as ``nasfpn_tf.data.convert``
                     writes them;
  serving_repeat{k}  anytime models only: uint8 images as in
                     serving_default, detections of the early exit after
                     neck repeat k (0-based, every repeat but the last,
                     which is serving_default).

Each image is preprocessed as in evaluation (``nasfpn_tf.data.pipeline``,
Model Garden's RetinaNet parser): ImageNet mean/std normalisation, a
resize keeping the aspect ratio to fit ``model.image_size``, zero padding
bottom/right to the padded model size. Encoded images and examples are
decoded and resized one by one, so a request may mix image sizes.

Frozen export (``--freeze``): the network and NMS are stored with the
weights as constants (``nasfpn_tf.modeling.frozen``): batch norms folded
into the convs and conv filters kept in oneDNN's layout, about 16% faster
on CPU at 640x640 (ResNet-50 7@256), with no variables in the SavedModel
(it cannot be fine-tuned) and a slower first request (graph optimisation,
about 13 s for that model: warm it up before taking traffic). Not for
anytime models: every exit would hold its own copy of the weights.

TFLite (``--format=tflite``): ``export_tflite`` hands over to
``nasfpn_tf.export_tflite`` (float32, float16, int8 models for phones and
edge boards, post-processing inside).

Layout: ``export_dir/<unix seconds>/`` is one SavedModel version, as TF
Serving's model base path expects; its ``assets.extra/`` holds the
resolved ``config.yaml`` and the neck's ``spec.json``.
"""

from __future__ import annotations

import functools
import os
import time
from typing import Any

import tensorflow as tf
import tf_keras
from absl import logging
from official.core import export_base as core_export_base
from official.vision.ops import box_ops, preprocess_ops
from official.vision.serving import export_base

from nasfpn_tf import compat
from nasfpn_tf import config as config_lib
from nasfpn_tf.arch.spec import NeckSpec
from nasfpn_tf.data import pipeline
from nasfpn_tf.modeling import detector, frozen
from nasfpn_tf.run_files import EXTRA_ASSETS_DIR, SPEC_FILENAME
from nasfpn_tf.train import checkpoints, trainer

# Signature keys by Model Garden's names of the input types.
SIGNATURE_KEYS = {
    "image_tensor": tf.saved_model.DEFAULT_SERVING_SIGNATURE_DEF_KEY,
    "image_bytes": "image_bytes",
    "tf_example": "tf_example",
}
REPEAT_SIGNATURE = "serving_repeat{}"
INPUT_KEY = "inputs"
OUTPUT_KEYS = detector.DETECTION_KEYS
IMAGE_CHANNELS = 3
# detection_classes of the slots past num_detections (the background id).
PADDING_CLASS = 0
# Images in flight at once in the per-image preprocessing loop.
PARALLEL_IMAGES = 32
# Not an integer, so TF Serving never loads a half-written version.
TEMP_PREFIX = "temp-"
# Checkpoints keep float32 variables under every mixed precision policy;
# serving computes in float32 on any device.
SERVING_POLICY = "float32"


def mask_padding(classes: tf.Tensor, num_detections: tf.Tensor) -> tf.Tensor:
    """Sets the class of every slot past `num_detections` to PADDING_CLASS.

    Model Garden's NMS adds 1 to every class id, padding included, so
    padded slots would otherwise read as class 1 with score 0.

    Args:
        classes: [N, max_detections] int32.
        num_detections: [N] int32.

    Returns:
        [N, max_detections] int32.
    """
    slots = tf.range(tf.shape(classes)[1])[None, :]
    valid = slots < num_detections[:, None]
    return tf.where(valid, classes, tf.fill(tf.shape(classes), PADDING_CLASS))


class DetectionExportModule(export_base.ExportModule):
    """The detector with its pre- and post-processing, for saving.

    Model Garden's vision ``ExportModule`` supplies the model tracking and
    the decoding of encoded images and tf.Examples. Unlike its batch-wide
    decoding, each image here is decoded and preprocessed on its own, so a
    request may mix image sizes; the anytime exits are extra signatures.

    Args:
        config: the run's config (model sizes, anchors, classes).
        model: a built ``DetectorModel`` holding the trained weights.
        freeze: run the network and NMS as a frozen function, the weights
            copied in as constants now (see the module docstring).

    Raises:
        ValueError: ``freeze`` with an anytime model.
    """

    def __init__(
        self,
        config: config_lib.ExperimentConfig,
        model: detector.DetectorModel,
        freeze: bool = False,
    ):
        size = config.model.image_size
        super().__init__(
            params=config,
            batch_size=None,
            input_image_size=[size, size],
            input_type="image_tensor",
            num_channels=IMAGE_CHANNELS,
            model=model,
        )
        self._padded_size = list(
            pipeline.padded_image_size(size, config.model.max_level)
        )
        self._frozen_network: frozen.FrozenFunction | None = None
        if freeze:
            if getattr(model, "anytime", False):
                raise ValueError(
                    "freeze: not supported for anytime models (each exit "
                    "would hold its own copy of the weights); export "
                    "without --freeze"
                )
            self._frozen_network = frozen.freeze(
                self._network,
                tf.TensorSpec(
                    [None, *self._padded_size, IMAGE_CHANNELS], tf.float32
                ),
                tf.TensorSpec([None, 2], tf.float32),
            )

    @property
    def is_frozen(self) -> bool:
        """Whether the network runs with its weights as constants."""
        return self._frozen_network is not None

    @property
    def padded_size(self) -> tuple[int, int]:
        """(height, width) of the images the network sees."""
        return tuple(self._padded_size)

    def preprocess_image(self, image: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """One image as the evaluation parser prepares it.

        Args:
            image: [H, W, 3] uint8, H, W > 0.

        Returns:
            image: [padded_h, padded_w, 3] float32, normalised, the
                resized picture in the top-left corner.
            image_info: [4, 2] float32: original (h, w), resized (h, w),
                scale (y, x), offset (y, x).
        """
        tf.debugging.assert_positive(
            tf.shape(image)[:2],
            message="each image needs a positive height and width",
        )
        # uint8 in: normalize_image scales to [0, 1] first, exactly as the
        # parser does with decoded images.
        image = preprocess_ops.normalize_image(image)
        image, image_info = preprocess_ops.resize_and_crop_image(
            image,
            compat.export_image_size(self),
            padded_size=self._padded_size,
            aug_scale_min=1.0,
            aug_scale_max=1.0,
            keep_aspect_ratio=True,
        )
        image.set_shape(self._padded_size + [IMAGE_CHANNELS])
        return image, image_info

    def _preprocess_batch(self, elems: tf.Tensor, decode) -> tuple:
        """Maps `decode` then `preprocess_image` over a batch, on the CPU."""
        image_spec = tf.TensorSpec(
            self._padded_size + [IMAGE_CHANNELS], tf.float32
        )
        info_spec = tf.TensorSpec([4, 2], tf.float32)
        with tf.device("cpu:0"):
            return tf.map_fn(
                lambda elem: self.preprocess_image(decode(elem)),
                elems,
                fn_output_signature=(image_spec, info_spec),
                parallel_iterations=PARALLEL_IMAGES,
            )

    def detect(
        self,
        images: tf.Tensor,
        image_info: tf.Tensor,
        exit_repeat: int | None = None,
    ) -> dict[str, tf.Tensor]:
        """Runs the network and NMS; boxes normalised to the originals.

        Args:
            images: [N, padded_h, padded_w, 3] float32 from
                `preprocess_image`.
            image_info: [N, 4, 2] from `preprocess_image`.
            exit_repeat: neck repeat whose head answers (anytime models);
                None is the last.

        Returns:
            The OUTPUT_KEYS tensors described in the module docstring.
        """
        if self._frozen_network is not None:
            outputs = self._frozen_network(images, image_info[:, 1, :])
        else:
            outputs = self._network(images, image_info[:, 1, :], exit_repeat)
        # Pixels of the resized image -> pixels of the original -> [0, 1].
        scale = tf.tile(image_info[:, 2:3, :], [1, 1, 2])
        boxes = outputs["detection_boxes"] / scale
        boxes = box_ops.normalize_boxes(boxes, image_info[:, 0:1, :])
        num_detections = tf.cast(outputs["num_detections"], tf.int32)
        return {
            "detection_boxes": tf.clip_by_value(boxes, 0.0, 1.0),
            "detection_scores": outputs["detection_scores"],
            "detection_classes": mask_padding(
                tf.cast(outputs["detection_classes"], tf.int32),
                num_detections,
            ),
            "num_detections": num_detections,
        }

    def _network(
        self,
        images: tf.Tensor,
        image_shape: tf.Tensor,
        exit_repeat: int | None = None,
    ) -> dict[str, tf.Tensor]:
        """The detector's inference call: network, box decoding and NMS,
        boxes in the pixels of the resized image."""
        # `call`, not `__call__`, as Model Garden's export does: Keras'
        # __call__ cannot trace a model with several inputs for saving.
        outputs = self.model.call(
            images,
            image_shape=image_shape,
            training=False,
            exit_repeat=exit_repeat,
        )
        return {key: outputs[key] for key in OUTPUT_KEYS}

    def serve(
        self, images: tf.Tensor, exit_repeat: int | None = None
    ) -> dict[str, tf.Tensor]:
        """uint8 images [N, H, W, 3] -> detections (see `detect`)."""
        images, image_info = self._preprocess_batch(images, tf.identity)
        return self.detect(images, image_info, exit_repeat)

    def serve_image_bytes(self, inputs: tf.Tensor) -> dict[str, tf.Tensor]:
        """Encoded image strings [N] -> detections (see `detect`)."""
        images, image_info = self._preprocess_batch(
            inputs, compat.export_image_decoder(self)
        )
        return self.detect(images, image_info)

    def serve_tf_examples(self, inputs: tf.Tensor) -> dict[str, tf.Tensor]:
        """Serialized tf.Example strings [N] -> detections."""
        images, image_info = self._preprocess_batch(
            inputs, compat.export_example_decoder(self)
        )
        return self.detect(images, image_info)

    def signatures(self) -> dict[str, Any]:
        """Concrete functions of every signature, by signature key.

        They are traced here from functions that are not attributes of
        the module: `tf.saved_model.save` then stores them once as
        signatures instead of tracing its function attributes again.
        """
        images = tf.TensorSpec(
            [None, None, None, IMAGE_CHANNELS], tf.uint8, name=INPUT_KEY
        )
        strings = tf.TensorSpec([None], tf.string, name=INPUT_KEY)
        functions = {
            SIGNATURE_KEYS["image_tensor"]: (self.serve, images),
            SIGNATURE_KEYS["image_bytes"]: (self.serve_image_bytes, strings),
            SIGNATURE_KEYS["tf_example"]: (self.serve_tf_examples, strings),
        }
        if getattr(self.model, "anytime", False):
            for repeat in range(self.model.repeats - 1):
                functions[REPEAT_SIGNATURE.format(repeat)] = (
                    functools.partial(self.serve, exit_repeat=repeat),
                    images,
                )
        return {
            key: tf.function(function).get_concrete_function(spec)
            for key, (function, spec) in functions.items()
        }


def latest_checkpoint(model_dir: str) -> str:
    """Path of the newest checkpoint in `model_dir/checkpoints/`.

    Raises:
        FileNotFoundError: there is none.
    """
    directory = checkpoints.checkpoint_dir(model_dir)
    path = tf.train.latest_checkpoint(directory)
    if path is None:
        raise FileNotFoundError(
            f"No checkpoint in {directory}: nothing to export. Train first "
            f"(python -m nasfpn_tf.main --mode=train --model_dir={model_dir})"
            " or pass the model_dir of a trained run."
        )
    return path


def resolve_spec(
    config: config_lib.ExperimentConfig, model_dir: str
) -> NeckSpec | None:
    """The neck spec the run in `model_dir` trained.

    A spec the trainer saved in `model_dir` (given to it explicitly, as the
    search's proxy does) wins; otherwise `model.neck.arch`, else the
    published NAS-FPN. None for an FPN neck.
    """
    if config.model.neck.type != "nasfpn":
        return None
    saved = os.path.join(model_dir, trainer.SPEC_FILENAME)
    if tf.io.gfile.exists(saved):
        return NeckSpec.load(saved)
    return detector.spec_for(config)


def restore(model: tf_keras.Model, checkpoint_path: str) -> None:
    """Loads the model's weights from a trainer checkpoint.

    Only `model=` is read (the optimizer and step are left out), but every
    weight of the model must be found there.

    Raises:
        ValueError: the checkpoint was written by a different model.
    """
    status = tf.train.Checkpoint(model=model).read(checkpoint_path)
    try:
        status.expect_partial().assert_existing_objects_matched()
    except AssertionError as error:
        raise ValueError(
            f"Checkpoint {checkpoint_path} does not hold every weight of "
            "the model built from the config: was it trained with another "
            "backbone, neck, spec or num_classes?"
        ) from error


def _write_text(path: str, text: str) -> None:
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(text)


def save(
    module: DetectionExportModule,
    export_dir: str,
    spec: NeckSpec | None = None,
) -> str:
    """Writes `module` as a new version `export_dir/<unix seconds>/`.

    The SavedModel is written under a temporary name and renamed when
    complete, so a TF Serving instance watching `export_dir` never loads a
    partial version.

    Returns:
        The version directory.
    """
    tf.io.gfile.makedirs(export_dir)
    version_dir = core_export_base.get_timestamped_export_dir(
        export_dir
    ).decode("utf-8")
    version = os.path.basename(version_dir)
    temp_dir = os.path.join(export_dir, f"{TEMP_PREFIX}{version}")
    signatures = module.signatures()
    # A frozen module's signatures hold the weights as constants: saving
    # the module itself would add its variables a second time.
    root = tf.Module() if module.is_frozen else module
    # Serving needs only the signatures: without Keras' per-layer call
    # traces the export takes half the time and a third less disk, and
    # loads faster.
    with compat.keras_option_scope(save_traces=False):
        tf.saved_model.save(root, temp_dir, signatures=signatures)
    extra = os.path.join(temp_dir, EXTRA_ASSETS_DIR)
    tf.io.gfile.makedirs(extra)
    _write_text(
        os.path.join(extra, config_lib.CONFIG_FILENAME),
        config_lib.to_yaml(module.params),
    )
    if spec is not None:
        _write_text(os.path.join(extra, SPEC_FILENAME), spec.to_json())
    tf.io.gfile.rename(temp_dir, version_dir)
    logging.info(
        "Wrote %s; signatures: %s", version_dir, ", ".join(sorted(signatures))
    )
    return version_dir


def export(
    config: config_lib.ExperimentConfig,
    model_dir: str,
    export_dir: str,
    freeze: bool = False,
) -> str:
    """Exports the latest checkpoint of a run as a servable SavedModel.

    Args:
        config: the run's resolved config (`model_dir/config.yaml`).
        model_dir: the run's directory, with `checkpoints/` and, when the
            neck spec was given explicitly, `spec.json`.
        export_dir: TF Serving's model base path; each export adds a
            version subdirectory.
        freeze: store the weights as constants (faster serving, no
            variables; see the module docstring).

    Returns:
        The version directory written, `export_dir/<unix seconds>`.

    Raises:
        FileNotFoundError: `model_dir` holds no checkpoint.
        ValueError: the checkpoint does not fit the config's model.
        config_lib.ConfigError: `freeze` with an anytime model.
    """
    if freeze and config.model.anytime:
        raise config_lib.ConfigError(
            "--freeze: model.anytime is true; an anytime model cannot be "
            "frozen (each exit would hold its own copy of the weights)"
        )
    start = time.monotonic()
    checkpoint_path = latest_checkpoint(model_dir)
    spec = resolve_spec(config, model_dir)
    with trainer.precision_policy(SERVING_POLICY):
        model = detector.build_detector(config.model, spec=spec)
        restore(model, checkpoint_path)
        module = DetectionExportModule(config, model, freeze=freeze)
        version_dir = save(module, export_dir, spec)
    logging.info(
        "Exported %s in %.1f s", checkpoint_path, time.monotonic() - start
    )
    return version_dir


def export_tflite(
    config: config_lib.ExperimentConfig,
    model_dir: str,
    export_dir: str,
    **options: Any,
) -> Any:
    """Exports the latest checkpoint of a run as TFLite models: see
    `nasfpn_tf.export_tflite.export` (its options pass through)."""
    from nasfpn_tf import export_tflite as tflite_lib

    return tflite_lib.export(config, model_dir, export_dir, **options)
