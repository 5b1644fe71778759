"""uda_core: the training engine, self-training parts, plugin protocol and evaluation."""

__version__ = "0.1.0"
