"""CLCA data commands: adapt, roleplay, filter, intents, export, pipeline.

Registered by :mod:`scene_sim.studies.clca.cli`.
The step modules (and through them the backends) are imported inside the
handlers, so ``scene-sim --help`` stays fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from scene_sim.errors import SceneSimError
from scene_sim.plugins import CommandGroup, add_cache_argument

__all__ = ["register"]


def _folder(value: str) -> Path:
    path = Path(value)
    if not path.is_dir():
        raise SceneSimError(f"{path}: no such run folder (run 'scene-sim clca adapt --out {path}' first)")
    return path


def _needs(path: Path, name: str, step: str) -> None:
    if not (path / name).exists():
        raise SceneSimError(f"{path}: no {name} yet (run 'scene-sim clca {step}' first)")


def _adapt(args: argparse.Namespace) -> int:
    from scene_sim.studies.clca.adapt import run_adapt
    from scene_sim.studies.clca.cultures import load_cultures, resolve_cultures
    from scene_sim.studies.clca.pipeline import report, run_step, save_cultures
    from scene_sim.studies.clca.tasks import load_tasks

    cultures = load_cultures(args.cultures_file)
    chosen = resolve_cultures(args.cultures, cultures)
    tasks = load_tasks(args.tasks, limit=args.limit)
    out = Path(args.out)
    summary = run_step(
        out,
        "adapt",
        [args.model],
        lambda ctx: run_adapt(
            out,
            tasks,
            chosen,
            args.model,
            seed=args.seed,
            context=ctx,
            concurrency=args.concurrency,
            quiet=args.quiet,
            budget_usd=args.budget,
        ),
        cache=args.cache,
        budget_usd=args.budget,
    )
    save_cultures(out, {c.name: c for c in chosen})
    report(summary, "adapt")  # type: ignore[arg-type]
    print(f"wrote {out}/scenarios.jsonl ({len(chosen)} cultures x {len(tasks)} tasks; rejections in rejected.jsonl)")
    return 1 if summary.failed else 0  # type: ignore[union-attr]


def _roleplay(args: argparse.Namespace) -> int:
    from scene_sim.studies.clca.pipeline import report, run_cultures, run_step
    from scene_sim.studies.clca.roleplay import RoleplaySettings, run_roleplay

    out = _folder(args.dir)
    _needs(out, "scenarios.jsonl", "adapt")
    settings = RoleplaySettings(
        reps=args.reps, max_turns=args.max_turns, min_turns=args.min_turns, temperature=args.temperature
    )
    cultures = run_cultures(out)
    summary = run_step(
        out,
        "roleplay",
        [args.model],
        lambda ctx: run_roleplay(
            out,
            args.model,
            cultures,
            settings=settings,
            seed=args.seed,
            context=ctx,
            concurrency=args.concurrency,
            quiet=args.quiet,
            budget_usd=args.budget,
        ),
        cache=args.cache,
        budget_usd=args.budget,
    )
    report(summary, "roleplay")  # type: ignore[arg-type]
    print(f"wrote {out}/dialogues.jsonl and the event logs in {out}/episodes/ (view them with 'scene-sim view')")
    return 1 if summary.failed else 0  # type: ignore[union-attr]


def _filter(args: argparse.Namespace) -> int:
    from scene_sim.studies.clca.judge import run_filter
    from scene_sim.studies.clca.pipeline import report, run_step
    from scene_sim.studies.clca.table9 import format_table9, table9

    out = _folder(args.dir)
    _needs(out, "dialogues.jsonl", "roleplay")
    high = tuple(c.strip() for c in args.high_confidence.split(",") if c.strip())
    summary = run_step(
        out,
        "filter",
        [args.judge],
        lambda ctx: run_filter(
            out,
            args.judge,
            seed=args.seed,
            context=ctx,
            high_confidence=high,
            concurrency=args.concurrency,
            quiet=args.quiet,
            budget_usd=args.budget,
        ),
        cache=args.cache,
        budget_usd=args.budget,
    )
    report(summary, "filter")  # type: ignore[arg-type]
    total = table9(out)["total"]
    print(format_table9(table9(out)))
    print(f"kept {total['kept']} of {total['judged']} dialogues; judge parse failures {total['judge_parse_failures']}")
    return 1 if summary.failed else 0  # type: ignore[union-attr]


def _intents(args: argparse.Namespace) -> int:
    from scene_sim.studies.clca.intents import run_intents
    from scene_sim.studies.clca.pipeline import report, run_cultures, run_step

    out = _folder(args.dir)
    _needs(out, "judgements.jsonl", "filter")
    cultures = run_cultures(out)
    summary = run_step(
        out,
        "intents",
        [args.model],
        lambda ctx: run_intents(
            out,
            args.model,
            cultures,
            seed=args.seed,
            context=ctx,
            concurrency=args.concurrency,
            quiet=args.quiet,
            budget_usd=args.budget,
        ),
        cache=args.cache,
        budget_usd=args.budget,
    )
    report(summary, "intents")  # type: ignore[arg-type]
    print(f"wrote {out}/intents.jsonl")
    return 1 if summary.failed else 0  # type: ignore[union-attr]


def _export(args: argparse.Namespace) -> int:
    import json

    from scene_sim.rundir import atomic_write_text
    from scene_sim.studies.clca.export import export_train
    from scene_sim.studies.clca.table9 import format_table9, table9

    out = _folder(args.dir)
    _needs(out, "judgements.jsonl", "filter")
    counts = export_train(out)
    t9 = table9(out)
    atomic_write_text(out / "table9.json", json.dumps(t9, indent=1, ensure_ascii=False) + "\n")
    print(format_table9(t9))
    print(
        f"wrote {out}/train.jsonl: {counts['conversation']} conversation + {counts['intent']} intent examples "
        f"from {counts['dialogues']} kept dialogues"
        + (
            f" ({counts['missing_intents']} turns without a parsed intent left out)"
            if counts["missing_intents"]
            else ""
        )
    )
    return 0


def _pipeline(args: argparse.Namespace) -> int:
    from scene_sim.studies.clca.pipeline import run_pipeline

    t9 = run_pipeline(
        args.spec, args.out, cache=args.cache, quiet=args.quiet, executor=args.executor, workers=args.workers,
        seed=args.seed,
    )  # fmt: skip
    print(f"wrote {args.out}/train.jsonl, table9.json, run.json")
    return 0 if t9["total"]["scenarios"] else 1


def _common(p: argparse.ArgumentParser, *, seed: bool = True) -> None:
    if seed:
        p.add_argument("--seed", type=int, default=0, help="run seed (default 0): per-item seeds derive from it")
        p.add_argument("--concurrency", type=int, default=16, help="items in flight (default 16)")
        p.add_argument("--budget", type=float, default=None, help="stop starting items past this many USD")
        p.add_argument("--quiet", action="store_true", help="log lines instead of a progress bar")
    add_cache_argument(p)


def register(group: CommandGroup) -> None:
    """Add these commands to ``group``."""
    a = group.add("adapt", _adapt, help="culture-adapt generic social tasks (seed 004 Table 19) into scenarios.jsonl")
    a.add_argument("--cultures", default="China,Germany,UK,Mexico,Japan", help="comma-separated culture names")
    a.add_argument("--tasks", default="builtin", help="builtin (the shipped bank), a task file, or Sotopia's JSON")
    a.add_argument("--cultures-file", default=None, help="a cultures.json of your own (default: the shipped one)")
    a.add_argument("--limit", type=int, default=None, help="adapt only the first N tasks")
    a.add_argument("--model", required=True, help="model string, or scripted (offline)")
    a.add_argument("--out", required=True, help="run folder")
    _common(a)

    r = group.add("roleplay", _roleplay, help="role-play each scenario by two agents (event logs in DIR/episodes/)")
    r.add_argument("dir", help="run folder (with scenarios.jsonl)")
    r.add_argument("--model", required=True, help="model string, local, or scripted (offline)")
    r.add_argument("--reps", type=int, default=2, help="dialogues per scenario (default 2, as the paper)")
    r.add_argument("--max-turns", type=int, default=20, help="turn limit (default 20, Sotopia's)")
    r.add_argument("--min-turns", type=int, default=2, help="turns before 'leave' is offered (default 2)")
    r.add_argument("--temperature", type=float, default=0.7, help="role-player temperature (default 0.7)")
    _common(r)

    f = group.add("filter", _filter, help="judge dialogues (Tables 24, 23) and keep or drop them (section 4.1)")
    f.add_argument("dir", help="run folder (with dialogues.jsonl)")
    f.add_argument("--judge", required=True, help="model string, or scripted (offline)")
    f.add_argument(
        "--high-confidence",
        default="very confident",
        help="confidences that count as high for the discard rule (default 'very confident'; "
        "e.g. 'very confident,confident')",
    )
    _common(f)

    i = group.add("intents", _intents, help="per-turn intents of kept dialogues (Table 22) into intents.jsonl")
    i.add_argument("dir", help="run folder (with judgements.jsonl)")
    i.add_argument("--model", required=True, help="model string, or scripted (offline)")
    _common(i)

    e = group.add("export", _export, help="multi-task training data DIR/train.jsonl (datasets / TRL conversational)")
    e.add_argument("dir", help="run folder")
    e.add_argument("--seed", type=int, default=0, help="accepted for uniformity; export is deterministic")
    add_cache_argument(e)

    p = group.add("pipeline", _pipeline, help="all data steps from a spec, resumable (see experiments/clca/)")
    p.add_argument("spec", help="SPEC.toml (e.g. experiments/clca/offline_smoke.toml)")
    p.add_argument("--out", required=True, help="run folder (re-running resumes)")
    p.add_argument("--resume", action="store_true", help="continue a run in --out (re-running does so anyway)")
    p.add_argument(
        "--executor",
        default="local",
        choices=("local", "ray"),
        help="local: one event loop (default); ray: each step's items on Ray workers "
        "(joins RAY_ADDRESS when set, else starts a local cluster)",
    )
    p.add_argument("--workers", type=int, default=None, help="Ray workers (default: the cluster's CPUs)")
    p.add_argument("--quiet", action="store_true", help="log lines instead of a progress bar")
    p.add_argument("--seed", type=int, default=None, help="override the spec's seed")
    add_cache_argument(p)
