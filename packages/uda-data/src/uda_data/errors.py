"""Data problems reported in one line that names the file and the fix."""


class DataError(ValueError):
    """A dataset on disk is missing, incomplete or malformed."""
