"""Progress display for `lab sweep` (rich on a terminal, plain lines otherwise)::

    with SweepProgress(total=18, done=5, workers=2, quiet=False, title="transfer-seeds") as sp:
        sp.started(name); sp.finished(name, ok=True, seconds=41.0)

``quiet=True`` (or stderr not being a terminal) prints short plain lines only -- suitable for
CI logs; nothing is redrawn.  ``LAB_QUIET=1`` forces quiet mode.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from contextlib import contextmanager
from typing import Iterator, TextIO

__all__ = ["SweepProgress", "format_seconds", "is_quiet"]


def is_quiet(quiet: bool | None = None, stream: TextIO | None = None) -> bool:
    """Plain-line mode: explicit quiet, LAB_QUIET=1, or the stream is not a terminal."""
    if quiet:
        return True
    if os.environ.get("LAB_QUIET", "").lower() in ("1", "true", "yes"):
        return True
    stream = stream or sys.stderr
    try:
        return not stream.isatty()
    except Exception:
        return True


def format_seconds(s: float | None) -> str:
    if s is None or s != s or s < 0:
        return "?"
    s = int(round(s))
    if s < 60:
        return f"{s}s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m"


# ----------------------------------------------------------------------------- runs


class SweepProgress:
    """Cells done / running / left with an ETA; thread-safe (workers are threads)."""

    def __init__(
        self,
        total: int,
        done: int = 0,
        workers: int = 1,
        quiet: bool | None = False,
        title: str = "sweep",
        stream: TextIO | None = None,
    ):
        self.total, self.done, self.workers, self.title = total, done, max(1, workers), title
        self.stream = stream or sys.stderr
        self.quiet = is_quiet(quiet, self.stream)
        self.failed = 0
        self.running: dict[str, float] = {}
        self.durations: list[float] = []
        self._lock = threading.RLock()
        self._live = None
        self._t0 = time.monotonic()

    # -- numbers
    @property
    def left(self) -> int:
        return max(0, self.total - self.done - self.failed - len(self.running))

    def eta(self) -> float | None:
        if not self.durations:
            return None
        avg = sum(self.durations) / len(self.durations)
        now = time.monotonic()
        remaining_running = sum(max(0.0, avg - (now - t)) for t in self.running.values())
        # queued cells are spread over the workers; running ones finish in parallel
        return (self.left * avg + remaining_running) / self.workers

    def status_line(self) -> str:
        return (
            f"{self.done}/{self.total} done, {len(self.running)} running, {self.left} left"
            + (f", {self.failed} failed" if self.failed else "")
            + f", elapsed {format_seconds(time.monotonic() - self._t0)}, ETA {format_seconds(self.eta())}"
        )

    # -- display
    def _render(self):
        with self._lock:  # the live display redraws from its own thread
            return self._render_locked()

    def _render_locked(self):
        from rich.panel import Panel
        from rich.progress_bar import ProgressBar
        from rich.table import Table

        t = Table.grid(padding=(0, 1))
        t.add_row(ProgressBar(total=max(self.total, 1), completed=self.done + self.failed, width=40),
                  f"[bold]{self.done}[/]/{self.total} done")
        t.add_row("running", str(len(self.running)))
        t.add_row("left", str(self.left))
        if self.failed:
            t.add_row("[red]failed", str(self.failed))
        t.add_row("elapsed", format_seconds(time.monotonic() - self._t0))
        t.add_row("ETA", format_seconds(self.eta()))
        now = time.monotonic()
        for name, t0 in sorted(self.running.items()):
            t.add_row("  [dim]>[/]", f"[dim]{name} ({format_seconds(now - t0)})")
        return Panel(t, title=f"sweep {self.title}", expand=False)

    def _refresh(self) -> None:
        if self._live is not None:
            self._live.update(self._render())

    def __enter__(self) -> "SweepProgress":
        if self.quiet:
            self._line(f"{self.total} cells, {self.done} already done, {self.workers} worker(s)")
        else:
            from rich.console import Console
            from rich.live import Live

            self._live = Live(self._render(), console=Console(file=self.stream), refresh_per_second=2,
                              get_renderable=self._render)
            self._live.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._live is not None:
            self._live.update(self._render())
            self._live.stop()
            self._live = None
        else:
            self._line("finished: " + self.status_line())

    def _line(self, msg: str) -> None:
        print(f"[sweep {self.title}] {msg}", file=self.stream, flush=True)

    # -- events
    def started(self, name: str) -> None:
        with self._lock:
            self.running[name] = time.monotonic()
            self._refresh()

    def finished(self, name: str, ok: bool = True, seconds: float | None = None, note: str = "") -> None:
        with self._lock:
            t0 = self.running.pop(name, None)
            if seconds is None and t0 is not None:
                seconds = time.monotonic() - t0
            if ok:
                self.done += 1
                if seconds is not None:
                    self.durations.append(seconds)
            else:
                self.failed += 1
            msg = f"{'done' if ok else 'FAILED'} {name}" + (
                f" in {format_seconds(seconds)}" if seconds is not None else ""
            ) + (f" ({note})" if note else "") + f" -- {self.status_line()}"
            if self._live is not None:
                self._live.console.print(msg)
                self._refresh()
            else:
                self._line(msg)

    def done_elsewhere(self, name: str) -> None:
        """A cell another worker process finished while we waited."""
        with self._lock:
            self.running.pop(name, None)
            self.done += 1
            self._refresh()

    def message(self, msg: str) -> None:
        with self._lock:
            if self._live is not None:
                self._live.console.print(msg)
            else:
                self._line(msg)

    @contextmanager
    def cell(self, name: str) -> Iterator[None]:
        self.started(name)
        ok = False
        try:
            yield
            ok = True
        finally:
            self.finished(name, ok=ok)
