"""deepscope: see how a trained image classifier reaches its predictions."""

__version__ = "0.1.0"
