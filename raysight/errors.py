"""One error hierarchy for raysight.

Every error a person can fix carries an HTTP status (4xx) so the online path maps it to a
response without a lookup table, and the offline path writes its message into a row's
``error`` column. Anything that is not a ``RaysightError`` is a bug: it is logged with its
traceback under a fresh error id, and the client (or the row) gets an ``InternalError``
carrying only that id, never the exception's own text.
"""

from __future__ import annotations

import logging
import uuid


class RaysightError(Exception):
    """Base class for every error raysight raises on purpose."""

    status_code: int = 500
    code: str = "internal_error"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InternalError(RaysightError):
    """A bug or an unexpected failure: a generic message and an id; the details are in the log.

    Raised or returned in place of any exception that is not a RaysightError, so that what a
    client sees never depends on a library's internals. Search the log for the id.
    """

    status_code = 500
    code = "internal_error"

    def __init__(self, error_id: str | None = None):
        self.error_id = error_id or uuid.uuid4().hex[:12]
        super().__init__(
            f"internal error; error id {self.error_id} (the server log has the details)"
        )

    def __reduce__(self):  # rebuilt from its id when it crosses a process boundary
        return (type(self), (self.error_id,))


def internal_error(logger: logging.Logger, what: str, exc: BaseException) -> InternalError:
    """Log `exc` with its traceback under a new error id; return the InternalError to answer.

    `what` says where it happened ("preprocess failed"); the log line ends in the id that the
    client's message names.
    """
    error = InternalError()
    logger.error("%s [error id %s]", what, error.error_id, exc_info=exc)
    return error


class InvalidRequest(RaysightError):
    """The request is malformed or asks for something raysight does not support."""

    status_code = 400
    code = "invalid_request"


class ConfigError(RaysightError):
    """A ModelSpec, serve config or job config cannot be used as written."""

    status_code = 400
    code = "invalid_config"


class UnknownModel(RaysightError):
    """A request or spec names a model that is not configured or not found."""

    status_code = 404
    code = "model_not_found"


class NotFound(RaysightError):
    """The request names something (a file of an index, a page asset) that is not served."""

    status_code = 404
    code = "not_found"


class PlacementError(ConfigError):
    """Model actors or replicas cannot be placed on the cluster's nodes as asked; `model`
    names the deployment that did not fit, when one is to blame."""

    code = "placement_impossible"

    def __init__(self, message: str, model: str | None = None):
        super().__init__(message)
        self.model = model


class UnsupportedModel(ConfigError):
    """The model loads but no raysight family or task knows how to run it."""

    code = "unsupported_model"


# --- image input -------------------------------------------------------------------------


class ImageError(InvalidRequest):
    """An image could not be accepted; the message says which rule it broke."""

    code = "invalid_image"


class EmptyImage(ImageError):
    """The image data is empty."""


class InvalidBase64(ImageError):
    """The image string is not valid base64."""


class InvalidDataURL(ImageError):
    """A ``data:`` URL is malformed or is not an image type."""


class NotAnImage(ImageError):
    """The bytes are not in an image format that can be decoded."""


class CorruptImage(ImageError):
    """The bytes start like an image but cannot be decoded (e.g. truncated)."""


class ImageTooLarge(ImageError):
    """The image is over the configured byte or pixel limit."""

    status_code = 413
    code = "image_too_large"


class TooManyImages(ImageError):
    """A request carries more images than the configured limit."""


class LocalPathRefused(ImageError):
    """A local path was given while local paths are off, or it is outside the allowed root."""

    status_code = 403
    code = "image_source_forbidden"


class URLRefused(ImageError):
    """An http(s) URL was given while URLs are off, or it points somewhere not allowed."""

    status_code = 403
    code = "image_source_forbidden"


class ImageFetchFailed(ImageError):
    """An allowed URL could not be fetched (timeout, HTTP error, too many redirects)."""

    status_code = 422
    code = "image_fetch_failed"


# --- serving ---------------------------------------------------------------------------


class Overloaded(RaysightError):
    """The model's queue is full; the client should retry later."""

    status_code = 503
    code = "overloaded"


class Unauthorized(RaysightError):
    """The API key is missing or wrong."""

    status_code = 401
    code = "unauthorized"


class RequestTooLarge(RaysightError):
    """The request body is over the configured size cap."""

    status_code = 413
    code = "request_too_large"
