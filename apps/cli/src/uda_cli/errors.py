"""Turn the errors users can fix into one line on stderr and a non-zero exit."""

from __future__ import annotations

import functools
import sys

import typer
from rich.console import Console
from rich.markup import escape

from uda_core.errors import UdaError
from uda_data.errors import DataError

stderr = Console(stderr=True, highlight=False, soft_wrap=True)


def fail(message: str, code: int = 2) -> typer.Exit:
    stderr.print(f"[bold red]error:[/] {escape(message)}")
    return typer.Exit(code)


def friendly_errors(command):
    """Report UdaError/DataError in one line, and an interruption with how to resume."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except (UdaError, DataError) as exc:
            raise fail(str(exc)) from None
        except KeyboardInterrupt:
            stderr.print("interrupted; continue with `uda train --resume latest`")
            sys.exit(130)

    return wrapper
