"""``scene-sim normgenesis ...``: the NormGenesis commands.

Nothing heavy is imported here: the pipeline, numpy and the sentence encoder
load inside the handlers, so ``scene-sim --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from scene_sim.errors import SceneSimError
from scene_sim.plugins import CommandGroup, add_cache_argument

__all__ = ["register"]

_TYPES = "adherence,violation,v2r"


def _csv(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def _run_dir(text: str) -> Path:
    path = Path(text)
    if not (path / "dialogues.jsonl").exists() and not (path / "rejected.jsonl").exists():
        raise SceneSimError(f"{path}: not a normgenesis run directory (no dialogues.jsonl)")
    return path


def _apply_spec(args: argparse.Namespace) -> None:
    """Fill options from ``--spec``; flags that differ from their defaults win."""
    from scene_sim.studies.normgenesis.spec import load_spec

    defaults = args.spec_defaults
    for key, value in load_spec(args.spec).items():
        if getattr(args, key) == defaults.get(key):
            setattr(args, key, value)


def _generate(args: argparse.Namespace) -> int:
    import asyncio

    from scene_sim.studies.normgenesis.pipeline import GenerateConfig, generate

    if args.spec:
        _apply_spec(args)

    cats = None if args.categories.strip() == "all" else _csv(args.categories)
    cfg = GenerateConfig(
        out=Path(args.out), langs=_csv(args.langs), categories=cats, norms_per_category=args.norms_per_category,
        scenarios_per_norm=args.scenarios_per_norm, types=_csv(args.types), model=args.model, judge=args.judge,
        threshold=args.threshold, max_rounds=args.max_rounds, seed=args.seed, mode=args.mode, top_k=args.top_k,
        encoder=args.encoder, concurrency=args.concurrency, budget_usd=args.budget, cache=args.cache,
        quiet=args.quiet, executor=args.executor, workers=args.workers,
    )  # fmt: skip
    result = asyncio.run(generate(cfg))
    s = result.summary
    print(
        f"{result.planned} planned: {result.dialogues} dialogues, {result.rejected} rejected "
        f"({result.skipped} already done, {s.done} made now in {s.wall_time_s:.1f}s) -> {cfg.out}"
    )
    if s.budget_stopped:
        print(f"budget reached: {s.not_started} items not started; re-run the same command to resume")
    for line in s.failures[:5]:
        print(f"failed: {line}")
    return 0 if not s.failures else 1


def _analyze(args: argparse.Namespace) -> int:
    from scene_sim.records import RecordFile
    from scene_sim.rundir import atomic_write_text
    from scene_sim.studies.normgenesis.analyze import analyze_records
    from scene_sim.studies.normgenesis.report import write_report

    out = _run_dir(args.dir)
    records = RecordFile(out / "dialogues.jsonl").read()
    patterns = analyze_records(records)
    agreement = None
    if (out / "human_agreement.json").exists():
        agreement = json.loads((out / "human_agreement.json").read_text(encoding="utf-8"))
        patterns["human_agreement"] = agreement
    atomic_write_text(out / "patterns.json", json.dumps(patterns, ensure_ascii=False, indent=2) + "\n")
    rejected = len(RecordFile(out / "rejected.jsonl").read())
    report = write_report(out, patterns, rejected, agreement)
    print(f"{len(records)} dialogues -> {out / 'patterns.json'}, {report}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from scene_sim.records import RecordFile
    from scene_sim.studies.normgenesis.export import export_release

    out = _run_dir(args.dir)
    target = Path(args.out) if args.out else out / "release"
    counts = export_release(RecordFile(out / "dialogues.jsonl").read(), target)
    print(f"{sum(counts.values())} records in {len(counts)} files -> {target}")
    return 0


def _import_ratings(args: argparse.Namespace) -> int:
    from scene_sim.records import RecordFile
    from scene_sim.rundir import atomic_write_text
    from scene_sim.studies.normgenesis.ratings import agreement, read_ratings

    out = _run_dir(args.dir)
    human, criteria = read_ratings(args.csv)
    doc = agreement(RecordFile(out / "dialogues.jsonl").read(), human, criteria)
    atomic_write_text(out / "human_agreement.json", json.dumps(doc, ensure_ascii=False, indent=2) + "\n")
    for lang, a in doc["by_language"].items():
        r = "undefined" if a["r"] is None else f"{a['r']:.3f}"
        print(f"{lang}: r = {r} (n = {a['n']})")
    print(f"-> {out / 'human_agreement.json'} (re-run analyze to put it in the report)")
    return 0


def register(group: CommandGroup) -> None:
    """Add these commands to ``group``."""
    p = group.add(
        "generate", _generate, help="norm -> situation -> exemplars -> RQ refinement -> dialogues -> annotation"
    )
    p.add_argument("--langs", default="en,ko,zh", help="languages (default en,ko,zh)")
    p.add_argument("--categories", default="all", help="'all' or a comma list of categories")
    p.add_argument("--norms-per-category", type=int, default=1, help="norms per category and language (default 1)")
    p.add_argument("--scenarios-per-norm", type=int, default=1, help="scenarios per norm (default 1)")
    p.add_argument("--types", default=_TYPES, help=f"dialogue types (default {_TYPES})")
    p.add_argument("--model", default="scripted", help="the generator (default scripted: offline policies)")
    p.add_argument("--judge", default=None, help="the RQ and annotation judge (default: --model)")
    p.add_argument("--threshold", type=int, default=4, help="accept when every RQ criterion reaches this (default 4)")
    p.add_argument("--max-rounds", type=int, default=3, help="at most this many refinement rounds (default 3)")
    p.add_argument("--seed", type=int, default=0, help="run seed (default 0)")
    p.add_argument("--mode", default="generator", choices=("generator", "agents"), help="who writes the dialogue")
    p.add_argument("--top-k", type=int, default=2, help="exemplars retrieved per scenario (default 2)")
    p.add_argument("--encoder", default="use", choices=("use", "hash"), help="retrieval encoder (default use)")
    p.add_argument("--concurrency", type=int, default=8, help="items in flight (on each Ray worker; default 8)")
    p.add_argument(
        "--executor",
        default="local",
        choices=("local", "ray"),
        help="local: one event loop (default); ray: scenarios sharded over Ray workers "
        "(joins RAY_ADDRESS when set, else starts a local cluster)",
    )
    p.add_argument("--workers", type=int, default=None, help="Ray workers (default: the cluster's CPUs)")
    p.add_argument("--budget", type=float, default=None, help="stop starting items past this many USD")
    p.add_argument("--quiet", action="store_true", help="log lines instead of a progress bar")
    p.add_argument("--spec", default=None, help="a TOML spec whose [generate] table sets these options")
    p.add_argument("--out", required=True, help="the run directory (re-run to resume)")
    add_cache_argument(p)
    p.set_defaults(spec_defaults={a.dest: a.default for a in p._actions})

    p = group.add("analyze", _analyze, help="patterns.json (repair shares, sequences, RQ means) and report.md")
    p.add_argument("dir", help="a generate run directory")

    p = group.add("export", _export, help="export dialogues in the public release's record shape")
    p.add_argument("dir", help="a generate run directory")
    p.add_argument("--format", default="release", choices=("release",), help="record shape (default release)")
    p.add_argument("--out", default=None, help="target folder (default DIR/release)")

    p = group.add("import-ratings", _import_ratings, help="human ratings CSV -> Pearson r per language vs DQ scores")
    p.add_argument("dir", help="a generate run directory")
    p.add_argument("csv", help="CSV with an 'id' column and score columns")
