"""Where the items of :func:`scene_sim.jobs.run_jobs` run: this event loop, or workers on a Ray cluster.

``local`` (the default) is one event loop in this process. ``ray`` shards the
items over Ray actors (the workers), each with its own event loop, its own
:class:`~scene_sim.context.RunContext` and so its own connection limits,
while what must stay global stays global:

* the hard budget is one :class:`~scene_sim.budget.Budget` inside a Ray actor
  that every worker's backends (and the driver's) reserve from and settle to;
* rate limits (``rpm``, ``tpm``) are split evenly over the workers, so the
  workers together never send more than the limit; ``max_connections`` is
  per worker (each worker holds its own pool).

Work closures do not travel between processes, so a worker builds its work
function itself from a :class:`WorkerSpec`: an importable factory
(``"package.module:function"``) and plain, picklable arguments. The factory
is called in the worker as ``factory(context, **kwargs)`` and returns
``async work(item) -> result``; items and results must be picklable.

Only the driver writes files: a worker returns each item's result and the
driver's part of the work stores it. So the run directory is written by the
same code whichever the executor, nothing is written once the driver is gone
(a kill -9 of the driver leaves whole files or none, as with ``local``), and
the workers need no shared file system.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from scene_sim.budget import Budget
from scene_sim.context import RunContext
from scene_sim.errors import SceneSimError

__all__ = [
    "EXECUTORS",
    "RayBudget",
    "RayExecutor",
    "RemoteItemError",
    "WorkerSpec",
    "merge_accounting",
    "ray_session",
    "run_on_ray",
    "shared_budget",
    "split_limits",
]

#: The executors a command's ``--executor`` accepts.
EXECUTORS = ("local", "ray")

#: Limits that are rates over the whole cluster, so each worker gets its share.
_RATE_LIMITS = ("rpm", "tpm")


class RemoteItemError(Exception):
    """An item's work raised inside a worker (the message is the worker's first line)."""


@dataclass(frozen=True)
class WorkerSpec:
    """How a worker builds its work function: an importable factory and plain arguments.

    Args:
        factory: ``"package.module:function"``; called as ``function(context, **kwargs)`` it
            returns the coroutine function ``work(item) -> result``.
        kwargs: picklable keyword arguments of the factory.
        cache_mode: the workers' cache mode.
        limits: the run's limits per provider or model string (rates are split over the workers).

    """

    factory: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    cache_mode: str = "read-write"
    limits: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def load(self) -> Callable[..., Callable[[Any], Awaitable[Any]]]:
        """The factory function.

        Raises:
            SceneSimError: the factory is not ``module:function`` or cannot be imported.

        """
        module, _, name = self.factory.partition(":")
        if not module or not name:
            raise SceneSimError(f"worker factory must be 'package.module:function', got '{self.factory}'")
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as exc:
            raise SceneSimError(f"worker factory '{self.factory}' cannot be loaded: {exc}") from None

    def build(self, context: RunContext) -> Callable[[Any], Awaitable[Any]]:
        """The work function of one worker, serving its model calls from ``context``."""
        return self.load()(context, **dict(self.kwargs))


def split_limits(limits: Mapping[str, Mapping[str, Any]], workers: int) -> dict[str, dict[str, Any]]:
    """Each worker's share of the run's limits: rates divided by ``workers``, the rest unchanged."""
    out: dict[str, dict[str, Any]] = {}
    for key, values in limits.items():
        out[key] = {
            name: (float(v) / workers if name in _RATE_LIMITS and v is not None else v) for name, v in values.items()
        }
    return out


_STATS = ("calls", "attempts", "retries", "errors", "cache_hits", "input_tokens", "output_tokens", "cached_tokens")


def _add_stats(into: dict[str, Any], stats: Mapping[str, Any]) -> None:
    for name in _STATS:
        into[name] = into.get(name, 0) + (stats.get(name) or 0)
    into["latency_s"] = round(into.get("latency_s", 0.0) + (stats.get("latency_s") or 0.0), 6)
    cost = stats.get("cost_usd")
    if cost is not None:
        into["cost_usd"] = round((into.get("cost_usd") or 0.0) + cost, 8)
    else:
        into.setdefault("cost_usd", None)


def merge_accounting(summaries: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One accounting summary (the ``RunContext.accounting()`` shape) from several processes' summaries."""
    parts = [s for s in summaries if s]
    if not parts:
        return {}
    by_role: dict[str, dict[str, dict[str, Any]]] = {}
    by_model: dict[str, dict[str, Any]] = {}
    total: dict[str, Any] = {}
    unpriced: set[str] = set()
    for part in parts:
        for role, models in (part.get("by_role") or {}).items():
            for model, stats in models.items():
                _add_stats(by_role.setdefault(role, {}).setdefault(model, {}), stats)
        for model, stats in (part.get("by_model") or {}).items():
            _add_stats(by_model.setdefault(model, {}), stats)
        _add_stats(total, part.get("total") or {})
        unpriced.update(part.get("unpriced_models") or ())
    return {
        "by_role": by_role,
        "by_model": by_model,
        "total": total,
        "unpriced_models": sorted(unpriced),
        "prices": next((p.get("prices") for p in parts if p.get("prices")), None),
        "wall_s": max(float(p.get("wall_s") or 0.0) for p in parts),
    }


# -- the shared budget -------------------------------------------------------------


class _BudgetHolder:
    """The run's one :class:`Budget`, inside a Ray actor (methods return the spend too)."""

    def __init__(self, limit_usd: float, spent_usd: float) -> None:
        self._budget = Budget(limit_usd)
        self._budget.settle(0.0, spent_usd)

    def try_reserve(self, usd: float) -> tuple[bool, float, int]:
        ok = self._budget.try_reserve(usd)
        return ok, self._budget.spent_usd, self._budget.refused

    def settle(self, reserved: float, actual: float) -> None:
        self._budget.settle(reserved, actual)

    def state(self) -> tuple[float, int]:
        return self._budget.spent_usd, self._budget.refused


class RayBudget:
    """The :class:`Budget` interface, proxied to the run's one budget actor.

    ``try_reserve`` is one round trip to the actor (the answer must be known
    before the call starts: a fraction of a millisecond on one machine, next to
    model calls of a second); ``settle`` does not wait. ``spent_usd`` and
    ``refused`` are the actor's figures as of the last answer, refreshed at
    most every ``refresh_s`` when read.
    """

    def __init__(self, actor: Any, limit_usd: float, refresh_s: float = 0.5) -> None:
        self._actor = actor
        self._limit = float(limit_usd)
        self._refresh_s = refresh_s
        self._spent = 0.0
        self._refused = 0
        self._seen = 0.0

    def __repr__(self) -> str:
        return f"RayBudget(limit_usd={self._limit!r}, spent_usd={self._spent!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (RayBudget, (self._actor, self._limit, self._refresh_s))

    @property
    def limit_usd(self) -> float:
        """The cap."""
        return self._limit

    def _refresh(self) -> None:
        if time.monotonic() - self._seen >= self._refresh_s:
            self.refresh()

    def refresh(self) -> None:
        """Read the actor's figures now (after this proxy's own settlements, which it sent first)."""
        import ray

        self._spent, self._refused = ray.get(self._actor.state.remote())
        self._seen = time.monotonic()

    @property
    def spent_usd(self) -> float:
        """Money spent by settled calls, over every worker."""
        self._refresh()
        return self._spent

    @property
    def refused(self) -> int:
        """Reservations refused so far, over every worker."""
        self._refresh()
        return self._refused

    def try_reserve(self, usd_estimate: float) -> bool:
        """Reserve at the shared budget (see :meth:`Budget.try_reserve`)."""
        import ray

        ok, self._spent, self._refused = ray.get(self._actor.try_reserve.remote(usd_estimate))
        self._seen = time.monotonic()
        return bool(ok)

    def settle(self, reserved: float, actual: float) -> None:
        """Settle at the shared budget (see :meth:`Budget.settle`), without waiting."""
        self._actor.settle.remote(reserved, actual)


def shared_budget(budget: Any) -> RayBudget:
    """Move ``budget`` (its limit and spend so far) into a Ray actor; returns a proxy that pickles to others."""
    holder = _ray().remote(num_cpus=0)(_BudgetHolder).remote(float(budget.limit_usd), float(budget.spent_usd))
    return RayBudget(holder, float(budget.limit_usd))


# -- workers -----------------------------------------------------------------------


class _Worker:
    """One Ray actor: its own event loop, context and work function; runs chunks of items."""

    def __init__(self, spec: WorkerSpec, workers: int, concurrency: int, budget: RayBudget | None) -> None:
        self._spec = spec
        self._workers = workers
        self._concurrency = concurrency
        self._budget = budget
        self._context: RunContext | None = None
        self._work: Callable[[Any], Awaitable[Any]] | None = None
        self._slots: asyncio.Semaphore | None = None

    async def start(self) -> int:
        """Build the context and the work function (importing the study); returns the process id."""
        if self._work is None:
            self._context = RunContext(
                cache_mode=self._spec.cache_mode,
                limits=split_limits(self._spec.limits, self._workers),
                budget=self._budget,
            )
            self._work = self._spec.build(self._context)
            self._slots = asyncio.Semaphore(self._concurrency)
            # a long batch: keep the startup heap out of the collector's full passes (see jobs.batch_gc)
            gc.freeze()
            gc.set_threshold(max(gc.get_threshold()[0], 10_000), *gc.get_threshold()[1:])
        return os.getpid()

    async def run(self, items: list[Any]) -> list[tuple[bool, Any]]:
        """Each item's ``(True, result)`` or ``(False, error line)``, in order."""
        await self.start()
        return list(await asyncio.gather(*(self._one(item) for item in items)))

    async def _one(self, item: Any) -> tuple[bool, Any]:
        assert self._slots is not None and self._work is not None
        async with self._slots:
            try:
                return True, await self._work(item)
            except Exception as exc:  # one item's fault travels back as its failure
                return False, (str(exc).splitlines() or [type(exc).__name__])[0]

    async def accounting(self) -> dict[str, Any]:
        """This worker's accounting summary."""
        return self._context.accounting() if self._context is not None else {}

    async def close(self) -> None:
        """Close the worker's backends."""
        if self._context is not None:
            await self._context.aclose()


def _connect(ray: Any, workers: int, init: Mapping[str, Any]) -> bool:
    """Connect to Ray unless connected: join ``RAY_ADDRESS`` when set, else start a local cluster.

    Returns:
        Whether this call connected (and so the caller is the one to shut down).

    """
    if ray.is_initialized():
        return False
    kwargs = dict(init)
    if not os.environ.get("RAY_ADDRESS"):
        kwargs.setdefault("include_dashboard", False)
        if workers > (os.cpu_count() or 1):
            kwargs.setdefault("num_cpus", workers)  # else the extra workers would wait for CPUs
    kwargs.setdefault("log_to_driver", True)
    ray.init(**kwargs)  # joins RAY_ADDRESS when set; in the main thread, where Ray wants it
    return True


@contextlib.contextmanager
def ray_session(workers: int | None = None, **init: Any) -> Any:
    """One Ray connection around several :class:`RayExecutor` batches (a pipeline's steps).

    Without it, each executor connects and shuts down on its own; a local cluster
    then starts once per step. Inside it, the executors find Ray connected and
    leave it be; it shuts down here (when this call connected).

    Args:
        workers: the workers the batches will start (a local cluster gets at least that many CPUs).
        init: keyword arguments of ``ray.init``.

    """
    ray = _ray()
    started = _connect(ray, workers or 0, init)
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


async def run_on_ray(
    items: Sequence[Any],
    store: Callable[[Any, Any], Awaitable[Any]],
    worker: WorkerSpec,
    *,
    context: RunContext,
    workers: int | None = None,
    concurrency: int = 16,
    **jobs_args: Any,
) -> tuple[Any, dict[str, Any]]:
    """:func:`~scene_sim.jobs.run_jobs` over Ray workers built from ``worker``; ``store`` runs here.

    The context's budget, if any, becomes the shared one for the batch (the driver's
    own calls draw on it too) and is a local :class:`Budget` again afterwards, with
    the batch's spend carried over, so a next batch or step goes on from it.

    Args:
        items: what to do (picklable).
        store: ``store(item, result)``, the driver's part: it writes the result.
        worker: how each worker builds ``work(item) -> result``.
        context: the driver's backends and budget.
        workers: how many workers (default: the cluster's CPUs).
        concurrency: items in flight per worker.
        jobs_args: the other keyword arguments of :func:`~scene_sim.jobs.run_jobs`.

    Returns:
        run_jobs' summary and the accounting of the driver and every worker.

    """
    from scene_sim.jobs import run_jobs  # jobs knows executors only as "something with bind()"

    local = context.budget
    async with RayExecutor(worker, workers=workers, concurrency=concurrency, budget=local) as executor:
        shared = executor.budget
        if shared is not None:
            context.set_budget(shared)
        try:
            summary = await run_jobs(
                items, store, executor=executor, concurrency=concurrency, context=context, **jobs_args
            )
            accounting = merge_accounting([context.accounting(), *await executor.accounting()])
        finally:
            if shared is not None:
                with contextlib.suppress(Exception):
                    shared.refresh()
                after = Budget(shared.limit_usd)
                after.settle(0.0, shared.spent_usd)
                context.set_budget(after)
    return summary, accounting


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise SceneSimError(
            "--executor ray needs Ray: pip install 'scene-sim[ray]' (or run with --executor local)"
        ) from None
    return ray


class RayExecutor:
    """Items of :func:`~scene_sim.jobs.run_jobs` run by Ray actors built from a :class:`WorkerSpec`.

    Use it as an async context manager around ``run_jobs(..., executor=ex)``;
    there, ``work(item, result)`` is the driver's part (store the result) and
    the worker's part is the spec's work function.

    Args:
        worker: how each worker builds its work function.
        workers: how many workers (default: the cluster's CPUs).
        concurrency: items in flight per worker.
        budget: the run's hard budget (moved into a shared actor; its spend so far carries over).
        chunk: items sent to a worker in one message at most.
        gather_s: how long an item waits for others to share its message (fewer, larger messages
            cost the driver less; next to an episode's seconds of model calls it is nothing).
        init: keyword arguments of ``ray.init`` when this executor starts the connection
            (default: join ``RAY_ADDRESS`` when set, else start a local cluster without a dashboard).

    """

    def __init__(
        self,
        worker: WorkerSpec,
        *,
        workers: int | None = None,
        concurrency: int = 32,
        budget: Any = None,
        chunk: int = 16,
        gather_s: float = 0.01,
        init: Mapping[str, Any] | None = None,
    ) -> None:
        if workers is not None and workers < 1:
            raise SceneSimError(f"workers must be at least 1, got {workers}")
        if concurrency < 1:
            raise SceneSimError(f"concurrency must be at least 1, got {concurrency}")
        self.worker = worker
        self.workers = workers or 0
        self.concurrency = concurrency
        self.chunk = max(1, chunk)
        self.gather_s = gather_s
        self._init = dict(init or {})
        self._local_budget = budget
        self.budget: RayBudget | None = None
        self._started_ray = False
        self._actors: list[Any] = []
        self._load: list[int] = []
        self._dead: set[int] = set()
        self._buffer: list[tuple[Any, asyncio.Future[Any]]] = []
        self._flush_handle: asyncio.TimerHandle | asyncio.Handle | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> RayExecutor:
        ray = _ray()
        self._started_ray = _connect(ray, self.workers, self._init)
        if not self.workers:
            self.workers = max(1, int(ray.cluster_resources().get("CPU", 1)))
        if self._local_budget is not None:
            self.budget = shared_budget(self._local_budget)
        actor_cls = ray.remote(num_cpus=1, max_concurrency=max(1000, 4 * self.concurrency))(_Worker)
        self._actors = [
            actor_cls.remote(self.worker, self.workers, self.concurrency, self.budget) for _ in range(self.workers)
        ]
        self._load = [0] * self.workers
        try:
            await asyncio.gather(*(a.start.remote() for a in self._actors))
        except Exception as exc:
            await self.__aexit__(None, None, None)
            raise SceneSimError(f"a Ray worker failed to start: {str(exc).splitlines()[-1]}") from None
        return self

    async def __aexit__(self, *exc: object) -> None:
        ray = _ray()
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.gather(*(a.close.remote() for a in self._actors)), 10)
        for actor in self._actors:
            with contextlib.suppress(Exception):
                ray.kill(actor)
        self._actors = []
        if self._started_ray:
            await asyncio.to_thread(ray.shutdown)
            self._started_ray = False

    # -- run_jobs' side ------------------------------------------------------------

    def slots(self, concurrency: int) -> int:
        """Items in flight over every worker (``concurrency`` being one worker's)."""
        return max(1, self.workers) * concurrency

    def bind(self, work: Callable[[Any, Any], Awaitable[Any]]) -> Callable[[Any], Awaitable[Any]]:
        """``item -> work(item, result of the worker's part)``: the whole work of one item."""

        async def one(item: Any) -> Any:
            return await work(item, await self.submit(item))

        return one

    async def submit(self, item: Any) -> Any:
        """Run ``item`` on a worker and return its result.

        Raises:
            RemoteItemError: the worker's work raised for this item.

        """
        if not self._actors:
            raise SceneSimError("RayExecutor.submit outside 'async with RayExecutor(...)'")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._buffer.append((item, future))
        if len(self._buffer) >= self.chunk:
            self._flush()
        elif self._flush_handle is None:
            # gather the items that arrive together into one message
            self._flush_handle = asyncio.get_running_loop().call_later(self.gather_s, self._flush)
        return await future

    def _flush(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        while self._buffer:
            batch, self._buffer = self._buffer[: self.chunk], self._buffer[self.chunk :]
            alive = [i for i in range(len(self._actors)) if i not in self._dead] or list(range(len(self._actors)))
            index = min(alive, key=self._load.__getitem__)  # the least loaded worker that still answers
            self._load[index] += len(batch)
            task = asyncio.ensure_future(self._send(index, batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, index: int, batch: list[tuple[Any, asyncio.Future[Any]]]) -> None:
        try:
            answers = await self._actors[index].run.remote([item for item, _ in batch])
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except Exception as exc:  # the worker died: its items fail, the run goes on without it
            line = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
            answers = [(False, f"worker {index} failed: {line}")] * len(batch)
            self._dead.add(index)
        finally:
            self._load[index] -= len(batch)
        for (_, future), (ok, value) in zip(batch, answers, strict=True):
            if future.done():
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(RemoteItemError(value))

    async def accounting(self) -> list[dict[str, Any]]:
        """Each worker's accounting summary (empty ones left out)."""
        parts = await asyncio.gather(*(a.accounting.remote() for a in self._actors), return_exceptions=True)
        return [p for p in parts if isinstance(p, dict) and p]
