"""Request and response bodies of the REST API (what ``/docs`` shows).

Graph and invocation summaries are the SDK's own models (:class:`indexify.models.GraphInfo`,
:class:`indexify.models.InvocationInfo`, :class:`indexify.models.TaskLogs`), so the remote
client parses exactly what the in-process client returns.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from indexify.engine import ErrorInfo
from indexify.engine.model import InvocationStatus
from indexify.models import GraphInfo, InvocationInfo, Replay, TaskLogs
from services.common.executor_registry import ExecutorInfo


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorBody(_Body):
    """Every 4xx/5xx answer: ``detail`` says what went wrong and what to fix; a 422 also
    lists the invalid fields in ``errors`` (each with ``loc``, ``msg`` and ``type``)."""

    detail: str
    errors: list[dict[str, Any]] | None = None


class NamespaceCreate(_Body):
    name: str = Field(description="1-100 letters, digits, '_' or '-'")


class NamespaceCreated(_Body):
    name: str
    created: bool


class NamespaceList(_Body):
    namespaces: list[str]


class GraphUpload(_Body):
    """``definition`` is ``Graph.definition()`` as JSON; ``code`` is base64 of
    ``Graph.serialize()`` (cloudpickle)."""

    definition: dict[str, Any]
    code: str | None = Field(
        default=None,
        description="base64 of the graph's cloudpickled code; may be left out to make an "
        "already recorded version current again",
    )


class GraphRegistered(GraphInfo):
    """The registered graph; ``created`` is false when this exact version was already there."""

    created: bool
    warnings: list[str] = Field(
        default_factory=list,
        description="what may go wrong, e.g. a function whose placement no live executor "
        "offers (its tasks will wait until one that does runs)",
    )


class GraphList(_Body):
    compute_graphs: list[GraphInfo]


class GraphDeleted(_Body):
    name: str
    deleted: bool = True
    invocations: int = Field(description="how many invocations were deleted with it")


class OutputValue(_Body):
    id: str = Field(description="'<task_id>:<index>', also the path of the raw value")
    content_type: Literal["application/json", "application/x-cloudpickle"] | str
    data: str = Field(description="base64 of the encoded value")


_FINAL_OUTPUTS = (
    "with `with_outputs`, once the invocation succeeded: function -> its values, for the "
    "functions nothing follows, when they are at most 100 values of 64 KiB in all; null "
    "otherwise (read them with `GET .../fn/{function}/outputs`)"
)


class InvocationAccepted(_Body):
    id: str
    status: InvocationStatus | None = Field(
        default=None,
        description="with `wait_sec`: the invocation's status when answered (terminal unless "
        "the wait ran out); without: not set",
    )
    waiting: str | None = Field(
        default=None,
        description="with `wait_sec`, if it still runs: why it cannot go on, e.g. `no live "
        "executor offers gpu=h100 (function 'embed': 1 task)`",
    )
    final_outputs: dict[str, list[OutputValue]] | None = Field(
        default=None, description=_FINAL_OUTPUTS
    )


class InvocationWithOutputs(InvocationInfo):
    """An invocation's status; with ``with_outputs``, also its final outputs."""

    final_outputs: dict[str, list[OutputValue]] | None = Field(
        default=None, description=_FINAL_OUTPUTS
    )


class InvocationList(_Body):
    invocations: list[InvocationInfo]


class InvocationDeleted(_Body):
    id: str
    deleted: bool = True


class CancelRequested(_Body):
    id: str
    status: InvocationStatus = Field(description="the status when the cancel was requested")
    requested: bool = Field(description="false when the invocation had already finished")


class ReplayRequested(_Body):
    id: str
    generation: int = Field(
        description="the generation the invocation will be computed as (its status says "
        "`generation` once the replay started; until it ends it reads `pending`/`running`)"
    )


class ReplaySelection(_Body):
    invocations: list[str] | None = Field(
        default=None,
        max_length=100_000,
        description="the invocations to replay (ids of this graph); null or left out: all",
    )


class ReplayList(_Body):
    replays: list[Replay]


class OutputCounts(_Body):
    status: InvocationStatus
    outputs: dict[str, int]


class FunctionOutputs(_Body):
    """One page of the values of one function, in order. ``error`` is set (and ``status`` is
    ``failed``) when that function failed; outputs it produced before failing are still
    listed."""

    status: InvocationStatus
    function: str
    error: ErrorInfo | None = None
    outputs: list[OutputValue]
    next_cursor: str | None = Field(
        default=None,
        description="pass as `cursor` for the next page; null: every output recorded so far "
        "was listed (while the invocation runs, more may come)",
    )


class TaskLogsPage(_Body):
    """The logs of one page of a function's tasks."""

    logs: list[TaskLogs]
    next_cursor: str | None = Field(
        default=None, description="pass as `cursor` for the next page; null: no more tasks"
    )


class ExecutorList(_Body):
    executors: list[ExecutorInfo]


class FunctionQueues(_Body):
    """Tasks of each function of a graph waiting on the live executors for a worker."""

    queued: dict[str, int] = Field(
        description="function -> tasks fetched or claimed by live executors and not started "
        "(all versions of the graph), as of the executors' last heartbeats"
    )
    executors: int = Field(description="live executors heard from")


class Health(_Body):
    status: Literal["ok", "unavailable"]
    checks: dict[str, str]
    detail: str = ""
