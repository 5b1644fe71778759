"""Seconds per training step and peak memory of DAFormer, HRDA and MIC, each without and with
the dispersion plugin, in fp32 and bf16, measured side by side in one run.

    python benchmarks/train_step.py --profile quick           # the quick preset's sizes (CPU)
    python benchmarks/train_step.py --profile full            # MiT-B5, published crops (GPU)
    python benchmarks/train_step.py --profile full --out results/ --profile-trace traces/

A step is the engine's: the method's forward and backward passes (teacher pseudo-labels,
ClassMix, masking, plugin targets, losses and weight hook included), the AdamW step and the
EMA update, on the student prepared by Accelerate in the given precision. Batches are random
(blocky label maps, depth ramps), so no dataset is needed. The dispersion plugin runs with its
pixel-weight hook on: its auxiliary network is a random-weight checkpoint written to a
temporary folder (its cost does not depend on its weights).

``quick`` takes the ``quick`` preset (ResNet-18 + light decoder, 2 + 2 images of 256x128,
the plugin's ResNet-18 auxiliary network at 256x128); ``full`` the published presets
(``daformer``: MiT-B5 at 512x512 crops; ``hrda`` and ``mic``: MiT-B5 at 1024x1024 crops with
512x512 detail crops; 2 + 2 images; the plugin's ResNet-50 auxiliary network at 512x512) and
needs a CUDA GPU. Each configuration runs in a fresh process (Accelerate fixes the precision
per process, and one configuration's memory peak must not hide another's), first
``--warmup`` steps, then ``--steps`` timed steps, ``--rounds`` times in turn; the table gives
the median of all timed steps (the JSON also the minimum and every step). The plugin
overhead is the ratio of the medians with and without the plugin, for the same method and
precision, measured next to each other. Peak memory is ``torch.cuda.max_memory_allocated``
over the timed steps on a GPU, and the process's peak resident set (``getrusage``) on the CPU.

``--profile-trace DIR`` profiles one more step of each configuration with torch.profiler:
``DIR/<config>.json`` is a Chrome trace, ``DIR/<config>.txt`` the operators taking the most
time and the time of each phase of the step (``phase/...`` rows: source step, pseudo-labels,
mixed step, masked step, plugin hooks, optimiser, EMA).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

METHODS = ("daformer", "hrda", "mic")
PRESETS = {
    "quick": {"daformer": "quick", "hrda": "quick", "mic": "quick"},
    "full": {"daformer": "daformer", "hrda": "hrda", "mic": "mic"},
}
PHASES = (
    "_source_step",
    "_pseudo_label",
    "_mixed_step",
    "_masked_step",
    "source_targets",
    "target_targets",
    "adjust_weights",
    "_feature_distance",
    "losses",
)


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def random_batch(batch_size: int, width: int, height: int, seed: int = 0):
    """A UDA batch shaped like the loaders': normalised images, label maps of 16 px blocks
    with 5% ignored pixels, depth ramps with noise, and target validity maps."""
    from uda_core.method import UDABatch

    g = torch.Generator().manual_seed(seed)

    def labels() -> torch.Tensor:
        blocks = torch.randint(0, 19, (batch_size, -(-height // 16), -(-width // 16)), generator=g)
        label = blocks.repeat_interleave(16, 1).repeat_interleave(16, 2)[:, :height, :width]
        return label.masked_fill(torch.rand(label.shape, generator=g) < 0.05, 255)

    def depth() -> torch.Tensor:
        ramp = torch.linspace(255, 0, height).view(1, height, 1).expand(batch_size, height, width)
        return (ramp + 5 * torch.randn(batch_size, height, width, generator=g)).clamp(0, 255)

    def image() -> torch.Tensor:
        return torch.randn(batch_size, 3, height, width, generator=g)

    source = {"image": image(), "label": labels(), "depth": depth()}
    target = {"image": image(), "depth": depth(), "valid": torch.ones(batch_size, height, width)}
    return UDABatch(source, target)


def _profile_phases(method, plugins, stack: list[str] | None = None) -> None:
    """Label each phase of the step (method parts and plugin hooks) in profiler traces; with
    ``stack``, also keep the names of the phases being run on it (innermost last)."""
    from torch.profiler import record_function

    def labelled(name, fn):
        def run(*args, **kwargs):
            if stack is not None:
                stack.append(name)
            try:
                with record_function(f"phase/{name}"):
                    return fn(*args, **kwargs)
            finally:
                if stack is not None:
                    stack.pop()

        return run

    for owner in (method, *plugins.values()):
        for name in PHASES:
            if hasattr(owner, name):
                setattr(owner, name, labelled(name.strip("_"), getattr(owner, name)))


def _narrow_mit(divisor: int) -> None:
    """Build MiT encoders with every stage's width divided by ``divisor`` (same depths and
    heads): a host-bound proxy whose operator counts equal the full model's."""
    import timm

    create = timm.create_model

    def narrow(name, *args, **kwargs):
        if name.startswith("pvt_v2_"):
            kwargs.setdefault("embed_dims", tuple(w // divisor for w in (64, 128, 320, 512)))
        return create(name, *args, **kwargs)

    timm.create_model = narrow


@dataclass
class Bench:
    """One configuration, built: ``step(iteration)`` runs one training step as the engine does."""

    cfg: object
    method: object
    plugins: dict
    step: Callable[[int], None]
    cuda: bool

    def synchronize(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()


def build(spec: dict) -> Bench:
    """The student, plugins, optimiser, method and a random batch of ``spec``'s configuration.

    ``spec["width_divisor"]`` (optional) narrows MiT encoders (see ``_narrow_mit``)."""
    from accelerate import Accelerator
    from torch.profiler import record_function

    from uda_core.compile import compile_in_place
    from uda_core.ema import average_buffers
    from uda_core.engine import LossLog
    from uda_core.optim import build_optimizer
    from uda_core.plugin import PrepareContext, load_plugins
    from uda_core.precision import one_cast_per_step
    from uda_methods.registry import method_class
    from uda_methods.run import build_full_model, resolve_config

    if spec.get("width_divisor", 1) > 1:
        _narrow_mit(spec["width_divisor"])
    cfg = resolve_config(spec["preset"], None, spec["flags"], spec["overrides"])
    cuda = torch.cuda.is_available()
    accelerator = Accelerator(cpu=not cuda, mixed_precision=spec["precision"])
    device = accelerator.device
    torch.manual_seed(cfg.runtime.seed)
    plugins = load_plugins(cfg.plugins)
    model = build_full_model(cfg, plugins)
    if cfg.runtime.channels_last:
        model = model.to(memory_format=torch.channels_last)

    def no_stream(*_):
        raise RuntimeError("the benchmark gives plugins a checkpoint; there is no data")

    context = PrepareContext(
        source_batches=no_stream,
        val_batches=no_stream,
        cache_dir=Path(tempfile.gettempdir()),
        data_key="",
        device=device,
        log=print,
    )
    for plugin in plugins.values():
        plugin.prepare(context)
    optimizer = build_optimizer(model, cfg.optim, device)
    model, optimizer = accelerator.prepare(model, optimizer)
    method = method_class(cfg.method.name)(model, accelerator, cfg.method, plugins)
    method.backward_once = cfg.runtime.model_copy(
        update={"precision": spec["precision"]}
    ).backward_once
    if cfg.runtime.compile:
        for module in [accelerator.unwrap_model(model), *method.frozen_modules()]:
            compile_in_place(module, print)
    model.train()
    width, height = cfg.data.crop
    batch = random_batch(cfg.data.batch_size, width, height, cfg.runtime.seed).to(device)
    losses = LossLog()

    def step(iteration: int) -> None:
        with one_cast_per_step():
            logs = method.train_step(batch, iteration)
            with record_function("phase/backward"):
                method.finish_backward()
        with record_function("phase/optimizer"):
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        with record_function("phase/ema"):
            average_buffers(accelerator.unwrap_model(model))
            method.after_optimizer_step(iteration)
        with record_function("phase/logging"):
            losses.add(logs)
            if (iteration + 1) % cfg.runtime.log_interval == 0:
                losses.means()
                losses.clear()

    return Bench(cfg, method, plugins, step, cuda)


def measure(spec: dict) -> dict:
    """Build one configuration, then time ``spec["steps"]`` steps after ``spec["warmup"]``."""
    bench = build(spec)
    cfg, cuda, step, synchronize = bench.cfg, bench.cuda, bench.step, bench.synchronize
    for iteration in range(spec["warmup"]):
        step(iteration)
    synchronize()
    before = _rss_mib()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for iteration in range(spec["warmup"], spec["warmup"] + spec["steps"]):
        start = time.perf_counter()
        step(iteration)
        synchronize()
        times.append(time.perf_counter() - start)
    if cuda:
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if spec["trace_dir"]:
        _trace(spec, step, bench.method, bench.plugins, cuda)
    return {
        "name": spec["name"],
        "method": spec["method"],
        "plugin": spec["plugin"],
        "precision": spec["precision"],
        "sec_per_iter": statistics.median(times),
        "sec_min": min(times),
        "sec_all": [round(t, 4) for t in times],
        "peak_mib": round(peak, 1),
        "resident_before_mib": None if cuda else round(before, 1),
        "crop": list(cfg.data.crop),
        "batch_size": cfg.data.batch_size,
        "model": f"{cfg.model.encoder} + {cfg.model.decoder}",
    }


def _trace(spec: dict, step, method, plugins, cuda: bool) -> None:
    from torch.profiler import ProfilerActivity, profile, record_function

    out = Path(spec["trace_dir"])
    out.mkdir(parents=True, exist_ok=True)
    _profile_phases(method, plugins)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        with record_function("phase/step"):
            step(spec["warmup"] + spec["steps"])
        if cuda:
            torch.cuda.synchronize()
    prof.export_chrome_trace(str(out / f"{spec['name']}.json"))
    events = prof.key_averages()
    # torch >= 2.4 names GPU time "device"; older releases only "cuda" (removed since)
    gpu = "device" if hasattr(events[0], "device_time_total") else "cuda"
    sort = f"self_{gpu}_time_total" if cuda else "self_cpu_time_total"
    phases = [e for e in events if e.key.startswith("phase/")]
    total = f"{gpu}_time_total" if cuda else "cpu_time_total"
    lines = [f"{e.key:<28} {getattr(e, total) / 1e3:10.1f} ms" for e in phases]
    table = events.table(sort_by=sort, row_limit=25)
    (out / f"{spec['name']}.txt").write_text("\n".join(lines) + "\n\n" + table + "\n")


def write_aux_checkpoint(folder: Path, preset: str) -> Path:
    """A random-weight auxiliary network for the dispersion plugin of ``preset``, in the
    format of ``uda_dispersion.pretrain`` (the hook's cost does not depend on its weights)."""
    from uda_dispersion.auxiliary import build_auxiliary
    from uda_dispersion.plugin import DispersionPlugin
    from uda_dispersion.pretrain import CHECKPOINT_FORMAT
    from uda_methods.run import resolve_config

    cfg = resolve_config(preset, None, {"plugins": {"dispersion": {}}}, [])
    settings = DispersionPlugin(cfg.plugins["dispersion"]).pretrain_settings()
    torch.manual_seed(0)
    net = build_auxiliary(settings.architecture, settings.num_classes, settings.backbone)
    path = folder / f"auxiliary-{preset}.pt"
    state = {
        "format": CHECKPOINT_FORMAT,
        "model": net.state_dict(),
        "settings": settings.to_dict(),
        "val_miou": None,
        "final_loss": float("nan"),
    }
    torch.save(state, path)
    return path


def specs(args, aux: dict[str, Path]) -> list[dict]:
    """Configurations in measuring order: for each method and precision, without then with
    the plugin, so that each overhead ratio compares neighbouring measurements."""
    out = []
    for method in args.methods:
        preset = PRESETS[args.profile][method]
        for precision in args.precisions:
            for plugin in (False, True):
                flags = {"method": {"name": method}}
                # plugin settings (``--set plugins.dispersion...``) apply to plugin runs only
                overrides = [o for o in args.overrides if plugin or not o.startswith("plugins.")]
                if plugin:
                    flags["plugins"] = {"dispersion": {}}
                    overrides.append(f"plugins.dispersion.auxiliary.checkpoint={aux[preset]}")
                name = f"{method}{'+dispersion' if plugin else ''}-{precision}"
                out.append(
                    {
                        "name": name,
                        "method": method,
                        "plugin": plugin,
                        "precision": precision,
                        "preset": preset,
                        "flags": flags,
                        "overrides": overrides,
                        "warmup": args.warmup,
                        "steps": args.steps,
                        "trace_dir": args.profile_trace,
                    }
                )
    return out


def run_in_fresh_process(spec: dict, script: str = __file__) -> dict:
    """``script --in-process SPEC`` in a new interpreter; its last stdout line is the record."""
    command = [sys.executable, script, "--in-process", json.dumps(spec, default=str)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{spec['name']} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def markdown(records: list[dict]) -> str:
    """Median and fastest step of each method and precision, without and with the plugin, the
    overhead ratios of both, and the peaks. (On a shared machine, load only adds time: the
    fastest step is then the better estimate.)"""
    precision_names = {"no": "fp32", "bf16": "bf16", "fp16": "fp16"}
    rows = [
        "| method | precision | s/iter median (fastest) | + dispersion | plugin overhead | "
        "peak MiB | + dispersion |",
        "|---|---|---|---|---|---|---|",
    ]
    by_key = {(r["method"], r["precision"], r["plugin"]): r for r in records}
    for r in records:
        p = by_key.get((r["method"], r["precision"], True))
        if r["plugin"] or p is None:  # a pair's first half is reported with its second
            continue
        ratio = p["sec_per_iter"] / r["sec_per_iter"]
        fastest = p["sec_min"] / r["sec_min"]
        rows.append(
            f"| {r['method']} | {precision_names[r['precision']]} | "
            f"{r['sec_per_iter']:.2f} ({r['sec_min']:.2f}) | "
            f"{p['sec_per_iter']:.2f} ({p['sec_min']:.2f}) | {ratio:.2f}x ({fastest:.2f}x) | "
            f"{r['peak_mib']:.0f} | {p['peak_mib']:.0f} |"
        )
    return "\n".join(rows)


def machine() -> dict:
    if torch.cuda.is_available():
        device = torch.cuda.get_device_name()
    else:
        model = platform.processor() or platform.machine()
        if Path("/proc/cpuinfo").is_file():
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
        device = f"CPU ({model}, {os.cpu_count()} cores)"
    return {
        "device": device,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_average_1min": os.getloadavg()[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=sorted(PRESETS), default="quick")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument(
        "--precisions", nargs="+", choices=("no", "bf16", "fp16"), default=["no", "bf16"]
    )
    parser.add_argument("--warmup", type=int, default=None, help="default: 2")
    parser.add_argument("--steps", type=int, default=None, help="default: quick 5, full 4")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="Measure every configuration this many times, in turn (on a shared machine, load "
        "bursts then hit all alike); the median runs over all timed steps.",
    )
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", type=Path, help="Folder for train_step.json and .md.")
    parser.add_argument("--profile-trace", type=Path, help="Folder for profiler traces.")
    parser.add_argument("--in-process", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.in_process:
        print(json.dumps(measure(json.loads(args.in_process))))
        return
    cuda = torch.cuda.is_available()
    if args.profile == "full" and not cuda:
        print("--profile full needs a CUDA GPU (MiT-B5 at 1024x1024 crops); skipped")
        return
    if "fp16" in args.precisions and not cuda:
        raise SystemExit("--precisions fp16 needs a CUDA GPU")
    quick = args.profile == "quick"
    args.warmup = args.warmup if args.warmup is not None else 2
    args.steps = args.steps if args.steps is not None else (5 if quick else 4)
    started = machine()
    measured: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        presets = {PRESETS[args.profile][m] for m in args.methods}
        aux = {p: write_aux_checkpoint(Path(tmp), p) for p in presets}
        for round_ in range(args.rounds):
            for spec in specs(args, aux):
                spec["trace_dir"] = spec["trace_dir"] if round_ == 0 else None
                record = run_in_fresh_process(spec)
                print(f"{record['name']}: {record['sec_all']} s", file=sys.stderr)
                earlier = measured.get(record["name"])
                measured[record["name"]] = record if earlier is None else merge(earlier, record)
                if args.out is not None:  # after each configuration: a time limit keeps the rest
                    write_results(args, started, list(measured.values()))
    records = list(measured.values())
    print(markdown(records))
    print(json.dumps(results(args, started, records), indent=2))


def merge(earlier: dict, record: dict) -> dict:
    """One configuration's record over several rounds: all timed steps, the largest peak."""
    times = earlier["sec_all"] + record["sec_all"]
    return record | {
        "sec_all": times,
        "sec_per_iter": statistics.median(times),
        "sec_min": min(times),
        "peak_mib": max(earlier["peak_mib"], record["peak_mib"]),
    }


def results(args, started: dict, records: list[dict]) -> dict:
    return {
        "profile": args.profile,
        "machine": started,
        "load_average_1min_at_end": os.getloadavg()[0],
        "warmup": args.warmup,
        "steps": args.steps,
        "rounds": args.rounds,
        "overrides": args.overrides,
        "records": records,
    }


def write_results(args, started: dict, records: list[dict]) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(results(args, started, records), indent=2)
    (args.out / "train_step.json").write_text(text + "\n")
    (args.out / "train_step.md").write_text(markdown(records) + "\n")


if __name__ == "__main__":
    main()
