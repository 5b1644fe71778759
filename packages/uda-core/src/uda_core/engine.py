"""The iteration-based training loop on Accelerate.

It reads top to bottom: build, maybe resume, then for each iteration let the method do its
forward/backward, step the optimiser and schedule, log, evaluate and checkpoint.

The same loop runs in one process or in several launched by Accelerate or torchrun (one per
GPU, or gloo processes on the CPU): Accelerate wraps the student in DDP, which averages the
gradients of every backward pass; each process draws its own batches; BatchNorm statistics
and the EMA teacher's are averaged after each step; evaluation shards target val over the
processes and sums their confusion matrices; the main process alone writes checkpoints,
after checking that every process holds the same weights. See docs/distributed.md.

Each checkpoint is written before the evaluation of its iteration, so a failed or interrupted
evaluation keeps the trained weights. SIGTERM and SIGUSR1 (what schedulers send before they
kill a job) let the current iteration finish, save a checkpoint and stop with ``Stopped``
(exit status ``PREEMPTED_EXIT``); ``--resume latest`` then continues bit-exactly. See
docs/preemption.md.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import DistributedDataParallelKwargs, gather_object, set_seed
from torch import nn

from uda_core.checkpoint import (
    CHECKPOINT_DIR,
    atomic_write_bytes,
    prune_checkpoints,
    read_weights_only,
    remove_temporary_files,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from uda_core.compile import compile_in_place
from uda_core.config import OptimConfig, RuntimeConfig, ScheduleConfig
from uda_core.debug import save_panels
from uda_core.ema import average_buffers
from uda_core.errors import PREEMPTED_EXIT, Stopped, UdaError
from uda_core.evaluation import Evaluator, IoUReport
from uda_core.logging import MetricsLog, TrainProgress, console
from uda_core.method import Method, UDABatch
from uda_core.optim import build_optimizer, build_scheduler
from uda_core.precision import one_cast_per_step

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
"""Signals that make training save a checkpoint after the current iteration and stop."""

TrainBatches = Callable[[int, int, int], Iterable[UDABatch]]
"""(start iteration, process rank, process count) -> one batch per iteration from ``start``."""


@dataclass
class TrainResult:
    run_dir: Path
    iterations: int
    final_checkpoint: Path
    report: IoUReport | None


def process_state() -> PartialState:
    """This process's place among the launched ones (one process when not launched).

    Several processes launched on a machine without CUDA are joined over gloo on the CPU;
    with CUDA, each takes its GPU and they are joined over NCCL.
    """
    return PartialState(cpu=_launched_without_cuda())


def _launched_without_cuda() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()


def fingerprint(state: Any) -> str:
    """A short digest of a (nested) state: each tensor by its float64 sum and sum of squares,
    other values by their repr. Equal states give equal digests on the same kind of device."""
    digest = hashlib.sha1()

    def walk(value: Any, key: str) -> None:
        if isinstance(value, torch.Tensor):
            t = value.detach().double()
            sums = torch.stack([t.sum(), t.square().sum()]).cpu().numpy()
            digest.update(f"{key}{tuple(value.shape)}".encode() + sums.tobytes())
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{key}.{k}")
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                walk(v, f"{key}.{i}")
        else:
            digest.update(f"{key}={value!r}".encode())

    walk(state, "")
    return digest.hexdigest()[:16]


def write_json(path: Path, data: Any) -> None:
    text = json.dumps(data, indent=2, default=str).encode()
    atomic_write_bytes(path, lambda f: f.write(text))


class LossLog:
    """The scalar logs of the steps since the last ``clear``, summed where they are.

    A method's step returns its losses as (detached) tensors on the device; adding them here
    issues a few device additions and no host synchronisation. ``means`` (every
    ``runtime.log_interval`` iterations, and before a checkpoint) copies the sums to the host
    once and returns each value's mean over the steps that reported it, as mmcv's logger
    averages over its interval (the log before showed the last iteration's values). Plain
    floats are summed on the host.
    """

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor | float] = {}
        self.counts: dict[str, int] = {}

    def add(self, logs: dict[str, torch.Tensor | float]) -> None:
        for key, value in logs.items():
            if isinstance(value, torch.Tensor) and value.requires_grad:
                value = value.detach()  # the methods return detached values already
            self.sums[key] = self.sums[key] + value if key in self.sums else value
            self.counts[key] = self.counts.get(key, 0) + 1

    def means(self) -> dict[str, float]:
        """Each value's mean over the steps since the last ``clear`` (one host copy)."""
        tensors = [k for k, v in self.sums.items() if isinstance(v, torch.Tensor)]
        values = {k: float(v) for k, v in self.sums.items() if k not in tensors}
        if tensors:
            stacked = torch.stack([self.sums[k].double().reshape(()) for k in tensors])
            values |= dict(zip(tensors, stacked.tolist(), strict=True))
        return {k: values[k] / self.counts[k] for k in self.sums}

    def clear(self) -> None:
        self.sums, self.counts = {}, {}


class StopRequest:
    """Records the first of ``STOP_SIGNALS`` while installed (main thread only)."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._record)
        return self

    def _record(self, signum: int, frame: Any) -> None:
        self.signal = self.signal or signum

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def requested(self, accelerator: Accelerator) -> bool:
        """Whether any process got a stop signal (every process then stops at this step)."""
        if accelerator.num_processes == 1:
            return self.signal is not None
        flag = torch.tensor([float(self.signal or 0)], device=accelerator.device)
        agreed = int(accelerator.reduce(flag, "max").item())
        self.signal = self.signal or (agreed or None)
        return agreed > 0


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
        self.last_checkpoint: Path | None = None
        """The newest checkpoint this trainer wrote (or resumed from)."""

    def _accelerator(self) -> Accelerator:
        if self.runtime.precision == "fp16" and not torch.cuda.is_available():
            raise UdaError("runtime.precision=fp16 needs a CUDA GPU; use bf16 or no on the CPU")
        trackers = "tensorboard" if importlib.util.find_spec("tensorboard") else None
        ddp = DistributedDataParallelKwargs(
            find_unused_parameters=self.runtime.find_unused_parameters
        )
        return Accelerator(
            cpu=_launched_without_cuda(),
            mixed_precision=self.runtime.precision,
            log_with=trackers,
            project_dir=str(self.run_dir),
            kwargs_handlers=[ddp],
        )

    def _build_student(self, accelerator: Accelerator) -> nn.Module:
        rt = self.runtime
        model = self.build_model()
        if rt.sync_bn and accelerator.num_processes > 1:
            if accelerator.device.type != "cuda":
                raise UdaError(
                    "runtime.sync_bn: SyncBatchNorm needs CUDA GPUs; set it to false on the CPU"
                )
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        if rt.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    def fit(self, resume: dict[str, Any] | None = None) -> TrainResult:
        rt = self.runtime
        accelerator = self._accelerator()
        is_main = accelerator.is_main_process
        out = console()
        if rt.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        set_seed(rt.seed)
        model = self._build_student(accelerator)
        optimizer = build_optimizer(model, self.optim, accelerator.device)
        scheduler = build_scheduler(optimizer, rt.iterations, self.schedule)
        model, optimizer = accelerator.prepare(model, optimizer)
        method = self.build_method(model, accelerator)
        method.backward_once = rt.backward_once
        if rt.compile:
            # in place, after the method copied the student (EMA teacher): same state dict keys
            for module in [accelerator.unwrap_model(model), *method.frozen_modules()]:
                compile_in_place(module, out.print)
        set_seed(rt.seed + accelerator.process_index)

        start, best = 0, -math.inf
        if resume is not None:
            load_model_weights(
                accelerator.unwrap_model(model), resume["model"], "the checkpoint to resume"
            )
            optimizer.load_state_dict(resume["optimizer"])
            scheduler.load_state_dict(resume["scheduler"])
            self._apply_new_lr(optimizer, scheduler, resume["config"])
            method.load_state_dict(resume.get("method", {}))
            start = resume["iteration"]
            best = max(resume.get("best", -math.inf), self._saved_best())
            self._restore_rng(resume["rng"], accelerator.process_index, start)
            if is_main:
                out.print(f"resuming {self.run_dir} at iteration {start}/{rt.iterations}")
                saved = len(resume["rng"])
                if saved != accelerator.num_processes:
                    out.print(
                        f"processes: {saved} saved the checkpoint, {accelerator.num_processes} go"
                        " on (the global batch and the per-process data streams change)"
                    )

        metrics = MetricsLog(self.run_dir / "metrics.jsonl")
        if is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            remove_temporary_files(self.run_dir)
            # a resume drops what its checkpoint does not hold; a new run (in a folder without
            # checkpoints, whose earlier run was killed before its first) drops every record
            metrics.keep_up_to(start)
            write_json(self.run_dir / "config.json", self.config)
        if accelerator.log_with:
            accelerator.init_trackers("tensorboard")

        progress = TrainProgress(out, rt.iterations, start, enabled=is_main)
        report: IoUReport | None = None
        last_ckpt = self.run_dir / "checkpoints" / f"iter_{start:06d}.pt"
        batches = iter(
            self.train_batches(start, accelerator.process_index, accelerator.num_processes)
        )
        timer, data_wait, last_log = time.perf_counter(), 0.0, start
        losses, shown = LossLog(), {}
        stop = StopRequest().install()
        try:
            for iteration in range(start, rt.iterations):
                waited = time.perf_counter()
                batch = next(batches).to(accelerator.device)
                data_wait += time.perf_counter() - waited
                model.train()
                method.debug = (
                    is_main and rt.debug_interval > 0 and (iteration + 1) % rt.debug_interval == 0
                )
                with one_cast_per_step():  # each weight cast to bf16/fp16 once per step
                    losses.add(method.train_step(batch, iteration))
                    method.finish_backward()  # runtime.backward: once
                if self.optim.grad_clip is not None:
                    accelerator.clip_grad_norm_(model.parameters(), self.optim.grad_clip)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                average_buffers(accelerator.unwrap_model(model))
                method.after_optimizer_step(iteration)
                done = iteration + 1
                if method.debug and method.panels:
                    save_panels(
                        self.run_dir / "debug" / f"iter_{done:06d}.png",
                        method.panels,
                        self._palette(),
                    )
                log_now = done % rt.log_interval == 0 or done == rt.iterations
                save_now = done % rt.checkpoint_interval == 0 or done == rt.iterations
                if log_now or save_now:  # the losses' only host read: no sync inside a step
                    logs = losses.means()
                    self._check_finite(logs, last_log, done)
                if log_now:
                    losses.clear()
                    if accelerator.num_processes > 1:
                        logs = self._mean_over_processes(logs, accelerator)
                    shown = logs
                progress.update(done, shown, log_now)
                if log_now and is_main:
                    count = done - last_log
                    record = {"iteration": done, "lr": scheduler.get_last_lr()[0], **logs}
                    record["sec_per_iter"] = (time.perf_counter() - timer) / count
                    record["data_wait"] = data_wait / count
                    metrics.write(record)
                    accelerator.log(logs, step=done)
                if log_now:
                    timer, data_wait, last_log = time.perf_counter(), 0.0, done
                if save_now:
                    last_ckpt = self._save(
                        accelerator, model, optimizer, scheduler, method, done, best
                    )
                    self.last_checkpoint = last_ckpt
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
                if done < rt.iterations and stop.requested(accelerator):
                    if not save_now:
                        self._check_finite(losses.means(), last_log, done)
                        last_ckpt = self._save(
                            accelerator, model, optimizer, scheduler, method, done, best
                        )
                        self.last_checkpoint = last_ckpt
                    raise Stopped(
                        f"stopped by {signal.Signals(stop.signal).name} after iteration "
                        f"{done}/{rt.iterations}; checkpoint {last_ckpt}",
                        PREEMPTED_EXIT,
                    )
        finally:
            stop.restore()
            progress.close()
            close_batches = getattr(batches, "close", None)
            if close_batches is not None:  # a generator: its data workers end now, not at exit
                close_batches()
        accelerator.end_training()
        if is_main and report is not None:
            out.print(report.table(f"Target val, iteration {rt.iterations}"))
            out.print(f"target mIoU {100 * report.miou:.2f}  (run folder {self.run_dir})")
        return TrainResult(self.run_dir, rt.iterations, last_ckpt, report)

    def _apply_new_lr(self, optimizer, scheduler, saved: dict[str, Any]) -> None:
        """A resume with another ``optim.lr``: every group's base rate scaled by new/saved,
        so the schedule (warm-up, decay over ``runtime.iterations``) continues from it."""
        saved_lr = float((saved.get("optim") or {}).get("lr", self.optim.lr))
        scale = self.optim.lr / saved_lr
        if scale == 1:
            return
        scheduler.base_lrs = [lr * scale for lr in scheduler.base_lrs]
        for group in optimizer.param_groups:
            group["initial_lr"] *= scale
            group["lr"] *= scale
        scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]

    def _saved_best(self) -> float:
        """The mIoU of the run's best.pt: an evaluation after the last checkpoint may have
        improved on the best that checkpoint records."""
        path = self.run_dir / CHECKPOINT_DIR / "best.pt"
        if not path.is_file():
            return -math.inf
        metrics = read_weights_only(path).get("metrics") or {}
        return float(metrics.get("mIoU", -math.inf))

    def _palette(self) -> np.ndarray:
        if self.palette is not None:
            return self.palette
        return np.random.default_rng(0).integers(0, 256, (256, 3), dtype=np.uint8)

    def _restore_rng(self, saved: list[dict[str, Any]], rank: int, start: int) -> None:
        """Continue this process's random streams; a process the checkpoint has none for (a
        resume with more processes) gets fresh ones, seeded by (seed, process, iteration)."""
        if rank < len(saved):
            set_rng_state(saved[rank])
        else:
            set_seed(
                int(np.random.SeedSequence([self.runtime.seed, rank, start]).generate_state(1)[0])
            )

    @staticmethod
    def _mean_over_processes(logs: dict[str, float], accelerator: Accelerator) -> dict[str, float]:
        values = torch.tensor(list(logs.values()), dtype=torch.float64, device=accelerator.device)
        means = accelerator.reduce(values, "mean").tolist()
        return dict(zip(logs, means, strict=True))

    @staticmethod
    def _check_finite(logs: dict[str, float], last_read: int, iteration: int) -> None:
        """Losses are read every ``log_interval`` iterations and before each checkpoint, so a
        non-finite one stops training by then, before it reaches a checkpoint."""
        bad = [k for k, v in logs.items() if not math.isfinite(v)]
        if bad:
            raise UdaError(
                f"iterations {last_read + 1}-{iteration}: loss {', '.join(bad)} is not finite; "
                "lower optim.lr or enable optim.grad_clip, then resume from the last checkpoint"
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

    @staticmethod
    def _check_replicas_agree(accelerator, model, method, iteration: int) -> None:
        """Every process must hold the same student, teacher and frozen networks."""
        states = {"student": accelerator.unwrap_model(model).state_dict(), **method.state_dict()}
        digests = gather_object([{name: fingerprint(s) for name, s in states.items()}])
        for rank, theirs in enumerate(digests):
            differ = [name for name in states if theirs[name] != digests[0][name]]
            if differ:
                raise UdaError(
                    f"iteration {iteration}: process {rank} holds other {', '.join(differ)} "
                    "weights than process 0; something changed outside the optimiser (a "
                    "plugin's state?) differs between processes; see docs/distributed.md"
                )

    def _save(
        self, accelerator, model, optimizer, scheduler, method, iteration: int, best: float
    ) -> Path:
        path = self.run_dir / "checkpoints" / f"iter_{iteration:06d}.pt"
        rngs = [rng_state()]
        if accelerator.num_processes > 1:
            self._check_replicas_agree(accelerator, model, method, iteration)
            rngs = gather_object(rngs)
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
