"""The `uda` command: train, evaluate, and prepare data."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import tempfile
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
import typer
from rich.console import Console

from uda_cli import __version__
from uda_cli.checkpoint import app as checkpoint_app
from uda_cli.data import app as data_app
from uda_cli.dispersion import app as dispersion_app
from uda_cli.errors import REPORTS, OneLineUsageErrors, friendly_errors, print_reports, stderr
from uda_cli.predict import Copy, CopyOption, PresetOption, predict_command
from uda_core.checkpoint import load_checkpoint
from uda_core.config import RuntimeConfig, apply_overrides
from uda_core.errors import INTERRUPTED_EXIT, PREEMPTED_EXIT, UdaError
from uda_data.atomic import check_writable, save_png, write_bytes
from uda_data.classes import colorize
from uda_data.errors import write_error
from uda_data.layouts import detect_layout
from uda_data.synthetic import is_complete
from uda_methods import presets, registry
from uda_methods.published import published_line, published_target_line
from uda_methods.published_files import (
    CheckpointFile,
    init_config,
    load_segmentation_model,
    model_weights,
    read_checkpoint_file,
)
from uda_methods.run import (
    check_names,
    checkpoint_to_resume,
    config_to_resume,
    evaluate,
    open_data,
    resolve_config,
    run_dir_for,
    train,
)

app = typer.Typer(
    name="uda",
    cls=OneLineUsageErrors,
    help="Unsupervised domain adaptation for semantic segmentation: train, evaluate, prepare data.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(data_app, name="data")
app.add_typer(dispersion_app, name="dispersion")
app.add_typer(checkpoint_app, name="checkpoint")
app.command("predict")(predict_command)
console = Console(highlight=False, soft_wrap=True)


class Precision(str, Enum):
    no = "no"
    bf16 = "bf16"
    fp16 = "fp16"


class EvalMode(str, Enum):
    whole = "whole"
    slide = "slide"


def _version(value: bool) -> None:
    if value:
        console.print(f"uda {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """uda: train on labelled synthetic images, adapt to unlabelled real ones."""


def _flags(**values: Any) -> dict[str, Any]:
    """CLI flags as a nested config dict; flags left unset are left out."""
    out: dict[str, Any] = {}
    for dotted, value in values.items():
        if value is None or value == []:
            continue
        section, key = dotted.split("__")
        out.setdefault(section, {})[key] = value.value if isinstance(value, Enum) else value
    return out


@app.command("train")
@friendly_errors("nothing was trained")
def train_command(
    preset: Annotated[
        str | None,
        typer.Option(
            help=f"Starting config: {', '.join(sorted(presets.PRESETS))} (default: "
            f"{presets.DEFAULT_PRESET}, or the --init-from file's own)."
        ),
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="YAML, TOML or JSON file merged over the preset.")
    ] = None,
    method: Annotated[
        str | None, typer.Option(help=f"UDA method: {', '.join(sorted(registry.METHODS))}.")
    ] = None,
    plugin: Annotated[
        list[str] | None, typer.Option(help="Plugin by name; repeat for several.")
    ] = None,
    iterations: Annotated[int | None, typer.Option("--iters", help="Training iterations.")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    precision: Annotated[Precision | None, typer.Option(help="Mixed precision.")] = None,
    work_dir: Annotated[Path | None, typer.Option(help="Folder of run folders.")] = None,
    name: Annotated[str | None, typer.Option(help="Run folder name.")] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override any field: --set optim.lr=1e-4 (repeatable)."),
    ] = None,
    resume: Annotated[
        str | None, typer.Option(help="Checkpoint to continue from, or 'latest' in the work dir.")
    ] = None,
    init_from: Annotated[
        Path | None,
        typer.Option(
            help="Start a new run from these weights: a checkpoint of ours or a published "
            "file (its config is the default starting config)."
        ),
    ] = None,
    copy: Annotated[
        Copy,
        typer.Option(
            help="--init-from a training checkpoint: student (model.*), teacher (ema_model.*) "
            "or imagenet (imnet_model.*)."
        ),
    ] = Copy.student,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run", help="Validate config, data, names and checkpoint; print the config."
        ),
    ] = False,
    data_root: Annotated[
        Path | None,
        typer.Option(
            help="Folder holding gta/, synthia/ and cityscapes/: each dataset's root becomes "
            "DATA_ROOT/<its layout>."
        ),
    ] = None,
    pretrained: Annotated[
        Path | None,
        typer.Option(help="Encoder weights (e.g. SegFormer's mit_b5.pth), a local file."),
    ] = None,
    num_processes: Annotated[
        int,
        typer.Option(
            min=1,
            help="Data-parallel processes on this machine: one per GPU, or gloo processes on "
            "the CPU. Each loads data.batch_size images; the learning rate is not rescaled.",
        ),
    ] = 1,
) -> None:
    """Train a model; evaluates on target val and keeps the best checkpoint."""
    flags = _flags(
        method__name=method,
        runtime__iterations=iterations,
        runtime__seed=seed,
        runtime__precision=precision,
        runtime__work_dir=str(work_dir) if work_dir else None,
        runtime__name=name,
    )
    if plugin:
        flags["plugins"] = {name: {} for name in plugin}
    if pretrained is not None:
        flags.setdefault("model", {})["pretrained"] = str(pretrained)
    overrides = list(set_ or [])
    init, init_file, checkpoint, state = None, None, None, None
    if init_from is not None and resume is not None:
        raise UdaError(
            "--init-from starts a new run from weights, --resume continues a run; pass one"
        )
    if resume is not None:
        checkpoint, state, cfg = _to_resume(resume, config, flags, overrides)
        if state["iteration"] >= cfg.runtime.iterations:
            console.print(
                f"nothing to train: the run in {checkpoint.parent.parent} finished at iteration "
                f"{state['iteration']}/{cfg.runtime.iterations}; pass a larger --iters to train "
                f"further, or evaluate it with `uda eval {checkpoint}`"
            )
            return
    elif init_from is not None:
        init_file = read_checkpoint_file(init_from, copy.value)
        cfg = init_config(init_file, preset, config, flags, overrides, data_root)
    else:
        cfg = resolve_config(preset or presets.DEFAULT_PRESET, config, flags, overrides, data_root)
    if num_processes > 1 and not dry_run:
        check_names(cfg)
        _launch(num_processes, None if cfg.runtime.name or resume else run_dir_for(cfg).name)
        return
    check_names(cfg)
    if init_file is not None:
        _, init = model_weights(init_file, cfg)
    if dry_run:
        _dry_run(cfg, checkpoint, init_file)
        return
    train(cfg, checkpoint, console, state, init)


def _to_resume(resume: str, config: Path | None, flags: dict, overrides: list[str]):
    """The checkpoint ``--resume`` names (``latest``: the newest under the work dir given by
    --work-dir or --set runtime.work_dir), its content, and the config to continue with."""
    given = apply_overrides(flags, overrides).get("runtime", {}).get("work_dir")
    checkpoint = checkpoint_to_resume(resume, Path(given or RuntimeConfig().work_dir))
    state = load_checkpoint(checkpoint)
    if "optimizer" not in state:
        raise UdaError(
            f"--resume {checkpoint}: it holds weights only (a best.pt or an imported file), "
            "no training state; start a new run from it with --init-from"
        )
    cfg, changes = config_to_resume(state, checkpoint, config, flags, overrides)
    if int(os.environ.get("RANK", "0")) == 0:
        for change in changes:
            console.print(f"resume changes {change}")
    return checkpoint, state, cfg


def _launch(num_processes: int, name: str | None) -> None:
    """Run this `uda train` command line again in ``num_processes`` processes, through
    torch.distributed.run (what `accelerate launch --multi_gpu` calls), without
    --num-processes; with ``name``, every process is given that run folder name."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UdaError(
            "--num-processes: this process was launched with others already (accelerate "
            "launch or torchrun); drop --num-processes"
        )
    if "train" not in sys.argv:
        raise UdaError("--num-processes works on the `uda train` command line only")
    gpus = torch.cuda.device_count()
    if gpus and num_processes > gpus:
        raise UdaError(
            f"--num-processes {num_processes}: {gpus} GPUs are visible and each process needs "
            "one; lower it or set CUDA_VISIBLE_DEVICES"
        )
    if not gpus:
        threads = max((os.cpu_count() or 1) // num_processes, 1)
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    argv = _without_option(sys.argv[sys.argv.index("train") :], "--num-processes")
    if name is not None:
        argv += ["--name", name]
    launcher = ["--standalone", f"--nproc-per-node={num_processes}", "--module", "uda_cli.main"]
    _quiet_launcher()
    with tempfile.TemporaryDirectory(prefix="uda-launch-") as reports:
        os.environ[REPORTS] = reports
        try:
            run(get_args_parser().parse_args([*launcher, *argv]))
        except ChildFailedError as exc:
            rank, failure = exc.get_first_failure()
            code = print_reports(Path(reports))
            if code is None:
                stderr.print(
                    f"[bold red]error:[/] process {rank} of {num_processes} ended with "
                    f"{_how_it_ended(failure.exitcode)} before it could say why"
                )
            raise typer.Exit(code or 1) from None
        except SignalException as exc:  # the launcher was signalled, and so were they
            code = print_reports(Path(reports))
            if code is None:
                code = INTERRUPTED_EXIT if exc.sigval == signal.SIGINT else PREEMPTED_EXIT
            raise typer.Exit(code) from None
        finally:
            del os.environ[REPORTS]


def _quiet_launcher() -> None:
    """torch.distributed.run logs which process it signals and which failed; the processes'
    own reports (see ``uda_cli.errors``) say it in one line instead."""
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("torch.distributed"):
            logging.getLogger(name).setLevel(logging.CRITICAL)


def _how_it_ended(exitcode: int) -> str:
    if exitcode < 0:
        return f"signal {signal.Signals(-exitcode).name}"
    return f"exit status {exitcode}"


def _without_option(argv: list[str], option: str) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip or arg.startswith(f"{option}="):
            skip = False
            continue
        skip = arg == option
        if not skip:
            out.append(arg)
    return out


def _dry_run(cfg, checkpoint: Path | None, init_file: CheckpointFile | None) -> None:
    if not cfg.data.uses_synthetic() or _synthetic_ready(cfg):
        run_data = open_data(cfg)
        found = f"{len(run_data.source)} source, {len(run_data.target or [])} target"
        console.print(f"data: {found}, {len(run_data.evaluator.dataset)} val images")
    else:
        check_writable(Path(cfg.data.cache_dir) / "synthetic")  # UDA_CACHE_DIR, before any work
        console.print(f"data: the embedded domains will be generated in {cfg.data.cache_dir}")
    if checkpoint is not None:
        console.print(f"resume: {checkpoint}")
    if init_file is not None:
        what = f"{init_file.layout}, {init_file.family} {init_file.encoder}, {init_file.copy}"
        console.print(f"init from: {init_file.path} ({what}); every weight fits the model")
    console.print(
        f"run folder: {run_dir_for(cfg) if checkpoint is None else checkpoint.parent.parent}"
    )
    console.print_json(json.dumps(cfg.model_dump(mode="json")))
    console.print("dry run: the configuration is valid; nothing was trained")


def _synthetic_ready(cfg) -> bool:
    return is_complete(cfg.data.synthetic_root(), cfg.data.synthetic)


@app.command("eval")
@friendly_errors("no results were written; run the command again")
def eval_command(
    checkpoint: Annotated[
        Path, typer.Argument(help="A checkpoint of `uda train`, or a published file.")
    ],
    val_root: Annotated[
        Path | None,
        typer.Option(
            help="Labelled val data in any layout, detected from the folder (default: the run's)."
        ),
    ] = None,
    split: Annotated[str | None, typer.Option(help="Split folder under the val root.")] = None,
    mode: Annotated[
        EvalMode | None, typer.Option(help="Whole-image or sliding-window inference.")
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a field of the saved config.")
    ] = None,
    output: Annotated[
        Path | None, typer.Option(help="JSON file for the results (default: next to it).")
    ] = None,
    save_predictions: Annotated[
        Path | None, typer.Option(help="Folder for colourised prediction PNGs.")
    ] = None,
    copy: CopyOption = Copy.student,
    preset: PresetOption = None,
) -> None:
    """Evaluate a checkpoint: per-class IoU, mIoU and the Synthia 16/13-class means."""
    overrides = list(set_ or [])
    if val_root is not None:
        layout = detect_layout(val_root)
        overrides += [f"data.val.root={val_root}", f"data.val.layout={layout.name}"]
        overrides.append("data.val.conditions=null")
    if split is not None:
        overrides.append(f"data.val.split={split}")
    if mode is not None:
        overrides.append(f"eval.mode={mode.value}")
    output = output or checkpoint.with_suffix(".eval.json")
    check_writable(output)
    if save_predictions is not None:
        check_writable(save_predictions / "prediction_pred.png")
    loaded = load_segmentation_model(checkpoint, overrides, copy.value, preset)
    model, cfg, state = loaded.model, loaded.cfg, loaded.file.meta
    saver = _prediction_saver(save_predictions) if save_predictions else None
    report = evaluate(model, cfg, on_batch=saver)
    iteration = state.get("iteration", state.get("iter"))
    console.print(report.table(f"{checkpoint} (iteration {iteration or '?'})"))
    console.print(f"mIoU {100 * report.miou:.2f}")
    _print_if(published_line(cfg.preset, cfg.method.name, list(cfg.plugins), report.as_dict()))
    targets = _extra_targets(model, cfg, report)
    result = {
        "checkpoint": str(checkpoint),
        "iteration": iteration,
        **report.as_dict(),
        **({"targets": targets, "mean_mIoU": _mean_miou(targets)} if targets else {}),
    }
    write_bytes(output, json.dumps(result, indent=2).encode())
    console.print(f"results written to {output}")


def _extra_targets(model, cfg, report) -> dict[str, dict[str, float]]:
    """Score each of ``data.extra_val`` as ``data.val`` is scored, print a table per target and
    the mean mIoU over all; their reports by ``LAYOUT:ROOT``, the first being ``data.val``'s
    (empty without extra targets)."""
    if not cfg.data.extra_val:
        return {}
    targets = {f"{cfg.data.val.layout}:{cfg.data.val.root}": report.as_dict()}
    run = (cfg.preset, cfg.method.name, list(cfg.plugins))
    for dataset in cfg.data.extra_val:
        data = cfg.data.model_copy(update={"val": dataset})
        extra = evaluate(model, cfg.model_copy(update={"data": data}))
        name = f"{dataset.layout}:{dataset.root}"
        console.print(extra.table(f"{name} ({dataset.split})"))
        console.print(f"mIoU {100 * extra.miou:.2f} ({name})")
        _print_if(published_target_line(*run, dataset.layout, extra.as_dict()))
        targets[name] = extra.as_dict()
    mean = _mean_miou(targets)
    console.print(f"mean mIoU over {len(targets)} targets {100 * mean:.2f}")
    _print_if(published_target_line(*run, "mean", {"mean_mIoU": mean}))
    return targets


def _print_if(line: str | None) -> None:
    if line is not None:
        console.print(line)


def _mean_miou(targets: dict[str, dict[str, float]]) -> float:
    return sum(t["mIoU"] for t in targets.values()) / len(targets)


def _prediction_saver(folder: Path):
    def save(batch, pred) -> None:
        for name, p in zip(batch["name"], pred.cpu().numpy().astype(np.uint8), strict=True):
            path = folder / f"{Path(name).stem}_pred.png"
            try:
                save_png(path, colorize(p))
            except OSError as exc:
                raise write_error(path, exc) from None

    return save


if __name__ == "__main__":
    app()
