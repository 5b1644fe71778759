"""Depth maps for a dataset from Depth Anything v2 (``uda data depth``).

The model runs through Hugging Face ``transformers`` (the optional extra ``uda-data[depth]``),
with weights from a local folder or the hub. It predicts relative inverse depth (near is
large), written per image as the 8-bit PNGs of ``uda_data.depth`` that the loaders read with
``depth_encoding: depth_anything_png``: the image's own range stretched to 0..255, at the
image's size. Outputs are written atomically and existing ones kept, so a stopped run resumes.
"""

from __future__ import annotations

import os
import socket
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from uda_data.atomic import check_writable, save_png
from uda_data.depth import encode_relative_depth
from uda_data.errors import DataError, write_error
from uda_data.files import read_image
from uda_data.layouts import Layout
from uda_data.rcs import Progress

DEFAULT_MODEL = "depth-anything/Depth-Anything-V2-Large-hf"


@dataclass(frozen=True)
class DepthJob:
    image: Path
    output: Path


def plan_depth(
    root: Path, layout: Layout, conditions: Sequence[str] | None = None
) -> tuple[list[DepthJob], int]:
    """The images of every split (of the ACDC or Dark Zurich ``conditions``, default: the
    layout's) still without a depth map, and how many already have one."""
    root = Path(root)
    layout.require_root(root, conditions)
    jobs, existing = [], 0
    for split in layout.splits(root, conditions):
        for folder in layout.folders(root, split, conditions):
            for image in folder.find_images():
                output = folder.depth_of(image, "depth_anything_png")
                if output.is_file():
                    existing += 1
                else:
                    jobs.append(DepthJob(image, output))
    if not jobs and not existing:
        raise DataError(f"{root / layout.pattern}: no images found; check the dataset root")
    return jobs, existing


def resolve_device(device: str) -> torch.device:
    """``auto``: the GPU if there is one, else the CPU; otherwise a torch device name."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise DataError(f"--device {device!r} is not a device; use auto, cpu or cuda") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise DataError(f"--device {device}: no CUDA GPU is available; use auto or cpu")
    return resolved


_TRUE = {"1", "on", "yes", "true"}
_LOCAL = (
    "download it where there is a network (`hf download {model} --local-dir DIR`) and pass"
    " --model DIR"
)


def _hub_offline() -> bool:
    from huggingface_hub import constants

    flags = (
        os.environ.get(name, "").lower() for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )
    return constants.HF_HUB_OFFLINE or any(flag in _TRUE for flag in flags)


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub's host accepts a connection (assumed, behind a proxy)."""
    from huggingface_hub import constants

    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY")):
        return True
    url = urllib.parse.urlsplit(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def _local_only(model: str) -> bool:
    """Whether ``model`` is loaded from local files only (a folder, or a hub id in the cache
    while the hub is offline). Fails at once, not after minutes of retries, where it cannot
    load: a folder that does not exist, a hub id neither cached nor reachable."""
    from huggingface_hub import try_to_load_from_cache

    path = Path(model).expanduser()
    if path.is_dir():
        return True
    if path.exists() or model.startswith((".", "/", "~")) or model.count("/") > 1:
        what = "a file, not a model folder" if path.exists() else "no such folder"
        raise DataError(
            f"{model}: {what}; pass --model a folder written by save_pretrained or a hub id"
            f" such as {DEFAULT_MODEL}"
        )
    if isinstance(try_to_load_from_cache(model, "config.json"), str):
        return _hub_offline() or not _hub_reachable()
    if _hub_offline():
        raise DataError(
            f"{model}: not in the local Hugging Face cache and the hub is set offline"
            f" (HF_HUB_OFFLINE); {_LOCAL.format(model=model)}"
        )
    if not _hub_reachable():
        raise DataError(
            f"{model}: the Hugging Face hub cannot be reached and the model is not in the local"
            f" cache; {_LOCAL.format(model=model)} (HF_HUB_OFFLINE=1 skips the hub at once)"
        )
    return False


class DepthEstimator:
    """A transformers depth model (Depth Anything v2) and its image processor on one device."""

    def __init__(self, model: str = DEFAULT_MODEL, device: str = "auto") -> None:
        try:
            from transformers import AutoImageProcessor, AutoModelForDepthEstimation
        except ImportError:
            raise DataError(
                "depth estimation needs Hugging Face transformers:"
                " pip install 'uda-data[depth]' (or pip install transformers)"
            ) from None
        self.device = resolve_device(device)
        local = _local_only(model)
        try:
            self.processor = AutoImageProcessor.from_pretrained(model, local_files_only=local)
            network = AutoModelForDepthEstimation.from_pretrained(model, local_files_only=local)
        except (OSError, ValueError, KeyError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DataError(
                f"{model}: cannot load a depth model ({reason}); pass --model a folder"
                f" written by save_pretrained or a hub id such as {DEFAULT_MODEL}"
            ) from None
        self.model = network.to(self.device).eval()

    @torch.no_grad()
    def __call__(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """Relative inverse depth (near is large) of H x W x 3 uint8 images of one size, each
        at its image's size."""
        inputs = self.processor(images=images, return_tensors="pt").to(self.device)
        outputs = self.model(**inputs)
        sizes = [image.shape[:2] for image in images]
        maps = self.processor.post_process_depth_estimation(outputs, target_sizes=sizes)
        return [
            m["predicted_depth"].reshape(size).float().cpu().numpy()
            for m, size in zip(maps, sizes, strict=True)
        ]


class _Images(torch.utils.data.Dataset):
    """The images of the jobs, read in loader workers: (index, array) or (index, error)."""

    def __init__(self, jobs: list[DepthJob]) -> None:
        self.jobs = jobs

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, index: int) -> tuple[int, np.ndarray | str]:
        try:
            return index, read_image(self.jobs[index].image)
        except DataError as exc:
            return index, str(exc)


def _batches(
    loaded: Iterator[tuple[int, np.ndarray | str]], batch_size: int, unreadable: list[str]
) -> Iterator[list[tuple[int, np.ndarray]]]:
    """Runs of up to ``batch_size`` images of one size (the processor stacks them); images
    that cannot be read go to ``unreadable``."""
    batch: list[tuple[int, np.ndarray]] = []
    for index, image in loaded:
        if isinstance(image, str):
            unreadable.append(image)
            continue
        if batch and (len(batch) == batch_size or batch[0][1].shape != image.shape):
            yield batch
            batch = []
        batch.append((index, image))
    if batch:
        yield batch


def write_depth(
    jobs: list[DepthJob],
    estimator: DepthEstimator,
    *,
    batch_size: int = 4,
    workers: int = 2,
    progress: Progress | None = None,
) -> list[str]:
    """Estimate and write the depth map of every job; returns one line per image that failed.
    An output that cannot be written is a DataError naming it."""
    for folder in sorted({job.output.parent for job in jobs}):
        check_writable(folder / "probe.png")
    loader = torch.utils.data.DataLoader(
        _Images(jobs), batch_size=None, num_workers=workers, prefetch_factor=4 if workers else None
    )
    unreadable: list[str] = []
    failed: list[str] = []
    done = 0
    for batch in _batches(iter(loader), batch_size, unreadable):
        predictions = estimator([image for _, image in batch])
        for (index, _), inverse_depth in zip(batch, predictions, strict=True):
            job = jobs[index]
            if np.isfinite(inverse_depth).all():
                try:
                    save_png(job.output, encode_relative_depth(inverse_depth))
                except OSError as exc:
                    raise write_error(job.output, exc) from None
            else:
                failed.append(f"{job.image}: the model predicted NaN or infinite depth")
        done += len(batch)
        if progress:
            progress(done + len(unreadable), len(jobs))
    return unreadable + failed
