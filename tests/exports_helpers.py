"""Crafted datasets shaped like labelling tools' exports.

Each writer makes a small folder the way a tool exports it (file names,
layout, extra XML fields), with images that carry one bright rectangle per
box so a detector has something to learn and a drawing something to draw
over. The odd cases the converter must handle are built in and listed in
each writer's docstring.
"""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, ImageDraw

ODD_NAME = "2019_YELL_2_528000_4978000_image_crop2_0_1536"
SIZE = 64


def image_bytes(boxes=(), size=(SIZE, SIZE), fmt="JPEG") -> bytes:
    """An image with a filled rectangle per (x0, y0, x1, y1) pixel box."""
    image = Image.new("RGB", size, (30, 60, 30))
    draw = ImageDraw.Draw(image)
    for x0, y0, x1, y1 in boxes:
        draw.rectangle((x0, y0, x1, y1), fill=(230, 230, 40))
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def voc_xml(filename, objects, size=(SIZE, SIZE), path=None, folder="x"):
    """LabelImg's XML: folder, filename, path, source, size, objects."""
    objs = "".join(
        f"<object><name>{label}</name><pose>Unspecified</pose>"
        f"<truncated>0</truncated><difficult>0</difficult><bndbox>"
        f"<xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax>"
        f"<ymax>{b[3]}</ymax></bndbox></object>"
        for label, b in objects
    )
    path_xml = f"<path>{path}</path>" if path else ""
    return (
        f"<annotation><folder>{folder}</folder><filename>{filename}"
        f"</filename>{path_xml}<source><database>Unknown</database>"
        f"</source><size><width>{size[0]}</width><height>{size[1]}</height>"
        f"<depth>3</depth></size><segmented>0</segmented>{objs}</annotation>"
    )


def _boxes(objects):
    return [b for _, b in objects]


def labelimg_voc(root: Path, n: int = 6) -> Path:
    """A flat LabelImg folder: images and XML side by side, no ImageSets.

    Odd names (``2019_YELL_..._<i>``), a ``<path>`` from another machine,
    every image with a "tree" and half with a "rock"; image 0 has a box
    running past the right and bottom edges (clipped).
    """
    folder = root / "labelimg"
    folder.mkdir(parents=True)
    for i in range(n):
        name = f"{ODD_NAME}_{i}"
        objects = [("tree", (8 + i, 8, 30 + i, 36))]
        if i % 2:
            objects.append(("rock", (36, 40, 56, 58)))
        if i == 0:
            objects.append(("rock", (40, 44, 80, 90)))  # outside the image
        (folder / f"{name}.jpg").write_bytes(image_bytes(_boxes(objects)))
        (folder / f"{name}.xml").write_text(
            voc_xml(
                f"{name}.jpg",
                objects,
                path=f"C:\\Users\\me\\Desktop\\crops\\{name}.jpg",
            )
        )
    return folder


def cvat_voc(root: Path) -> Path:
    """A CVAT export: Annotations/, JPEGImages/, ImageSets/Main/default.txt.

    Names with spaces; one image stored as ``.JPG`` while the XML says
    ``.jpg``; one listed image whose file is missing.
    """
    folder = root / "cvat"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (folder / sub).mkdir(parents=True)
    names = ["frame 001", "frame 002", "frame 003"]
    for i, name in enumerate(names):
        objects = [("tree", (10, 10, 30, 40))]
        (folder / "Annotations" / f"{name}.xml").write_text(
            voc_xml(f"{name}.jpg", objects)
        )
        if i == 2:
            continue  # missing image
        ext = ".JPG" if i == 1 else ".jpg"
        (folder / "JPEGImages" / f"{name}{ext}").write_bytes(
            image_bytes(_boxes(objects))
        )
    (folder / "ImageSets/Main/default.txt").write_text("\n".join(names))
    return folder


def roboflow_voc(root: Path) -> Path:
    """A Roboflow VOC export: flat ``train/`` with ``*_jpg.rf.<hash>`` names.

    One "unicorn" box (unknown under a tree/rock label map).
    """
    folder = root / "roboflow" / "train"
    folder.mkdir(parents=True)
    for i in range(3):
        name = f"IMG_{i:04d}_jpg.rf.{i:032x}"
        objects = [("rock", (5, 5, 25, 25))]
        if i == 0:
            objects.append(("unicorn", (30, 30, 50, 50)))
        (folder / f"{name}.jpg").write_bytes(image_bytes(_boxes(objects)))
        (folder / f"{name}.xml").write_text(voc_xml(f"{name}.jpg", objects))
    return folder


def roboflow_yolo(root: Path, n_train: int = 6, n_valid: int = 3) -> Path:
    """A Roboflow YOLOv8 export: data.yaml, {train,valid}/{images,labels}.

    In train: image 0 has a box past the right edge (clipped), a class
    index 5 (unknown), a malformed line and a polygon; image 1 has no
    label file (a negative); one label file has no image (missing).
    """
    export = root / "yolo"
    export.mkdir(parents=True)
    (export / "data.yaml").write_text(
        "train: ../train/images\nval: ../valid/images\n"
        "nc: 2\nnames: ['tree', 'rock']\n"
    )
    for split, n in (("train", n_train), ("valid", n_valid)):
        images, labels = export / split / "images", export / split / "labels"
        images.mkdir(parents=True)
        labels.mkdir(parents=True)
        for i in range(n):
            name = f"{split}_{ODD_NAME}_{i}"
            pixel_boxes = [(16, 16, 40, 48)]
            lines = ["0 0.4375 0.5 0.375 0.5"]  # (16, 16)-(40, 48)
            if i % 2 == 0:
                pixel_boxes.append((44, 8, 60, 24))
                lines.append("1 0.8125 0.25 0.25 0.25")
            if split == "train" and i == 0:
                lines += [
                    "0 0.95 0.5 0.3 0.2",  # runs past the right edge
                    "5 0.5 0.5 0.1 0.1",  # unknown class
                    "1 0.5 oops 0.1",  # malformed
                    "1 0.1 0.7 0.3 0.7 0.3 0.9 0.1 0.9",  # polygon
                ]
            negative = split == "train" and i == 1
            (images / f"{name}.jpg").write_bytes(
                image_bytes([] if negative else pixel_boxes)
            )
            if negative:
                continue  # no label file
            (labels / f"{name}.txt").write_text("\n".join(lines) + "\n")
        if split == "train":
            (labels / "orphan.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    return export
