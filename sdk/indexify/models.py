"""What clients get back: graph, invocation and task summaries (also the REST API's bodies)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from .definition import GraphDefinition
from .engine.model import Attempt, ErrorInfo, InvocationState, InvocationStatus, TaskStatus


class GraphInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    namespace: str
    name: str
    version: str
    description: str = ""
    created_at: float = 0.0
    definition: GraphDefinition

    @classmethod
    def of(cls, namespace: str, definition: GraphDefinition, created_at: float) -> GraphInfo:
        return cls(
            namespace=namespace,
            name=definition.name,
            version=definition.version,
            description=definition.description,
            created_at=created_at,
            definition=definition,
        )


class TaskInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    function: str
    kind: str
    status: TaskStatus
    attempt: int
    output_count: int = 0
    route: tuple[str, ...] | None = None
    error: ErrorInfo | None = None
    attempts: list[Attempt] = Field(default_factory=list)


class InvocationInfo(BaseModel):
    """The status of one invocation: pending, running, succeeded, failed or cancelled."""

    model_config = ConfigDict(extra="forbid")

    id: str
    namespace: str
    graph: str
    graph_version: str
    status: InvocationStatus
    error: ErrorInfo | None = None
    error_function: str | None = None
    created_at: float = 0.0
    finished_at: float | None = None
    outputs: dict[str, int] = Field(default_factory=dict)
    tasks: list[TaskInfo] = Field(default_factory=list)

    @classmethod
    def from_state(cls, state: InvocationState, *, with_tasks: bool = True) -> InvocationInfo:
        tasks = (
            [
                TaskInfo(
                    id=r.task.id,
                    function=r.task.function,
                    kind=r.task.kind,
                    status=r.status,
                    attempt=r.task.attempt,
                    output_count=r.output_count,
                    route=r.route,
                    error=r.error,
                    attempts=r.attempts,
                )
                for r in state.tasks.values()
            ]
            if with_tasks
            else []
        )
        return cls(
            id=state.invocation_id,
            namespace=state.namespace,
            graph=state.graph,
            graph_version=state.graph_version,
            status=state.status,
            error=state.error,
            error_function=state.error_function,
            created_at=state.created_at,
            finished_at=state.finished_at,
            outputs={fn: state.output_count(fn) for fn in state.outputs},
            tasks=tasks,
        )


class TaskLogs(BaseModel):
    """What one task printed, and its traceback when it failed."""

    model_config = ConfigDict(extra="forbid")

    task_id: str
    function: str
    stdout: str = ""
    stderr: str = ""
    traceback: str = ""
