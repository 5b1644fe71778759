"""The one exception type users see: a message saying what is wrong, where, and how to fix it."""


class UdaError(Exception):
    """A problem with the user's input (config, data, checkpoint), reported in one line."""
