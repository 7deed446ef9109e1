"""Indexify: durable, data-intensive workflows as Python functions connected in graphs."""

__version__ = "0.1.0"

from .batch import Batch
from .client import IndexifyClient
from .data_objects import File
from .definition import GraphDefinition, NodeDefinition
from .errors import (
    ApiError,
    EncodingError,
    GraphValidationError,
    IndexifyError,
    InvalidInputError,
    InvocationError,
    InvocationNotFinishedError,
    NonRetryable,
    NotFoundError,
)
from .factory import create_client
from .functions import (
    FunctionSpec,
    IndexifyFunction,
    IndexifyRouter,
    indexify_function,
    indexify_router,
)
from .graph import Graph
from .image import Image
from .models import GraphInfo, InvocationInfo, Replay, TaskInfo, TaskLogs
from .retry import RetryPolicy

__all__ = [
    "ApiError",
    "Batch",
    "EncodingError",
    "File",
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
    "InvalidInputError",
    "InvocationError",
    "InvocationInfo",
    "InvocationNotFinishedError",
    "NodeDefinition",
    "NonRetryable",
    "NotFoundError",
    "Replay",
    "RetryPolicy",
    "TaskInfo",
    "TaskLogs",
    "__version__",
    "create_client",
    "indexify_function",
    "indexify_router",
]
