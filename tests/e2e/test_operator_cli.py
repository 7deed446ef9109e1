"""``indexify-cli`` as an operator runs it, a subprocess against the real stack: invoke,
status, follow, logs, invocations, graphs and rerun. The key comes from the credentials file
the stack wrote for its URL, the URL from ``INDEXIFY_URL``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import List

import pytest

from indexify import Graph, IndexifyClient, indexify_function
from services.devstack import DevStack


@indexify_function()
def cli_split(text: str) -> List[str]:
    print(f"splitting {text!r}")
    return text.split()


@indexify_function()
def cli_shout(word: str) -> str:
    if word == "boom":
        raise ValueError("cannot shout boom")
    print(f"shouting {word}")
    return word.upper()


GRAPH = "cli_words"


@pytest.fixture(scope="module")
def registered(client: IndexifyClient) -> str:
    graph = Graph(name=GRAPH, start_node=cli_split, description="words, shouted")
    graph.add_edge(cli_split, cli_shout)
    client.register_compute_graph(graph)
    return GRAPH


def _cli(stack: DevStack, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "INDEXIFY_URL": stack.url, "COLUMNS": "250"}
    env.pop("INDEXIFY_API_KEY", None)
    return subprocess.run(
        [sys.executable, "-m", "indexify.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    return result.stdout


def test_invoke_follow_status_and_logs(stack: DevStack, registered: str) -> None:
    invocation_id = _ok(_cli(stack, "invoke", registered, '{"text": "a b c"}')).strip()
    assert len(invocation_id.splitlines()) == 1 and invocation_id

    followed = _cli(stack, "follow", registered, invocation_id)
    out = _ok(followed)
    assert "succeeded" in out and "4 succeeded" in out
    assert "4/4" in followed.stderr  # the progress bar's last state

    summary = json.loads(_ok(_cli(stack, "status", registered, invocation_id, "--json")))
    assert summary["status"] == "succeeded"
    assert summary["task_counts"] == {"succeeded": 4}
    assert summary["outputs"] == {"cli_split": 3, "cli_shout": 3}
    tasks = _ok(_cli(stack, "status", registered, invocation_id, "--tasks"))
    rows = [line for line in tasks.splitlines() if line.startswith("│")]
    functions = [row.split("│")[2].strip() for row in rows]
    assert sorted(functions) == ["cli_shout"] * 3 + ["cli_split"], tasks

    logs = _ok(_cli(stack, "logs", registered, invocation_id))
    assert "splitting 'a b c'" in logs
    assert all(f"shouting {w}" in logs for w in "abc")
    only = _ok(_cli(stack, "logs", registered, invocation_id, "--function", "cli_split"))
    assert "splitting" in only and "shouting" not in only


def test_invoke_with_follow_reports_a_failure_and_its_traceback(
    stack: DevStack, registered: str
) -> None:
    result = _cli(stack, "invoke", registered, '{"text": "fine boom"}', "--follow")
    assert result.returncode == 1, result.stderr
    invocation_id = result.stdout.splitlines()[0].strip()
    assert "failed" in result.stdout and "cannot shout boom" in result.stdout

    logs = _ok(_cli(stack, "logs", registered, invocation_id, "--function", "cli_shout"))
    assert "ValueError: cannot shout boom" in logs and "shouting fine" in logs

    listed = _ok(_cli(stack, "invocations", registered, "--status", "failed"))
    assert invocation_id in listed
    assert registered in _ok(_cli(stack, "graphs"))
    rerun_id = _ok(_cli(stack, "rerun", registered, invocation_id)).strip()
    assert rerun_id == invocation_id  # replayed in place
    # the failing one fails again in a backfill of every invocation so far: exit 1
    backfill = _cli(stack, "backfill", registered, "--from-function", "cli_shout")
    assert backfill.returncode == 1, backfill.stderr
    assert ": failed," in backfill.stdout, backfill.stdout


def test_errors_say_what_is_wrong(stack: DevStack, registered: str) -> None:
    missing = _cli(stack, "status", registered, "no-such-invocation")
    assert missing.returncode == 1 and "404" in missing.stderr
    refused = _cli(stack, "invoke", registered, '{"text": 3}')
    assert refused.returncode == 1 and "400" in refused.stderr and "text" in refused.stderr
    anonymous = _cli(stack, "graphs", "--api-key", "ifx_000000000000_" + "x" * 43)
    assert anonymous.returncode == 1 and "401" in anonymous.stderr
