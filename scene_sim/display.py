"""Terminal rendering of episodes (rich): coloured transcript, labels, counts."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

__all__ = ["LABEL_STYLES", "print_summary", "print_transcript"]

_PALETTE = ("cyan", "magenta", "green", "yellow", "blue", "bright_red")
LABEL_STYLES = {
    "DEMONSTRATION": "black on green",
    "BREACH": "white on red",
    "SANCTION": "black on yellow",
    "FACE_SAVE_REPAIR": "black on cyan",
}


def print_transcript(
    events: list[dict[str, Any]],
    *,
    labels: Mapping[int, str] | None = None,
    console: Console | None = None,
    show_noops: bool = True,
) -> None:
    """Print an episode's chat from its event log.

    Args:
        events: the episode's events.
        labels: chat turn id -> judge label, shown as badges.
        console: where to print (default: stdout).
        show_noops: show no-ops faintly.

    """
    console = console or Console()
    start = next((e for e in events if e["kind"] == "episode_start"), {})
    subject = start.get("subject", "")
    colours: dict[str, str] = {}
    labels = labels or {}
    tick = -1
    for e in events:
        if e["kind"] == "turn_start":
            tick = e["turn"]
            console.rule(f"tick {tick}", style="grey50")
            continue
        if e["kind"] != "action":
            continue
        actor = e["actor"]
        if actor not in colours:
            colours[actor] = "bold white" if actor == subject else _PALETTE[len(colours) % len(_PALETTE)]
        name = f"{actor}*" if actor == subject else actor
        line = Text()
        tid = e.get("turn_id")
        line.append(f"[t{tid}] " if tid else "      ", style="grey50")
        if e["action"] == "no-op":
            if not show_noops:
                continue
            line.append(f"{name} (no-op)", style="grey42 italic")
            if e.get("parse_failure"):
                line.append(" parse failure", style="red italic")
        elif e["action"] == "react":
            line.append(name, style=colours[actor])
            line.append(f" reacted {e['content']} to t{e.get('target_turn_id')}")
        else:
            line.append(name, style=colours[actor])
            line.append(f": {e['content']}")
        meta = e.get("meta") or {}
        if meta.get("script") in ("opening", "precedent", "elicitor"):
            line.append(f"  ({meta['script']})", style="grey50")
        label = labels.get(tid) if tid else None
        if label and label in LABEL_STYLES:
            line.append("  ")
            line.append(f" {label} ", style=LABEL_STYLES[label])
        console.print(line)


def print_summary(rows: list[tuple[str, Any]], *, title: str = "", console: Console | None = None) -> None:
    """Print key/value rows as a small table."""
    console = console or Console()
    table = Table(title=title or None, show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows:
        table.add_row(key, "—" if value is None else str(value))
    console.print(table)
