"""The one progress display: a rich bar with live stats, or quiet log lines.

The bar fits the terminal: on a narrow one the least useful columns go first
(elapsed time, then the bar itself), and the stats text is cut at a word
boundary to the room left, so the counts and the eta are never cut.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Column

__all__ = ["ProgressDisplay", "fit_stats"]

#: Width of a rich time column ("0:00:00", "-:--:--").
_TIME_W = 7
#: Narrowest bar worth drawing.
_MIN_BAR = 10


#: Stats fields dropped first when the line is too long (cost and errors matter most).
_DROP_FIRST = ("tokens", "calls")


def fit_stats(stats: str, width: int) -> str:
    """``stats`` fitted to ``width`` characters by dropping whole fields (two spaces separate fields).

    Token and call counts go first, then fields from the end; a field is never cut in half.
    """
    fields = [f for f in stats.split("  ") if f]
    for word in _DROP_FIRST:
        if len("  ".join(fields)) <= width:
            break
        fields = [f for f in fields if not f.startswith(word)]
    while fields and len("  ".join(fields)) > width:
        fields.pop()
    return "  ".join(fields)


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
        self._stats_width = 0

    def _columns(self) -> list[ProgressColumn]:
        """The columns that fit the console, and the room left for the stats text."""
        width = max(self.console.width, 20)
        count_w = 2 * len(str(max(self.total, 1))) + 1
        # label, counts, "eta" and the remaining time are always shown; the gaps between columns take one each
        fixed = len(self.label) + 1 + count_w + 1 + 3 + 1 + _TIME_W
        show_elapsed = width >= fixed + _TIME_W + 1 + _MIN_BAR + 1 + 40
        room = width - fixed - (_TIME_W + 1 if show_elapsed else 0)
        bar_w = min(40, max(room - 58, 0))  # the stats text (up to about 58 characters) has priority over the bar
        show_bar = bar_w >= _MIN_BAR
        self._stats_width = max(room - (bar_w + 1 if show_bar else 0) - 1, 0)
        columns: list[ProgressColumn] = [TextColumn(f"[bold]{self.label}")]
        if show_bar:
            columns.append(BarColumn(bar_width=bar_w))
        columns.append(MofNCompleteColumn(table_column=Column(no_wrap=True, min_width=count_w)))
        stats_column = Column(no_wrap=True, overflow="crop", max_width=max(self._stats_width, 1))
        columns.append(TextColumn("{task.fields[stats]}", table_column=stats_column))
        if show_elapsed:
            columns.append(TimeElapsedColumn())
        columns += [TextColumn("eta"), TimeRemainingColumn()]
        return columns

    def __enter__(self) -> ProgressDisplay:
        if not self.quiet:
            self._bar = Progress(*self._columns(), console=self.console, transient=False)
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
            self._bar.update(self._task, completed=done, stats=fit_stats(stats, self._stats_width))
        elif time.monotonic() - self._last_line > 10 or done == self.total:
            self._last_line = time.monotonic()
            self.console.print(f"[{self.label}] {done}/{self.total}  {stats}", highlight=False)
