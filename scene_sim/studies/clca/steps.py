"""Where a CLCA step's items run (this event loop, or Ray workers) and the one writer of their records.

Each step (adapt, roleplay, filter, intents) is split in two:

* ``make_worker(context, **config)`` in the step's module returns
  ``compute(item) -> Output``: it asks the models and writes nothing;
* :meth:`Runner.run` stores each :class:`Output` here, in the driver: records
  appended to their :class:`~scene_sim.records.RecordFile`, the episode log
  written atomically.

``local`` runs ``store(item, await compute(item))`` in one event loop; ``ray``
runs ``compute`` on Ray workers (:func:`scene_sim.executors.run_on_ray`, which
builds the same ``make_worker`` in each worker) and ``store`` here, so the run
directory is written by the same code whichever the executor and a killed
driver leaves whole lines or none.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scene_sim.context import RunContext
from scene_sim.errors import SceneSimError
from scene_sim.executors import EXECUTORS, WorkerSpec, merge_accounting, run_on_ray
from scene_sim.jobs import JobsSummary, run_jobs
from scene_sim.records import RecordFile
from scene_sim.rundir import aatomic_write_bytes

__all__ = ["Output", "Runner"]


@dataclass(frozen=True)
class Output:
    """What one item's work writes: plain data, so that it travels from a Ray worker to the driver.

    Attributes:
        records: ``(file name, record)`` pairs to append, in order (``"scenarios.jsonl"``, ...).
        episode: ``(episode id, event log bytes)`` to write under ``episodes/``.
        error: the item failed after its episode was played (written first, for the record);
            it is raised once the output is stored, so the item counts as failed and a re-run retries it.

    """

    records: tuple[tuple[str, dict[str, Any]], ...] = ()
    episode: tuple[str, bytes] | None = None
    error: str | None = None


@dataclass
class Runner:
    """Runs a step's items on an executor; the driver stores every output.

    Args:
        executor: ``local`` (one event loop here) or ``ray`` (Ray workers; see :mod:`scene_sim.executors`).
        workers: Ray workers (default: the cluster's CPUs).

    """

    executor: str = "local"
    workers: int | None = None
    #: each Ray batch's accounting (its workers and the driver)
    batches: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.executor not in EXECUTORS:
            raise SceneSimError(f"--executor must be one of {', '.join(EXECUTORS)}, got '{self.executor}'")
        if self.workers is not None and self.workers < 1:
            raise SceneSimError(f"--workers must be at least 1, got {self.workers}")

    async def run(
        self,
        out: Path,
        items: Sequence[Any],
        factory: str,
        config: dict[str, Any],
        *,
        context: RunContext | None,
        concurrency: int,
        **jobs_args: Any,
    ) -> JobsSummary:
        """Compute every item with ``factory``'s work function and store the outputs under ``out``.

        Args:
            out: the run folder.
            items: what to do (picklable for ``ray``).
            factory: ``"module:make_worker"``, called as ``make_worker(context, **config)``.
            config: the factory's plain keyword arguments.
            context: the backends (``ray`` needs one: its budget becomes the shared one).
            concurrency: items in flight (per worker with ``ray``).
            jobs_args: the other keyword arguments of :func:`~scene_sim.jobs.run_jobs`.

        """
        store = _store(out)
        if self.executor == "ray":
            if context is None:
                raise SceneSimError("--executor ray needs the run's context (RunContext)")
            worker = WorkerSpec(factory, config, cache_mode=context.cache_mode, limits=context.limits)
            summary, accounting = await run_on_ray(
                items, store, worker, context=context, workers=self.workers, concurrency=concurrency, **jobs_args
            )
            self.batches.append(accounting)
            return summary
        compute = WorkerSpec(factory).load()(context, **config)

        async def work(item: Any) -> None:
            await store(item, await compute(item))

        return await run_jobs(items, work, concurrency=concurrency, context=context, **jobs_args)

    def accounting(self, context: RunContext | None) -> dict[str, Any]:
        """The run's accounting: the driver's context, or with ``ray`` every batch's workers too.

        With ``ray`` the steps' model calls all run on workers, so the batches' sums hold
        the driver's (empty) part once per batch.
        """
        if self.batches:
            return merge_accounting(self.batches)
        return context.accounting() if context is not None else {}


def _store(out: Path) -> Callable[[Any, Output], Awaitable[None]]:
    files: dict[str, RecordFile] = {}

    async def store(_item: Any, output: Output) -> None:
        if output.episode is not None:
            episode_id, log = output.episode
            await aatomic_write_bytes(out / "episodes" / f"{episode_id}.jsonl", log)
        for name, record in output.records:
            if name not in files:
                files[name] = RecordFile(out / name)
            files[name].append(record)
        if output.error is not None:
            raise SceneSimError(output.error)

    return store
