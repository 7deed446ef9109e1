"""A steady stream of invocations while a fault happens, and how long the stream was disturbed.

:class:`SteadyLoad` submits map-reduce invocations at a fixed rate from a thread, recording
when each was sent (the client's clock; the stack runs on the same machine, so the server's
``finished_at`` is on the same clock). After the run, :func:`timings` reads each invocation's
end, and :func:`recovery` says how long after a fault the stream stayed disturbed: the last
moment an invocation that was refused, or took far longer than before the fault, ended.
"""

from __future__ import annotations

import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from workload import Submitted, map_reduce_graph

from indexify import IndexifyClient, create_client
from indexify.errors import ApiError, IndexifyError

GRAPH = "chaos_map_reduce"


@dataclass
class Sent:
    submitted: Submitted | None  # None: refused
    at: float  # time.time() when the request was sent
    answered: float  # time.time() when the API answered (accepted or refused)


@dataclass
class SteadyLoad:
    """``rate`` invocations of ``chaos_map_reduce`` per second until :meth:`stop`, each sent
    on time whatever became of the ones before (a request stuck in a stalled API does not hold
    the next ones back: each has a thread of its own, up to ``max_pending`` at once)."""

    url: str
    rate: float = 3.0
    max_pending: int = 256
    sent: list[Sent] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="steady-load", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        client = create_client(service_url=self.url)  # shared: a connection per thread
        client.register_compute_graph(map_reduce_graph())  # the same version: its type hints
        try:
            with ThreadPoolExecutor(self.max_pending, thread_name_prefix="steady-load") as pool:
                i = 0
                next_at = time.monotonic()
                while not self._stop.is_set():
                    pool.submit(self._send, client, 3 + i % 5)
                    i += 1
                    next_at += 1 / self.rate
                    self._stop.wait(max(0.0, next_at - time.monotonic()))
        finally:
            client.close()

    def _send(self, client: IndexifyClient, n: int) -> None:
        at = time.time()
        try:
            inv = client.invoke_graph_with_object(GRAPH, n=n)
        except (ApiError, IndexifyError, OSError):  # refused or unreachable: not accepted
            sent = Sent(None, at, time.time())
        else:
            sent = Sent(Submitted(GRAPH, {"n": n}, inv), at, time.time())
        with self._lock:
            self.sent.append(sent)

    def accepted_since(self, since: float) -> list[Submitted]:
        """The invocations accepted so far that were sent at ``since`` (``time.time()``) or
        later, in the order they were sent."""
        with self._lock:
            sent = sorted(self.sent, key=lambda s: s.at)
        return [s.submitted for s in sent if s.at >= since and s.submitted is not None]

    def stop(self) -> list[Submitted]:
        """Stop submitting, wait for the answers to what was sent; the accepted invocations."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=180)
        with self._lock:
            self.sent.sort(key=lambda s: s.at)
            return [s.submitted for s in self.sent if s.submitted is not None]


@dataclass(frozen=True)
class Timing:
    at: float  # sent
    end: float  # finished (or refused)
    ok: bool  # accepted and finished

    @property
    def latency(self) -> float:
        return self.end - self.at


def timings(url: str, sent: list[Sent]) -> list[Timing]:
    """Each request's end: its invocation's ``finished_at``, or the refusal. Call once every
    invocation is terminal (after ``check_invariants``)."""
    client = create_client(service_url=url)
    try:
        out = []
        for s in sent:
            if s.submitted is None:
                out.append(Timing(s.at, s.answered, ok=False))
                continue
            info = client.invocation_status(s.submitted.graph, s.submitted.invocation_id)
            finished = info.finished_at
            out.append(Timing(s.at, finished if finished is not None else time.time(), ok=True))
        return out
    finally:
        client.close()


def write_csv(ts: list[Timing], path: Path, origin: float) -> None:
    """The timings as CSV (seconds since ``origin``): for a look at what a fault did."""
    lines = ["sent,ended,latency,accepted"]
    lines += [f"{t.at - origin:.3f},{t.end - origin:.3f},{t.latency:.3f},{int(t.ok)}" for t in ts]
    path.write_text("\n".join(lines) + "\n")


@dataclass(frozen=True)
class Recovery:
    seconds: float  # from the fault until the stream flowed normally again
    threshold: float  # the latency counted as disturbed
    baseline: float  # median latency before the fault
    disturbed: int  # requests refused or slower than the threshold
    worst: float  # the longest latency after the fault

    def __str__(self) -> str:
        return (
            f"{self.seconds:.1f} s (baseline latency {self.baseline:.2f} s, {self.disturbed} "
            f"disturbed over {self.threshold:.1f} s, worst {self.worst:.1f} s)"
        )


def recovery(
    ts: list[Timing],
    fault_at: float,
    *,
    since: float | None = None,
    before: float | None = None,
    baseline_until: float | None = None,
    baseline_window: float = 10.0,
) -> Recovery:
    """How long after ``fault_at`` (``time.time()``) requests kept being refused or slow:
    the end of the last disturbed request that ended after ``fault_at`` (0 when none was).
    Only requests sent from ``since`` (e.g. a restore) and before ``before`` (e.g. the next
    fault) count; the normal latency is the median of requests that ended in the
    ``baseline_window`` seconds before ``baseline_until`` (default: ``fault_at``)."""
    until = fault_at if baseline_until is None else baseline_until
    normal = [t.latency for t in ts if t.ok and until - baseline_window <= t.end < until]
    baseline = statistics.median(normal) if normal else 1.0
    threshold = max(2.0, 3 * baseline)
    after = [
        t
        for t in ts
        if t.end >= fault_at
        and (since is None or t.at >= since)
        and (before is None or t.at < before)
    ]
    disturbed = [t for t in after if not t.ok or t.latency > threshold]
    last = max((t.end for t in disturbed), default=fault_at)
    worst = max((t.latency for t in after), default=0.0)
    return Recovery(last - fault_at, threshold, baseline, len(disturbed), worst)
