"""The pure execution engine shared by the in-process runner and the scheduler service."""

from .engine import DEFAULT_MAX_REDUCE_BATCH, Engine, task_id_for
from .model import (
    INPUT_TASK_ID,
    TERMINAL_STATUSES,
    Attempt,
    Command,
    EngineEvent,
    ErrorInfo,
    FinishInvocation,
    InvocationCancelled,
    InvocationCreated,
    InvocationState,
    ReducerState,
    RunTask,
    Task,
    TaskFinished,
    TaskRecord,
    ValueRange,
)

__all__ = [
    "DEFAULT_MAX_REDUCE_BATCH",
    "INPUT_TASK_ID",
    "TERMINAL_STATUSES",
    "Attempt",
    "Command",
    "Engine",
    "EngineEvent",
    "ErrorInfo",
    "FinishInvocation",
    "InvocationCancelled",
    "InvocationCreated",
    "InvocationState",
    "ReducerState",
    "RunTask",
    "Task",
    "TaskFinished",
    "TaskRecord",
    "ValueRange",
    "task_id_for",
]
