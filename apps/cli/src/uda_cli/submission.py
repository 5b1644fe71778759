"""Test-server submissions of `uda predict --format`: one zip of PNGs per benchmark.

Each test image gets PNGs at its own size, named after the image as the reference's
``tools/test.py --format-only`` names them (``{image name}.png``, MIC
``mmseg/datasets/cityscapes.py:98-103``), all in flat folders:

- ``cityscapes-test``: ``NAME_leftImg8bit.png`` in Cityscapes **label ids** (trainIds mapped
  by ``cityscapesscripts.helpers.labels.trainId2label``, as the reference's ``to_label_id``
  does), which the server finds by ``CITY_SEQ_FRAME*.png``;
- ``acdc-test``: ``labelTrainIds/NAME_rgb_anon.png`` in trainIds 0-18 (MIC ``seg/README.md``:
  ``imgfile_prefix=labelTrainIds to_label_id=False``), the four conditions together;
- ``darkzurich-test``: the three folders the Dark Zurich server reads: ``labelTrainIds/``
  (trainIds), ``confidence/`` (16-bit: the top softmax probability x 65535) and
  ``labelTrainIds_invalid/`` (trainIds, 255 where that probability is below
  ``INVALID_BELOW``: the pixels called invalid for the uncertainty-aware UIoU).

The PNGs are written under ``OUT/.FORMAT.partial/``; once all are there the zip
``OUT/FORMAT.zip`` is written atomically and the folder renamed to ``OUT/FORMAT/``.
"""

from __future__ import annotations

import os
import shutil
import zipfile
from collections.abc import Callable
from enum import Enum
from pathlib import Path

import numpy as np
import torch

from uda_core.checkpoint import atomic_write_bytes
from uda_core.errors import UdaError
from uda_data.atomic import save_png
from uda_data.layouts import LAYOUTS

INVALID_BELOW = 0.5
"""Dark Zurich: a pixel whose top softmax probability is below this is marked invalid."""


class Format(str, Enum):
    cityscapes_test = "cityscapes-test"
    acdc_test = "acdc-test"
    darkzurich_test = "darkzurich-test"


LAYOUT_OF = {
    Format.cityscapes_test: "cityscapes",
    Format.acdc_test: "acdc",
    Format.darkzurich_test: "darkzurich",
}


def _label_id_table() -> np.ndarray:
    """trainId -> Cityscapes label id, from ``cityscapesscripts`` (255 -> 0, unlabelled)."""
    from cityscapesscripts.helpers.labels import trainId2label

    table = np.zeros(256, np.uint8)
    for train_id, label in trainId2label.items():
        if 0 <= train_id < 256:
            table[train_id] = label.id
    return table


def submission_images(fmt: Format, root: Path, split: str) -> list[Path]:
    """The images of a split of the format's dataset under ``root`` (all ACDC conditions; Dark
    Zurich at night), sorted; a UdaError if there are none."""
    layout = LAYOUTS[LAYOUT_OF[fmt]]
    layout.require_root(root)
    images = [image for folders in layout.folders(root, split) for image in folders.find_images()]
    if not images:
        raise UdaError(
            f"{root}: no {split} images in {layout.pattern}/ ({layout.title}); "
            "check the dataset root and --split"
        )
    return images


def submission_files(fmt: Format, name: str, probs: torch.Tensor) -> dict[str, np.ndarray]:
    """The PNG arrays, by path in the submission, of one image's C x H x W softmax output."""
    confidence, label = probs.max(0)
    label = label.byte().cpu().numpy()
    if fmt is Format.cityscapes_test:
        return {f"{name}.png": _label_id_table()[label]}
    if fmt is Format.acdc_test:
        return {f"labelTrainIds/{name}.png": label}
    confidence = confidence.float().cpu().numpy()
    invalid = np.where(confidence < INVALID_BELOW, 255, label).astype(np.uint8)
    return {
        f"labelTrainIds/{name}.png": label,
        f"confidence/{name}.png": np.round(confidence * 65535).astype(np.uint16),
        f"labelTrainIds_invalid/{name}.png": invalid,
    }


def zip_path(fmt: Format, out: Path) -> Path:
    return Path(out) / f"{fmt.value}.zip"


def write_submission(
    fmt: Format,
    images: list[Path],
    out: Path,
    probabilities: Callable[[Path], torch.Tensor],
    track: Callable[[list[Path]], object] = iter,
) -> Path:
    """Predict each image (``probabilities``: C x H x W softmax at the image's size), write
    the format's PNGs and zip them; returns the zip's path."""
    partial = Path(out) / f".{fmt.value}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    written: list[str] = []
    for image in track(images):
        name = image.name.rsplit(".", 1)[0]
        for relative, array in submission_files(fmt, name, probabilities(image)).items():
            save_png(partial / relative, array)
            written.append(relative)

    def write_zip(f) -> None:
        with zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as archive:
            for relative in sorted(written):
                archive.write(partial / relative, relative)

    target = zip_path(fmt, out)
    atomic_write_bytes(target, write_zip)
    folder = Path(out) / fmt.value
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(partial, folder)
    return target
