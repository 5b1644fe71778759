"""Checkpoints written atomically, found again by ``--resume latest``, and loaded with checks."""

from __future__ import annotations

import os
import random
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from uda_core.errors import UdaError

CHECKPOINT_DIR = "checkpoints"
_PERIODIC = re.compile(r"iter_(\d+)\.pt$")


def atomic_write_bytes(path: Path, write) -> None:
    """Write through a temporary file in the same folder, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    atomic_write_bytes(path, lambda f: torch.save(state, f))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint on the CPU; an unreadable file is a one-line error."""
    if not path.is_file():
        raise UdaError(f"checkpoint {path} does not exist; check the path")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many types for corrupt files
        raise UdaError(
            f"checkpoint {path} cannot be read ({type(exc).__name__}); is it a uda checkpoint?"
        ) from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise UdaError(f"checkpoint {path} is not a uda checkpoint (no model weights and config)")
    return state


def periodic_checkpoints(run_dir: Path) -> list[Path]:
    """Periodic checkpoints of a run, oldest first."""
    folder = run_dir / CHECKPOINT_DIR
    found = [
        (int(m.group(1)), p) for p in folder.glob("iter_*.pt") if (m := _PERIODIC.search(p.name))
    ]
    return [p for _, p in sorted(found)]


def find_latest(work_dir: Path) -> Path:
    """The newest periodic checkpoint of any run under ``work_dir`` (or of the run ``work_dir``)."""
    candidates = periodic_checkpoints(work_dir)
    if not candidates and work_dir.is_dir():
        for run in work_dir.iterdir():
            candidates += periodic_checkpoints(run)
    if not candidates:
        raise UdaError(
            f"--resume latest: no checkpoint under {work_dir}; start a run without --resume"
        )
    return max(candidates, key=lambda p: p.stat().st_mtime_ns)


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    for old in periodic_checkpoints(run_dir)[:-keep]:
        old.unlink(missing_ok=True)


def rng_state() -> dict[str, Any]:
    """This process's random generators (on CUDA, its current device's), to save per process."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is None or not torch.cuda.is_available():
        return
    if isinstance(cuda, list):  # saved by earlier versions: one state per visible device
        cuda = cuda[min(torch.cuda.current_device(), len(cuda) - 1)]
    torch.cuda.set_rng_state(cuda)
