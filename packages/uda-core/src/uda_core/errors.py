"""The exceptions users see: a message saying what is wrong, where, and how to fix it."""

PREEMPTED_EXIT = 3
"""Exit status of `uda train` stopped by SIGTERM or SIGUSR1 after saving a checkpoint."""
INTERRUPTED_EXIT = 130
"""Exit status after Ctrl-C (128 + SIGINT), as shells report it."""


class UdaError(Exception):
    """A problem with the user's input (config, data, checkpoint), reported in one line."""


class Stopped(Exception):
    """A run stopped on request (a signal or Ctrl-C): one line saying where it stands and how
    to continue, and the exit status to leave with."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code
