"""What the API does, one method per route: namespaces, graphs, invocations, health.

The routes parse HTTP and call one method here; the methods speak in domain terms and raise
:mod:`services.common.errors` (mapped to HTTP in :mod:`services.api.errors`). Nothing is
published to Kafka for a request that fails validation: every check runs before the first
write, and an invocation whose event cannot be published is removed again.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import Callable, Sequence

from indexify.definition import GraphDefinition
from indexify.encoding import Payload
from indexify.engine import Engine, InvocationState, TaskRecord
from indexify.engine.model import InvocationStatus
from indexify.models import GraphInfo, InvocationInfo, Replay
from services.common.blobs import BlobStore, store_values
from services.common.errors import (
    BadRequest,
    Conflict,
    NotFound,
    PayloadTooLarge,
    PlatformUnavailable,
    ServiceError,
)
from services.common.events import (
    InvocationCancelEvent,
    InvocationCreatedEvent,
    InvocationReplayEvent,
    StoredValues,
    encode_message,
)
from services.common.executor_registry import queued_by_function
from services.common.graphs import GraphCache, GraphRecord
from services.common.invocations import INPUT_FIELD
from services.common.kafka_bus import KafkaBus
from services.common.logging import get_logger
from services.common.lru import Lru
from services.common.names import Names
from services.common.settings import InfraSettings
from services.common.state_store import StateStore
from services.common.task_messages import start_messages

from . import validation
from .arguments import ArgumentChecker
from .first_tasks import AcceptedInvocation, FirstTasks
from .live_status import live_info
from .progress_hub import ProgressHub
from .schemas import FunctionQueues, GraphRegistered, GraphUpload, Health
from .waiting import InvocationWaiting, PlacementWatch, describe

_log = get_logger(__name__)
_ENGINES = 64  # graph versions whose engine is kept (to compute first tasks)
TASKS_PAGE = 1000
"""Task records per page of an invocation's status, unless the request asks otherwise."""
MAX_TASKS_PAGE = 10_000
_HEALTH_TIMEOUT_SEC = 3.0
TasksPage = tuple[list[TaskRecord], int]
"""Task records and the cursor after them (:meth:`InvocationRepository.tasks_page`)."""


def graph_info(record: GraphRecord) -> GraphInfo:
    return GraphInfo.of(record.namespace, record.definition, record.created_at)


def _failpoint(spec: str) -> bool:
    """The test failpoint ``exit_after_start`` (``ApiSettings.failpoint``): the process exits
    once an invocation's first tasks are sent, before its created event is."""
    if spec not in ("", "exit_after_start"):
        raise ValueError(f"unknown API failpoint {spec!r}; use exit_after_start")
    return spec == "exit_after_start"


class ApiService:
    def __init__(
        self,
        infra: InfraSettings,
        bus: KafkaBus,
        store: StateStore,
        blobs: BlobStore,
        hub: ProgressHub,
        *,
        direct_start: bool = True,
        task_hints: bool = True,
        failpoint: str = "",
    ) -> None:
        self.infra = infra
        self.direct_start = direct_start
        self._engines: Lru[tuple[str, str, str], Engine] = Lru(_ENGINES)
        self.names = Names(infra.prefix)
        self.bus = bus
        self.store = store
        self.blobs = blobs
        self.hub = hub
        self.first_tasks = FirstTasks(
            bus,
            store.invocations,
            store.hints,
            hints=task_hints,
            exit_after_start=_failpoint(failpoint),
        )
        self.arguments = ArgumentChecker()
        self.placement = PlacementWatch(store)
        self.graph_cache = GraphCache(store.graphs)

    # -- lookups ----------------------------------------------------------------------------

    async def require_namespace(self, namespace: str) -> None:
        if not await self.store.graphs.namespace_exists(namespace):
            raise NotFound(
                f"namespace {namespace!r} does not exist; create it with POST /namespaces "
                f'{{"name": "{namespace}"}}'
            )

    async def require_graph(self, namespace: str, graph: str) -> GraphRecord:
        record = await self.store.graphs.get_graph(namespace, graph)
        if record is None:
            await self.require_namespace(namespace)
            known = [r.name for r in await self.store.graphs.list_graphs(namespace)]
            raise NotFound(
                f"graph {graph!r} is not registered in namespace {namespace!r} (registered: "
                f"{known}); register it with POST /namespaces/{namespace}/compute_graphs"
            )
        return record

    async def require_state(
        self, namespace: str, graph: str, invocation_id: str
    ) -> InvocationState:
        loaded = await self.store.invocations.load_invocation(invocation_id)
        return await self.own_state(loaded, namespace, graph, invocation_id)

    async def own_state(
        self,
        loaded: tuple[InvocationState, int] | None,
        namespace: str,
        graph: str,
        invocation_id: str,
    ) -> InvocationState:
        """The loaded summary if it is an invocation of the graph, else :class:`NotFound`."""
        if loaded is None or loaded[0].namespace != namespace or loaded[0].graph != graph:
            await self.require_graph(namespace, graph)
            raise NotFound(f"graph {graph!r} has no invocation {invocation_id!r}")
        return loaded[0]

    async def graph_version(self, state: InvocationState) -> GraphRecord:
        """The graph version an invocation runs on (the current one if that was deleted)."""
        record = await self.store.graphs.get_graph_version(
            state.namespace, state.graph, state.graph_version
        )
        return record or await self.require_graph(state.namespace, state.graph)

    async def graph_version_at(self, state: InvocationState, epoch: int) -> GraphRecord:
        """:meth:`graph_version`, from the cache when it holds that version as of the graphs
        ``epoch`` read with ``state`` (:class:`GraphCache`)."""
        record = await self.graph_cache.version(
            state.namespace, state.graph, state.graph_version, epoch
        )
        return record or await self.require_graph(state.namespace, state.graph)

    # -- namespaces -------------------------------------------------------------------------

    async def namespaces(self) -> list[str]:
        return await self.store.graphs.namespaces()

    async def create_namespace(self, name: str) -> bool:
        return await self.store.graphs.create_namespace(validation.check_name(name, "namespace"))

    # -- graphs -----------------------------------------------------------------------------

    async def register_graph(self, namespace: str, upload: GraphUpload) -> GraphRegistered:
        """Register a version, or make a recorded one current again.

        The version is the hash of the definition's content (:meth:`content_version`), and a
        version's code never changes: uploading other code for a recorded version is a
        :class:`Conflict` (send the definition without code to make that version current).
        """
        definition = validation.parse_definition(upload.definition, self.names, namespace)
        version = definition.content_version()
        if definition.version != version:
            raise BadRequest(
                f"graph {definition.name!r}: its version is computed from the definition's "
                f"content, not chosen: this definition's is {version!r}, got "
                f"{definition.version!r}; send Graph.definition() as the SDK makes it"
            )
        await self.require_namespace(namespace)
        code = None if upload.code is None else validation.decode_code(upload.code)
        digest = None if code is None else hashlib.sha256(code).hexdigest()
        stored = await self.store.graphs.get_graph_version(namespace, definition.name, version)
        if stored is None:
            if code is None or digest is None:
                raise BadRequest(
                    f"graph {definition.name!r} has no version {version}: send its `code` "
                    "(base64 of Graph.serialize()) to register it"
                )
            stored, created = await self._add_version(namespace, definition, code, digest)
        else:
            created = False
        if digest is not None and digest != stored.code_sha256:
            raise Conflict(
                f"version {version} of graph {definition.name!r} is recorded with other code, "
                "and a version's code never changes: register it without `code` to make the "
                "recorded code current, or change the graph to get a new version"
            )
        if code is not None and not await self.blobs.exists(stored.code_key):
            await self.blobs.put(stored.code_key, code)  # its first upload stopped half-way
        await self.store.graphs.make_current(stored)
        self.graph_cache.forget(namespace, stored.name)
        warnings = await self.placement.warnings(stored.definition)
        _log.info(
            "graph registered",
            namespace=namespace,
            graph=stored.name,
            version=version,
            created=created,
            unserved_functions=len(warnings),
        )
        return GraphRegistered(
            **graph_info(stored).model_dump(), created=created, warnings=warnings
        )

    async def _add_version(
        self, namespace: str, definition: GraphDefinition, code: bytes, digest: str
    ) -> tuple[GraphRecord, bool]:
        """Record a new version: its task topics, then the record (the first of concurrent
        uploads wins), then its code (by the winner only)."""
        await self.bus.ensure_topics(
            {
                self.names.task_topic(node.placement_key, namespace, definition.name, name): (
                    self.infra.task_partitions
                )
                for name, node in definition.nodes.items()
            }
        )
        record = GraphRecord(
            namespace=namespace,
            name=definition.name,
            version=definition.version,
            description=definition.description,
            created_at=time.time(),
            definition=definition,
            code_key=self.names.code_object(namespace, definition.name, definition.version),
            code_sha256=digest,
        )
        stored, added = await self.store.graphs.add_version(record)
        if added:
            await self.blobs.put(stored.code_key, code)
        return stored, added

    async def graphs(self, namespace: str) -> list[GraphInfo]:
        await self.require_namespace(namespace)
        return [graph_info(r) for r in await self.store.graphs.list_graphs(namespace)]

    async def graph(self, namespace: str, graph: str) -> GraphInfo:
        return graph_info(await self.require_graph(namespace, graph))

    async def function_queues(self, namespace: str, graph: str) -> FunctionQueues:
        """Tasks of each of the graph's functions waiting on the live executors."""
        record = await self.require_graph(namespace, graph)
        executors = await self.store.registry.executors()
        depth = queued_by_function(executors, namespace, graph)
        return FunctionQueues(
            queued={name: depth.get(name, 0) for name in sorted(record.definition.nodes)},
            executors=len(executors),
        )

    async def graph_code(self, namespace: str, graph: str, version: str | None) -> bytes:
        record = await self.require_graph(namespace, graph)
        if version is not None and version != record.version:
            old = await self.store.graphs.get_graph_version(namespace, graph, version)
            if old is None:
                raise NotFound(f"graph {graph!r} has no version {version!r}")
            record = old
        return await self.blobs.get(record.code_key)

    async def delete_graph(self, namespace: str, graph: str) -> int:
        await self.require_graph(namespace, graph)
        invocation_ids = await self.store.graphs.delete_graph(namespace, graph)
        self.graph_cache.forget(namespace, graph)
        for prefix in (
            f"{self.names.prefix}/graphs/{namespace}/{graph}/",
            f"{self.names.prefix}/invocations/{namespace}/{graph}/",
        ):
            await self.blobs.delete_prefix(prefix)
        _log.info(
            "graph deleted", namespace=namespace, graph=graph, invocations=len(invocation_ids)
        )
        return len(invocation_ids)

    # -- invoking ---------------------------------------------------------------------------

    async def accept_invocation(
        self,
        namespace: str,
        graph: str,
        body: bytes,
        content_type: str | None,
        encoded: bool,
        *,
        may_pickle: bool = False,
    ) -> AcceptedInvocation:
        """Validate the arguments, store the input and the pending record (not published).
        Pickled arguments only ``may_pickle`` (the caller's key may deploy code)."""
        return await self._accept_current(
            namespace,
            graph,
            lambda definition: validation.invocation_payload(
                definition,
                body,
                content_type,
                encoded,
                checker=self.arguments,
                may_pickle=may_pickle,
            ),
        )

    async def _accept_current(
        self, namespace: str, graph: str, payload_of: Callable[[GraphDefinition], Payload]
    ) -> AcceptedInvocation:
        """Accept an invocation of the graph's current version, as read when it is created.

        The record kept from an earlier request (:class:`GraphCache`) is used when the graphs
        epoch, read in the same atomic call that creates the invocation, shows that it was
        still current then; else (or when the kept definition refuses the arguments) the graph
        is read again and the invocation accepted as if nothing had been kept."""
        kept = self.graph_cache.current(namespace, graph)
        if kept is not None:
            record, epoch = kept
            try:
                payload = payload_of(record.definition)
            except ServiceError:
                pass  # perhaps only refused by a version that is not current any more
            else:
                accepted = await self._accept(record, payload, epoch=epoch)
                if accepted is not None:
                    return accepted
        current, _ = await self.graph_cache.read_current(namespace, graph)
        record = current or await self.require_graph(namespace, graph)  # NotFound, hints
        accepted = await self._accept(record, payload_of(record.definition))
        assert accepted is not None  # no epoch to check
        return accepted

    async def _accept(
        self, record: GraphRecord, payload: Payload, *, epoch: int | None = None
    ) -> AcceptedInvocation | None:
        """Store the input and the pending record; with ``epoch`` (the graphs epoch
        ``record`` was read at), None when the graph's current version is another one now
        (or it is gone): the invocation is removed again."""
        invocation_id = uuid.uuid4().hex
        key = self.names.input_object(record.namespace, record.name, invocation_id)
        stored = await store_values(self.blobs, [payload], key)
        state = InvocationState(
            invocation_id=invocation_id,
            namespace=record.namespace,
            graph=record.name,
            graph_version=record.version,
            status="pending",
            created_at=time.time(),
        )
        if epoch is None:
            await self.store.invocations.create_invocation(state, stored)
        else:
            now = await self.store.invocations.create_invocation_reading(
                state, stored, self.names.graphs_epoch_key
            )
            if int(now or 0) != epoch:
                current, _ = await self.graph_cache.read_current(record.namespace, record.name)
                if current is None or current.version != record.version:
                    await self.discard(state)
                    return None
        event = InvocationCreatedEvent(
            namespace=record.namespace,
            graph=record.name,
            invocation_id=invocation_id,
            graph_version=record.version,
            input=stored,
        )
        engine = self._engine(record)
        start = start_messages(engine, state, self.names, stored)
        return AcceptedInvocation(state=state, event=event, start=start, engine=engine)

    def _engine(self, record: GraphRecord) -> Engine:
        """The engine of a graph version (the last few used are kept)."""
        key = (record.namespace, record.name, record.version)
        engine = self._engines.get(key)
        if engine is None:
            engine = self._engines.put(key, Engine(record.definition))
        return engine

    async def publish_accepted(self, accepted: Sequence[AcceptedInvocation]) -> None:
        """Publish the created events and await the acks; on failure remove the invocations
        (they were never accepted) and raise :class:`PlatformUnavailable`.

        With ``direct_start``, each invocation's first tasks are sent here and its record
        saved started (:mod:`.first_tasks`): a created event is published only for what is
        left to the scheduler (e.g. tasks that could not be sent)."""
        topic = self.names.events_topic
        events = [a.event for a in accepted]
        if self.direct_start and any(a.start for a in accepted):
            events = await self.first_tasks.start(accepted)
            if not events:
                return
        try:
            await self.bus.publish_many(
                [(topic, e.invocation_id, encode_message(e)) for e in events]
            )
        except ServiceError as exc:
            for a in accepted:
                await self.discard(a.state)
            if isinstance(exc, PayloadTooLarge):
                raise
            raise PlatformUnavailable(
                f"the invocation could not be queued ({exc}); nothing was started, retry later"
            ) from exc
        for a in accepted:  # debug: one line per invocation costs the API under load
            _log.debug(
                "invocation accepted",
                namespace=a.state.namespace,
                graph=a.state.graph,
                invocation=a.id,
                version=a.state.graph_version,
            )

    async def discard(self, state: InvocationState) -> None:
        """Remove an accepted invocation that was never published (best effort)."""
        try:
            await self._delete_invocation_data(state)
        except ServiceError as exc:
            _log.warning(
                "could not remove an unpublished invocation",
                invocation=state.invocation_id,
                error=str(exc),
            )

    async def accept_file(
        self,
        namespace: str,
        graph: str,
        body: bytes,
        content_type: str | None,
        metadata: str | None,
    ) -> AcceptedInvocation:
        """Store an invocation whose input is the body as a File (not published)."""
        return await self._accept_current(
            namespace,
            graph,
            lambda definition: validation.file_payload(definition, body, content_type, metadata),
        )

    # -- replays ---------------------------------------------------------------------------

    @staticmethod
    def _check_from_function(record: GraphRecord, from_function: str | None) -> None:
        if from_function is not None and from_function not in record.definition.nodes:
            raise BadRequest(
                f"from_function={from_function!r} is not a function of graph {record.name!r} "
                f"(version {record.version}); it has {sorted(record.definition.nodes)}"
            )

    async def rerun_invocation(
        self, namespace: str, graph: str, invocation_id: str, *, from_function: str | None = None
    ) -> int:
        """Compute the invocation again, in place, on the graph's current version; returns
        the generation it will be. A replay of a running invocation supersedes it."""
        state = await self.require_state(namespace, graph, invocation_id)
        record = await self.require_graph(namespace, graph)
        self._check_from_function(record, from_function)
        [generation] = await self.store.replays.next_generations([invocation_id])
        event = InvocationReplayEvent(
            namespace=namespace,
            graph=graph,
            invocation_id=invocation_id,
            graph_version=record.version,
            generation=generation,
            from_function=from_function,
        )
        try:
            await self.bus.publish(self.names.events_topic, invocation_id, encode_message(event))
        except ServiceError as exc:
            await self.store.replays.restore_status(invocation_id, state.status)
            raise PlatformUnavailable(
                f"the replay could not be queued ({exc}); nothing changed, retry later"
            ) from exc
        _log.info(
            "invocation replay requested",
            graph=graph,
            invocation=invocation_id,
            generation=generation,
            version=record.version,
        )
        return generation

    async def rerun_graph(
        self,
        namespace: str,
        graph: str,
        *,
        from_function: str | None = None,
        invocations: Sequence[str] | None = None,
    ) -> Replay:
        """Start a backfill of ``invocations`` (None: every invocation the graph has now;
        the schedulers drive it, a window at a time: :mod:`services.scheduler.replays`)."""
        record = await self.require_graph(namespace, graph)
        self._check_from_function(record, from_function)
        if invocations is None:
            ids = await self.store.invocations.list_invocations(namespace, graph, limit=None)
            ids.reverse()  # oldest first
        else:
            ids = list(dict.fromkeys(invocations))
            unknown = await self.store.invocations.not_in_graph(namespace, graph, ids)
            if unknown:
                raise NotFound(
                    f"graph {graph!r} has no invocations {unknown[:10]}"
                    f"{' (and more)' if len(unknown) > 10 else ''}; nothing was replayed"
                )
        replay = Replay(
            id=uuid.uuid4().hex,
            namespace=namespace,
            graph=graph,
            graph_version=record.version,
            from_function=from_function,
            total=len(ids),
        )
        if not ids:
            replay.status, replay.finished_at = "succeeded", replay.created_at
        await self.store.replays.create(replay, ids)
        if not ids:
            await self.store.replays.finish(replay)
        _log.info("replay started", graph=graph, replay=replay.id, invocations=len(ids))
        return replay

    async def replay(self, namespace: str, graph: str, replay_id: str) -> Replay:
        found = await self.store.replays.get(replay_id)
        if found is None or found.namespace != namespace or found.graph != graph:
            await self.require_graph(namespace, graph)
            raise NotFound(f"graph {graph!r} has no replay {replay_id!r}")
        return found

    async def replays(self, namespace: str, graph: str) -> list[Replay]:
        await self.require_graph(namespace, graph)
        return await self.store.replays.list_for_graph(namespace, graph)

    async def cancel_replay(self, namespace: str, graph: str, replay_id: str) -> Replay:
        found = await self.replay(namespace, graph, replay_id)
        if not found.finished:
            await self.store.replays.cancel(replay_id)
            found.status = "cancelled"
        return found

    # -- invocations ------------------------------------------------------------------------

    async def invocations(self, namespace: str, graph: str, limit: int) -> list[InvocationInfo]:
        await self.require_graph(namespace, graph)
        ids = await self.store.invocations.list_invocations(namespace, graph, limit=limit)
        states = await self.store.invocations.load_invocations(ids)
        return [
            InvocationInfo.from_state(states[i][0], with_tasks=False) for i in ids if i in states
        ]

    async def invocation(
        self,
        namespace: str,
        graph: str,
        invocation_id: str,
        *,
        tasks_cursor: str | None = None,
        limit: int = TASKS_PAGE,
    ) -> InvocationInfo:
        """The summary and one page of about ``limit`` task records from ``tasks_cursor``
        (0: none, only the summary; ``next_tasks_cursor`` is then where the tasks start).
        While it runs, what executors do is overlaid (:mod:`.live_status`): tasks running
        now, and why tasks wait when no live executor may take them."""
        cursor = self.tasks_cursor(tasks_cursor)
        state, read = await self.state_and_page(namespace, graph, invocation_id, cursor, limit)
        return await self.invocation_info(state, read, cursor, limit)

    @staticmethod
    def tasks_cursor(tasks_cursor: str | None) -> int:
        return validation.parse_scan_cursor(tasks_cursor, "tasks_cursor", "next_tasks_cursor")

    async def state_and_page(
        self, namespace: str, graph: str, invocation_id: str, cursor: int, limit: int
    ) -> tuple[InvocationState, TasksPage | None]:
        """:meth:`require_state` and, in the same round trip, the page of task records
        :meth:`invocation_info` shows (None: it reads it itself)."""
        loaded, page = await self.store.invocations.load_invocation_page(
            invocation_id, cursor, limit
        )
        return await self.own_state(loaded, namespace, graph, invocation_id), page

    async def invocation_info(
        self, state: InvocationState, read: TasksPage | None, cursor: int, limit: int
    ) -> InvocationInfo:
        """What :meth:`invocation` answers for ``state`` and its page ``read`` (if read)."""
        namespace, graph, invocation_id = state.namespace, state.graph, state.invocation_id
        page = self._recorded_page(state, cursor, limit, read)
        if state.terminal or not state.task_counts.get("queued"):
            return await page
        info, activity, waiting = await asyncio.gather(
            page,
            self.store.claims.activity(invocation_id),
            self.placement.waiting(state),
        )
        definition = await self.placement.definition(namespace, graph, state.graph_version)
        return live_info(
            info,
            activity,
            waiting=waiting,
            note=describe(waiting, state.outstanding),
            definition=definition,
            first_page=cursor == 0 and limit > 0,
        )

    async def waiting_note(self, invocation_id: str) -> str | None:
        """Why a live invocation waits now (no live executor may run a function it has
        queued tasks of), or None; see :class:`.waiting.InvocationWaiting`."""
        return await InvocationWaiting(self.placement, self.store, invocation_id).note()

    async def _recorded_page(
        self, state: InvocationState, cursor: int, limit: int, read: TasksPage | None = None
    ) -> InvocationInfo:
        """The summary and one page of the task records, as the scheduler recorded them
        (``read``: that page, read with the summary)."""
        invocation_id = state.invocation_id
        if limit <= 0:
            has_tasks = cursor != 0 or any(n > 0 for n in state.task_counts.values())
            return InvocationInfo.from_summary(state, [], str(cursor) if has_tasks else None)
        if read is not None:
            records, after = read
        else:
            records, after = await self.store.invocations.tasks_page(
                invocation_id, cursor, limit, generation=state.generation
            )
        return InvocationInfo.from_summary(state, records, validation.scan_cursor(after))

    async def cancel_invocation(
        self, namespace: str, graph: str, invocation_id: str
    ) -> tuple[InvocationStatus, bool]:
        """Request a cancel; returns (status now, whether a cancel event was published)."""
        state = await self.require_state(namespace, graph, invocation_id)
        if state.terminal:
            return state.status, False
        event = InvocationCancelEvent(namespace=namespace, graph=graph, invocation_id=invocation_id)
        await self.bus.publish(self.names.events_topic, invocation_id, encode_message(event))
        _log.info("invocation cancel requested", graph=graph, invocation=invocation_id)
        return state.status, True

    async def delete_invocation(self, namespace: str, graph: str, invocation_id: str) -> None:
        state = await self.require_state(namespace, graph, invocation_id)
        await self._delete_invocation_data(state)
        _log.info("invocation deleted", graph=graph, invocation=invocation_id)

    async def _delete_invocation_data(self, state: InvocationState) -> None:
        await self.store.invocations.delete_invocation(state)
        await self.blobs.delete_prefix(
            self.names.invocation_prefix(state.namespace, state.graph, state.invocation_id)
        )

    async def input_values(self, invocation_id: str) -> StoredValues | None:
        return (await self.store.invocations.get_outputs(invocation_id, [INPUT_FIELD])).get(
            INPUT_FIELD
        )

    # -- platform ---------------------------------------------------------------------------

    async def health(self) -> Health:
        checks = {
            "redis": self.store.ping(),
            "kafka": self.bus.list_topics(),
            "minio": self.blobs.ensure_bucket(),
        }
        results = await asyncio.gather(
            *(asyncio.wait_for(c, _HEALTH_TIMEOUT_SEC) for c in checks.values()),
            return_exceptions=True,
        )
        report = {
            name: "ok" if not isinstance(r, BaseException) else f"unavailable: {r!r}"
            for name, r in zip(checks, results, strict=True)
        }
        down = sorted(name for name, status in report.items() if status != "ok")
        if down:
            return Health(
                status="unavailable",
                checks=report,
                detail=f"{', '.join(down)} not answering; see `checks`",
            )
        return Health(status="ok", checks=report)
