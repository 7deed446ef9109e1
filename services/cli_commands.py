"""The server's ``indexify-cli`` commands, plugged in through the ``indexify.cli`` entry point.

    indexify-cli server-dev-mode            API + scheduler + executor on this machine
    indexify-cli api | scheduler            one service (settings from INDEXIFY_* variables)
    indexify-cli executor --label gpu=a100  an executor with extra labels
    indexify-cli topics list|describe|lag   topics, partitions, consumer lag
    indexify-cli deadletters [--replay] [--mark-handled P:O ...]
    indexify-cli keys generate [--save]     a first admin key for a deployment, with its hash

The SDK's CLI (:mod:`indexify.cli`) finds :func:`register` through the entry point the
server's ``pyproject.toml`` declares, so the SDK never imports the server.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from pydantic_settings import BaseSettings
from rich.console import Console
from rich.table import Table

from indexify.cli import Commands
from indexify.client import DEFAULT_SERVICE_URL
from indexify.credentials import credentials_path, forget_api_key, save_api_key
from indexify.factory import URL_ENV

from .common.settings import ApiSettings, ExecutorSettings, InfraSettings, SchedulerSettings
from .dev_checks import infra_endpoints, unreachable

__all__ = ["register", "settings_help"]

_T = TypeVar("_T")
_INSECURE_HELP = (
    "accept requests without an API key, local experiments only: logs a warning "
    "(env INDEXIFY_API_INSECURE_NO_AUTH)"
)
_PREFIX_HELP = "the names' prefix of the deployment (env INDEXIFY_PREFIX; default %(default)s)"
_TIMEOUT_HELP = "seconds to wait for each answer of Kafka (default %(default)s)"


def _console() -> Console:
    return Console(highlight=False, soft_wrap=True)


def _err() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def settings_help(*classes: type[BaseSettings]) -> str:
    """Every environment variable of the settings ``classes``, with default and meaning."""
    lines = ["environment variables:"]
    for cls in classes:
        prefix = str(cls.model_config.get("env_prefix", ""))
        for name, info in cls.model_fields.items():
            default = "" if info.repr is False else f" (default {info.get_default()!r})"
            if info.default_factory is not None and info.repr is not False:
                default = ""
            meaning = f": {info.description}" if info.description else ""
            lines.append(f"  {prefix}{name.upper()}{default}{meaning}")
    return "\n".join(lines)


def _infra(args: argparse.Namespace) -> InfraSettings:
    prefix = getattr(args, "prefix", None)
    return InfraSettings(prefix=prefix) if prefix else InfraSettings()


# -- server-dev-mode ------------------------------------------------------------------------


def cmd_server_dev_mode(args: argparse.Namespace) -> int:
    from .devstack import DevStack

    console = _console()
    settings = InfraSettings()
    problems = unreachable(infra_endpoints(settings))
    if problems:
        for problem in problems:
            _err().print(f"[red]{problem}")
        return 1

    host = os.environ.get("INDEXIFY_API_HOST", "127.0.0.1")
    env = {"INDEXIFY_API_INSECURE_NO_AUTH": "1"} if args.insecure_no_auth else None
    with DevStack(env, api_port=args.port) as stack:
        try:
            stack.start_default(executors=args.executors, concurrency=args.concurrency)
        except (RuntimeError, TimeoutError) as exc:
            _err().print(f"[red]{exc}; stopping the rest")
            return 1
        url = stack.url if host in ("0.0.0.0", "::", "127.0.0.1") else f"http://{host}:{args.port}"
        console.print(
            f"[green]Indexify is ready at {url}[/] (UI {url}/ui, API docs {url}/docs) with "
            f"{args.executors} executor(s) (Kafka {settings.kafka_bootstrap}, prefix "
            f"{settings.prefix!r}); Ctrl-C stops it"
        )
        if stack.api_key is not None:
            if url != stack.url:
                save_api_key(url, stack.api_key)
            console.print(
                f"Admin API key (all namespaces): [bold]{stack.api_key}[/]\n"
                f"saved for {url} in {credentials_path()}, where the SDK and indexify-cli "
                "find it; other clients send it as `Authorization: Bearer <key>`"
            )
        elif stack.env.get("INDEXIFY_API_ADMIN_KEY_SHA256"):
            console.print("API keys: the admin key is the one INDEXIFY_API_ADMIN_KEY_SHA256 names")
        else:
            _err().print(
                "[bold red]WARNING: --insecure-no-auth: the API accepts every request without "
                "a key, as an admin; anyone who reaches the port can run code on this machine"
            )
        try:
            exited = stack.supervise()
        finally:
            if stack.api_key is not None and url != stack.url:
                forget_api_key(url, stack.api_key)
    if exited is not None:
        name, code = exited
        _err().print(f"[red]{name} exited with code {code}; stopped the rest")
        return code or 1
    console.print("stopped")
    return 0


# -- one service ----------------------------------------------------------------------------


def _exec_module(module: str, args: list[str], env: dict[str, str] | None = None) -> int:
    argv = [sys.executable, "-m", module, *args]
    os.execve(sys.executable, argv, {**os.environ, **(env or {})})
    return 1  # not reached


def cmd_api(args: argparse.Namespace) -> int:
    env = {"INDEXIFY_API_PORT": str(args.port)} if args.port else {}
    if args.insecure_no_auth:
        env["INDEXIFY_API_INSECURE_NO_AUTH"] = "1"
    return _exec_module("services.api", args.rest, env)


def cmd_scheduler(args: argparse.Namespace) -> int:
    return _exec_module("services.scheduler", args.rest)


def cmd_executor(args: argparse.Namespace) -> int:
    forwarded: list[str] = []
    for label in args.label:
        if "=" not in label:
            _err().print(f"[red]--label {label!r} is not of the form key=value (e.g. gpu=a100)")
            return 2
        forwarded += ["--label", label]
    for flag, value in (("--concurrency", args.concurrency), ("--image", args.image)):
        if value is not None:
            forwarded += [flag, str(value)]
    if args.id:
        forwarded += ["--id", args.id]
    return _exec_module("services.executor", forwarded + args.rest)


# -- Kafka tooling --------------------------------------------------------------------------


def _run_tool(coro: Coroutine[Any, Any, _T]) -> _T:
    return asyncio.run(coro)


def _reporting(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """``handler`` with the tools' errors printed as they say, exit code 1."""

    def run(args: argparse.Namespace) -> int:
        from .common.kafka_tools import KafkaToolError

        try:
            return handler(args)
        except KafkaToolError as exc:
            _err().print(str(exc), style="red", markup=False)
            return 1

    return run


def cmd_topics_list(args: argparse.Namespace) -> int:
    from .common.kafka_tools import list_topics

    settings = _infra(args)
    rows = _run_tool(list_topics(settings, everything=args.all, timeout=args.timeout))
    table = Table(title=f"topics ({'all' if args.all else settings.prefix + '.*'}): {len(rows)}")
    for column in ("topic", "partitions", "messages"):
        table.add_column(column, justify="left" if column == "topic" else "right")
    for row in rows:
        table.add_row(row.name, str(row.partitions), str(row.messages))
    _console().print(table)
    return 0


def cmd_topics_describe(args: argparse.Namespace) -> int:
    from .common.kafka_tools import describe_topic

    rows = _run_tool(describe_topic(_infra(args), args.topic, timeout=args.timeout))
    table = Table(title=args.topic)
    for column in ("partition", "leader", "replicas", "isr", "earliest", "latest"):
        table.add_column(column, justify="right")
    for r in rows:
        replicas, isr = ",".join(map(str, r.replicas)), ",".join(map(str, r.isr))
        table.add_row(
            str(r.partition), str(r.leader), replicas, isr, str(r.earliest), str(r.latest)
        )
    _console().print(table)
    return 0


def cmd_topics_lag(args: argparse.Namespace) -> int:
    from .common.kafka_tools import consumer_lag

    rows = _run_tool(consumer_lag(_infra(args), args.group, timeout=args.timeout))
    if args.nonzero:
        rows = [r for r in rows if r.lag > 0]
    table = Table(title="consumer lag")
    for column in ("group", "topic", "partition", "committed", "latest", "lag"):
        table.add_column(column, justify="left" if column in ("group", "topic") else "right")
    for r in rows:
        table.add_row(
            r.group, r.topic, str(r.partition), str(r.committed), str(r.latest), str(r.lag)
        )
    console = _console()
    console.print(table)
    console.print(f"total lag: {sum(r.lag for r in rows)}")
    return 0


def cmd_deadletters(args: argparse.Namespace) -> int:
    from .common.kafka_tools import mark_handled, read_deadletters, replay_deadletters

    settings = _infra(args)
    console = _console()
    if args.mark_handled:
        refs = args.mark_handled
        if refs == ["all"]:
            shown = _run_tool(read_deadletters(settings, args.limit, timeout=args.timeout))
            refs = [r.ref for r in shown]
        marked = _run_tool(mark_handled(settings, refs, note=args.note))
        console.print(f"marked {len(marked)} dead letter(s) handled: {' '.join(marked)}")
        return 0
    rows = _run_tool(
        read_deadletters(
            settings, args.limit, include_handled=args.include_handled, timeout=args.timeout
        )
    )
    table = Table(title=f"dead letters ({len(rows)})")
    columns = ("letter", "at", "from topic", "partition", "offset in topic", "reason", "handled")
    for column in columns:
        table.add_column(column)
    for r in rows:
        handled = "yes" if r.handled else ""
        letter = r.letter
        if letter is None:
            table.add_row(r.ref, "", "?", "", "", f"undecodable: {r.raw[:80]!r}", handled)
            continue
        at = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(letter.at))
        table.add_row(
            r.ref,
            at,
            letter.topic,
            str(letter.partition),
            str(letter.offset),
            letter.reason,
            handled,
        )
    console.print(table)
    if not args.include_handled:
        console.print(
            "letters marked handled are hidden (--include-handled shows them); mark some "
            "with --mark-handled PARTITION:OFFSET ... (or all)"
        )
    if args.replay and rows:
        count = _run_tool(replay_deadletters(settings, rows, timeout=args.timeout))
        console.print(f"replayed {count} message(s) to their original topics")
    return 0


# -- keys generate --------------------------------------------------------------------------


def cmd_keys_generate(args: argparse.Namespace) -> int:
    from .common.api_keys import hash_token, new_token

    token = new_token()
    console = _console()
    console.print("A new admin key for all namespaces (shown only now):")
    console.print(token, markup=False)
    console.print(
        "Start the API with this setting (its SHA-256), then create keys with it:\n"
        f"INDEXIFY_API_ADMIN_KEY_SHA256={hash_token(token)}",
        markup=False,
    )
    if args.save:
        console.print(f"saved for {args.url} in {save_api_key(args.url, token)}")
    return 0


# -- registration ---------------------------------------------------------------------------


def _kafka_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--prefix", default=os.environ.get("INDEXIFY_PREFIX") or "indexify", help=_PREFIX_HELP
    )
    parser.add_argument("--timeout", type=float, default=10.0, help=_TIMEOUT_HELP)


def register(commands: Commands) -> None:
    """Add the server's commands to ``indexify-cli`` (the ``indexify.cli`` entry point)."""
    formatter: dict[str, Any] = {"formatter_class": argparse.RawDescriptionHelpFormatter}
    port_default = int(os.environ.get("INDEXIFY_API_PORT", 8900))

    dev = commands.add(
        "server-dev-mode",
        "run API, scheduler and executor(s) on this machine",
        cmd_server_dev_mode,
        epilog=settings_help(InfraSettings),
        **formatter,
    )
    dev.add_argument(
        "--port",
        type=int,
        default=port_default,
        help="the API's port (env INDEXIFY_API_PORT; default %(default)s)",
    )
    dev.add_argument("--executors", type=int, default=1, help="executors to start (default 1)")
    dev.add_argument(
        "--concurrency",
        type=int,
        default=2,
        help="tasks at once per executor (like INDEXIFY_EXECUTOR_CONCURRENCY; default 2)",
    )
    dev.add_argument("--insecure-no-auth", action="store_true", help=_INSECURE_HELP)

    api = commands.add(
        "api",
        "run the API service",
        cmd_api,
        passthrough=True,
        epilog=settings_help(InfraSettings, ApiSettings),
        **formatter,
    )
    api.add_argument(
        "--port",
        type=int,
        default=None,
        help="the port (env INDEXIFY_API_PORT; default 8900)",
    )
    api.add_argument("--insecure-no-auth", action="store_true", help=_INSECURE_HELP)
    commands.add(
        "scheduler",
        "run one scheduler",
        cmd_scheduler,
        passthrough=True,
        epilog=settings_help(InfraSettings, SchedulerSettings),
        **formatter,
    )
    executor = commands.add(
        "executor",
        "run one executor",
        cmd_executor,
        passthrough=True,
        description="Run one executor: it consumes the task topics its labels satisfy and "
        "runs the functions in worker processes. Flags override the environment.",
        epilog=settings_help(InfraSettings, ExecutorSettings),
        **formatter,
    )
    executor.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a label to advertise, repeatable (e.g. gpu=a100); added to the labels of "
        "env INDEXIFY_EXECUTOR_LABELS (a JSON object)",
    )
    executor.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="worker processes, i.e. tasks at once (env INDEXIFY_EXECUTOR_CONCURRENCY; default 2)",
    )
    executor.add_argument(
        "--image",
        default=None,
        help="the image this executor runs, advertised as label image=NAME (env "
        "INDEXIFY_EXECUTOR_IMAGE; default indexify-executor-default)",
    )
    executor.add_argument(
        "--id",
        default=None,
        help="the executor's id (env INDEXIFY_EXECUTOR_ID; default <hostname>-<random>)",
    )

    commands.group("topics", "inspect Kafka topics and consumer lag")
    listing = commands.add(
        "list", "topics of the prefix", _reporting(cmd_topics_list), group="topics"
    )
    listing.add_argument("--all", action="store_true", help="every topic, not only the prefix's")
    _kafka_options(listing)
    describe = commands.add(
        "describe",
        "partitions and offsets of one topic",
        _reporting(cmd_topics_describe),
        group="topics",
    )
    describe.add_argument("topic", help="the topic's full name")
    _kafka_options(describe)
    lag = commands.add(
        "lag", "consumer lag per partition", _reporting(cmd_topics_lag), group="topics"
    )
    lag.add_argument(
        "--group",
        default=None,
        help="one consumer group, by its short name (scheduler, executors) or full name "
        "(default: every group of the prefix)",
    )
    lag.add_argument("--nonzero", action="store_true", help="only partitions that lag")
    _kafka_options(lag)

    dead = commands.add(
        "deadletters", "messages that could not be processed", _reporting(cmd_deadletters)
    )
    dead.add_argument("--limit", type=int, default=20, help="the last N per partition")
    dead.add_argument(
        "--replay", action="store_true", help="publish the listed ones to their topics again"
    )
    dead.add_argument(
        "--mark-handled",
        nargs="+",
        default=None,
        metavar="PARTITION:OFFSET",
        help="record these letters (the 'letter' column), or 'all' listed, as handled: "
        "listing hides them",
    )
    dead.add_argument("--note", default="", help="why they are handled (kept with the mark)")
    dead.add_argument(
        "--include-handled", action="store_true", help="list the letters marked handled too"
    )
    _kafka_options(dead)

    generate = commands.add(
        "generate",
        "print a new admin key and the INDEXIFY_API_ADMIN_KEY_SHA256 setting that admits it",
        cmd_keys_generate,
        group="keys",
    )
    generate.add_argument(
        "--url",
        default=os.environ.get(URL_ENV) or DEFAULT_SERVICE_URL,
        help=f"the server whose key --save stores (env {URL_ENV}; default %(default)s)",
    )
    generate.add_argument("--save", action="store_true", help="store the key for --url")
