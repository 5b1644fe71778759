"""`uda checkpoint`: what a checkpoint file is, and published files imported as ours."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from uda_cli.errors import friendly_errors
from uda_cli.predict import Copy
from uda_core.checkpoint import save_checkpoint
from uda_core.errors import UdaError
from uda_methods.published_files import (
    COPIES,
    CheckpointFile,
    default_preset,
    imported_checkpoint,
    model_of_file,
    read_checkpoint_file,
)

app = typer.Typer(
    help="Inspect checkpoint files; import published ones as ours.", no_args_is_help=True
)
console = Console(highlight=False, soft_wrap=True)

LAYOUTS = {
    "uda": "ours (model, config)",
    "published": "the reference publish_model.py file: {'state_dict': model.*}",
    "training": "mmcv's checkpoint of the reference UDA wrapper: meta, state_dict",
    "aux-raw": "an auxiliary network's bare state dict",
    "aux-wrapped": "an auxiliary network as {'model': state_dict}",
    "uda-auxiliary": "our auxiliary network (uda dispersion pretrain)",
}
METHODS = {"daformer": "DAFormer", "hrda": "HRDA", "mic": "MIC"}


def describe(file: CheckpointFile) -> list[tuple[str, str]]:
    """(field, value) lines of ``uda checkpoint info``."""
    lines = [("file", str(file.path)), ("layout", f"{file.layout}: {LAYOUTS[file.layout]}")]
    if file.layout == "uda":
        cfg = file.config or {}
        plugins = ", ".join(cfg.get("plugins") or {}) or "none"
        lines.append(("method", f"{file.method} (plugins: {plugins}), preset {cfg.get('preset')}"))
        imported = file.content.get("imported")
        if imported:
            lines.append(
                ("imported from", f"{imported['file']} ({imported['layout']}, {imported['copy']})")
            )
            lines.append(("family", file.family))
    else:
        lines.append(("family", file.family))
        if file.config_text is not None:
            lines.append(("method", f"{METHODS[file.method]} (from the meta config)"))
        elif file.method == "hrda":
            lines.append(("method", "HRDA or MIC (same keys, no meta: MIC takes --preset *-mic)"))
        elif file.method is not None:
            lines.append(("method", f"{METHODS[file.method]} (from the keys)"))
        if file.family != "auxiliary":
            lines.append(("dataset", file.dataset or "unknown (GTA settings apply)"))
    lines.append(("encoder", file.encoder or "?"))
    prefixes = ", ".join(f"{p or '(none)'} {n}" for p, n in file.prefixes.items())
    lines.append(("prefixes", prefixes))
    lines.append(("tensors", f"{file.tensors:,} ({file.parameters:,} elements)"))
    if file.layout in ("published", "training"):
        lines.append(("copy", f"{file.copy} ({COPIES[file.copy]}*)"))
        plugin = " --plugin dispersion" if file.family.startswith("dispersion") else ""
        lines.append(("preset", f"{default_preset(file)}{plugin} (eval, predict, import)"))
    extra = {k: v for k, v in file.meta.items() if k not in ("CLASSES", "PALETTE", "env_info")}
    if extra:
        lines.append(("meta", ", ".join(f"{k} {v}" for k, v in extra.items())))
    return lines


@app.command("info")
@friendly_errors("nothing was changed")
def info_command(
    checkpoint: Annotated[Path, typer.Argument(help="Any checkpoint file: ours or published.")],
    copy: Annotated[
        Copy, typer.Option(help="The copy of a training checkpoint to describe.")
    ] = Copy.student,
) -> None:
    """Print what a file is: layout, family, encoder, prefixes, tensors and its config."""
    file = read_checkpoint_file(checkpoint, copy.value)
    width = max(len(name) for name, _ in describe(file))
    for name, value in describe(file):
        console.print(f"{name:<{width}}  {value}", markup=False)
    if file.config is not None:
        console.print("config:")
        console.print(json.dumps(file.config, indent=2), markup=False)
    if file.config_text is not None:
        console.print("config (meta['config'] of the reference run):")
        console.print(file.config_text.rstrip(), markup=False)


@app.command("import")
@friendly_errors("--out was not written; run the command again")
def import_command(
    checkpoint: Annotated[Path, typer.Argument(help="A published or reference training file.")],
    out: Annotated[Path, typer.Option(help="Our checkpoint to write (e.g. RUN.pt).")],
    preset: Annotated[
        str | None,
        typer.Option(help="Preset to take the run config from (default: the file's family)."),
    ] = None,
    copy: Annotated[
        Copy, typer.Option(help="student (model.*), teacher (ema_model.*) or imagenet.")
    ] = Copy.student,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a field of the run config.")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace --out if it exists.")] = False,
) -> None:
    """Write a published file once as our checkpoint, with its full run config.

    `uda eval`, `uda predict` and `uda train --init-from` then read it as one of ours.
    """
    if out.exists() and not force:
        raise UdaError(f"--out {out} exists; pass --force to replace it or choose another path")
    file = read_checkpoint_file(checkpoint, copy.value)
    if file.layout not in ("published", "training"):
        raise UdaError(
            f"{checkpoint} is {LAYOUTS[file.layout]}, not a published segmentor; "
            + (
                "it works as it is"
                if file.layout == "uda"
                else "give it as --set plugins.dispersion.auxiliary.checkpoint=FILE"
            )
        )
    loaded = model_of_file(file, list(set_ or []), preset)
    save_checkpoint(out, imported_checkpoint(loaded))
    console.print(
        f"imported {checkpoint} ({file.layout}, {file.family} {file.encoder}, {file.copy} "
        f"{COPIES[file.copy]}*) as {out}, preset {loaded.cfg.preset}",
        markup=False,
    )
