"""What the scheduler reports to Prometheus besides the consumer lag (:mod:`.lag`); the
definitions are in :mod:`services.common.metrics`."""

from __future__ import annotations

import time

from indexify.engine import InvocationState
from services.common import metrics

__all__ = ["observe_invocation"]


def observe_invocation(state: InvocationState, status: str) -> None:
    """An invocation ended with ``status``: its time from acceptance (``created_at``) to its
    end. Called once its final state is saved."""
    if not state.created_at:
        return
    end = state.finished_at or time.time()
    metrics.INVOCATION_DURATION.labels(state.namespace, state.graph, status).observe(
        max(0.0, end - state.created_at)
    )
