"""``indexify-cli``: drive a server's graphs and invocations, manage keys, build images.

    indexify-cli graphs | invocations GRAPH           what is registered, what ran
    indexify-cli invoke GRAPH '{"x": 1}' [--follow]   start an invocation (or --file PATH)
    indexify-cli status | follow | logs GRAPH ID      its state, a live progress bar, its logs
    indexify-cli cancel | rerun GRAPH ID
    indexify-cli keys create|list|revoke|save         API keys (an admin key is needed)
    indexify-cli build-image FILE FUNCTION            the Dockerfile of a function's Image

The server package adds its own commands (``server-dev-mode``, ``api``, ``scheduler``,
``executor``, ``topics``, ``deadletters``, ``keys generate``) when it is installed: it
registers them in the ``indexify.cli`` entry-point group (see :class:`Commands`), so the SDK
imports nothing of the server.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from rich.console import Console

from .client_cli import add_client_commands
from .keys_cli import add_key_commands

__all__ = ["ENTRY_POINT_GROUP", "SERVER_COMMANDS", "Commands", "build_parser", "main"]

#: Entry points of this group are ``register(commands: Commands) -> None`` functions.
ENTRY_POINT_GROUP = "indexify.cli"
#: Commands the server package provides (named in the hint when it is not installed).
SERVER_COMMANDS = frozenset(
    {"server-dev-mode", "api", "scheduler", "executor", "topics", "deadletters"}
)
_INSTALL_HINT = (
    "the Indexify server is not installed here; install it (pip install -e . from the "
    "repository) to get this command"
)

Handler = Callable[[argparse.Namespace], int]


def _console() -> Console:
    return Console(highlight=False, soft_wrap=True)


def _err() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


@dataclass
class Commands:
    """Where a plugin adds its commands: ``commands.add("topics", ...)`` for
    ``indexify-cli topics``, ``commands.add("generate", ..., group="keys")`` for
    ``indexify-cli keys generate``. ``add`` returns the command's ``ArgumentParser``."""

    groups: dict[str, Any]
    added: list[str] = field(default_factory=list)

    def add(
        self,
        name: str,
        help_text: str,
        handler: Handler | None = None,
        *,
        group: str = "",
        passthrough: bool = False,
        **parser_options: Any,
    ) -> argparse.ArgumentParser:
        """A command running ``handler(args) -> exit code``; ``passthrough``: arguments it
        does not know are left in ``args.rest`` instead of refused."""
        parser: argparse.ArgumentParser = self.groups[group].add_parser(
            name,
            help=help_text,
            description=parser_options.pop("description", help_text),
            **parser_options,
        )
        if handler is not None:
            parser.set_defaults(handler=handler, passthrough=passthrough)
        self.added.append(f"{group} {name}".strip())
        return parser

    def group(self, name: str, help_text: str, *, parent: str = "") -> None:
        """A command with subcommands (``indexify-cli topics list``): add them with
        ``add(..., group=name)``."""
        parser = self.add(name, help_text, group=parent)
        self.groups[name] = parser.add_subparsers(
            dest=f"{name}_command", required=True, metavar="ACTION"
        )


# -- build-image ----------------------------------------------------------------------------


def _find_function(path: Path, function: str) -> Any:
    import runpy

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


def _add_build_image(commands: Commands) -> None:
    build = commands.add(
        "build-image", "write (and build) the Docker image of a function", cmd_build_image
    )
    build.add_argument("path", help="the workflow's Python file (or a folder of them)")
    build.add_argument("function", help="the function whose Image to build")
    build.add_argument("--output", "-o", help="folder for the Dockerfile (default: a temp dir)")
    build.add_argument("--no-build", action="store_true", help="only write the Dockerfile")


# -- the parser and plugins -----------------------------------------------------------------


def _load_plugins(commands: Commands) -> list[str]:
    """Let every installed plugin add its commands; returns why those that failed did."""
    failures = []
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        try:
            register = entry.load()
        except ImportError as exc:
            failures.append(f"{entry.value}: {exc}")
            continue
        register(commands)
    return failures


def build_parser() -> tuple[argparse.ArgumentParser, Commands, list[str]]:
    """The parser with the SDK's commands and the plugins'; the plugins that failed."""
    parser = argparse.ArgumentParser(
        prog="indexify-cli",
        description="Drive Indexify graphs and invocations; with the server installed, run "
        "and inspect the server too.",
    )
    commands = Commands(
        {"": parser.add_subparsers(dest="command", required=True, metavar="COMMAND")}
    )
    add_client_commands(commands)
    commands.group("keys", "manage API keys")
    add_key_commands(commands)
    _add_build_image(commands)
    failures = _load_plugins(commands)
    return parser, commands, failures


def _missing_server_command(argv: Sequence[str], commands: Commands) -> bool:
    """``argv`` asks for a server command that is not there (the server is not installed)."""
    if not argv:
        return False
    asked = " ".join(argv[:2]) if argv[0] == "keys" else argv[0]
    wanted = asked in SERVER_COMMANDS or asked == "keys generate"
    return wanted and asked not in commands.added


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser, commands, failures = build_parser()
    if _missing_server_command(args_list, commands):
        why = f" ({'; '.join(failures)})" if failures else ""
        _err().print(f"[red]{_INSTALL_HINT}{why}")
        return 1
    args, rest = parser.parse_known_args(args_list)
    if rest and not args.passthrough:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    args.rest = rest
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
