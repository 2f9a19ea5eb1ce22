"""Progress output that fits where it is written.

On a terminal, a tqdm bar. In a log file or CI (standard error is not a terminal), a
plain line every :data:`LINE_EVERY_S` seconds (30; the environment variable
``MMEMBED_PROGRESS_EVERY_S`` sets it) and one when the work ends, instead of a
bar redrawn per batch (which fills logs with megabytes of carriage returns). Inside
:func:`quiet` (what ``progress=False`` and the commands' ``-q`` give) nothing at all,
whichever stage or library asks.
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import Any, Iterable, Iterator

__all__ = ["progress", "quiet", "is_quiet", "interactive", "LINE_EVERY_S"]


def _line_every() -> float:
    text = os.environ.get("MMEMBED_PROGRESS_EVERY_S", "30")
    try:
        return max(0.0, float(text))
    except ValueError:
        print(f"MMEMBED_PROGRESS_EVERY_S={text!r} is not a number of seconds; using 30", file=sys.stderr)
        return 30.0


#: seconds between two lines when the output is not a terminal (MMEMBED_PROGRESS_EVERY_S)
LINE_EVERY_S = _line_every()
_QUIET_DEPTH = 0


@contextlib.contextmanager
def quiet(enabled: bool = True) -> Iterator[None]:
    """No progress output from any stage inside the block (a no-op when not ``enabled``)."""
    global _QUIET_DEPTH
    _QUIET_DEPTH += int(enabled)
    try:
        yield
    finally:
        _QUIET_DEPTH -= int(enabled)


def is_quiet() -> bool:
    return _QUIET_DEPTH > 0


def interactive() -> bool:
    """A terminal, or a notebook (whose widget bars tqdm.auto draws)."""
    stream = sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)()) or "ipykernel" in sys.modules


def progress(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "",
             unit: str = "it", enabled: bool = True, initial: int = 0) -> Any:
    """A progress tracker over ``iterable`` (or updated by hand with ``update(n)``), usable
    as a context manager: a bar, plain lines, or nothing (see the module docstring)."""
    from tqdm.auto import tqdm

    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)
    if not enabled or is_quiet():
        return tqdm(iterable, total=total, disable=True)
    if interactive():
        return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, leave=False)
    return LineProgress(iterable, total=total, desc=desc, unit=unit, initial=initial)


class LineProgress:
    """The part of tqdm's interface the project uses, written as occasional plain lines."""

    def __init__(self, iterable: Iterable | None, total: int | None, desc: str, unit: str, initial: int = 0,
                 every: float | None = None, stream: Any = None):
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc or "progress", unit
        self.n = self.start_n = initial
        self.every, self.stream = LINE_EVERY_S if every is None else every, stream
        self.started = self.last_line = time.monotonic()
        self.closed = False

    def __iter__(self) -> Iterator[Any]:
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __len__(self) -> int:
        return self.total or 0

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last_line >= self.every:
            self.last_line = now
            self._write(self._status(now))

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        now = time.monotonic()
        if now - self.started >= min(self.every, 5.0):  # quick work says nothing
            self._write(self._status(now, done=True))

    def _status(self, now: float, done: bool = False) -> str:
        seconds = now - self.started
        rate = (self.n - self.start_n) / seconds if seconds > 0 else 0.0
        count = f"{self.n:,}" + (f"/{self.total:,}" if self.total else "")
        share = f" ({self.n / self.total:.0%})" if self.total else ""
        return (f"{self.desc}: {'done, ' if done else ''}{count} {self.unit.strip()}{share}, "
                f"{rate:,.1f} {self.unit.strip()}/s, {seconds:,.0f} s")

    def _write(self, text: str) -> None:
        print(text, file=self.stream or sys.stderr, flush=True)
