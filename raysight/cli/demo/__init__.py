"""`raysight demo`: the end-to-end tour on the built-in models, on a private local Ray.

    raysight demo [--images 2000] [--out ./raysight-demo] [--port PORT] [--seed 2026]

Draws a labelled set of shape images (and three broken files), runs the offline jobs on it
(caption with builtin:shapes-vlm; embed, index and classify with builtin:shapes-clip), serves
both models and the index on Ray Serve, asks each route a real HTTP question, prints what
came back checked against the drawing, and shuts Serve and Ray down. Exit code 0 only when
every check passed. An application of both paths, so it lives in the command-line face.
"""

from __future__ import annotations

from raysight.cli.demo.runner import main

__all__ = ["main"]
