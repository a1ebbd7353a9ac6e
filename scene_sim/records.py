"""Append-only JSONL record files that survive a kill -9: the pipelines' outputs.

A pipeline step (``clca adapt``, ``normgenesis generate``, ...) writes one
JSON object a line, one line per finished item, and is resumed by skipping
the ids already in its output. :class:`RecordFile` makes that safe:

* each record is written as one ``write`` of a whole line and flushed, so a
  kill leaves at most one torn last line;
* opening the file for appending first cuts a torn last line off, so the
  item it belonged to is simply redone;
* reading skips nothing silently: a torn last line is ignored, a bad line
  elsewhere is an error naming the file and line.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from scene_sim._json import JSONDecodeError, dumps_lines, loads
from scene_sim.errors import SceneSimError

__all__ = ["RecordFile"]


class RecordFile:
    """One JSONL file of records, appended to by one process.

    Args:
        path: the file (created with its folder on the first append).

    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._repaired = False

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """The records in file order (a torn last line is left out)."""
        if not self.path.exists():
            return
        with self.path.open("rb") as fh:
            lines = fh.read().split(b"\n")
        last = len(lines) - 1
        for i, raw in enumerate(lines):
            if not raw.strip():
                continue
            try:
                record = loads(raw)
            except JSONDecodeError:
                if i == last:  # torn by a kill mid-write: the item is redone on resume
                    return
                raise SceneSimError(f"{self.path}:{i + 1}: not a JSON object") from None
            if not isinstance(record, dict):
                raise SceneSimError(f"{self.path}:{i + 1}: not a JSON object")
            yield record

    def read(self) -> list[dict[str, Any]]:
        """All records."""
        return list(self)

    def ids(self, key: str = "id") -> set[str]:
        """The values of ``key`` over the records (what a resumed step skips)."""
        return {str(r[key]) for r in self if key in r}

    def append(self, record: dict[str, Any]) -> None:
        """Append one record as one whole line, flushed to the OS."""
        line = dumps_lines([record])
        with self._lock:
            if not self._repaired:
                self._repair()
            with self.path.open("ab") as fh:
                fh.write(line)
                fh.flush()
                os.fsync(fh.fileno())

    def _repair(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._repaired = True
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if not data or data.endswith(b"\n"):
            return
        cut = data.rfind(b"\n") + 1  # drop the torn tail after the last whole line
        with self.path.open("r+b") as fh:
            fh.truncate(cut)
