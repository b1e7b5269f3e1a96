"""Data files shipped with the journey package, read with importlib.resources."""
