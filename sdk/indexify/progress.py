"""A one-line progress bar for long client calls (a backfill), drawn only on a terminal."""

from __future__ import annotations

import sys
from typing import TextIO

_WIDTH = 30


class ProgressBar:
    """``bar.update(done, failed)`` redraws ``label [#####.....] done/total (failed)`` in
    place on ``stream`` when it is a terminal; elsewhere (a log file, CI) it draws nothing."""

    def __init__(self, label: str, total: int, stream: TextIO | None = None) -> None:
        self.label = label
        self.total = total
        self._stream = stream if stream is not None else sys.stderr
        self._enabled = bool(getattr(self._stream, "isatty", lambda: False)())
        self._last = ""

    def line(self, done: int, failed: int = 0) -> str:
        filled = _WIDTH if self.total <= 0 else min(_WIDTH, _WIDTH * done // self.total)
        bar = "#" * filled + "." * (_WIDTH - filled)
        tail = f" ({failed} failed)" if failed else ""
        return f"{self.label} [{bar}] {done}/{self.total}{tail}"

    def update(self, done: int, failed: int = 0) -> None:
        line = self.line(done, failed)
        if not self._enabled or line == self._last:
            return
        self._last = line
        self._stream.write("\r" + line)
        self._stream.flush()

    def close(self) -> None:
        if self._enabled and self._last:
            self._stream.write("\n")
            self._stream.flush()
