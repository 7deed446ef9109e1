"""The remote client: the same methods as the in-process client, over the server's REST API.

``create_client()`` (without ``in_process=True``) returns a :class:`RemoteClient`. It uploads
a graph's definition and cloudpickled code, invokes graphs with the encoded keyword arguments,
follows an invocation's Server-Sent Events when asked to block, and decodes outputs with the
producing function's return type, exactly as the in-process client does.

Errors keep the server's explanation: a 4xx/5xx answer becomes :class:`~indexify.errors.ApiError`
(``status_code``, ``message``); a 404 is also a :class:`~indexify.errors.NotFoundError`; a server
that does not answer is an ``ApiError`` with status 503 and a hint to start it.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from .client import DEFAULT_NAMESPACE, DEFAULT_SERVICE_URL, IndexifyClient
from .credentials import resolve_api_key
from .data_objects import FILE_METADATA_HEADER, File
from .encoding import JSON, Payload, coerce, decode, encode, encode_arguments
from .engine import TERMINAL_STATUSES
from .errors import (
    ApiError,
    EncodingError,
    InvalidInputError,
    InvocationError,
    InvocationNotFinishedError,
    NotFoundError,
)
from .final_outputs import FinalOutputs
from .functions import check_name
from .graph import Graph
from .http import (
    ConnectionPool,
    HttpRequest,
    HttpResponse,
    ServerUnreachable,
    Transport,
    request_path,
)
from .models import GraphInfo, InvocationInfo, Replay, TaskInfo, TaskLogs
from .progress import ProgressBar
from .sse import ServerSentEvent, iter_events

__all__ = ["RemoteClient", "RemoteInvalidInputError", "RemoteNotFoundError"]

logger = logging.getLogger(__name__)

ENCODED_HEADER = "X-Indexify-Encoded"
_PRIMITIVES = (str, int, float, bool, type(None))
_POLL_START_SEC = 0.02
_POLL_MAX_SEC = 0.5  # polling backs off to this when the server answers without waiting
_POLL_MIN_SEC = 0.05
_REPLAY_POLL_MAX_SEC = 1.0  # how often a blocking rerun_graph asks for progress at most
_LONG_POLL_SEC = 20.0
_MAX_LISTED = 100_000
_TASKS_PAGE = 1000  # task records per status request
_OUTPUTS_PAGE = 1000  # values per outputs request (the server also ends a page by size)
_LOGS_PAGE = 100


class RemoteNotFoundError(NotFoundError, ApiError):
    """A 404 from the server: catch it as ``NotFoundError`` or as ``ApiError``."""


class RemoteInvalidInputError(InvalidInputError, ApiError):
    """A 400 from the server: catch it as ``InvalidInputError`` or as ``ApiError``."""


@dataclass(frozen=True)
class _Registered:
    version: str
    graph: Graph


class RemoteClient(IndexifyClient):
    """Talks to an Indexify server at ``service_url``; one namespace per client.

    ``api_key`` is sent as ``Authorization: Bearer <key>``; without it the client uses
    ``$INDEXIFY_API_KEY``, else the credentials file's key for ``service_url`` (which
    ``indexify-cli server-dev-mode`` writes; see :mod:`indexify.credentials`).
    ``timeout`` bounds each HTTP request; ``wait_timeout`` bounds how long
    ``graph_outputs`` and ``invoke_graph_with_object(block_until_done=True)`` wait for an
    invocation to finish. Thread-safe: one client may serve many threads.
    """

    def __init__(
        self,
        service_url: str = DEFAULT_SERVICE_URL,
        namespace: str = DEFAULT_NAMESPACE,
        *,
        timeout: float = 30.0,
        wait_timeout: float = 300.0,
        transport: Transport | None = None,
        headers: dict[str, str] | None = None,
        api_key: str | None = None,
    ) -> None:
        self.namespace = check_name(namespace, "namespace")
        self.service_url = service_url.rstrip("/")
        self.timeout = timeout
        self.wait_timeout = wait_timeout
        self._headers = dict(headers or {})
        key = resolve_api_key(self.service_url, api_key)
        if key:
            self._headers["Authorization"] = f"Bearer {key}"
        self._transport: Transport = transport or ConnectionPool(self.service_url)
        self._lock = threading.Lock()
        self._registered: dict[str, _Registered] = {}
        self._earlier: dict[str, dict[str, Graph]] = {}
        """Each graph's versions this client registered, by version, the newest registered
        last (the hints for the outputs of a computation a replay replaced)."""
        self._namespace_ready = namespace == DEFAULT_NAMESPACE
        self._finals = FinalOutputs()
        """The final outputs answers carried, until ``graph_outputs`` reads them."""

    def __repr__(self) -> str:
        return f"RemoteClient({self.service_url!r}, namespace={self.namespace!r})"

    def close(self) -> None:
        close = getattr(self._transport, "close", None)
        if close is not None:
            close()

    # -- HTTP -------------------------------------------------------------------------------

    def _path(self, *parts: str) -> str:
        base = f"/namespaces/{quote(self.namespace, safe='')}"
        return base + "".join("/" + quote(p, safe="") for p in parts)

    def _graph_path(self, graph: str, *parts: str) -> str:
        return self._path("compute_graphs", graph, *parts)

    def _unreachable(self, exc: ServerUnreachable) -> ApiError:
        return ApiError(
            503,
            f"cannot reach the Indexify server at {self.service_url} ({exc!r}); start it with "
            "`indexify-cli server-dev-mode` or pass create_client(service_url=...)",
        )

    def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json: Any = None,
        content: bytes = b"",
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        stream: bool = False,
    ) -> HttpResponse:
        """One request; a 4xx/5xx answer raises :class:`ApiError` with the server's detail.
        A streamed response must be closed (use it as a context manager)."""
        all_headers = {**self._headers, **(headers or {})}
        if json is not None:
            content = _json_dumps(json)
            all_headers["Content-Type"] = "application/json"
        request = HttpRequest(method, request_path(path, params), all_headers, content)
        try:
            response = self._transport.send(request, timeout=timeout or self.timeout, stream=stream)
        except ServerUnreachable as exc:
            raise self._unreachable(exc) from exc
        if response.status_code >= 400:
            try:
                raise error_from_response(response)
            finally:
                response.close()
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._request(method, path, **kwargs)
        try:
            return response.json()
        except ValueError as exc:
            raise ApiError(
                response.status_code,
                f"{method} {path} answered with a body that is not JSON: {response.text[:200]!r}",
            ) from exc

    # -- namespaces -------------------------------------------------------------------------

    def _ensure_namespace(self) -> None:
        if self._namespace_ready:
            return
        try:
            self.create_namespace(self.namespace)
        except ApiError as exc:
            # A key that is not an admin's may not create namespaces: an admin made this
            # one with the key (a missing one is reported by the call that needs it).
            if exc.status_code != 403:
                raise
        self._namespace_ready = True

    def namespaces(self) -> list[str]:
        self._ensure_namespace()
        return sorted(self._json("GET", "/namespaces")["namespaces"])

    def create_namespace(self, name: str) -> None:
        check_name(name, "namespace")
        try:
            self._request("POST", "/namespaces", json={"name": name})
        except ApiError as exc:
            if exc.status_code != 409:  # already there: creating is idempotent
                raise

    # -- graphs -----------------------------------------------------------------------------

    def register_compute_graph(self, graph: Graph) -> GraphInfo:
        definition = graph.definition()
        code = graph.serialize()
        self._ensure_namespace()
        body = {
            "definition": definition.model_dump(mode="json"),
            "code": base64.b64encode(code).decode("ascii"),
        }
        try:
            reply = self._json("POST", self._path("compute_graphs"), json=body)
        except ApiError as exc:
            if exc.status_code != 409:
                raise
            # This version is recorded with code pickled in another process (pickles of the
            # same code differ between processes) and a version's code never changes: make
            # the recorded code current instead.
            del body["code"]
            reply = self._json("POST", self._path("compute_graphs"), json=body)
        info = _model(GraphInfo, reply)
        for warning in reply.get("warnings", []) if isinstance(reply, dict) else []:
            logger.warning("graph %r registered, but: %s", graph.name, warning)
        with self._lock:
            self._registered[graph.name] = _Registered(version=info.version, graph=graph)
            versions = self._earlier.setdefault(graph.name, {})
            versions.pop(info.version, None)  # registered again: the newest
            versions[info.version] = graph
        return info

    def graphs(self) -> list[str]:
        body = self._json("GET", self._path("compute_graphs"))
        return sorted(item["name"] for item in body["compute_graphs"])

    def graph(self, name: str) -> GraphInfo:
        return _model(GraphInfo, self._json("GET", self._graph_path(name)))

    def delete_graph(self, name: str) -> None:
        self._request("DELETE", self._graph_path(name))
        self._finals.forget(name)
        with self._lock:
            self._registered.pop(name, None)
            self._earlier.pop(name, None)

    # -- invocations ------------------------------------------------------------------------

    def invoke_graph_with_object(
        self, graph: str, block_until_done: bool = False, **kwargs: Any
    ) -> str:
        payload = encode_arguments(kwargs, self._start_hints(graph))
        headers = {"Content-Type": payload.content_type, ENCODED_HEADER: "1"}
        return self._invoke(graph, "invoke_object", payload.data, headers, block_until_done)

    def _invoke_with_file(self, graph: str, file: File, block_until_done: bool) -> str:
        """The file's bytes are the body of ``invoke_file``, its mime type the Content-Type
        (none when it has none) and its metadata a JSON header: no base64, no pickle."""
        encode(file)  # refuses a mime type or metadata the server could not store
        headers: dict[str, str] = {}
        if file.mime_type is not None:
            headers["Content-Type"] = file.mime_type
        if file.metadata is not None:
            headers[FILE_METADATA_HEADER] = json.dumps(file.metadata, separators=(",", ":"))
        return self._invoke(graph, "invoke_file", file.data, headers, block_until_done)

    def _invoke(
        self, graph: str, route: str, body: bytes, headers: dict[str, str], block: bool
    ) -> str:
        path = self._graph_path(graph, route)
        if not block:
            return str(self._json("POST", path, content=body, headers=headers)["id"])
        # Invoke and wait in one request (the server answers once the invocation ended, or
        # once it waits for an executor nobody offers), then long polls of the status if
        # that wait ran out: not the progress stream, which carries three events per task
        # (for a fan-out of thousands, far more than its end).
        wait = min(self.wait_timeout, _LONG_POLL_SEC)
        accepted = self._json(
            "POST",
            path,
            content=body,
            headers=headers,
            params={"wait_sec": f"{wait:.3f}", "until_waiting": "true", "with_outputs": "true"},
            timeout=self.timeout + wait,
        )
        invocation_id = str(accepted["id"])
        self._finals.keep(graph, invocation_id, accepted.get("final_outputs"))
        if accepted.get("status") not in TERMINAL_STATUSES:
            waiting = accepted.get("waiting")
            if waiting:
                _log_waiting(graph, invocation_id, str(waiting))
            self._wait(graph, invocation_id, self.wait_timeout, limit=0, logged=bool(waiting))
        return invocation_id

    def _start_hints(self, graph: str) -> dict[str, Any] | None:
        """The start function's parameter annotations, if this client registered the graph."""
        with self._lock:
            local = self._registered.get(graph)
        if local is None:
            return None
        return local.graph.parameter_hints(local.graph.start_node)

    def invocation_status(self, graph: str, invocation_id: str) -> InvocationInfo:
        """The status, task counts and the first page of the tasks (``next_tasks_cursor`` is
        set when there are more: :meth:`invocation_tasks` lists them all)."""
        return self._invocation_info(graph, invocation_id)

    def invocation_tasks(
        self, graph: str, invocation_id: str, *, page_size: int = _TASKS_PAGE
    ) -> Iterator[TaskInfo]:
        """Every task of the invocation, one page of ``page_size`` (about) per request."""
        seen: set[str] = set()
        cursor: str | None = None
        while True:
            info = self._invocation_info(graph, invocation_id, tasks_cursor=cursor, limit=page_size)
            for task in info.tasks:
                if task.id not in seen:  # a scan may list a task twice while the set grows
                    seen.add(task.id)
                    yield task
            if not info.next_tasks_cursor or info.next_tasks_cursor == cursor:
                return
            cursor = info.next_tasks_cursor

    def _invocation_info(
        self,
        graph: str,
        invocation_id: str,
        wait_sec: float = 0.0,
        *,
        tasks_cursor: str | None = None,
        limit: int | None = None,
        until_waiting: bool = False,
    ) -> InvocationInfo:
        """The status with one page of tasks (``limit=0``: none); with ``wait_sec`` the
        server answers once the invocation is terminal (or after ``wait_sec``; with
        ``until_waiting`` also once it waits for an executor nobody offers): a long poll
        instead of repeated requests, whose answer also carries the final outputs once the
        invocation succeeded (kept for :meth:`graph_outputs`)."""
        path = self._graph_path(graph, "invocations", invocation_id)
        params: dict[str, str] = {}
        if tasks_cursor:
            params["tasks_cursor"] = tasks_cursor
        if limit is not None:
            params["limit"] = str(limit)
        timeout = None
        if wait_sec > 0:
            params["wait_sec"] = f"{wait_sec:.3f}"
            timeout = self.timeout + wait_sec
            params["with_outputs"] = "true"
            if until_waiting:
                params["until_waiting"] = "true"
        body = self._json("GET", path, params=params or None, timeout=timeout)
        if isinstance(body, dict) and "final_outputs" in body:
            self._finals.keep(graph, invocation_id, body.pop("final_outputs"))
        return _model(InvocationInfo, body)

    def invocations(self, graph: str) -> list[InvocationInfo]:
        path = self._graph_path(graph, "invocations")
        body = self._json("GET", path, params={"limit": _MAX_LISTED})
        infos = [_model(InvocationInfo, item) for item in body["invocations"]]
        return sorted(infos, key=lambda info: info.created_at)  # oldest first, as in-process

    def wait_for_invocation(
        self, graph: str, invocation_id: str, timeout: float = 300.0
    ) -> InvocationInfo:
        return self._wait(graph, invocation_id, timeout)

    def _wait(
        self,
        graph: str,
        invocation_id: str,
        timeout: float,
        *,
        limit: int | None = None,
        logged: bool = False,
    ) -> InvocationInfo:
        """Long polls until the invocation is terminal; the answers carry a page of ``limit``
        tasks (None: the server's default, 0: none). When it waits for an executor nobody
        offers, that is logged once (a warning of ``indexify.remote``; ``logged``: it was)."""
        deadline = time.monotonic() + timeout
        delay = _POLL_START_SEC
        while True:
            asked = time.monotonic()
            wait = max(0.0, min(deadline - asked, _LONG_POLL_SEC))
            info = self._invocation_info(
                graph, invocation_id, wait_sec=wait, limit=limit, until_waiting=not logged
            )
            if info.status in TERMINAL_STATUSES:
                return info
            if info.waiting and not logged:
                _log_waiting(graph, invocation_id, info.waiting)
                logged = True
                continue  # the long poll answered early to say so: wait on
            now = time.monotonic()
            remaining = deadline - now
            if remaining > 0 and now - asked >= wait / 2:
                continue  # the long poll ran its course: ask again at once
            if remaining <= 0:
                raise InvocationNotFinishedError(
                    f"invocation {invocation_id} of graph {graph!r} is still {info.status} "
                    f"after {timeout:g} s; wait longer with wait_for_invocation(timeout=...)",
                    invocation_id=invocation_id,
                )
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, _POLL_MAX_SEC)

    def progress_events(
        self, graph: str, invocation_id: str, *, read_timeout: float = 60.0
    ) -> Iterator[ServerSentEvent]:
        """The invocation's progress from now on, as the server sends it (``task.created``,
        ``task.started``, ``task.finished``), ending with ``invocation.finished`` (data: its
        summary) or ``error``. ``read_timeout`` bounds the wait for each line (the server
        sends a keep-alive every few seconds)."""
        path = self._graph_path(graph, "invocations", invocation_id, "events")
        headers = {"Accept": "text/event-stream"}
        with self._request("GET", path, headers=headers, timeout=read_timeout, stream=True) as r:
            try:
                yield from iter_events(r.iter_lines())
            except ServerUnreachable as exc:
                raise self._unreachable(exc) from exc

    # -- outputs and logs -------------------------------------------------------------------

    def graph_outputs(
        self, graph: str, invocation_id: str, fn_name: str, *, generation: int | None = None
    ) -> list[Any]:
        kept = self._kept_outputs(graph, invocation_id, fn_name, generation)
        if kept is not None:
            return kept
        path = self._graph_path(graph, "invocations", invocation_id, "fn", fn_name, "outputs")
        params = {"limit": str(_OUTPUTS_PAGE)}
        if generation is not None:
            params["generation"] = str(generation)
        body = self._json("GET", path, params=params)
        if body.get("status") not in TERMINAL_STATUSES:
            # the in-process client's outputs are always final: wait for the same here
            self._wait(graph, invocation_id, self.wait_timeout, limit=0)
            kept = self._kept_outputs(graph, invocation_id, fn_name, generation)
            if kept is not None:
                return kept
            body = self._json("GET", path, params=params)
        error = body.get("error")
        if error:
            trace = f"\n{error['traceback']}" if error.get("traceback") else ""
            raise InvocationError(
                f"{fn_name!r} failed in invocation {invocation_id}: "
                f"{error.get('message', 'failed')}{trace}",
                invocation_id=invocation_id,
            )
        items = list(body.get("outputs", []))
        cursor = body.get("next_cursor")
        while cursor:  # the server answers one page at a time
            body = self._json("GET", path, params={**params, "cursor": cursor})
            items.extend(body.get("outputs", []))
            if body.get("next_cursor") == cursor:
                raise ApiError(502, f"GET {path} answered the same page again ({cursor!r})")
            cursor = body.get("next_cursor")
        return self._decode_outputs(graph, fn_name, _payloads(items))

    def _kept_outputs(
        self, graph: str, invocation_id: str, fn_name: str, generation: int | None
    ) -> list[Any] | None:
        """The outputs of ``fn_name`` the answer that said the invocation succeeded carried
        (:class:`FinalOutputs`), decoded; None when none are kept (or a computation is
        asked for by number)."""
        if generation is not None:
            return None
        kept = self._finals.take(graph, invocation_id, fn_name)
        return None if kept is None else self._decode_outputs(graph, fn_name, _payloads(kept))

    def _decode_outputs(self, graph: str, fn_name: str, payloads: list[Payload]) -> list[Any]:
        """Outputs as values. JSON is typed with the caller's own classes (the return
        annotation of ``fn_name`` in the graph this client registered, or else in the graph of
        that name built in this process), or left as plain data: the client never loads a
        graph's code from the server to read its outputs."""
        values: list[Any] = []
        hint: Any = None
        for payload in payloads:
            if payload.content_type != JSON:
                values.append(decode(payload))  # pickles and Files carry their own type
                continue
            try:
                raw = json.loads(payload.data)
            except ValueError as exc:
                raise EncodingError(f"an output of {fn_name!r} is not valid JSON: {exc}") from exc
            if type(raw) in _PRIMITIVES:  # typed decoding leaves these as they are
                values.append(raw)
                continue
            if hint is None:
                hint = self._output_hint(graph, fn_name)
            values.append(coerce(raw, hint))
        return values

    def _output_hint(self, graph: str, fn_name: str) -> Any:
        with self._lock:
            registered = self._registered.get(graph)
            earlier = list(reversed(self._earlier.get(graph, {}).values()))
        local = registered.graph if registered is not None else Graph.built_here(graph)
        for candidate in [local, *earlier]:
            if candidate is not None and fn_name in candidate.nodes:
                return candidate.output_hint(fn_name)
        return Any

    def logs(self, graph: str, invocation_id: str, fn_name: str) -> list[TaskLogs]:
        path = self._graph_path(graph, "invocations", invocation_id, "fn", fn_name, "logs")
        params = {"limit": str(_LOGS_PAGE)}
        found: dict[str, TaskLogs] = {}
        cursor: str | None = None
        while True:
            page = {**params, "cursor": cursor} if cursor else params
            body = self._json("GET", path, params=page)
            items = body.get("logs", []) if isinstance(body, dict) else body
            for item in items:
                log = _model(TaskLogs, item)
                found.setdefault(log.task_id, log)  # a scan may list a task twice
            after = body.get("next_cursor") if isinstance(body, dict) else None
            if not after or after == cursor:
                return list(found.values())
            cursor = after

    # -- lifecycle of invocations -----------------------------------------------------------

    def cancel_invocation(self, graph: str, invocation_id: str) -> None:
        self._request("POST", self._graph_path(graph, "invocations", invocation_id, "cancel"))

    def delete_invocation(self, graph: str, invocation_id: str) -> None:
        self._request("DELETE", self._graph_path(graph, "invocations", invocation_id))
        self._finals.forget(graph, invocation_id)

    def rerun_invocation(
        self, graph: str, invocation_id: str, *, from_function: str | None = None
    ) -> str:
        path = self._graph_path(graph, "invocations", invocation_id, "rerun")
        params = {"from_function": from_function} if from_function is not None else None
        self._finals.forget(graph, invocation_id)
        return str(self._json("POST", path, params=params)["id"])

    def rerun_graph(
        self,
        graph: str,
        *,
        from_function: str | None = None,
        invocations: Sequence[str] | None = None,
        block_until_done: bool = True,
    ) -> Replay:
        params = {"from_function": from_function} if from_function is not None else None
        body = {"invocations": list(invocations)} if invocations is not None else None
        path = self._graph_path(graph, "rerun")
        self._finals.forget(graph)
        replay = _model(Replay, self._json("POST", path, params=params, json=body))
        if not block_until_done:
            return replay
        bar = ProgressBar(f"replaying {graph}", replay.total)
        delay = _POLL_MIN_SEC
        try:
            while not replay.finished:
                bar.update(replay.done, replay.failed)
                time.sleep(delay)
                delay = min(delay * 1.5, _REPLAY_POLL_MAX_SEC)
                replay = self.replay(graph, replay.id)
            bar.update(replay.done, replay.failed)
        finally:
            bar.close()
        return replay

    def replay(self, graph: str, replay_id: str) -> Replay:
        return _model(Replay, self._json("GET", self._graph_path(graph, "replays", replay_id)))

    def cancel_replay(self, graph: str, replay_id: str) -> Replay:
        path = self._graph_path(graph, "replays", replay_id, "cancel")
        return _model(Replay, self._json("POST", path))


# -- helpers --------------------------------------------------------------------------------


def _payloads(items: Sequence[Mapping[str, Any]]) -> list[Payload]:
    """Values as the server lists them (``content_type``, base64 ``data``) -> payloads."""
    return [
        Payload(content_type=item["content_type"], data=base64.b64decode(item["data"]))
        for item in items
    ]


def _log_waiting(graph: str, invocation_id: str, waiting: str) -> None:
    logger.warning(
        "invocation %s of graph %r is waiting: %s (it goes on once an executor that offers "
        "this is live)",
        invocation_id,
        graph,
        waiting,
    )


def _model(cls: Any, data: Any) -> Any:
    """Validate ``data`` as ``cls``, ignoring fields a newer server added."""
    if isinstance(data, dict):
        data = {k: v for k, v in data.items() if k in cls.model_fields}
    return cls.model_validate(data)


def _detail(body: Any) -> str | None:
    if not isinstance(body, dict) or "detail" not in body:
        return None
    detail = body["detail"]
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list):  # FastAPI's validation errors
        parts = []
        for item in detail:
            if isinstance(item, dict):
                where = ".".join(str(p) for p in item.get("loc", ()))
                parts.append(f"{where}: {item.get('msg', item)}" if where else str(item))
            else:
                parts.append(str(item))
        return "; ".join(parts)
    return json.dumps(detail)


def _json_dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def error_from_response(response: HttpResponse) -> ApiError:
    """The exception for a 4xx/5xx answer, carrying the server's ``detail``."""
    try:
        message = _detail(response.json())
    except ValueError:
        message = None
    if message is None:
        text = response.text.strip()
        message = text[:500] if text else response.reason_phrase or "no explanation"
    if response.status_code == 404:
        return RemoteNotFoundError(404, message)
    if response.status_code == 400:
        return RemoteInvalidInputError(400, message)
    return ApiError(response.status_code, message)
