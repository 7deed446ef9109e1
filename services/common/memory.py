"""Freed memory is kept for the next value instead of being handed back to the kernel.

A 10 MB value crosses each service several times as a fresh buffer: the request body, the
worker's pickle, the reply read from the worker's socket, the bytes sent to MinIO. glibc
serves a block that large with its own ``mmap`` and unmaps it when it is freed, so every
such buffer is 2,560 new pages, each faulted in (and zeroed) by the kernel on first touch.
On the virtual machines we measure on that makes copying 10 MB cost 14-16 ms instead of 2
(about 0.65 GB/s against 5 GB/s): a value's copies, not its transport, were most of a large
invocation's time.

:func:`retain_freed_memory` moves both of glibc's limits (``mallopt``): blocks up to the
given size come from the heap, and up to that much freed memory at its top stays mapped, so
the next value of that size reuses pages that are already there. The price is that much
resident memory kept after a peak (``INDEXIFY_MALLOC_RETAIN_MB``; 0 keeps glibc's
behaviour). Elsewhere than glibc (musl, macOS) it does nothing.
"""

from __future__ import annotations

import ctypes
import sys

__all__ = ["retain_freed_memory"]

# mallopt(3) parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def retain_freed_memory(megabytes: int) -> bool:
    """Keep blocks up to ``megabytes`` MB in the heap and up to that much freed memory
    mapped (see the module docstring). False when nothing changed: 0, or no glibc."""
    if megabytes <= 0 or not sys.platform.startswith("linux"):
        return False
    # The process's own symbols, libc's among them: find_library("c") would run ldconfig
    # in a subprocess at every start of a service or worker.
    libc = ctypes.CDLL(None)
    if not hasattr(libc, "gnu_get_libc_version"):  # not glibc (musl has mallopt, a no-op)
        return False
    mallopt = libc.mallopt
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    size = megabytes * 1024 * 1024  # at most 1024 MB: an int
    return bool(mallopt(_M_MMAP_THRESHOLD, size)) and bool(mallopt(_M_TRIM_THRESHOLD, size))
