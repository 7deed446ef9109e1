"""Dropping a worker process's privileges before it reads any user code.

A worker started by an executor running as root switches to an unprivileged user first thing
(:func:`drop_privileges`): all of its user, group and supplementary ids, so it cannot read
``/proc/<executor>/environ``, the executor's memory or the data directory, and cannot get
root back.

The Python installation may live where that user cannot go (pyenv under ``/root``, which is
private): modules imported later (the standard library's, on the user's behalf) would then
fail to load. So before switching, the worker opens each import directory the user could not
reach and, after switching, imports from it through ``/proc/self/fd/<n>`` (the directory
itself is readable; only a parent on the way was not). Nothing else under those parents
becomes reachable.
"""

from __future__ import annotations

import ctypes
import importlib
import os
import sys

__all__ = ["drop_privileges", "unreadable_path"]

_PR_SET_DUMPABLE = 4


def _allowed(path: str, uid: int, gid: int, need: int) -> bool:
    """Whether ``uid``/``gid`` has the ``need`` bits (r=4, x=1) on ``path`` (mode bits)."""
    info = os.stat(path)
    if info.st_uid == uid:
        bits = info.st_mode >> 6
    elif info.st_gid == gid:
        bits = info.st_mode >> 3
    else:
        bits = info.st_mode
    return bits & need == need


def unreadable_path(path: str, uid: int, gid: int) -> str | None:
    """The first directory on the way to ``path`` (or ``path`` itself) that ``uid``/``gid``
    cannot pass or read; None when it can read ``path``."""
    real = os.path.realpath(path)
    parts = real.split(os.sep)
    for depth in range(2, len(parts)):
        parent = os.sep.join(parts[:depth])
        if not _allowed(parent, uid, gid, 1):
            return parent
    if not _allowed(real, uid, gid, 5 if os.path.isdir(real) else 4):
        return real
    return None


def drop_privileges(uid: int, gid: int) -> dict[str, str]:
    """Become ``uid``/``gid`` for good (no supplementary groups), keeping the import path
    usable (see the module docstring); returns the import directories now reached through a
    descriptor (original -> ``/proc/self/fd/<n>``)."""
    if uid == 0:
        raise ValueError("refusing to 'drop' privileges to root")
    moved: dict[str, str] = {}
    for entry in sys.path:
        usable = entry and os.path.isabs(entry) and os.path.isdir(entry)
        if usable and unreadable_path(entry, uid, gid) is not None:
            descriptor = os.open(entry, os.O_RDONLY | os.O_DIRECTORY)
            moved[entry] = f"/proc/self/fd/{descriptor}"
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)  # real, effective and saved: there is no way back
    if os.getuid() != uid or os.geteuid() != uid or os.getegid() != gid:
        raise OSError(f"could not switch to uid {uid} / gid {gid}")
    if moved:
        # A process that changed its user is not "dumpable", which makes its own
        # /proc/self/fd unreadable to it: allow it (it is unprivileged now).
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_DUMPABLE, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE) failed")
        sys.path[:] = [moved.get(entry, entry) for entry in sys.path]
        for module in list(sys.modules.values()):
            paths = getattr(module, "__path__", None)
            if isinstance(paths, list):
                paths[:] = [_moved(p, moved) for p in paths]
        sys.path_importer_cache.clear()
        importlib.invalidate_caches()
    return moved


def _moved(path: str, moved: dict[str, str]) -> str:
    for original, replacement in moved.items():
        if path == original or path.startswith(original + os.sep):
            return replacement + path[len(original) :]
    return path
