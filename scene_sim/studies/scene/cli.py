"""SCENE's commands, at the top level of ``scene-sim``.

``taxonomy``, ``sample``, ``scenarios``, ``schema``, ``run``, ``demo``,
``sweep``, ``generate``, ``view``, ``play`` and ``analyze``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console

from scene_sim.errors import SceneSimError
from scene_sim.plugins import CommandGroup, add_cache_argument
from scene_sim.studies.scene._args import float_range, int_range

__all__ = ["register"]


def register(group: CommandGroup) -> None:
    """Add SCENE's commands to ``group``."""
    p = group.add("taxonomy", _taxonomy, help="print the taxonomy's size (and the valid tuple count)")
    p.add_argument("--json", action="store_true", help="print the contract object as JSON")
    p.add_argument("--dir", help="taxonomy folder (default: the shipped one)")

    p = group.add("sample", _sample, help="coverage-greedy sample of valid tuples")
    p.add_argument("--tuples", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)

    p = group.add("scenarios", _scenarios, help="list the scenarios of a source")
    p.add_argument("--scenarios", help="scenario folder, .json or .jsonl (default: the shipped bank)")

    p = group.add("schema", _schema, help="write the JSON Schemas of scaffold_v1 and scenario_v1")
    p.add_argument("--out", help="folder to write <name>.schema.json into (default: print)")

    p = group.add("run", _run, help="simulate one episode, judge and analyse it")
    p.add_argument(
        "--scenario", required=True, help="scenario id (see 'scene-sim scenarios') or path to a scenario JSON"
    )
    p.add_argument(
        "--subject", required=True, help="subject model string, e.g. scripted/learner, anthropic/<model>, local"
    )
    p.add_argument("--personas", default="scripted", help="model string for every persona (default: scripted)")
    p.add_argument("--orchestrator", default="scripted", help="orchestrator model string (default: scripted)")
    p.add_argument("--judge", default="scripted", help="judge model string, or 'none' (default: scripted)")
    p.add_argument("--seed", type=int_range(0), default=0)
    p.add_argument("--rep", type=int_range(0), default=0, help="repetition index")
    p.add_argument("--max-turns", type=int_range(1, 200), default=8)
    p.add_argument(
        "--post-sanction",
        type=int_range(0),
        default=None,
        metavar="N",
        help="end once a sanction was enacted and the subject had N more opportunities",
    )
    p.add_argument("--scenarios", help="scenario source to look the id up in (default: the shipped bank)")
    p.add_argument(
        "--temperature", type=float_range(0, 2), default=None, help="sampling temperature of model-driven agents (0-2)"
    )
    p.add_argument(
        "--persona-calls",
        default="each",
        choices=("each", "joint"),
        help="one model call per persona prompt (each, as in SCENE) or one per group of personas (joint)",
    )
    p.add_argument("--out", required=True, help="run directory to write")
    p.add_argument("--quiet", action="store_true", help="do not print the transcript")
    p.add_argument(
        "--classifier",
        action="store_true",
        help="LLM judges: label with the per-category classifier of SCENE section 5.1 (one call per category)",
    )
    add_cache_argument(p)

    p = group.add("demo", _demo, help="one offline SCENE episode that tests the embedded model as the subject")
    p.add_argument("--out", default=None, help="run directory (default: a temporary folder)")
    p.add_argument("--scenario", default=None, help="scenario id (default: a stand-up that expects reasons)")
    p.add_argument("--subject", default=None, help="the model under test (default: local, the embedded model)")
    p.add_argument("--personas", default=None, help="persona model string (default: scripted, the authored lines)")
    p.add_argument("--orchestrator", default=None, help="orchestrator model string (default: scripted)")
    p.add_argument("--judge", default=None, help="judge: scripted (oracle), scripted/heuristic or a model string")
    p.add_argument(
        "--model",
        default=None,
        help="shorthand: this model in every model-driven role (subject, personas, orchestrator, judge); "
        "the per-role options override it",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-turns", type=int, default=2, help="orchestrator ticks (default 2)")
    p.add_argument("--temperature", type=float, default=0.8, help="sampling temperature (default 0.8)")
    add_cache_argument(p)

    p = group.add("sweep", _sweep, help="run an experiment spec (TOML): many episodes, resumable, on budget")
    p.add_argument("spec", help="experiment spec, e.g. experiments/offline_smoke.toml")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run with the same spec")
    p.add_argument("--quiet", action="store_true", help="log lines instead of a progress bar")
    p.add_argument(
        "--allow-unpriced",
        action="store_true",
        help="run under the spec's budget although some models have no price (their calls are not limited)",
    )
    p.add_argument(
        "--executor",
        default="local",
        choices=("local", "ray"),
        help="local: one event loop (default); ray: episodes sharded over Ray workers "
        "(joins RAY_ADDRESS when set, else starts a local cluster)",
    )
    p.add_argument("--workers", type=int_range(1), default=None, help="Ray workers (default: the cluster's CPUs)")
    add_cache_argument(p, default=None)  # no --cache: the spec's run.cache decides

    p = group.add(
        "generate", _generate, help="generate scenarios with the two-stage generator into a .jsonl (resumable)"
    )
    p.add_argument("--tuples", type=int_range(1), required=True, help="how many tuples to sample (coverage-greedy)")
    p.add_argument("--reps", type=int_range(1), default=1, help="scenarios per tuple (default 1)")
    p.add_argument(
        "--seed", type=int_range(0), default=0, help="sampler and request seed, part of every id (default 0)"
    )
    p.add_argument("--model", required=True, help="generator model string, e.g. google/gemini-3-flash-preview")
    p.add_argument("--out", required=True, help="output .jsonl; scenarios already in it are skipped")
    p.add_argument(
        "--concurrency", type=int_range(1, 4096), default=16, help="scenarios generated at once (default 16)"
    )
    p.add_argument(
        "--max-attempts", type=int_range(1, 20), default=3, help="model calls per stage before giving up (default 3)"
    )
    add_cache_argument(p)

    from scene_sim.studies.scene.play import add_play_arguments
    from scene_sim.studies.scene.viewer import add_view_arguments

    p = group.add("view", _view, help="write a run's transcript viewer (one self-contained HTML file)")
    add_view_arguments(p)

    p = group.add("play", _play, help="play the subject of an episode yourself (a human baseline)")
    add_play_arguments(p)

    p = group.add(
        "analyze", _analyze, help="label unlabelled episodes and write episodes.csv, metrics.json and the report"
    )
    p.description = (
        "Label the episodes of RUN_DIR that have no labels yet, then write episodes.csv, metrics.json, "
        "report.md, report.html and the plots. Once labelled, no model is needed. To re-judge a labelled run with "
        "another judge, pass --judge MODEL (and/or --classifier): the run is labelled again into a NEW folder "
        "RUN_DIR/labels-<judge>/ (labels/ and the run's own analysis are left untouched), and that labelling's "
        "episodes.csv, metrics.json, report and plots go to RUN_DIR/labels-<judge>/analysis/. Running the same "
        "command again resumes it."
    )
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument(
        "--judge",
        default=None,
        help="judge model string: labels unlabelled episodes of a new run (default: the run's judge); on a "
        "labelled run judged by another model, re-labels it into RUN_DIR/labels-<judge>/",
    )
    p.add_argument(
        "--classifier",
        action="store_true",
        help="LLM judges: the per-category classifier of SCENE section 5.1; on a run labelled without it, "
        "re-labels into RUN_DIR/labels-<judge>-classifier/",
    )
    p.add_argument("--repair-window", type=int_range(0, 200), default=3, help="ticks after a sanction (default 3)")
    add_cache_argument(p)


def _taxonomy(args: argparse.Namespace) -> int:
    from scene_sim.studies.scene.taxonomy import load_taxonomy

    tax = load_taxonomy(args.dir)
    counts = tax.counts()
    if args.json:
        print(json.dumps(counts, separators=(",", ":")))
    else:
        from scene_sim.studies.scene.display import print_summary

        print_summary(list(counts.items()), title="SCENE taxonomy")
    return 0


def _sample(args: argparse.Namespace) -> int:
    from scene_sim.studies.scene.taxonomy import load_taxonomy, sample_tuples

    for t in sample_tuples(load_taxonomy(), args.tuples, args.seed):
        print(json.dumps(t.as_dict()))
    return 0


def _scenarios(args: argparse.Namespace) -> int:
    from scene_sim.studies.scene._catalog import scenario_source

    for s in scenario_source(args.scenarios):
        print(s.id)
    return 0


def _schema(args: argparse.Namespace) -> int:
    from scene_sim.studies.scene.scenario import json_schemas

    schemas = json_schemas()
    if not args.out:
        print(json.dumps(schemas, indent=2))
        return 0
    from scene_sim.rundir import atomic_write_text

    for name, doc in schemas.items():
        atomic_write_text(Path(args.out) / f"{name}.schema.json", json.dumps(doc, indent=2) + "\n")
    return 0


def _run(args: argparse.Namespace) -> int:
    from scene_sim.studies.scene.display import print_summary, print_transcript
    from scene_sim.studies.scene.runner import episode_failure, run_episode

    judge = None if str(args.judge).lower() == "none" else args.judge
    outcome = asyncio.run(
        run_episode(
            args.out,
            scenario=args.scenario,
            subject=args.subject,
            personas=args.personas,
            orchestrator=args.orchestrator,
            judge=judge,
            seed=args.seed,
            rep=args.rep,
            max_turns=args.max_turns,
            min_post_sanction_turns=args.post_sanction,
            scenarios=args.scenarios,
            cache_mode=args.cache,
            persona_calls=args.persona_calls,
            temperature=args.temperature,
            classifier=_classifier_judge(args.classifier, judge),
        )
    )
    console = Console()
    if not args.quiet:
        print_transcript(
            outcome.result.events, labels=outcome.run_dir.labels_by_turn(outcome.result.episode_id), console=console
        )
    print_summary(_episode_rows(outcome), title="episode", console=console)
    console.print(f"run directory: {outcome.run_dir.path}")
    failure = episode_failure(outcome)
    if failure is not None:  # shown with --quiet too: a failed run must never look like a result
        print(f"scene-sim: error: {failure}", file=sys.stderr)
        return 1
    return 0


def _episode_rows(outcome: Any) -> list[tuple[str, Any]]:
    res = outcome.result
    rows: list[tuple[str, Any]] = [("episode", res.episode_id), ("end reason", res.end_reason), ("ticks", res.ticks)]
    row = getattr(outcome.analysis, "rows", {}).get(res.episode_id) if outcome.analysis is not None else None
    if row:
        for key in ("demonstrations", "breaches", "sanctions", "repairs", "repaired", "x_e", "y_e", "validity"):
            rows.append((key, row.get(key)))
    return rows


def _demo(args: argparse.Namespace) -> int:
    import tempfile

    from scene_sim.studies.scene.demo import DemoRoles, run_demo

    base = DemoRoles(
        **({} if args.model is None else dict.fromkeys(("subject", "personas", "orchestrator", "judge"), args.model))
    )
    roles = DemoRoles(
        subject=args.subject or base.subject,
        personas=args.personas or base.personas,
        orchestrator=args.orchestrator or base.orchestrator,
        judge=args.judge or base.judge,
    )
    out = args.out or tempfile.mkdtemp(prefix="scene-sim-demo-")
    return run_demo(
        out,
        roles=roles,
        scenario=args.scenario,
        seed=args.seed,
        max_turns=args.max_turns,
        cache_mode=args.cache,
        temperature=args.temperature,
    )


def _sweep(args: argparse.Namespace) -> int:
    from scene_sim.rundir import ensure_writable_dir
    from scene_sim.studies.scene.spec import load_spec
    from scene_sim.studies.scene.sweep import run_sweep

    spec = load_spec(args.spec)
    ensure_writable_dir(args.out)
    if args.workers is not None and args.executor != "ray":
        raise SceneSimError("--workers needs --executor ray")
    console = Console(stderr=True)
    summary = asyncio.run(
        run_sweep(
            spec,
            args.out,
            resume=args.resume,
            quiet=args.quiet,
            console=console,
            spec_path=args.spec,
            cache_mode=args.cache,
            allow_unpriced=args.allow_unpriced,
            executor=args.executor,
            workers=args.workers,
        )
    )
    console.print(
        f"sweep '{spec.name}': {summary.already_done + summary.simulated}/{summary.planned} episodes done "
        f"({summary.simulated} simulated now, {summary.judged} judged, {summary.errors} errors) "
        f"in {summary.wall_time_s:.1f} s; run directory: {args.out}",
        highlight=False,
    )
    if summary.budget_stopped:
        console.print(
            f"stopped by the budget: {summary.cut_by_budget} episodes cut short, {summary.not_started} not started; "
            "raise [budget] usd and --resume to complete them",
            highlight=False,
        )
    if summary.planned == 0:
        print("scene-sim: error: the sweep planned no episodes (no scenario to run)", file=sys.stderr)
        return 1
    if summary.simulated == 0 and summary.already_done == 0 and summary.errors:
        print(f"scene-sim: error: every episode failed ({summary.errors} errors)", file=sys.stderr)
        return 1
    return 0


def _generate(args: argparse.Namespace) -> int:
    from scene_sim.studies.scene.generate import generate_scenarios

    summary = asyncio.run(
        generate_scenarios(
            args.out,
            tuples=args.tuples,
            reps=args.reps,
            seed=args.seed,
            model=args.model,
            cache_mode=args.cache,
            max_attempts=args.max_attempts,
            concurrency=args.concurrency,
        )
    )
    # non-zero only when nothing at all could be generated
    if summary.written + summary.skipped_existing > 0:
        return 0
    reasons = ", ".join(f"{k} {v}" for k, v in summary.rejected_by_reason.items()) or "no output"
    print(f"scene-sim: error: no scenario generated ({summary.rejected} rejected: {reasons})", file=sys.stderr)
    return 1


def _view(args: argparse.Namespace) -> int:
    from scene_sim.studies.scene.viewer import run_view

    return run_view(args)


def _play(args: argparse.Namespace) -> int:
    from scene_sim.studies.scene.play import run_play

    return run_play(args)


def _classifier_judge(classifier: bool, judge: str | None) -> bool:
    """``--classifier`` checked against the judge: it needs an LLM judge."""
    if classifier and (judge is None or str(judge).startswith("scripted")):
        raise SceneSimError(f"--classifier needs an LLM judge (--judge MODEL), not '{judge or 'none'}'")
    return classifier


def _analyze(args: argparse.Namespace) -> int:
    from scene_sim.context import RunContext
    from scene_sim.rundir import RunDir
    from scene_sim.studies.scene.analysis import analyze_run, labelling_for

    run_dir = RunDir(args.run_dir)
    if run_dir.path.exists() and not run_dir.path.is_dir():
        raise SceneSimError(f"{run_dir.path}: not a folder (analyze takes a run directory)")
    if not run_dir.path.is_dir():
        raise SceneSimError(f"{run_dir.path}: no such run directory")
    if not run_dir.episode_ids():  # checked before anything is written: an empty folder stays empty
        raise SceneSimError(
            f"{run_dir.path}: no episodes (no {run_dir.episodes_dir.name}/*.jsonl); not a run directory"
        )
    target, out_dir = labelling_for(run_dir, args.judge, args.classifier)
    if args.classifier:
        judge = args.judge or _first_judge(run_dir)
        _classifier_judge(True, judge)

    async def go() -> Any:
        context = RunContext(cache_mode=args.cache)
        try:
            return await analyze_run(
                target,
                judge=args.judge,
                context=context,
                repair_window=args.repair_window,
                classifier=args.classifier,
                out_dir=out_dir,
            )
        finally:
            await context.aclose()

    result = asyncio.run(go())
    where = f" (labels in {target.labels_dir})" if target.labels_dir.name != "labels" else ""
    print(f"analysed {len(result.rows)} episodes{where}: {out_dir / 'metrics.json'}, {out_dir / 'report.md'}")
    return 0


def _first_judge(run_dir: Any) -> str | None:
    """The judge model of the run's first episode (``episode_start.models.judge``), for ``--classifier`` alone."""
    from scene_sim.events import iter_event_dicts

    for eid in run_dir.episode_ids()[:1]:
        for event in iter_event_dicts(run_dir.episode_path(eid)):
            models = event.get("models") if event.get("kind") == "episode_start" else None
            return str(models.get("judge")) if isinstance(models, dict) and models.get("judge") else None
    return None
