"""The run directory (contract in DESIGN.md) and crash-safe file writes.

Layout::

    run.json                  spec, seeds, versions, accounting
    episodes/<id>.jsonl       event log of each episode
    labels/<id>.json          judge output + fidelity audit
    episodes.csv, metrics.json, report.md, report.html, *.png

Every file is written whole to a temporary name in the same folder, flushed
to disk and renamed over the target, so a crash at any moment leaves either
the old file or the new one, never a torn one. The file gets the mode an
ordinary ``open()`` would give it (0666 less the umask: 0644 under 022), not
the temporary file's private 0600, so colleagues on a shared machine can read
a run.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import platform
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

from scene_sim._json import dumps_lines
from scene_sim.errors import SceneSimError

__all__ = [
    "RunDir",
    "aatomic_write_bytes",
    "atomic_write_bytes",
    "atomic_write_text",
    "ensure_writable_dir",
    "labels_json",
    "package_versions",
]

_TMP_PREFIX = ".tmp-"
_UMASK: int | None = None


def _umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux), else once."""
    global _UMASK
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    if _UMASK is None:  # elsewhere: os.umask can only be read by setting it, so do it once
        _UMASK = os.umask(0o022)
        os.umask(_UMASK)
    return _UMASK


#: Writes in flight at most. Each waits mostly in fsync, and the file system commits concurrent
#: fsyncs together, so many threads raise the files written per second; asyncio's default pool
#: (cores + 4 threads) capped a 2-core sweep at its disk's fsync latency.
WRITER_THREADS = 32


@functools.cache
def _writers() -> Any:
    from concurrent.futures import ThreadPoolExecutor

    return ThreadPoolExecutor(max_workers=WRITER_THREADS, thread_name_prefix="scene-sim-write")


async def aatomic_write_bytes(path: str | Path, data: bytes) -> None:
    """:func:`atomic_write_bytes` for async code, in the run directory's own pool of writer threads."""
    await asyncio.get_running_loop().run_in_executor(_writers(), atomic_write_bytes, path, data)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (temp file, fsync, rename), UTF-8 encoded."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file, fsync, rename)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX + target.name + ".", dir=target.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; the run's files follow the umask
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def labels_json(labels: dict[str, Any]) -> str:
    """A labels document as written to ``labels/<id>.json`` (workers encode it the same way)."""
    return json.dumps(labels, indent=1, ensure_ascii=False) + "\n"


def package_versions() -> dict[str, str]:
    """Versions of Python and the packages a result depends on."""
    out = {"python": platform.python_version()}
    for name in (
        "scene-sim",
        "mesa",
        "pydantic",
        "numpy",
        "scipy",
        "anthropic",
        "google-genai",
        "openai",
        "transformers",
        "torch",
    ):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out


class RunDir:
    """A run directory on disk.

    Args:
        path: the folder (created on first write).
        labels: the labels folder's name inside ``path`` (default ``labels``;
            a re-labelling by another judge lives beside it, e.g. ``labels-<judge>``).

    """

    def __init__(self, path: str | Path, *, labels: str = "labels") -> None:
        if not labels or "/" in labels or "\\" in labels or labels in (".", "..", "episodes"):
            raise SceneSimError(f"labels folder name {labels!r}: must be a plain folder name other than 'episodes'")
        self.path = Path(path)
        self.episodes_dir = self.path / "episodes"
        self.labels_dir = self.path / labels

    # -- run.json ------------------------------------------------------------
    @property
    def run_json(self) -> Path:
        """Path of ``run.json``."""
        return self.path / "run.json"

    def read_run(self) -> dict[str, Any]:
        """The parsed ``run.json`` (empty dict if absent)."""
        if not self.run_json.exists():
            return {}
        try:
            return json.loads(self.run_json.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise SceneSimError(f"{self.run_json}: invalid JSON: {exc.msg}") from None

    def write_run(self, data: dict[str, Any]) -> None:
        """Write ``run.json`` atomically."""
        atomic_write_text(self.run_json, json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")

    # -- episodes --------------------------------------------------------------
    def episode_path(self, episode_id: str) -> Path:
        """Path of an episode's event log."""
        return self.episodes_dir / f"{episode_id}.jsonl"

    def label_path(self, episode_id: str) -> Path:
        """Path of an episode's labels."""
        return self.labels_dir / f"{episode_id}.json"

    def write_episode(self, episode_id: str, events: list[dict[str, Any]]) -> Path:
        """Write an episode's event log atomically."""
        path = self.episode_path(episode_id)
        atomic_write_bytes(path, dumps_lines(events))
        return path

    def write_labels(self, episode_id: str, labels: dict[str, Any]) -> Path:
        """Write an episode's labels atomically."""
        path = self.label_path(episode_id)
        atomic_write_text(path, labels_json(labels))
        return path

    # Inside an event loop: encode on the loop (a fraction of a millisecond) and
    # leave only the disk I/O to a thread, which releases the GIL while it waits.
    # Encoding in the thread would hold the GIL in 5 ms slices the loop must
    # wait out, delaying every timer in flight.

    async def awrite_episode(self, episode_id: str, events: list[dict[str, Any]]) -> Path:
        """:meth:`write_episode` for async code: the file I/O runs in a thread."""
        path = self.episode_path(episode_id)
        await aatomic_write_bytes(path, dumps_lines(events))
        return path

    async def awrite_labels(self, episode_id: str, labels: dict[str, Any]) -> Path:
        """:meth:`write_labels` for async code: the file I/O runs in a thread."""
        path = self.label_path(episode_id)
        await aatomic_write_bytes(path, labels_json(labels).encode("utf-8"))
        return path

    def episode_ids(self) -> list[str]:
        """Ids of the episodes on disk, sorted (temporary files ignored)."""
        return _stems(self.episodes_dir, ".jsonl")

    def labelled_ids(self) -> list[str]:
        """Ids of the episodes that have labels."""
        return _stems(self.labels_dir, ".json")

    def read_labels(self, episode_id: str) -> dict[str, Any]:
        """The labels of one episode."""
        path = self.label_path(episode_id)
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise SceneSimError(f"{path}: no labels for episode '{episode_id}'") from None
        except json.JSONDecodeError as exc:
            raise SceneSimError(f"{path}: invalid JSON: {exc.msg}") from None

    def labels_by_turn(self, episode_id: str) -> dict[int, str]:
        """Chat turn id -> judge label of one episode (empty when it has no labels yet)."""
        if not self.label_path(episode_id).exists():
            return {}
        items = self.read_labels(episode_id).get("turn_labels", [])
        return {int(x["turn_id"]): x["label"] for x in items if x.get("turn_id") is not None}

    def clean_temporaries(self) -> int:
        """Remove temporary files left by a crash; returns how many."""
        n = 0
        for folder in (self.path, self.episodes_dir, self.labels_dir):
            if folder.is_dir():
                for p in folder.glob(_TMP_PREFIX + "*"):
                    p.unlink(missing_ok=True)
                    n += 1
        return n


def _stems(folder: Path, suffix: str) -> list[str]:
    """Sorted stems of the files ``*<suffix>`` in ``folder`` (as glob: no dot files, so no temporaries); one scandir."""
    try:
        with os.scandir(folder) as it:
            names = [e.name for e in it if e.name.endswith(suffix) and not e.name.startswith(".")]
    except (FileNotFoundError, NotADirectoryError):
        return []
    cut = len(suffix)
    return sorted(name[:-cut] for name in names if len(name) > cut)


def ensure_writable_dir(path: str | Path, what: str = "--out") -> Path:
    """Create the folder ``path`` if needed and check that files can be written in it.

    Called before any simulation, so a bad ``--out`` costs no model calls.

    Raises:
        SceneSimError: one line when ``path`` is a file, lies under a file, or cannot be written.

    """
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise SceneSimError(f"{what} {folder}: is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-check-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        reason = "a part of the path is a file" if isinstance(exc, NotADirectoryError | FileExistsError) else None
        raise SceneSimError(f"{what} {folder}: cannot write there ({reason or exc.strerror or exc})") from None
    return folder
