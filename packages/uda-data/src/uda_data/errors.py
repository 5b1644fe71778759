"""Data problems reported in one line that names the file and the fix."""

from __future__ import annotations

from typing import Literal

Problem = Literal["", "unreadable", "format", "values"]
"""What kind of problem a reader found: ``unreadable`` (missing, empty, truncated, corrupt),
``format`` (a valid file of the wrong kind: an RGB label, a 3-D array, ...) or ``values``
(ids outside the class set, NaN depth). ``uda data check`` groups its findings by it."""


class DataError(ValueError):
    """A dataset on disk is missing, incomplete or malformed.

    The message is one line that names the file. PyTorch re-raises an error of a DataLoader
    worker as ``DataError(<the worker's traceback as text>)``; the constructor keeps only the
    original message of such a text, so the user still sees that one line.
    """

    def __init__(self, message: str, problem: Problem = "") -> None:
        super().__init__(_original_message(message, type(self)))
        self.problem = problem


def _original_message(message: str, cls: type) -> str:
    if not message.startswith(f"Caught {cls.__name__} ") or "Traceback" not in message:
        return message
    last = f"\n{cls.__module__}.{cls.__qualname__}: "
    start = message.rfind(last)
    return message[start + len(last) :].strip() if start >= 0 else message


def write_error(path: object, exc: OSError) -> DataError:
    """The DataError of an output that cannot be written (read-only, full disk, a folder in
    the way), naming the path."""
    if isinstance(exc, (FileExistsError, NotADirectoryError)):  # from mkdir or open
        reason = "a file is in the way"
    elif isinstance(exc, IsADirectoryError):
        reason = "a folder is in the way"
    else:
        reason = (exc.strerror or str(exc)).lower()
    return DataError(f"{path}: cannot be written ({reason})")
