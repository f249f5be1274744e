"""A run's own account of itself: OUT/run.log (timestamped lines, appended) and the overall progress clock.

`RunLog` appends each line the runner prints to OUT/run.log, prefixed with an ISO 8601 timestamp (local
time with its UTC offset). Every line is one `os.write` on a file opened for appending, so resumed and
concurrent runs add to the history and never truncate or interleave within a line. The file is not
created before the run has done something (`start`): a run that fails on a bad input leaves its results
folder as it found it (docs/errors.md); the lines it held are written then, each with its own time.

`PieceClock` counts a run's pieces (model x suite x seed) and estimates the time left from the mean wall
time of the pieces computed in this run; pieces found recorded count as done and teach it nothing.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from rich.console import Console
from rich.text import Text

RUN_LOG = "run.log"


def timestamp() -> str:
    """Now, local time with its UTC offset, to the millisecond: 2025-01-31T14:02:03.456+01:00."""
    return datetime.now().astimezone().isoformat(timespec="milliseconds")


def plain(message: str) -> str:
    """`message` without rich markup ("[dim]...[/dim]")."""
    return Text.from_markup(message).plain


def append_line(out_dir: str | Path, message: str, stamp: str | None = None) -> None:
    """Append `message` (one line per line of it, rich markup removed) to OUT/run.log with a timestamp."""
    stamp = stamp or timestamp()
    text = "".join(f"{stamp} {line}\n" for line in plain(message).splitlines() or [""])
    fd = os.open(Path(out_dir) / RUN_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, text.encode("utf-8"))  # one write of O_APPEND: the lines land whole, after the others
    finally:
        os.close(fd)


class RunLog:
    """OUT/run.log of one run. Lines given before `start` are held (with their times) and written then;
    `discard` drops them. A log that cannot be written warns once on `console` and stops; the run goes on."""

    def __init__(self, out_dir: str | Path, console: Console | None = None, enabled: bool = True) -> None:
        self.out_dir, self.console, self.enabled = Path(out_dir), console, enabled
        self.started = False
        self._held: list[tuple[str, str]] = []

    @property
    def path(self) -> Path:
        return self.out_dir / RUN_LOG

    def write(self, message: str) -> None:
        if not self.enabled:
            return
        if self.started:
            self._append(message, timestamp())
        else:
            self._held.append((timestamp(), message))

    def start(self) -> None:
        """Write the held lines; later lines go straight to the file."""
        if not self.enabled or self.started:
            return
        self.started = True
        held, self._held = self._held, []
        for stamp, message in held:
            self._append(message, stamp)

    def discard(self) -> None:
        self._held = []

    def _append(self, message: str, stamp: str) -> None:
        if not self.enabled:
            return
        try:
            append_line(self.out_dir, message, stamp)
        except OSError as err:
            self.enabled = False
            if self.console is not None:
                self.console.print(f"cannot append to {self.path} ({err.strerror or err}); the run goes on without it",
                                   style="yellow", markup=False, highlight=False)


def duration(seconds: float) -> str:
    """h:mm:ss."""
    seconds = max(0, round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class PieceClock:
    """Overall progress over `total` pieces: how many are done, the time since the run started, the time left.

    The time left is the mean wall time of the pieces computed so far in this run times the pieces not yet
    done; pieces found recorded are done at once and stay out of the mean. It does not foresee the time
    of building (training) models not built yet; the elapsed time includes every build so far."""

    def __init__(self, total: int, clock: Callable[[], float] = time.perf_counter) -> None:
        self.total, self.clock = total, clock
        self.started_at = clock()
        self.done = self.computed = self.skipped = 0
        self.computed_s = 0.0

    def elapsed(self) -> float:
        return self.clock() - self.started_at

    def finished(self, wall_s: float | None) -> None:
        """One more piece done: computed in `wall_s` seconds, or None when it was already recorded."""
        self.done += 1
        if wall_s is None:
            self.skipped += 1
        else:
            self.computed += 1
            self.computed_s += wall_s

    def eta(self) -> float | None:
        """Seconds left by the mean computed piece; None before a piece was computed."""
        if not self.computed:
            return None
        return self.computed_s / self.computed * (self.total - self.done)

    def status(self) -> str:
        """'elapsed 0:01:05, ETA 0:04:10' (ETA 'n/a' until a piece was computed)."""
        eta = self.eta()
        return f"elapsed {duration(self.elapsed())}, ETA {'n/a' if eta is None else duration(eta)}"

    def piece_line(self, what: str) -> str:
        """The line shown as piece done + 1 starts."""
        return f"piece {self.done + 1} of {self.total} ({what}), {self.status()}"

    def summary_line(self) -> str:
        return (f"done {self.done} of {self.total} pieces ({self.computed} computed, {self.skipped} already recorded) "
                f"in {duration(self.elapsed())}")
