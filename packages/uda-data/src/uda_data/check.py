"""Is a dataset ready to train on? The checks behind ``uda data check``.

Every image, trainId label and depth map is opened, but only its header is read, so a check of
GTA's 25k images takes seconds: counts per split, images paired with labels and depth maps of
the same size, how depth is stored, and whether the rare class statistics match the labels.
The label values themselves are validated when the statistics are counted (``uda data
convert``), so statistics that are up to date vouch for them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from uda_data.datasets import open_layout
from uda_data.depth import DepthEncoding
from uda_data.errors import DataError
from uda_data.layouts import Layout
from uda_data.rcs import ClassStats, Progress, class_stats_path

Size = tuple[int, int]

DEPTH_KINDS: dict[str, DepthEncoding] = {
    "8-bit PNG": "depth_anything_png",
    "16-bit PNG": "uint16_mm",
    "npy": "float_npy",
}


@dataclass
class SplitCheck:
    """What one split holds; ``problems`` are lines that each name a file and the fix."""

    split: str | None
    labelled: bool
    images: int = 0
    sizes: Counter[Size] = field(default_factory=Counter)
    labels: int = 0
    depth: int = 0
    depth_kinds: Counter[str] = field(default_factory=Counter)
    stats: str = "-"
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class DatasetCheck:
    root: Path
    layout: Layout
    splits: list[SplitCheck]

    @property
    def problems(self) -> list[str]:
        return [p for split in self.splits for p in split.problems]

    @property
    def notes(self) -> list[str]:
        return [n for split in self.splits for n in split.notes]


def _header(path: Path) -> tuple[Size, str] | str:
    """(size, mode) of an image file, or why it cannot be read."""
    try:
        with Image.open(path) as img:
            return img.size, img.mode
    except (OSError, ValueError) as exc:
        return f"{path}: cannot be read as an image ({exc})"


def _depth_header(path: Path) -> tuple[Size, str] | str:
    """(size, kind) of a depth map (a PNG or a .npy array), or why it cannot be read."""
    if path.suffix == ".npy":
        try:
            shape = np.load(path, mmap_mode="r").shape
        except (OSError, ValueError) as exc:
            return f"{path}: cannot be read as a .npy array ({exc})"
        if len(shape) != 2:
            return f"{path}: holds a {shape} array, not an H x W depth map"
        return (shape[1], shape[0]), "npy"
    header = _header(path)
    if isinstance(header, str):
        return header
    size, mode = header
    if mode in ("L", "P", "RGB", "RGBA"):  # the loaders read the first channel
        return size, "8-bit PNG"
    if mode.startswith("I;16"):
        return size, "16-bit PNG"
    return f"{path}: a {mode} image, neither an 8-bit nor a 16-bit depth PNG"


class _Findings:
    """Files sharing one problem, reported as one line: how many, the first, the fix."""

    def __init__(self) -> None:
        self.found: dict[str, list[str]] = {}

    def add(self, kind: str, detail: str) -> None:
        self.found.setdefault(kind, []).append(detail)

    def lines(self, fixes: dict[str, str]) -> list[str]:
        out = []
        for kind, details in self.found.items():
            more = f" ({len(details)} files, the first shown)" if len(details) > 1 else ""
            fix = f"; {fixes[kind]}" if kind in fixes else ""
            out.append(f"{details[0]}{more}{fix}")
        return out


class _SplitChecker:
    """The per-file checks of one split, gathering what they find."""

    def __init__(self, root: Path, layout: Layout, split: str | None, labelled: bool) -> None:
        self.root, self.layout, self.split = root, layout, split
        self.result = SplitCheck(split, labelled)
        self.findings = _Findings()
        self.no_depth: list[Path] = []

    def image(self, image: Path) -> None:
        header = _header(image)
        if isinstance(header, str):
            self.findings.add("unreadable", header)
            return
        size, _ = header
        self.result.sizes[size] += 1
        if self.result.labelled:
            self.label(image, size)
        self.depth(image, size)

    def label(self, image: Path, size: Size) -> None:
        layout, root, split = self.layout, self.root, self.split
        label = layout.label_of(root, split, image)
        if not label.is_file():
            original = layout.label_of(root, split, image, original=True)
            if original.is_file():
                self.findings.add("not converted", f"{original}: not converted to {label.name}")
            else:
                self.findings.add("no label", f"{image}: no label (expected {original})")
            return
        header = _header(label)
        if isinstance(header, str):
            self.findings.add("unreadable", header)
            return
        label_size, mode = header
        if mode not in ("L", "P"):
            self.findings.add("label format", f"{label}: a {mode} image, not 8-bit trainIds")
        elif label_size != size:
            self.findings.add(
                "label size",
                f"{label}: label is {label_size[0]}x{label_size[1]} but its image is"
                f" {size[0]}x{size[1]}",
            )
        else:
            self.result.labels += 1

    def depth(self, image: Path, size: Size) -> None:
        png, npy = (
            self.layout.depth_of(self.root, self.split, image, encoding)
            for encoding in ("depth_anything_png", "float_npy")
        )
        path = png if png.is_file() else npy if npy.is_file() else None
        if path is None:
            self.no_depth.append(png)
            return
        header = _depth_header(path)
        if isinstance(header, str):
            self.findings.add("unreadable", header)
            return
        depth_size, kind = header
        self.result.depth += 1
        self.result.depth_kinds[kind] += 1
        if depth_size != size:
            self.findings.add(
                "depth size",
                f"{path}: depth is {depth_size[0]}x{depth_size[1]} but its image is"
                f" {size[0]}x{size[1]}",
            )

    def finish(self, cache_dir: Path) -> SplitCheck:
        result, where = self.result, f"{self.split}: " if self.split else ""
        if result.depth and self.no_depth:
            self.findings.add("depth missing", f"{self.no_depth[0]}: no depth map")
        if len(result.depth_kinds) > 1:
            kinds = ", ".join(sorted(result.depth_kinds))
            self.findings.add("depth mixed", f"{where}depth maps are stored as {kinds}")
        if not result.depth:
            result.notes.append(
                f"{where}no depth maps (only plugins that use depth need them;"
                f" `uda data depth {self.root}` writes them)"
            )
        elif len(result.depth_kinds) == 1:
            kind = next(iter(result.depth_kinds))
            if DEPTH_KINDS[kind] != "depth_anything_png":
                result.notes.append(
                    f"{where}depth maps are {kind}s: set depth_encoding: {DEPTH_KINDS[kind]}"
                )
        convert = f"`uda data convert {self.layout.name} {self.root}`"
        depth = f"`uda data depth {self.root}`"
        result.problems += self.findings.lines(
            {
                "unreadable": "replace those files (from the release) or regenerate them",
                "not converted": f"convert them with {convert}",
                "no label": "add the labels from the release or remove those images",
                "label size": f"convert again with {convert} --size-mismatch resize",
                "label format": f"convert again with {convert}",
                "depth missing": f"{depth} writes the missing ones",
                "depth size": f"delete those depth maps and run {depth}",
                "depth mixed": "keep one depth encoding per dataset",
            }
        )
        if result.labelled and result.labels == result.images:
            result.stats = _stats_state(self.root, self.layout, self.split, cache_dir, result)
        return result


def check_split(
    root: Path,
    layout: Layout,
    split: str | None,
    images: list[Path],
    *,
    cache_dir: Path,
    progress: Progress | None = None,
) -> SplitCheck:
    """Check one split of a dataset (all of it for a layout without splits)."""
    where = f"{split}: " if split else ""
    # Sources (no splits) need labels; a Cityscapes split may be used without them.
    labelled = split != "test" and (not layout.has_splits or layout.label_dir(root, split).is_dir())
    checker = _SplitChecker(root, layout, split, labelled)
    checker.result.images = len(images)
    if not images:
        checker.result.problems.append(
            f"{where}no *{layout.image_suffix}.png images in {layout.image_dir(root, split)};"
            " check the dataset root and --layout"
        )
        return checker.result
    if split == "test":
        checker.result.notes.append("test: no public labels, not used for training or scoring")
    elif not labelled:
        checker.result.notes.append(f"{where}no labels ({layout.label_dir(root, split)} missing)")
    for i, image in enumerate(images):
        checker.image(image)
        if progress:
            progress(i + 1, len(images))
    return checker.finish(cache_dir)


def _stats_state(
    root: Path, layout: Layout, split: str | None, cache_dir: Path, result: SplitCheck
) -> str:
    path = class_stats_path(root, split, cache_dir)
    if not path.exists():
        result.notes.append(
            f"{split + ': ' if split else ''}no class statistics for rare class sampling yet"
            f" (`uda data convert {layout.name}` writes them, training counts them on first use)"
        )
        return "missing"
    try:
        folder = open_layout(layout, root, split)
        ClassStats.load(path).check_matches(folder, path)
    except DataError as exc:
        result.problems.append(str(exc))
        return "stale"
    return "up to date"


def check_dataset(
    root: Path, layout: Layout, *, cache_dir: Path, progress: Progress | None = None
) -> DatasetCheck:
    """Check every split of a dataset."""
    root = Path(root)
    if not (root / layout.images).is_dir():
        raise DataError(
            f"{root}: no {layout.images}/ folder, so not the {layout.title} layout;"
            " check the dataset root and --layout"
        )
    found = {split: layout.find_images(root, split) for split in layout.splits(root)}
    if not found:
        raise DataError(f"{root / layout.images}: no split folders (train, val, ...) found")
    total, done, splits = sum(len(images) for images in found.values()), 0, []
    for split, images in found.items():

        def step(n: int, _: int, offset: int = done) -> None:
            progress(offset + n, total)

        splits.append(
            check_split(
                root, layout, split, images, cache_dir=cache_dir, progress=progress and step
            )
        )
        done += len(images)
    return DatasetCheck(root, layout, splits)
