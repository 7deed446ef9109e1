"""Which executor process runs a task: claims, leases and recorded results in Redis.

A claim takes a task's lease (a key with a TTL holding the process's token) unless the task is
done, its invocation is over, another live process holds it, or an earlier run recorded its
result. A success is recorded before its event is published, so a redelivered task
re-publishes it instead of running again. The scripts are ``lua/claim_task.lua`` (one task),
``lua/claim_tasks.lua`` (a chunk), ``lua/renew_leases.lua`` and ``lua/record_results.lua``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from .events import ProgressEvent
from .names import Names
from .redis_calls import RedisRepository, ScriptCall, ms, text
from .redis_link import RedisLink
from .scripts import register

__all__ = ["TaskActivity", "TaskClaims"]


@dataclass(frozen=True)
class TaskActivity:
    """What executors do with an invocation's tasks now (:meth:`TaskClaims.activity`).

    ``running``: task id -> its ``task.started`` event (executor, attempt, time), for the
    tasks an executor holds and has started; ``unrecorded``: those of them the scheduler has
    no record of yet (the next steps of a chain an executor continues itself);
    ``recorded``: tasks the scheduler records as queued whose success an executor recorded,
    not applied yet (e.g. the steps before the one a chain runs now)."""

    running: dict[str, ProgressEvent] = field(default_factory=dict)
    unrecorded: frozenset[str] = frozenset()
    recorded: frozenset[str] = frozenset()


def _by_invocation(tasks: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for invocation_id, task_id in tasks:
        grouped.setdefault(invocation_id, []).append(task_id)
    return grouped


class TaskClaims(RedisRepository):
    """Claims, leases and recorded results of tasks (used by executors)."""

    def __init__(self, redis: aioredis.Redis, names: Names, link: RedisLink) -> None:
        super().__init__(redis, names, link)
        self._claim = register(redis, "claim_task")
        self._claim_many = register(redis, "claim_tasks")
        self._renew = register(redis, "renew_leases")
        self._record = register(redis, "record_results")
        self._activity = register(redis, "task_activity")

    async def activity(self, invocation_id: str) -> TaskActivity:
        """The invocation's :class:`TaskActivity`: one read-only Lua call
        (``lua/task_activity.lua``) over its running hash, leases and recorded results."""
        names = self.names
        keys = [
            names.running_key(invocation_id),
            names.tasks_key(invocation_id),
            names.results_key(invocation_id),
        ]
        [(flat, recorded)] = await self._call(
            self._scripts(self._activity, [(keys, [names.lease_prefix(invocation_id)])])
        )
        running: dict[str, ProgressEvent] = {}
        unrecorded: set[str] = set()
        for i in range(0, len(flat), 3):
            task_id = text(flat[i])
            running[task_id] = ProgressEvent.model_validate_json(flat[i + 1])
            if int(flat[i + 2]) == 0:
                unrecorded.add(task_id)
        return TaskActivity(
            running=running,
            unrecorded=frozenset(unrecorded),
            recorded=frozenset(text(t) for t in recorded),
        )

    async def claim_tasks(
        self,
        tasks: Iterable[tuple[str, str, ProgressEvent | None]],
        token: str,
        ttl_sec: float,
    ) -> list[tuple[str, str]]:
        """Whether an executor process (``token``) may run each ``(invocation id, task id,
        started)``; one pipeline (one round trip), every claim its own atomic call:

        * ``("skip", why)``: done already, or the invocation is over;
        * ``("result", event json)``: a previous run recorded its success (outputs stored)
          but its event may not have reached Kafka: publish that, do not run again;
        * ``("run", "")``: the caller now holds the task's lease (renew it while running),
          and ``started`` (a progress event, if given: the task starts now) was published
          and kept as the task's entry of the running hash (:meth:`activity`);
        * ``("wait", holder)``: another live executor process runs it: ask again later.
        """
        tasks = list(tasks)
        if not tasks:
            return []
        calls = [self._claim_call(*task, token, ttl_sec) for task in tasks]
        answers = await self._call(self._pipeline(calls))
        return [(text(verdict), text(detail)) for verdict, detail in answers]

    def _claim_call(
        self,
        invocation_id: str,
        task_id: str,
        started: ProgressEvent | None,
        token: str,
        ttl_sec: float,
    ) -> tuple[Any, list[str], list[Any]]:
        keys = [
            self.names.invocation_key(invocation_id),
            self.names.done_key(invocation_id),
            self.names.results_key(invocation_id),
            self.names.lease_key(invocation_id, task_id),
            self.names.running_key(invocation_id),
        ]
        args = [
            task_id,
            token,
            ms(ttl_sec),
            self.names.progress_channel(invocation_id),
            started.model_dump_json() if started is not None else "",
        ]
        return self._claim, keys, args

    async def record_and_claim(
        self,
        results: Iterable[tuple[str, str, bytes | None]],
        token: str,
        task: tuple[str, str, ProgressEvent | None],
        ttl_sec: float,
    ) -> tuple[str, str]:
        """:meth:`record_results` then :meth:`claim_tasks` of one task, in ONE round trip:
        an executor continuing a chain keeps each step's result before it runs the next."""
        calls = [*self.record_calls(results, token), self._claim_call(*task, token, ttl_sec)]
        answers = await self._call(self._pipeline(calls))
        verdict, detail = answers[-1]
        return text(verdict), text(detail)

    async def claim_chunk(
        self,
        invocation_id: str,
        function: str,
        tasks: Sequence[tuple[str, int]],
        token: str,
        ttl_sec: float,
        executor: str,
    ) -> list[tuple[str, str]]:
        """:meth:`claim_tasks` for ``(task id, attempt)`` s of one invocation's function in
        ONE call (``lua/claim_tasks.lua``); ``task.started`` is published for each lease
        taken, while someone listens to the invocation's progress."""
        if not tasks:
            return []
        names = self.names
        keys = [
            names.invocation_key(invocation_id),
            names.done_key(invocation_id),
            names.results_key(invocation_id),
            names.running_key(invocation_id),
        ]
        args: list[Any] = [
            token,
            ms(ttl_sec),
            names.lease_prefix(invocation_id),
            names.progress_channel(invocation_id),
            invocation_id,
            executor,
            function,
        ]
        for task_id, attempt in tasks:
            args += [task_id, attempt]
        [flat] = await self._call(self._scripts(self._claim_many, [(keys, args)]))
        return [(text(flat[i]), text(flat[i + 1])) for i in range(0, len(flat), 2)]

    async def renew_leases(
        self, tasks: Iterable[tuple[str, str]], token: str, ttl_sec: float
    ) -> None:
        """Extend the leases ``token`` holds on ``(invocation id, task id)`` pairs: one call
        per invocation (``lua/renew_leases.lua``), all in one round trip."""
        calls: list[tuple[list[str], list[Any]]] = [
            ([], [token, ms(ttl_sec), self.names.lease_prefix(inv), *task_ids])
            for inv, task_ids in _by_invocation(tasks).items()
        ]
        if calls:
            await self._call(self._scripts(self._renew, calls))

    async def record_results(
        self, results: Iterable[tuple[str, str, bytes | None]], token: str
    ) -> None:
        """For ``(invocation id, task id, success event json or None)``: keep the successes
        (first writer wins), then release ``token``'s leases; one call per invocation
        (``lua/record_results.lua``), all in one round trip."""
        calls = self.record_calls(results, token)
        if calls:
            await self._call(self._pipeline(calls))

    def record_calls(
        self, results: Iterable[tuple[str, str, bytes | None]], token: str
    ) -> list[ScriptCall]:
        """The script calls of :meth:`record_results`, to run in another pipeline (e.g.
        before a save: ``InvocationRepository.save_views(..., first=...)``)."""
        grouped: dict[str, list[Any]] = {}
        for invocation_id, task_id, event_json in results:
            grouped.setdefault(invocation_id, []).extend((task_id, event_json or b""))
        return [
            (
                self._record,
                [self.names.results_key(inv), self.names.running_key(inv)],
                [token, self.names.lease_prefix(inv), *pairs],
            )
            for inv, pairs in grouped.items()
        ]
