"""`uda dispersion ...`: compute instance directional dispersion maps and look at them."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from PIL import Image, UnidentifiedImageError
from rich.console import Console
from rich.progress import MofNCompleteColumn, Progress

from uda_cli.errors import fail, friendly_errors
from uda_core.errors import UdaError
from uda_core.plugin import load_plugin
from uda_data.atomic import check_writable, save_png, write_atomic
from uda_data.config import open_folder
from uda_data.errors import DataError, write_error
from uda_data.files import read_depth
from uda_dispersion import instances
from uda_methods.presets import DEFAULT_PRESET, PRESETS
from uda_methods.run import prepare_context, resolve_config

app = typer.Typer(
    help="Dispersion maps, and the dispersion method's auxiliary network.", no_args_is_help=True
)
console = Console(highlight=False, soft_wrap=True)

# Stops of the viridis colormap (perceptually uniform), interpolated linearly in between.
_VIRIDIS = np.array(
    [
        [0x44, 0x01, 0x54],
        [0x48, 0x28, 0x78],
        [0x3E, 0x49, 0x89],
        [0x31, 0x68, 0x8E],
        [0x26, 0x82, 0x8E],
        [0x1F, 0x9E, 0x89],
        [0x35, 0xB7, 0x79],
        [0x6E, 0xCE, 0x58],
        [0xB5, 0xDE, 0x2B],
        [0xFD, 0xE7, 0x25],
    ],
    dtype=np.float64,
)


class DepthEncoding(str, Enum):
    depth_anything_png = "depth_anything_png"
    raw = "raw"


class Weighting(str, Enum):
    uniform = "uniform"
    area = "area"
    sqrt_area = "sqrt_area"


class MapInputError(ValueError):
    """An input the user can fix; the message names the file and the fix."""


@app.callback()
def _group() -> None:
    """Compute and look at instance directional dispersion maps."""


@app.command("map")
@friendly_errors("nothing was written; run the command again")
def map_command(
    labels: Annotated[Path, typer.Option(help="trainId label PNG (255 = ignore).")],
    depth: Annotated[Path, typer.Option(help="Depth map of the same size (PNG, or .npy if raw).")],
    out: Annotated[Path, typer.Option(help="Colourised map to write (PNG; black = no value).")],
    npy: Annotated[Path | None, typer.Option(help="Also write the raw float32 map here.")] = None,
    connectivity: Annotated[int, typer.Option(help="Pixel connectivity of instances: 4 or 8.")] = 8,
    min_area: Annotated[int, typer.Option(min=0, help="Smaller instances get no value.")] = 16,
    depth_weight: Annotated[float, typer.Option(min=0.0, help="Scale of depth (z).")] = 1.0,
    weighting: Annotated[Weighting, typer.Option(help="Supporter weights.")] = Weighting.uniform,
    depth_encoding: Annotated[
        DepthEncoding,
        typer.Option(help="depth_anything_png: 8-bit Depth Anything PNG; raw: values as stored."),
    ] = DepthEncoding.depth_anything_png,
) -> None:
    """Write the dispersion map of a label map and a depth map as a colourised PNG."""
    if connectivity not in (4, 8):
        raise fail(f"--connectivity must be 4 or 8, got {connectivity}")
    if out.suffix.lower() != ".png":
        raise fail(f"--out {out}: the map is written as a PNG; name it *.png")
    try:
        check_outputs(out, npy)
        values, count = compute_map(
            labels,
            depth,
            depth_encoding=depth_encoding.value,
            connectivity=connectivity,
            min_area=min_area,
            depth_weight=depth_weight,
            weighting=weighting.value,
        )
        write_map(values, out, npy)
    except MapInputError as exc:
        raise fail(str(exc)) from None
    covered = 100.0 * float((values >= 0).mean())
    saved = f" and {npy}" if npy else ""
    console.print(
        f"wrote {out}{saved}: {values.shape[1]}x{values.shape[0]}, {count} instances, "
        f"{covered:.1f}% of pixels with a value"
    )


def compute_map(
    labels_path: Path, depth_path: Path, *, depth_encoding: str = "depth_anything_png", **options
) -> tuple[np.ndarray, int]:
    """The H x W dispersion map (fill -1) of two files, and the number of instances."""
    labels = _read_labels(labels_path)
    depth = _read_depth(depth_path, depth_encoding)
    if labels.shape != depth.shape:
        raise MapInputError(
            f"{labels_path} is {labels.shape[1]}x{labels.shape[0]} but {depth_path} is "
            f"{depth.shape[1]}x{depth.shape[0]}; resize the depth map to the label map's size"
        )
    try:
        found = instances(labels, depth, **options)
    except ValueError as exc:
        raise MapInputError(f"{labels_path}, {depth_path}: {exc}") from None
    values = np.append(found.table.dispersion, np.float32(-1.0))[found.ids[0, 0]]
    return values, len(found.table.area)


def colorize(values: np.ndarray) -> np.ndarray:
    """H x W x 3 uint8 viridis image of values in [0, 1]; negative values (fill) are black."""
    position = np.clip(values, 0.0, 1.0) * (len(_VIRIDIS) - 1)
    low = np.minimum(position.astype(np.int64), len(_VIRIDIS) - 2)
    t = (position - low)[..., None]
    rgb = (1 - t) * _VIRIDIS[low] + t * _VIRIDIS[low + 1]
    rgb[values < 0] = 0
    return np.round(rgb).astype(np.uint8)


def check_outputs(out: Path, npy: Path | None) -> None:
    """Before the work: each output's folder exists and a file can be written there."""
    for path in (out, npy):
        if path is None:
            continue
        if path.parent.is_file():
            raise MapInputError(f"{path.parent} is a file, not a folder; pick another --out")
        if not path.parent.is_dir():
            raise MapInputError(f"folder {path.parent} does not exist; create it or pick another")
        check_writable(path)


def write_map(values: np.ndarray, out: Path, npy: Path | None) -> None:
    """The colourised PNG and the raw map, each written whole or not at all."""
    raw = values.astype(np.float32)
    writes = [(out, lambda: save_png(out, colorize(values)))]
    if npy is not None:
        writes.append((npy, lambda: write_atomic(npy, lambda f: np.save(f, raw))))
    for path, write in writes:
        try:
            write()
        except OSError as exc:
            raise write_error(path, exc) from None


def _open_image(path: Path, flag: str) -> Image.Image:
    if not path.is_file():
        raise MapInputError(f"{path} not found; pass an existing file with {flag}")
    try:
        image = Image.open(path)
        image.load()  # decodes it all: a truncated file fails here, not as a wrong mode
        return image
    except (UnidentifiedImageError, OSError) as exc:
        raise MapInputError(f"cannot read {path} as an image ({exc}); pass a PNG") from None


def _read_labels(path: Path) -> np.ndarray:
    image = _open_image(path, "--labels")
    if image.mode not in ("L", "P", "I", "I;16"):
        raise MapInputError(
            f"{path} has mode {image.mode}; pass a single-channel trainId PNG "
            "(colour-coded label images are not supported)"
        )
    return np.asarray(image).astype(np.int64)


def _read_depth(path: Path, encoding: str) -> np.ndarray:
    """Depth Anything PNGs and raw ``.npy`` maps go through the loaders' one depth reader
    (``uda_data.files.read_depth``), with training's checks and messages; a raw PNG is read
    as stored."""
    if not path.is_file():
        raise MapInputError(f"{path} not found; pass an existing file with --depth")
    if path.suffix == ".npy":
        if encoding != "raw":
            raise MapInputError(
                f"{path} is a .npy array, and --depth-encoding {encoding} reads 8-bit Depth "
                "Anything PNGs; pass --depth-encoding raw"
            )
        return read_depth(path, "float_npy")
    if encoding == "depth_anything_png":
        return read_depth(path, "depth_anything_png")
    pixels = np.asarray(_open_image(path, "--depth"))
    if pixels.ndim == 3:
        if not (pixels[..., :3] == pixels[..., :1]).all():
            raise MapInputError(f"{path} is a colour image; pass a single-channel depth map")
        pixels = pixels[..., 0]
    return pixels.astype(np.float32)


@app.command("pretrain")
@friendly_errors("run the same command again to go on from its last checkpoint")
def pretrain_command(
    preset: Annotated[
        str, typer.Option(help=f"Run config whose data to use: {', '.join(sorted(PRESETS))}.")
    ] = DEFAULT_PRESET,
    config: Annotated[
        Path | None, typer.Option(help="YAML, TOML or JSON file merged over the preset.")
    ] = None,
    iterations: Annotated[
        int | None, typer.Option("--iters", min=1, help="Pre-training iterations.")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override any field: --set data.source.root=data/gta."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Checkpoint to write (default: the cache that training looks in)."),
    ] = None,
) -> None:
    """Pre-train the auxiliary network on the source: labels from (depth, dispersion).

    Resumes a killed run from its last checkpoint. Training with the same data and plugin
    settings then uses the network; elsewhere set plugins.dispersion.auxiliary.checkpoint.
    """
    overrides = list(set_ or [])
    if iterations is not None:
        overrides.append(f"plugins.dispersion.auxiliary.iterations={iterations}")
    cfg = resolve_config(preset, config, {"plugins": {"dispersion": {}}}, overrides)
    plugin = load_plugin("dispersion", cfg.plugins["dispersion"])
    if out is not None:  # before the data is opened (or generated)
        _check_new_file(out)
    data = cfg.data
    try:
        source = open_folder(
            data, data.source, with_labels=True, with_depth=True, progress=_synth_progress
        )
        with Progress(
            *Progress.get_default_columns(), MofNCompleteColumn(), console=console
        ) as bar:
            task = bar.add_task("auxiliary network", total=plugin.pretrain_settings().iterations)

            def progress(done: int, total: int, loss: float) -> None:
                bar.update(task, completed=done, description=f"auxiliary network, loss {loss:.3f}")

            context = prepare_context(cfg, source, console.print, progress)
            path = out or plugin.cache_path(context)
            _check_new_file(path)
            plugin.pretrain(context, path)
    except DataError as exc:
        raise UdaError(str(exc)) from None
    console.print(f"saved {path}")
    if out is not None:
        console.print(f"use it with --set plugins.dispersion.auxiliary.checkpoint={path}")


def _check_new_file(path: Path) -> None:
    if path.exists():
        raise UdaError(f"{path} already exists; remove it or pass --out elsewhere")
    check_writable(path)


def _synth_progress(done: int, total: int) -> None:
    if done == total or done % 100 == 0:
        console.print(f"generating the embedded synthetic domains: {done}/{total}")
