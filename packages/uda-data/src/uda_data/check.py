"""Is a dataset ready to train on? The checks behind ``uda data check``.

Every image, trainId label and depth map is decoded completely, in parallel, by the readers
that training, evaluation and conversion use (``uda_data.files``), so what would stop them is
found here first: unreadable files (truncated, empty, dangling links), labels that are not
single-channel 8-bit trainId maps or hold ids outside the class set, depth maps of another
size or shape or with NaN/inf values, images without labels and labels without images,
unconverted releases, mixed depth encodings and stale class statistics. Files that are read
with a conversion (16-bit images, a JPEG named ``.png``, an alpha channel) are warnings.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from uda_data.datasets import open_layout
from uda_data.depth import DepthEncoding
from uda_data.errors import DataError
from uda_data.files import decode_image, depth_encoding_of, read_depth, read_label
from uda_data.layouts import Folders, Layout
from uda_data.rcs import ClassStats, Progress, class_stats_path

Size = tuple[int, int]

DEPTH_KINDS: dict[DepthEncoding, str] = {
    "depth_anything_png": "8-bit PNG",
    "uint16_mm": "16-bit PNG",
    "float_npy": "npy",
}

FILES_PER_WORKER = 32


@dataclass(frozen=True)
class Finding:
    """A file with a problem or a warning: what kind, the file, and the line that names it."""

    kind: str
    path: Path
    message: str


@dataclass
class SplitCheck:
    """What one split holds and what is wrong with it."""

    split: str | None
    labelled: bool
    images: int = 0
    sizes: Counter[Size] = field(default_factory=Counter)
    labels: int = 0
    """Valid trainId labels of the image's size."""
    depth: int = 0
    """Valid depth maps of the image's size."""
    depth_kinds: Counter[str] = field(default_factory=Counter)
    stats: str = "-"
    problems: list[Finding] = field(default_factory=list)
    warnings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def group_lines(findings: list[Finding]) -> list[str]:
    """One line per kind of finding: the first file's line and how many share it."""
    by_kind: dict[str, list[Finding]] = {}
    for finding in findings:
        by_kind.setdefault(finding.kind, []).append(finding)
    lines = []
    for found in by_kind.values():
        more = f" ({len(found)} files, the first shown)" if len(found) > 1 else ""
        lines.append(f"{found[0].message}{more}")
    return lines


@dataclass
class DatasetCheck:
    root: Path
    layout: Layout
    splits: list[SplitCheck]

    @property
    def problems(self) -> list[str]:
        """One line per kind of problem and split (all files are in ``to_json``)."""
        return [line for split in self.splits for line in group_lines(split.problems)]

    @property
    def warnings(self) -> list[str]:
        return [line for split in self.splits for line in group_lines(split.warnings)]

    @property
    def notes(self) -> list[str]:
        return [n for split in self.splits for n in split.notes]

    def to_json(self) -> dict:
        """Everything found, every file listed, for scripts (``uda data check --json``)."""

        def entries(split: SplitCheck, findings: list[Finding]) -> list[dict]:
            return [
                {"split": split.split, "kind": f.kind, "file": str(f.path), "message": f.message}
                for f in findings
            ]

        return {
            "root": str(self.root),
            "layout": self.layout.name,
            "ok": not any(split.problems for split in self.splits),
            "splits": [
                {
                    "split": s.split,
                    "images": s.images,
                    "sizes": {f"{w}x{h}": n for (w, h), n in s.sizes.most_common()},
                    "labels": s.labels if s.labelled else None,
                    "depth": s.depth,
                    "depth_kinds": dict(s.depth_kinds),
                    "class_stats": s.stats,
                    "problems": len(s.problems),
                    "warnings": len(s.warnings),
                }
                for s in self.splits
            ],
            "problems": [e for s in self.splits for e in entries(s, s.problems)],
            "warnings": [e for s in self.splits for e in entries(s, s.warnings)],
            "notes": self.notes,
        }


@dataclass(frozen=True)
class _Job:
    """The files of one image; ``label`` is None where the split has no labels."""

    image: Path
    label: Path | None
    original: Path | None
    depth_png: Path
    depth_npy: Path


@dataclass
class _ItemCheck:
    size: Size | None = None
    label_ok: bool = False
    depth_kind: DepthEncoding | None = None
    no_depth: bool = False
    problems: list[Finding] = field(default_factory=list)
    warnings: list[Finding] = field(default_factory=list)


def _present(path: Path) -> bool:
    return path.is_file() or path.is_symlink()


def _check_item(job: _Job) -> _ItemCheck:
    """Decode the image, label and depth map of one image (in a worker process)."""
    out = _ItemCheck()
    try:
        decoded = decode_image(job.image)
        height, width = decoded.pixels.shape[:2]
        out.size = (width, height)
        if decoded.conversions:
            conversions = ", ".join(decoded.conversions)
            message = f"{job.image}: {conversions}; read as 8-bit RGB"
            out.warnings.append(Finding(f"image: {conversions}", job.image, message))
    except DataError as exc:
        out.problems.append(Finding(f"image {exc.problem}", job.image, str(exc)))
    if job.label is not None:
        _check_label(job, out)
    _check_depth(job, out)
    return out


def _check_label(job: _Job, out: _ItemCheck) -> None:
    label, original = job.label, job.original
    if not _present(label):
        if original is not None and original.is_file():
            message = f"{original}: not converted to {label.name}"
            out.problems.append(Finding("not converted", original, message))
        else:
            message = f"{job.image}: no label (expected {original or label})"
            out.problems.append(Finding("no label", job.image, message))
        return
    try:
        values = read_label(label)
    except DataError as exc:
        out.problems.append(Finding(f"label {exc.problem}", label, str(exc)))
        return
    if out.size is not None and values.shape != (out.size[1], out.size[0]):
        message = (
            f"{label}: label is {values.shape[1]}x{values.shape[0]} but its image is"
            f" {out.size[0]}x{out.size[1]}"
        )
        out.problems.append(Finding("label size", label, message))
        return
    out.label_ok = out.size is not None


def _check_depth(job: _Job, out: _ItemCheck) -> None:
    path = next((p for p in (job.depth_png, job.depth_npy) if _present(p)), None)
    if path is None:
        out.no_depth = True
        return
    try:
        encoding = depth_encoding_of(path)
        depth = read_depth(path, encoding)
    except DataError as exc:
        out.problems.append(Finding(f"depth {exc.problem}", path, str(exc)))
        return
    if out.size is not None and depth.shape != (out.size[1], out.size[0]):
        message = (
            f"{path}: depth is {depth.shape[1]}x{depth.shape[0]} but its image is"
            f" {out.size[0]}x{out.size[1]}"
        )
        out.problems.append(Finding("depth size", path, message))
        return
    out.depth_kind = encoding


@dataclass
class _SplitPlan:
    result: SplitCheck
    folders: list[Folders]
    jobs: list[_Job]


def _plan_split(
    root: Path, layout: Layout, split: str | None, conditions: Sequence[str] | None
) -> _SplitPlan:
    where = f"{split}: " if split else ""
    folders = layout.folders(root, split, conditions)
    # Sources (no splits) need labels; a split may be a target's unlabelled images.
    labelled = split not in layout.unlabelled_splits and (
        not layout.has_splits or any(f.labels.is_dir() for f in folders)
    )
    result = SplitCheck(split, labelled)
    for folder in folders:
        if folder.condition and not folder.images.is_dir():
            # Dark Zurich has day and twilight for train only; a run on such a split fails
            # with one line naming the folder.
            result.notes.append(f"{where}no {folder.condition} folder ({folder.images})")
        elif not folder.find_images():
            message = (
                f"{where}no *{layout.image_suffix}{layout.image_ext} images in {folder.images};"
                " check the dataset root, --layout and --condition"
            )
            result.problems.append(Finding("no images", folder.images, message))
    if split in layout.unlabelled_splits:
        result.notes.append(f"{where}no public labels, not scored")
    elif not labelled:
        missing = " and ".join(str(f.labels) for f in folders)
        result.notes.append(f"{where}no labels ({missing} missing)")
    jobs = [
        _Job(
            image,
            folder.label_of(image) if labelled else None,
            folder.id_label_of(image) if labelled else None,
            folder.depth_of(image, "depth_anything_png"),
            folder.depth_of(image, "float_npy"),
        )
        for folder in folders
        for image in folder.find_images()
    ]
    result.images = len(jobs)
    if labelled:
        result.problems += _labels_without_images(folders)
    return _SplitPlan(result, folders, jobs)


def _labels_without_images(folders: list[Folders]) -> list[Finding]:
    found = []
    for folder in folders:
        images = set(folder.find_images())
        for ids, labels in ((False, folder.find_labels()), (True, folder.find_id_labels())):
            for label in labels:
                image = folder.image_of(label, ids=ids)
                if image not in images:
                    message = (
                        f"{label}: no image (expected {image}); restore it or remove the label"
                    )
                    found.append(Finding("label without image", label, message))
    return found


def _finish_split(
    root: Path,
    layout: Layout,
    plan: _SplitPlan,
    items: list[_ItemCheck],
    cache_dir: Path,
) -> SplitCheck:
    result, where = plan.result, f"{plan.result.split}: " if plan.result.split else ""
    depth_command = f"`uda data depth {root}`"
    convert = f"`uda data convert {layout.name} {root}`"
    fixes = {
        "not converted": f"convert them with {convert}",
        "label size": f"convert again with {convert} --size-mismatch resize",
        "no label": "add the labels from the release or remove those images",
    }
    for item in items:
        if item.size is not None:
            result.sizes[item.size] += 1
        result.labels += item.label_ok
        if item.depth_kind is not None:
            result.depth += 1
            result.depth_kinds[DEPTH_KINDS[item.depth_kind]] += 1
        result.problems += [
            Finding(f.kind, f.path, f"{f.message}; {fixes[f.kind]}") if f.kind in fixes else f
            for f in item.problems
        ]
        result.warnings += item.warnings
    has_depth = any(not item.no_depth for item in items)
    if has_depth:
        result.problems += [
            Finding(
                "depth missing", job.depth_png, f"{job.depth_png}: no depth map; {depth_command}"
            )
            for job, item in zip(plan.jobs, items, strict=True)
            if item.no_depth
        ]
    if len(result.depth_kinds) > 1:
        kinds = ", ".join(sorted(result.depth_kinds))
        message = f"{where}depth maps are stored as {kinds}; keep one depth encoding per dataset"
        result.problems.append(Finding("depth mixed", plan.folders[0].depth, message))
    if not has_depth:
        result.notes.append(
            f"{where}no depth maps (only plugins that use depth need them;"
            f" {depth_command} writes them)"
        )
    elif len(result.depth_kinds) == 1:
        kind = next(iter(result.depth_kinds))
        encoding = next(e for e, k in DEPTH_KINDS.items() if k == kind)
        if encoding != "depth_anything_png":
            result.notes.append(f"{where}depth maps are {kind}s: set depth_encoding: {encoding}")
    if result.labelled and not result.problems:
        result.stats = _stats_state(root, plan, cache_dir)
    return result


def _stats_state(root: Path, plan: _SplitPlan, cache_dir: Path) -> str:
    """Whether the class statistics match the labels. Only rare class sampling reads them, and
    only of a source (a layout without splits), so only there is a missing file noted."""
    result, layout = plan.result, plan.folders[0].layout
    conditions = [f.condition for f in plan.folders if f.condition]
    path = class_stats_path(root, layout.stats_key(result.split, conditions), cache_dir)
    if not path.exists():
        if not layout.has_splits:
            result.notes.append(
                "no class statistics for rare class sampling yet"
                f" (`uda data convert {layout.name}` writes them, training counts them on first"
                " use)"
            )
            return "missing"
        return "-"
    try:
        folder = open_layout(layout, root, result.split, conditions=conditions)
        ClassStats.load(path).check_matches(folder, path)
    except DataError as exc:
        result.problems.append(Finding("class statistics", path, str(exc)))
        return "stale"
    return "up to date"


def check_dataset(
    root: Path,
    layout: Layout,
    *,
    conditions: Sequence[str] | None = None,
    cache_dir: Path,
    workers: int | None = None,
    progress: Progress | None = None,
) -> DatasetCheck:
    """Check every split of a dataset, decoding its files in ``workers`` processes (default:
    one per CPU core, and one per ``FILES_PER_WORKER`` images at most, as starting a process
    takes longer than decoding a few small files). ``conditions``: the ACDC or Dark Zurich
    conditions to check (default: the layout's)."""
    root = Path(root)
    layout.require_root(root, conditions)
    splits = layout.splits(root, conditions)
    plans = [_plan_split(root, layout, split, conditions) for split in splits]
    jobs = [job for plan in plans for job in plan.jobs]
    items: list[_ItemCheck] = []
    if workers is None:
        workers = min(os.cpu_count() or 1, len(jobs) // FILES_PER_WORKER)
    with contextlib.ExitStack() as stack:
        workers = min(workers, len(jobs))
        if workers > 1:
            pool = stack.enter_context(multiprocessing.get_context("spawn").Pool(workers))
            chunk = max(1, min(16, len(jobs) // (8 * workers)))
            done = pool.imap(_check_item, jobs, chunksize=chunk)
        else:
            done = map(_check_item, jobs)
        for item in done:
            items.append(item)
            if progress:
                progress(len(items), len(jobs))
    results, start = [], 0
    for plan in plans:
        share = items[start : start + len(plan.jobs)]
        start += len(plan.jobs)
        results.append(_finish_split(root, layout, plan, share, cache_dir))
    return DatasetCheck(root, layout, results)
