"""Run logs: metrics as JSON lines, and a console that shows progress to a person."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from uda_core.checkpoint import atomic_write_bytes
from uda_core.errors import UdaError


class MetricsLog:
    """Append-only JSON lines, flushed line by line so a killed run keeps what it logged."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path

    def keep_up_to(self, iteration: int) -> None:
        """Drops the records after ``iteration`` (a resume from its checkpoint logs them
        again) and a last line cut short by a kill; rewrites the file atomically."""
        if not self.path.is_file():
            return
        lines = self.path.read_text().splitlines()
        kept = []
        for number, line in enumerate(lines):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                if number == len(lines) - 1:
                    break  # half written when the run was killed
                raise UdaError(
                    f"{self.path}: line {number + 1} is not JSON; move the file away to resume"
                ) from None
            if not isinstance(record, dict) or record.get("iteration", 0) <= iteration:
                kept.append(line)
        if len(kept) == len(lines):
            return
        text = "".join(f"{line}\n" for line in kept).encode()
        atomic_write_bytes(self.path, lambda f: f.write(text))

    def write(self, record: dict[str, Any]) -> None:
        clean = {
            k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in record.items()
        }
        with self.path.open("a") as f:
            f.write(json.dumps(clean) + "\n")


class TrainProgress:
    """A rich progress bar on a terminal; plain lines every ``log_interval`` elsewhere."""

    def __init__(self, console: Console, total: int, start: int, enabled: bool = True) -> None:
        self.console = console
        self.enabled = enabled
        self.interactive = console.is_terminal
        self.total = total
        self.start_iter = start
        self.started = time.perf_counter()
        self.progress = None
        if enabled and self.interactive:
            self.progress = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[speed]}"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[losses]}"),
                console=console,
            )
            self.task = self.progress.add_task(
                "train", total=total, completed=start, speed="", losses=""
            )
            self.progress.start()

    def rate(self, iteration: int) -> float:
        done = iteration - self.start_iter
        return done / max(time.perf_counter() - self.started, 1e-9)

    def update(self, iteration: int, logs: dict[str, float], log_now: bool) -> None:
        if not self.enabled:
            return
        losses = " ".join(f"{k} {v:.4f}" for k, v in logs.items())
        speed = f"{self.rate(iteration):.2f} it/s"
        if self.progress is not None:
            self.progress.update(self.task, completed=iteration, speed=speed, losses=losses)
        elif log_now:
            remaining = (self.total - iteration) / max(self.rate(iteration), 1e-9)
            self.console.print(
                f"iter {iteration}/{self.total}  {speed}  eta {remaining:.0f}s  {losses}"
            )

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


def console() -> Console:
    return Console(file=sys.stdout, highlight=False, soft_wrap=True)
