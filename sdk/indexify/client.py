"""The client interface, shared by the in-process client and the remote (HTTP) client."""

from __future__ import annotations

import abc
import os
from collections.abc import Iterator, Sequence
from typing import Any, Self

from .data_objects import File
from .graph import Graph
from .models import GraphInfo, InvocationInfo, Replay, TaskInfo, TaskLogs

DEFAULT_SERVICE_URL = "http://localhost:8900"
DEFAULT_NAMESPACE = "default"


class IndexifyClient(abc.ABC):
    """Register graphs, invoke them, read their outputs. Same methods in-process and remote."""

    namespace: str

    @abc.abstractmethod
    def register_compute_graph(self, graph: Graph) -> GraphInfo:
        """Store the graph's code and definition; an unchanged graph keeps its version."""

    @abc.abstractmethod
    def graphs(self) -> list[str]:
        """Names of the graphs registered in this client's namespace."""

    @abc.abstractmethod
    def graph(self, name: str) -> GraphInfo:
        """One registered graph, with its definition and version."""

    @abc.abstractmethod
    def delete_graph(self, name: str) -> None: ...

    @abc.abstractmethod
    def namespaces(self) -> list[str]: ...

    @abc.abstractmethod
    def create_namespace(self, name: str) -> None: ...

    @abc.abstractmethod
    def invoke_graph_with_object(
        self, graph: str, block_until_done: bool = False, **kwargs: Any
    ) -> str:
        """Start an invocation with ``kwargs`` as the start node's arguments; returns its id."""

    def invoke_graph_with_file(
        self,
        graph: str,
        path: str | os.PathLike[str],
        metadata: dict[str, Any] | None = None,
        *,
        block_until_done: bool = False,
    ) -> str:
        """Start an invocation with the file at ``path`` as a :class:`~indexify.File` (mime
        type guessed from its name, ``metadata`` attached), passed to the start function as
        its single argument; returns the invocation's id."""
        return self._invoke_with_file(graph, File.from_path(path, metadata), block_until_done)

    def _invoke_with_file(self, graph: str, file: File, block_until_done: bool) -> str:
        raise NotImplementedError(f"{type(self).__name__} cannot invoke graphs with a file")

    @abc.abstractmethod
    def invocation_status(self, graph: str, invocation_id: str) -> InvocationInfo: ...

    def invocation_tasks(self, graph: str, invocation_id: str) -> Iterator[TaskInfo]:
        """Every task of the invocation (the remote client reads them page by page;
        ``invocation_status`` has only the first page)."""
        yield from self.invocation_status(graph, invocation_id).tasks

    @abc.abstractmethod
    def invocations(self, graph: str) -> list[InvocationInfo]: ...

    @abc.abstractmethod
    def wait_for_invocation(
        self, graph: str, invocation_id: str, timeout: float = 300.0
    ) -> InvocationInfo:
        """Block until the invocation is succeeded, failed or cancelled."""

    @abc.abstractmethod
    def graph_outputs(
        self, graph: str, invocation_id: str, fn_name: str, *, generation: int | None = None
    ) -> list[Any]:
        """Every output ``fn_name`` produced in the invocation (an empty list if none).

        ``generation`` reads a computation a replay replaced (see
        ``InvocationInfo.history``); None: the current one. Raises
        :class:`~indexify.errors.InvocationError` when ``fn_name`` itself failed.
        """

    @abc.abstractmethod
    def logs(self, graph: str, invocation_id: str, fn_name: str) -> list[TaskLogs]:
        """stdout, stderr and traceback of each task of ``fn_name`` in the invocation."""

    @abc.abstractmethod
    def cancel_invocation(self, graph: str, invocation_id: str) -> None: ...

    @abc.abstractmethod
    def delete_invocation(self, graph: str, invocation_id: str) -> None: ...

    @abc.abstractmethod
    def rerun_invocation(
        self, graph: str, invocation_id: str, *, from_function: str | None = None
    ) -> str:
        """Compute an invocation again, in place, on the graph's current version; returns
        its id (the same). Steps whose function code and inputs did not change reuse their
        outputs; ``from_function`` and its descendants run again in any case. A replay of an
        invocation still running supersedes it: its tasks in flight are ignored."""

    def close(self) -> None:  # noqa: B027 - an optional hook, not abstract
        """Release connections; the in-process client has none."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @abc.abstractmethod
    def rerun_graph(
        self,
        graph: str,
        *,
        from_function: str | None = None,
        invocations: Sequence[str] | None = None,
        block_until_done: bool = True,
    ) -> Replay:
        """Replay every invocation of ``graph`` (those that exist now), or the given
        ``invocations``, in place on its current version: a backfill, see
        :meth:`rerun_invocation`. Returns the replay with its progress; with
        ``block_until_done`` once it ended (drawing a progress bar on stderr when that is a
        terminal)."""

    @abc.abstractmethod
    def replay(self, graph: str, replay_id: str) -> Replay:
        """The progress of a replay started by :meth:`rerun_graph`."""

    @abc.abstractmethod
    def cancel_replay(self, graph: str, replay_id: str) -> Replay:
        """Stop a replay: invocations it has not started keep their computation."""
