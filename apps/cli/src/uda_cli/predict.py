"""`uda predict`: segment any images with a trained checkpoint and save pictures of the result.

For each image, written under ``--out`` (a folder's tree is mirrored):

- ``NAME_pred.png``: the predicted classes in the Cityscapes palette, at the image's size;
- ``NAME_overlay.png``: those colours blended over the image;
- ``NAME_disp.png``: for models with a dispersion head (``SegOutput.aux["disp"]``), the
  predicted dispersion, 0..1 as black..white.

Images are resized to the run's inference scale (``data.val_resize``, keeping their aspect
ratio) and predicted as ``uda eval`` does (the run's ``eval`` settings, whole or sliding window).
"""

from __future__ import annotations

import time
from enum import Enum
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import torch.nn.functional as F
import typer
from PIL import Image
from rich.console import Console
from rich.progress import MofNCompleteColumn, Progress, TimeRemainingColumn

from uda_cli.errors import fail, friendly_errors
from uda_core.config import EvalConfig
from uda_core.errors import UdaError
from uda_core.evaluation import slide_average
from uda_core.model import SegOutput, logits_of
from uda_data.atomic import save_png
from uda_data.classes import colorize
from uda_data.transforms import Sample, resize, to_tensors
from uda_methods.config import RunConfig
from uda_methods.run import load_trained_model

console = Console(highlight=False, soft_wrap=True)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class Mode(str, Enum):
    whole = "whole"
    slide = "slide"


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
    """The (width, height) at which the network sees an image of ``size``: scaled, keeping its
    aspect ratio, until it fits ``scale`` (long side to long side), as the benchmarks resize."""
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


def _read_rgb(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as img:
            return np.array(img.convert("RGB"))
    except (OSError, ValueError) as exc:
        raise UdaError(f"{path}: cannot be read as an image ({exc})") from None


def _overlay(image: np.ndarray, colours: np.ndarray, opacity: float) -> np.ndarray:
    blend = (1 - opacity) * image.astype(np.float32) + opacity * colours.astype(np.float32)
    return np.round(blend).astype(np.uint8)


def predict_image(
    model: torch.nn.Module, cfg: RunConfig, path: Path, stem: Path, opacity: float
) -> bool:
    """Predict one image and write its pictures; returns whether a dispersion map was written."""
    picture = _read_rgb(path)
    sample = Sample(picture)
    size = network_size(sample.size, cfg.data.val_resize)
    device = next(model.parameters()).device
    tensor = to_tensors(resize(sample, size))["image"][None].to(device)
    height, width = picture.shape[:2]
    maps = {
        k: F.interpolate(v, (height, width), mode="bilinear", align_corners=False)[0]
        for k, v in predict_maps(model, tensor, cfg.eval).items()
    }
    colours = colorize(maps["logits"].argmax(0).cpu().numpy().astype(np.uint8))
    save_png(stem.with_name(f"{stem.name}_pred.png"), colours)
    save_png(stem.with_name(f"{stem.name}_overlay.png"), _overlay(picture, colours, opacity))
    if "disp" not in maps:
        return False
    disp = maps["disp"][0].clamp(0, 1).mul(255).round().byte().cpu().numpy()
    save_png(stem.with_name(f"{stem.name}_disp.png"), disp)
    return True


@friendly_errors
def predict_command(
    checkpoint: Annotated[Path, typer.Argument(help="A checkpoint written by `uda train`.")],
    images: Annotated[list[Path], typer.Argument(help="Image files or folders of images.")],
    out: Annotated[Path, typer.Option(help="Folder for the pictures.")],
    mode: Annotated[
        Mode | None,
        typer.Option(help="Whole-image or sliding-window inference (default: the run's)."),
    ] = None,
    opacity: Annotated[
        float, typer.Option(min=0, max=1, help="Opacity of the class colours in the overlay.")
    ] = 0.5,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a field of the saved config.")
    ] = None,
) -> None:
    """Segment images with a trained model: class colours, overlays, dispersion maps."""
    overrides = list(set_ or [])
    if mode is not None:
        overrides.append(f"eval.mode={mode.value}")
    found = find_images(images, out)
    model, cfg, _ = load_trained_model(checkpoint, overrides)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device).eval()
    failed: list[str] = []
    with_disp = 0
    started = time.perf_counter()
    columns = (*Progress.get_default_columns()[:-1], MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        for path, stem in bar.track(found, description="predicting"):
            try:
                with_disp += predict_image(model, cfg, path, stem, opacity)
            except UdaError as exc:
                failed.append(str(exc))
    extra = f", {with_disp} with a dispersion map" if with_disp else ""
    console.print(
        f"predicted {len(found) - len(failed)} image(s){extra} into {out}"
        f" in {time.perf_counter() - started:.1f} s"
    )
    if failed:
        for line in failed:
            console.print(line, markup=False)
        raise fail(f"{len(failed)} image(s) could not be read (listed above)", code=1)
