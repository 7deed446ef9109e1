"""Values this executor's workers stored lately, kept in a local directory (data locality).

A step's large output goes to MinIO (the durable copy, which every other executor reads); the
next step of the same invocation very often runs on this same executor (a chain continued
here, a router's target), and would otherwise download what was just uploaded. So every
object the executor stores for its workers is also written here, and reading an input looks
here first.

* **Where**: one directory per worker pool, on tmpfs (``/dev/shm``) where there is one,
  private to the executor (mode 0700: worker processes, which run user code, neither read nor
  write it; they get their inputs from the executor); created and removed by
  :class:`.worker_pool.WorkerPool`.
* **Consistency**: object keys are deterministic per task; a file is written whole under a
  temporary name and renamed into place, so a reader sees a complete object or none. A read
  that finds nothing (evicted, never here) falls back to MinIO.
* **Bounds**: objects over ``max_object_bytes`` are not kept; once the directory holds more
  than ``max_bytes``, the least recently written files are removed.

Only the executor uses it (:mod:`.task_data`), with plain blocking file I/O, in threads:
never on an event loop.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import time
from pathlib import Path

__all__ = ["ValueCache", "cache_directory"]

DEFAULT_MAX_BYTES = 512 * 1024 * 1024
DEFAULT_MAX_OBJECT_BYTES = 128 * 1024 * 1024
_SHM = Path("/dev/shm")


def cache_directory(owner: str) -> Path:
    """A new private directory for ``owner``'s cache: on tmpfs where there is one."""
    base = _SHM if _SHM.is_dir() and os.access(_SHM, os.W_OK) else None
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in owner)[:40]
    return Path(tempfile.mkdtemp(prefix=f"indexify-values-{safe}-", dir=base))


class ValueCache:
    """A bounded, write-through local copy of the objects workers stored (see above)."""

    def __init__(
        self,
        directory: Path,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_object_bytes: int = DEFAULT_MAX_OBJECT_BYTES,
    ) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.max_object_bytes = max_object_bytes
        self.hits = 0
        self._unchecked = 0  # bytes this process wrote since it last trimmed

    def _path(self, key: str) -> Path:
        return self.directory / hashlib.blake2b(key.encode(), digest_size=16).hexdigest()

    def put(self, key: str, data: bytes) -> None:
        """Keep ``data`` as object ``key`` (best effort: a full disk just skips it)."""
        if len(data) > self.max_object_bytes:
            return
        path = self._path(key)
        try:
            fd, temporary = tempfile.mkstemp(dir=self.directory, prefix=".part-")
            try:
                with os.fdopen(fd, "wb") as file:
                    file.write(data)
                now = time.time_ns()  # the kernel's write time is too coarse to order by
                os.utime(temporary, ns=(now, now))
                os.replace(temporary, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temporary)
                raise
        except OSError:
            return
        # Trimming lists the directory: do it once per eighth of the bound written here, not
        # per object (so the bound is overshot by at most one eighth).
        self._unchecked += len(data)
        if self._unchecked >= self.max_bytes // 8:
            self._unchecked = 0
            self._trim()

    def get_range(self, key: str, start: int, end: int) -> bytes | None:
        """Bytes ``[start, end)`` of object ``key`` if it is here, else None."""
        try:
            with self._path(key).open("rb") as file:
                file.seek(start)
                data = file.read(end - start)
        except OSError:
            return None
        if len(data) != end - start:
            return None  # not the object we think it is: read the durable copy
        self.hits += 1
        return data

    def _trim(self) -> None:
        """Remove the oldest files while the directory holds more than ``max_bytes``."""
        entries = []
        try:
            for entry in os.scandir(self.directory):
                stat = entry.stat()
                entries.append((stat.st_mtime_ns, stat.st_size, entry.path))
        except OSError:
            return
        total = sum(size for _, size, _ in entries)
        if total <= self.max_bytes:
            return
        for _, size, path in sorted(entries):
            with contextlib.suppress(OSError):
                os.unlink(path)
            total -= size
            if total <= self.max_bytes:
                return
