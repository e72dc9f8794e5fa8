"""Progress that suits where it is written: a ``tqdm`` bar on a terminal or in a
notebook, and a few plain lines elsewhere (a file, a pipe, a CI log).

A progress bar redraws itself with carriage returns; written to a file it leaves one frame
per redraw, thousands of them in a long run. Where the stream is not a terminal,
[`progress_bar`][causalmad.progress_bar] writes a line when another tenth of the work is
done (at most one every ``MIN_GAP`` seconds), or when ``interval`` seconds have passed since
the last line, each with the count, the rate and the time left; work done within ``MIN_GAP``
seconds writes nothing. A log holds at most a dozen lines per bar plus one per ``interval``.

Progress is off in the library unless asked for: a function that takes ``progress=True``
shows it, and [`show_progress`][causalmad.show_progress] turns it on for everything run inside it that leaves
the choice open (``enabled=None``), such as training a task's model. The command line
turns it on unless ``--quiet``.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from types import TracebackType
from typing import IO, Any

__all__ = ["Progress", "progress_bar", "show_progress"]

_SHOWN: ContextVar[bool] = ContextVar("causalmad_show_progress", default=False)

INTERVAL = 60.0  # seconds between plain lines when no further tenth is done
MIN_GAP = 10.0  # the fewest seconds between two plain lines (the last one excepted)


@contextmanager
def show_progress(on: bool = True) -> Iterator[None]:
    """Show (or hide) progress for everything run inside that leaves the choice open.

    Example:
        >>> with show_progress(False):
        ...     with progress_bar(3, "counting", unit="step") as bar:
        ...         bar.update(3)
    """
    token = _SHOWN.set(on)
    try:
        yield
    finally:
        _SHOWN.reset(token)


def _is_terminal(stream: IO[str]) -> bool:
    if type(stream).__module__.startswith("ipykernel"):  # a notebook: tqdm draws a widget there
        return True
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Progress:
    """Progress of ``total`` units of work (``None``: unknown). Use [`progress_bar`][causalmad.progress_bar].

    Args:
        total: the units the work takes, or ``None`` if unknown.
        desc: what the work is, at the start of each line.
        unit: the unit's name (``"input"``, ``"row"``, ``"step"``).
        mode: ``"bar"`` (``tqdm``), ``"lines"`` (plain lines) or ``"off"``.
        stream: where it is written.
        interval: the most seconds between plain lines while work goes on.
        leave: keep the bar on the terminal when done (``tqdm``'s ``leave``).
    """

    def __init__(
        self,
        total: int | None,
        desc: str,
        unit: str,
        mode: str,
        stream: IO[str],
        interval: float = INTERVAL,
        leave: bool = True,
    ) -> None:
        self.total, self.desc, self.unit, self.mode = total, desc, unit, mode
        self.stream, self.interval = stream, interval
        self.n, self.postfix = 0, ""
        self.start = self.last = time.monotonic()
        self._tenth = 0
        self._closed = False
        self._bar: Any = None
        self._leave = leave
        if mode == "bar":
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, file=stream, leave=leave)
        elif mode == "lines" and leave:  # a bar that stays says what starts; a passing one does not
            self._write(f"{desc}: {self._count()}")
        self._wrote = False

    def _count(self) -> str:
        units = f"{self.unit}s" if not self.unit.endswith("s") else self.unit
        if self.total:
            return f"{self.n}/{self.total} {units} ({100 * self.n // self.total}%)"
        return f"{self.n} {units}"

    def _write(self, text: str) -> None:
        self.stream.write(text + (f" [{self.postfix}]" if self.postfix else "") + "\n")
        self.stream.flush()
        self.last = time.monotonic()

    def update(self, n: int = 1) -> None:
        """``n`` more units done."""
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
        if self.mode != "lines":
            return
        tenth = 10 * self.n // self.total if self.total else 0
        now = time.monotonic()
        gap = now - self.last
        if (tenth > self._tenth and gap >= MIN_GAP) or gap >= self.interval:
            self._tenth = tenth
            if self.total is None or self.n < self.total:
                self._write(self._line(now))
                self._wrote = True

    def _line(self, now: float) -> str:
        elapsed = max(now - self.start, 1e-9)
        rate = self.n / elapsed
        text = f"{self.desc}: {self._count()}, {rate:.3g} {self.unit}/s"
        if self.total:
            text += f", ETA {_duration((self.total - self.n) / rate if rate else math.inf)}"
        return text

    def note(self, text: str) -> None:
        """One line of its own (an estimate, say), written above the bar on a terminal."""
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        elif self.mode == "lines":
            self.stream.write(text + "\n")
            self.stream.flush()

    def set_postfix_str(self, text: str) -> None:
        """A short note shown after the count (what is being worked on)."""
        self.postfix = text
        if self._bar is not None:
            self._bar.set_postfix_str(text)

    def close(self) -> None:
        """End the bar; in plain lines, one last line with the count, time and rate."""
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self.mode == "lines":
            elapsed = time.monotonic() - self.start
            if not (self._wrote or self._leave or elapsed >= MIN_GAP):
                return  # quick work that passes: nothing to say
            rate = f", {self.n / elapsed:.3g} {self.unit}/s" if elapsed > 0 else ""
            self.postfix = ""
            self._write(f"{self.desc}: done, {self._count()} in {_duration(elapsed)}{rate}")

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if kind is None:
            self.close()
        elif self._bar is not None:
            self._bar.close()  # an error: the bar ends, with no line saying the work is done
            self._closed = True
        else:
            self._closed = True


def progress_bar(
    total: int | None,
    desc: str,
    unit: str = "it",
    enabled: bool | None = None,
    leave: bool = True,
    stream: IO[str] | None = None,
    interval: float = INTERVAL,
) -> Progress:
    """Progress of ``total`` units of work, shown as suits ``stream`` (default stderr):
    a ``tqdm`` bar on a terminal or in a notebook, else plain lines at each further tenth
    of the work or every ``interval`` seconds, with the rate and the time left.

    Args:
        total: the units the work takes, or ``None`` if unknown.
        desc: what the work is.
        unit: the unit's name.
        enabled: show it (``True``), not (``False``), or as [`show_progress`][causalmad.show_progress] says
            (``None``, off outside it).
        leave: keep the bar on the terminal when done.
        stream: where to write (default ``sys.stderr`` at the call).
        interval: the most seconds between plain lines.

    Returns:
        A ``Progress``, also a context manager: ``update(n)``, ``set_postfix_str``, ``close``.

    Example:
        >>> import io
        >>> log = io.StringIO()
        >>> with progress_bar(1000, "scoring", unit="input", enabled=True, stream=log) as bar:
        ...     bar.update(1000)
        >>> print(log.getvalue(), end="")  # doctest: +ELLIPSIS
        scoring: 0/1000 inputs (0%)
        scoring: done, 1000/1000 inputs (100%) in 0s, ... input/s
    """
    out = sys.stderr if stream is None else stream
    on = _SHOWN.get() if enabled is None else enabled
    mode = "off" if not on else "bar" if _is_terminal(out) else "lines"
    return Progress(total, desc, unit, mode, out, interval, leave)
