"""ditflow: multi-agent image generation on FLUX-family diffusion transformers.

`from ditflow import Session` is the Python API (ditflow/api.py); it is imported lazily, so `import ditflow`
and `ditflow --help` stay instant.
"""
from ditflow.version import __version__

__all__ = ["Session", "Turn", "TurnCancelled", "Settings", "__version__"]


def __getattr__(name: str):
    if name in ("Session", "Turn", "TurnCancelled"):
        from ditflow import api

        return getattr(api, name)
    if name == "Settings":
        from ditflow.config import Settings

        return Settings
    raise AttributeError(f"module 'ditflow' has no attribute {name!r}")
