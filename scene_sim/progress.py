"""The one progress display: a rich bar with live stats, or quiet log lines."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

__all__ = ["ProgressDisplay"]


class ProgressDisplay:
    """Items done out of a total, with a stats text (calls, tokens, cost, errors).

    Args:
        total: items planned.
        done: items already done.
        label: what the items are called ("episodes", "scenarios").
        quiet: print a log line every 10 s (and at the end) instead of a bar.
        console: where to draw.

    """

    def __init__(self, total: int, done: int = 0, *, label: str, quiet: bool, console: Console) -> None:
        self.quiet = quiet
        self.console = console
        self.total = total
        self.done = done
        self.label = label
        self._bar: Progress | None = None
        self._task: Any = None
        self._last_line = 0.0

    def __enter__(self) -> ProgressDisplay:
        if not self.quiet:
            self._bar = Progress(
                TextColumn(f"[bold]{self.label}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[stats]}"),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                console=self.console,
                transient=False,
            )
            self._bar.__enter__()
            self._task = self._bar.add_task(self.label, total=self.total, completed=self.done, stats="")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)

    def update(self, done: int, stats: str = "") -> None:
        """Show ``done`` items and ``stats``."""
        self.done = done
        if self._bar is not None:
            self._bar.update(self._task, completed=done, stats=stats)
        elif time.monotonic() - self._last_line > 10 or done == self.total:
            self._last_line = time.monotonic()
            self.console.print(f"[{self.label}] {done}/{self.total}  {stats}", highlight=False)
