"""uda_methods: segmentation models and UDA strategies, by the names users type."""

__version__ = "0.1.0"
