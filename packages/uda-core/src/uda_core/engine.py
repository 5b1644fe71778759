"""The iteration-based training loop on Accelerate.

It reads top to bottom: build, maybe resume, then for each iteration let the method do its
forward/backward, step the optimiser and schedule, log, evaluate and checkpoint.
"""

from __future__ import annotations

import importlib.util
import json
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import nn

from uda_core.checkpoint import (
    atomic_write_bytes,
    prune_checkpoints,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from uda_core.config import OptimConfig, RuntimeConfig, ScheduleConfig
from uda_core.debug import save_panels
from uda_core.errors import UdaError
from uda_core.evaluation import Evaluator, IoUReport
from uda_core.logging import MetricsLog, TrainProgress, console
from uda_core.method import Method, UDABatch
from uda_core.optim import build_optimizer, build_scheduler

TrainBatches = Callable[[int, int, int], Iterable[UDABatch]]
"""(start iteration, process rank, process count) -> one batch per iteration from ``start``."""


@dataclass
class TrainResult:
    run_dir: Path
    iterations: int
    final_checkpoint: Path
    report: IoUReport | None


def write_json(path: Path, data: Any) -> None:
    text = json.dumps(data, indent=2, default=str).encode()
    atomic_write_bytes(path, lambda f: f.write(text))


def load_model_weights(model: nn.Module, weights: dict[str, torch.Tensor], source: str) -> None:
    """Load weights, explaining a mismatch (a checkpoint from another model) in one line."""
    own = model.state_dict()
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    wrong = [k for k in own if k in weights and own[k].shape != weights[k].shape]
    if missing or unexpected or wrong:
        detail = (
            f"{len(missing)} missing, {len(unexpected)} unexpected, {len(wrong)} of another shape"
            f" (e.g. {(missing + unexpected + wrong)[0]})"
        )
        raise UdaError(
            f"{source} was saved from another model: {detail}; use the config it was trained with"
        )
    model.load_state_dict(weights)


class Trainer:
    """Trains one run in ``run_dir`` with a method, and evaluates on target val."""

    def __init__(
        self,
        *,
        run_dir: Path,
        config: dict[str, Any],
        runtime: RuntimeConfig,
        optim: OptimConfig,
        schedule: ScheduleConfig,
        build_model: Callable[[], nn.Module],
        build_method: Callable[[nn.Module, Accelerator], Method],
        train_batches: TrainBatches,
        evaluator: Evaluator | None,
        palette: np.ndarray | None = None,
    ) -> None:
        self.run_dir = run_dir
        self.config = config
        self.runtime = runtime
        self.optim = optim
        self.schedule = schedule
        self.build_model = build_model
        self.build_method = build_method
        self.train_batches = train_batches
        self.evaluator = evaluator
        self.palette = palette

    def _accelerator(self) -> Accelerator:
        if self.runtime.precision == "fp16" and not torch.cuda.is_available():
            raise UdaError("runtime.precision=fp16 needs a CUDA GPU; use bf16 or no on the CPU")
        trackers = "tensorboard" if importlib.util.find_spec("tensorboard") else None
        return Accelerator(
            mixed_precision=self.runtime.precision,
            log_with=trackers,
            project_dir=str(self.run_dir),
        )

    def fit(self, resume: dict[str, Any] | None = None) -> TrainResult:
        rt = self.runtime
        accelerator = self._accelerator()
        is_main = accelerator.is_main_process
        out = console()
        if rt.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        set_seed(rt.seed)
        model = self.build_model()
        optimizer = build_optimizer(model, self.optim)
        scheduler = build_scheduler(optimizer, rt.iterations, self.schedule)
        model, optimizer = accelerator.prepare(model, optimizer)
        method = self.build_method(model, accelerator)
        set_seed(rt.seed + accelerator.process_index)

        start, best = 0, -math.inf
        if resume is not None:
            load_model_weights(
                accelerator.unwrap_model(model), resume["model"], "the checkpoint to resume"
            )
            optimizer.load_state_dict(resume["optimizer"])
            scheduler.load_state_dict(resume["scheduler"])
            method.load_state_dict(resume.get("method", {}))
            set_rng_state(resume["rng"][min(accelerator.process_index, len(resume["rng"]) - 1)])
            start, best = resume["iteration"], resume.get("best", -math.inf)
            if is_main:
                out.print(f"resuming {self.run_dir} at iteration {start}/{rt.iterations}")

        metrics = MetricsLog(self.run_dir / "metrics.jsonl")
        if is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_json(self.run_dir / "config.json", self.config)
        if accelerator.log_with:
            accelerator.init_trackers("tensorboard")

        progress = TrainProgress(out, rt.iterations, start, enabled=is_main)
        report: IoUReport | None = None
        last_ckpt = self.run_dir / "checkpoints" / f"iter_{start:06d}.pt"
        batches = iter(
            self.train_batches(start, accelerator.process_index, accelerator.num_processes)
        )
        timer = time.perf_counter()
        try:
            for iteration in range(start, rt.iterations):
                batch = next(batches).to(accelerator.device)
                model.train()
                method.debug = (
                    is_main and rt.debug_interval > 0 and (iteration + 1) % rt.debug_interval == 0
                )
                logs = method.train_step(batch, iteration)
                self._check_finite(logs, iteration)
                if self.optim.grad_clip is not None:
                    accelerator.clip_grad_norm_(model.parameters(), self.optim.grad_clip)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                method.after_optimizer_step(iteration)
                done = iteration + 1
                if method.debug and method.panels:
                    save_panels(
                        self.run_dir / "debug" / f"iter_{done:06d}.png",
                        method.panels,
                        self._palette(),
                    )
                log_now = done % rt.log_interval == 0 or done == rt.iterations
                progress.update(done, logs, log_now)
                if log_now and is_main:
                    elapsed = time.perf_counter() - timer
                    record = {"iteration": done, "lr": scheduler.get_last_lr()[0], **logs}
                    record["sec_per_iter"] = elapsed / rt.log_interval
                    metrics.write(record)
                    accelerator.log(logs, step=done)
                    timer = time.perf_counter()
                if self.evaluator is not None and (
                    done % rt.eval_interval == 0 or done == rt.iterations
                ):
                    report = self._evaluate(method, accelerator)
                    if is_main:
                        metrics.write({"iteration": done, "split": "val", **report.as_dict()})
                        accelerator.log({"val/mIoU": report.miou}, step=done)
                        if report.miou > best:
                            best = report.miou
                            self._save_best(accelerator, method, done, report)
                if done % rt.checkpoint_interval == 0 or done == rt.iterations:
                    last_ckpt = self._save(
                        accelerator, model, optimizer, scheduler, method, done, best
                    )
        finally:
            progress.close()
        accelerator.end_training()
        if is_main and report is not None:
            out.print(report.table(f"Target val, iteration {rt.iterations}"))
            out.print(f"target mIoU {100 * report.miou:.2f}  (run folder {self.run_dir})")
        return TrainResult(self.run_dir, rt.iterations, last_ckpt, report)

    def _palette(self) -> np.ndarray:
        if self.palette is not None:
            return self.palette
        return np.random.default_rng(0).integers(0, 256, (256, 3), dtype=np.uint8)

    @staticmethod
    def _check_finite(logs: dict[str, float], iteration: int) -> None:
        bad = [k for k, v in logs.items() if not math.isfinite(v)]
        if bad:
            raise UdaError(
                f"iteration {iteration + 1}: loss {', '.join(bad)} is not finite; lower optim.lr or"
                " enable optim.grad_clip, then resume from the last checkpoint"
            )

    def _evaluate(self, method: Method, accelerator: Accelerator) -> IoUReport:
        return self.evaluator.run(
            accelerator.unwrap_model(method.eval_model()),
            accelerator.device,
            accelerator.process_index,
            accelerator.num_processes,
        )

    def _save_best(
        self, accelerator: Accelerator, method: Method, iteration: int, report: IoUReport
    ) -> None:
        state = {
            "model": accelerator.unwrap_model(method.eval_model()).state_dict(),
            "config": self.config,
            "iteration": iteration,
            "metrics": report.as_dict(),
        }
        save_checkpoint(self.run_dir / "checkpoints" / "best.pt", state)

    def _save(
        self, accelerator, model, optimizer, scheduler, method, iteration: int, best: float
    ) -> Path:
        path = self.run_dir / "checkpoints" / f"iter_{iteration:06d}.pt"
        rngs = [rng_state()]
        if accelerator.num_processes > 1:
            rngs = accelerator.gather_for_metrics(rngs, use_gather_object=True)
        if accelerator.is_main_process:
            state = {
                "model": accelerator.unwrap_model(model).state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "method": method.state_dict(),
                "iteration": iteration,
                "best": best,
                "rng": rngs,
                "config": self.config,
            }
            save_checkpoint(path, state)
            prune_checkpoints(self.run_dir, self.runtime.keep_checkpoints)
        accelerator.wait_for_everyone()
        return path
