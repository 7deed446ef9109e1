"""The scheduler service: consumes events, drives the engine with state in Redis, emits tasks."""

from .delayed import DelayedTasks
from .service import Scheduler

__all__ = ["DelayedTasks", "Scheduler"]
