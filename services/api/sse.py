"""``invoke_object?block_until_finish=true``: the invocation's progress as Server-Sent Events;
and the long poll behind ``GET .../invocations/{id}?wait_sec=``.

The stream is::

    event: invocation.accepted    data: {"id": "<invocation id>"}
    event: task.created           data: <ProgressEvent JSON>      (task.started, task.finished)
    event: invocation.waiting     data: <ProgressEvent JSON>      (``waiting``: why it cannot
    ...                                                            go on; null: it can again)
    event: invocation.finished    data: <InvocationInfo JSON, without tasks>

``GET .../invocations/{id}/events`` streams the same for an invocation that runs already.

Both listen through the process's :class:`.progress_hub.ProgressHub` (one shared pub/sub
connection). A stream follows the invocation's progress channel, subscribed *before* its event
is published, so no progress is missed; a long poll watches for the invocation's id on the
finished channel. Either re-checks the stored status at least every second anyway (a
progress message is fire-and-forget). A ``: keepalive`` comment is sent when nothing happened
for ``ApiSettings.sse_keepalive_sec``. If the invocation disappears (deleted) or Redis fails
mid-stream, the stream ends with ``event: error`` / ``data: {"detail": ...}``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

from starlette.responses import StreamingResponse

from indexify.engine import TERMINAL_STATUSES, InvocationState
from indexify.models import InvocationInfo
from services.common.errors import ServiceError
from services.common.events import ProgressEvent
from services.common.logging import get_logger

from .progress_hub import Listener
from .service import AcceptedInvocation, ApiService
from .waiting import InvocationWaiting

_log = get_logger(__name__)
_FORWARDED = frozenset({"task.created", "task.started", "task.finished"})
_CHECK_EVERY_SEC = 1.0


def format_event(event: str, data: str) -> bytes:
    return f"event: {event}\ndata: {data}\n\n".encode()


async def _next(listener: Listener, timeout: float) -> tuple[str, bytes] | None:
    """The next progress event as ``(type, its JSON)`` (forwarded as is, not parsed into a
    model and dumped again), or None after ``timeout`` s or when the hub says re-check."""
    try:
        data = await asyncio.wait_for(listener.queue.get(), timeout)
    except TimeoutError:
        return None
    if data is None:
        return None
    try:
        kind = str(json.loads(data)["type"])
    except (ValueError, KeyError, TypeError):
        kind = ""  # not a progress event: skipped by the callers
    return kind, data


async def _final(
    service: ApiService, invocation_id: str, *, finished: bool = False
) -> InvocationInfo | None:
    """The invocation's summary once it is terminal (None while it runs); ``finished``: the
    scheduler said so, skip the cheap status check."""
    if not finished:
        status = await service.store.invocations.invocation_status(invocation_id)
        if status is not None and status not in TERMINAL_STATUSES:
            return None  # the cheap check: the full state can be large
    loaded = await service.store.invocations.load_invocation(invocation_id)
    if loaded is None:
        raise ServiceError(f"invocation {invocation_id} was deleted while it ran")
    state = loaded[0]
    return InvocationInfo.from_state(state, with_tasks=False) if state.terminal else None


class LongPoll:
    """``with LongPoll(service, invocation_id) as poll``: watches the finished channel from
    its start, so a finish after that is not missed by :meth:`wait`, which then checks the
    stored status (unless the caller just did, after the start) and waits."""

    def __init__(self, service: ApiService, invocation_id: str) -> None:
        self._service = service
        self.invocation_id = invocation_id
        self._watch = service.hub.watch(invocation_id)

    def __enter__(self) -> LongPoll:
        return self

    def __exit__(self, *exc: object) -> None:
        self._service.hub.unwatch(self._watch)

    async def wait(
        self,
        wait_sec: float,
        *,
        until_waiting: bool = False,
        checked: bool = False,
        state: InvocationState | None = None,
        version: tuple[str, str, str] | None = None,
    ) -> tuple[bool, str | None]:
        """Return once the invocation is terminal or gone, or after ``wait_sec``; with
        ``until_waiting`` also once it waits for an executor nobody offers. Returns
        ``(True, status)`` when a status check ended the wait (None: gone), else
        ``(False, None)``: the status is unknown (it finished, or the wait ended).

        ``checked``: the caller read the status after the watch started, and it was not
        terminal (``state``: the summary it read; ``version``: the invocation's ``(namespace,
        graph, version)``, for the waiting note). The status is re-checked at least every
        second as well (a pub/sub message can be lost)."""
        service, invocation_id, watch = self._service, self.invocation_id, self._watch
        deadline = time.monotonic() + wait_sec
        waiting = InvocationWaiting(
            service.placement, service.store, invocation_id, state=state, version=version
        )
        while True:
            if not checked:
                status = await service.store.invocations.invocation_status(invocation_id)
                if status is None or status in TERMINAL_STATUSES:
                    return True, status
            checked = False
            if until_waiting and await waiting.note() is not None:
                return False, None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False, None
            try:
                async with asyncio.timeout(min(_CHECK_EVERY_SEC, remaining)):
                    await watch.event.wait()
            except TimeoutError:
                continue
            if watch.finished:
                return False, None  # published after the terminal state was saved (or deletion)
            watch.event.clear()


def _waiting_event(invocation_id: str, note: str | None) -> bytes:
    event = ProgressEvent(type="invocation.waiting", invocation_id=invocation_id, waiting=note)
    return format_event(event.type, event.model_dump_json())


async def _events(
    service: ApiService,
    invocation_id: str,
    listener: Listener,
    keepalive_sec: float,
) -> AsyncIterator[bytes]:
    waiting = InvocationWaiting(service.placement, service.store, invocation_id)
    note: str | None = None  # the last waiting note sent
    try:
        yield format_event("invocation.accepted", json.dumps({"id": invocation_id}))
        last_sent = last_check = time.monotonic()
        while True:
            event = await _next(listener, timeout=_CHECK_EVERY_SEC)
            now = time.monotonic()
            kind = event[0] if event is not None else None
            if event is not None and event[0] in _FORWARDED:
                yield format_event(event[0], event[1].decode())
                last_sent = now
            finished = kind == "invocation.finished"
            if finished or event is None or now - last_check >= _CHECK_EVERY_SEC:
                last_check = now
                info = await _final(service, invocation_id, finished=finished)
                if info is not None:
                    yield format_event("invocation.finished", info.model_dump_json())
                    return
                now_waiting = await waiting.note()
                if now_waiting != note:  # it started waiting, or waits no more
                    note = now_waiting
                    yield _waiting_event(invocation_id, note)
                    last_sent = now
            if now - last_sent >= keepalive_sec:
                yield b": keepalive\n\n"
                last_sent = now
    except ServiceError as exc:
        _log.warning("progress stream ended early", invocation=invocation_id, error=str(exc))
        yield format_event("error", json.dumps({"detail": str(exc)}))
    finally:
        await service.hub.unlisten(listener)


async def invoke_streaming(
    service: ApiService,
    namespace: str,
    graph: str,
    body: bytes,
    content_type: str | None,
    encoded: bool,
    keepalive_sec: float,
    *,
    may_pickle: bool = False,
) -> StreamingResponse:
    """Accept, subscribe, publish, then stream (errors before the stream are plain JSON)."""
    accepted = await service.accept_invocation(
        namespace, graph, body, content_type, encoded, may_pickle=may_pickle
    )
    return await stream_accepted(service, accepted, keepalive_sec)


async def stream_accepted(
    service: ApiService, accepted: AcceptedInvocation, keepalive_sec: float
) -> StreamingResponse:
    """Subscribe to an accepted invocation's progress, publish it, then stream."""
    try:
        listener = await service.hub.listen(accepted.id)
    except ServiceError:
        await service.discard(accepted.state)
        raise
    try:
        await service.publish_accepted([accepted])
    except BaseException:
        await service.hub.unlisten(listener)
        raise
    return _stream(service, accepted.id, listener, keepalive_sec)


async def follow_stream(
    service: ApiService, invocation_id: str, keepalive_sec: float
) -> StreamingResponse:
    """The progress of an invocation that runs already (``indexify-cli follow``): the same
    stream, from now on; it ends at once with ``invocation.finished`` if it ended."""
    listener = await service.hub.listen(invocation_id)
    return _stream(service, invocation_id, listener, keepalive_sec)


def _stream(
    service: ApiService, invocation_id: str, listener: Listener, keepalive_sec: float
) -> StreamingResponse:
    return StreamingResponse(
        _events(service, invocation_id, listener, keepalive_sec),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
