"""The events of one streamed chat, from the model replica (ModelServer.generate_stream) to
the HTTP side (Gateway.chat_stream). Both sides import this module; the events are frozen
dataclasses, so they pickle unchanged across a Serve DeploymentHandle.

A stream is either ``Failed`` alone (the request was refused before it was queued: the client
gets a plain 4xx), or ``Accepted``, then any number of ``Delta``, then ``Final`` or ``Failed``
(an error after the response started: reported inside the event stream).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union

from raysight.errors import RaysightError


@dataclass(frozen=True)
class Accepted:
    """The request was prepared and queued for the model; the response may start."""


@dataclass(frozen=True)
class Delta:
    """New text since the previous Delta (one per change of the decoded text)."""

    text: str


@dataclass(frozen=True)
class Final:
    """The whole answer (a GenerateResult) and the batch it ran in."""

    result: Any
    batch_size: int = 0
    queue_wait_s: float = 0.0


@dataclass(frozen=True)
class Failed:
    """The request failed; `error` is the typed error to answer with."""

    error: RaysightError


StreamEvent = Union[Accepted, Delta, Final, Failed]
