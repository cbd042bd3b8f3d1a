"""Models: loading, preprocessing, class names, and importers."""
