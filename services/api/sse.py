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
import weakref
from collections.abc import AsyncIterator

from redis.asyncio.client import PubSub
from redis.exceptions import RedisError
from starlette.responses import StreamingResponse

from indexify.engine import TERMINAL_STATUSES
from indexify.models import InvocationInfo
from services.common.errors import PlatformUnavailable, ServiceError
from services.common.logging import get_logger
from services.common.state_store import StateStore

from .service import AcceptedInvocation, ApiService

_log = get_logger(__name__)
_FORWARDED = frozenset({"task.created", "task.started", "task.finished"})
_CHECK_EVERY_SEC = 1.0


def format_event(event: str, data: str) -> bytes:
    return f"event: {event}\ndata: {data}\n\n".encode()


class ProgressSubscription:
    """One invocation's progress channel; subscribed when :meth:`open` returns.

    The pub/sub connection is reused: :meth:`close` unsubscribes, reads up to the server's
    confirmation (so no message of this channel is left) and parks the connection for the
    next subscription of the same store, instead of opening a connection per invocation.
    """

    def __init__(self, store: StateStore, invocation_id: str) -> None:
        self._store = store
        self._channel = store.names.progress_channel(invocation_id)
        idle = _IDLE.get(store)
        self._pubsub: PubSub = idle.pop() if idle else store.redis.pubsub()

    async def open(self) -> ProgressSubscription:
        try:
            await self._pubsub.subscribe(self._channel)
        except (RedisError, OSError) as exc:
            await self._discard()
            raise PlatformUnavailable(f"Redis is unavailable ({exc}); retry later") from exc
        return self

    async def next(self, timeout: float) -> tuple[str, bytes] | None:
        """The next progress event as ``(type, its JSON)`` (the JSON is forwarded as is, not
        parsed into a model and dumped again), or None after ``timeout`` seconds without one."""
        try:
            message = await self._pubsub.get_message(
                ignore_subscribe_messages=True, timeout=timeout
            )
        except (RedisError, OSError) as exc:
            raise PlatformUnavailable(f"Redis is unavailable ({exc})") from exc
        if message is None:
            return None
        data: bytes = message["data"]
        try:
            kind = str(json.loads(data)["type"])
        except (ValueError, KeyError, TypeError):
            kind = ""  # not a progress event: skipped by the callers
        return kind, data

    async def close(self) -> None:
        pubsub = self._pubsub
        try:
            await pubsub.unsubscribe()
            deadline = time.monotonic() + _CHECK_EVERY_SEC
            while pubsub.subscribed and time.monotonic() < deadline:
                await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
        except BaseException:
            await self._discard()
            raise
        idle = _IDLE.setdefault(self._store, [])
        if pubsub.subscribed or len(idle) >= _IDLE_MAX:
            await self._discard()
        else:
            idle.append(pubsub)

    async def _discard(self) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self._pubsub.aclose()


#: Pub/sub connections parked between subscriptions, per store (see ProgressSubscription).
_IDLE: weakref.WeakKeyDictionary[StateStore, list[PubSub]] = weakref.WeakKeyDictionary()
_IDLE_MAX = 64


async def _final(
    service: ApiService, accepted: AcceptedInvocation, *, finished: bool = False
) -> InvocationInfo | None:
    """The invocation's summary once it is terminal (None while it runs); ``finished``: the
    scheduler said so, skip the cheap status check."""
    if not finished:
        status = await service.store.invocation_status(accepted.id)
        if status is not None and status not in TERMINAL_STATUSES:
            return None  # the cheap check: the full state can be large
    loaded = await service.store.load_invocation(accepted.id)
    if loaded is None:
        raise ServiceError(f"invocation {accepted.id} was deleted while it ran")
    state = loaded[0]
    return InvocationInfo.from_state(state, with_tasks=False) if state.terminal else None


async def wait_until_terminal(service: ApiService, invocation_id: str, wait_sec: float) -> None:
    """A long poll: return once the invocation is terminal or gone, or after ``wait_sec``.

    Subscribes to the progress channel first, then checks the stored status, so a finish
    between the two is not missed; the status is re-checked at least every second as well.
    """
    if wait_sec <= 0 or await _terminal_or_gone(service, invocation_id):
        return
    deadline = time.monotonic() + wait_sec
    subscription = await ProgressSubscription(service.store, invocation_id).open()
    try:
        while not await _terminal_or_gone(service, invocation_id):
            while (remaining := deadline - time.monotonic()) > 0:
                event = await subscription.next(timeout=min(_CHECK_EVERY_SEC, remaining))
                if event is not None and event[0] == "invocation.finished":
                    return  # published after the terminal state was saved: no re-check
                if event is None:
                    break
            else:
                return
    finally:
        await subscription.close()


async def _terminal_or_gone(service: ApiService, invocation_id: str) -> bool:
    status = await service.store.invocation_status(invocation_id)
    return status is None or status in TERMINAL_STATUSES


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
            kind = event[0] if event is not None else None
            if event is not None and event[0] in _FORWARDED:
                yield format_event(event[0], event[1].decode())
                last_sent = now
            finished = kind == "invocation.finished"
            if finished or event is None or now - last_check >= _CHECK_EVERY_SEC:
                last_check = now
                info = await _final(service, accepted, finished=finished)
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
