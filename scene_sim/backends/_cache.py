"""The response cache: SQLite in ``$SCENE_SIM_CACHE_DIR`` (default: the user cache dir).

A response is stored under the sha256 of the canonical JSON of everything
that determines it: the backend's :meth:`~scene_sim.backends.base.Backend.cache_identity`
(provider, model, base URL), the system text, messages, schema, choices,
temperature, max_tokens, seed, stop sequences and the replicate index. Limits,
retries and the calling role are not part of the key.

What is stored is what the provider returned to the caller, whether or not
it was usable: a schema answer that does not parse (``parsed`` null), an
empty text, a refusal. That makes a re-run from the cache take exactly the
path of the first run: the caller's re-query after a bad output is a new
request (its messages carry the bad answer and the correction), so it is its
own entry, and it is replayed too. Only the output that ended a call is
stored: attempts that failed in transport (429, 5xx, timeouts, unreadable
bodies) return nothing to store, and the attempt number is not in the key,
so a retried attempt can never be answered by, or overwrite, another
request's output. A call that failed in the end although the provider
answered (no attempt's answer matched the ``choices``) is stored as a
*failed* entry with its error message.

Modes:

* ``read-write`` (default): every stored entry is replayed, unusable outputs
  included, so a re-run sends zero requests for what the first run got an
  answer to; failed entries are refreshed (asked again and overwritten), and
  calls that failed without an answer are simply asked again.
* ``read-only``: every stored entry is replayed, failed entries included (the
  call fails again with the stored error, without a request); misses are
  asked and never written; the database file is never created.
* ``off``: the file is never touched.

The database runs in WAL mode with short transactions, so several processes
can share it; every SQLite call runs on the cache's own worker thread, never
on the event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, TypeVar, cast

from scene_sim.backends.base import GenerateRequest, GenerateResponse, Usage
from scene_sim.errors import SceneSimError, suggest

__all__ = ["CACHE_MODES", "CacheEntry", "CacheMode", "ResponseCache", "cache_key", "default_cache_dir"]

log = logging.getLogger(__name__)

CacheMode = Literal["read-write", "read-only", "off"]
#: The valid cache modes, as the ``--cache`` flag spells them.
CACHE_MODES: Final = ("read-write", "read-only", "off")
#: Bump when the key recipe or the stored format changes.
_KEY_VERSION: Final = 1
_DB_NAME: Final = "responses.sqlite3"
_BUSY_TIMEOUT_MS: Final = 30_000

T = TypeVar("T")

_SHARED_CACHES: dict[tuple[str, str], ResponseCache] = {}
_SHARED_LOCK = threading.Lock()


def default_cache_dir() -> Path:
    """``$SCENE_SIM_CACHE_DIR`` if set, else the platform's user cache dir for scene-sim."""
    env = os.environ.get("SCENE_SIM_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("scene-sim"))


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def cache_key(identity: Mapping[str, Any], request: GenerateRequest) -> str:
    """Return the cache key of ``request`` sent to the backend described by ``identity``.

    Args:
        identity: :meth:`Backend.cache_identity` (provider, model, base URL, ...).
        request: the request as the caller made it (before any choices-to-schema rewrite).

    Returns:
        A 64-character hex sha256 digest.

    """
    payload = {
        "v": _KEY_VERSION,
        "backend": dict(identity),
        "system": request.system,
        "messages": [dict(m) for m in request.messages],
        "schema": request.schema,
        "schema_name": request.schema_name if request.schema is not None else None,
        "choices": list(request.choices) if request.choices is not None else None,
        "temperature": request.temperature,
        "max_tokens": request.max_tokens,
        "seed": request.seed,
        "stop": list(request.stop),
        "replicate": request.replicate,
    }
    return hashlib.sha256(_canonical(payload).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class CacheEntry:
    """One stored outcome.

    Attributes:
        response: what the provider returned (marked ``cache_hit``, ``attempts`` 0).
        error: None for an answer the caller received; the call's error message
            for a *failed* entry (the provider answered, the call failed anyway).

    """

    response: GenerateResponse
    error: str | None = None


def _encode(response: GenerateResponse, error: str | None = None) -> str:
    return _canonical(
        {
            "error": error,
            "text": response.text,
            "parsed": response.parsed,
            "usage": {
                "input_tokens": response.usage.input_tokens,
                "output_tokens": response.usage.output_tokens,
                "cached_tokens": response.usage.cached_tokens,
            },
            "model": response.model,
            "finish_reason": response.finish_reason,
        }
    )


def _decode(raw: str) -> CacheEntry:
    data = json.loads(raw)
    usage = data.get("usage") or {}
    error = data.get("error")
    response = GenerateResponse(
        text=data["text"],
        parsed=data.get("parsed"),
        usage=Usage(
            input_tokens=int(usage.get("input_tokens", 0)),
            output_tokens=int(usage.get("output_tokens", 0)),
            cached_tokens=int(usage.get("cached_tokens", 0)),
        ),
        model=data.get("model", ""),
        finish_reason=data.get("finish_reason"),
        cache_hit=True,
        attempts=0,
    )
    return CacheEntry(response, str(error) if error is not None else None)


class ResponseCache:
    """A process- and thread-safe response store shared by the backends of a run.

    Args:
        mode: ``read-write``, ``read-only`` or ``off``.
        directory: where the database lives (default: :func:`default_cache_dir`).

    Raises:
        SceneSimError: for an unknown mode.

    """

    def __init__(self, mode: CacheMode | str = "read-write", directory: str | os.PathLike[str] | None = None) -> None:
        if mode not in CACHE_MODES:
            raise SceneSimError(
                f"unknown cache mode '{mode}'{suggest(str(mode), CACHE_MODES)}; valid modes: {', '.join(CACHE_MODES)}"
            )
        self.mode: CacheMode = cast(CacheMode, mode)
        self.directory = Path(directory).expanduser() if directory is not None else default_cache_dir()
        self.path = self.directory / _DB_NAME
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        self._broken = False

    def __repr__(self) -> str:
        return f"ResponseCache(mode={self.mode!r}, path={str(self.path)!r})"

    @classmethod
    def shared(
        cls, mode: CacheMode | str = "read-write", directory: str | os.PathLike[str] | None = None
    ) -> ResponseCache:
        """Return the process-wide cache for ``mode`` and ``directory`` (one connection and thread each).

        Backends made by :func:`~scene_sim.backends.create_backend` share these, so a run
        opens the database once however many backends it creates.
        """
        instance = cls(mode, directory)
        key = (instance.mode, str(instance.path.resolve()))
        with _SHARED_LOCK:
            return _SHARED_CACHES.setdefault(key, instance)

    @property
    def readable(self) -> bool:
        """Whether lookups are made (modes ``read-write`` and ``read-only``)."""
        return self.mode != "off"

    @property
    def writable(self) -> bool:
        """Whether responses are stored (mode ``read-write`` only)."""
        return self.mode == "read-write"

    # -- worker-thread side -------------------------------------------------

    def _connect(self) -> sqlite3.Connection | None:
        if self._conn is not None:
            return self._conn
        if self.mode == "read-only":
            if not self.path.exists():
                return None
            conn = sqlite3.connect(f"{self.path.as_uri()}?mode=ro", uri=True, timeout=_BUSY_TIMEOUT_MS / 1000)
            conn.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
        else:
            self.directory.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_MS / 1000, isolation_level=None)
            conn.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS responses ("
                " key TEXT PRIMARY KEY, model TEXT NOT NULL, response TEXT NOT NULL, created_at REAL NOT NULL)"
            )
        self._conn = conn
        return conn

    def _get_sync(self, key: str) -> str | None:
        conn = self._connect()
        if conn is None:
            return None
        try:
            row = conn.execute("SELECT response FROM responses WHERE key = ?", (key,)).fetchone()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return None
            raise
        return row[0] if row else None

    def _put_sync(self, key: str, model: str, raw: str) -> None:
        conn = self._connect()
        if conn is None:  # pragma: no cover - read-write always connects
            return
        conn.execute(
            "INSERT OR REPLACE INTO responses (key, model, response, created_at) VALUES (?, ?, ?, ?)",
            (key, model, raw, time.time()),
        )

    def _close_sync(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # -- event-loop side ----------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scene-sim-cache")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def lookup(self, key: str) -> CacheEntry | None:
        """Return the stored entry for ``key`` (failed entries included), or None.

        A damaged or unreadable cache logs a warning and counts as a miss.
        """
        if not self.readable or self._broken:
            return None
        try:
            raw = await self._run(self._get_sync, key)
            return _decode(raw) if raw is not None else None
        except (sqlite3.Error, OSError, ValueError, KeyError, TypeError) as exc:
            self._broken = True
            log.warning("response cache %s unreadable, continuing without it: %s", self.path, exc)
            return None

    async def get(self, key: str) -> GenerateResponse | None:
        """Return the stored response for ``key`` (marked ``cache_hit``), or None (failed entries too)."""
        entry = await self.lookup(key)
        return entry.response if entry is not None and entry.error is None else None

    async def put(self, key: str, response: GenerateResponse, *, model: str = "", error: str | None = None) -> None:
        """Store ``response`` under ``key`` (only in ``read-write`` mode), replacing what was there.

        Args:
            key: the request's :func:`cache_key`.
            response: what the provider returned, usable or not.
            model: the model string (default: the response's).
            error: the call's error message when this output failed the call (a *failed* entry).

        A failing write logs a warning; it never fails the call.
        """
        if not self.writable or self._broken:
            return
        try:
            await self._run(self._put_sync, key, model or response.model, _encode(response, error))
        except (sqlite3.Error, OSError, ValueError, TypeError) as exc:
            self._broken = True
            log.warning("response cache %s not writable, continuing without it: %s", self.path, exc)

    async def aclose(self) -> None:
        """Close the database and the worker thread (the cache reopens on next use)."""
        if self._executor is None:
            return
        executor, self._executor = self._executor, None
        try:
            await asyncio.get_running_loop().run_in_executor(executor, self._close_sync)
        finally:
            executor.shutdown(wait=False)
