"""Peak memory of one training step of a method at a preset, in a fresh process.

    python benchmarks/train_memory.py [--preset quick] [--method mic] [--set key=value ...]

The step is the engine's: the method's forward and backward passes, then an AdamW step (whose
first step allocates its state). On the CPU the number is the growth of the process's peak
resident set (``getrusage`` max RSS) over its resident set just before the step, with the
model, the EMA teacher and the batch already in memory; on CUDA it is
``torch.cuda.max_memory_allocated`` over the step. Each measurement runs in a fresh
subprocess so that earlier peaks (data generation, imports) do not hide the step's.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys

import torch


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def measure(preset_name: str, method: str, overrides: list[str]) -> dict:
    """Build the run, load one batch, then time and measure one step (in this process)."""
    from accelerate import Accelerator

    from uda_core.optim import build_optimizer
    from uda_core.plugin import load_plugins
    from uda_methods.registry import method_class
    from uda_methods.run import build_full_model, open_data, resolve_config, train_batches

    cfg = resolve_config(preset_name, None, {"method": {"name": method}}, overrides)
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"workers": 0})})
    torch.manual_seed(cfg.runtime.seed)
    cuda = torch.cuda.is_available()
    accelerator = Accelerator(cpu=not cuda)
    plugins = load_plugins(cfg.plugins)
    model = build_full_model(cfg, plugins).to(accelerator.device).train()
    optimizer = build_optimizer(model, cfg.optim)
    step = method_class(cfg.method.name)(model, accelerator, cfg.method, plugins)
    step.backward_once = cfg.runtime.backward_once
    batch = next(train_batches(cfg, open_data(cfg))(0, 0, 1)).to(accelerator.device)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated() / 2**20
    else:
        before = _rss_mib()
    step.train_step(batch, 0)
    step.finish_backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    step.after_optimizer_step(0)
    if cuda:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
        device = torch.cuda.get_device_name()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        device = f"CPU ({platform.processor() or platform.machine()})"
    return {
        "preset": preset_name,
        "method": method,
        "device": device,
        "before_step_mib": round(before, 1),
        "peak_mib": round(peak, 1),
        "step_mib": round(peak - before, 1),
        "crop": list(cfg.data.crop),
        "batch_size": cfg.data.batch_size,
        "model": f"{cfg.model.encoder} + {cfg.model.decoder}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--method", default="mic")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.in_process:
        print(json.dumps(measure(args.preset, args.method, args.overrides)))
        return
    command = [sys.executable, __file__, "--in-process", "--preset", args.preset]
    command += ["--method", args.method] + [f"--set={o}" for o in args.overrides]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    record = json.loads(result.stdout.strip().splitlines()[-1])
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
