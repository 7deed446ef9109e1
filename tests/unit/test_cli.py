"""``indexify-cli`` commands that need no server: build-image, argument checks, hints."""

import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from indexify.cli import main
from services.dev_checks import infra_endpoints, unreachable

WORKFLOW = textwrap.dedent(
    """
    from indexify import indexify_function, Image

    image = (
        Image()
        .name("my-custom-image")
        .base_image("python:3.10.15-slim-bookworm")
        .tag("v2")
        .run("pip install indexify")
    )

    @indexify_function(image=image)
    def func_a(x: int) -> str:
        return str(x)

    @indexify_function()
    def plain(x: int) -> int:
        return x
    """
)


@pytest.fixture
def workflow(tmp_path: Path) -> Path:
    path = tmp_path / "workflow.py"
    path.write_text(WORKFLOW)
    return path


def test_build_image_writes_the_functions_dockerfile(
    workflow: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "ctx"
    assert main(["build-image", str(workflow), "func_a", "-o", str(out), "--no-build"]) == 0
    dockerfile = (out / "Dockerfile").read_text()
    assert dockerfile.startswith("FROM python:3.10.15-slim-bookworm\n")
    assert "RUN pip install indexify" in dockerfile
    printed = capsys.readouterr().out
    assert "my-custom-image:v2" in printed and "RUN pip install indexify" in printed


def test_build_image_without_docker_says_how_to_build(
    workflow: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no `docker` on it
    assert main(["build-image", str(tmp_path), "func_a", "-o", str(tmp_path / "ctx")]) == 0
    assert "docker build -t my-custom-image:v2" in capsys.readouterr().out


def test_build_image_refuses_a_function_without_image(
    workflow: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["build-image", str(workflow), "plain", "--no-build"]) == 1
    assert "has no image=Image" in capsys.readouterr().err


def test_build_image_names_a_missing_function(
    workflow: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["build-image", str(workflow), "nope", "--no-build"]) == 1
    assert "no indexify function named 'nope'" in capsys.readouterr().err


def test_commands_needing_the_server_say_how_to_install_it() -> None:
    """Without the server package, its commands are not there; asking for one says how to
    get it (a fresh interpreter where ``services`` cannot be imported)."""
    program = (
        "import sys; sys.modules['services'] = None\n"
        "from indexify.cli import main\n"
        "sys.exit(main(['topics', 'list']))"
    )
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 1, result.stderr
    assert "pip install -e . from the repository" in result.stderr
    assert "services.cli_commands:register" in result.stderr  # why the plugin did not load


def test_executor_rejects_a_malformed_label(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["executor", "--label", "gpu"]) == 2
    assert "key=value" in capsys.readouterr().err


def test_infra_endpoints_and_reachability() -> None:
    class Settings:
        kafka_bootstrap = "10.1.2.3:9093,10.1.2.4:9093"
        redis_url = "redis://cache:6380/0"
        minio_endpoint = "blobs:9001"
        minio_secure = False

    assert infra_endpoints(Settings()) == [
        ("Kafka", "10.1.2.3", 9093),
        ("Redis", "cache", 6380),
        ("MinIO", "blobs", 9001),
    ]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    (problem,) = unreachable([("Redis", "127.0.0.1", port)], timeout=0.5)
    assert problem == (
        f"Redis is not reachable at 127.0.0.1:{port}: run `make infra-up` (or start it) first"
    )
