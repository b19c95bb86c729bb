"""One progress bar for every long stage: tqdm on a terminal, plain lines in a log file.

On a terminal tqdm redraws its line with a carriage return several times a second. Without
one (stderr sent to a file, a CI log), every redraw would stay in the file: megabytes of
carriage-return lines for a `small` pipeline. There the bar prints one plain line at most
every PLAIN_INTERVAL_S seconds, and one at the end (for bars that stay, `leave=True`).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any, TextIO

from tqdm import tqdm

PLAIN_INTERVAL_S = 15.0


class _SkipBlank:
    """A stream that drops tqdm's bare "\\r" and "\\n" writes (cursor moves, not text)."""

    def __init__(self, stream: TextIO):
        self.stream = stream

    def write(self, text: str) -> None:
        if text.strip():
            self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()


class PlainLineBar(tqdm):
    """tqdm that prints whole lines, none more often than every PLAIN_INTERVAL_S seconds
    (set_postfix would otherwise print one per batch)."""

    _last_line = -math.inf

    @staticmethod
    def status_printer(file: Any) -> Callable[[str], None]:
        def print_line(text: str) -> None:
            if text.strip():
                file.write(text.rstrip() + "\n")
                file.flush()
        return print_line

    def refresh(self, nolock: bool = False, lock_args: Any = None) -> bool:
        now = time.monotonic()
        if now - self._last_line < PLAIN_INTERVAL_S:
            return False
        self._last_line = now
        return super().refresh(nolock=nolock, lock_args=lock_args)


def progress_bar(iterable: Iterable | None = None, **kwargs: Any) -> tqdm:
    """tqdm(iterable, **kwargs) on a terminal; PlainLineBar writing lines to stderr otherwise."""
    stream = kwargs.pop("file", None) or sys.stderr
    if stream.isatty():
        return tqdm(iterable, file=stream, **kwargs)
    return PlainLineBar(iterable, file=_SkipBlank(stream), mininterval=PLAIN_INTERVAL_S,
                        **kwargs)
