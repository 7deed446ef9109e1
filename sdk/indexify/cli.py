"""``indexify-cli``: run the server locally, build function images, inspect Kafka.

    indexify-cli server-dev-mode            API + scheduler + executor on this machine
    indexify-cli api | scheduler            one service (settings from INDEXIFY_* variables)
    indexify-cli executor --label gpu=a100  an executor with extra labels
    indexify-cli build-image FILE FUNCTION  the Dockerfile of a function's Image (and build it)
    indexify-cli topics list|describe|lag   topics, partitions, consumer lag
    indexify-cli deadletters [--replay]     messages that could not be processed
    indexify-cli keys create|list|revoke    API keys (an admin key is needed)
    indexify-cli keys generate              a first admin key for a deployment, with its hash
    indexify-cli keys save KEY              store a key for a server in the credentials file

Every command but ``build-image`` needs the server package (``pip install -e .`` from the
repository) and, except ``api``/``scheduler``/``executor`` which wait for them, running Kafka,
Redis and MinIO (``make infra-up``).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import runpy
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from .credentials import credentials_path, forget_api_key, save_api_key
from .dev_server import infra_endpoints, unreachable
from .keys_cli import add_key_commands

__all__ = ["main"]

_INSTALL_HINT = "install the server: pip install -e . from the repository"
_INSECURE_HELP = "accept requests without an API key (local experiments only: logs a warning)"


def _console() -> Console:
    return Console(highlight=False, soft_wrap=True)


def _err() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def _server_installed() -> bool:
    """True when the server package and its dependencies import."""
    try:
        importlib.import_module("services")
        importlib.import_module("services.common.settings")
    except ImportError:
        return False
    return True


def _infra_settings() -> Any:
    from services.common.settings import InfraSettings

    return InfraSettings()


# -- server-dev-mode ------------------------------------------------------------------------


def cmd_server_dev_mode(args: argparse.Namespace) -> int:
    console = _console()
    settings = _infra_settings()
    problems = unreachable(infra_endpoints(settings))
    if problems:
        for problem in problems:
            _err().print(f"[red]{problem}")
        return 1
    from services.devstack import DevStack

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
    if args.concurrency is not None:
        forwarded += ["--concurrency", str(args.concurrency)]
    if args.image:
        forwarded += ["--image", args.image]
    return _exec_module("services.executor", forwarded + args.rest)


# -- build-image ----------------------------------------------------------------------------


def _find_function(path: Path, function: str) -> Any:
    from .functions import spec_of

    files = sorted(path.glob("*.py")) if path.is_dir() else [path]
    if not files or not all(f.is_file() for f in files):
        raise LookupError(f"{path} is neither a Python file nor a folder of them")
    for file in files:
        sys.path.insert(0, str(file.parent))
        try:
            namespace = runpy.run_path(str(file), run_name="__indexify_build__")
        finally:
            sys.path.remove(str(file.parent))
        for value in namespace.values():
            try:
                if spec_of(value).name == function:
                    return value
            except Exception:
                continue
    raise LookupError(f"no indexify function named {function!r} in {path}")


def _docker_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        probe = subprocess.run(["docker", "info"], capture_output=True, timeout=15, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


def cmd_build_image(args: argparse.Namespace) -> int:
    from .functions import spec_of

    console = _console()
    try:
        node = _find_function(Path(args.path), args.function)
    except LookupError as exc:
        _err().print(f"[red]{exc}")
        return 1
    image = spec_of(node).image
    if image is None:
        _err().print(
            f"[red]function {args.function!r} has no image=Image(...); it runs in the default "
            "executor image, so there is nothing to build"
        )
        return 1
    definition = image.definition()
    tag = f"{definition.name}:{definition.tag}"
    context = Path(args.output) if args.output else Path(tempfile.mkdtemp(prefix="indexify-"))
    context.mkdir(parents=True, exist_ok=True)
    dockerfile = context / "Dockerfile"
    dockerfile.write_text(image.dockerfile())
    console.print(f"# Dockerfile of image {tag} (function {args.function!r}): {dockerfile}")
    console.print(image.dockerfile(), markup=False)
    if args.no_build:
        return 0
    if not _docker_answers():
        console.print(
            f"no Docker engine answers here; build it where one does with:\n"
            f"  docker build -t {tag} {context}"
        )
        return 0
    return subprocess.run(["docker", "build", "-t", tag, str(context)], check=False).returncode


# -- Kafka tooling --------------------------------------------------------------------------


def _run_tool(coro: Any) -> Any:
    from .kafka_tools import KafkaToolError

    try:
        return asyncio.run(coro)
    except KafkaToolError as exc:
        _err().print(f"[red]{exc}")
        raise SystemExit(1) from None


def cmd_topics_list(args: argparse.Namespace) -> int:
    from .kafka_tools import list_topics

    settings = _infra_settings()
    rows = _run_tool(list_topics(settings, everything=args.all))
    table = Table(title=f"topics ({'all' if args.all else settings.prefix + '.*'})")
    for column in ("topic", "partitions", "messages"):
        table.add_column(column, justify="left" if column == "topic" else "right")
    for row in rows:
        table.add_row(row.name, str(row.partitions), str(row.messages))
    _console().print(table)
    return 0


def cmd_topics_describe(args: argparse.Namespace) -> int:
    from .kafka_tools import describe_topic

    rows = _run_tool(describe_topic(_infra_settings(), args.topic))
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
    from .kafka_tools import consumer_lag

    rows = _run_tool(consumer_lag(_infra_settings(), args.group))
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
    from .kafka_tools import read_deadletters, replay_deadletters

    settings = _infra_settings()
    rows = _run_tool(read_deadletters(settings, args.limit))
    table = Table(title=f"dead letters ({len(rows)})")
    for column in ("offset", "at", "from topic", "partition", "offset in topic", "reason"):
        table.add_column(column)
    for r in rows:
        letter = r.letter
        if letter is None:
            table.add_row(str(r.offset), "", "?", "", "", f"undecodable: {r.raw[:80]!r}")
            continue
        at = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(letter.at))
        table.add_row(
            str(r.offset),
            at,
            letter.topic,
            str(letter.partition),
            str(letter.offset),
            letter.reason,
        )
    console = _console()
    console.print(table)
    if args.replay and rows:
        count = _run_tool(replay_deadletters(settings, rows))
        console.print(f"replayed {count} message(s) to their original topics")
    return 0


# -- argument parsing -----------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="indexify-cli", description="Run and inspect an Indexify server."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    dev = sub.add_parser("server-dev-mode", help="run API, scheduler and executor(s) locally")
    dev.add_argument("--port", type=int, default=int(os.environ.get("INDEXIFY_API_PORT", 8900)))
    dev.add_argument("--executors", type=int, default=1)
    dev.add_argument("--concurrency", type=int, default=2, help="tasks at once per executor")
    dev.add_argument("--insecure-no-auth", action="store_true", help=_INSECURE_HELP)
    dev.set_defaults(handler=cmd_server_dev_mode, needs_server=True)

    api = sub.add_parser("api", help="run the API service")
    api.add_argument("--port", type=int, default=None)
    api.add_argument("--insecure-no-auth", action="store_true", help=_INSECURE_HELP)
    api.set_defaults(handler=cmd_api, needs_server=True)
    scheduler = sub.add_parser("scheduler", help="run one scheduler")
    scheduler.set_defaults(handler=cmd_scheduler, needs_server=True)
    executor = sub.add_parser("executor", help="run one executor")
    executor.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    executor.add_argument("--concurrency", type=int, default=None)
    executor.add_argument("--image", default=None, help="the image this executor runs in")
    executor.set_defaults(handler=cmd_executor, needs_server=True)

    build = sub.add_parser("build-image", help="write (and build) a function's image")
    build.add_argument("path", help="the workflow's Python file (or a folder of them)")
    build.add_argument("function", help="the function whose Image to build")
    build.add_argument("--output", "-o", help="folder for the Dockerfile (default: a temp dir)")
    build.add_argument("--no-build", action="store_true", help="only write the Dockerfile")
    build.set_defaults(handler=cmd_build_image, needs_server=False)

    topics = sub.add_parser("topics", help="inspect Kafka topics").add_subparsers(
        dest="topics_command", required=True, metavar="ACTION"
    )
    listing = topics.add_parser("list", help="topics of this prefix")
    listing.add_argument("--all", action="store_true", help="every topic, not only ours")
    listing.set_defaults(handler=cmd_topics_list, needs_server=True)
    describe = topics.add_parser("describe", help="partitions and offsets of one topic")
    describe.add_argument("topic")
    describe.set_defaults(handler=cmd_topics_describe, needs_server=True)
    lag = topics.add_parser("lag", help="consumer lag per partition")
    lag.add_argument("--group", default=None, help="default: every group of this prefix")
    lag.set_defaults(handler=cmd_topics_lag, needs_server=True)

    dead = sub.add_parser("deadletters", help="messages that could not be processed")
    dead.add_argument("--limit", type=int, default=20, help="last N per partition")
    dead.add_argument("--replay", action="store_true", help="publish them to their topics again")
    dead.set_defaults(handler=cmd_deadletters, needs_server=True)
    add_key_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and args.handler not in (cmd_api, cmd_scheduler, cmd_executor):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    args.rest = rest
    if args.needs_server and not _server_installed():
        _err().print(f"[red]the Indexify server is not installed here; {_INSTALL_HINT}")
        return 1
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
