"""Drives backfills: requests the replays of a graph's invocations a window at a time.

Every scheduler runs :class:`ReplayDriver`; each running replay is driven by one of them at a
time, under a lease in Redis (another takes over when a driver dies). A step: count the
invocations in flight whose requested generation ended, request the next ones until
``window`` are in flight (their generations are recorded as in flight before their events
are published, so a driver that dies in between leaves them to the next, which publishes
them again: the scheduler ignores a generation it already has), and finish the replay when
nothing is left. The window is the throttle: a backfill of thousands of invocations keeps at
most ``window`` of them computing, beside whatever new invocations arrive.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from contextlib import suppress

from indexify.engine import TERMINAL_STATUSES
from indexify.models import Replay
from services.common.errors import PlatformUnavailable
from services.common.events import InvocationReplayEvent, encode_message
from services.common.kafka_bus import KafkaBus, Outgoing
from services.common.logging import get_logger
from services.common.state_store import StateStore

__all__ = ["ReplayDriver", "replay_events"]

_log = get_logger(__name__)
_LEASE_SEC = 10.0


def replay_events(replay: Replay, requested: dict[str, int], events_topic: str) -> list[Outgoing]:
    """The ``invocation.replay`` messages of ``requested`` (invocation id -> generation)."""
    return [
        Outgoing(
            events_topic,
            inv,
            encode_message(
                InvocationReplayEvent(
                    namespace=replay.namespace,
                    graph=replay.graph,
                    invocation_id=inv,
                    graph_version=replay.graph_version,
                    generation=generation,
                    from_function=replay.from_function,
                    replay_id=replay.id,
                )
            ),
        )
        for inv, generation in requested.items()
    ]


class ReplayDriver:
    """``await driver.run(stop)``: drive the running replays this process holds leases on."""

    def __init__(
        self,
        bus: KafkaBus,
        store: StateStore,
        *,
        window: int = 32,
        active_interval_sec: float = 0.1,
        idle_interval_sec: float = 1.0,
    ) -> None:
        self._bus = bus
        self._store = store
        self._window = window
        self._active_interval = active_interval_sec
        self._idle_interval = idle_interval_sec
        self._token = uuid.uuid4().hex
        self._held: set[str] = set()  # replays whose in-flight events this process published

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            interval = self._idle_interval
            try:
                if await self.step_all():
                    interval = self._active_interval
            except PlatformUnavailable as exc:
                _log.warning("replays: platform unavailable", error=str(exc))
            with suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval)
        for replay_id in list(self._held):
            with suppress(PlatformUnavailable):
                await self._store.replays.release(replay_id, self._token)

    async def step_all(self) -> bool:
        """One step of every running replay this process may drive; True if any ran."""
        ran = False
        for replay_id in await self._store.replays.active():
            if not await self._store.replays.lease(replay_id, self._token, _LEASE_SEC):
                self._held.discard(replay_id)
                continue
            ran = True
            await self.step(replay_id)
        return ran

    async def step(self, replay_id: str) -> None:
        replays = self._store.replays
        replay = await replays.get(replay_id)
        if replay is None:
            return
        cursor, cancelled, inflight = await replays.progress(replay_id)
        if replay_id not in self._held and inflight:
            # taken over (or restarted): the previous driver may have died before publishing
            await self._publish(replay, inflight)
        self._held.add(replay_id)
        if inflight:
            ended, failed = await self._ended(inflight)
            await replays.ended(replay_id, ended, failed)
            for inv in ended:
                del inflight[inv]
        if not cancelled and len(inflight) < self._window and cursor < replay.total:
            ids = await replays.next_ids(replay_id, cursor, self._window - len(inflight))
            existing = await self._store.invocations.statuses(ids)
            live = [inv for inv in ids if existing.get(inv) is not None]
            generations = await replays.next_generations(live)
            requested = dict(zip(live, generations, strict=True))
            await replays.start(replay_id, cursor + len(ids), requested)
            if len(live) < len(ids):  # deleted since the replay began: nothing to compute
                await replays.ended(replay_id, [], 0, gone=len(ids) - len(live))
            await self._publish(replay, requested)
            inflight.update(requested)
            cursor += len(ids)
        if not inflight and (cancelled or cursor >= replay.total):
            await self._finish(replay_id, cancelled)

    async def _publish(self, replay: Replay, requested: dict[str, int]) -> None:
        if not requested:
            return
        topic = self._store.names.events_topic
        try:
            await self._bus.publish_many(replay_events(replay, requested, topic))
        except PlatformUnavailable:
            self._held.discard(replay.id)  # the next step publishes what is in flight again
            raise

    async def _ended(self, inflight: dict[str, int]) -> tuple[list[str], int]:
        """The invocations in flight whose requested generation ended (or that were deleted),
        and how many of them failed."""
        states = await self._store.invocations.load_invocations(list(inflight))
        ended: list[str] = []
        failed = 0
        for inv, generation in inflight.items():
            loaded = states.get(inv)
            if loaded is None:
                ended.append(inv)
                continue
            state = loaded[0]
            if state.generation > generation or (
                state.generation == generation and state.status in TERMINAL_STATUSES
            ):
                ended.append(inv)
                failed += state.generation == generation and state.status == "failed"
        return ended, failed

    async def _finish(self, replay_id: str, cancelled: bool) -> None:
        replay = await self._store.replays.get(replay_id)
        if replay is None:
            return
        if cancelled:
            replay.status = "cancelled"
        else:
            replay.status = "failed" if replay.failed else "succeeded"
        replay.finished_at = time.time()
        await self._store.replays.finish(replay)
        await self._store.replays.release(replay_id, self._token)
        self._held.discard(replay_id)
        _log.info(
            "replay finished",
            replay=replay_id,
            graph=replay.graph,
            status=replay.status,
            total=replay.total,
            failed=replay.failed,
        )
