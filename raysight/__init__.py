"""raysight: vision-language models at scale on Ray.

The shared core: model specs, loading, preprocessing and engines. No Ray Serve or Ray Data
imports here; heavy libraries (torch, transformers, PIL) load where they are used.
"""

from raysight.spec import ModelSpec

__all__ = ["ModelSpec"]
__version__ = "0.1.0"
