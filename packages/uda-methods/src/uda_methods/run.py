"""From a run config to a trained, evaluated model: the wiring behind `uda train` and `uda eval`."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from uda_core.checkpoint import RunLock, find_latest, load_checkpoint, periodic_checkpoints
from uda_core.config import apply_overrides, load_config_file, merge, validate
from uda_core.engine import (
    STOP_SIGNALS,
    Trainer,
    TrainResult,
    load_model_weights,
    process_state,
)
from uda_core.errors import INTERRUPTED_EXIT, Stopped, UdaError
from uda_core.evaluation import Evaluator, IoUReport
from uda_core.method import Method, UDABatch
from uda_core.plugin import Plugin, PrepareContext, load_plugins
from uda_data.classes import CLASSES, NUM_CLASSES, PALETTE, SYNTHIA_13, SYNTHIA_16
from uda_data.config import (
    DataConfig,
    default_cache_dir,
    open_folder,
    source_pipeline,
    source_sampler,
    target_pipeline,
    val_set,
)
from uda_data.datasets import SegmentationFolder, UDATrainSet
from uda_data.errors import DataError
from uda_data.rcs import RareClassSampler
from uda_data.transforms import resize, to_tensors
from uda_methods.config import MethodConfig, RunConfig
from uda_methods.presets import plugin_profile, preset
from uda_methods.published import published_line
from uda_methods.registry import build_method_model, method_class

SUBSETS = {"mIoU16": SYNTHIA_16, "mIoU13": SYNTHIA_13}


def resolve_config(
    preset_name: str,
    config_file: Path | None,
    flags: dict[str, Any],
    overrides: list[str],
    data_root: Path | None = None,
    base: dict[str, Any] | None = None,
) -> RunConfig:
    """Preset, then the preset's profile for the enabled plugins, then the config file, then
    CLI flags, then ``--set`` overrides; validated. With ``data_root``, each dataset's root is
    ``data_root/<its layout>`` (gta, synthia, cityscapes), as the README lays data out. With
    ``base`` (a saved run config), it takes the place of the preset and its profiles."""

    def layered(data: dict[str, Any]) -> dict[str, Any]:
        if config_file is not None:
            data = merge(data, load_config_file(config_file))
        return apply_overrides(merge(data, flags), overrides)

    given_warmup = (layered({}).get("schedule") or {}).get("warmup_iters")
    if base is not None:
        return _warmup_within_run(_validated(layered(base), data_root), given_warmup)
    base = preset(preset_name).model_dump(mode="json") | {"preset": preset_name}
    enabled = list(layered(base).get("plugins") or {})
    named = _without_overrides(base, config_file, flags).get("plugins") or {}
    only_set = [name for name in enabled if name not in named]
    if only_set:
        raise UdaError(
            f"--set plugins.{only_set[0]}.*: the plugin {only_set[0]} is not enabled; add "
            f"--plugin {only_set[0]} (--set only changes its settings)"
        )
    cfg = _validated(layered(merge(base, plugin_profile(preset_name, enabled))), data_root)
    return _warmup_within_run(cfg, given_warmup)


def _warmup_within_run(cfg: RunConfig, given_warmup: Any) -> RunConfig:
    """A warm-up the user gave (config file or --set) must end within the run; a preset's
    warm-up longer than a run shortened with --iters stays, as the reference's schedule does."""
    warmup, iterations = cfg.schedule.warmup_iters, cfg.runtime.iterations
    if given_warmup is not None and warmup > iterations:
        raise UdaError(
            f"config: schedule.warmup_iters {warmup} is longer than runtime.iterations "
            f"{iterations}, so the learning rate never reaches optim.lr; set "
            f"schedule.warmup_iters to at most {iterations} or train longer with --iters"
        )
    return cfg


def _without_overrides(
    base: dict[str, Any], config_file: Path | None, flags: dict[str, Any]
) -> dict[str, Any]:
    data = merge(base, load_config_file(config_file)) if config_file is not None else base
    return merge(data, flags)


def _validated(data: dict[str, Any], data_root: Path | None) -> RunConfig:
    if data_root is not None:
        extra = data["data"].get("extra_val", [])
        for dataset in [*(data["data"][w] for w in ("source", "target", "val")), *extra]:
            dataset["root"] = str(Path(data_root) / dataset.get("layout", "cityscapes"))
    cfg = validate(RunConfig, data)
    check_across_sections(cfg)
    return with_plugins(cfg)


def check_across_sections(cfg: RunConfig) -> None:
    """Rules between sections, checked at load time (so --dry-run catches them)."""
    if cfg.method.style_consistency_lambda > 0 and cfg.model.style_hallucination is None:
        raise UdaError(
            "config: method.style_consistency_lambda compares original and hallucinated styles;"
            " set model.style_hallucination (gta-dg presets: 0.0156) or the lambda to 0"
        )
    method = method_class(cfg.method.name, cfg.method.mic_base)
    trains_with_styles = getattr(method, "trains_with_styles", False)
    if cfg.model.style_hallucination is not None and not trains_with_styles:
        raise UdaError(
            f"config: model.style_hallucination doubles the batch inside the encoder, which "
            f"method {cfg.method.name!r} does not expect; use dg-daformer or dg-hrda, or unset it"
        )
    if cfg.method.multi_resolution:
        detail, crop = cfg.method.hrda_detail_crop, cfg.data.crop
        if any(d > c for d, c in zip(detail, crop, strict=True)):
            raise UdaError(
                f"config: method.hrda_detail_crop {tuple(detail)} is larger than data.crop "
                f"{tuple(crop)}; the detail crop is cut from the crop: make it at most that"
            )


def with_plugins(cfg: RunConfig) -> RunConfig:
    """The config with each plugin's validated settings filled in and the inputs it needs."""
    plugins = load_plugins(cfg.plugins)
    settings = {name: p.config.model_dump(mode="json") for name, p in plugins.items()}
    needs_depth = any("depth" in p.needs for p in plugins.values())
    data = cfg.data.model_copy(update={"load_depth": cfg.data.load_depth or needs_depth})
    return cfg.model_copy(update={"plugins": settings, "data": data})


def build_full_model(cfg: RunConfig, plugins: dict[str, Plugin]) -> torch.nn.Module:
    """The segmentation network with each plugin's head attached."""
    model = build_method_model(cfg.model, cfg.method, NUM_CLASSES)
    for name, plugin in plugins.items():
        head = plugin.build_head(model.decoder.channels, NUM_CLASSES)
        if head is not None:
            model.heads[name] = head
    return model


def check_names(cfg: RunConfig) -> None:
    method_class(cfg.method.name, cfg.method.mic_base)
    build_full_model(cfg, load_plugins(cfg.plugins))


@dataclass
class RunData:
    source: SegmentationFolder
    target: SegmentationFolder | None
    evaluator: Evaluator
    sampler: RareClassSampler | None = None


def open_data(cfg: RunConfig, console: Console | None = None) -> RunData:
    """Open (and, for the embedded domains, generate on first use) every dataset of the run."""
    data = cfg.data

    def progress(done: int, total: int) -> None:
        if console is not None and (done == total or done % 100 == 0):
            console.print(f"generating the embedded synthetic domains: {done}/{total}")

    method = method_class(cfg.method.name, cfg.method.mic_base)
    needs_target = method.needs_target
    source = open_folder(
        data, data.source, with_labels=True, with_depth=data.load_depth, progress=progress
    )
    target = None
    if needs_target:
        target = open_folder(data, data.target, with_labels=False, with_depth=data.load_depth)
    sampler = source_sampler(data, source) if method.uses_rcs else None
    return RunData(source, target, make_evaluator(cfg), sampler)


def make_evaluator(cfg: RunConfig) -> Evaluator:
    """Target val of the run, scored on the 19 classes and the Synthia subsets."""
    return Evaluator(
        val_set(cfg.data), CLASSES, cfg.eval, subsets=SUBSETS, workers=min(cfg.data.workers, 2)
    )


def train_batches(cfg: RunConfig, run_data: RunData):
    """The engine's batch stream: one UDA batch per iteration from a start iteration."""
    data: DataConfig = cfg.data

    def batches(start: int, rank: int, world: int) -> Iterator[UDABatch]:
        dataset = UDATrainSet(
            run_data.source,
            source_pipeline(data),
            run_data.target,
            target_pipeline(data, margins=cfg.method.multi_resolution),
            seed=cfg.runtime.seed,
            rank=rank,
            source_sampler=run_data.sampler,
            min_crop_pixels=data.rcs.min_crop_pixels if run_data.sampler else 0,
        )
        draws = range(start * data.batch_size, cfg.runtime.iterations * data.batch_size)
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=data.batch_size,
            sampler=draws,
            num_workers=data.workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=data.workers > 0,
            prefetch_factor=4 if data.workers > 0 else None,
            generator=torch.Generator(),
            worker_init_fn=_ignore_stop_signals,
        )
        iterator = iter(loader)
        try:
            for item in iterator:
                yield UDABatch(item["source"], item.get("target"))
        finally:
            end_workers(iterator)

    return batches


def end_workers(iterator: Iterator[Any]) -> None:
    """Ends a DataLoader iterator's worker processes now. They ignore SIGTERM (see
    ``_ignore_stop_signals``), so a stream left open by an error would otherwise keep them
    alive until the interpreter's exit, which then waits for them forever."""
    shutdown = getattr(iterator, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()


def _ignore_stop_signals(worker_id: int) -> None:
    """Data workers leave SIGTERM/SIGUSR1 (a scheduler signals every process of a job) to
    the training process, which saves a checkpoint and then ends them."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


class _ResizedSet(torch.utils.data.Dataset):
    """Every map of each sample (labels included, nearest) resized to ``size``."""

    def __init__(self, folder: SegmentationFolder, size: tuple[int, int] | None) -> None:
        self.folder, self.size = folder, size

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        sample = self.folder.load(index)
        return to_tensors(resize(sample, self.size) if self.size else sample)


def prepare_context(
    cfg: RunConfig, source: SegmentationFolder, log, progress=None
) -> PrepareContext:
    """Source and target-val streams of the run for plugins' ``prepare`` hooks."""
    data = cfg.data

    def source_batches(batch_size: int, start: int, stop: int) -> Iterator[dict]:
        dataset = UDATrainSet(source, source_pipeline(data), seed=cfg.runtime.seed)
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=range(start * batch_size, stop * batch_size),
            num_workers=data.workers,
            persistent_workers=False,
        )
        for item in loader:
            yield item["source"]

    def val_batches() -> torch.utils.data.DataLoader:
        folder = open_folder(data, data.val, with_labels=True, with_depth=data.load_depth)
        return torch.utils.data.DataLoader(
            _ResizedSet(folder, data.val_resize), batch_size=cfg.eval.batch_size
        )

    key = {
        "source": data.source.model_dump(mode="json"),
        "val": data.val.model_dump(mode="json"),
        "sizes": [data.source_resize, data.val_resize, data.crop],
        "synthetic": data.synthetic.model_dump(mode="json") if data.uses_synthetic() else None,
        "seed": cfg.runtime.seed,
    }
    return PrepareContext(
        source_batches=source_batches,
        val_batches=val_batches,
        cache_dir=data.cache_dir,
        data_key=json.dumps(key, sort_keys=True),
        device=_plain(process_state().device),
        log=log,
        progress=progress,
    )


def _plain(device: torch.device) -> torch.device:
    """Accelerate names the CPU of process r ``cpu:r``, which torch.load cannot map to."""
    return torch.device("cpu") if device.type == "cpu" else device


def prepare_plugins(
    cfg: RunConfig, plugins: dict[str, Plugin], source: SegmentationFolder, console=None
) -> None:
    """Run each plugin's optional ``prepare`` hook, the main process first (so that it alone
    trains and caches what the others then load)."""
    preparing = {n: p for n, p in plugins.items() if hasattr(p, "prepare")}
    if not preparing:
        return

    def log(message: str) -> None:
        if console is not None and process_state().is_main_process:
            console.print(message)

    def progress(done: int, total: int, loss: float) -> None:
        if done == total or done % max(total // 10, 1) == 0:
            log(f"  {done}/{total}  loss {loss:.3f}")

    context = prepare_context(cfg, source, log, progress)
    with process_state().main_process_first():
        for name, plugin in preparing.items():
            try:
                plugin.prepare(context)
            except (FileNotFoundError, ValueError) as exc:
                raise UdaError(f"plugin {name}: {exc}") from None


def default_run_name(cfg: RunConfig) -> str:
    """<time>-<process id>_<method>: two runs started in the same second get two folders."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}_{cfg.method.name}"


def run_dir_for(cfg: RunConfig) -> Path:
    return cfg.runtime.work_dir / (cfg.runtime.name or default_run_name(cfg))


def checkpoint_to_resume(resume: str, work_dir: Path) -> Path:
    return find_latest(work_dir) if resume == "latest" else Path(resume)


def build_trainer(
    cfg: RunConfig,
    run_dir: Path,
    console: Console | None = None,
    init_weights: dict[str, torch.Tensor] | None = None,
) -> Trainer:
    """The run's trainer; with ``init_weights`` (our model's keys) the network starts from
    them instead of its initialisation (``uda train --init-from``)."""
    method = method_class(cfg.method.name, cfg.method.mic_base)
    plugins = load_plugins(cfg.plugins)
    state = process_state()
    with state.main_process_first():  # the main process alone generates and caches data
        run_data = open_data(cfg, console if state.is_main_process else None)
    prepare_plugins(cfg, plugins, run_data.source, console)
    return Trainer(
        run_dir=run_dir,
        config=cfg.model_dump(mode="json"),
        runtime=cfg.runtime,
        optim=cfg.optim,
        schedule=cfg.schedule,
        build_model=lambda: _initialised(build_full_model(cfg, plugins), init_weights),
        build_method=lambda model, accelerator: _with_style_source(
            method(model, accelerator, method_settings(cfg), plugins), cfg, run_data.source
        ),
        train_batches=train_batches(cfg, run_data),
        evaluator=run_data.evaluator,
        palette=PALETTE,
    )


def method_settings(cfg: RunConfig) -> MethodConfig:
    """``cfg.method`` with the settings that default to another section's value filled in."""
    if cfg.method.disc_lr_iterations is not None:
        return cfg.method
    return cfg.method.model_copy(update={"disc_lr_iterations": cfg.runtime.iterations})


def _with_style_source(method: Method, cfg: RunConfig, source: SegmentationFolder) -> Method:
    """Give a method that hallucinates styles (``dg-daformer``, ``dg-hrda``) its passes over
    the source set (``style_pass_order``), through the source's training transforms drawn
    anew each pass, ``method.style_batch_size`` a batch, the last partial batch dropped; no
    rare class sampling (HRDA dg ``train.py:129-150``)."""
    if getattr(method, "style", None) is None:
        return method
    pipeline, size = source_pipeline(cfg.data), cfg.method.style_batch_size
    index, count = method.accelerator.process_index, method.accelerator.num_processes

    def passes(number: int) -> torch.utils.data.DataLoader:
        seed = (cfg.runtime.seed, number)
        dataset = _SourcePass(source, pipeline, seed)
        return torch.utils.data.DataLoader(
            dataset,
            batch_size=size,
            sampler=style_pass_order(cfg, len(source), number, index, count),
            drop_last=True,
            num_workers=cfg.data.workers,
            worker_init_fn=_ignore_stop_signals,
        )

    method.style_source = passes
    return method


def style_pass_order(cfg: RunConfig, size: int, number: int, index: int, count: int) -> list[int]:
    """The source images of style pass ``number`` in process ``index`` of ``count``.

    One process, or ``method.style_images: all`` (ours): every image once, in an order drawn
    anew for each pass. ``process-share`` with several processes (the reference's
    ``build_dataloader(dist=True)``, HRDA dg ``train.py:136-144``, ``builder.py:133-137``):
    torch's ``DistributedSampler`` as that loader builds it (shuffled with seed 0 and never
    given an epoch, so the same shares every pass): the permutation padded to a multiple of
    ``count`` with its first images, then every ``count``-th from ``index``."""
    if cfg.method.style_images == "all" or count == 1:
        return np.random.default_rng((cfg.runtime.seed, number)).permutation(size).tolist()
    sampler = torch.utils.data.DistributedSampler(range(size), count, index, shuffle=True)
    return list(sampler)


class _SourcePass(torch.utils.data.Dataset):
    """Source image ``i`` through the training transforms, its randomness from (seed, i)."""

    def __init__(self, folder: SegmentationFolder, pipeline, seed: tuple[int, int]) -> None:
        self.folder, self.pipeline, self.seed = folder, pipeline, seed

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, index: int) -> torch.Tensor:
        rng = np.random.default_rng([*self.seed, index])
        return self.pipeline(self.folder.load(index), rng)["image"]


def _initialised(model: torch.nn.Module, weights: dict[str, torch.Tensor] | None):
    if weights is not None:
        load_model_weights(model, weights, "--init-from")
    return model


def config_of_checkpoint(state: dict[str, Any], path: Path, overrides: list[str]) -> RunConfig:
    return validate(
        RunConfig,
        apply_overrides(on_this_machine(state["config"]), overrides),
        source=f"config saved in {path}",
    )


def on_this_machine(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved run config with this machine's ``data.cache_dir`` (``UDA_CACHE_DIR``): the
    training machine's may not exist or be writable here, and what is kept there (embedded
    domains, class statistics) is made again the same when missing."""
    return merge(saved, {"data": {"cache_dir": str(default_cache_dir())}})


RESUMABLE = (
    "runtime.iterations",
    "runtime.eval_interval",
    "runtime.checkpoint_interval",
    "runtime.keep_checkpoints",
    "runtime.log_interval",
    "runtime.debug_interval",
    "optim.lr",
    "data.workers",
    "data.cache_dir",
    "eval.",
)
"""Fields a resume may change (a prefix ending in '.' names a whole section); the rest would
make the continued run another run than the checkpoint's."""
_RUN_FOLDER = ("runtime.work_dir", "runtime.name")


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(data, dict):
        return {prefix[:-1]: data}
    out: dict[str, Any] = {}
    for key, value in data.items():
        out.update(_flat(value, f"{prefix}{key}."))
    return out


def resume_changes(saved: dict[str, Any], cfg: RunConfig, state: dict[str, Any]) -> list[str]:
    """What ``cfg`` changes in the checkpoint's config, as 'key: old -> new' lines; a change a
    resume cannot apply, or a finished run, is a one-line error."""
    before, after = _flat(saved), _flat(cfg.model_dump(mode="json"))
    changed = [
        k
        for k in sorted(before.keys() | after.keys())
        if before.get(k) != after.get(k) and k not in _RUN_FOLDER
    ]
    added = sorted(set(cfg.plugins) - set(saved.get("plugins") or {}))
    if added:
        raise UdaError(
            f"--resume: plugin {', '.join(added)} was not part of the run; a plugin cannot "
            "join a run midway: start a new run with it (--init-from the checkpoint)"
        )
    fixed = [k for k in changed if not k.startswith(RESUMABLE)]
    if fixed:
        k = fixed[0]
        raise UdaError(
            f"--resume: {k} cannot change on resume (saved {before.get(k)!r}, given "
            f"{after.get(k)!r}); resumable: {', '.join(RESUMABLE)}; start a new run "
            "with --init-from the checkpoint instead"
        )
    done = int(state["iteration"])
    if cfg.runtime.iterations < done:
        raise UdaError(
            f"--resume: the checkpoint is at iteration {done}; --iters "
            f"{cfg.runtime.iterations} is fewer"
        )
    return [f"{k}: {before.get(k)!r} -> {after.get(k)!r}" for k in changed]


def config_to_resume(
    state: dict[str, Any],
    path: Path,
    config_file: Path | None,
    flags: dict[str, Any],
    overrides: list[str],
) -> tuple[RunConfig, list[str]]:
    """The checkpoint's config with the config file, flags and ``--set`` over it, the run
    folder kept, and the changes a resume applies."""
    saved = state["config"]
    if not isinstance(saved, dict):
        raise UdaError(f"checkpoint {path} holds no run config")
    layered = on_this_machine(saved)
    if config_file is not None:
        layered = merge(layered, load_config_file(config_file))
    data = apply_overrides(merge(layered, flags), overrides)
    folder = {k: saved["runtime"].get(k) for k in ("work_dir", "name")}
    data["runtime"] = {**data.get("runtime", {}), **folder}
    cfg = validate(RunConfig, data, source=f"config saved in {path}")
    check_across_sections(cfg)
    cfg = with_plugins(cfg)
    return cfg, resume_changes(saved, cfg, state)


def train(
    cfg: RunConfig,
    resume: Path | None = None,
    console: Console | None = None,
    state: dict[str, Any] | None = None,
    init_weights: dict[str, torch.Tensor] | None = None,
) -> TrainResult:
    """Train ``cfg``; with ``resume``, continue that checkpoint (``state``: its loaded content);
    with ``init_weights``, start a new run from those weights. The main process holds the
    run folder's lock throughout; Ctrl-C and stop signals end in ``Stopped``."""
    run_dir = run_dir_for(cfg)
    if resume is not None:
        state = state if state is not None else load_checkpoint(resume)
        run_dir = resume.parent.parent
    with RunLock(run_dir) if process_state().is_main_process else nullcontext():
        if resume is None and any(run_dir.glob("checkpoints/*.pt")):
            raise UdaError(
                f"run folder {run_dir} already holds checkpoints; pass --resume latest "
                f"--work-dir {cfg.runtime.work_dir} or another --name"
            )
        result = _fit(cfg, run_dir, resume, console, state, init_weights)
    if result.report is not None and console is not None and process_state().is_main_process:
        values = result.report.as_dict()
        line = published_line(cfg.preset, cfg.method.name, list(cfg.plugins), values)
        if line is not None:
            console.print(line)
    return result


def _fit(cfg, run_dir, resume, console, state, init_weights) -> TrainResult:
    trainer = None
    try:
        trainer = build_trainer(cfg, run_dir, console, init_weights)
        return trainer.fit(state)
    except (DataError, UdaError) as exc:
        raise UdaError(f"{exc}{_kept(trainer, resume)}") from None
    except KeyboardInterrupt:
        raise Stopped(
            f"interrupted{_kept(trainer, resume)}{_resume_hint(run_dir)}", INTERRUPTED_EXIT
        ) from None
    except Stopped as exc:
        raise Stopped(f"{exc}{_resume_hint(run_dir)}", exc.exit_code) from None


def _kept(trainer, resume: Path | None) -> str:
    saved = (trainer.last_checkpoint if trainer is not None else None) or resume
    return f"; the trained weights are kept in {saved}" if saved is not None else ""


def _resume_hint(run_dir: Path) -> str:
    if not periodic_checkpoints(run_dir):
        return f"; no checkpoint was saved yet in {run_dir}, so there is nothing to resume"
    return f"; continue with `uda train --resume latest --work-dir {run_dir}`"


def load_trained_model(path: Path, overrides: list[str]) -> tuple[torch.nn.Module, RunConfig, dict]:
    state = load_checkpoint(path)
    cfg = config_of_checkpoint(state, path, overrides)
    model = build_full_model(cfg, load_plugins(cfg.plugins))
    load_model_weights(model, state["model"], f"checkpoint {path}")
    return model, cfg, state


def evaluate(model: torch.nn.Module, cfg: RunConfig, on_batch=None) -> IoUReport:
    """Score a model on the run's target val, as training does at its end."""
    try:
        evaluator = make_evaluator(cfg)
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return evaluator.run(model.to(device), device, on_batch=on_batch)
    except DataError as exc:
        raise UdaError(str(exc)) from None
