"""The one managed wrapper every backend runs behind.

:class:`ManagedBackend` adds, in this order: response-cache lookup (every
answer the caller gets is stored, unusable ones included, so a re-run from
the cache replays the first run exactly; modes in :mod:`scene_sim.backends._cache`), the
provider's connection limit (shared per provider and base URL; a freed
connection goes to the waiting task that has made the fewest calls), a
requests-per-minute throttle (asyncio-throttle) and an optional
tokens-per-minute limit, retries with exponential backoff and full jitter
that honour the provider's retry-after, a per-attempt timeout, and accounting.

It also makes every backend answer the same way: ``choices`` become an enum
schema for providers that cannot score options (and the answer is mapped back
to one choice, re-querying when it matches none), and schema requests get
``parsed`` decoded from the text when the provider returned no object (a
parse failure leaves ``parsed=None``; bad model output never raises).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import heapq
import itertools
import json
import math
import random
import time
import weakref
from collections.abc import Callable
from typing import Any, Final, TypeVar

from asyncio_throttle import Throttler

from scene_sim._json import decode_json
from scene_sim.backends._accounting import Accountant
from scene_sim.backends._cache import CacheEntry, ResponseCache, cache_key
from scene_sim.backends.base import (
    Backend,
    BackendError,
    Capabilities,
    ErrorKind,
    GenerateRequest,
    GenerateResponse,
    Usage,
    redact,
)
from scene_sim.budget import Budget, BudgetExceeded
from scene_sim.errors import SceneSimError

__all__ = [
    "DEFAULT_MAX_ATTEMPTS",
    "DEFAULT_TIMEOUT_S",
    "CallFailed",
    "FatalBackendError",
    "ManagedBackend",
    "choice_schema",
    "decode_json",
    "match_choice",
    "model_call_fields",
    "projected_usage",
]

#: Attempts per call (the first one included).
DEFAULT_MAX_ATTEMPTS: Final = 6
#: Per-attempt timeout in seconds.
DEFAULT_TIMEOUT_S: Final = 120.0
#: Name of the schema a ``choices`` request becomes.
CHOICE_SCHEMA_NAME: Final = "choice"

T = TypeVar("T")


class CallFailed(BackendError):
    """A managed call failed for good (a fatal error, or every attempt failed).

    Attributes:
        model: the model string.
        attempts: provider attempts made.
        retries: one record per failed attempt that was retried (as in :class:`GenerateResponse`).
        latency_s: wall time of the whole call, backoff included.

    """

    def __init__(
        self,
        message: str,
        *,
        kind: ErrorKind,
        status: int | None = None,
        retry_after: float | None = None,
        model: str = "",
        attempts: int = 1,
        retries: tuple[dict[str, Any], ...] = (),
        latency_s: float = 0.0,
    ) -> None:
        super().__init__(message, kind=kind, status=status, retry_after=retry_after)
        self.model = model
        self.attempts = attempts
        self.retries = retries
        self.latency_s = latency_s
        #: replayed from a failed cache entry (read-only mode), no request sent
        self.cache_hit = False


class FatalBackendError(CallFailed, SceneSimError):
    """A fatal provider error (bad request, auth, permission, unknown model).

    It is also a :class:`SceneSimError`: the user can fix it (key, model name),
    and the CLI prints its one-line message without a traceback.
    """


def _one_line(text: str, limit: int = 500) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def model_call_fields(result: GenerateResponse | BaseException, model: str = "") -> dict[str, Any]:
    """Return the ``model_call`` event fields (all but ``actor``) for a call's outcome.

    Args:
        result: the response, or the exception the call raised (normally a :class:`CallFailed`).
        model: the model string (default: the one in ``result``).

    Returns:
        ``{"model", "input_tokens", "output_tokens", "cached_tokens", "latency_s",
        "attempts", "cache_hit", "error"}`` as DESIGN.md's event log specifies;
        ``error`` is None on success and the one-line, key-free message otherwise.

    """
    if isinstance(result, GenerateResponse):
        return {
            "model": model or result.model,
            "input_tokens": result.usage.input_tokens,
            "output_tokens": result.usage.output_tokens,
            "cached_tokens": result.usage.cached_tokens,
            "latency_s": round(result.latency_s, 6),
            "attempts": result.attempts,
            "cache_hit": result.cache_hit,
            "error": None,
        }
    return {
        "model": model or getattr(result, "model", ""),
        "input_tokens": 0,
        "output_tokens": 0,
        "cached_tokens": 0,
        "latency_s": round(float(getattr(result, "latency_s", 0.0)), 6),
        "attempts": int(getattr(result, "attempts", 1)),
        "cache_hit": bool(getattr(result, "cache_hit", False)),
        "error": redact(_one_line(str(result) or type(result).__name__)),
    }


def _is_own_error(exc: BaseException) -> bool:
    """Whether ``exc`` comes from Python or scene-sim (its traceback helps and holds no SDK request state).

    Provider SDK exceptions are not chained into :class:`CallFailed`: they carry
    request objects (with auth headers) and their texts are already in the message.
    """
    return type(exc).__module__.split(".", 1)[0] in ("builtins", "scene_sim", "json", "asyncio")


# -- output normalisation ---------------------------------------------------------


def choice_schema(choices: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """Return the enum schema a ``choices`` request becomes for providers that cannot score options."""
    return {
        "type": "object",
        "properties": {"choice": {"type": "string", "enum": list(choices)}},
        "required": ["choice"],
        "additionalProperties": False,
    }


def _norm(text: str) -> str:
    return text.strip().strip("\"'`*.,;:!()[]{} \n\t").casefold()


def match_choice(answer: Any, choices: tuple[str, ...]) -> str | None:
    """Map a model's answer to one of ``choices``.

    Exact match first, then case-insensitive (ignoring surrounding quotes and
    punctuation), then a unique prefix match either way; None otherwise.
    """
    if isinstance(answer, dict):
        answer = answer.get("choice", next(iter(answer.values()), None) if len(answer) == 1 else None)
    if not isinstance(answer, str):
        return None
    if answer in choices:
        return answer
    norm = _norm(answer)
    if not norm:
        return None
    for choice in choices:
        if _norm(choice) == norm:
            return choice
    prefixed = [c for c in choices if _norm(c) and (norm.startswith(_norm(c)) or _norm(c).startswith(norm))]
    if len(prefixed) > 1:  # prefer the longest choice the answer starts with ("no-op" over "no")
        starts = [c for c in prefixed if norm.startswith(_norm(c))]
        longest = max((len(_norm(c)) for c in starts), default=0)
        prefixed = [c for c in starts if len(_norm(c)) == longest]
    return prefixed[0] if len(prefixed) == 1 else None


# -- shared limits ----------------------------------------------------------------

#: Per event loop: limiter key -> limiter (semaphores and locks belong to one loop).
_SHARED: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[Any, ...], Any]] = weakref.WeakKeyDictionary()


def _shared(key: tuple[Any, ...], factory: Callable[[], T]) -> T:
    table = _SHARED.setdefault(asyncio.get_running_loop(), {})
    if key not in table:
        table[key] = factory()
    return table[key]


class _FairSlots:
    """A connection limit that serves the waiting task with the least attained service first.

    ``asyncio.Semaphore`` serves waiters first come, first served, so in a
    sweep the episodes drift apart in progress and, once no new episode is
    left to start, the stragglers run one call at a time on a mostly idle
    pool. Serving the task (the episode) that has made the fewest calls so far
    keeps episodes in step and the pool full to the end. A freed slot is
    handed straight to the next waiter, so a newcomer cannot barge past it.
    """

    def __init__(self, size: int) -> None:
        self._free = size
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._order = itertools.count()
        self._served: weakref.WeakKeyDictionary[asyncio.Task[Any], int] = weakref.WeakKeyDictionary()

    async def __aenter__(self) -> None:
        task = asyncio.current_task()
        served = 0
        if task is not None:
            served = self._served.get(task, 0)
            self._served[task] = served + 1
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return
        future = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (served, next(self._order), future))
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self._release()  # the slot arrived just as the task was cancelled: pass it on
            raise

    async def __aexit__(self, *exc: object) -> None:
        self._release()

    def _release(self) -> None:
        while self._waiters:
            future = heapq.heappop(self._waiters)[2]
            if not future.done():  # a cancelled waiter's future is done already
                future.set_result(None)
                return
        self._free += 1


class _TokenWindow:
    """A sliding one-minute window of tokens sent (a tokens-per-minute limit)."""

    def __init__(self, tpm: float, period_s: float = 60.0) -> None:
        self.tpm = tpm
        self.period_s = period_s
        self._log: collections.deque[list[float]] = collections.deque()
        self._lock = asyncio.Lock()

    async def acquire(self, tokens: int) -> list[float]:
        async with self._lock:
            while True:
                now = time.monotonic()
                while self._log and now - self._log[0][0] >= self.period_s:
                    self._log.popleft()
                used = sum(entry[1] for entry in self._log)
                if not self._log or used + tokens <= self.tpm:
                    entry = [now, float(tokens)]
                    self._log.append(entry)
                    return entry
                await asyncio.sleep(max(self._log[0][0] + self.period_s - now, 0.01))

    @staticmethod
    def settle(entry: list[float], tokens: int) -> None:
        entry[1] = float(tokens)


def _estimate_tokens(request: GenerateRequest) -> int:
    chars = len(request.system or "") + sum(len(m.get("content", "")) for m in request.messages)
    return math.ceil(chars / 4)


def projected_usage(request: GenerateRequest) -> Usage:
    """The most a request is expected to spend: its prompt (schema included) and ``max_tokens`` of output.

    The budget reserves this before an attempt starts; prompt tokens are
    estimated at four characters a token, with no prefix-cache discount.
    """
    schema_chars = len(json.dumps(request.schema)) if request.schema is not None else 0
    choice_chars = sum(len(c) for c in request.choices or ())
    prompt = _estimate_tokens(request) + math.ceil((schema_chars + choice_chars) / 4)
    return Usage(input_tokens=prompt, output_tokens=max(int(request.max_tokens or 0), 0))


# -- the wrapper --------------------------------------------------------------------


class ManagedBackend:
    """Cache, limits, retries, output normalisation and accounting around one :class:`Backend`.

    Args:
        backend: the provider backend (one attempt per ``generate``).
        cache: the response cache (None: no caching).
        accountant: where calls are counted (None: a private one, see :attr:`accountant`).
        max_connections: concurrent requests per provider and base URL (default:
            the backend's ``default_max_connections``). Shared by every managed
            backend of the same provider and base URL in the event loop; the
            first one created sets the limit.
        rpm: requests per minute (per provider, base URL and model); None: unlimited.
        tpm: tokens per minute (estimated input plus ``max_tokens``, settled to
            the actual usage); None: unlimited.
        timeout_s: per-attempt timeout.
        max_attempts: attempts per call, the first included.
        backoff_base_s: the first backoff ceiling; it doubles per attempt (full jitter).
        backoff_max_s: the largest backoff ceiling.
        max_wait_s: the longest wait honoured from a provider's retry-after.
        owns_cache: close the cache in :meth:`aclose`.
        budget: the run's hard spending cap (None: none); every attempt reserves
            its projected cost (:func:`projected_usage` at the model's price) first.

    """

    def __init__(
        self,
        backend: Backend,
        *,
        cache: ResponseCache | None = None,
        accountant: Accountant | None = None,
        max_connections: int | None = None,
        rpm: float | None = None,
        tpm: float | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        backoff_base_s: float = 1.0,
        backoff_max_s: float = 60.0,
        max_wait_s: float = 300.0,
        owns_cache: bool = False,
        budget: Budget | None = None,
    ) -> None:
        if max_attempts < 1:
            raise SceneSimError(f"max_attempts must be at least 1, got {max_attempts}")
        if max_connections is not None and max_connections < 1:
            raise SceneSimError(f"max_connections must be at least 1, got {max_connections}")
        for name, value in (("rpm", rpm), ("tpm", tpm), ("timeout_s", timeout_s)):
            if value is not None and value <= 0:
                raise SceneSimError(f"{name} must be positive, got {value}")
        self.backend = backend
        self.cache = cache
        self.accountant = accountant if accountant is not None else Accountant()
        self.max_connections = int(max_connections or backend.default_max_connections)
        self.rpm = rpm
        self.tpm = tpm
        self.timeout_s = timeout_s
        self.max_attempts = max_attempts
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.max_wait_s = max_wait_s
        self._owns_cache = owns_cache
        self._random = random.Random()
        self.budget = budget

    def __repr__(self) -> str:
        return f"ManagedBackend({self.model_string!r}, cache={self.cache!r})"

    # -- what callers read --------------------------------------------------------

    @property
    def model_string(self) -> str:
        """``provider/model`` of the wrapped backend."""
        return self.backend.model_string

    @property
    def provider(self) -> str:
        """The wrapped backend's provider name."""
        return self.backend.provider

    @property
    def capabilities(self) -> Capabilities:
        """The wrapped backend's native capabilities (choices work either way)."""
        return self.backend.capabilities

    def cache_identity(self) -> dict[str, Any]:
        """Return the wrapped backend's cache identity."""
        return self.backend.cache_identity()

    def cache_key(self, request: GenerateRequest) -> str:
        """Return the response-cache key of ``request`` on this backend."""
        return cache_key(self.backend.cache_identity(), request)

    async def aclose(self) -> None:
        """Close the wrapped backend (and the cache when owned)."""
        try:
            await self.backend.aclose()
        finally:
            if self._owns_cache and self.cache is not None:
                await self.cache.aclose()

    async def __aenter__(self) -> ManagedBackend:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- limits -------------------------------------------------------------------

    def _semaphore(self) -> _FairSlots:
        key = ("connections", self.backend.provider, self.backend.base_url)
        return _shared(key, lambda: _FairSlots(self.max_connections))

    def _throttler(self) -> Throttler | None:
        if self.rpm is None:
            return None
        rpm = float(self.rpm)
        limit, period = (max(1, int(rpm)), 60.0 * max(1, int(rpm)) / rpm) if rpm >= 1 else (1, 60.0 / rpm)
        key = ("rpm", self.backend.provider, self.backend.base_url, self.backend.model)
        return _shared(key, lambda: Throttler(rate_limit=limit, period=period))

    def _token_window(self) -> _TokenWindow | None:
        if self.tpm is None:
            return None
        key = ("tpm", self.backend.provider, self.backend.base_url, self.backend.model)
        return _shared(key, lambda: _TokenWindow(float(self.tpm or 0)))

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        ceiling = min(self.backoff_max_s, self.backoff_base_s * 2 ** (attempt - 1))
        wait = self._random.uniform(0.0, ceiling)
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.max_wait_s))
        return wait

    # -- one attempt --------------------------------------------------------------

    async def _attempt(self, request: GenerateRequest) -> tuple[GenerateResponse, float]:
        throttler = self._throttler()
        window = self._token_window()
        async with self._semaphore():
            if throttler is not None:
                await throttler.acquire()
            estimate = _estimate_tokens(request)
            entry = await window.acquire(estimate + request.max_tokens) if window is not None else None
            started = time.monotonic()
            try:
                # asyncio.timeout, not wait_for: no extra task, so no extra loop hops while holding a connection
                async with asyncio.timeout(self.timeout_s):
                    response = await self.backend.generate(request)
            except TimeoutError as exc:
                if entry is not None:
                    _TokenWindow.settle(entry, estimate)
                raise BackendError(f"timeout: no answer within {self.timeout_s:g}s", kind="retry") from exc
            except BaseException:
                if entry is not None:
                    _TokenWindow.settle(entry, estimate)
                raise
            latency = time.monotonic() - started
            if entry is not None:
                _TokenWindow.settle(entry, response.usage.input_tokens + response.usage.output_tokens)
        return response, latency

    async def _budgeted_attempt(self, request: GenerateRequest) -> tuple[GenerateResponse, float]:
        """One attempt within the budget: reserve its projected cost, settle the actual cost.

        Raises:
            BudgetExceeded: the reservation was refused (no request is sent).

        """
        if self.budget is None:
            return await self._attempt(request)
        model = self.model_string
        estimate = self.accountant.prices.cost(model, projected_usage(request))
        reserved = estimate or 0.0  # an unpriced model cannot be bound (the run was allowed to use it)
        if not self.budget.try_reserve(reserved):
            raise BudgetExceeded(
                f"{model}: budget of ${self.budget.limit_usd:.2f} reached "
                f"(${self.budget.spent_usd:.4f} spent; this call could cost ${reserved:.4f})"
            )
        actual = 0.0
        try:
            response, latency = await self._attempt(request)
            actual = self.accountant.prices.cost(model, response.usage) or 0.0
        finally:
            self.budget.settle(reserved, actual)
        return response, latency

    def _classify(self, exc: BaseException) -> BackendError:
        if isinstance(exc, BackendError):
            return exc
        try:
            return self.backend.classify(exc)
        except Exception:  # a broken classifier must not hide the original error
            return BackendError(f"{type(exc).__name__}: {exc}", kind="fatal")

    def _normalise(self, request: GenerateRequest, response: GenerateResponse) -> GenerateResponse:
        """Map choices and decode schema output (raises a retryable error when no choice matches)."""
        if request.choices is not None:
            answer: Any = response.parsed if response.parsed is not None else response.text
            if isinstance(answer, str) and answer not in request.choices:
                decoded = decode_json(answer)
                if isinstance(decoded, dict):
                    answer = decoded
            choice = match_choice(answer, request.choices)
            if choice is None:
                shown = _one_line(response.text, 120)
                raise BackendError(
                    f"answer {shown!r} matches none of the choices {list(request.choices)}", kind="retry"
                )
            return dataclasses.replace(response, text=choice, parsed=None)
        if request.schema is not None and response.parsed is None:
            return dataclasses.replace(response, parsed=decode_json(response.text, request.schema))
        return response

    # -- the call -----------------------------------------------------------------

    async def generate(self, request: GenerateRequest) -> GenerateResponse:
        """Answer ``request`` from the cache or the provider.

        Returns:
            The response, with ``attempts``, ``retries``, ``latency_s`` (of the
            successful attempt, or of the cache lookup) and ``cache_hit`` filled in.

        Raises:
            FatalBackendError: a fatal provider error (first occurrence, no retry).
            BudgetExceeded: the run's budget refused the next attempt.
            CallFailed: every attempt failed with retryable errors, or (read-only cache)
                the stored failed entry of this request was replayed.

        """
        started = time.monotonic()
        model = self.model_string
        key: str | None = None
        if self.cache is not None and self.cache.readable:
            key = cache_key(self.backend.cache_identity(), request)
            entry = await self.cache.lookup(key)
            # read-write refreshes a failed entry (asks again); read-only replays the failure too
            if entry is not None and (entry.error is None or not self.cache.writable):
                return self._replay(request, entry, started)

        sent = request
        if request.choices is not None and not self.backend.capabilities.scores_choices:
            sent = dataclasses.replace(
                request, choices=None, schema=choice_schema(request.choices), schema_name=CHOICE_SCHEMA_NAME
            )

        retries: list[dict[str, Any]] = []
        for attempt in range(1, self.max_attempts + 1):
            raw_answer: GenerateResponse | None = None  # this attempt's answer, when the provider gave one
            try:
                raw, latency = await self._budgeted_attempt(sent)
                raw_answer = raw
                response = self._normalise(request, raw)
            except (asyncio.CancelledError, BudgetExceeded):
                raise
            except Exception as exc:
                error = self._classify(exc)
                message = redact(_one_line(str(error) or type(error).__name__))
                if error.kind == "fatal" or attempt == self.max_attempts:
                    what = "failed" if error.kind == "fatal" else f"failed after {attempt} attempts"
                    if raw_answer is not None and key is not None and self.cache is not None:
                        # the provider answered but the answer failed the call: a failed entry, for exact replay
                        await self.cache.put(key, raw_answer, model=model, error=f"{model} {what}: {message}")
                    elapsed = time.monotonic() - started
                    self.accountant.record(
                        role=request.role,
                        model=model,
                        attempts=attempt,
                        retries=len(retries),
                        latency_s=elapsed,
                        error=True,
                    )
                    cls = FatalBackendError if error.kind == "fatal" else CallFailed
                    raise cls(
                        f"{model} {what}: {message}",
                        kind=error.kind,
                        status=error.status,
                        retry_after=error.retry_after,
                        model=model,
                        attempts=attempt,
                        retries=tuple(retries),
                        latency_s=elapsed,
                    ) from (exc if _is_own_error(exc) else None)
                wait = self._backoff(attempt, error.retry_after)
                retries.append({"attempt": attempt, "error": message, "wait_s": round(wait, 3), "status": error.status})
                await asyncio.sleep(wait)
                continue
            response = dataclasses.replace(
                response,
                model=response.model or model,
                latency_s=latency,
                attempts=attempt,
                cache_hit=False,
                retries=tuple(retries),
            )
            # every answer the caller gets is stored, unusable ones included (exact replay; see _cache)
            if key is not None and self.cache is not None:
                await self.cache.put(key, response, model=model)
            self.accountant.record(
                role=request.role,
                model=model,
                usage=response.usage,
                attempts=attempt,
                retries=len(retries),
                latency_s=latency,
            )
            return response
        raise AssertionError("unreachable")  # pragma: no cover

    def _replay(self, request: GenerateRequest, entry: CacheEntry, started: float) -> GenerateResponse:
        """Answer from a stored entry: its response, or (a failed entry) the stored failure, with no request."""
        model = self.model_string
        latency = time.monotonic() - started
        hit = dataclasses.replace(entry.response, latency_s=latency, model=entry.response.model or model)
        self.accountant.record(
            role=request.role,
            model=model,
            usage=hit.usage,
            attempts=0,
            latency_s=latency,
            cache_hit=True,
            error=entry.error is not None,
        )
        if entry.error is None:
            return hit
        failed = CallFailed(entry.error, kind="retry", model=model, attempts=0, latency_s=latency)
        failed.cache_hit = True
        raise failed
