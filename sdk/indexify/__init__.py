"""Indexify: durable, data-intensive workflows as Python functions connected in graphs."""

__version__ = "0.1.0"

from .client import IndexifyClient, create_client  # noqa: E402
from .definition import GraphDefinition, NodeDefinition  # noqa: E402
from .errors import (  # noqa: E402
    ApiError,
    EncodingError,
    GraphValidationError,
    IndexifyError,
    InvocationError,
    InvocationNotFinishedError,
    NonRetryable,
    NotFoundError,
)
from .functions import (  # noqa: E402
    FunctionSpec,
    IndexifyFunction,
    IndexifyRouter,
    indexify_function,
    indexify_router,
)
from .graph import Graph  # noqa: E402
from .image import Image  # noqa: E402
from .models import GraphInfo, InvocationInfo, TaskInfo, TaskLogs  # noqa: E402
from .retry import RetryPolicy  # noqa: E402

__all__ = [
    "ApiError",
    "EncodingError",
    "FunctionSpec",
    "Graph",
    "GraphDefinition",
    "GraphInfo",
    "GraphValidationError",
    "Image",
    "IndexifyClient",
    "IndexifyError",
    "IndexifyFunction",
    "IndexifyRouter",
    "InvocationError",
    "InvocationInfo",
    "InvocationNotFinishedError",
    "NodeDefinition",
    "NonRetryable",
    "NotFoundError",
    "RetryPolicy",
    "TaskInfo",
    "TaskLogs",
    "__version__",
    "create_client",
    "indexify_function",
    "indexify_router",
]
