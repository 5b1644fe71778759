"""Faults the tests inject: a disk that fills up, files cut short."""

from __future__ import annotations

import errno
import io
import os
from pathlib import Path

import pytest

import uda_data.atomic


class _FullDiskFile(io.FileIO):
    """A file that is created, as on a full disk, but takes no bytes."""

    def write(self, data) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def fill_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every atomic write of ``uda_data`` from now on fails with 'No space left on device'."""
    monkeypatch.setattr(
        uda_data.atomic, "open", lambda path, mode: _FullDiskFile(path, mode[0]), raising=False
    )


def truncate(path: Path, keep: float = 0.5) -> None:
    """Cut a file to a share of its bytes, as an interrupted copy leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
