"""services.common.memory: glibc keeps large blocks in its heap once told to."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from services.common.memory import retain_freed_memory

# Copies a 10 MB value a few times, as a service does with each value that crosses it, and
# prints how many pages the kernel had to fault in for the last copies.
_PROBE = textwrap.dedent(
    """
    import resource, sys
    from services.common.memory import retain_freed_memory
    if sys.argv[1] == "retain":
        assert retain_freed_memory(64)
    value = b"v" * (10 * 1024 * 1024)
    bytes(bytearray(value))  # the first copies map their pages whatever the setting
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        bytes(bytearray(value))
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """
)
PAGES_PER_COPY = 10 * 1024 * 1024 // 4096


def _glibc() -> bool:
    import ctypes

    return sys.platform.startswith("linux") and hasattr(ctypes.CDLL(None), "gnu_get_libc_version")


def test_zero_changes_nothing() -> None:
    assert retain_freed_memory(0) is False


@pytest.mark.skipif(not _glibc(), reason="glibc only")
def test_copies_of_large_values_reuse_pages_once_retained() -> None:
    def faults(mode: str) -> int:
        out = subprocess.run(
            [sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True
        )
        return int(out.stdout)

    # glibc's default unmaps each freed 10 MB block: every copy faults its pages in again
    assert faults("default") >= 5 * PAGES_PER_COPY
    assert faults("retain") < PAGES_PER_COPY // 10
