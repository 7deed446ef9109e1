"""``DevStack.supervise`` (what ``server-dev-mode`` runs): a service that exits is restarted
with backoff, and the others keep running."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.devstack import DevStack, ProcessSpec

pytestmark = pytest.mark.timeout(60)

#: Exits with code 2 at once (argparse: no such file), writing one line to its log each
#: time it is started.
CRASHER = ProcessSpec("crasher", "json.tool", ["/nonexistent/indexify-test-input"])
#: Runs until stopped.
STEADY = ProcessSpec("steady", "timeit", ["-n", "1", "-r", "1", "import time; time.sleep(120)"])


def test_a_crashing_service_is_restarted_with_backoff_and_the_rest_keeps_running(
    tmp_path: Path,
) -> None:
    stack = DevStack({"INDEXIFY_API_INSECURE_NO_AUTH": "1"}, log_dir=tmp_path)
    with stack:
        stack.start(STEADY)
        stack.start(CRASHER)
        # Gives up after the third exit in a row (restarts after 1 s, then 2 s).
        exited = stack.supervise(poll_sec=0.05, max_restarts=2)
        assert exited == ("crasher", 2)
        assert stack.processes["steady"].process.poll() is None, "the others keep running"
    starts = (tmp_path / "crasher.log").read_text().count("No such file or directory")
    assert starts == 3, "started once and restarted twice"
