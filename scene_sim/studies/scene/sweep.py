"""``scene-sim sweep``: many episodes, concurrently, crash-safe and on budget.

Every planned episode has a deterministic id and seed derived from the spec,
so a run can be resumed after a crash: ``--resume`` re-plans, skips every
episode whose files are complete, judges episodes that were simulated but
not labelled, and runs the rest, re-simulating the episodes a budget cut
short (``episode_end.reason == "budget"``). Files are written atomically, so a kill -9
at any moment leaves whole files or none. Episodes run in one event loop,
bounded by ``run.concurrency`` and, underneath, by each backend's limits;
each episode is judged as soon as it ends, so judging overlaps with
simulation.

The budget (``[budget] usd``) is a hard cap over the whole run, earlier
sessions included: no model call starts once spend plus the projected cost
of the calls in flight would pass it (:class:`scene_sim.budget.Budget`).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console

from scene_sim._json import dumps_lines, loads
from scene_sim._version import __version__
from scene_sim.context import RunContext
from scene_sim.errors import SceneSimError
from scene_sim.events import iter_event_dicts
from scene_sim.executors import EXECUTORS
from scene_sim.jobs import JobsSummary, run_jobs
from scene_sim.rundir import RunDir, aatomic_write_bytes, labels_json, package_versions
from scene_sim.studies.scene._catalog import scenario_source
from scene_sim.studies.scene.analysis import index_labels
from scene_sim.studies.scene.model import SceneModel, episode_id_for
from scene_sim.studies.scene.scenario import Scenario, ScenarioBank
from scene_sim.studies.scene.spec import SweepSpec

__all__ = [
    "EpisodeOutcome",
    "EpisodeTask",
    "PlannedEpisode",
    "SweepSummary",
    "make_worker",
    "plan_episodes",
    "run_sweep",
]

Labeler = Callable[[list[dict[str, Any]], str, RunContext], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class PlannedEpisode:
    """One episode of the plan."""

    episode_id: str
    scenario_id: str
    subject: str
    rep: int
    seed: int


@dataclass(frozen=True)
class EpisodeTask:
    """One item of a sweep's batch: an episode to simulate (and judge), or only to judge."""

    episode: PlannedEpisode
    simulate: bool
    #: the event log of an episode to judge only, when it goes to a worker without the run directory
    events: tuple[dict[str, Any], ...] | None = None


@dataclass(frozen=True)
class EpisodeOutcome:
    """What a worker's part of one item gives the driver to store."""

    episode_id: str
    events: list[dict[str, Any]] | None
    #: the episode's end reason when it was simulated now (None: judged only)
    end_reason: str | None
    labels: dict[str, Any] | None
    judge_error: str | None = None
    #: the event log and labels as their files' bytes (from a worker: bytes travel at copy speed,
    #: and the encoding is done on the workers, not on the one driver)
    log: bytes | None = None
    labels_text: str | None = None

    def encoded(self) -> EpisodeOutcome:
        """The same outcome with its files encoded, ready to write."""
        return EpisodeOutcome(
            self.episode_id,
            None,
            self.end_reason,
            None,
            self.judge_error,
            log=dumps_lines(self.events or []) if self.end_reason is not None else None,
            labels_text=labels_json(self.labels) if self.labels is not None else None,
        )


@dataclass
class SweepSummary:
    """What a sweep did."""

    planned: int
    already_done: int = 0
    simulated: int = 0
    judged: int = 0
    errors: int = 0
    judge_failures: int = 0
    budget_stopped: bool = False
    not_started: int = 0
    cut_by_budget: int = 0
    wall_time_s: float = 0.0
    end_reasons: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def ended_by_budget(path: Path) -> bool:
    """Whether the episode log at ``path`` ends with ``episode_end.reason == "budget"`` (reads its tail only)."""
    try:
        with path.open("rb") as fh:
            size = fh.seek(0, 2)
            fh.seek(max(size - 4096, 0))
            tail = fh.read().decode("utf-8", "replace").strip().splitlines()
    except OSError:
        return False
    if not tail:
        return False
    try:
        last = json.loads(tail[-1])
    except ValueError:
        return False
    return isinstance(last, dict) and last.get("kind") == "episode_end" and last.get("reason") == "budget"


def _previous_spend(previous: dict[str, Any]) -> float:
    """USD spent by the earlier sessions of a resumed run (from their accounting in run.json)."""
    total = 0.0
    for session in previous.get("sessions") or ():
        cost = ((session.get("accounting") or {}).get("total") or {}).get("cost_usd")
        if isinstance(cost, int | float):
            total += float(cost)
    return total


def sweep_models(spec: SweepSpec) -> list[str]:
    """Every model string the sweep may call (subjects, other roles, the scenario generator)."""
    models = [*spec.subjects, spec.personas, spec.orchestrator]
    if spec.judge:
        models.append(spec.judge)
    if spec.scenarios.source == "generate" and spec.scenarios.generator:
        models.append(spec.scenarios.generator)
    return models


def _episode_seed(base: int, scenario_id: str, rep: int) -> int:
    # The same seed for every subject on a scenario/rep: subjects meet the same draw.
    digest = hashlib.sha256(f"{base}:{scenario_id}:{rep}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % (2**31 - 1)


def plan_episodes(spec: SweepSpec, bank: ScenarioBank) -> list[PlannedEpisode]:
    """Every episode the spec asks for, in a deterministic order."""
    ids = list(spec.scenarios.ids) or list(bank.ids)
    for sid in ids:
        bank.get(sid)  # unknown ids fail here, with suggestions
    out = []
    for rep in range(spec.run.reps):
        for sid in ids:
            seed = _episode_seed(spec.run.seed, sid, rep)
            for subject in spec.subjects:
                out.append(PlannedEpisode(episode_id_for(sid, subject, rep, seed), sid, subject, rep, seed))
    return out


async def _default_labeler(
    events: list[dict[str, Any]], judge: str, context: RunContext, *, classifier: bool = False
) -> dict[str, Any]:
    from scene_sim.studies.scene.analysis import judge_episode

    return await judge_episode(events, judge=judge, context=context, classifier=classifier)


async def run_sweep(
    spec: SweepSpec,
    out: str | Path,
    *,
    resume: bool = False,
    quiet: bool = False,
    console: Console | None = None,
    labeler: Labeler | None = None,
    analyze: bool = True,
    spec_path: str | None = None,
    context: RunContext | None = None,
    cache_mode: str | None = None,
    allow_unpriced: bool = False,
    executor: str = "local",
    workers: int | None = None,
) -> SweepSummary:
    """Run (or resume) a sweep into ``out``.

    Args:
        spec: the validated spec.
        out: the run directory.
        resume: continue a run directory whose spec matches.
        quiet: log lines instead of a progress bar.
        console: where to print.
        labeler: judge function (default: :func:`scene_sim.studies.scene.analysis.judge_episode`).
        analyze: write episodes.csv, metrics.json and the report at the end.
        spec_path: recorded in run.json.
        context: backends to use (default: a new context from the spec's cache mode and limits;
            pass one to serve model strings with your own backends via ``RunContext.add``).
        cache_mode: overrides the spec's ``run.cache`` (the ``--cache`` flag).
        allow_unpriced: run under a budget although some models have no price.
        executor: ``local`` (one event loop here) or ``ray`` (episodes sharded over Ray workers,
            ``run.concurrency`` in flight on each; see :mod:`scene_sim.executors`).
        workers: Ray workers (default: the cluster's CPUs).

    Raises:
        SceneSimError: existing run without ``--resume``, a changed spec on resume, a
            budget over unpriced models without ``allow_unpriced``, or ``ray`` with a
            ``labeler`` or ``context`` of your own (they cannot travel to the workers).

    """
    if executor not in EXECUTORS:
        raise SceneSimError(f"--executor must be one of {', '.join(EXECUTORS)}, got '{executor}'")
    if executor == "ray" and (labeler is not None or context is not None):
        raise SceneSimError(
            "--executor ray builds each worker's backends itself: a labeler or context of your own "
            "runs only with --executor local"
        )
    console = console or Console(stderr=True)
    started = time.perf_counter()
    run_dir = RunDir(out)
    fingerprint = spec.fingerprint()
    previous = run_dir.read_run()
    if previous and not resume:
        raise SceneSimError(f"{run_dir.path} already holds a run; pass --resume to continue it or choose a new --out")
    if resume and previous and previous.get("fingerprint") != fingerprint:
        raise SceneSimError(
            f"{run_dir.path}: the spec changed since this run started (fingerprint {previous.get('fingerprint')} "
            f"!= {fingerprint}); resume with the original spec or start a new run directory"
        )
    run_dir.clean_temporaries()

    own_context = context is None
    context = context or RunContext(cache_mode=cache_mode or spec.run.cache, limits=spec.limits)
    summary = SweepSummary(planned=0)
    if spec.budget.usd is not None and context.budget is None:
        context.set_budget(spec.budget.usd)
    if context.budget is not None:
        try:
            summary.warnings = context.check_priced(sweep_models(spec), allow_unpriced=allow_unpriced)
        except SceneSimError:
            if own_context:
                await context.aclose()
            raise
        for line in summary.warnings:
            console.print(f"[yellow]warning: {line}[/]", highlight=False)
        earlier = _previous_spend(previous) if resume else 0.0
        if earlier:
            context.budget.settle(0.0, earlier)  # the cap covers the whole run, not one session
    try:
        bank = await _scenarios(spec, run_dir, context, console, quiet=quiet)
        plan = plan_episodes(spec, bank)
        record: dict[str, Any] = {
            "scene_sim": __version__,
            "command": "sweep",
            "spec_path": spec_path,
            "spec": spec.model_dump(mode="json"),
            "fingerprint": fingerprint,
            "created": previous.get("created") or datetime.now(UTC).isoformat(timespec="seconds"),
            "versions": package_versions(),
            "planned": len(plan),
            "sessions": previous.get("sessions", []),
        }
        run_dir.write_run({**record, "status": "running"})

        have_episode = set(run_dir.episode_ids())
        have_labels = set(run_dir.labelled_ids())
        judge = spec.judge
        todo: list[EpisodeTask] = []
        summary.planned = len(plan)
        for ep in plan:
            simulated = ep.episode_id in have_episode
            if simulated and ended_by_budget(run_dir.episode_path(ep.episode_id)):
                simulated = False  # cut short by a budget: not done, play it again
            labelled = judge is None or ep.episode_id in have_labels
            if simulated and labelled:
                summary.already_done += 1
            else:
                todo.append(EpisodeTask(ep, simulate=not simulated))
        label_fn = labeler or functools.partial(_default_labeler, classifier=spec.classifier)
        compute = _episode_work(spec, bank, context, label_fn, run_dir)

        async def store(task: EpisodeTask, outcome: EpisodeOutcome) -> None:
            # the driver's part, whichever the executor: only this process writes the run directory
            eid = task.episode.episode_id
            if outcome.end_reason is not None:
                if outcome.log is not None:
                    await aatomic_write_bytes(run_dir.episode_path(eid), outcome.log)
                else:
                    await run_dir.awrite_episode(eid, outcome.events or [])
                summary.simulated += 1
                summary.end_reasons[outcome.end_reason] = summary.end_reasons.get(outcome.end_reason, 0) + 1
                if outcome.end_reason == "error":
                    summary.errors += 1
                elif outcome.end_reason == "budget":
                    summary.cut_by_budget += 1
            if outcome.judge_error is not None:
                summary.judge_failures += 1
                console.print(f"[yellow]judge failed on {eid}: {outcome.judge_error}[/]")
            elif outcome.labels_text is not None:
                await aatomic_write_bytes(run_dir.label_path(eid), outcome.labels_text.encode("utf-8"))
                index_labels(run_dir, eid, loads(outcome.labels_text))
                summary.judged += 1
            elif outcome.labels is not None:
                await run_dir.awrite_labels(eid, outcome.labels)
                index_labels(run_dir, eid, outcome.labels)  # the first analysis then reads one index file
                summary.judged += 1

        async def one(task: EpisodeTask) -> None:
            await store(task, await compute(task))

        jobs_args: dict[str, Any] = {
            "concurrency": spec.run.concurrency,
            "context": context,
            "budget_usd": spec.budget.usd,
            "label": "episodes",
            "already_done": summary.already_done,
            "quiet": quiet,
            "console": console,
            "name": lambda task: task.episode.episode_id,
            "counts": lambda task: task.simulate,
        }
        if executor == "ray":
            jobs, accounting = await _run_on_ray(spec, bank, todo, store, context, run_dir, workers, jobs_args)
        else:
            jobs = await run_jobs(todo, one, **jobs_args)
            accounting = context.accounting()
        summary.budget_stopped = jobs.budget_stopped or summary.cut_by_budget > 0
        summary.not_started = jobs.not_started
        if jobs.failed:
            summary.errors += jobs.failed
            console.print(f"[red]{jobs.failed} episodes failed unexpectedly: {jobs.failures[0]}[/]")
        summary.wall_time_s = round(time.perf_counter() - started, 3)

        session = {
            "started": datetime.fromtimestamp(time.time() - summary.wall_time_s, UTC).isoformat(timespec="seconds"),
            "wall_time_s": summary.wall_time_s,
            "simulated": summary.simulated,
            "judged": summary.judged,
            "errors": summary.errors,
            "budget_stopped": summary.budget_stopped,
            "accounting": accounting,
        }
        record["sessions"] = [*record["sessions"], session]
        complete = (
            not summary.budget_stopped
            and summary.cut_by_budget == 0
            and summary.already_done + summary.simulated >= len(plan)
        )
        run_dir.write_run({**record, "status": "complete" if complete else "incomplete", "accounting": accounting})
        if analyze and run_dir.labelled_ids():
            from scene_sim.studies.scene.analysis import analyze_run

            await analyze_run(run_dir, judge=None, context=None, repair_window=spec.run.repair_window)
        return summary
    finally:
        if own_context:
            await context.aclose()


def _episode_work(
    spec: SweepSpec, bank: ScenarioBank, context: RunContext, label_fn: Labeler, run_dir: RunDir | None
) -> Callable[[EpisodeTask], Awaitable[EpisodeOutcome]]:
    """The worker's part of one item: simulate the episode (unless only judged) and judge it; writes nothing."""
    judge = spec.judge

    async def compute(task: EpisodeTask) -> EpisodeOutcome:
        ep = task.episode
        end_reason = None
        if task.simulate:
            model = SceneModel(
                scenario=bank.get(ep.scenario_id),
                subject=ep.subject,
                personas=spec.personas,
                orchestrator=spec.orchestrator,
                judge=judge,
                max_turns=spec.run.max_turns,
                seed=ep.seed,
                rep=ep.rep,
                min_post_sanction_turns=spec.run.min_post_sanction_turns,
                temperature=spec.run.temperature,
                context=context,
                episode_id=ep.episode_id,
                persona_calls=spec.run.persona_calls,
            )
            result = await model.arun()
            events, end_reason = result.events, result.end_reason
            model.dispose()  # freed now, not by a collector pass that stalls the loop
            del model
        elif task.events is not None:
            events = list(task.events)
        elif run_dir is not None:
            path = run_dir.episode_path(ep.episode_id)
            events = await asyncio.to_thread(lambda: list(iter_event_dicts(path)))
        else:
            raise SceneSimError(f"{ep.episode_id}: nothing to judge (no events and no run directory)")
        if judge is None:
            return EpisodeOutcome(ep.episode_id, events, end_reason, None)
        # an episode the budget cut short is labelled offline (no money left for a judge);
        # its audit marks it INVALID, so the statistics leave it out until it is re-run
        cut = bool(events) and events[-1].get("reason") == "budget"
        try:
            labels = await (_default_labeler(events, "scripted", context) if cut else label_fn(events, judge, context))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a judge fault leaves the episode unlabelled, the sweep goes on
            first = (str(exc).splitlines() or [type(exc).__name__])[0]
            return EpisodeOutcome(ep.episode_id, events, end_reason, None, judge_error=first)
        return EpisodeOutcome(ep.episode_id, events, end_reason, labels)

    return compute


def make_worker(
    context: RunContext, *, spec: dict[str, Any], scenarios: list[dict[str, Any]]
) -> Callable[[EpisodeTask], Awaitable[EpisodeOutcome]]:
    """A Ray worker's part of a sweep (the :class:`~scene_sim.executors.WorkerSpec` factory).

    Args:
        context: the worker's own backends (with the shared budget).
        spec: the sweep spec as JSON data.
        scenarios: the scenarios of the plan as JSON data (workers need no run directory).

    """
    bank = ScenarioBank(Scenario.model_validate(s) for s in scenarios)
    parsed = SweepSpec.model_validate(spec)
    compute = _episode_work(
        parsed, bank, context, functools.partial(_default_labeler, classifier=parsed.classifier), None
    )

    async def work(task: EpisodeTask) -> EpisodeOutcome:
        return (await compute(task)).encoded()

    return work


async def _run_on_ray(
    spec: SweepSpec,
    bank: ScenarioBank,
    todo: list[EpisodeTask],
    store: Callable[[EpisodeTask, EpisodeOutcome], Awaitable[None]],
    context: RunContext,
    run_dir: RunDir,
    workers: int | None,
    jobs_args: dict[str, Any],
) -> tuple[JobsSummary, dict[str, Any]]:
    """The batch on Ray workers; returns run_jobs' summary and the accounting of driver and workers."""
    from scene_sim.executors import WorkerSpec, run_on_ray

    # an episode to judge only travels with its log: the workers may not see this run directory
    items = [
        task
        if task.simulate
        else EpisodeTask(task.episode, False, tuple(iter_event_dicts(run_dir.episode_path(task.episode.episode_id))))
        for task in todo
    ]
    used = sorted({task.episode.scenario_id for task in items})
    worker = WorkerSpec(
        "scene_sim.studies.scene.sweep:make_worker",
        {"spec": spec.model_dump(mode="json"), "scenarios": [bank.get(sid).model_dump(mode="json") for sid in used]},
        cache_mode=context.cache_mode,
        limits=spec.limits,
    )
    return await run_on_ray(items, store, worker, workers=workers, **jobs_args)  # context, concurrency in it


async def _scenarios(
    spec: SweepSpec, run_dir: RunDir, context: RunContext, console: Console, *, quiet: bool
) -> ScenarioBank:
    src = spec.scenarios
    if src.source == "bank":
        return scenario_source(None)
    if src.source == "generate":
        from scene_sim.studies.scene.generate import generate_scenarios

        path = run_dir.path / "scenarios.jsonl"
        from scene_sim.studies.scene._catalog import taxonomy_at

        generated = await generate_scenarios(
            path,
            tuples=src.grid_tuples(taxonomy_at(None)) if src.grid is not None else (src.tuples or 1),
            reps=src.generator_reps,
            seed=src.seed,
            model=src.generator or "",
            cache_mode=spec.run.cache,
            context=context,
            progress=not quiet,
        )
        if generated.written + generated.skipped_existing == 0:
            reasons = ", ".join(f"{k} {v}" for k, v in generated.rejected_by_reason.items()) or "no output"
            raise SceneSimError(
                f"the generator {src.generator} produced no scenario ({generated.rejected} of {generated.planned} "
                f"rejected: {reasons}); nothing to run"
            )
        return scenario_source(path)
    path = Path(src.source)
    if not path.exists():
        raise SceneSimError(f"scenarios.source: '{src.source}' is not 'bank', 'generate' or an existing path")
    return scenario_source(path)
