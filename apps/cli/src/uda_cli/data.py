"""`uda data ...`: prepare datasets."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
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
from uda_data.atomic import check_writable, write_bytes
from uda_data.check import DatasetCheck, check_dataset
from uda_data.classes import CLASSES
from uda_data.config import default_cache_dir
from uda_data.convert import ConversionPlan, LabelResult, convert_labels, plan_conversion
from uda_data.datasets import open_layout
from uda_data.depth_anything import DEFAULT_MODEL, DepthEstimator, plan_depth, write_depth
from uda_data.errors import DataError
from uda_data.layouts import LAYOUTS, Layout, detect_layout
from uda_data.rcs import Progress as ProgressCallback
from uda_data.rcs import (
    RareClassSampler,
    class_stats_path,
    compute_class_stats,
    load_or_compute,
    refresh_class_stats,
)
from uda_data.synthetic import SynthSpec, synthesize

app = typer.Typer(help="Prepare datasets.", no_args_is_help=True)
console = Console(highlight=False, soft_wrap=True)
_DEFAULT = SynthSpec()
EXAMPLES = 10
"""Files listed per kind of problem; the rest are counted."""


@contextlib.contextmanager
def _progress(description: str, total: int | None = None) -> Iterator[ProgressCallback]:
    """A progress bar, and the ``(done, total)`` callback that moves it."""
    columns = (*Progress.get_default_columns()[:-1], MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda done, total: bar.update(task, completed=done, total=total)


def _print_examples(lines: list[str], style: str = "") -> None:
    for line in lines[:EXAMPLES]:
        console.print(f"  {line}", style=style, markup=False)
    if len(lines) > EXAMPLES:
        console.print(f"  ... and {len(lines) - EXAMPLES} more", style=style)


@app.command("synth")
@friendly_errors("the domains were not finished; run the command again to generate them")
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


class LayoutName(str, Enum):
    gta = "gta"
    synthia = "synthia"
    cityscapes = "cityscapes"
    acdc = "acdc"
    darkzurich = "darkzurich"
    bdd100k = "bdd100k"
    mapillary = "mapillary"


class SizeMismatch(str, Enum):
    resize = "resize"
    skip = "skip"


def _layout(root: Path, name: LayoutName | None) -> Layout:
    return LAYOUTS[name.value] if name is not None else detect_layout(root)


Conditions = Annotated[
    list[str] | None,
    typer.Option(
        "--condition",
        help="ACDC (fog, night, rain, snow) or Dark Zurich (day, twilight, night) condition;"
        " repeat for several (default: the reference's, all four for ACDC, night for Dark"
        " Zurich).",
    ),
]


@app.command("stats")
@friendly_errors("no statistics were written; run the command again")
def stats_command(
    root: Annotated[Path, typer.Argument(help="Dataset root.")],
    layout: Annotated[
        LayoutName | None, typer.Option(help="Directory layout (default: detected).")
    ] = None,
    split: Annotated[str, typer.Option(help="Split folder (layouts with splits).")] = "train",
    condition: Conditions = None,
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
    found = _layout(root, layout)
    folder = open_layout(found, root, split, conditions=condition)
    path = class_stats_path(
        root, found.stats_key(split, condition), cache_dir or default_cache_dir()
    )
    reuse = path.exists() and not force
    if not reuse:
        check_writable(path)
    started = time.perf_counter()
    with _progress("counting class pixels", len(folder)) as progress:
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


_CACHE_DIR_HELP = "Where to keep class statistics if the root is read-only (default: the cache)."


@app.command("convert")
@friendly_errors("the labels converted so far are kept; run the same command again to go on")
def convert_command(
    layout: Annotated[LayoutName, typer.Argument(help="Layout of the release.")],
    root: Annotated[Path, typer.Argument(help="Dataset root.")],
    split: Annotated[
        list[str] | None,
        typer.Option(help="Split folder to convert; repeat for several (default: all)."),
    ] = None,
    condition: Conditions = None,
    nproc: Annotated[int, typer.Option(min=1, help="Processes.")] = 2,
    size_mismatch: Annotated[
        SizeMismatch,
        typer.Option(
            help="Labels whose size differs from their image's (a GTA quirk): resize them"
            " (nearest neighbour) or leave them unconverted."
        ),
    ] = SizeMismatch.resize,
    cache_dir: Annotated[Path | None, typer.Option(help=_CACHE_DIR_HELP)] = None,
) -> None:
    """Convert a release's labels to trainIds (*_labelTrainIds.png beside each) and count
    their classes for rare class sampling. Resumable: converted labels, and the trainId labels
    a release ships, are kept."""
    found = LAYOUTS[layout.value]
    plan = plan_conversion(root, found, conditions=condition, splits=split)
    for line in plan.skipped_splits:
        console.print(line)
    if found.id_suffix is None:
        console.print(f"{found.title} labels are trainIds as released: nothing to convert")
    started = time.perf_counter()
    with _progress("converting labels", len(plan.jobs)) as progress:
        results = convert_labels(
            plan, nproc=nproc, size_mismatch=size_mismatch.value, progress=progress
        )
    _report_conversion(plan, results, time.perf_counter() - started)
    failed = [r for r in results if r.error]
    if failed or plan.missing:
        raise fail(
            f"{len(failed)} label file(s) could not be converted and {len(plan.missing)}"
            f" image(s) have no label (listed above); fix them and run the command again",
            code=1,
        )
    if any(not r.written for r in results):
        console.print(
            "class statistics not counted: some images have no trainId label; convert them"
            " with --size-mismatch resize or remove them, then run the command again"
        )
        return
    cache_dir = cache_dir or default_cache_dir()
    for labelled in plan.splits:
        folder = open_layout(found, root, labelled, conditions=plan.conditions)
        path = class_stats_path(root, found.stats_key(labelled, plan.conditions), cache_dir)
        with _progress("counting class pixels", len(folder)) as progress:
            counted = refresh_class_stats(folder, path, progress, workers=nproc)
        console.print(f"class statistics {'written' if counted else 'up to date'}: {path}")


def _report_conversion(plan: ConversionPlan, results: list[LabelResult], seconds: float) -> None:
    written = [r for r in results if r.written]
    resized = [r for r in written if r.size_mismatch]
    skipped = [r for r in results if not r.written and r.size_mismatch]
    failed = [r for r in results if r.error]
    unknown = [r for r in results if r.unknown_ids]
    table = Table(title=f"{plan.layout.title} labels in {plan.root} ({seconds:.1f} s)")
    table.add_column("labels")
    table.add_column("count", justify="right")
    rows = [
        ("converted to trainIds", len(written), ""),
        ("already converted (kept)", plan.up_to_date, ""),
        ("resized to their image's size", len(resized), "yellow"),
        ("skipped: size differs from the image", len(skipped), "yellow"),
        ("with unknown ids (set to 255, ignored)", len(unknown), "yellow"),
        ("could not be converted", len(failed), "red"),
        ("images without a label", len(plan.missing), "red"),
    ]
    for name, count, style in rows:
        table.add_row(name, str(count), style=style if count else "")
    console.print(table)
    if resized or skipped:
        verb = "resized (nearest neighbour)" if resized else "left unconverted"
        console.print(f"labels whose size differs from their image, {verb}:", style="yellow")
        _print_examples([f"{r.job.label}: {r.size_mismatch}" for r in resized + skipped])
    if unknown:
        ids = sorted({i for r in unknown for i in r.unknown_ids})
        console.print(f"unknown ids {ids}, set to 255 (ignored), in:", style="yellow")
        _print_examples([f"{r.job.label}: {list(r.unknown_ids)}" for r in unknown])
    if failed:
        console.print("could not be converted:", style="red")
        _print_examples([r.error for r in failed])
    if plan.missing:
        console.print("images without a label (the label expected):", style="red")
        _print_examples([str(path) for path in plan.missing])


@app.command("check")
@friendly_errors("the check did not finish; run the command again")
def check_command(
    root: Annotated[Path, typer.Argument(help="Dataset root.")],
    layout: Annotated[
        LayoutName | None, typer.Option(help="Directory layout (default: detected).")
    ] = None,
    condition: Conditions = None,
    workers: Annotated[
        int | None,
        typer.Option(min=1, help="Processes (default: one per CPU core, fewer for few files)."),
    ] = None,
    json_file: Annotated[
        Path | None,
        typer.Option("--json", help="Also write everything found, every file listed, as JSON."),
    ] = None,
    cache_dir: Annotated[Path | None, typer.Option(help=_CACHE_DIR_HELP)] = None,
) -> None:
    """Verify a dataset before training: decode every image, trainId label and depth map and
    check the class statistics, split by split. Exits with status 1 if anything is wrong."""
    found = _layout(root, layout)
    if json_file is not None:
        check_writable(json_file)
    with _progress("decoding files") as progress:
        report = check_dataset(
            root,
            found,
            conditions=condition,
            cache_dir=cache_dir or default_cache_dir(),
            workers=workers,
            progress=progress,
        )
    console.print(_check_table(report))
    for note in report.notes:
        console.print(note, style="dim", markup=False)
    if report.warnings:
        console.print("warnings (read with a conversion):", style="yellow")
        _print_examples(report.warnings, style="yellow")
    if json_file is not None:
        write_bytes(json_file, (json.dumps(report.to_json(), indent=2) + "\n").encode())
        console.print(f"wrote {json_file}")
    problems = report.problems
    if problems:
        console.print("problems:", style="red")
        _print_examples(problems, style="red")
        files = sum(len(split.problems) for split in report.splits)
        raise fail(
            f"{root}: {files} problem(s) of {len(problems)} kind(s), listed above; fix them"
            " before training",
            code=1,
        )
    console.print(f"{root}: the {found.title} dataset is ready")


def _check_table(report: DatasetCheck) -> Table:
    table = Table(title=f"{report.layout.title} layout at {report.root}")
    for name in ("split", "images", "sizes", "labels", "depth", "class stats", "problems"):
        table.add_column(name, justify="left" if name in ("split", "sizes") else "right")
    for split in report.splits:
        sizes = ", ".join(f"{w}x{h}" for (w, h), _ in split.sizes.most_common(3))
        if len(split.sizes) > 3:
            sizes += f" (+{len(split.sizes) - 3})"
        kinds = f" ({', '.join(split.depth_kinds)})" if split.depth_kinds else ""
        table.add_row(
            split.split or "all",
            str(split.images),
            sizes,
            f"{split.labels}/{split.images}" if split.labelled else "-",
            f"{split.depth}/{split.images}{kinds}",
            split.stats,
            str(len(split.problems)),
            style="red" if split.problems else "",
        )
    return table


@app.command("depth")
@friendly_errors("the depth maps written so far are kept; run the same command again to go on")
def depth_command(
    root: Annotated[Path, typer.Argument(help="Dataset root.")],
    layout: Annotated[
        LayoutName | None, typer.Option(help="Directory layout (default: detected).")
    ] = None,
    condition: Conditions = None,
    model: Annotated[
        str, typer.Option(help="Depth Anything v2 weights: a local folder or a hub id.")
    ] = DEFAULT_MODEL,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per forward pass.")] = 4,
    device: Annotated[
        str, typer.Option(help="auto (the GPU if any), cpu, cuda, cuda:1, ...")
    ] = "auto",
    workers: Annotated[int, typer.Option(min=0, help="Image-reading processes.")] = 2,
) -> None:
    """Write a Depth Anything v2 depth map (8-bit PNG under ROOT/depth) for every image
    without one. Resumable: existing maps are kept."""
    found = _layout(root, layout)
    jobs, existing = plan_depth(root, found, condition)
    if not jobs:
        console.print(f"all {existing} images have a depth map in {root / 'depth'}; nothing to do")
        return
    estimator = DepthEstimator(model, device)
    started = time.perf_counter()
    with _progress(f"estimating depth ({estimator.device})", len(jobs)) as progress:
        failed = write_depth(
            jobs, estimator, batch_size=batch_size, workers=workers, progress=progress
        )
    console.print(
        f"wrote {len(jobs) - len(failed)} depth maps to {root / 'depth'}"
        f" in {time.perf_counter() - started:.1f} s ({existing} existed already)"
    )
    if failed:
        console.print("failed:", style="red")
        _print_examples(failed, style="red")
        raise fail(f"{len(failed)} image(s) got no depth map (listed above)", code=1)
