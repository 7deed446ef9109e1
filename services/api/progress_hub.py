"""One Redis pub/sub connection per API process, shared by every request that waits.

Two kinds of waiters use it:

* **long polls** (``GET .../invocations/{id}?wait_sec=``) :meth:`ProgressHub.watch` an
  invocation. The scheduler publishes the id of every invocation that becomes terminal on
  one channel (``Names.finished_channel``, published by the same Lua call that saves the
  terminal state; the API publishes there when it deletes one), so a waiter costs a dict
  entry, not a connection, and it is woken by one short message instead of every progress
  event of its invocation.
* **progress streams** (SSE) :meth:`ProgressHub.listen` to one invocation's progress channel:
  the hub subscribes to it on the shared connection (once, however many streams follow that
  invocation) and waits for Redis to confirm, so an event published afterwards is not missed.

Pub/sub is fire-and-forget: a message published while the connection is down is lost. When
the connection fails, every waiter is woken to re-check the stored status, and redis-py
resubscribes every channel when it reconnects; waiters also re-check on their own every
second or so (see :mod:`.sse`). Nothing depends on a message arriving.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from services.common.concurrency import cancel_and_wait
from services.common.errors import PlatformUnavailable
from services.common.logging import get_logger
from services.common.state_store import StateStore

__all__ = ["Listener", "ProgressHub", "Watch"]

_log = get_logger(__name__)
_READ_TIMEOUT_SEC = 1.0
_SUBSCRIBE_TIMEOUT_SEC = 5.0
_MAX_BACKOFF_SEC = 5.0


@dataclass(eq=False)
class Watch:
    """A long poll's wake-up: ``event`` is set when the invocation finished (``finished``) or
    when the hub lost messages and every waiter should re-check (``finished`` stays False)."""

    invocation_id: str
    event: asyncio.Event = field(default_factory=asyncio.Event)
    finished: bool = False


@dataclass(eq=False)
class Listener:
    """A progress stream's queue: the raw JSON of each event, or None for "re-check now"."""

    channel: str
    queue: asyncio.Queue[bytes | None] = field(default_factory=asyncio.Queue)


@dataclass(eq=False)
class _Channel:
    confirmed: asyncio.Future[None]
    listeners: set[Listener] = field(default_factory=set)


class ProgressHub:
    """``async with ProgressHub(store) as hub``: the reader task runs while it is open."""

    def __init__(self, store: StateStore) -> None:
        self._store = store
        self._finished_channel = store.names.finished_channel
        self._pubsub: PubSub = store.progress.pubsub()
        self._watches: dict[str, set[Watch]] = {}
        self._channels: dict[str, _Channel] = {}
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> ProgressHub:
        try:
            await self._pubsub.subscribe(self._finished_channel)
        except (RedisError, OSError) as exc:
            await self._discard()
            raise PlatformUnavailable(f"Redis is unavailable ({exc}); retry later") from exc
        self._reader = asyncio.create_task(self._read(), name="progress-hub")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._reader is not None:
            await cancel_and_wait([self._reader])
        for channel in self._channels.values():
            if not channel.confirmed.done():
                channel.confirmed.cancel()
        await self._discard()

    # -- long polls -----------------------------------------------------------------------

    def watch(self, invocation_id: str) -> Watch:
        """Register before checking the status: a finish published after that wakes it."""
        watch = Watch(invocation_id)
        self._watches.setdefault(invocation_id, set()).add(watch)
        return watch

    def unwatch(self, watch: Watch) -> None:
        watches = self._watches.get(watch.invocation_id)
        if watches is not None:
            watches.discard(watch)
            if not watches:
                del self._watches[watch.invocation_id]

    # -- progress streams -----------------------------------------------------------------

    async def listen(self, invocation_id: str) -> Listener:
        """Follow an invocation's progress channel; returns once Redis confirmed the
        subscription (raises :class:`PlatformUnavailable` if it does not)."""
        name = self._store.names.progress_channel(invocation_id)
        listener = Listener(name)
        channel = self._channels.get(name)
        if channel is None:
            channel = _Channel(asyncio.get_running_loop().create_future())
            self._channels[name] = channel
            try:
                await self._pubsub.subscribe(name)
            except (RedisError, OSError) as exc:
                self._drop(name)
                raise PlatformUnavailable(f"Redis is unavailable ({exc}); retry later") from exc
        channel.listeners.add(listener)
        try:
            await asyncio.wait_for(asyncio.shield(channel.confirmed), _SUBSCRIBE_TIMEOUT_SEC)
        except TimeoutError:
            await self.unlisten(listener)
            raise PlatformUnavailable(
                f"Redis did not confirm the subscription to {name} within "
                f"{_SUBSCRIBE_TIMEOUT_SEC:g} s; retry later"
            ) from None
        except BaseException:
            await self.unlisten(listener)
            raise
        return listener

    async def unlisten(self, listener: Listener) -> None:
        channel = self._channels.get(listener.channel)
        if channel is None:
            return
        channel.listeners.discard(listener)
        if channel.listeners:
            return
        self._drop(listener.channel)
        with contextlib.suppress(RedisError, OSError):  # a lost connection drops it anyway
            await self._pubsub.unsubscribe(listener.channel)

    def _drop(self, name: str) -> None:
        channel = self._channels.pop(name, None)
        if channel is not None and not channel.confirmed.done():
            channel.confirmed.cancel()

    # -- the reader -----------------------------------------------------------------------

    async def _read(self) -> None:
        backoff = 0.1
        while True:
            try:
                message = await self._pubsub.get_message(timeout=_READ_TIMEOUT_SEC)
            except (RedisError, OSError) as exc:
                _log.warning("progress connection lost; reconnecting", error=str(exc))
                self._wake_all()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF_SEC)
                continue
            backoff = 0.1
            if message is None:
                continue
            try:
                self._dispatch(message)
            except Exception:  # one odd message must not end progress for everyone
                _log.exception("progress message ignored", channel=str(message.get("channel")))

    def _dispatch(self, message: dict[str, object]) -> None:
        kind = message.get("type")
        raw_channel = message.get("channel")
        name = raw_channel.decode() if isinstance(raw_channel, bytes) else str(raw_channel)
        data = message.get("data")
        if kind == "message" and isinstance(data, bytes):
            if name == self._finished_channel:
                for watch in self._watches.get(data.decode(errors="replace"), ()):
                    watch.finished = True
                    watch.event.set()
                return
            channel = self._channels.get(name)
            if channel is not None:
                for listener in channel.listeners:
                    listener.queue.put_nowait(data)
        elif kind == "subscribe":
            channel = self._channels.get(name)
            if channel is not None and not channel.confirmed.done():
                channel.confirmed.set_result(None)
            elif name == self._finished_channel:
                self._wake_all()  # (re)subscribed after a reconnect: messages may be lost

    def _wake_all(self) -> None:
        for watches in self._watches.values():
            for watch in watches:
                watch.event.set()
        for channel in self._channels.values():
            for listener in channel.listeners:
                listener.queue.put_nowait(None)

    async def _discard(self) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self._pubsub.aclose()
