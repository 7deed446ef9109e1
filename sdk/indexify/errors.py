"""Exceptions raised by the Indexify SDK.

Grouped by what the caller can do about them::

    IndexifyError                    root of everything the SDK raises
    ├── GraphValidationError         fix the graph: names the function, the parameter and the fix
    ├── EncodingError                a value could not be encoded or decoded
    ├── InvocationError              the invocation failed or cannot be read (see ``.error``)
    │   └── InvocationNotFinishedError  outputs were asked for before the invocation ended
    ├── InvalidInputError            bad arguments for a request (e.g. unknown keyword arguments)
    ├── NotFoundError                an unknown namespace, graph, invocation or function
    └── ApiError                     the server refused a request (``status_code``, ``message``)

User code may raise :class:`NonRetryable` to fail a task at once, whatever its retry budget.
"""

from __future__ import annotations


class IndexifyError(Exception):
    """Root of every exception the SDK raises."""


class GraphValidationError(IndexifyError):
    """The graph or one of its functions is invalid; the message says how to fix it."""

    def __init__(self, message: str, *, function: str | None = None, parameter: str | None = None):
        super().__init__(message)
        self.function = function
        self.parameter = parameter


class EncodingError(IndexifyError):
    """A value could not be encoded for storage or decoded back."""


class InvocationError(IndexifyError):
    """An invocation failed, or its state cannot be read."""

    def __init__(self, message: str, *, invocation_id: str | None = None):
        super().__init__(message)
        self.invocation_id = invocation_id


class InvocationNotFinishedError(InvocationError):
    """Outputs were requested while the invocation is still running."""


class InvalidInputError(IndexifyError):
    """A request's input is invalid (unknown or missing keyword arguments, a bad name)."""


class NotFoundError(IndexifyError):
    """A namespace, graph, invocation or function does not exist."""


class ApiError(IndexifyError):
    """The server refused a request; ``message`` is the server's explanation."""

    def __init__(self, status_code: int, message: str):
        super().__init__(f"HTTP {status_code}: {message}")
        self.status_code = status_code
        self.message = message


class NonRetryable(Exception):
    """Raise from a function to fail its task immediately, skipping any remaining retries."""
