"""Imports every built-in component module so that each registers itself.

One import line per module; a module is added here once it imports cleanly.
"""

from . import data  # noqa: F401
