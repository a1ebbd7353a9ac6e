"""The ``scene-sim`` command line.

User mistakes (bad files, unknown ids, missing keys) print one line and exit
with status 2; nothing prints a traceback unless ``SCENE_SIM_DEBUG=1``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from scene_sim.errors import SceneSimError

__all__ = ["main"]

_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, as every other user error
        raise SceneSimError(f"{self.prog}: {message}")


def _command(name: str) -> Callable[[Callable[[argparse.Namespace], int]], Callable[[argparse.Namespace], int]]:
    def wrap(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        _COMMANDS[name] = fn
        return fn

    return wrap


def _add_cache(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--cache",
        default="read-write",
        choices=("read-write", "read-only", "off"),
        help="response cache mode (default read-write; in $SCENE_SIM_CACHE_DIR)",
    )


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="scene-sim", description="Simulate group chats with hidden norms and measure whether a model adapts."
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)

    p = sub.add_parser("taxonomy", help="print the taxonomy's size (and the valid tuple count)")
    p.add_argument("--json", action="store_true", help="print the contract object as JSON")
    p.add_argument("--dir", help="taxonomy folder (default: the shipped one)")

    p = sub.add_parser("sample", help="coverage-greedy sample of valid tuples")
    p.add_argument("--tuples", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("scenarios", help="list the scenarios of a source")
    p.add_argument("--scenarios", help="scenario folder, .json or .jsonl (default: the shipped bank)")

    p = sub.add_parser("schema", help="write the JSON Schemas of scaffold_v1 and scenario_v1")
    p.add_argument("--out", help="folder to write <name>.schema.json into (default: print)")

    p = sub.add_parser("run", help="simulate one episode, judge and analyse it")
    p.add_argument(
        "--scenario", required=True, help="scenario id (see 'scene-sim scenarios') or path to a scenario JSON"
    )
    p.add_argument(
        "--subject", required=True, help="subject model string, e.g. scripted/learner, anthropic/<model>, local"
    )
    p.add_argument("--personas", default="scripted", help="model string for every persona (default: scripted)")
    p.add_argument("--orchestrator", default="scripted", help="orchestrator model string (default: scripted)")
    p.add_argument("--judge", default="scripted", help="judge model string, or 'none' (default: scripted)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rep", type=int, default=0, help="repetition index")
    p.add_argument("--max-turns", type=int, default=8)
    p.add_argument(
        "--post-sanction",
        type=int,
        default=None,
        metavar="N",
        help="end once a sanction was enacted and the subject had N more opportunities",
    )
    p.add_argument("--scenarios", help="scenario source to look the id up in (default: the shipped bank)")
    p.add_argument("--temperature", type=float, default=None, help="sampling temperature of model-driven agents")
    p.add_argument(
        "--persona-calls",
        default="each",
        choices=("each", "joint"),
        help="one model call per persona prompt (each, as in SCENE) or one per group of personas (joint)",
    )
    p.add_argument("--out", required=True, help="run directory to write")
    p.add_argument("--quiet", action="store_true", help="do not print the transcript")
    _add_cache(p)

    p = sub.add_parser("demo", help="one full offline episode with the embedded model in every role")
    p.add_argument("--out", default=None, help="run directory (default: a temporary folder)")
    p.add_argument("--scenario", default=None, help="scenario id (default: a bank scenario)")
    p.add_argument("--model", default="local", help="model string for every role (default: local)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-turns", type=int, default=4)
    p.add_argument("--temperature", type=float, default=0.8, help="sampling temperature (default 0.8)")
    _add_cache(p)

    p = sub.add_parser("sweep", help="run an experiment spec (TOML): many episodes, resumable, on budget")
    p.add_argument("spec", help="experiment spec, e.g. experiments/offline_smoke.toml")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run with the same spec")
    p.add_argument("--quiet", action="store_true", help="log lines instead of a progress bar")

    p = sub.add_parser("generate", help="generate scenarios with the two-stage generator into a .jsonl (resumable)")
    p.add_argument("--tuples", type=int, required=True, help="how many tuples to sample (coverage-greedy)")
    p.add_argument("--reps", type=int, default=1, help="scenarios per tuple (default 1)")
    p.add_argument("--seed", type=int, default=0, help="sampler and request seed, part of every id (default 0)")
    p.add_argument("--model", required=True, help="generator model string, e.g. google/gemini-3-flash-preview")
    p.add_argument("--out", required=True, help="output .jsonl; scenarios already in it are skipped")
    p.add_argument("--concurrency", type=int, default=16, help="scenarios generated at once (default 16)")
    p.add_argument("--max-attempts", type=int, default=3, help="model calls per stage before giving up (default 3)")
    _add_cache(p)

    from scene_sim.play import add_play_arguments
    from scene_sim.viewer import add_view_arguments

    p = sub.add_parser("view", help="write a run's transcript viewer (one self-contained HTML file)")
    add_view_arguments(p)

    p = sub.add_parser("play", help="play the subject of an episode yourself (a human baseline)")
    add_play_arguments(p)

    p = sub.add_parser("analyze", help="label unlabelled episodes and write episodes.csv, metrics.json and the report")
    p.add_argument("run_dir")
    p.add_argument(
        "--judge", default=None, help="judge model string for unlabelled episodes (default: the run's judge)"
    )
    p.add_argument("--repair-window", type=int, default=3)
    _add_cache(p)
    return parser


@_command("taxonomy")
def _taxonomy(args: argparse.Namespace) -> int:
    from scene_sim.taxonomy import load_taxonomy

    tax = load_taxonomy(args.dir)
    counts = tax.counts()
    if args.json:
        print(json.dumps(counts, separators=(",", ":")))
    else:
        from scene_sim.display import print_summary

        print_summary(list(counts.items()), title="SCENE taxonomy")
    return 0


@_command("sample")
def _sample(args: argparse.Namespace) -> int:
    from scene_sim.taxonomy import load_taxonomy, sample_tuples

    for t in sample_tuples(load_taxonomy(), args.tuples, args.seed):
        print(json.dumps(t.as_dict()))
    return 0


@_command("scenarios")
def _scenarios(args: argparse.Namespace) -> int:
    from scene_sim._catalog import scenario_source

    for s in scenario_source(args.scenarios):
        print(s.id)
    return 0


@_command("schema")
def _schema(args: argparse.Namespace) -> int:
    from scene_sim.scenario import json_schemas

    schemas = json_schemas()
    if not args.out:
        print(json.dumps(schemas, indent=2))
        return 0
    from scene_sim.rundir import atomic_write_text

    for name, doc in schemas.items():
        atomic_write_text(Path(args.out) / f"{name}.schema.json", json.dumps(doc, indent=2) + "\n")
    return 0


@_command("run")
def _run(args: argparse.Namespace) -> int:
    from scene_sim.display import print_summary, print_transcript
    from scene_sim.runner import run_episode

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
        )
    )
    console = Console()
    if not args.quiet:
        print_transcript(
            outcome.result.events, labels=outcome.run_dir.labels_by_turn(outcome.result.episode_id), console=console
        )
    print_summary(_episode_rows(outcome), title="episode", console=console)
    console.print(f"run directory: {outcome.run_dir.path}")
    return 0


def _episode_rows(outcome: Any) -> list[tuple[str, Any]]:
    res = outcome.result
    rows: list[tuple[str, Any]] = [("episode", res.episode_id), ("end reason", res.end_reason), ("ticks", res.ticks)]
    row = getattr(outcome.analysis, "rows", {}).get(res.episode_id) if outcome.analysis is not None else None
    if row:
        for key in ("demonstrations", "breaches", "sanctions", "repairs", "repaired", "x_e", "y_e", "validity"):
            rows.append((key, row.get(key)))
    return rows


@_command("demo")
def _demo(args: argparse.Namespace) -> int:
    import tempfile

    from scene_sim.demo import run_demo

    out = args.out or tempfile.mkdtemp(prefix="scene-sim-demo-")
    return run_demo(
        out,
        model=args.model,
        scenario=args.scenario,
        seed=args.seed,
        max_turns=args.max_turns,
        cache_mode=args.cache,
        temperature=args.temperature,
    )


@_command("sweep")
def _sweep(args: argparse.Namespace) -> int:
    from scene_sim.spec import load_spec
    from scene_sim.sweep import run_sweep

    spec = load_spec(args.spec)
    console = Console(stderr=True)
    summary = asyncio.run(
        run_sweep(spec, args.out, resume=args.resume, quiet=args.quiet, console=console, spec_path=args.spec)
    )
    console.print(
        f"sweep '{spec.name}': {summary.already_done + summary.simulated}/{summary.planned} episodes done "
        f"({summary.simulated} simulated now, {summary.judged} judged, {summary.errors} errors) "
        f"in {summary.wall_time_s:.1f} s; run directory: {args.out}",
        highlight=False,
    )
    if summary.budget_stopped:
        console.print(f"stopped by the budget: {summary.not_started} episodes not started; --resume after raising it")
    return 0


@_command("generate")
def _generate(args: argparse.Namespace) -> int:
    from scene_sim.generate import generate_scenarios

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
    return 0 if summary.written + summary.skipped_existing > 0 else 1


@_command("view")
def _view(args: argparse.Namespace) -> int:
    from scene_sim.viewer import run_view

    return run_view(args)


@_command("play")
def _play(args: argparse.Namespace) -> int:
    from scene_sim.play import run_play

    return run_play(args)


@_command("analyze")
def _analyze(args: argparse.Namespace) -> int:
    from scene_sim.analysis import analyze_run
    from scene_sim.context import RunContext
    from scene_sim.rundir import RunDir

    run_dir = RunDir(args.run_dir)
    if not run_dir.path.is_dir():
        raise SceneSimError(f"{run_dir.path}: no such run directory")

    async def go() -> Any:
        context = RunContext(cache_mode=args.cache)
        try:
            return await analyze_run(run_dir, judge=args.judge, context=context, repair_window=args.repair_window)
        finally:
            await context.aclose()

    result = asyncio.run(go())
    Console().print(
        f"analysed {len(result.rows)} episodes: {run_dir.path / 'metrics.json'}, {run_dir.path / 'report.md'}"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``scene-sim`` console script."""
    debug = os.environ.get("SCENE_SIM_DEBUG") == "1"
    try:
        args = _parser().parse_args(argv)
        if args.version:
            from scene_sim import __version__

            print(__version__)
            return 0
        if not args.command:
            _parser().print_help()
            return 2
        return _COMMANDS[args.command](args)
    except SceneSimError as exc:
        if debug:
            raise
        print(f"scene-sim: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("scene-sim: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
