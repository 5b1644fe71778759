"""Where each release keeps its images, labels and depth maps under the dataset root.

A layout names its folders by templates in which ``{split}`` stands for a split folder (train,
val, ...) and ``{condition}`` for a weather or time-of-day folder (ACDC, Dark Zurich). Under
such a folder the images sit directly or, for Cityscapes, ACDC and Dark Zurich, in one folder
per city or sequence; a label or depth map has the path of its image under the label or depth
folder, with the layout's suffix. Depth maps mirror the image tree under ``depth/`` and end in
``.png`` or, for float depth, ``.npy``; Cityscapes depth maps are named as the published
dispersion code reads them, ``depth/SPLIT/CITY/NAME_depth.png`` (``cityscapes.py:41`` there),
and also found under the image's own name (``NAME_leftImg8bit.png``).

- ``gta``: ``images/NAME.png``; labels ``labels/NAME.png`` in Cityscapes label ids.
- ``synthia`` (RAND-CITYSCAPES): ``RGB/NAME.png``; labels ``GT/LABELS/NAME.png``, 16-bit PNGs
  whose first channel holds the Synthia class id.
- ``cityscapes``: ``leftImg8bit/SPLIT/CITY/NAME_leftImg8bit.png``; labels
  ``gtFine/SPLIT/CITY/NAME_gtFine_labelIds.png`` (none public for the test split).
- ``acdc``: ``rgb_anon/CONDITION/SPLIT/SEQ/NAME_rgb_anon.png`` (fog, night, rain, snow); labels
  ``gt/CONDITION/SPLIT/SEQ/NAME_gt_labelTrainIds.png`` and ``..._gt_labelIds.png``.
- ``darkzurich``: ``rgb_anon/SPLIT/CONDITION/SEQ/NAME_rgb_anon.png`` (day, twilight, night;
  training uses night); labels ``gt/val/night/SEQ/NAME_gt_labelTrainIds.png`` and
  ``..._gt_labelIds.png``, for val only.
- ``bdd100k``: ``images/10k/SPLIT/NAME.jpg``; labels ``labels/sem_seg/masks/SPLIT/NAME.png`` in
  trainIds.
- ``mapillary`` (Vistas v1.2): ``SPLIT/images/NAME.jpg`` (training, validation, testing); labels
  ``SPLIT/labels/NAME.png``, palette indices of the 66 Vistas v1.2 classes.

The loaders read trainId labels. ``uda data convert`` writes those of GTA, Synthia, Cityscapes
and Mapillary beside the originals (``NAME_labelTrainIds.png``,
``NAME_gtFine_labelTrainIds.png``); ACDC, Dark Zurich and BDD100K ship them, and ``convert``
only fills in those missing from ACDC's and Dark Zurich's label ids. The ``*_ref`` split folders
of ACDC and Dark Zurich (daytime images of the same places) are not part of the benchmarks and
are left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from uda_data.depth import DepthEncoding
from uda_data.errors import DataError

LayoutName = Literal["gta", "synthia", "cityscapes", "acdc", "darkzurich", "bdd100k", "mapillary"]
REFERENCE_SPLIT_SUFFIX = "_ref"


def as_pattern(template: str) -> str:
    """A folder template for messages, e.g. ``rgb_anon/CONDITION/SPLIT``."""
    return template.format(split="SPLIT", condition="CONDITION")


@dataclass(frozen=True)
class Folders:
    """The image, label and depth folders of one split (one condition of it, for ACDC and
    Dark Zurich) of a dataset, and how a file in one finds its partners in the others."""

    layout: Layout
    images: Path
    labels: Path
    depth: Path
    split: str | None = None
    condition: str | None = None

    def _find(self, folder: Path, ending: str) -> list[Path]:
        pattern = f"*{ending}"
        return sorted(folder.glob(f"*/{pattern}" if self.layout.nested else pattern))

    @property
    def _image_ending(self) -> str:
        return f"{self.layout.image_suffix}{self.layout.image_ext}"

    def find_images(self) -> list[Path]:
        return self._find(self.images, self._image_ending)

    def find_labels(self) -> list[Path]:
        """The trainId label files, whether or not their image exists."""
        return self._find(self.labels, f"{self.layout.train_id_suffix}.png")

    def find_id_labels(self) -> list[Path]:
        """The label files in class ids as released (none where the release has only trainId
        labels), whether or not their image exists."""
        suffix = self.layout.id_suffix
        if suffix is None:
            return []
        found = self._find(self.labels, f"{suffix}.png")
        if not suffix:  # GTA, Synthia, Mapillary: the trainId labels sit beside them
            train_ids = f"{self.layout.train_id_suffix}.png"
            found = [p for p in found if not p.name.endswith(train_ids)]
        return found

    def _relative(self, image: Path) -> tuple[Path, str]:
        folder = image.parent.relative_to(self.images)
        return folder, image.name.removesuffix(self._image_ending)

    def label_of(self, image: Path) -> Path:
        """The trainId label of an image."""
        folder, base = self._relative(image)
        return self.labels / folder / f"{base}{self.layout.train_id_suffix}.png"

    def id_label_of(self, image: Path) -> Path | None:
        """The label of an image in class ids as released; None where the release has only
        trainId labels."""
        if self.layout.id_suffix is None:
            return None
        folder, base = self._relative(image)
        return self.labels / folder / f"{base}{self.layout.id_suffix}.png"

    def image_of(self, label: Path, *, ids: bool = False) -> Path:
        """The image a trainId label (``ids``: a label in class ids) belongs to."""
        folder = label.parent.relative_to(self.labels)
        suffix = self.layout.id_suffix if ids else self.layout.train_id_suffix
        base = label.name.removesuffix(f"{suffix}.png")
        return self.images / folder / f"{base}{self._image_ending}"

    def depth_of(self, image: Path, encoding: DepthEncoding) -> Path:
        """The depth map of an image: the published name (``depth_suffix``) where the layout
        has one, unless only a map named after the image (``NAME_leftImg8bit.png``, as the
        embedded domains write it) exists; else the image's name with the depth extension."""
        folder, base = self._relative(image)
        ext = ".npy" if encoding == "float_npy" else ".png"
        by_image = self.depth / folder / f"{image.stem}{ext}"
        if self.layout.depth_suffix is None:
            return by_image
        published = self.depth / folder / f"{base}{self.layout.depth_suffix}{ext}"
        return by_image if by_image.is_file() and not published.is_file() else published


@dataclass(frozen=True)
class Layout:
    """The folders and file names of one release (see the module docstring)."""

    name: LayoutName
    title: str
    images: str
    """The image folder under the root, a template of ``{split}`` and ``{condition}``."""
    labels: str
    depth: str
    image_suffix: str = ""
    image_ext: str = ".png"
    id_suffix: str | None = ""
    """How the labels in class ids end (before ``.png``); None: the release labels in trainIds
    only, there is nothing to convert."""
    train_id_suffix: str = "_labelTrainIds"
    ships_train_ids: bool = False
    """The release has trainId labels: they are used as they are, never rewritten."""
    depth_suffix: str | None = None
    """How a depth map ends (before ``.png``) where the published dispersion code names it in
    place of the image suffix (Cityscapes: ``NAME_depth.png``); None: the image's own name."""
    nested: bool = False
    """Under a split folder, the images sit in one folder per city or sequence."""
    conditions: tuple[str, ...] = ()
    """The ``{condition}`` folders of the release."""
    default_conditions: tuple[str, ...] = ()
    """The conditions used unless others are asked for (empty: all): those of the reference."""
    split_names: tuple[str, ...] = ()
    """The split folders, where the release names them (empty: any folder)."""
    unlabelled_splits: tuple[str, ...] = ("test",)
    """Splits for which the release has no labels."""

    @property
    def has_splits(self) -> bool:
        return "{split}" in self.images

    @property
    def pattern(self) -> str:
        """The image folder for messages, e.g. ``rgb_anon/CONDITION/SPLIT``."""
        return as_pattern(self.images)

    def choose_conditions(self, conditions: Sequence[str] | None = None) -> tuple[str, ...]:
        """The conditions to use: those given, else the default ones; a DataError names an
        unknown one."""
        if not self.conditions:
            if conditions:
                raise DataError(f"{self.title} layout: has no conditions to choose from")
            return ()
        chosen = tuple(conditions or self.default_conditions or self.conditions)
        unknown = [c for c in chosen if c not in self.conditions]
        if unknown:
            raise DataError(
                f"{self.title} layout: unknown condition {', '.join(unknown)};"
                f" choose from {', '.join(self.conditions)}"
            )
        return chosen

    def stats_key(self, split: str | None, conditions: Sequence[str] | None = None) -> str | None:
        """What names the class statistics file of a split: the split, with the conditions
        where they are not the default ones (None for a layout without splits)."""
        if not self.has_splits:
            return None
        chosen = self.choose_conditions(conditions)
        return split if chosen == self.choose_conditions() else f"{split}_{'+'.join(chosen)}"

    def folders(
        self, root: Path, split: str | None = None, conditions: Sequence[str] | None = None
    ) -> list[Folders]:
        """The folders of one split, one per condition chosen (one for other layouts)."""
        root = Path(root)
        if not self.has_splits:
            split = None
        elif not split:
            raise DataError(f"{self.title} layout: a split (train, val, ...) is needed")

        def place(template: str, condition: str | None) -> Path:
            return root / template.format(split=split, condition=condition)

        return [
            Folders(
                self,
                place(self.images, c),
                place(self.labels, c),
                place(self.depth, c),
                split,
                c,
            )
            for c in self.choose_conditions(conditions) or (None,)
        ]

    def splits(self, root: Path, conditions: Sequence[str] | None = None) -> list[str | None]:
        """The split folders found under the root (``[None]`` for a layout without splits)."""
        if not self.has_splits:
            return [None]
        root = Path(root)
        at = Path(self.images).parts.index("{split}")
        found = set()
        for condition in self.choose_conditions(conditions) or (None,):
            for folder in root.glob(self.images.format(split="*", condition=condition)):
                name = folder.relative_to(root).parts[at]
                if not folder.is_dir() or name.endswith(REFERENCE_SPLIT_SUFFIX):
                    continue
                if not self.split_names or name in self.split_names:
                    found.add(name)
        return sorted(found)

    def require_root(self, root: Path, conditions: Sequence[str] | None = None) -> None:
        """A DataError unless the root holds this layout's image folder (of some split)."""
        root = Path(root)
        if not any(f.images.is_dir() for f in self._all_folders(root, conditions)):
            raise DataError(
                f"{root}: no {self.pattern}/ folder, so not the {self.title} layout;"
                " check the dataset root and --layout"
            )

    def _all_folders(self, root: Path, conditions: Sequence[str] | None) -> list[Folders]:
        return [
            f
            for split in self.splits(root, conditions)
            for f in self.folders(root, split, conditions)
        ]

    def evidence(self, root: Path) -> int:
        """How clearly the root is in this layout: 2 its images are there, 1 only its image
        folder, 0 neither (all conditions looked at)."""
        folders = [f for f in self._all_folders(root, self.conditions) if f.images.is_dir()]
        if any(f.find_images() for f in folders):
            return 2
        return 1 if folders else 0


GTA = Layout("gta", "GTA", images="images", labels="labels", depth="depth")
SYNTHIA = Layout("synthia", "Synthia", images="RGB", labels="GT/LABELS", depth="depth")
CITYSCAPES = Layout(
    "cityscapes",
    "Cityscapes",
    images="leftImg8bit/{split}",
    labels="gtFine/{split}",
    depth="depth/{split}",
    image_suffix="_leftImg8bit",
    id_suffix="_gtFine_labelIds",
    train_id_suffix="_gtFine_labelTrainIds",
    depth_suffix="_depth",
    nested=True,
)
ACDC = Layout(
    "acdc",
    "ACDC",
    images="rgb_anon/{condition}/{split}",
    labels="gt/{condition}/{split}",
    depth="depth/{condition}/{split}",
    image_suffix="_rgb_anon",
    id_suffix="_gt_labelIds",
    train_id_suffix="_gt_labelTrainIds",
    ships_train_ids=True,
    nested=True,
    conditions=("fog", "night", "rain", "snow"),
)
DARK_ZURICH = Layout(
    "darkzurich",
    "Dark Zurich",
    images="rgb_anon/{split}/{condition}",
    labels="gt/{split}/{condition}",
    depth="depth/{split}/{condition}",
    image_suffix="_rgb_anon",
    id_suffix="_gt_labelIds",
    train_id_suffix="_gt_labelTrainIds",
    ships_train_ids=True,
    nested=True,
    conditions=("day", "twilight", "night"),
    default_conditions=("night",),
    unlabelled_splits=("train", "test"),
)
BDD100K = Layout(
    "bdd100k",
    "BDD100K",
    images="images/10k/{split}",
    labels="labels/sem_seg/masks/{split}",
    depth="depth/10k/{split}",
    image_ext=".jpg",
    id_suffix=None,
    train_id_suffix="",
    ships_train_ids=True,
)
MAPILLARY = Layout(
    "mapillary",
    "Mapillary Vistas",
    images="{split}/images",
    labels="{split}/labels",
    depth="depth/{split}",
    image_ext=".jpg",
    split_names=("training", "validation", "testing"),
    unlabelled_splits=("testing",),
)
LAYOUTS: dict[str, Layout] = {
    layout.name: layout
    for layout in (GTA, SYNTHIA, CITYSCAPES, ACDC, DARK_ZURICH, BDD100K, MAPILLARY)
}


def detect_layout(root: Path) -> Layout:
    """The one layout whose images (else whose image folder) the root holds; a DataError says
    what was looked for."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: folder does not exist; check the dataset root")
    evidence = {layout: layout.evidence(root) for layout in LAYOUTS.values()}
    best = max(evidence.values())
    found = [layout for layout, seen in evidence.items() if seen == best and seen]
    if len(found) != 1:
        expected = ", ".join(f"{layout.pattern}/ ({layout.name})" for layout in LAYOUTS.values())
        what = "none" if not found else " and ".join(layout.name for layout in found)
        raise DataError(
            f"{root}: cannot tell the layout (looked for {expected}; found {what}); pass --layout"
        )
    return found[0]
