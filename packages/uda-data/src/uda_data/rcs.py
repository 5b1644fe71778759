"""Rare class sampling (RCS, DAFormer): show the source images of rare classes more often.

With f_c the share of class c among all labelled source pixels, a draw picks a class with
P(c) = softmax((1 - f_c) / T), then a source image uniformly among those that hold more than
``min_pixels`` pixels of c. The training pipeline then re-crops until the crop holds enough of c
(``TrainPipeline``).

Pixel counts are taken once per dataset, on the label files at their original resolution as in
DAFormer, so ``min_pixels`` (3000) refers to full-resolution labels, while the crop threshold is
checked on the resized crop. Classes that no image holds with more than ``min_pixels`` pixels
cannot be drawn: they are left out of the softmax. The counts are kept in a JSON file with a
fingerprint of every label file (path, size, mtime); a file that is empty, corrupt or no longer
matches the dataset is an error, never silently used.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from uda_data.atomic import check_writable, write_bytes
from uda_data.classes import CLASSES, NUM_CLASSES
from uda_data.datasets import SegmentationFolder
from uda_data.errors import DataError
from uda_data.files import read_label

Progress = Callable[[int, int], None]

STATS_FORMAT = "uda-class-stats"
STATS_VERSION = 1
REGENERATE = "delete it to recompute on first use, or run `uda data stats <dataset root> --force`"


@dataclass(frozen=True)
class ClassStats:
    """Pixels of each class in each label file of a dataset, with the files' fingerprint.

    Rows follow the folder's item order; ``files`` are the label paths relative to their common
    folder, so a dataset that is moved (keeping mtimes) still matches.
    """

    files: tuple[str, ...]
    sizes: np.ndarray  # bytes per label file, int64
    mtimes: np.ndarray  # modification time per label file in ns, int64
    counts: np.ndarray  # num_images x NUM_CLASSES pixel counts, int64

    @property
    def frequencies(self) -> np.ndarray:
        """f_c: the share of each class among all labelled pixels (ignored pixels left out)."""
        total = self.counts.sum(axis=0)
        return total / max(int(total.sum()), 1)

    def save(self, path: Path) -> None:
        """Write as JSON, atomically (a reader sees the old file or the new one, never half);
        a DataError names the path if it cannot be written."""
        images = [
            {"label": f, "bytes": int(s), "mtime_ns": int(m), "pixels": c.tolist()}
            for f, s, m, c in zip(self.files, self.sizes, self.mtimes, self.counts, strict=True)
        ]
        text = json.dumps(
            {
                "format": STATS_FORMAT,
                "version": STATS_VERSION,
                "classes": list(CLASSES),
                "images": images,
            },
            separators=(",", ":"),
        )
        write_bytes(path, f"{text}\n".encode())

    @classmethod
    def load(cls, path: Path) -> ClassStats:
        """Read a statistics file; an empty or malformed one raises a DataError naming it."""
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise DataError(f"{path}: cannot read class statistics ({exc.strerror})") from None
        if not text.strip():
            raise DataError(f"{path}: class statistics file is empty; {REGENERATE}")
        try:
            raw = json.loads(text)
            if raw["format"] != STATS_FORMAT or raw["version"] != STATS_VERSION:
                raise ValueError(f"format {raw['format']!r} version {raw['version']!r}")
            images = raw["images"]
            if not images:
                raise ValueError("no images")
            stats = cls(
                tuple(str(im["label"]) for im in images),
                np.array([im["bytes"] for im in images], dtype=np.int64),
                np.array([im["mtime_ns"] for im in images], dtype=np.int64),
                np.array([im["pixels"] for im in images], dtype=np.int64),
            )
            if stats.counts.shape != (len(images), NUM_CLASSES) or (stats.counts < 0).any():
                raise ValueError(f"pixel counts must be {NUM_CLASSES} non-negative integers")
        except (ValueError, KeyError, TypeError, AttributeError, OverflowError) as exc:
            raise DataError(
                f"{path}: not a valid class statistics file ({exc}); {REGENERATE}"
            ) from None
        return stats

    def check_matches(self, folder: SegmentationFolder, path: Path) -> None:
        """Raise a DataError naming ``path`` if the folder's label files are not those counted."""
        files, sizes, mtimes = _fingerprint(_label_files(folder))
        if files != self.files:
            new = sorted(set(files) - set(self.files))
            gone = sorted(set(self.files) - set(files))
            example = f"e.g. new {new[0]}" if new else f"e.g. missing {gone[0]}" if gone else ""
            reason = (
                f"it counts {len(self.files)} label files, the dataset has {len(files)}"
                f" ({example or 'in another order'})"
            )
        else:
            changed = np.flatnonzero((sizes != self.sizes) | (mtimes != self.mtimes))
            if not len(changed):
                return
            reason = f"{len(changed)} label file(s) changed since, e.g. {files[changed[0]]}"
        raise DataError(f"{path}: class statistics are stale: {reason}; {REGENERATE}")


def _label_files(folder: SegmentationFolder) -> list[Path]:
    labels = [item.label for item in folder.items]
    if any(label is None for label in labels):
        raise DataError(f"{folder.name}: class statistics need the labels; open it with labels")
    return labels


def _fingerprint(labels: list[Path]) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    base = os.path.commonpath([label.parent for label in labels])
    stats = [label.stat() for label in labels]
    return (
        tuple(label.relative_to(base).as_posix() for label in labels),
        np.array([s.st_size for s in stats], dtype=np.int64),
        np.array([s.st_mtime_ns for s in stats], dtype=np.int64),
    )


def _count_classes(label: Path) -> np.ndarray:
    return np.bincount(read_label(label).ravel(), minlength=256)[:NUM_CLASSES]


def compute_class_stats(
    folder: SegmentationFolder, *, workers: int = 2, progress: Progress | None = None
) -> ClassStats:
    """Count the pixels of every class in every label file of ``folder``, in parallel."""
    labels = _label_files(folder)
    files, sizes, mtimes = _fingerprint(labels)
    counts = np.zeros((len(labels), NUM_CLASSES), dtype=np.int64)
    with contextlib.ExitStack() as stack:
        workers = min(workers, len(labels))
        if workers > 1:
            pool = stack.enter_context(multiprocessing.get_context("spawn").Pool(workers))
            chunk = max(1, min(32, len(labels) // (8 * workers)))
            rows = pool.imap(_count_classes, labels, chunksize=chunk)
        else:
            rows = map(_count_classes, labels)
        for i, row in enumerate(rows):
            counts[i] = row
            if progress:
                progress(i + 1, len(labels))
    return ClassStats(files, sizes, mtimes, counts)


def load_or_compute(
    folder: SegmentationFolder,
    cache_path: Path,
    progress: Progress | None = None,
    *,
    workers: int = 2,
) -> ClassStats:
    """The statistics of ``folder``: computed and saved if ``cache_path`` is missing, else
    loaded and checked (an empty, corrupt or stale file raises a DataError naming it)."""
    cache_path = Path(cache_path)
    if not cache_path.exists():
        check_writable(cache_path)
        stats = compute_class_stats(folder, workers=workers, progress=progress)
        stats.save(cache_path)
        return stats
    stats = ClassStats.load(cache_path)
    stats.check_matches(folder, cache_path)
    return stats


def refresh_class_stats(
    folder: SegmentationFolder,
    path: Path,
    progress: Progress | None = None,
    *,
    workers: int = 2,
) -> bool:
    """Make the statistics at ``path`` those of ``folder``: a file that matches is kept, a
    missing, corrupt or stale one is recomputed. Returns whether it was recomputed."""
    path = Path(path)
    if path.exists():
        try:
            ClassStats.load(path).check_matches(folder, path)
            return False
        except DataError:
            pass
    check_writable(path)
    compute_class_stats(folder, workers=workers, progress=progress).save(path)
    return True


def class_stats_path(root: Path, split: str | None, cache_dir: Path) -> Path:
    """Where a dataset's statistics live: ``<root>/uda_class_stats[_<split>].json`` if that
    file exists or the root is writable, else ``<cache_dir>/stats/<hash of that path>.json``.
    ``split`` is the split's ``Layout.stats_key`` (e.g. ``train``, ``train_fog+snow``)."""
    root = Path(root).expanduser().resolve()
    beside = root / ("uda_class_stats.json" if split is None else f"uda_class_stats_{split}.json")
    if beside.exists() or os.access(root, os.W_OK):
        return beside
    key = hashlib.sha1(str(beside).encode()).hexdigest()[:16]
    return Path(cache_dir) / "stats" / f"{key}.json"


class RareClassSampler:
    """Draws (source image, class): the class by P(c) = softmax((1 - f_c) / T), then an image
    uniformly among those with more than ``min_pixels`` pixels of it."""

    def __init__(self, stats: ClassStats, temperature: float = 0.01, min_pixels: int = 3000):
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature, self.min_pixels = temperature, min_pixels
        self.images_with_class = [
            np.flatnonzero(stats.counts[:, c] > min_pixels) for c in range(NUM_CLASSES)
        ]
        self.classes = np.array(
            [c for c, images in enumerate(self.images_with_class) if len(images)], dtype=np.int64
        )
        if not len(self.classes):
            raise DataError(
                f"rare class sampling: no source image holds more than {min_pixels} pixels of any"
                " class; lower data.rcs.min_pixels"
            )
        logits = (1.0 - stats.frequencies[self.classes]) / temperature
        weights = np.exp(logits - logits.max())
        self._class_probs = weights / weights.sum()

    @property
    def probabilities(self) -> np.ndarray:
        """P(c) for each of the NUM_CLASSES classes; 0 for those that cannot be drawn."""
        out = np.zeros(NUM_CLASSES)
        out[self.classes] = self._class_probs
        return out

    def draw(self, rng: np.random.Generator) -> tuple[int, int]:
        """(image index, class id) of one source draw."""
        c = int(rng.choice(self.classes, p=self._class_probs))
        images = self.images_with_class[c]
        return int(images[rng.integers(len(images))]), c
