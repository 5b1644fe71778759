"""Turn the errors users can fix into one line on stderr and a non-zero exit.

Exit status: 0 done, 1 an internal error (a bug: with its traceback), 2 a user error (one
line), 3 `uda train` stopped by SIGTERM/SIGUSR1 after saving a checkpoint, 130 Ctrl-C,
143 SIGTERM during any other command (or before training began).
Processes launched by `uda train --num-processes` leave what they would print to the
launcher (``REPORTS``), which prints it once: a failing process's peers then fail too (gloo
or NCCL lose their connection), and their tracebacks would bury the one line that matters.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import signal
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from uda_core.errors import INTERRUPTED_EXIT, Stopped, UdaError
from uda_data.atomic import write_bytes
from uda_data.errors import DataError

try:  # typer 0.2x carries its own copy of click
    from typer._click import exceptions as click_errors
except ImportError:
    from click import exceptions as click_errors

stderr = Console(stderr=True, highlight=False, soft_wrap=True)
_DISK_ERRORS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded"}
REPORTS = "UDA_LAUNCH_REPORTS"
"""Environment variable naming the folder where launched processes leave their report."""


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


class OneLineUsageErrors(TyperGroup):
    """The `uda` command group: a command line click cannot parse (an unknown option or
    command, a missing argument, a bad value for an option) is one line saying where, what and
    how to get help, with exit status 2, for every command of the app."""

    def make_context(self, info_name, args, parent=None, **extra):
        with _usage_in_one_line(info_name or "uda"):
            return super().make_context(info_name, args, parent=parent, **extra)

    def invoke(self, ctx: typer.Context):
        with _usage_in_one_line(
            lambda: " ".join(filter(None, (ctx.command_path, ctx.invoked_subcommand)))
        ):
            return super().invoke(ctx)


@contextlib.contextmanager
def _usage_in_one_line(command) -> Iterator[None]:
    """Turn click's usage error into one line; ``command`` names where (or gives it), for an
    error that does not say."""
    try:
        yield
    except getattr(click_errors, "NoArgsIsHelpError", ()):  # `uda data` alone: its help
        raise
    except click_errors.UsageError as exc:
        if exc.ctx is not None:
            where = exc.ctx.command_path
        else:
            where = command() if callable(command) else command
        message = exc.format_message().replace("Value error, ", "").rstrip(".")
        message = f"{message[:1].lower()}{message[1:]}{'' if message.endswith('?') else ';'}"
        raise fail(f"{where}: {message} see {where} --help") from None


TERMINATED_EXIT = 128 + signal.SIGTERM
"""Exit status of a command other than a training stopped by SIGTERM (as shells report it)."""


class Terminated(BaseException):
    """SIGTERM arrived while a command ran (training has its own handling: see the engine).
    Like KeyboardInterrupt, not an Exception: a reader's ``except Exception`` must not turn
    it into "cannot be read"."""


def friendly_errors(after_stop: str):
    """Report UdaError/DataError and a full disk in one line, a stopped run with how to go
    on, and Ctrl-C or SIGTERM during the command followed by ``after_stop``: what is kept
    and how to go on. SIGTERM raises ``Terminated`` at once, so that half-written files are
    removed on the way out."""

    def decorate(command):
        @functools.wraps(command)
        def wrapper(*args, **kwargs):
            try:
                with _sigterm_raises():
                    return command(*args, **kwargs)
            except (typer.Exit, typer.Abort):
                raise
            except (UdaError, DataError) as exc:
                _end(str(exc), 2, error=True)
            except Terminated as exc:
                _end(f"{exc}; {after_stop}", TERMINATED_EXIT, error=False)
            except Stopped as exc:
                _end(str(exc), exc.exit_code, error=False)
            except KeyboardInterrupt:
                _end(f"interrupted; {after_stop}", INTERRUPTED_EXIT, error=False)
            except (OSError, RuntimeError) as exc:
                message = disk_error(exc)
                if message is not None:
                    _end(message, 2, error=True)
                _end_launched_with_traceback()
                raise
            except Exception:
                _end_launched_with_traceback()
                raise

        return wrapper

    return decorate


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """SIGTERM raises ``Terminated`` in this process while the block runs; a process forked
    from it (a data worker, a pool's process) ends on it as it would have."""
    owner = os.getpid()

    def handler(signum: int, frame) -> None:
        if os.getpid() != owner:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise Terminated("stopped by SIGTERM")

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: signals stay as they are
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _end(message: str, code: int, *, error: bool) -> NoReturn:
    """Print ``message`` (an error, or the main process's note on a stop) and exit; in a
    launched process, leave both to the launcher."""
    _report({"message": message, "code": code, "error": error})
    if error:
        raise fail(message, code)
    if _main_process():
        stderr.print(escape(message))
    sys.exit(code)


def _end_launched_with_traceback() -> None:
    """A launched process leaves the traceback of a bug to the launcher, which prints it
    unless another process failed with a message of its own first."""
    _report({"message": traceback.format_exc(), "code": 1, "error": False, "traceback": True})


def _report(report: dict) -> None:
    folder = os.environ.get(REPORTS)
    if folder is not None:
        rank = int(os.environ.get("RANK", "0"))
        write_bytes(Path(folder) / f"{rank}.json", json.dumps({"rank": rank, **report}).encode())
        sys.exit(report["code"])


def print_reports(folder: Path) -> int | None:
    """Print what the launched processes left in ``folder`` and return the exit status to
    leave with (None if none left anything). One process's error makes its peers fail or stop
    in turn, so the first user error is printed alone; else the main process's note on a
    stop; else the tracebacks of the bugs."""
    files = sorted(Path(folder).glob("*.json"), key=lambda p: p.stat().st_mtime_ns)
    reports = [json.loads(p.read_text()) for p in files]
    errors = [r for r in reports if r["error"]]
    stops = sorted((r for r in reports if not r["error"] and "traceback" not in r), key=_rank)
    if errors:
        stderr.print(f"[bold red]error:[/] {escape(errors[0]['message'])}")
        return errors[0]["code"]
    if stops:
        stderr.print(escape(stops[0]["message"]))
        return stops[0]["code"]
    for report in sorted(reports, key=_rank):
        stderr.print(f"process {report['rank']}:\n{report['message']}", markup=False)
    return 1 if reports else None


def _rank(report: dict) -> int:
    return report["rank"]
