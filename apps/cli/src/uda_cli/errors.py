"""Turn the errors users can fix into one line on stderr and a non-zero exit.

Exit status: 0 done, 1 an internal error (a bug: with its traceback), 2 a user error (one
line), 3 `uda train` stopped by SIGTERM/SIGUSR1 after saving a checkpoint, 130 Ctrl-C.
"""

from __future__ import annotations

import errno
import functools
import os
import sys

import typer
from rich.console import Console
from rich.markup import escape

from uda_core.errors import INTERRUPTED_EXIT, Stopped, UdaError
from uda_data.errors import DataError

stderr = Console(stderr=True, highlight=False, soft_wrap=True)
_DISK_ERRORS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded"}


def fail(message: str, code: int = 2) -> typer.Exit:
    stderr.print(f"[bold red]error:[/] {escape(message)}")
    return typer.Exit(code)


def _main_process() -> bool:
    """Of several launched processes, the first alone reports a stop (each gets the signal)."""
    return int(os.environ.get("RANK", "0")) == 0


def disk_error(exc: BaseException) -> str | None:
    """One line for a full disk, also when torch's writer reports it in its own words."""
    if isinstance(exc, OSError) and exc.errno in _DISK_ERRORS:
        where = f" writing {exc.filename}" if exc.filename else ""
        return f"{_DISK_ERRORS[exc.errno]}{where}; free some space and run again"
    if isinstance(exc, RuntimeError) and "No space left on device" in str(exc):
        return "no space left on the device; free some space and run again"
    return None


def friendly_errors(command):
    """Report UdaError/DataError and a full disk in one line, a stopped run with how to go
    on, and an interruption of any other command without a hint about training."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except (UdaError, DataError) as exc:
            raise fail(str(exc)) from None
        except Stopped as exc:
            if _main_process():
                stderr.print(escape(str(exc)))
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            if _main_process():
                stderr.print("interrupted")
            sys.exit(INTERRUPTED_EXIT)
        except (OSError, RuntimeError) as exc:
            message = disk_error(exc)
            if message is None:
                raise
            raise fail(message) from None

    return wrapper
