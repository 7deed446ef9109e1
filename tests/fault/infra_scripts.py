"""Running the repository's ``infra/*.sh`` scripts from the fault tests."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from pathlib import Path


def run_script(script: Path, args: tuple[str, ...], env: Mapping[str, str], timeout: float) -> str:
    """``bash script args...``'s stdout (stripped); its stderr's tail in the error when it
    fails."""
    done = subprocess.run(
        ["bash", str(script), *args],
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{script.name} {' '.join(args)}: {done.stderr[-2000:]}")
    return done.stdout.strip()
