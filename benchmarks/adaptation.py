"""Target mIoU of every method, with and without the dispersion plugin, on the embedded domains.

    python benchmarks/adaptation.py [--seeds 0 1 2] [--work-dir benchmarks/runs] [--set k=v ...]
        [--runs mic mic+dispersion ...]

Source-only, DAFormer, HRDA and MIC, and DAFormer, HRDA and MIC with ``--plugin dispersion``,
each trained with ``uda train`` at the ``quick`` preset (same budget) for each seed. A run
whose final evaluation is already in its folder is skipped, and an unfinished one resumes,
so the benchmark can be completed over several invocations (it takes hours on 2 CPU cores).
The table (mean and spread over the finished seeds, per-class IoU, and for the plugin runs the
share of target pixels where the auxiliary network agreed with the pseudo-label, averaged
over the logged iterations and seeds) is printed as Markdown and written to
``<work-dir>/adaptation.json``. ``--runs`` limits training and the table to some runs, e.g. an
ablation in its own work dir: ``--runs mic+dispersion --work-dir benchmarks/runs-no-hook --set
plugins.dispersion.weight_hook=false``.

``--behaviour published`` trains every run with the reference's behaviour wherever the quick
preset keeps ours (``published_sets``): the self-training options of the published presets
(losses over all pixels, one pseudo-label weight, ClassMix and augmentation gate per batch,
the teacher's own BatchNorm statistics, mic_lambda on the fused loss), HRDA's published
fusion and crops, weight decay on the whole decoder, and for the plugin runs the published
head's classifier (first two branches, final segmentation from the head, N(0, 0.01)
initialisation) and losses (initial segmentation over all pixels, BerHu's threshold not
detached, the head's losses from the fused output) with the auxiliary network's
training-mode BatchNorm. Sizes and architectures stay the quick preset's (a CPU run).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

RUNS = [
    ("source-only", None),
    ("daformer", None),
    ("hrda", None),
    ("mic", None),
    ("daformer", "dispersion"),
    ("hrda", "dispersion"),
    ("mic", "dispersion"),
]
TRAINING_ORDER = [RUNS[i] for i in (0, 1, 3, 6, 2, 4, 5)]
"""MIC with and without the plugin early, so that a partial benchmark answers the main question."""
UDA = Path(sys.executable).with_name("uda")


def run_label(method: str, plugin: str | None) -> str:
    return f"{method}{'+' + plugin if plugin else ''}"


def run_name(method: str, plugin: str | None, seed: int) -> str:
    return f"{run_label(method, plugin)}-s{seed}"


def chosen(runs: list[str] | None, order: list = RUNS) -> list[tuple[str, str | None]]:
    """The (method, plugin) pairs of ``order`` whose label is in ``runs`` (None: all)."""
    return [(m, p) for m, p in order if runs is None or run_label(m, p) in runs]


def final_eval(run_dir: Path) -> dict | None:
    """The last evaluation of a finished run (None while it is unfinished)."""
    metrics, config = run_dir / "metrics.jsonl", run_dir / "config.json"
    if not metrics.exists() or not config.exists():
        return None
    total = json.loads(config.read_text())["runtime"]["iterations"]
    for line in reversed(metrics.read_text().splitlines()):
        record = json.loads(line)
        if record.get("split") == "val" and record["iteration"] == total:
            return record
    return None


def published_sets(plugin: str | None) -> list[str]:
    """``--set`` overrides giving a quick run the published presets' behaviour (see above)."""
    from uda_methods.presets import PUBLISHED_HRDA, PUBLISHED_OPTIM, PUBLISHED_SELF_TRAINING

    sets = [f"method.{k}={v}" for k, v in {**PUBLISHED_SELF_TRAINING, **PUBLISHED_HRDA}.items()]
    sets.append(f"optim.no_decay_scope={PUBLISHED_OPTIM.no_decay_scope}")
    if plugin == "dispersion":
        head = {
            "classifier_branches": "first_two",
            "final_segmentation": "head",
            "head_init": "normal",
            "seg_init_mean": "all",
            "berhu_detach_threshold": "false",
            "auxiliary.batchnorm": "batch",
        }
        sets += [f"plugins.dispersion.{k}={v}" for k, v in head.items()]
    return sets


def train(method: str, plugin: str | None, seed: int, work_dir: Path, sets: list[str]) -> None:
    name = run_name(method, plugin, seed)
    command = [str(UDA), "train", "--method", method, "--seed", str(seed)]
    command += ["--work-dir", str(work_dir), "--name", name]
    command += ["--plugin", plugin] if plugin else []
    for item in sets:
        command += ["--set", item]
    if any((work_dir / name / "checkpoints").glob("iter_*.pt")):
        command += ["--resume", str(max((work_dir / name / "checkpoints").glob("iter_*.pt")))]
    start = time.perf_counter()
    log = work_dir / f"{name}.log"
    with log.open("a") as out:
        subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, check=True)
    print(f"{name}: {time.perf_counter() - start:.0f} s", flush=True)


def mean_agreement(run_dir: Path) -> float | None:
    """The dispersion plugin's agreement rate (auxiliary label = pseudo-label), averaged over
    the run's logged iterations; None for runs without the plugin."""
    values = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "dispersion.agreement" in record:
            values.append(record["dispersion.agreement"])
    return statistics.fmean(values) if values else None


def summarize(work_dir: Path, seeds: list[int], runs: list[str] | None = None) -> dict:
    """Finished seeds of each run in ``runs`` (default: all), in the order of ``RUNS``."""
    rows = {}
    for method, plugin in chosen(runs):
        evals = {s: final_eval(work_dir / run_name(method, plugin, s)) for s in seeds}
        done = {s: e for s, e in evals.items() if e is not None}
        if not done:
            continue
        mious = [100 * e["mIoU"] for e in done.values()]
        classes = next(iter(done.values()))["IoU"]
        agreements = [mean_agreement(work_dir / run_name(method, plugin, s)) for s in done]
        rows[run_label(method, plugin)] = {
            "seeds": sorted(done),
            "mIoU": mious,
            "mean": statistics.fmean(mious),
            "std": statistics.stdev(mious) if len(mious) > 1 else 0.0,
            "agreement": None if None in agreements else 100 * statistics.fmean(agreements),
            "IoU": {
                c: statistics.fmean(100 * (e["IoU"][c] or 0) for e in done.values())
                for c in classes
            },
        }
    return rows


def markdown(rows: dict) -> str:
    lines = [
        "| run | seeds | target mIoU (mean ± std) | per seed | auxiliary agreement |",
        "|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        per_seed = ", ".join(f"{m:.2f}" for m in row["mIoU"])
        agreement = "-" if row.get("agreement") is None else f"{row['agreement']:.0f} %"
        lines.append(
            f"| {name} | {len(row['seeds'])} | {row['mean']:.2f} ± {row['std']:.2f} | {per_seed} "
            f"| {agreement} |"
        )
    if rows:
        classes = list(next(iter(rows.values()))["IoU"])
        lines += ["", "| run | " + " | ".join(classes) + " |", "|---" * (len(classes) + 1) + "|"]
        for name, row in rows.items():
            cells = ("-" if math.isnan(v) else f"{v:.1f}" for v in row["IoU"].values())
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--work-dir", type=Path, default=Path("benchmarks/runs"))
    parser.add_argument("--set", dest="sets", action="append", default=[])
    parser.add_argument("--summary-only", action="store_true", help="Train nothing.")
    parser.add_argument(
        "--behaviour",
        choices=["ours", "published"],
        default="ours",
        help="published: the reference's behaviour where the quick preset keeps ours.",
    )
    parser.add_argument(
        "--runs",
        nargs="+",
        choices=[run_label(m, p) for m, p in RUNS],
        help="Train and report only these runs (default: all seven).",
    )
    args = parser.parse_args()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    if not args.summary_only:
        for seed in args.seeds:
            for method, plugin in chosen(args.runs, TRAINING_ORDER):
                if final_eval(args.work_dir / run_name(method, plugin, seed)) is None:
                    extra = published_sets(plugin) if args.behaviour == "published" else []
                    train(method, plugin, seed, args.work_dir, extra + args.sets)
    rows = summarize(args.work_dir, args.seeds, args.runs)
    (args.work_dir / "adaptation.json").write_text(json.dumps(rows, indent=2))
    print(markdown(rows))


if __name__ == "__main__":
    main()
