"""``indexify-cli`` parsing and help: every option explains itself and names its variable."""

from __future__ import annotations

import argparse
import json

import pytest

from indexify.cli import build_parser, main
from indexify.client_cli import TaskTally, follow
from indexify.errors import ApiError
from indexify.http import HttpRequest, HttpResponse
from indexify.remote import RemoteClient
from services.common.kafka_tools import resolve_groups, short_group_name

#: The variable each option falls back to, wherever it appears.
VARIABLES = {
    "--url": "INDEXIFY_URL",
    "--api-key": "INDEXIFY_API_KEY",
    "--namespace": "INDEXIFY_NAMESPACE",
    "--prefix": "INDEXIFY_PREFIX",
    "--port": "INDEXIFY_API_PORT",
    "--insecure-no-auth": "INDEXIFY_API_INSECURE_NO_AUTH",
    "--label": "INDEXIFY_EXECUTOR_LABELS",
    "--concurrency": "INDEXIFY_EXECUTOR_CONCURRENCY",
    "--image": "INDEXIFY_EXECUTOR_IMAGE",
    "--id": "INDEXIFY_EXECUTOR_ID",
}
#: Options of the same name that mean something else (the namespace of a key) and read none.
NOT_FROM_ENV = {("keys create", "--namespace"), ("keys list", "--namespace")}


def _commands() -> dict[str, argparse.ArgumentParser]:
    """Every command's parser by its full name (``topics lag``)."""
    _, commands, failures = build_parser()
    assert failures == []
    found: dict[str, argparse.ArgumentParser] = {}
    for group, action in commands.groups.items():
        for name, parser in action.choices.items():
            full = f"{group} {name}".strip()
            if full not in commands.groups:  # a group has no options of its own
                found[full] = parser
    return found


def test_the_commands_of_the_sdk_and_the_server_are_all_there() -> None:
    assert set(_commands()) == {
        "graphs", "invocations", "invoke", "status", "follow", "logs", "cancel", "rerun",
        "backfill",
        "keys create", "keys list", "keys revoke", "keys save", "keys generate",
        "build-image", "server-dev-mode", "api", "scheduler", "executor",
        "topics list", "topics describe", "topics lag", "deadletters",
    }  # fmt: skip


def test_every_option_has_help_naming_its_variable() -> None:
    missing, unnamed = [], []
    for command, parser in _commands().items():
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            where = f"{command} {'/'.join(action.option_strings) or action.dest}"
            if not action.help or action.help == argparse.SUPPRESS:
                missing.append(where)
                continue
            for option in action.option_strings:
                variable = VARIABLES.get(option)
                if (
                    variable
                    and (command, option) not in NOT_FROM_ENV
                    and variable not in action.help
                ):
                    unnamed.append(f"{where}: {variable}")
    assert missing == [] and unnamed == []


def test_executor_help_describes_each_option_and_every_variable(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["executor", "--help"])
    assert exited.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for option in ("--label", "--concurrency", "--image", "--id"):
        assert option in text and VARIABLES[option] in text
    for variable in ("INDEXIFY_KAFKA_BOOTSTRAP", "INDEXIFY_PREFIX", "INDEXIFY_EXECUTOR_GROUP_ID"):
        assert variable in text  # the epilog lists the settings with their meaning
    assert "INDEXIFY_EXECUTOR_WORKER_USER (default 'nobody'): when the executor" in text


def test_defaults_come_from_the_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INDEXIFY_URL", "http://indexify.example:9000")
    monkeypatch.setenv("INDEXIFY_NAMESPACE", "team-a")
    monkeypatch.setenv("INDEXIFY_PREFIX", "staging")
    parser, _, _ = build_parser()
    args = parser.parse_args(["invoke", "g", '{"x": 1}', "--follow"])
    assert (args.url, args.namespace, args.graph, args.args, args.follow) == (
        "http://indexify.example:9000",
        "team-a",
        "g",
        '{"x": 1}',
        True,
    )
    lag = parser.parse_args(["topics", "lag", "--group", "scheduler"])
    assert (lag.prefix, lag.group, lag.timeout) == ("staging", "scheduler", 10.0)
    dead = parser.parse_args(["deadletters", "--mark-handled", "0:3", "1:7"])
    assert dead.mark_handled == ["0:3", "1:7"] and not dead.include_handled


@pytest.mark.parametrize(
    "argv",
    [
        ["invoke", "g", "[1, 2]"],
        ["invoke", "g", "{not json"],
        ["invoke", "g", "{}", "--file", "/etc/hostname"],
    ],
)
def test_invoke_refuses_arguments_that_are_not_a_json_object(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """Refused before any request (the URL answers nothing)."""
    assert main([*argv, "--url", "http://127.0.0.1:9", "--api-key", "k"]) == 1
    err = capsys.readouterr().err
    assert "JSON object" in err or "not JSON" in err or "not both" in err


def test_unknown_arguments_are_refused_except_by_the_services(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        main(["graphs", "--bogus"])
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err
    parser, _, _ = build_parser()
    args, rest = parser.parse_known_args(["scheduler", "--extra"])
    assert args.passthrough and rest == ["--extra"]


def test_task_tally_counts_each_task_once() -> None:
    tally = TaskTally()
    tally.apply("task.created", {"task_id": "a"})
    tally.apply("task.started", {"task_id": "a"})
    tally.seed([("a", "queued"), ("b", "succeeded")])  # listed after the stream opened
    tally.apply("task.created", {"task_id": "c"})
    tally.apply("task.finished", {"task_id": "a", "outcome": "failure"})
    tally.apply("task.started", {"task_id": "a"})  # its retry
    assert (tally.total, tally.done) == (3, 1)
    assert tally.describe() == "1 running · 1 queued · 1 succeeded"
    tally.apply("task.finished", {"task_id": "a", "outcome": "success"})
    tally.apply("task.started", {"task_id": "a"})  # a late duplicate changes nothing
    tally.apply("invocation.finished", {"status": "succeeded"})  # no task: ignored
    assert (tally.total, tally.done) == (3, 2)


@pytest.mark.parametrize(
    ("asked", "expected"),
    [
        ("scheduler", ["p.indexify-scheduler"]),
        ("executors", ["p.indexify-executors"]),
        ("executor", ["p.indexify-executors"]),
        ("indexify-scheduler", ["p.indexify-scheduler"]),
        ("p.indexify-scheduler", ["p.indexify-scheduler"]),
        ("other.indexify-scheduler", ["other.indexify-scheduler"]),  # a full name, any prefix
        ("custom", ["p.custom"]),
        ("nope", []),
    ],
)
def test_consumer_groups_by_their_short_names(asked: str, expected: list[str]) -> None:
    existing = [
        "p.indexify-scheduler",
        "p.indexify-executors",
        "p.custom",
        "other.indexify-scheduler",
        "pp.indexify-scheduler",
    ]
    assert resolve_groups(asked, existing, "p") == expected
    assert short_group_name("p.indexify-executors", "p") == "executors"


class _Server:
    """An in-memory server for :func:`follow`: the task listing and the progress stream."""

    def __init__(self, stream: list[str]) -> None:
        self.stream = stream
        self.paths: list[str] = []

    def send(self, request: HttpRequest, *, timeout: float, stream: bool) -> HttpResponse:
        path = request.path.split("?")[0]
        self.paths.append(path)
        if path.endswith("/events"):
            assert stream
            return HttpResponse(200, lines=iter(line.encode() for line in self.stream))
        info = {**_SUMMARY, "status": "running", "task_counts": {"queued": 1}}
        info["tasks"] = [
            {"id": "t0", "function": "start", "kind": "call", "status": "queued", "attempt": 0}
        ]
        return HttpResponse.of_json(200, info)


_SUMMARY = {
    "id": "inv1",
    "namespace": "default",
    "graph": "g",
    "graph_version": "v1",
    "status": "succeeded",
    "created_at": 100.0,
    "finished_at": 101.5,
    "task_counts": {"succeeded": 3},
    "a_field_of_a_newer_server": 1,
}


def _sse(event: str, data: dict[str, object]) -> list[str]:
    return [f"event: {event}\n", f"data: {json.dumps(data)}\n", "\n"]


def test_follow_draws_the_tasks_from_the_stream(capsys: pytest.CaptureFixture[str]) -> None:
    stream = [
        *_sse("invocation.accepted", {"id": "inv1"}),
        *_sse("task.started", {"type": "task.started", "task_id": "t0"}),
        ": keepalive\n",
        "\n",
        *_sse("task.created", {"type": "task.created", "task_id": "t1"}),
        *_sse("task.created", {"type": "task.created", "task_id": "t2"}),
        *_sse("task.finished", {"task_id": "t0", "outcome": "success"}),
        *_sse("task.finished", {"task_id": "t1", "outcome": "success"}),
        *_sse("task.finished", {"task_id": "t2", "outcome": "success"}),
        *_sse("invocation.finished", _SUMMARY),
    ]
    server = _Server(stream)
    client = RemoteClient("http://indexify.test", transport=server, api_key="k")
    info = follow(client, "g", "inv1")
    assert info.status == "succeeded" and info.task_counts == {"succeeded": 3}
    assert server.paths == [
        "/namespaces/default/compute_graphs/g/invocations/inv1/events",  # opened first
        "/namespaces/default/compute_graphs/g/invocations/inv1",
    ]
    out, err = capsys.readouterr()
    assert "succeeded in 1.50 s; tasks: 3 succeeded" in out
    assert "3/3" in err  # the bar's last state


def test_follow_reports_an_error_event() -> None:
    stream = [
        *_sse("invocation.accepted", {"id": "inv1"}),
        *_sse("error", {"detail": "invocation inv1 was deleted while it ran"}),
    ]
    client = RemoteClient("http://indexify.test", transport=_Server(stream), api_key="k")
    with pytest.raises(ApiError) as ended:
        follow(client, "g", "inv1")
    assert "was deleted while it ran" in ended.value.message
