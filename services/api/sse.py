"""``invoke_object?block_until_finish=true``: the invocation's progress as Server-Sent Events.

The stream is::

    event: invocation.accepted    data: {"id": "<invocation id>"}
    event: task.created           data: <ProgressEvent JSON>      (task.started, task.finished)
    ...
    event: invocation.finished    data: <InvocationInfo JSON, without tasks>

We subscribe to the invocation's Redis progress channel *before* its event is published, so
no progress is missed; the stored status is re-checked at least every second anyway (a
progress message is fire-and-forget), and a ``: keepalive`` comment is sent when nothing
happened for ``ApiSettings.sse_keepalive_sec``. If the invocation disappears (deleted) or
Redis fails mid-stream, the stream ends with ``event: error`` / ``data: {"detail": ...}``.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator

from redis.asyncio.client import PubSub
from redis.exceptions import RedisError
from starlette.responses import StreamingResponse

from indexify.engine import TERMINAL_STATUSES
from indexify.models import InvocationInfo
from services.common.errors import PlatformUnavailable, ServiceError
from services.common.events import ProgressEvent
from services.common.logging import get_logger
from services.common.state_store import StateStore

from .service import AcceptedInvocation, ApiService

_log = get_logger(__name__)
_FORWARDED = frozenset({"task.created", "task.started", "task.finished"})
_CHECK_EVERY_SEC = 1.0


def format_event(event: str, data: str) -> bytes:
    return f"event: {event}\ndata: {data}\n\n".encode()


class ProgressSubscription:
    """One invocation's progress channel; subscribed when :meth:`open` returns."""

    def __init__(self, store: StateStore, invocation_id: str) -> None:
        self._channel = store.names.progress_channel(invocation_id)
        self._pubsub: PubSub = store.redis.pubsub()

    async def open(self) -> ProgressSubscription:
        try:
            await self._pubsub.subscribe(self._channel)
        except (RedisError, OSError) as exc:
            await self.close()
            raise PlatformUnavailable(f"Redis is unavailable ({exc}); retry later") from exc
        return self

    async def next(self, timeout: float) -> ProgressEvent | None:
        """The next progress event, or None after ``timeout`` seconds without one."""
        try:
            message = await self._pubsub.get_message(
                ignore_subscribe_messages=True, timeout=timeout
            )
        except (RedisError, OSError) as exc:
            raise PlatformUnavailable(f"Redis is unavailable ({exc})") from exc
        if message is None:
            return None
        return ProgressEvent.model_validate_json(message["data"])

    async def close(self) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self._pubsub.aclose()


async def _final(service: ApiService, accepted: AcceptedInvocation) -> InvocationInfo | None:
    """The invocation's summary once it is terminal (None while it runs)."""
    status = await service.store.invocation_status(accepted.id)
    if status is not None and status not in TERMINAL_STATUSES:
        return None  # the cheap check: the full state can be large
    loaded = await service.store.load_invocation(accepted.id)
    if loaded is None:
        raise ServiceError(f"invocation {accepted.id} was deleted while it ran")
    state = loaded[0]
    return InvocationInfo.from_state(state, with_tasks=False) if state.terminal else None


async def _events(
    service: ApiService,
    accepted: AcceptedInvocation,
    subscription: ProgressSubscription,
    keepalive_sec: float,
) -> AsyncIterator[bytes]:
    try:
        yield format_event("invocation.accepted", json.dumps({"id": accepted.id}))
        last_sent = last_check = time.monotonic()
        while True:
            event = await subscription.next(timeout=_CHECK_EVERY_SEC)
            now = time.monotonic()
            if event is not None and event.type in _FORWARDED:
                yield format_event(event.type, event.model_dump_json())
                last_sent = now
            finished = event is not None and event.type == "invocation.finished"
            if finished or event is None or now - last_check >= _CHECK_EVERY_SEC:
                last_check = now
                info = await _final(service, accepted)
                if info is not None:
                    yield format_event("invocation.finished", info.model_dump_json())
                    return
            if now - last_sent >= keepalive_sec:
                yield b": keepalive\n\n"
                last_sent = now
    except ServiceError as exc:
        _log.warning("progress stream ended early", invocation=accepted.id, error=str(exc))
        yield format_event("error", json.dumps({"detail": str(exc)}))
    finally:
        await subscription.close()


async def invoke_streaming(
    service: ApiService,
    namespace: str,
    graph: str,
    body: bytes,
    content_type: str | None,
    encoded: bool,
    keepalive_sec: float,
) -> StreamingResponse:
    """Accept, subscribe, publish, then stream (errors before the stream are plain JSON)."""
    accepted = await service.accept_invocation(namespace, graph, body, content_type, encoded)
    subscription = ProgressSubscription(service.store, accepted.id)
    try:
        await subscription.open()
    except ServiceError:
        await service.discard(accepted.state)
        raise
    try:
        await service.publish_accepted([accepted])
    except BaseException:
        await subscription.close()
        raise
    return StreamingResponse(
        _events(service, accepted, subscription, keepalive_sec),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
