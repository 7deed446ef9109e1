"""Prometheus metrics of every service, defined once (``prometheus_client``).

The API serves them at ``GET /metrics`` (services/api/app.py); the scheduler and each
executor on a port of their own (``INDEXIFY_SCHEDULER_METRICS_PORT``,
``INDEXIFY_EXECUTOR_METRICS_PORT``, 0 = off) with prometheus_client's own HTTP server
(:func:`serve`, bound to 127.0.0.1 unless ``*_METRICS_HOST`` says otherwise).

One registry per process: prometheus_client's default one, which also carries the process
(CPU, memory, open files) and Python (GC) collectors. The metrics are defined here at import,
which is the library's idiom: a process is what Prometheus scrapes, a metric object does no
I/O, and a service only touches the ones of its side. Everything is cheap on the hot path (an
increment or an observation under a lock); nothing here calls Redis or Kafka.

Labels are bounded: ``namespace``, ``graph``, ``function`` (names of registered graphs),
``outcome``, the backend, the route *template*, a dead letter's reason *kind*; never an
invocation or task id.

=========================================  =========  =================================
metric                                     kind       who
=========================================  =========  =================================
``indexify_tasks_total``                   counter    executor: runs by outcome
``indexify_task_duration_seconds``         histogram  executor: run time by outcome
``indexify_task_queue_depth``              gauge      executor: fetched, awaiting a worker
``indexify_executor_slots``                gauge      executor: worker processes
``indexify_executor_slots_busy``           gauge      executor: workers running a task
``indexify_task_consumer_lag``             gauge      scheduler: per function topic
``indexify_events_consumer_lag``           gauge      scheduler: the events topic
``indexify_invocation_duration_seconds``   histogram  scheduler, executor: accepted to finished
``indexify_dead_letters_total``            counter    any: by service and reason kind
``indexify_backend_errors_total``          counter    any: Redis, Kafka, MinIO failures
``indexify_http_requests_total``           counter    api: by method, route and status
``indexify_http_request_duration_seconds`` histogram  api: by method and route
=========================================  =========  =================================
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    Metric,
    generate_latest,
)
from prometheus_client import start_http_server as _start_http_server
from prometheus_client.registry import Collector

from indexify.engine import InvocationState

from .logging import get_logger

__all__ = [
    "BACKEND_ERRORS",
    "BATCH_SIZE",
    "BATCH_WAIT",
    "CONTENT_TYPE",
    "DEAD_LETTERS",
    "EVENTS_CONSUMER_LAG",
    "EXECUTOR_SLOTS",
    "EXECUTOR_SLOTS_BUSY",
    "HTTP_DURATION",
    "HTTP_REQUESTS",
    "INVOCATION_DURATION",
    "TASKS",
    "TASK_CONSUMER_LAG",
    "TASK_DURATION",
    "TASK_HINTS",
    "TASK_QUEUE_DEPTH",
    "FunctionKey",
    "MetricsPortUnavailable",
    "MetricsServer",
    "backend_error",
    "dead_letter_kind",
    "function_of_topic",
    "last_scraped",
    "observe_invocation",
    "render",
    "serve",
]

_log = get_logger(__name__)

#: The Content-Type of what :func:`render` returns.
CONTENT_TYPE = CONTENT_TYPE_LATEST

_FUNCTION = ("namespace", "graph", "function")
#: Seconds: from a few milliseconds (a step of a chain) to an hour (a long model run).
_TASK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
_INVOCATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600)
_HTTP_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

# -- executor ---------------------------------------------------------------------------------

TASKS = Counter(
    "indexify_tasks",
    "Task runs finished on this executor, by outcome: success, cancelled (its worker was "
    "stopped by a cancel), or the error's kind (user: the function raised or timed out; "
    "platform: a worker died, retried without spending retries; permanent: the code cannot "
    "load here)",
    [*_FUNCTION, "outcome"],
)
TASK_DURATION = Histogram(
    "indexify_task_duration_seconds",
    "How long a task run took on its worker (inputs read, function run, outputs stored)",
    [*_FUNCTION, "outcome"],
    buckets=_TASK_BUCKETS,
)
TASK_QUEUE_DEPTH = Gauge(
    "indexify_task_queue_depth",
    "Task messages this executor fetched that wait for a worker (its local queue)",
    list(_FUNCTION),
)
BATCH_SIZE = Histogram(
    "indexify_batch_size",
    "Tasks per call of a batched function on this executor (batches it assembled)",
    list(_FUNCTION),
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096),
)
BATCH_WAIT = Histogram(
    "indexify_batch_wait_seconds",
    "How long a batch of a batched function stayed open for tasks to join (at most its "
    "max_wait; less when it filled first)",
    list(_FUNCTION),
    buckets=_TASK_BUCKETS,
)
EXECUTOR_SLOTS = Gauge("indexify_executor_slots", "Worker processes of this executor")
EXECUTOR_SLOTS_BUSY = Gauge(
    "indexify_executor_slots_busy", "Worker processes of this executor running a task now"
)
TASK_HINTS = Counter(
    "indexify_executor_task_hints",
    "Task hints received: started here (taken), passed over (no free worker, not a plain "
    "task), or for a partition of another executor (elsewhere)",
    ["outcome"],
)

# -- scheduler --------------------------------------------------------------------------------

TASK_CONSUMER_LAG = Gauge(
    "indexify_task_consumer_lag",
    "Task messages of the function not yet completed by the executors' consumer group (end "
    "offsets minus committed offsets of its task topic): queued or running. Every scheduler "
    "reports it; aggregate with max, not sum",
    list(_FUNCTION),
)
EVENTS_CONSUMER_LAG = Gauge(
    "indexify_events_consumer_lag",
    "Events not yet committed by the schedulers' consumer group (end offsets minus committed "
    "offsets of the events topic). Every scheduler reports it; aggregate with max",
)
INVOCATION_DURATION = Histogram(
    "indexify_invocation_duration_seconds",
    "From an invocation's acceptance by the API to its end, by final status (succeeded, "
    "failed, cancelled)",
    ["namespace", "graph", "outcome"],
    buckets=_INVOCATION_BUCKETS,
)


def observe_invocation(state: InvocationState, status: str) -> None:
    """An invocation ended with ``status``: its time from acceptance (``created_at``) to its
    end, observed by the process that saved its final state (the scheduler, or an executor
    that finished it: :mod:`services.executor.finisher`)."""
    if not state.created_at:
        return
    end = state.finished_at or time.time()
    INVOCATION_DURATION.labels(state.namespace, state.graph, status).observe(
        max(0.0, end - state.created_at)
    )


# -- every service ----------------------------------------------------------------------------

DEAD_LETTERS = Counter(
    "indexify_dead_letters",
    "Messages parked on the dead-letter topic, by the service that consumed them and the "
    "kind of reason (undecodable, handler_error, unpublishable, unknown_graph_version, other)",
    ["service", "reason"],
)
BACKEND_ERRORS = Counter(
    "indexify_backend_errors",
    "Failures of a backend call (redis, kafka, minio) as the adapters translate them; a "
    "missing object or a rebalance is not counted",
    ["backend"],
)

# -- api --------------------------------------------------------------------------------------

HTTP_REQUESTS = Counter(
    "indexify_http_requests",
    "HTTP requests answered by the API, by method, route template (<unmatched> for paths no "
    "route has) and status",
    ["method", "route", "status"],
)
HTTP_DURATION = Histogram(
    "indexify_http_request_duration_seconds",
    "Time to answer an HTTP request (to the end of the body: a stream counts until it ends)",
    ["method", "route"],
    buckets=_HTTP_BUCKETS,
)

# -- helpers ----------------------------------------------------------------------------------


def backend_error(backend: str) -> None:
    """Count one failed call to ``backend`` (``redis``, ``kafka`` or ``minio``)."""
    BACKEND_ERRORS.labels(backend).inc()


_REASON_KINDS = (
    ("invalid message", "undecodable"),
    ("empty message", "undecodable"),
    ("failed on this", "handler_error"),
    ("cannot be published", "unpublishable"),
    ("has no version", "unknown_graph_version"),
)


def dead_letter_kind(reason: str) -> str:
    """The bounded label of a dead letter's free-text ``reason`` (see
    :data:`DEAD_LETTERS`): what the services that park messages write, else ``other``."""
    for marker, kind in _REASON_KINDS:
        if marker in reason:
            return kind
    return "other"


@dataclass(frozen=True)
class FunctionKey:
    namespace: str
    graph: str
    function: str


def function_of_topic(topic: str, prefix: str) -> FunctionKey | None:
    """The function a task topic (``<prefix>.tasks.<placement>.<ns>.<graph>.<fn>``) belongs
    to; None for any other topic. Names hold no dots (they are validated), placements may."""
    head = f"{prefix}.tasks."
    if not topic.startswith(head):
        return None
    parts = topic[len(head) :].rsplit(".", 3)
    if len(parts) != 4 or not all(parts):
        return None
    return FunctionKey(parts[1], parts[2], parts[3])


class _ScrapeClock(Collector):
    """Collects no metric; notes when the process's metrics were last collected (a scrape of
    :func:`serve`'s port, or :func:`render`)."""

    def __init__(self) -> None:
        self.at = float("-inf")

    def describe(self) -> list[Metric]:
        return []  # (else registering it would collect once)

    def collect(self) -> list[Metric]:
        self.at = time.monotonic()  # one float: atomic, read from the event loop's thread
        return []


_SCRAPES = _ScrapeClock()
REGISTRY.register(_SCRAPES)


def last_scraped() -> float:
    """When (``time.monotonic()``) this process's metrics were last scraped; ``-inf``
    before the first scrape. Work done only for the metrics can wait for someone to read
    them (the scheduler's consumer lag, :mod:`services.scheduler.lag`)."""
    return _SCRAPES.at


def render() -> bytes:
    """This process's metrics in Prometheus' text format (:data:`CONTENT_TYPE`)."""
    return generate_latest()


@dataclass
class MetricsServer:
    """prometheus_client's HTTP server (a daemon thread) serving this process's metrics."""

    server: WSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


class MetricsPortUnavailable(OSError):
    """The metrics port cannot be listened on; the message says which and why."""


def serve(port: int, host: str = "127.0.0.1") -> MetricsServer | None:
    """Serve ``/metrics`` on ``host:port`` and log where (None, and nothing served, when
    ``port`` is 0); :class:`MetricsPortUnavailable` when the port is taken."""
    if port == 0:
        return None
    try:
        server, thread = _start_http_server(port, addr=host)
    except OSError as exc:
        raise MetricsPortUnavailable(
            f"cannot serve metrics on {host}:{port}: {exc} (choose another port, or 0 for none)"
        ) from exc
    started = MetricsServer(server, thread)
    _log.info("serving metrics", url=f"http://{host}:{started.port}/metrics")
    return started
