"""Labels of the releases to the trainIds the loaders read (``uda data convert``).

GTA, Cityscapes, ACDC and Dark Zurich label pixels with Cityscapes label ids, mapped to trainIds
by the official definitions (``cityscapesscripts.helpers.labels``). Synthia labels them with its
own class ids, in the first channel of 16-bit PNGs (which Pillow cannot read, so they are
decoded by torchvision), mapped as DAFormer's converter maps them; Mapillary Vistas v1.2 with
its 66 class ids (palette indices), mapped to the 19 Cityscapes classes as HRDA maps them. Ids
outside a release's definitions are unknown: they become 255 (ignored) and are reported.

Each trainId label is written atomically beside its original, so the conversion is resumable:
a label whose output exists and is newer is left as it is. The trainId labels that ACDC, Dark
Zurich and BDD100K ship are kept as they are; only missing ones are written, from the label
ids.
"""

from __future__ import annotations

import contextlib
import functools
import multiprocessing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from cityscapesscripts.helpers.labels import labels as cityscapes_labels
from PIL import Image

from uda_data.atomic import check_writable, save_png
from uda_data.classes import IGNORE_INDEX, NUM_CLASSES, TRAIN_ID
from uda_data.errors import DataError, write_error
from uda_data.files import describe, image_size, open_decoded, png_header, read_png16
from uda_data.layouts import Layout, LayoutName, as_pattern
from uda_data.rcs import Progress

SizeMismatch = Literal["resize", "skip"]

# Synthia RAND-CITYSCAPES class ids, by their names in the release's README.
SYNTHIA_CLASSES = (
    "void",
    "sky",
    "building",
    "road",
    "sidewalk",
    "fence",
    "vegetation",
    "pole",
    "car",
    "traffic sign",
    "pedestrian",
    "bicycle",
    "motorcycle",
    "parking-slot",
    "road-work",
    "traffic light",
    "terrain",
    "rider",
    "truck",
    "bus",
    "train",
    "wall",
    "lanemarking",
)
# Synthia classes whose Cityscapes name differs; void, parking-slot, road-work and lanemarking
# have no Cityscapes class and are ignored.
_SYNTHIA_AS_CITYSCAPES = {"pedestrian": "person"}

# Mapillary Vistas v1.2 class ids (their order in the release's config.json) -> the Cityscapes
# class, as HRDA's tools/convert_datasets/mapillary.py maps them for domain generalisation
# (github.com/lhoyer/HRDA); the other 41 of the 66 classes are ignored.
MAPILLARY_AS_CITYSCAPES = {
    13: ("construction--flat--road", "road"),
    24: ("marking--general", "road"),
    41: ("object--manhole", "road"),
    2: ("construction--barrier--curb", "sidewalk"),
    15: ("construction--flat--sidewalk", "sidewalk"),
    17: ("construction--structure--building", "building"),
    6: ("construction--barrier--wall", "wall"),
    3: ("construction--barrier--fence", "fence"),
    45: ("object--support--pole", "pole"),
    47: ("object--support--utility-pole", "pole"),
    48: ("object--traffic-light", "traffic light"),
    50: ("object--traffic-sign--front", "traffic sign"),
    30: ("nature--vegetation", "vegetation"),
    29: ("nature--terrain", "terrain"),
    27: ("nature--sky", "sky"),
    19: ("human--person", "person"),
    20: ("human--rider--bicyclist", "rider"),
    21: ("human--rider--motorcyclist", "rider"),
    22: ("human--rider--other-rider", "rider"),
    55: ("object--vehicle--car", "car"),
    61: ("object--vehicle--truck", "truck"),
    54: ("object--vehicle--bus", "bus"),
    58: ("object--vehicle--on-rails", "train"),
    57: ("object--vehicle--motorcycle", "motorcycle"),
    52: ("object--vehicle--bicycle", "bicycle"),
}
MAPILLARY_NUM_CLASSES = 66


@dataclass(frozen=True)
class IdTable:
    """A release's class ids to trainIds: ``train_ids[id]``; larger ids are unknown."""

    name: str
    train_ids: np.ndarray

    def apply(self, ids: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
        """The uint8 trainId map of an id map, and the unknown ids found (mapped to 255)."""
        known = ids < len(self.train_ids)
        out = np.full(ids.shape, IGNORE_INDEX, dtype=np.uint8)
        out[known] = self.train_ids[ids[known]]
        return out, tuple(int(i) for i in np.unique(ids[~known]))


def _cityscapes_table() -> IdTable:
    train_ids = np.full(max(label.id for label in cityscapes_labels) + 1, IGNORE_INDEX, np.uint8)
    for label in cityscapes_labels:
        if label.id >= 0 and 0 <= label.trainId < NUM_CLASSES:
            train_ids[label.id] = label.trainId
    return IdTable("Cityscapes label ids", train_ids)


def _synthia_table() -> IdTable:
    names = (_SYNTHIA_AS_CITYSCAPES.get(name, name) for name in SYNTHIA_CLASSES)
    train_ids = np.array([TRAIN_ID.get(name, IGNORE_INDEX) for name in names], dtype=np.uint8)
    return IdTable("Synthia class ids", train_ids)


def _mapillary_table() -> IdTable:
    train_ids = np.full(MAPILLARY_NUM_CLASSES, IGNORE_INDEX, np.uint8)
    for mapillary_id, (_, name) in MAPILLARY_AS_CITYSCAPES.items():
        train_ids[mapillary_id] = TRAIN_ID[name]
    return IdTable("Mapillary Vistas v1.2 class ids", train_ids)


CITYSCAPES_IDS = _cityscapes_table()
SYNTHIA_IDS = _synthia_table()
MAPILLARY_IDS = _mapillary_table()
ID_TABLES: dict[LayoutName, IdTable] = {
    "gta": CITYSCAPES_IDS,
    "synthia": SYNTHIA_IDS,
    "cityscapes": CITYSCAPES_IDS,
    "acdc": CITYSCAPES_IDS,
    "darkzurich": CITYSCAPES_IDS,
    "mapillary": MAPILLARY_IDS,
}
"""The id space of each layout's labels as released (BDD100K ships trainIds only)."""


def read_ids(path: Path) -> np.ndarray:
    """The class ids of a label PNG as released: 8-bit grey or palette indices, 16-bit grey, or
    the first channel of a 16-bit colour PNG (Synthia). Anything else raises a DataError."""
    img = open_decoded(path)
    header = png_header(path)
    if header is not None and header.bits == 16:
        return read_png16(path)[..., 0]
    if header is not None and img.mode in ("P", "L"):
        return np.array(img)
    what = f"an 8-bit {img.mode} picture of colours" if header else describe(path, img)
    raise DataError(
        f"{path}: {what}, not a PNG map of class ids; use the label files of the release",
        "format",
    )


@dataclass(frozen=True)
class LabelJob:
    """One label to convert: its image (for the size), the original and the trainId file."""

    image: Path
    label: Path
    output: Path


@dataclass(frozen=True)
class LabelResult:
    job: LabelJob
    written: bool
    error: str | None = None
    """Why the label could not be converted, naming the file."""
    unknown_ids: tuple[int, ...] = ()
    size_mismatch: str | None = None
    """``label WxH, image WxH`` when the two differ (the label was resized or skipped)."""


def convert_label(job: LabelJob, table: IdTable, size_mismatch: SizeMismatch) -> LabelResult:
    """Map one label to trainIds and write it atomically. Problems of the label are returned;
    an output that cannot be written raises a DataError naming it (it would fail for all)."""
    try:
        ids = read_ids(job.label)
        size = image_size(job.image)
    except DataError as exc:
        return LabelResult(job, written=False, error=str(exc))
    train_ids, unknown = table.apply(ids)
    label_size = (ids.shape[1], ids.shape[0])
    mismatch = None
    if label_size != size:
        mismatch = f"label {label_size[0]}x{label_size[1]}, image {size[0]}x{size[1]}"
        if size_mismatch == "skip":
            return LabelResult(job, False, unknown_ids=unknown, size_mismatch=mismatch)
        train_ids = np.array(Image.fromarray(train_ids).resize(size, Image.NEAREST))
    try:
        save_png(job.output, train_ids)
    except OSError as exc:
        raise write_error(job.output, exc) from None
    return LabelResult(job, True, unknown_ids=unknown, size_mismatch=mismatch)


@dataclass
class ConversionPlan:
    """What ``convert_labels`` has to do for one dataset, found by looking at its files."""

    layout: Layout
    root: Path
    conditions: tuple[str, ...] = ()
    """The ACDC or Dark Zurich conditions looked at."""
    jobs: list[LabelJob] = field(default_factory=list)
    up_to_date: int = 0
    """trainId labels kept: newer than their original, whose original was removed, or
    shipped by the release."""
    missing: list[Path] = field(default_factory=list)
    """Labels expected for images that have neither it nor a trainId label."""
    splits: list[str | None] = field(default_factory=list)
    """Splits with labels (``[None]`` for a layout without splits)."""
    skipped_splits: list[str] = field(default_factory=list)
    """One line per split without labels, saying why it was left out."""


def _is_newer(output: Path, original: Path) -> bool:
    return output.is_file() and output.stat().st_mtime_ns >= original.stat().st_mtime_ns


def plan_conversion(
    root: Path,
    layout: Layout,
    *,
    conditions: Sequence[str] | None = None,
    splits: Sequence[str] | None = None,
) -> ConversionPlan:
    """The labels of a dataset still to convert (of the ``splits`` given, else of all), and
    those kept; a DataError if it holds no labels at all."""
    root = Path(root)
    layout.require_root(root, conditions)
    plan = ConversionPlan(layout, root, layout.choose_conditions(conditions))
    if splits and not layout.has_splits:
        raise DataError(f"{root}: the {layout.title} layout has no splits; leave out --split")
    found = layout.splits(root, conditions)
    unknown = sorted(set(splits or ()) - set(found))
    if unknown:
        raise DataError(
            f"{root}: no split {', '.join(unknown)} in the {layout.title} layout"
            f" (found {', '.join(found)})"
        )
    for split in sorted(set(splits)) if splits else found:
        if split in layout.unlabelled_splits:
            plan.skipped_splits.append(f"{split}: the release has no labels for it, skipped")
            continue
        folders = layout.folders(root, split, conditions)
        if not any(folder.labels.is_dir() for folder in folders):
            missing = folders[0].labels.relative_to(root)
            name = f"{split}: " if split else ""
            plan.skipped_splits.append(f"{name}no labels ({missing}/ is missing), skipped")
            continue
        plan.splits.append(split)
        for folder in folders:
            for image in folder.find_images():
                _plan_label(plan, image, folder.label_of(image), folder.id_label_of(image))
    if not plan.splits:
        raise DataError(
            f"{root}: no labels in {as_pattern(layout.labels)}/"
            f" ({'; '.join(plan.skipped_splits)}); check the dataset root"
        )
    return plan


def _plan_label(plan: ConversionPlan, image: Path, output: Path, original: Path | None) -> None:
    """One image's label into the plan: kept, to convert, or missing."""
    released = original is not None and original.is_file()
    if output.is_file() and (
        plan.layout.ships_train_ids or not released or _is_newer(output, original)
    ):
        plan.up_to_date += 1
    elif released:
        plan.jobs.append(LabelJob(image, original, output))
    else:
        plan.missing.append(original or output)


def convert_labels(
    plan: ConversionPlan,
    *,
    nproc: int = 2,
    size_mismatch: SizeMismatch = "resize",
    progress: Progress | None = None,
) -> list[LabelResult]:
    """Convert the plan's labels in ``nproc`` processes; one result per label, in plan order.
    A label folder that cannot be written is a DataError, raised before any work."""
    if not plan.jobs:
        return []
    convert = functools.partial(
        convert_label, table=ID_TABLES[plan.layout.name], size_mismatch=size_mismatch
    )
    for folder in sorted({job.output.parent for job in plan.jobs}):
        check_writable(folder / f"probe{plan.layout.train_id_suffix}.png")
    results = []
    with contextlib.ExitStack() as stack:
        nproc = min(nproc, len(plan.jobs))
        if nproc > 1:
            pool = stack.enter_context(multiprocessing.get_context("spawn").Pool(nproc))
            chunk = max(1, min(16, len(plan.jobs) // (8 * nproc)))
            done = pool.imap(convert, plan.jobs, chunksize=chunk)
        else:
            done = map(convert, plan.jobs)
        for result in done:
            results.append(result)
            if progress:
                progress(len(results), len(plan.jobs))
    return results
