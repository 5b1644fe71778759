"""uda_data: datasets in the real layouts, embedded synthetic domains, joint transforms."""

__version__ = "0.1.0"
