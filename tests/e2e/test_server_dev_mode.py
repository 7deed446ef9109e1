"""``indexify-cli server-dev-mode``: refuses clearly without Kafka, serves graphs with it."""

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx

from indexify import Graph, create_client, indexify_function
from services.devstack import free_port


@indexify_function()
def numbers(n: int) -> list[int]:
    return list(range(n))


@indexify_function()
def square(x: int) -> int:
    return x * x


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_server_dev_mode_without_kafka_says_how_to_start_it() -> None:
    port = free_port()
    result = subprocess.run(
        [sys.executable, "-m", "indexify.cli", "server-dev-mode"],
        env={**os.environ, "INDEXIFY_KAFKA_BOOTSTRAP": f"127.0.0.1:{port}"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert f"Kafka is not reachable at 127.0.0.1:{port}" in result.stderr
    assert "make infra-up" in result.stderr


def test_server_dev_mode_serves_a_graph_and_stops_on_sigint(
    tmp_path: Path, fresh_prefix: str, await_condition: Callable[..., object]
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "server-dev-mode.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "indexify.cli", "server-dev-mode", "--port", str(port)],
            env={**os.environ, "INDEXIFY_PREFIX": fresh_prefix},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        await_condition(lambda: _healthy(url) or process.poll() is not None, 60, "the dev-mode API")
        assert process.poll() is None, log_path.read_text()

        g = Graph(name="squares", start_node=numbers)
        g.add_edge(numbers, square)
        with create_client(service_url=url) as client:  # type: ignore[attr-defined]
            client.register_compute_graph(g)
            invocation_id = client.invoke_graph_with_object("squares", block_until_done=True, n=5)
            assert sorted(client.graph_outputs("squares", invocation_id, "square")) == [
                0,
                1,
                4,
                9,
                16,
            ]
        await_condition(
            lambda: "Indexify is ready" in log_path.read_text(), 10, "the ready message"
        )

        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0, log_path.read_text()
        assert not _healthy(url)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
