"""Run one episode into a run directory (``scene-sim run``, ``scene-sim demo``)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from scene_sim._version import __version__
from scene_sim.context import RunContext
from scene_sim.errors import SceneSimError
from scene_sim.rundir import RunDir, ensure_writable_dir, package_versions
from scene_sim.studies.scene.model import EpisodeResult, SceneModel

__all__ = ["RunOutcome", "ensure_writable_dir", "episode_failure", "run_episode"]


def episode_failure(outcome: RunOutcome) -> str | None:
    """One line saying why a finished run failed (the episode or its judge), or None when it did not."""
    res = outcome.result
    if res.end_reason == "error":
        end = res.events[-1] if res.events else {}
        return f"episode {res.episode_id} ended with an error: {end.get('error') or 'see its event log'}"
    if res.end_reason == "budget":
        return f"episode {res.episode_id} was cut short by the budget"
    try:
        labels = outcome.run_dir.read_labels(res.episode_id) if outcome.analysis is not None else None
    except (SceneSimError, OSError):
        labels = None
    judge = labels.get("judge") if isinstance(labels, dict) else None
    if isinstance(judge, dict) and judge.get("judge_failure"):
        return f"the judge failed on episode {res.episode_id}: {judge.get('error') or 'see its labels file'}"
    return None


@dataclass(frozen=True)
class RunOutcome:
    """What :func:`run_episode` produced."""

    run_dir: RunDir
    result: EpisodeResult
    analysis: Any = None


async def run_episode(
    out: str | Path,
    *,
    scenario: str,
    subject: str,
    personas: str = "scripted",
    orchestrator: str = "scripted",
    judge: str | None = "scripted",
    seed: int = 0,
    rep: int = 0,
    max_turns: int = 8,
    min_post_sanction_turns: int | None = None,
    scenarios: str | None = None,
    cache_mode: str = "read-write",
    analyze: bool = True,
    command: str = "run",
    agent_classes: dict[str, Any] | None = None,
    on_event: Any = None,
    persona_calls: str = "each",
    temperature: float | None = None,
    classifier: bool = False,
) -> RunOutcome:
    """Simulate one episode, write it to ``out`` and (optionally) judge and analyse it.

    Args:
        out: the run directory.
        scenario: scenario id or path.
        subject: subject model string.
        personas: persona model string.
        orchestrator: orchestrator model string.
        judge: judge model string (None: do not judge).
        seed: episode seed.
        rep: repetition index.
        max_turns: orchestrator ticks.
        min_post_sanction_turns: the orchestrator's post-sanction stop (None: off).
        scenarios: scenario source to look ``scenario`` up in.
        cache_mode: response cache mode.
        analyze: run the judge and the statistics after the episode.
        command: recorded in ``run.json``.
        agent_classes: per-role agent classes (see :class:`SceneModel`).
        on_event: callback for each event as it happens (live display).
        persona_calls: ``each`` or ``joint`` (see :class:`SceneModel`).
        temperature: sampling temperature of model-driven agents (None: provider default / greedy).
        classifier: LLM judges: label with the per-category classifier of SCENE section 5.1.
    """
    started = time.perf_counter()
    context = RunContext(cache_mode=cache_mode)
    run_dir = RunDir(out)
    try:
        model = SceneModel(
            scenario=scenario,
            subject=subject,
            personas=personas,
            orchestrator=orchestrator,
            judge=judge,
            max_turns=max_turns,
            seed=seed,
            rep=rep,
            min_post_sanction_turns=min_post_sanction_turns,
            scenarios=scenarios,
            context=context,
            agent_classes=agent_classes,
            on_event=on_event,
            persona_calls=persona_calls,
            temperature=temperature,
        )
        ensure_writable_dir(run_dir.path)  # before any model call: a bad --out must cost nothing
        spec = {
            "scenario": model.scene.id,
            "scenarios": scenarios,
            "models": model.models,
            "seed": seed,
            "rep": rep,
            "max_turns": max_turns,
            "min_post_sanction_turns": min_post_sanction_turns,
            "cache": cache_mode,
            "persona_calls": persona_calls,
            "temperature": temperature,
            "classifier": classifier,
        }
        result = await model.arun()
        run_dir.write_episode(result.episode_id, result.events)
        analysis = None
        if analyze and judge is not None:
            from scene_sim.studies.scene.analysis import analyze_run

            analysis = await analyze_run(run_dir, judge=judge, context=context, classifier=classifier)
        run_dir.write_run(
            {
                "scene_sim": __version__,
                "command": command,
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
                "spec": spec,
                "versions": package_versions(),
                "episodes": [result.episode_id],
                "accounting": context.accounting(),
                "wall_time_s": round(time.perf_counter() - started, 3),
            }
        )
        return RunOutcome(run_dir, result, analysis)
    finally:
        await context.aclose()
