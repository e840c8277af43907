"""The package's version, at the ground: `ditflow/__init__.py` re-exports it, and every run manifest records it."""
__version__ = "0.1.0"
