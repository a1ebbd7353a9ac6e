"""Run many items concurrently, crash-safe and on budget: the engine under sweeps and pipelines.

:func:`run_jobs` awaits ``work(item)`` for every item, at most
``concurrency`` at a time, in one event loop; the backends' own limits
bound the model calls underneath. It is what ``scene-sim sweep`` and the
study pipelines (``clca pipeline``, ``normgenesis generate``) run on:

* an item whose ``work`` raises is counted as failed and the run goes on
  (no model output, API fault or bug in one item ends the run);
* with a budget, no new item starts once the money spent plus the projected
  cost of the items in flight would pass it, and underneath, no model call
  starts once it could pass it (the context's :class:`~scene_sim.budget.Budget`,
  installed here when the context has none): calls in flight finish;
* progress shows items done, calls, tokens, live cost and failures;
* finished tasks are dropped as they end, so memory stays flat in the
  number of items, and the collector is tuned for a long batch.

Resuming is the caller's part: it leaves out the items whose output is
already on disk (:class:`scene_sim.records.RecordFile` makes that safe).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from rich.console import Console

from scene_sim.context import RunContext
from scene_sim.errors import SceneSimError
from scene_sim.progress import ProgressDisplay

__all__ = ["JobsSummary", "batch_gc", "run_jobs", "spent_usd"]

T = TypeVar("T")


@dataclass
class JobsSummary:
    """What a run of :func:`run_jobs` did."""

    planned: int
    done: int = 0
    failed: int = 0
    budget_stopped: bool = False
    not_started: int = 0
    wall_time_s: float = 0.0
    failures: list[str] = field(default_factory=list)


@contextlib.contextmanager
def batch_gc() -> Iterator[None]:
    """Garbage-collector settings for a long batch of items, restored afterwards.

    With hundreds of episodes in flight, the collector's full passes stalled
    the event loop for up to 300 ms, and every call in flight waited them out.
    Freezing the startup heap (modules, data banks) keeps those passes off
    it, and rarer young passes let short-lived objects die unexamined.
    """
    threshold = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(max(threshold[0], 10_000), *threshold[1:])
    try:
        yield
    finally:
        gc.set_threshold(*threshold)
        gc.unfreeze()


def spent_usd(context: RunContext | None) -> float:
    """Money spent so far by the context's backends (0 when nothing is priced or nothing ran)."""
    if context is None or context.accounting() == {}:
        return 0.0
    cost = context.accountant.total_cost()
    return float(cost) if cost is not None else 0.0


def stats_line(context: RunContext | None, failed: int) -> str:
    """Calls, tokens, cost and failures so far, for a progress display."""
    acc = context.accounting() if context is not None else {}
    total = acc.get("total", {}) if acc else {}
    calls = total.get("calls", 0)
    tokens = (total.get("input_tokens") or 0) + (total.get("output_tokens") or 0)
    cost = total.get("cost_usd")
    cost_txt = f"${cost:.2f}" if isinstance(cost, int | float) else "$-"
    return f"calls {calls:,}  tokens {tokens:,}  cost {cost_txt}  errors {failed}"


async def run_jobs(
    items: Sequence[T],
    work: Callable[[T], Awaitable[Any]],
    *,
    concurrency: int = 16,
    context: RunContext | None = None,
    budget_usd: float | None = None,
    label: str = "items",
    already_done: int = 0,
    quiet: bool = False,
    console: Console | None = None,
    name: Callable[[T], str] = str,
    counts: Callable[[T], bool] = lambda _item: True,
    executor: Any = None,
) -> JobsSummary:
    """Await ``work(item)`` for each item, at most ``concurrency`` at a time.

    Args:
        items: what to do, in order (already-done items left out by the caller).
        work: the coroutine function for one item; what it raises counts as a failure.
        concurrency: items in flight at once (>= 1).
        context: the run's backends, for live accounting and the budget.
        budget_usd: stop starting items once spend plus projected spend would pass it; also
            the hard cap of every model call (when ``context`` has no budget of its own).
        label: what the items are called in the progress display ("episodes", "dialogues").
        already_done: items done before this run (shown as done in the progress).
        quiet: log lines instead of a progress bar.
        console: where to print (default: stderr).
        name: an item's name in failure messages.
        counts: whether an item spends money (budget projection counts only those).
        executor: None to run ``work(item)`` here, in this event loop; or a started
            :class:`scene_sim.executors.RayExecutor`: each item's worker part then runs on a worker
            and ``work(item, result)`` is the part that runs here (it stores the result), with
            ``concurrency`` items in flight per worker.

    Returns:
        The summary; ``failures`` holds one line per failed item.

    """
    if concurrency < 1:
        raise SceneSimError(f"concurrency must be at least 1, got {concurrency}")
    if budget_usd is not None and budget_usd < 0:
        raise SceneSimError(f"budget must be 0 or more, got {budget_usd}")
    if budget_usd is not None and context is not None and context.budget is None:
        context.set_budget(budget_usd)
    if executor is not None:  # the same loop below, feeding the executor's workers
        work, concurrency = executor.bind(work), executor.slots(concurrency)
    console = console or Console(stderr=True)
    started = time.perf_counter()
    summary = JobsSummary(planned=already_done + len(items))
    semaphore = asyncio.Semaphore(concurrency)
    running = 0
    finished_costly = 0

    async def one(item: T) -> None:
        nonlocal running, finished_costly
        try:
            await work(item)
            summary.done += 1
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # one item's fault is counted, never the run's end
            summary.failed += 1
            first = (str(exc).splitlines() or [type(exc).__name__])[0]
            summary.failures.append(f"{name(item)}: {first}")
        finally:
            running -= 1
            if counts(item):
                finished_costly += 1
            semaphore.release()

    pending: set[asyncio.Task[None]] = set()
    with batch_gc(), ProgressDisplay(summary.planned, already_done, label=label, quiet=quiet, console=console) as bar:

        def finished(task: asyncio.Task[None]) -> None:
            pending.discard(task)
            bar.update(bar.done + 1, stats_line(context, summary.failed))

        for index, item in enumerate(items):
            await semaphore.acquire()
            if budget_usd is not None and counts(item) and _over_budget(context, budget_usd, finished_costly, running):
                semaphore.release()
                summary.budget_stopped = True
                summary.not_started = sum(1 for it in items[index:] if counts(it))
                hard = getattr(context, "budget", None)
                spent = max(float(hard.spent_usd), spent_usd(context)) if hard is not None else spent_usd(context)
                console.print(
                    f"[bold yellow]budget: ${spent:.2f} spent of ${budget_usd:.2f}; "
                    f"not starting {summary.not_started} more {label}[/]"
                )
                break
            running += 1
            task = asyncio.create_task(one(item))
            pending.add(task)
            task.add_done_callback(finished)
        await asyncio.gather(*pending, return_exceptions=True)
    if _budget_refused(context):
        summary.budget_stopped = True  # some items were cut short by the hard cap
    summary.wall_time_s = round(time.perf_counter() - started, 3)
    return summary


def _budget_refused(context: RunContext | None) -> bool:
    budget = getattr(context, "budget", None)
    return budget is not None and bool(getattr(budget, "refused", 0))


def _over_budget(context: RunContext | None, budget: float, finished: int, running: int) -> bool:
    if _budget_refused(context):
        return True  # the hard cap already refused a call: every new item would be cut short
    session = spent_usd(context)
    per_item = session / finished if finished else 0.0
    hard = getattr(context, "budget", None)
    spent = max(float(hard.spent_usd), session) if hard is not None else session  # the cap's: earlier sessions too
    return spent + per_item * (running + 1) > budget
