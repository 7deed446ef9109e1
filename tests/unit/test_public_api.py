"""The public surface of the SDK is frozen: changing it is a deliberate, visible decision."""

import indexify
import indexify.engine

PUBLIC_API = [
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


def test_public_api_is_frozen() -> None:
    assert sorted(indexify.__all__) == PUBLIC_API


def test_every_public_name_exists() -> None:
    for name in indexify.__all__:
        assert getattr(indexify, name) is not None, name
    for name in indexify.engine.__all__:
        assert getattr(indexify.engine, name) is not None, name


def test_sdk_errors_share_one_root() -> None:
    errors = [
        indexify.ApiError,
        indexify.EncodingError,
        indexify.GraphValidationError,
        indexify.InvocationError,
        indexify.InvocationNotFinishedError,
        indexify.NotFoundError,
    ]
    for error in errors:
        assert issubclass(error, indexify.IndexifyError), error
    assert issubclass(indexify.InvocationNotFinishedError, indexify.InvocationError)
    # NonRetryable is raised by user code, not by the SDK.
    assert not issubclass(indexify.NonRetryable, indexify.IndexifyError)
