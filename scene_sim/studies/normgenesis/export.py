"""``normgenesis export --format release``: the public release's record shape.

The release's record is ``{scenario, situation, dialogue, category, norm}`` with
the dialogue as ``Name: utterance`` lines. Language and type are not fields of
it, so the files are split by them: ``release/<lang>_<type>.jsonl``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from scene_sim._json import dumps_lines
from scene_sim.rundir import atomic_write_bytes

__all__ = ["FORMATS", "export_release", "release_record"]

FORMATS = ("release",)


def release_record(rec: Mapping[str, Any]) -> dict[str, str]:
    """One dialogue record in the release's shape."""
    dialogue = "\n".join(f"{t['speaker']}: {t['text']}" for t in rec["turns"])
    return {
        "scenario": rec["scenario"],
        "situation": rec["situation"],
        "dialogue": dialogue,
        "category": rec["category"],
        "norm": rec["norm"],
    }


def export_release(records: Iterable[Mapping[str, Any]], out: Path) -> dict[str, int]:
    """Write ``out/<lang>_<type>.jsonl``; returns the record count per file name."""
    groups: dict[str, list[dict[str, str]]] = {}
    for rec in records:
        groups.setdefault(f"{rec['lang']}_{rec['type']}.jsonl", []).append(release_record(rec))
    for name, rows in groups.items():
        atomic_write_bytes(out / name, dumps_lines(rows))
    return {name: len(rows) for name, rows in sorted(groups.items())}
