"""The services' error tree, grouped by what the caller can do about an error.

::

    ServiceError                   something in the services went wrong (give up, report it)
     ├── PlatformUnavailable       Kafka, Redis or MinIO is briefly unreachable: retry later,
     │                             without spending the user's retry budget
     ├── NotFound                  the thing asked for does not exist (HTTP 404)
     ├── Conflict                  it exists already / changed under us (HTTP 409)
     │    └── CommitRejected       an offset commit came after a rebalance moved the
     │                             partitions: drop those offsets (the new owner replays them)
     ├── BadRequest                the request is wrong: fix it (HTTP 400)
     └── PayloadTooLarge           a body or message is over a size limit (HTTP 413)

Third-party exceptions (aiokafka, redis, minio, urllib3) are translated into these at the
adapter boundary (``kafka_bus``, ``blobs``, the Redis store), chained with ``from`` so the
original stays in the traceback. Code above the adapters never catches a library's exception.
"""

from __future__ import annotations

__all__ = [
    "BadRequest",
    "CommitRejected",
    "Conflict",
    "NotFound",
    "PayloadTooLarge",
    "PlatformUnavailable",
    "ServiceError",
]


class ServiceError(Exception):
    """Root of every error the services raise on purpose."""

    #: Whether trying the same operation again later may succeed.
    retryable: bool = False


class PlatformUnavailable(ServiceError):
    """Kafka, Redis or MinIO did not answer (or answered "try again"): retry later."""

    retryable = True


class NotFound(ServiceError):
    """The namespace, graph, invocation, object, ... does not exist."""


class Conflict(ServiceError):
    """The thing exists already, or changed since it was read."""


class CommitRejected(Conflict):
    """The consumer group moved the partitions before their offsets were committed.

    Not worth retrying: the partitions' new owner gets the uncommitted messages again (the
    handlers are idempotent). Forget those offsets and go on with what is still assigned.
    """


class BadRequest(ServiceError):
    """The input is invalid; the message says what to fix."""


class Forbidden(ServiceError):
    """The caller's key may not do this here; the message names what it would need."""


class PayloadTooLarge(ServiceError):
    """A value or message is over a configured size limit."""
