"""Progress of long transfers: a bar on a terminal, a few plain lines anywhere else.

Code that transfers data reports to a `Progress`; `TextProgress` turns that into text and hands
it to a `write` callable the CLI supplies, so cli.py stays the only place that prints.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol


class Progress(Protocol):
    def note(self, text: str) -> None:
        """One line of news (a retry, a cache hit)."""

    def start(self, name: str, total: int | None, done: int = 0) -> None:
        """A transfer of `name` begins; `done` bytes are already there (a resume)."""

    def advance(self, done: int) -> None:
        """`done` bytes of the current transfer are there now."""

    def finish(self, ok: bool = True) -> None:
        """The current transfer ended (ok=False: it broke off)."""


class Silent:
    """A Progress that shows nothing."""

    def note(self, text: str) -> None:
        pass

    def start(self, name: str, total: int | None, done: int = 0) -> None:
        pass

    def advance(self, done: int) -> None:
        pass

    def finish(self, ok: bool = True) -> None:
        pass


def human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(count) < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def human_time(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class TextProgress:
    """Render progress as text. On a terminal one line is redrawn in place (at most every
    `redraw` seconds); elsewhere (logs, CI) a line is written at each quarter of the transfer,
    so a 4 GiB download adds a handful of lines, not thousands."""

    BAR = 24
    STEP = 25  # percent between lines when not on a terminal

    def __init__(self, write: Callable[[str], None], tty: bool,
                 clock: Callable[[], float] = time.monotonic, redraw: float = 0.2) -> None:
        self._write = write
        self._tty = tty
        self._clock = clock
        self._redraw = redraw
        self._name = ""
        self._total: int | None = None
        self._first = 0  # bytes there when the transfer started
        self._done = 0
        self._began = 0.0
        self._drawn = 0.0
        self._next_step = 0
        self._active = False

    def note(self, text: str) -> None:
        self._clear()
        self._write(text + "\n")

    def start(self, name: str, total: int | None, done: int = 0) -> None:
        self._clear()
        self._name, self._total, self._first, self._done = name, total, done, done
        self._began = self._drawn = self._clock()
        self._active = True
        size = human_bytes(total) if total is not None else "size unknown"
        if done:
            self._line(f"{name}: resuming at {human_bytes(done)} of {size}")
        elif not self._tty:
            self._line(f"{name}: {size} to fetch")
        self._next_step = self._percent() // self.STEP * self.STEP + self.STEP
        if self._tty:
            self._draw()

    def advance(self, done: int) -> None:
        self._done = done
        if self._tty:
            if self._clock() - self._drawn >= self._redraw:
                self._draw()
        elif self._total and self._percent() >= self._next_step and self._percent() < 100:
            self._line(f"{self._name}: {self._status()}")
            self._next_step = self._percent() // self.STEP * self.STEP + self.STEP

    def finish(self, ok: bool = True) -> None:
        if not self._active:
            return
        if self._tty:
            self._draw()
            self._write("\n")
        self._active = False
        elapsed = max(self._clock() - self._began, 1e-9)
        got = self._done - self._first
        if ok:
            self._line(f"{self._name}: {human_bytes(got)} in {human_time(elapsed)} "
                       f"({human_bytes(got / elapsed)}/s)")
        else:
            self._line(f"{self._name}: broke off at {human_bytes(self._done)}")

    # -- helpers --------------------------------------------------------------------------

    def _percent(self) -> int:
        return self._done * 100 // self._total if self._total else 0

    def _rate(self) -> float:
        elapsed = self._clock() - self._began
        return (self._done - self._first) / elapsed if elapsed > 0 else 0.0

    def _status(self) -> str:
        rate = self._rate()
        parts = [human_bytes(self._done)]
        if self._total:
            parts = [f"{self._percent()}%", f"{human_bytes(self._done)} of "
                     f"{human_bytes(self._total)}"]
        parts.append(f"{human_bytes(rate)}/s")
        if self._total and rate > 0:
            parts.append(f"{human_time((self._total - self._done) / rate)} left")
        return ", ".join(parts)

    def _draw(self) -> None:
        self._drawn = self._clock()
        bar = ""
        if self._total:
            filled = self.BAR * min(self._done, self._total) // self._total
            bar = "[" + "#" * filled + "." * (self.BAR - filled) + "] "
        self._write(f"\r\x1b[K{self._name} {bar}{self._status()}")

    def _clear(self) -> None:
        if self._tty and self._active:
            self._write("\r\x1b[K")

    def _line(self, text: str) -> None:
        self._clear()
        self._write(text + "\n")
        if self._tty and self._active:
            self._draw()
