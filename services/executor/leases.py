"""Which tasks this executor process may run: claims, the leases it holds, their renewal.

A task runs where its claim took the lease (``StateStore.claims``, :mod:`services.common.
task_claims`): an executor handed a task another live process is running (a rebalance moved
its partition, or the message came twice) waits for it instead of running it a second time.

:class:`Leases` owns everything about that for one process:

* the **token**: one per process (``<executor id>:<random>``), so a restarted executor with
  the same id does not mistake its dead predecessor's leases for its own;
* the **TTL** (``lease_ttl_sec``, by default the consumer's session timeout, at least 3 s)
  and the **renew loop** that extends every lease held here three times per TTL;
* the **held set**: the ``(invocation id, task id)`` keys leased here or being claimed here.
  A second message for a held key (a duplicate, maybe in the same pipeline) waits;
* the **claims**: single tasks are batched (claims asked while one is in flight go together
  in one Redis pipeline, :class:`.batcher.BatchCaller`), a chunk's elements take one call,
  and a chain's next step is claimed in the round trip that records the step before it.
  Releasing happens when results are recorded (:meth:`Leases.record_results`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from services.common.errors import ServiceError
from services.common.events import ProgressEvent, TaskMessage
from services.common.logging import get_logger
from services.common.redis_calls import ScriptCall
from services.common.task_claims import TaskClaims

from .batcher import BatchCaller
from .retries import retrying

__all__ = ["Key", "Leases", "Verdict"]

#: ``(invocation id, task id)``
Key = tuple[str, str]
#: A claim's answer: ``("run" | "skip" | "result" | "wait", detail)`` (``TaskClaims``).
Verdict = tuple[str, str]
#: (invocation id, task id, the task.started progress event to publish if the lease is taken)
_ClaimAsked = tuple[str, str, ProgressEvent | None]
_log = get_logger(__name__)


class Leases:
    """Claims and leases of one executor process (see the module docstring)."""

    def __init__(self, claims: TaskClaims, executor_id: str, token: str, *, ttl_sec: float) -> None:
        self._claims = claims
        self.executor_id = executor_id
        self.token = token
        self.ttl_sec = ttl_sec
        self._held: set[Key] = set()
        self._batch: BatchCaller[_ClaimAsked, Verdict] = BatchCaller(self._claim_batch)

    # -- the held set ---------------------------------------------------------------------

    def __contains__(self, key: Key) -> bool:
        return key in self._held

    def __len__(self) -> int:
        return len(self._held)

    def hold(self, key: Key) -> None:
        """The lease of ``key`` is ours now (renewed until :meth:`release`)."""
        self._held.add(key)

    def release(self, key: Key) -> None:
        self._held.discard(key)

    @contextmanager
    def holding(self, key: Key) -> Iterator[None]:
        """Hold ``key`` for the duration of the block."""
        self.hold(key)
        try:
            yield
        finally:
            self.release(key)

    # -- claims ---------------------------------------------------------------------------

    def started(self, message: TaskMessage) -> ProgressEvent:
        """The ``task.started`` progress event a claim publishes (and keeps with the lease, so
        the invocation's status shows the task running) when the task starts."""
        task = message.task
        return ProgressEvent(
            type="task.started",
            invocation_id=message.invocation_id,
            task_id=task.id,
            function=task.function,
            attempt=task.attempt,
            executor=self.executor_id,
        )

    async def claim(self, key: Key, started: ProgressEvent | None = None) -> Verdict:
        """``TaskClaims.claim_tasks`` (batched with the claims asked meanwhile), publishing
        ``started`` if it takes the lease. The key is held while asking: a duplicate message
        in this process (same token, maybe the same pipeline) waits instead of running the
        task a second time."""
        with self.holding(key):
            return await retrying("checking the task", lambda: self._batch.call((*key, started)))

    async def recheck(self, message: TaskMessage, started: ProgressEvent | None = None) -> Verdict:
        """The claim's answer for a task that waited for a worker, leases held or not: the
        invocation may have been cancelled or finished meanwhile ("skip"), or the task
        recorded by another process ("result"); "wait" means our lease lapsed (run it).
        ``started`` (if given) is published and kept with the lease: the task starts now."""
        inv, task_id = message.invocation_id, message.task.id
        return await retrying(
            "checking the task", lambda: self._batch.call((inv, task_id, started))
        )

    async def claim_chunk(
        self, invocation_id: str, function: str, tasks: Sequence[tuple[str, int]]
    ) -> list[Verdict]:
        """``TaskClaims.claim_chunk`` for ``(task id, attempt)`` s of one chunk (one call);
        the keys leased are not held here yet: the caller holds the ones it runs."""
        return await retrying(
            "claiming a chunk",
            lambda: self._claims.claim_chunk(
                invocation_id, function, tasks, self.token, self.ttl_sec, self.executor_id
            ),
        )

    async def record_and_claim(
        self, results: Sequence[tuple[str, str, bytes | None]], message: TaskMessage
    ) -> Verdict:
        """Keep ``results`` (releasing their leases) and claim ``message``'s task, in one
        round trip (a chain's next step)."""
        claim = (message.invocation_id, message.task.id, self.started(message))
        return await retrying(
            "continuing a chain",
            lambda: self._claims.record_and_claim(results, self.token, claim, self.ttl_sec),
        )

    async def record_results(self, results: Sequence[tuple[str, str, bytes | None]]) -> None:
        """Keep the successes of ``results`` (first writer wins) and release their leases,
        in one round trip."""
        await retrying(
            "recording task results", lambda: self._claims.record_results(results, self.token)
        )

    def record_calls(self, results: Sequence[tuple[str, str, bytes | None]]) -> list[ScriptCall]:
        """The script calls of :meth:`record_results`, to run in another round trip (the
        finisher's save)."""
        return self._claims.record_calls(results, self.token)

    async def _claim_batch(self, tasks: list[_ClaimAsked]) -> list[Verdict]:
        """``TaskClaims.claim_tasks`` for the tasks asked about together, in one round trip."""
        return await self._claims.claim_tasks(tasks, self.token, self.ttl_sec)

    # -- renewal --------------------------------------------------------------------------

    async def renew_loop(self) -> None:
        """Renew the leases held here, three times per lease TTL (until cancelled)."""
        while True:
            await asyncio.sleep(self.ttl_sec / 3)
            if not self._held:
                continue
            try:
                await self._claims.renew_leases(list(self._held), self.token, self.ttl_sec)
            except ServiceError as exc:
                _log.warning("renewing task leases failed", error=str(exc))
