"""`uda data ...`: prepare datasets."""

from __future__ import annotations

import time
from enum import Enum
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.console import Console
from rich.progress import MofNCompleteColumn, Progress, TimeRemainingColumn
from rich.table import Table

from uda_cli.errors import fail, friendly_errors
from uda_core.config import validate
from uda_data.classes import CLASSES
from uda_data.config import default_cache_dir
from uda_data.datasets import cityscapes_folder, gta_folder
from uda_data.errors import DataError
from uda_data.rcs import RareClassSampler, class_stats_path, compute_class_stats, load_or_compute
from uda_data.synthetic import SynthSpec, synthesize

app = typer.Typer(help="Prepare datasets.", no_args_is_help=True)
console = Console(highlight=False, soft_wrap=True)
_DEFAULT = SynthSpec()


@app.command("synth")
@friendly_errors
def synth_command(
    root: Annotated[
        Path | None, typer.Option(help="Output folder (default: <cache>/synthetic-<seed>).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Generator seed.")] = _DEFAULT.seed,
    width: Annotated[int, typer.Option(help="Image width.")] = _DEFAULT.width,
    height: Annotated[int, typer.Option(help="Image height.")] = _DEFAULT.height,
    num_source: Annotated[int, typer.Option(help="Source images.")] = _DEFAULT.num_source,
    num_target_train: Annotated[
        int, typer.Option(help="Target training images.")
    ] = _DEFAULT.num_target_train,
    num_target_val: Annotated[
        int, typer.Option(help="Target validation images.")
    ] = _DEFAULT.num_target_val,
    workers: Annotated[int, typer.Option(min=1, help="Processes.")] = 2,
) -> None:
    """Write the embedded domains: source in the GTA layout, target in the Cityscapes one."""
    spec = validate(
        SynthSpec,
        {
            "seed": seed,
            "width": width,
            "height": height,
            "num_source": num_source,
            "num_target_train": num_target_train,
            "num_target_val": num_target_val,
        },
        source="uda data synth",
    )
    root = root or default_cache_dir() / f"synthetic-{seed}"
    started = time.perf_counter()
    with console.status("generating") as status:
        synthesize(
            root, spec, workers=workers, progress=lambda d, t: status.update(f"generating {d}/{t}")
        )
    console.print(
        f"wrote {spec.num_source} source and {spec.num_target_train}+{spec.num_target_val}"
        " target images"
        f" ({spec.width}x{spec.height}) to {root} in {time.perf_counter() - started:.1f} s"
    )
    console.print(
        f"source (GTA layout): {root / 'source'}; target (Cityscapes layout): {root / 'target'}"
    )


class Layout(str, Enum):
    gta = "gta"
    cityscapes = "cityscapes"


@app.command("stats")
@friendly_errors
def stats_command(
    root: Annotated[Path, typer.Argument(help="Dataset root.")],
    layout: Annotated[Layout, typer.Option(help="Directory layout.")] = Layout.gta,
    split: Annotated[str, typer.Option(help="Split folder (Cityscapes layout).")] = "train",
    workers: Annotated[int, typer.Option(min=1, help="Processes.")] = 2,
    force: Annotated[
        bool, typer.Option("--force", help="Recompute, replacing an existing statistics file.")
    ] = False,
    temperature: Annotated[float, typer.Option(help="RCS temperature T for the table.")] = 0.01,
    min_pixels: Annotated[
        int, typer.Option(min=0, help="RCS min_pixels for the table (full-resolution labels).")
    ] = 3000,
    cache_dir: Annotated[
        Path | None,
        typer.Option(help="Where to keep the file if the root is read-only (default: the cache)."),
    ] = None,
) -> None:
    """Count the pixels of each class in every label file, for rare class sampling (RCS)."""
    if temperature <= 0:
        raise fail(f"--temperature must be positive, got {temperature}")
    gta = layout is Layout.gta
    folder = gta_folder(root) if gta else cityscapes_folder(root, split)
    path = class_stats_path(root, None if gta else split, cache_dir or default_cache_dir())
    reuse = path.exists() and not force
    started = time.perf_counter()
    columns = (*Progress.get_default_columns()[:-1], MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("counting class pixels", total=len(folder))

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        if reuse:
            stats = load_or_compute(folder, path, progress, workers=workers)
        else:
            stats = compute_class_stats(folder, workers=workers, progress=progress)
            stats.save(path)
    verb = "up to date" if reuse else f"written in {time.perf_counter() - started:.1f} s"
    console.print(f"class statistics of {len(folder)} label files {verb}: {path}")

    try:
        probs = RareClassSampler(stats, temperature, min_pixels).probabilities
    except DataError as exc:
        console.print(str(exc))
        probs = np.zeros(len(CLASSES))
    images = (stats.counts > min_pixels).sum(axis=0)
    table = Table(title=f"RCS at T={temperature:g}, min_pixels={min_pixels}")
    for name in ("id", "class", "pixels %", f"images > {min_pixels} px", "P(c) %"):
        table.add_column(name, justify="left" if name == "class" else "right")
    for c, (name, freq) in enumerate(zip(CLASSES, stats.frequencies, strict=True)):
        table.add_row(str(c), name, f"{100 * freq:.3f}", str(images[c]), f"{100 * probs[c]:.2f}")
    console.print(table)
    excluded = [CLASSES[c] for c in np.flatnonzero(images == 0)]
    if excluded:
        console.print(f"cannot be sampled (no image with > {min_pixels} px): {', '.join(excluded)}")
