"""Files written whole or not at all: a reader, or a run that was interrupted and resumed,
never sees half of one."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

from uda_data.errors import DataError, write_error


def write_atomic(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write through a temporary file in the same folder, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "xb") as f:
            write(f)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: Path, data: bytes) -> None:
    """``data`` to ``path`` atomically; a DataError names the path if it cannot be written."""
    try:
        write_atomic(path, lambda f: f.write(data))
    except OSError as exc:
        raise write_error(path, exc) from None


def check_writable(path: Path) -> None:
    """A DataError naming ``path`` unless a file can be written there (its folder created and
    written to, no folder in the way): checked before long work, not after it."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: a folder is in the way of the file to write; move it away")
    probe = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(probe, "xb"):
            pass
        probe.unlink()
    except OSError as exc:
        raise write_error(path, exc) from None


def save_png(path: Path, array: np.ndarray) -> None:
    """An H x W (8 or 16 bit) or H x W x 3 (8 bit) array as a PNG, atomically."""
    picture = Image.fromarray(array)
    write_atomic(path, lambda f: picture.save(f, format="PNG"))
