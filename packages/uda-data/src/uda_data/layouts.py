"""Where each release keeps its images, labels and depth maps under the dataset root.

- ``gta``: ``images/NAME.png``; labels ``labels/NAME.png`` in Cityscapes label ids.
- ``synthia`` (RAND-CITYSCAPES): ``RGB/NAME.png``; labels ``GT/LABELS/NAME.png``, 16-bit PNGs
  whose first channel holds the Synthia class id.
- ``cityscapes``: ``leftImg8bit/SPLIT/CITY/NAME_leftImg8bit.png``; labels
  ``gtFine/SPLIT/CITY/NAME_gtFine_labelIds.png`` (none public for the test split).

``uda data convert`` writes the trainId labels the loaders read beside the originals:
``NAME_labelTrainIds.png`` (``NAME_gtFine_labelTrainIds.png`` for Cityscapes). Depth maps mirror
the image tree under ``depth/``: ``depth/NAME.png``, ``depth/SPLIT/CITY/NAME_leftImg8bit.png``,
or the same name ending in ``.npy`` for float depth.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from uda_data.depth import DepthEncoding
from uda_data.errors import DataError

LayoutName = Literal["gta", "synthia", "cityscapes"]


@dataclass(frozen=True)
class Layout:
    """The paths of one release. An image ``IMAGES[/SPLIT]/DIR/BASE<image_suffix>.png`` has its
    original label at ``LABELS[/SPLIT]/DIR/BASE<id_suffix>.png`` and its trainId label at
    ``LABELS[/SPLIT]/DIR/BASE<train_id_suffix>.png``."""

    name: LayoutName
    title: str
    images: str
    labels: str
    image_suffix: str = ""
    id_suffix: str = ""
    train_id_suffix: str = "_labelTrainIds"
    has_splits: bool = False
    """Images sit in one folder per split, each with one folder per city."""

    def _under_split(self, folder: Path, split: str | None) -> Path:
        if not self.has_splits:
            return folder
        if not split:
            raise DataError(f"{self.title} layout: a split (train, val, ...) is needed")
        return folder / split

    def image_dir(self, root: Path, split: str | None = None) -> Path:
        return self._under_split(Path(root) / self.images, split)

    def label_dir(self, root: Path, split: str | None = None) -> Path:
        return self._under_split(Path(root) / self.labels, split)

    def depth_dir(self, root: Path, split: str | None = None) -> Path:
        return self._under_split(Path(root) / "depth", split)

    def find_images(self, root: Path, split: str | None = None) -> list[Path]:
        pattern = f"*{self.image_suffix}.png"
        return sorted(
            self.image_dir(root, split).glob(f"*/{pattern}" if self.has_splits else pattern)
        )

    def find_labels(
        self, root: Path, split: str | None = None, *, original: bool = False
    ) -> list[Path]:
        """The trainId label files (``original``: the labels as released) under the label
        folder, whether or not their image exists."""
        suffix = self.id_suffix if original else self.train_id_suffix
        pattern = f"*{suffix}.png"
        found = self.label_dir(root, split).glob(f"*/{pattern}" if self.has_splits else pattern)
        if original and not suffix:  # GTA and Synthia: the trainId labels sit beside them
            found = (p for p in found if not p.name.endswith(f"{self.train_id_suffix}.png"))
        return sorted(found)

    def image_of(
        self, root: Path, split: str | None, label: Path, *, original: bool = False
    ) -> Path:
        """The image a label file (``original``: as released) belongs to."""
        folder = label.parent.relative_to(self.label_dir(root, split))
        suffix = self.id_suffix if original else self.train_id_suffix
        base = label.name.removesuffix(f"{suffix}.png")
        return self.image_dir(root, split) / folder / f"{base}{self.image_suffix}.png"

    def splits(self, root: Path) -> list[str | None]:
        """The split folders found under the root (``[None]`` for a layout without splits)."""
        if not self.has_splits:
            return [None]
        folder = Path(root) / self.images
        return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []

    def _relative(self, root: Path, split: str | None, image: Path) -> tuple[Path, str]:
        folder = image.parent.relative_to(self.image_dir(root, split))
        return folder, image.name.removesuffix(f"{self.image_suffix}.png")

    def label_of(
        self, root: Path, split: str | None, image: Path, *, original: bool = False
    ) -> Path:
        """The trainId label of an image (``original``: the label as released)."""
        folder, base = self._relative(root, split, image)
        suffix = self.id_suffix if original else self.train_id_suffix
        return self.label_dir(root, split) / folder / f"{base}{suffix}.png"

    def depth_of(self, root: Path, split: str | None, image: Path, encoding: DepthEncoding) -> Path:
        folder, _ = self._relative(root, split, image)
        name = f"{image.stem}.npy" if encoding == "float_npy" else image.name
        return self.depth_dir(root, split) / folder / name


GTA = Layout("gta", "GTA", images="images", labels="labels")
SYNTHIA = Layout("synthia", "Synthia", images="RGB", labels="GT/LABELS")
CITYSCAPES = Layout(
    "cityscapes",
    "Cityscapes",
    images="leftImg8bit",
    labels="gtFine",
    image_suffix="_leftImg8bit",
    id_suffix="_gtFine_labelIds",
    train_id_suffix="_gtFine_labelTrainIds",
    has_splits=True,
)
LAYOUTS: dict[str, Layout] = {layout.name: layout for layout in (GTA, SYNTHIA, CITYSCAPES)}


def detect_layout(root: Path) -> Layout:
    """The layout whose image folder the root holds; a DataError says what was looked for."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: folder does not exist; check the dataset root")
    found = [layout for layout in LAYOUTS.values() if (root / layout.images).is_dir()]
    if len(found) != 1:
        expected = ", ".join(f"{layout.images}/ ({layout.name})" for layout in LAYOUTS.values())
        what = "none" if not found else " and ".join(layout.name for layout in found)
        raise DataError(
            f"{root}: cannot tell the layout (looked for {expected}; found {what}); pass --layout"
        )
    return found[0]
