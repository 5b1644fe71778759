"""Checkpoints written atomically, found again by ``--resume latest``, and loaded with checks.

Every checkpoint, ours or published, is read by ``read_weights_only``: ``torch.load`` with
``weights_only=True`` and an allow-list of numpy's array, scalar and dtype types (data, no
code: older checkpoints of ours and the reference ``meta`` hold numpy values). Reading a file
therefore never runs code from it; a file that needs more fails with one line. What we write
needs no allow-list: the random generators' states are saved as tensors and plain values.
"""

from __future__ import annotations

import fcntl
import os
import random
import re
import socket
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


def _numpy_globals() -> list[Any]:
    """numpy arrays, scalars and dtypes under the names numpy 2 and numpy 1 pickle them with."""
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy 1
        from numpy.core import multiarray
    named = [
        (getattr(multiarray, name), f"{module}.multiarray.{name}")
        for name in ("_reconstruct", "scalar")
        for module in ("numpy._core", "numpy.core")
    ]
    dtypes = [type(np.dtype(t)) for t in ("u1", "i4", "i8", "u4", "u8", "f4", "f8", "?")]
    return [*named, np.ndarray, np.dtype, *dtypes]


def check_readable(path: Path, what: str = "checkpoint") -> None:
    """One line for a missing path, or a folder where a file is expected."""
    if path.is_dir():
        raise UdaError(f"{what} {path} is a folder; give the checkpoint file inside it")
    if not path.is_file():
        raise UdaError(f"{what} {path} does not exist; check the path")


def read_weights_only(path: Path, what: str = "checkpoint") -> Any:
    """A file's content, weights only (tensors, numbers, strings, containers, numpy values);
    every way of failing is one line, and reading never runs code from the file."""
    check_readable(path, what)
    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or foreign files
        text = _plain_text(str(exc))
        if "Unsupported global" in text or "Can only build Tensor" in text or "GLOBAL" in text:
            raise UdaError(
                f"{what} {path} holds objects other than tensors and plain containers; uda "
                "reads weights-only files (torch.load weights_only=True) so that reading runs "
                "no code from them"
            ) from None
        detail = text.rpartition("WeightsUnpickler error:")[2].strip() or text.strip()
        detail = detail.splitlines()[0][:100] if detail else ""
        raise UdaError(
            f"{what} {path} cannot be read ({type(exc).__name__}"
            f"{': ' + detail if detail else ''}); is it a complete checkpoint file?"
        ) from None


def _plain_text(text: str) -> str:
    """Without ANSI escapes (torch colours some of its messages)."""
    return re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint of ours on the CPU; an unreadable file is a one-line error."""
    state = read_weights_only(path)
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


def remove_temporary_files(run_dir: Path) -> None:
    """Remove what an interrupted atomic write (a killed process) left in a run folder."""
    for folder in (run_dir, run_dir / CHECKPOINT_DIR):
        for tmp in folder.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)


class RunLock:
    """An exclusive lock on a run folder (``.lock`` inside it, held with ``flock``, so a
    killed process releases it); a second run on the folder fails with one line."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / ".lock"
        self._file = None

    def __enter__(self) -> RunLock:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            f = open(self.path, "a+")
        except OSError as exc:
            raise UdaError(
                f"run folder {self.path.parent} cannot be created or written "
                f"({exc.strerror}); check --work-dir and --name"
            ) from None
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise UdaError(
                f"run folder {self.path.parent} is in use by {holder} (lock {self.path}); "
                "wait for that run to end or pass another --name"
            ) from None
        f.truncate(0)
        f.write(f"process {os.getpid()} on {socket.gethostname()}\n")
        f.flush()
        self._file = f
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    for old in periodic_checkpoints(run_dir)[:-keep]:
        old.unlink(missing_ok=True)


def rng_state() -> dict[str, Any]:
    """This process's random generators (on CUDA, its current device's), to save per process,
    as tensors and plain values (a weights-only load reads them back)."""
    version, keys, gauss = random.getstate()
    numpy = np.random.get_state(legacy=False)
    state = {
        "python": {"version": version, "state": torch.tensor(keys), "gauss": gauss},
        "numpy": {
            "key": torch.from_numpy(numpy["state"]["key"].astype(np.int64)),
            "pos": int(numpy["state"]["pos"]),
            "has_gauss": int(numpy["has_gauss"]),
            "gauss": float(numpy["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what ``rng_state`` saved (or the tuples earlier versions saved)."""
    python, numpy = state["python"], state["numpy"]
    if isinstance(python, dict):
        python = (python["version"], tuple(python["state"].tolist()), python["gauss"])
    random.setstate(python)
    if isinstance(numpy, dict):
        key = numpy["key"].numpy().astype(np.uint32)
        numpy = ("MT19937", key, numpy["pos"], numpy["has_gauss"], numpy["gauss"])
    np.random.set_state(numpy)
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is None or not torch.cuda.is_available():
        return
    if isinstance(cuda, list):  # saved by earlier versions: one state per visible device
        cuda = cuda[min(torch.cuda.current_device(), len(cuda) - 1)]
    torch.cuda.set_rng_state(cuda)
