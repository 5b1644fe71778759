"""Host work of one training step, counted: operator dispatches, aten calls, host syncs,
copies and casts, and module calls, by phase, for DAFormer, HRDA and MIC without and with the
dispersion plugin, in fp32 and bf16.

    python benchmarks/host_ops.py                      # MiT-B5 depth, widths / 8, 64 px crops
    python benchmarks/host_ops.py --out results/ --methods mic --precisions bf16

On a GPU a step whose kernels are short is bound by the host: each operator dispatch costs
some 15-20 us of Python and C++ whatever the tensor sizes. These counts do not depend on the
resolution or the widths, so the published models are counted on the CPU at a reduced size:
the published presets (``daformer``, ``hrda``, ``mic``) with MiT-B5's depths and heads but
every stage's width divided by ``--width-divisor``, the decoder (and HRDA's scale attention)
at 32 channels, and crops, detail crops, slide strides, mask blocks and ignored rows scaled
to ``--crop`` px, so that the teacher runs as many windows as at the published sizes. The
step is ``train_step.build``'s (the engine's: method step, AdamW, EMA, loss logging), run
``--warmup`` times (their seconds are ``warmup_seconds``: with ``--set runtime.compile=true``
the compile time, since the first steps compile), then once under torch.profiler.

Per phase (the innermost one a call runs in; the phases add up to the step):

- ``dispatches``: top-level aten operators, those no other aten operator called (autograd's
  backward nodes included): what the host pays for;
- ``aten``: every aten call, nested ones included;
- ``item`` / ``scalar_reads``: ``aten::item`` and ``aten::_local_scalar_dense`` calls, the
  reads of a tensor's value on the host (a device synchronisation on a GPU);
- ``copy_`` / ``to_copy``: ``aten::copy_`` and ``aten::_to_copy`` (casts, autocast's weight
  casts among them);
- ``modules``: ``nn.Module`` calls.

Phases: ``source_step``, ``pseudo_label``, ``mixed_step``, ``masked_step``,
``feature_distance`` (the frozen ImageNet encoder and the distance), the plugin hooks
(``source_targets``, ``target_targets``, ``adjust_weights``, ``losses``), ``optimizer``,
``ema``, ``logging``, and ``other`` (the steps' own glue outside these).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).parent))
import train_step

COUNTS = ("dispatches", "aten", "item", "scalar_reads", "copy_", "to_copy", "modules")
SCALED = {
    # DAFormer's 512 px crops at 64 px: / 8
    "daformer": [
        "method.pseudo_ignore_top=2",
        "method.pseudo_ignore_bottom=15",
    ],
    # HRDA's and MIC's 1024 px crops at 64 px: / 16
    "hrda": [
        "method.hrda_detail_crop=[32,32]",
        "method.hrda_slide_stride=[16,16]",
        "method.hrda_attention_channels=32",
    ],
}
SCALED["mic"] = [*SCALED["hrda"], "method.mic_mask_block=4"]


def overrides(method: str, crop: int) -> list[str]:
    """``--set`` values that shrink the published preset of ``method`` to ``crop`` px."""
    common = [
        f"data.crop=[{crop},{crop}]",
        "model.channels=32",
        f"plugins.dispersion.auxiliary.input_size=[{crop},{crop}]",
    ]
    if crop != 64:
        return common  # the scaled sizes below are for 64 px crops
    return common + SCALED[method]


def phase_of(event, cache: dict) -> str:
    """The innermost ``phase/...`` range an event runs in (``other`` outside them)."""
    chain = []
    node = event.cpu_parent
    name = "other"
    while node is not None:
        if node.id in cache:
            name = cache[node.id]
            break
        chain.append(node)
        if node.name.startswith("phase/") and node.name != "phase/step":
            name = node.name.removeprefix("phase/")
            break
        node = node.cpu_parent
    for visited in chain:
        cache[visited.id] = name
    return name


def count_events(events, names: dict[str, Counter] | None = None) -> dict[str, Counter]:
    """Per phase, the counts of ``COUNTS`` (``modules`` aside) in profiler ``events``; and,
    into ``names`` where given, per phase the count of each top-level operator's name."""
    counts: dict[str, Counter] = {}
    cache: dict = {}
    for event in events:
        if not event.name.startswith("aten::"):
            continue
        phase = counts.setdefault(phase_of(event, cache), Counter())
        phase["aten"] += 1
        parent = event.cpu_parent
        while parent is not None and not parent.name.startswith("aten::"):
            parent = parent.cpu_parent
        phase["dispatches"] += parent is None
        if names is not None and parent is None:
            names.setdefault(phase_of(event, cache), Counter())[event.name] += 1
        phase["item"] += event.name == "aten::item"
        phase["scalar_reads"] += event.name == "aten::_local_scalar_dense"
        phase["copy_"] += event.name == "aten::copy_"
        phase["to_copy"] += event.name == "aten::_to_copy"
    return counts


def measure(spec: dict) -> dict:
    """Build one configuration, run its warm-up steps, then count one step."""
    from torch.profiler import ProfilerActivity, profile, record_function

    bench = train_step.build(spec)
    started = time.perf_counter()
    for iteration in range(spec["warmup"]):
        bench.step(iteration)
    bench.synchronize()
    warmup_seconds = time.perf_counter() - started
    stack: list[str] = []
    train_step._profile_phases(bench.method, bench.plugins, stack)
    modules: Counter = Counter()

    def count_module(module, args) -> None:
        modules[stack[-1] if stack else "other"] += 1

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if bench.cuda else [])
    handle = torch.nn.modules.module.register_module_forward_pre_hook(count_module)
    try:
        with profile(activities=activities) as prof:
            with record_function("phase/step"):
                bench.step(spec["warmup"])
            bench.synchronize()
    finally:
        handle.remove()
    names: dict[str, Counter] = {}
    counts = count_events(prof.events(), names)
    for phase, n in modules.items():
        counts.setdefault(phase, Counter())["modules"] = n
    phases = {p: {k: c[k] for k in COUNTS} for p, c in sorted(counts.items())}
    total = {k: sum(p[k] for p in phases.values()) for k in COUNTS}
    return {
        "name": spec["name"],
        "method": spec["method"],
        "plugin": spec["plugin"],
        "precision": spec["precision"],
        "total": total,
        "phases": phases,
        "top_dispatches": {p: dict(c.most_common(spec.get("top", 0))) for p, c in names.items()},
        "warmup_seconds": round(warmup_seconds, 1),
        "crop": list(bench.cfg.data.crop),
        "model": f"{bench.cfg.model.encoder} + {bench.cfg.model.decoder}",
    }


def markdown(records: list[dict]) -> str:
    """One row per configuration: the step's totals, then the dispatches of each phase."""
    precision_names = {"no": "fp32", "bf16": "bf16", "fp16": "fp16"}
    phases = sorted({p for r in records for p in r["phases"]})
    head = ["configuration", "precision", *COUNTS, *(f"{p} disp." for p in phases)]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in records:
        name = r["method"] + (" + dispersion" if r["plugin"] else "")
        cells = [name, precision_names[r["precision"]]]
        cells += [f"{r['total'][k]:,}" for k in COUNTS]
        cells += [f"{r['phases'].get(p, {}).get('dispatches', 0):,}" for p in phases]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--methods", nargs="+", choices=train_step.METHODS, default=list(train_step.METHODS)
    )
    parser.add_argument("--precisions", nargs="+", choices=("no", "bf16"), default=["no", "bf16"])
    parser.add_argument(
        "--plugin", choices=("both", "off", "on"), default="both", help="The dispersion plugin."
    )
    parser.add_argument("--profile", choices=sorted(train_step.PRESETS), default="full")
    parser.add_argument("--crop", type=int, default=64, help="Crop side in px (full profile).")
    parser.add_argument("--width-divisor", type=int, default=8, help="MiT widths / this.")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument(
        "--top", type=int, default=12, help="Per phase, this many most frequent top-level ops."
    )
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", type=Path, help="Folder for host_ops.json and host_ops.md.")
    parser.add_argument("--in-process", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.in_process:
        print(json.dumps(measure(json.loads(args.in_process))))
        return
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        presets = {train_step.PRESETS[args.profile][m] for m in args.methods}
        aux = {p: train_step.write_aux_checkpoint(Path(tmp), p) for p in presets}
        for method in args.methods:
            scaled = overrides(method, args.crop) if args.profile == "full" else []
            options = SimpleNamespace(
                methods=[method],
                profile=args.profile,
                precisions=args.precisions,
                overrides=scaled + args.overrides,
                warmup=args.warmup,
                steps=1,
                profile_trace=None,
            )
            for spec in train_step.specs(options, aux):
                if args.plugin != "both" and spec["plugin"] != (args.plugin == "on"):
                    continue
                spec["width_divisor"] = args.width_divisor
                spec["top"] = args.top
                record = train_step.run_in_fresh_process(spec, __file__)
                warmup = f"warm-up {record['warmup_seconds']} s"
                print(f"{record['name']}: {record['total']}, {warmup}", file=sys.stderr)
                records.append(record)
    result = {
        "machine": train_step.machine(),
        "profile": args.profile,
        "crop": args.crop,
        "width_divisor": args.width_divisor,
        "overrides": args.overrides,
        "records": records,
    }
    table = markdown(records)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "host_ops.json").write_text(json.dumps(result, indent=2) + "\n")
        (args.out / "host_ops.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
