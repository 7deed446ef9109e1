"""``indexify-cli`` commands that drive a server through the SDK's :class:`RemoteClient`.

    indexify-cli graphs                                  graphs of the namespace
    indexify-cli invocations GRAPH [--limit N]           its invocations, newest first
    indexify-cli invoke GRAPH '{"x": 1}' [--follow]      start one (or --file PATH)
    indexify-cli status GRAPH ID [--tasks] [--json]      status, counts, outputs, errors
    indexify-cli follow GRAPH ID                         a live progress bar of its tasks
    indexify-cli logs GRAPH ID [--function FN]           what its tasks printed, tracebacks
    indexify-cli cancel GRAPH ID | rerun GRAPH ID [--from-function FN]
    indexify-cli backfill GRAPH [--from-function FN] [--no-wait]   replay all its invocations

Every command takes ``--url`` (``$INDEXIFY_URL``, else ``http://localhost:8900``),
``--api-key`` (``$INDEXIFY_API_KEY``, else the key stored for that URL: see
:mod:`indexify.credentials`) and ``--namespace`` (``$INDEXIFY_NAMESPACE``, else ``default``).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .client import DEFAULT_NAMESPACE, DEFAULT_SERVICE_URL
from .credentials import API_KEY_ENV
from .errors import ApiError, IndexifyError
from .factory import URL_ENV
from .models import InvocationInfo
from .remote import RemoteClient

__all__ = ["NAMESPACE_ENV", "TaskTally", "add_client_commands", "add_server_options"]

NAMESPACE_ENV = "INDEXIFY_NAMESPACE"
_FINAL = frozenset({"succeeded", "failed", "cancelled"})


def _console() -> Console:
    return Console(highlight=False, soft_wrap=True)


def _err() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def add_server_options(
    parser: argparse.ArgumentParser, *, namespace: bool = False, api_key_help: str = "the key"
) -> None:
    """``--url`` and ``--api-key`` (and ``--namespace``), each naming its variable."""
    parser.add_argument(
        "--url",
        default=os.environ.get(URL_ENV) or DEFAULT_SERVICE_URL,
        help=f"the server (env {URL_ENV}; default %(default)s)",
    )
    parser.add_argument(
        "--api-key",
        default=None,
        help=f"{api_key_help} to send (env {API_KEY_ENV}; default: the key stored for --url "
        "in the credentials file, env INDEXIFY_CREDENTIALS_FILE)",
    )
    if namespace:
        parser.add_argument(
            "--namespace",
            "-n",
            default=os.environ.get(NAMESPACE_ENV) or DEFAULT_NAMESPACE,
            help=f"the namespace (env {NAMESPACE_ENV}; default %(default)s)",
        )


def _client(args: argparse.Namespace) -> RemoteClient:
    return RemoteClient(args.url, namespace=args.namespace, api_key=args.api_key)


def _run(handler: Any) -> Any:
    """``handler(client, args)`` with a client, SDK errors printed as what they say."""

    def run(args: argparse.Namespace) -> int:
        try:
            with _client(args) as client:
                return int(handler(client, args) or 0)
        except ApiError as exc:
            _err().print(f"{exc.status_code}: {exc.message}", style="red", markup=False)
            return 1
        except (IndexifyError, ValueError, OSError) as exc:
            _err().print(str(exc), style="red", markup=False)
            return 1
        except KeyboardInterrupt:
            _err().print("interrupted (the invocation goes on: `indexify-cli cancel` stops it)")
            return 130

    return run


def _when(at: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at)) if at else ""


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "none yet"


# -- graphs and invocations -----------------------------------------------------------------


def cmd_graphs(client: RemoteClient, args: argparse.Namespace) -> int:
    table = Table("graph", "version", "registered", "description", title=client.namespace)
    for name in client.graphs():
        info = client.graph(name)
        table.add_row(name, info.version, _when(info.created_at), info.description)
    _console().print(table)
    return 0


def cmd_invocations(client: RemoteClient, args: argparse.Namespace) -> int:
    infos = sorted(client.invocations(args.graph), key=lambda i: i.created_at, reverse=True)
    if args.status:
        infos = [i for i in infos if i.status == args.status]
    table = Table("invocation", "status", "created", "duration", "tasks", title=args.graph)
    for info in infos[: args.limit]:
        started = info.started_at or info.created_at
        took = f"{info.finished_at - started:.1f} s" if info.finished_at else ""
        table.add_row(info.id, info.status, _when(info.created_at), took, _counts(info.task_counts))
    _console().print(table)
    return 0


def _arguments(text: str | None) -> dict[str, Any]:
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"ARGS is not JSON ({exc}); pass an object, e.g. '{{\"x\": 1}}'") from exc
    if not isinstance(value, dict):
        raise ValueError("ARGS must be a JSON object of the start function's arguments")
    return value


def cmd_invoke(client: RemoteClient, args: argparse.Namespace) -> int:
    if args.file is not None:
        if args.args is not None:
            raise ValueError("give either ARGS or --file, not both")
        metadata = json.loads(args.metadata) if args.metadata else None
        invocation_id = client.invoke_graph_with_file(args.graph, args.file, metadata)
    else:
        invocation_id = client.invoke_graph_with_object(args.graph, **_arguments(args.args))
    print(invocation_id, flush=True)
    if not args.follow:
        return 0
    return _exit_code(follow(client, args.graph, invocation_id))


# -- status, follow, logs -------------------------------------------------------------------


def cmd_status(client: RemoteClient, args: argparse.Namespace) -> int:
    info = client.invocation_status(args.graph, args.invocation_id)
    if args.json:
        print(info.model_dump_json(exclude={"tasks", "next_tasks_cursor"}))
        return 0
    console = _console()
    took = f" in {info.finished_at - info.created_at:.2f} s" if info.finished_at else ""
    console.print(
        f"invocation [bold]{info.id}[/] of {info.graph} (version {info.graph_version}): "
        f"[bold]{info.status}[/]{took}"
    )
    console.print(f"created {_when(info.created_at)}; tasks: {_counts(info.task_counts)}")
    if info.outputs:
        console.print(f"outputs: {_counts(info.outputs)}")
    if info.error is not None:
        where = f" in {info.error_function}" if info.error_function else ""
        console.print(f"error{where}: {info.error.message}", style="red", markup=False)
    if args.tasks:
        table = Table("task", "function", "status", "attempt", "outputs", "error")
        for task in client.invocation_tasks(args.graph, args.invocation_id):
            error = task.error.message if task.error else ""
            table.add_row(
                task.id,
                task.function,
                task.status,
                str(task.attempt),
                str(task.output_count),
                error,
            )
        console.print(table)
    return 0


@dataclass
class TaskTally:
    """The state of each task of an invocation, from its listing and its progress events
    (each task counted once, whichever tells first)."""

    states: dict[str, str] = field(default_factory=dict)

    def seed(self, tasks: Iterable[tuple[str, str]]) -> None:
        """``(task id, status)`` as listed; events already applied win."""
        for task_id, status in tasks:
            self.states.setdefault(task_id, status)

    def apply(self, kind: str, data: dict[str, Any]) -> None:
        task_id = data.get("task_id")
        if not isinstance(task_id, str):
            return
        current = self.states.get(task_id)
        if kind == "task.created":
            self.states.setdefault(task_id, "queued")
        elif kind == "task.started" and current != "succeeded":
            self.states[task_id] = "running"  # a retry starts again after a failure
        elif kind == "task.finished":
            self.states[task_id] = "succeeded" if data.get("outcome") == "success" else "failed"

    @property
    def total(self) -> int:
        return len(self.states)

    @property
    def done(self) -> int:
        return sum(1 for state in self.states.values() if state in _FINAL)

    def describe(self) -> str:
        counts: dict[str, int] = {}
        for state in self.states.values():
            counts[state] = counts.get(state, 0) + 1
        order = ("running", "queued", "succeeded", "failed", "cancelled")
        return " · ".join(f"{counts[s]} {s}" for s in order if counts.get(s))


def _info(data: Any) -> InvocationInfo:
    fields = InvocationInfo.model_fields
    return InvocationInfo.model_validate({k: v for k, v in data.items() if k in fields})


def follow(client: RemoteClient, graph: str, invocation_id: str) -> InvocationInfo:
    """Show a progress bar of the invocation's tasks until it ends; returns its summary."""
    events = client.progress_events(graph, invocation_id)
    next(events, None)  # the stream is open (it sends invocation.accepted at once)...
    tally = TaskTally()  # ...so no event is missed between the listing and the stream
    tally.seed((t.id, t.status) for t in client.invocation_tasks(graph, invocation_id))
    final: InvocationInfo | None = None
    columns = (
        TextColumn(f"[bold]{graph}[/] {invocation_id}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=_err(), transient=False) as progress:
        bar = progress.add_task(tally.describe(), total=tally.total or None)
        for event in events:
            if event.event == "invocation.finished":
                final = _info(event.json())
                break
            if event.event == "error":
                raise ApiError(502, f"the progress stream ended: {event.data}")
            tally.apply(event.event, event.json())
            progress.update(
                bar, total=tally.total, completed=tally.done, description=tally.describe()
            )
        progress.update(bar, total=tally.total, completed=tally.done, description=tally.describe())
    if final is None:  # the stream was cut: ask for the outcome
        final = client.wait_for_invocation(graph, invocation_id)
    _report(final)
    return final


def _report(info: InvocationInfo) -> None:
    took = f" in {info.finished_at - info.created_at:.2f} s" if info.finished_at else ""
    colour = "green" if info.status == "succeeded" else "red"
    _console().print(f"[{colour}]{info.status}[/]{took}; tasks: {_counts(info.task_counts)}")
    if info.error is not None:
        where = f" in {info.error_function}" if info.error_function else ""
        _console().print(f"error{where}: {info.error.message}", style="red", markup=False)


def _exit_code(info: InvocationInfo) -> int:
    return 0 if info.status == "succeeded" else 1


def cmd_follow(client: RemoteClient, args: argparse.Namespace) -> int:
    return _exit_code(follow(client, args.graph, args.invocation_id))


def cmd_logs(client: RemoteClient, args: argparse.Namespace) -> int:
    if args.function:
        functions = args.function
    else:
        tasks = client.invocation_tasks(args.graph, args.invocation_id)
        functions = list(dict.fromkeys(t.function for t in tasks))
    console = _console()
    for function in functions:
        for log in client.logs(args.graph, args.invocation_id, function):
            console.rule(f"{function} · task {log.task_id}")
            if log.stdout:
                console.print(log.stdout, markup=False, end="")
            if log.stderr:
                console.print(log.stderr, markup=False, end="", style="yellow")
            if log.traceback:
                console.print(log.traceback, markup=False, end="", style="red")
    return 0


def cmd_cancel(client: RemoteClient, args: argparse.Namespace) -> int:
    client.cancel_invocation(args.graph, args.invocation_id)
    _console().print(f"cancel of {args.invocation_id} requested")
    return 0


def cmd_rerun(client: RemoteClient, args: argparse.Namespace) -> int:
    print(client.rerun_invocation(args.graph, args.invocation_id, from_function=args.from_function))
    return 0


def cmd_backfill(client: RemoteClient, args: argparse.Namespace) -> int:
    replay = client.rerun_graph(
        args.graph, from_function=args.from_function, block_until_done=not args.no_wait
    )
    _console().print(
        f"replay {replay.id}: {replay.status}, {replay.done}/{replay.total} done, "
        f"{replay.failed} failed"
    )
    return 1 if replay.status in ("failed", "cancelled") else 0


# -- the commands ---------------------------------------------------------------------------


def add_client_commands(commands: Any) -> None:
    """Add the client's commands to the CLI (a :class:`indexify.cli.Commands`)."""

    def command(name: str, help_text: str, handler: Any, *, invocation: bool = True) -> Any:
        parser = commands.add(name, help_text, _run(handler))
        add_server_options(parser, namespace=True)
        if name != "graphs":
            parser.add_argument("graph", help="the graph's name")
        if invocation:
            parser.add_argument("invocation_id", help="the invocation's id")
        return parser

    command("graphs", "list the graphs of the namespace", cmd_graphs, invocation=False)
    listing = command(
        "invocations", "list a graph's invocations", cmd_invocations, invocation=False
    )
    listing.add_argument("--limit", type=int, default=50, help="at most this many (newest first)")
    listing.add_argument(
        "--status",
        choices=("pending", "running", "succeeded", "failed", "cancelled"),
        help="only invocations in this status",
    )
    invoke = command("invoke", "start an invocation of a graph", cmd_invoke, invocation=False)
    invoke.add_argument(
        "args", nargs="?", default=None, help="the start function's arguments as a JSON object"
    )
    invoke.add_argument("--file", default=None, help="invoke with this file (an indexify.File)")
    invoke.add_argument("--metadata", default=None, help="the file's metadata, a JSON object")
    invoke.add_argument(
        "--follow",
        action="store_true",
        help="show its progress until it ends (exit 1 unless it succeeded)",
    )
    status = command("status", "an invocation's status, task counts and error", cmd_status)
    status.add_argument("--tasks", action="store_true", help="list every task too")
    status.add_argument("--json", action="store_true", help="print the summary as JSON")
    command("follow", "a live progress bar of an invocation's tasks", cmd_follow)
    logs = command("logs", "stdout, stderr and tracebacks of an invocation's tasks", cmd_logs)
    logs.add_argument(
        "--function", action="append", default=None, help="only this function (repeatable)"
    )
    command("cancel", "cancel an invocation", cmd_cancel)
    from_function_help = "recompute this function and its descendants even if unchanged"
    rerun = command(
        "rerun", "compute an invocation again, in place, on the current version", cmd_rerun
    )
    rerun.add_argument("--from-function", default=None, help=from_function_help)
    backfill = command(
        "backfill",
        "replay every invocation of a graph on its current version",
        cmd_backfill,
        invocation=False,
    )
    backfill.add_argument("--from-function", default=None, help=from_function_help)
    backfill.add_argument("--no-wait", action="store_true", help="print the replay id and return")
