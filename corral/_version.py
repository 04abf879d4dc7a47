"""corral's version: the one definition (``corral.__version__`` and the distribution's metadata read it)."""

__version__ = "0.1.0"
