"""`uda predict`: segment any images with a checkpoint and save pictures of the result.

For each image, written under ``--out`` (a folder's tree is mirrored):

- ``NAME_pred.png``: the predicted classes in the Cityscapes palette, at the image's size;
- ``NAME_overlay.png``: those colours blended over the image;
- ``NAME_disp.png``: for models with a dispersion head (``SegOutput.aux["disp"]``), the
  predicted dispersion, 0..1 as black..white;
- ``NAME_logits.npy`` with ``--save-logits``: float32 1 x C x H x W logits before the softmax,
  at the image's size.

The checkpoint is ours or a published file (``uda_methods.published_files``). Images are
prepared by one of two test pipelines (``--pipeline``):

- ``reference``, the default for published files and checkpoints imported from them: as the
  reference ``tools/test.py`` does (mmcv 1.x, mmseg 0.x): decoded by OpenCV (BGR), resized
  keeping their ratio to the run's inference scale (``data.val_resize``; mmcv's
  ``Resize(keep_ratio=True)``: factor min(long/long, short/short), sides ``int(x + 0.5)``,
  ``cv2.resize`` with ``INTER_LINEAR`` on the 8-bit image), normalized as mmcv's
  ``imnormalize`` after BGR -> RGB; the logits come back to the image's size bilinearly
  (``EncoderDecoder.inference``, ``published_models.published_test_logits``);
- ``ours``, the default for our runs: read by Pillow and resized as ``uda eval`` prepares val
  images (``uda_data.transforms.resize``), so that predictions are those of ``uda eval``.

Either way the network runs as the run's ``eval`` settings say (whole image or sliding window).
With ``--format`` the folder given is a dataset's root and its test split (``--split``) is
written as a test-server submission (``uda_cli.submission``). ``--out`` is checked before any
work. An image that cannot be read (truncated, empty, not an image) is named and skipped: the
others are predicted, and the command exits with status 2.
"""

from __future__ import annotations

import functools
import time
from enum import Enum
from pathlib import Path
from typing import Annotated

import cv2
import numpy as np
import torch
import torch.nn.functional as F
import typer
from rich.console import Console
from rich.progress import MofNCompleteColumn, Progress, TimeRemainingColumn

from uda_cli.errors import fail, friendly_errors, stderr
from uda_cli.submission import Format, submission_images, write_submission, zip_path
from uda_core.checkpoint import atomic_write_bytes
from uda_core.config import EvalConfig
from uda_core.errors import UdaError
from uda_core.evaluation import slide_average
from uda_core.model import SegOutput, logits_of
from uda_data.atomic import check_writable, save_png
from uda_data.classes import colorize
from uda_data.errors import DataError
from uda_data.files import read_image
from uda_data.transforms import IMAGENET_MEAN, IMAGENET_STD, Sample, resize, to_tensors
from uda_methods.config import RunConfig
from uda_methods.published_files import load_segmentation_model
from uda_methods.published_models import scaled_input_size

console = Console(highlight=False, soft_wrap=True)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class Mode(str, Enum):
    whole = "whole"
    slide = "slide"


class Pipeline(str, Enum):
    reference = "reference"
    ours = "ours"


class Copy(str, Enum):
    student = "student"
    teacher = "teacher"
    imagenet = "imagenet"


CopyOption = Annotated[
    Copy,
    typer.Option(
        help="Which network of a training checkpoint: student (model.*, what the reference "
        "evaluates), teacher (EMA, ema_model.*) or imagenet (imnet_model.*)."
    ),
]
PresetOption = Annotated[
    str | None,
    typer.Option(help="Published files: the preset to take settings from (default: by family)."),
]


def find_images(paths: list[Path], out: Path) -> list[tuple[Path, Path]]:
    """(image, output path without suffix) for each image file given and each image under a
    folder given; files under ``out`` are left out, so a rerun does not predict its outputs."""
    out = out.resolve()
    found: list[tuple[Path, Path]] = []
    for path in paths:
        if path.is_dir():
            files = sorted(
                p
                for p in path.rglob("*")
                if p.suffix.lower() in IMAGE_SUFFIXES and not p.resolve().is_relative_to(out)
            )
            found += [(p, out / p.relative_to(path).with_suffix("")) for p in files]
        elif path.is_file():
            found.append((path, out / path.stem))
        else:
            raise UdaError(f"{path} does not exist; pass image files or folders of images")
    if not found:
        raise UdaError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {', '.join(map(str, paths))}")
    seen: dict[Path, Path] = {}
    for image, stem in found:
        if stem in seen:
            raise UdaError(
                f"{image} and {seen[stem]} would both be written as {stem.name}_*.png;"
                " predict them in separate runs or pass their folder"
            )
        seen[stem] = image
    return found


def network_size(size: tuple[int, int], scale: tuple[int, int] | None) -> tuple[int, int]:
    """The (width, height) at which the network sees an image of ``size`` in our pipeline:
    scaled, keeping its aspect ratio, until it fits ``scale`` (long side to long side)."""
    if scale is None:
        return size
    factor = min(max(scale) / max(size), min(scale) / min(size))
    return max(1, round(size[0] * factor)), max(1, round(size[1] * factor))


@torch.no_grad()
def predict_maps(model: torch.nn.Module, image: torch.Tensor, cfg: EvalConfig) -> dict:
    """Logits (B x C x H x W) and, if the model predicts one, the dispersion map (B x 1 x H x W)
    at the image's size, by whole-image or sliding-window inference like ``predict_logits``."""

    def predict(crops: torch.Tensor) -> dict[str, torch.Tensor]:
        output = model(crops)
        maps = {"logits": logits_of(output)}
        if isinstance(output, SegOutput) and "disp" in output.aux:
            disp = output.aux["disp"]
            maps["disp"] = disp if disp.dim() == 4 else disp[:, None]
        size = crops.shape[-2:]
        return {
            k: F.interpolate(v.float(), size, mode="bilinear", align_corners=False)
            for k, v in maps.items()
        }

    if cfg.mode == "whole":
        return predict(image)
    return slide_average(predict, image, cfg.crop_size, cfg.stride, cfg.batched)


def read_bgr(path: Path) -> np.ndarray:
    """The 8-bit BGR image as mmcv's ``imfrombytes`` (OpenCV backend, flag ``color``) decodes
    it: grey and 16-bit images become 8-bit BGR, alpha is dropped."""
    _quiet_opencv()
    try:
        image = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_COLOR)
    except (OSError, cv2.error):
        image = None
    if image is None:
        raise UdaError(f"{path}: cannot be read as an image (OpenCV cannot decode it); replace it")
    return image


@functools.cache
def _quiet_opencv() -> None:
    """OpenCV's own warning on an undecodable file, once set off: ours names the file."""
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)


def reference_input(bgr: np.ndarray, scale: tuple[int, int] | None) -> torch.Tensor:
    """1 x 3 x h x w: the reference test pipeline's tensor of a BGR image: mmcv's
    ``Resize(keep_ratio=True)`` to ``scale`` (``cv2.resize``, ``INTER_LINEAR``, on the 8-bit
    image; mmcv resizes even at factor 1, which is the identity), then ``Normalize``: float32,
    BGR -> RGB, minus the mean, times 1/std in float64, rounded to float32 once (mean and std
    are float32 arrays in mmseg's ``Normalize``)."""
    height, width = scaled_input_size(*bgr.shape[:2], scale)
    if (height, width) != bgr.shape[:2]:
        bgr = cv2.resize(bgr, (width, height), interpolation=cv2.INTER_LINEAR)
    mean, std = np.float32(IMAGENET_MEAN), np.float32(IMAGENET_STD)  # mmseg's Normalize
    rgb = bgr[..., ::-1].astype(np.float32) - mean
    normalized = (rgb.astype(np.float64) * (1.0 / std.astype(np.float64))).astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(normalized.transpose(2, 0, 1)))[None]


def _overlay(image: np.ndarray, colours: np.ndarray, opacity: float) -> np.ndarray:
    blend = (1 - opacity) * image.astype(np.float32) + opacity * colours.astype(np.float32)
    return np.round(blend).astype(np.uint8)


def image_maps(
    model: torch.nn.Module, cfg: RunConfig, path: Path, pipeline: Pipeline
) -> tuple[np.ndarray, dict[str, torch.Tensor]]:
    """The image (H x W x 3 RGB) and the model's maps of it at its size: ``logits``
    (C x H x W) and, for models with a dispersion head, ``disp`` (1 x H x W)."""
    device = next(model.parameters()).device
    if pipeline is Pipeline.reference:
        bgr = read_bgr(path)
        picture = np.ascontiguousarray(bgr[..., ::-1])
        tensor = reference_input(bgr, cfg.data.val_resize)
    else:
        picture = read_image(path)
        sample = Sample(picture)
        size = network_size(sample.size, cfg.data.val_resize)
        tensor = to_tensors(resize(sample, size))["image"][None]
    height, width = picture.shape[:2]
    maps = {
        k: F.interpolate(v, (height, width), mode="bilinear", align_corners=False)[0]
        for k, v in predict_maps(model, tensor.to(device), cfg.eval).items()
    }
    return picture, maps


def predict_image(
    model: torch.nn.Module,
    cfg: RunConfig,
    path: Path,
    stem: Path,
    opacity: float,
    pipeline: Pipeline = Pipeline.ours,
    save_logits: bool = False,
) -> bool:
    """Predict one image and write its pictures; returns whether a dispersion map was written."""
    picture, maps = image_maps(model, cfg, path, pipeline)
    if save_logits:
        logits = maps["logits"][None].float().cpu().numpy()
        atomic_write_bytes(stem.with_name(f"{stem.name}_logits.npy"), lambda f: np.save(f, logits))
    colours = colorize(maps["logits"].argmax(0).cpu().numpy().astype(np.uint8))
    save_png(stem.with_name(f"{stem.name}_pred.png"), colours)
    save_png(stem.with_name(f"{stem.name}_overlay.png"), _overlay(picture, colours, opacity))
    if "disp" not in maps:
        return False
    disp = maps["disp"][0].clamp(0, 1).mul(255).round().byte().cpu().numpy()
    save_png(stem.with_name(f"{stem.name}_disp.png"), disp)
    return True


def exact_float32() -> None:
    """Full float32 on CUDA (no TF32 in convolutions and matrix products), so that logits
    match the reference's to the last digits."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


@friendly_errors("the pictures written so far are kept; run the command again for all of them")
def predict_command(
    checkpoint: Annotated[
        Path, typer.Argument(help="A checkpoint of `uda train`, or a published file.")
    ],
    images: Annotated[list[Path], typer.Argument(help="Image files or folders of images.")],
    out: Annotated[Path, typer.Option(help="Folder for the pictures.")],
    mode: Annotated[
        Mode | None,
        typer.Option(help="Whole-image or sliding-window inference (default: the run's)."),
    ] = None,
    opacity: Annotated[
        float, typer.Option(min=0, max=1, help="Opacity of the class colours in the overlay.")
    ] = 0.5,
    save_logits: Annotated[
        bool,
        typer.Option(
            "--save-logits",
            help="Also write NAME_logits.npy: float32 1 x C x H x W logits before the softmax.",
        ),
    ] = False,
    pipeline: Annotated[
        Pipeline | None,
        typer.Option(
            help="How images are read and resized: reference (OpenCV, mmcv's test pipeline; "
            "default for published files) or ours (as `uda eval`; default for our runs)."
        ),
    ] = None,
    copy: CopyOption = Copy.student,
    preset: PresetOption = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a field of the config.")
    ] = None,
    fmt: Annotated[
        Format | None,
        typer.Option(
            "--format",
            help="Write a test-server submission instead of pictures: the one folder given is "
            "the dataset's root; OUT/FORMAT.zip (and OUT/FORMAT/) are written.",
        ),
    ] = None,
    split: Annotated[
        str, typer.Option(help="With --format: the split to predict (val: to score it locally).")
    ] = "test",
) -> None:
    """Segment images: class colours, overlays, dispersion maps and, optionally, logits; or,
    with --format, a test-server submission of a dataset's test split."""
    overrides = list(set_ or [])
    if mode is not None:
        overrides.append(f"eval.mode={mode.value}")
    if fmt is None:
        found = find_images(images, out)
        check_writable(out / "prediction_pred.png")
    else:
        if len(images) != 1 or not images[0].is_dir():
            raise UdaError(f"--format {fmt.value}: pass one folder, the dataset's root")
        check_writable(zip_path(fmt, out))
        submitted = submission_images(fmt, images[0], split)
    loaded = load_segmentation_model(checkpoint, overrides, copy.value, preset)
    cfg = loaded.cfg
    if pipeline is None:
        pipeline = Pipeline.reference if loaded.file.published else Pipeline.ours
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        exact_float32()
    model = loaded.model.to(device).eval()
    columns = (*Progress.get_default_columns()[:-1], MofNCompleteColumn(), TimeRemainingColumn())
    if fmt is not None:

        def probabilities(path: Path) -> torch.Tensor:
            return image_maps(model, cfg, path, pipeline)[1]["logits"].float().softmax(0)

        started = time.perf_counter()
        with Progress(*columns, console=console, transient=True) as bar:
            written = write_submission(
                fmt,
                submitted,
                out,
                probabilities,
                lambda items: bar.track(items, description="predicting"),
            )
        console.print(
            f"{fmt.value}: {len(submitted)} {split} image(s) predicted into {written}"
            f" in {time.perf_counter() - started:.1f} s ({pipeline.value} pipeline)"
        )
        return
    failed: list[str] = []
    with_disp = 0
    started = time.perf_counter()
    with Progress(*columns, console=console, transient=True) as bar:
        for path, stem in bar.track(found, description="predicting"):
            try:
                with_disp += predict_image(model, cfg, path, stem, opacity, pipeline, save_logits)
            except (UdaError, DataError) as exc:
                failed.append(str(exc))
    extra = f", {with_disp} with a dispersion map" if with_disp else ""
    console.print(
        f"predicted {len(found) - len(failed)} image(s){extra} into {out}"
        f" in {time.perf_counter() - started:.1f} s ({pipeline.value} pipeline)"
    )
    predicted = f"the other {len(found) - len(failed)} were predicted into {out}"
    if len(failed) == 1:
        raise fail(f"{failed[0]}; {predicted}")
    if failed:
        for line in failed:
            stderr.print(f"skipped {line}", markup=False)
        raise fail(f"{len(failed)} of {len(found)} images cannot be read (above); {predicted}")
