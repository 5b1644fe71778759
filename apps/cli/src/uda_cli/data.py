"""`uda data ...`: prepare datasets."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from uda_cli.errors import friendly_errors
from uda_core.config import validate
from uda_data.config import default_cache_dir
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
