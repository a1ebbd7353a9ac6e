"""``clca pipeline SPEC.toml``: adapt -> roleplay -> filter -> intents -> export in one resumable run.

Every step writes a :class:`~scene_sim.records.RecordFile` and skips what is
on disk, so re-running the same spec into the same folder (after a
kill -9, a budget stop or a failed item) does only what is missing. All
steps share one :class:`~scene_sim.context.RunContext` (cache, accounting,
budget) and run on :func:`scene_sim.jobs.run_jobs` (concurrency, budget,
progress with live cost). The spec (see ``experiments/clca/offline_smoke.toml``)::

    name = "clca-offline-smoke"
    seed = 0
    cultures = ["China", "Germany", "UK", "Mexico", "Japan"]
    tasks = "builtin"              # or a task file (ours or Sotopia's), relative to the spec
    limit = 4                      # first N tasks (omit: all)
    cultures_file = ""             # a cultures.json of your own (default: the shipped one)

    [models]                       # model strings; "scripted" is each role's offline policy
    adapter = "scripted"
    roleplay = "scripted"
    judge = "scripted"
    intents = "scripted"

    [roleplay]
    reps = 2
    max_turns = 20
    min_turns = 2
    temperature = 0.7

    [filter]
    high_confidence = ["very confident"]

    [run]
    concurrency = 16
    budget_usd = 25.0              # optional

It writes ``table9.json`` (seed 004 Table 9's columns) and ``run.json``
(spec, versions, per-step summaries, accounting).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import tomllib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from scene_sim.context import RunContext
from scene_sim.errors import SceneSimError
from scene_sim.jobs import JobsSummary
from scene_sim.rundir import RunDir, atomic_write_text, ensure_writable_dir, package_versions
from scene_sim.studies.clca.calls import is_scripted
from scene_sim.studies.clca.cultures import Culture, load_cultures, resolve_cultures

__all__ = ["PipelineSpec", "load_spec", "report", "run_cultures", "run_pipeline", "run_step", "save_cultures"]

_TOP = {"name", "seed", "cultures", "tasks", "limit", "cultures_file", "models", "roleplay", "filter", "run"}
_SECTIONS = {
    "models": {"adapter", "roleplay", "judge", "intents"},
    "roleplay": {"reps", "max_turns", "min_turns", "temperature", "max_tokens"},
    "filter": {"high_confidence"},
    "run": {"concurrency", "budget_usd"},
}


class PipelineSpec(dict):  # type: ignore[type-arg]
    """A validated spec (a plain dict: it is recorded in run.json as read)."""


def load_spec(path: str | Path) -> tuple[PipelineSpec, Path]:
    """Read and check a pipeline spec; returns it and the folder relative paths are resolved against."""
    file = Path(path)
    try:
        spec = tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SceneSimError(f"{file}: spec not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise SceneSimError(f"{file}: not valid TOML ({exc})") from None
    unknown = sorted(set(spec) - _TOP)
    if unknown:
        raise SceneSimError(f"{file}: unknown key(s) {', '.join(unknown)}")
    for section, keys in _SECTIONS.items():
        table = spec.get(section, {})
        if not isinstance(table, dict):
            raise SceneSimError(f"{file}: [{section}] must be a table")
        bad = sorted(set(table) - keys)
        if bad:
            raise SceneSimError(f"{file}: unknown [{section}] key(s) {', '.join(bad)}")
    models = spec.get("models", {})
    for role in _SECTIONS["models"]:
        if not isinstance(models.get(role), str) or not models[role]:
            raise SceneSimError(f"{file}: [models] needs '{role}' (a model string, or 'scripted')")
    cultures = spec.get("cultures")
    if not isinstance(cultures, list) or not cultures or not all(isinstance(c, str) for c in cultures):
        raise SceneSimError(f"{file}: cultures: expected a non-empty list of culture names")
    if not isinstance(spec.get("seed", 0), int):
        raise SceneSimError(f"{file}: seed: expected an integer")
    return PipelineSpec(spec), file.parent


def save_cultures(out: Path, cultures: dict[str, Culture]) -> None:
    """Keep the cultures a run was adapted with beside its records (later steps read them back)."""
    data = {"cultures": [c.model_dump() for c in cultures.values()]}
    atomic_write_text(out / "cultures.json", json.dumps(data, indent=1, ensure_ascii=False) + "\n")


def run_cultures(out: Path) -> dict[str, Culture]:
    """The cultures of a run folder (saved by ``clca adapt``), else the shipped ones."""
    own = out / "cultures.json"
    return load_cultures(own if own.exists() else None)


def run_step(
    out: Path,
    step: str,
    models: list[str],
    body: Callable[[RunContext | None], Awaitable[JobsSummary | dict[str, Any]]],
    *,
    cache: str,
    budget_usd: float | None = None,
) -> JobsSummary | dict[str, Any]:
    """Run one step in its own event loop and context; record its summary and accounting in run.json."""
    ensure_writable_dir(out)
    online = [m for m in models if not is_scripted(m)]

    async def main() -> tuple[Any, dict[str, Any]]:
        context = RunContext(cache_mode=cache, budget=budget_usd) if online else None
        try:
            if context is not None and budget_usd is not None:
                for line in context.check_priced(online, allow_unpriced=True):
                    print(f"scene-sim: warning: {line}", file=sys.stderr)
            result = await body(context)
            return result, (context.accounting() if context is not None else {})
        finally:
            if context is not None:
                await context.aclose()

    result, accounting = asyncio.run(main())
    _record_step(out, step, models, result, accounting)
    return result


def _summary_dict(result: Any) -> dict[str, Any]:
    if isinstance(result, JobsSummary):
        return {
            "planned": result.planned,
            "done": result.done,
            "failed": result.failed,
            "budget_stopped": result.budget_stopped,
            "not_started": result.not_started,
            "wall_time_s": result.wall_time_s,
            "failures": result.failures[:20],
        }
    return dict(result)


def _record_step(out: Path, step: str, models: list[str], result: Any, accounting: dict[str, Any]) -> None:
    rundir = RunDir(out)
    run = rundir.read_run()
    run.setdefault("study", "clca")
    run["versions"] = package_versions()
    steps = run.setdefault("steps", {})
    steps[step] = {"models": models, "summary": _summary_dict(result), "accounting": accounting}
    rundir.write_run(run)


def report(summary: JobsSummary, what: str) -> None:
    """Print a step's failures (first three) and a budget stop."""
    for line in summary.failures[:3]:
        print(f"scene-sim: {what}: {line}", file=sys.stderr)
    if summary.failed:
        print(f"scene-sim: {what}: {summary.failed} failed; re-run the same command to retry them", file=sys.stderr)


def run_pipeline(
    spec_path: str | Path,
    out_dir: str | Path,
    *,
    cache: str = "read-write",
    quiet: bool = False,
    executor: str = "local",
    workers: int | None = None,
    seed: int | None = None,
) -> dict[str, Any]:
    """Run every step of the spec into ``out_dir`` (resuming what is there); returns the Table 9 dict.

    With ``executor="ray"`` each step's items are computed on Ray workers (``workers`` of them,
    default the cluster's CPUs) and stored here, so the folder is the one ``local`` writes.
    """
    from scene_sim.studies.clca.adapt import run_adapt
    from scene_sim.studies.clca.export import export_train
    from scene_sim.studies.clca.intents import run_intents
    from scene_sim.studies.clca.judge import run_filter
    from scene_sim.studies.clca.roleplay import RoleplaySettings, run_roleplay
    from scene_sim.studies.clca.steps import Runner
    from scene_sim.studies.clca.table9 import format_table9, table9
    from scene_sim.studies.clca.tasks import load_tasks

    runner = Runner(executor, workers)  # checks both before anything is written
    spec, base = load_spec(spec_path)
    if seed is not None:
        spec["seed"] = seed  # recorded in run.json with the spec, so a resume must use the same seed
    out = ensure_writable_dir(out_dir)
    rundir = RunDir(out)
    before = rundir.read_run().get("spec")
    if before is not None and before != dict(spec):
        raise SceneSimError(f"{out} holds a run of a different spec (run.json differs); use a new --out")
    run = rundir.read_run()
    run.update({"study": "clca", "spec": dict(spec), "spec_path": str(spec_path), "command": "clca pipeline"})
    rundir.write_run(run)

    def resolve(value: str) -> str:
        if not value or value == "builtin":
            return value
        p = Path(value).expanduser()
        return str(p if p.is_absolute() else base / p)

    seed = int(spec.get("seed", 0))
    cultures = load_cultures(resolve(spec.get("cultures_file", "")) or None)
    chosen = resolve_cultures(spec["cultures"], cultures)
    tasks = load_tasks(resolve(spec.get("tasks", "builtin")), limit=spec.get("limit"))
    models = spec["models"]
    rp = spec.get("roleplay", {})
    settings = RoleplaySettings(
        reps=int(rp.get("reps", 2)),
        max_turns=int(rp.get("max_turns", 20)),
        min_turns=int(rp.get("min_turns", 2)),
        temperature=rp.get("temperature", 0.7),
        max_tokens=int(rp.get("max_tokens", 300)),
    )
    high = tuple(spec.get("filter", {}).get("high_confidence", ["very confident"]))
    concurrency = int(spec.get("run", {}).get("concurrency", 16))
    budget = spec.get("run", {}).get("budget_usd")
    save_cultures(out, {c.name: c for c in chosen})
    started = time.perf_counter()
    online = [m for m in models.values() if not is_scripted(m)]

    async def main() -> dict[str, Any]:
        # Ray's workers always get a context (the budget travels in it); offline local runs need none
        context = RunContext(cache_mode=cache, budget=budget) if online or executor == "ray" else None
        summaries: dict[str, Any] = {}
        kw: dict[str, Any] = {"seed": seed, "context": context, "concurrency": concurrency, "quiet": quiet}
        kw["runner"] = runner
        kw["budget_usd"] = budget
        try:
            if context is not None and budget is not None:
                for line in context.check_priced(online, allow_unpriced=True):
                    print(f"scene-sim: warning: {line}", file=sys.stderr)
            by_name = {c.name: c for c in chosen}
            steps: list[tuple[str, Callable[[], Awaitable[JobsSummary]]]] = [
                ("adapt", lambda: run_adapt(out, tasks, chosen, models["adapter"], **kw)),
                ("roleplay", lambda: run_roleplay(out, models["roleplay"], by_name, settings=settings, **kw)),
                ("filter", lambda: run_filter(out, models["judge"], high_confidence=high, **kw)),
                ("intents", lambda: run_intents(out, models["intents"], by_name, **kw)),
            ]
            for name, make in steps:
                summary = await make()
                summaries[name] = _summary_dict(summary)
                report(summary, name)
                if summary.budget_stopped:
                    print(f"scene-sim: budget reached during {name}; re-run with a larger budget to go on")
                    break
            return {"steps": summaries, "accounting": runner.accounting(context)}
        finally:
            if context is not None:
                await context.aclose()

    if executor == "ray":
        from scene_sim.executors import ray_session

        with ray_session(workers):  # one connection for the four steps (ray.init wants the main thread)
            result = asyncio.run(main())
    else:
        result = asyncio.run(main())
    exported = export_train(out)
    t9 = table9(out)
    atomic_write_text(out / "table9.json", json.dumps(t9, indent=1, ensure_ascii=False) + "\n")
    run = rundir.read_run()
    run.update(
        {
            "pipeline": {**result["steps"], "export": exported},
            "accounting": result["accounting"],
            "versions": package_versions(),
            "wall_time_s": round(time.perf_counter() - started, 3),
        }
    )
    rundir.write_run(run)
    print(format_table9(t9))
    print(
        f"train.jsonl: {exported['conversation']} conversation + {exported['intent']} intent examples "
        f"from {exported['dialogues']} kept dialogues"
    )
    return t9
