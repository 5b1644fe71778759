"""Writes the synthetic domains to disk in the layouts of the real datasets.

Source, GTA layout::

    source/images/00000.png  source/labels/00000_labelTrainIds.png  source/depth/00000.png

Target, Cityscapes layout (splits ``train`` and ``val``, invented city names)::

    target/leftImg8bit/{split}/{city}/{city}_{seq:06d}_{frame:06d}_leftImg8bit.png
    target/gtFine/{split}/{city}/{city}_{seq:06d}_{frame:06d}_gtFine_labelTrainIds.png
    target/depth/{split}/{city}/{city}_{seq:06d}_{frame:06d}_leftImg8bit.png

Labels are trainId PNGs (mode L), depth maps 8-bit inverse-depth PNGs as Depth Anything
publishes them. A dataset is generated in a temporary sibling folder, ``synth.json`` is written
last and the folder is then renamed into place, so an interrupted run never looks complete.

The manifest ``synth.json`` also marks a folder as this generator's: ``root`` is replaced only
if it is missing, empty, or a dataset it wrote holding nothing else (the class statistics that
rare class sampling writes beside the images aside). Anything else, a user's GTA copy or an
existing file, is refused with a DataError and left as it is.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from uda_data.depth import encode_inverse_depth
from uda_data.errors import DataError, write_error
from uda_data.synthetic.appearance import Domain
from uda_data.synthetic.render import render_scene
from uda_data.synthetic.spec import SynthSpec

GENERATOR_VERSION = "1"
MANIFEST = "synth.json"
TRAIN_CITIES = ("arnwald", "brenstadt", "corlingen", "dornhafen")
VAL_CITIES = ("elmsberg", "falkenau")
PNG_COMPRESSION = 1  # sensor noise barely compresses; faster writing matters more
FRAME = 19  # Cityscapes annotates the 20th frame of every snippet.

Progress = Callable[[int, int], None]
DERIVED = re.compile(r"(source|target)/uda_class_stats(_[^/]+)?\.json|(.*/)?\.[^/]+\.tmp")
"""Files other tools write into a generated dataset (class statistics, unfinished atomic
writes): replaced with it."""


@dataclass(frozen=True)
class Item:
    """One scene to write: its domain, index and the three relative paths it goes to."""

    domain: Domain
    index: int
    image: str
    label: str
    depth: str


def plan(spec: SynthSpec) -> list[Item]:
    """Every file triple of a dataset, in a fixed order."""
    items = [
        Item(
            "source",
            i,
            f"source/images/{i:05d}.png",
            f"source/labels/{i:05d}_labelTrainIds.png",
            f"source/depth/{i:05d}.png",
        )
        for i in range(spec.num_source)
    ]
    splits = (
        ("train", spec.num_target_train, TRAIN_CITIES),
        ("val", spec.num_target_val, VAL_CITIES),
    )
    index = 0
    for split, count, cities in splits:
        per_city = -(-count // len(cities))
        for k in range(count):
            city, seq = cities[k // per_city], k % per_city
            stem = f"{city}_{seq:06d}_{FRAME:06d}"
            items.append(
                Item(
                    "target",
                    index,
                    f"target/leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png",
                    f"target/gtFine/{split}/{city}/{stem}_gtFine_labelTrainIds.png",
                    f"target/depth/{split}/{city}/{stem}_leftImg8bit.png",
                )
            )
            index += 1
    return items


def synthesize(
    root: Path,
    spec: SynthSpec = SynthSpec(),
    *,
    workers: int = 2,
    progress: Progress | None = None,
) -> Path:
    """Generates both domains into ``root``, replacing a dataset this generator wrote there;
    any other content is refused (see the module docstring). Returns ``root``."""
    root = Path(root)
    check_replaceable(root)
    partial = root.parent / f".{root.name}.partial-{os.getpid()}"
    items = plan(spec)
    jobs = [(partial, spec, item) for item in items]
    try:
        root.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(partial, ignore_errors=True)
        for folder in sorted({str(Path(p).parent) for it in items for p in _paths(it)}):
            (partial / folder).mkdir(parents=True, exist_ok=True)
        if workers <= 1:
            for done, job in enumerate(jobs, 1):
                _write_item(job)
                if progress:
                    progress(done, len(jobs))
        else:
            with multiprocessing.get_context("spawn").Pool(workers) as pool:
                for done, _ in enumerate(pool.imap_unordered(_write_item, jobs, chunksize=8), 1):
                    if progress:
                        progress(done, len(jobs))
        manifest = {
            "generator_version": GENERATOR_VERSION,
            "spec": spec.model_dump(),
            "files": {
                "source": spec.num_source,
                "target_train": spec.num_target_train,
                "target_val": spec.num_target_val,
            },
        }
        (partial / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        _replace(partial, root)
    except OSError as exc:
        raise write_error(root, exc) from None
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return root


def check_replaceable(root: Path) -> None:
    """A DataError naming what is in the way unless ``synthesize`` may write ``root``: it is
    missing, an empty folder, or a dataset this generator wrote that holds nothing else."""
    if root.is_symlink():
        raise DataError(
            f"{root}: a symbolic link; `uda data synth` writes only into a folder of its own,"
            " pick another root"
        )
    if not root.exists():
        return
    if not root.is_dir():
        raise DataError(
            f"{root}: an existing file, not a folder; move it or pick another root for the"
            " embedded domains"
        )
    foreign = _foreign_entry(root)
    if foreign is not None:
        raise DataError(
            f"{root}: not empty and not written by `uda data synth` (it holds {foreign});"
            " nothing was changed, pick another root or empty it yourself"
        )


def _read_manifest(root: Path) -> dict | None:
    try:
        manifest = json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and "generator_version" in manifest else None


def _own_files(manifest: dict) -> set[str]:
    """The files a manifest's dataset consists of (just the manifest if its spec is another
    version's)."""
    try:
        spec = SynthSpec.model_validate(manifest.get("spec"))
    except ValueError:
        return {MANIFEST}
    return {MANIFEST} | {p for item in plan(spec) for p in _paths(item)}


def _foreign_entry(root: Path) -> Path | None:
    """The first file or link under ``root`` that this generator did not write, if any."""
    manifest = _read_manifest(root)
    if manifest is None:
        return next(iter(sorted(root.iterdir())), None)
    own = _own_files(manifest)
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        links = [d for d in dirs if (Path(folder) / d).is_symlink()]
        for name in sorted(files) + links:
            path = Path(folder) / name
            relative = path.relative_to(root).as_posix()
            if path.is_symlink() or (relative not in own and not DERIVED.fullmatch(relative)):
                return path
    return None


def ensure_synthetic(
    root: Path, spec: SynthSpec = SynthSpec(), progress: Progress | None = None, *, workers: int = 2
) -> Path:
    """Returns ``root`` at once if it holds this spec's dataset, else generates it (replacing
    only a dataset of its own, see ``synthesize``)."""
    root = Path(root)
    if is_complete(root, spec):
        return root
    return synthesize(root, spec, workers=workers, progress=progress)


def is_complete(root: Path, spec: SynthSpec) -> bool:
    """Whether ``root`` holds a finished dataset of this spec and generator version."""
    try:
        manifest = json.loads((Path(root) / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return (
        manifest.get("generator_version") == GENERATOR_VERSION
        and manifest.get("spec") == spec.model_dump()
    )


def _paths(item: Item) -> tuple[str, str, str]:
    return item.image, item.label, item.depth


def _write_item(job: tuple[Path, SynthSpec, Item]) -> None:
    folder, spec, item = job
    scene = render_scene(item.index, item.domain, spec)
    depth_png = encode_inverse_depth(scene.depth_estimate).astype(np.uint8)
    for array, path in (
        (scene.image, item.image),
        (scene.label, item.label),
        (depth_png, item.depth),
    ):
        Image.fromarray(array).save(folder / path, compress_level=PNG_COMPRESSION)


def _replace(partial: Path, root: Path) -> None:
    """Moves a finished dataset into place; the old one, checked again, is removed only
    afterwards."""
    check_replaceable(root)
    if root.exists():
        stale = root.parent / f".{root.name}.stale-{os.getpid()}"
        shutil.rmtree(stale, ignore_errors=True)
        root.rename(stale)
        partial.rename(root)
        shutil.rmtree(stale, ignore_errors=True)
    else:
        partial.rename(root)
