"""uda_cli: the `uda` command line."""

__version__ = "0.1.0"
