"""Renderers: the only code that knows matplotlib, colours, PIL drawing and HTML.

Compute code hands them tensors; they return figures, images, or write files.
"""
