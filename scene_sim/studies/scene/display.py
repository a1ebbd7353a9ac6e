"""Terminal rendering of episodes (rich): coloured transcript, labels, counts."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from scene_sim.events import EventHandler

__all__ = ["LABEL_STYLES", "LiveTranscript", "print_summary", "print_transcript"]

_PALETTE = ("cyan", "magenta", "green", "yellow", "blue", "bright_red")
LABEL_STYLES = {
    "DEMONSTRATION": "black on green",
    "BREACH": "white on red",
    "SANCTION": "black on yellow",
    "FACE_SAVE_REPAIR": "black on cyan",
}


class LiveTranscript(EventHandler):
    """Prints an episode's chat event by event (pass it as ``on_event``).

    Args:
        console: where to print (default: stdout).
        labels: chat turn id -> judge label, shown as badges.
        show_noops: show no-ops faintly.

    """

    def __init__(
        self, console: Console | None = None, *, labels: Mapping[int, str] | None = None, show_noops: bool = True
    ) -> None:
        self.console = console or Console()
        self.labels = labels or {}
        self.show_noops = show_noops
        self.subject = ""
        self._colours: dict[str, str] = {}

    def on_episode_start(self, e: dict[str, Any]) -> None:
        """Note who the subject is."""
        self.subject = e.get("subject", "")

    def on_turn_start(self, e: dict[str, Any]) -> None:
        """A rule line per tick."""
        self.console.rule(f"tick {e['turn']}", style="grey50")

    def on_action(self, e: dict[str, Any]) -> None:
        """The action as a chat line."""
        line = self._line(e)
        if line is not None:
            self.console.print(line)

    def on_episode_end(self, e: dict[str, Any]) -> None:
        """How the episode ended."""
        extra = f": {e['error']}" if e.get("error") else ""
        self.console.print(Text(f"episode ended: {e['reason']}{extra}", style="bold"))

    def _line(self, e: dict[str, Any]) -> Text | None:
        actor = e["actor"]
        if actor not in self._colours:
            self._colours[actor] = (
                "bold white" if actor == self.subject else _PALETTE[len(self._colours) % len(_PALETTE)]
            )
        name = f"{actor}*" if actor == self.subject else actor
        line = Text()
        tid = e.get("turn_id")
        line.append(f"[t{tid}] " if tid else "      ", style="grey50")
        if e["action"] == "no-op":
            if not self.show_noops:
                return None
            line.append(f"{name} (no-op)", style="grey42 italic")
            if e.get("parse_failure"):
                line.append(" parse failure", style="red italic")
        elif e["action"] == "react":
            line.append(name, style=self._colours[actor])
            line.append(f" reacted {e['content']} to t{e.get('target_turn_id')}")
        else:
            line.append(name, style=self._colours[actor])
            line.append(f": {e['content']}")
        meta = e.get("meta") or {}
        if meta.get("script") in ("opening", "precedent", "elicitor"):
            line.append(f"  ({meta['script']})", style="grey50")
        label = self.labels.get(tid) if tid else None
        if label and label in LABEL_STYLES:
            line.append("  ")
            line.append(f" {label} ", style=LABEL_STYLES[label])
        return line


def print_transcript(
    events: list[dict[str, Any]],
    *,
    labels: Mapping[int, str] | None = None,
    console: Console | None = None,
    show_noops: bool = True,
) -> None:
    """Print an episode's chat from its event log (``*`` marks the subject).

    Args:
        events: the episode's events.
        labels: chat turn id -> judge label, shown as badges.
        console: where to print (default: stdout).
        show_noops: show no-ops faintly.

    """
    live = LiveTranscript(console, labels=labels, show_noops=show_noops)
    for e in events:
        live(e)


def print_summary(rows: list[tuple[str, Any]], *, title: str = "", console: Console | None = None) -> None:
    """Print key/value rows as a small table."""
    console = console or Console()
    table = Table(title=title or None, show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows:
        table.add_row(key, "—" if value is None else str(value))
    console.print(table)
