"""``normgenesis generate``: norm -> situation -> exemplars -> RQ refinement -> dialogue -> annotation.

One planned item is one (language, category, norm, scenario, type). The
scenario-situation pair, its exemplars and its refinement are shared by the
types of one scenario (made once, kept in ``scenarios.jsonl``). Every item ends
as exactly one line of ``dialogues.jsonl`` or ``rejected.jsonl`` (with the
stage and reason); a re-run skips the items in either file, so a killed run
resumes. Items run on :func:`scene_sim.jobs.run_jobs` (concurrency, budget,
progress) and every output file is a :class:`scene_sim.records.RecordFile`.

An item's work is split in two: :meth:`Pipeline.compute` makes it and writes
nothing (its :class:`Outcome` is plain data), :meth:`RunFiles.store` writes the
outcome. ``--executor local`` runs both here, item by item; ``--executor ray``
runs ``compute`` on Ray workers (:mod:`scene_sim.executors`), one scenario's
types to one worker so that the scenario is made once, and ``store`` here: only
the driver writes the run directory, so it is the same whichever the executor.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scene_sim._json import dumps_lines
from scene_sim.context import RunContext
from scene_sim.errors import SceneSimError
from scene_sim.executors import EXECUTORS, WorkerSpec, run_on_ray
from scene_sim.jobs import JobsSummary, run_jobs
from scene_sim.records import RecordFile
from scene_sim.rundir import atomic_write_bytes, atomic_write_text, package_versions
from scene_sim.studies.normgenesis.checks import check_situation, check_turn_lines
from scene_sim.studies.normgenesis.norms import Bank, Norm, load_bank
from scene_sim.studies.normgenesis.records import (
    TYPES,
    DialogueRecord,
    DQScores,
    Refinement,
    RejectedRecord,
    RQScores,
    Situation,
    Turn,
)
from scene_sim.studies.normgenesis.roles import DraftTurn, LLMRoles, Reject, Roles, ScriptedRoles

if TYPE_CHECKING:  # retrieval loads numpy: imported where an index is made, never at import
    from scene_sim.studies.normgenesis.retrieval import ExemplarIndex

__all__ = ["GenerateConfig", "Item", "Outcome", "RunFiles", "generate", "is_scripted", "make_worker", "plan_items"]


def is_scripted(model: str) -> bool:
    """Whether ``model`` names this study's offline policy (``scripted``, ``scripted/...``, ``scripted?...``)."""
    return model == "scripted" or model.startswith(("scripted/", "scripted?"))


def _latency_s(model: str) -> float:
    if "?" not in model:
        return 0.0
    for part in model.split("?", 1)[1].split("&"):
        key, _, value = part.partition("=")
        if key == "latency_ms":
            try:
                return max(0.0, float(value) / 1000)
            except ValueError:
                raise SceneSimError(f"{model}: latency_ms must be a number, got '{value}'") from None
    return 0.0


@dataclass(frozen=True)
class GenerateConfig:
    """Everything ``generate`` needs (the command's options)."""

    out: Path
    langs: tuple[str, ...] = ("en", "ko", "zh")
    categories: tuple[str, ...] | None = None  # None: all
    norms_per_category: int = 1
    scenarios_per_norm: int = 1
    types: tuple[str, ...] = TYPES
    model: str = "scripted"
    judge: str | None = None
    threshold: int = 4
    max_rounds: int = 3
    seed: int = 0
    mode: str = "generator"
    top_k: int = 2
    encoder: str = "use"
    concurrency: int = 8
    budget_usd: float | None = None
    cache: str = "read-write"
    quiet: bool = False
    index_cache: Path | None = None  # None: <cache dir>/normgenesis
    worlds: Path | None = None
    executor: str = "local"  # local: one event loop here; ray: Ray workers (see scene_sim.executors)
    workers: int | None = None  # Ray workers (None: the cluster's CPUs)

    def check(self) -> None:
        """Raise :class:`SceneSimError` on bad values."""
        if not 1 <= self.threshold <= 5:
            raise SceneSimError(f"--threshold must be 1-5, got {self.threshold}")
        if self.max_rounds < 0:
            raise SceneSimError(f"--max-rounds must be 0 or more, got {self.max_rounds}")
        if self.norms_per_category < 1 or self.scenarios_per_norm < 1:
            raise SceneSimError("--norms-per-category and --scenarios-per-norm must be at least 1")
        if self.mode not in ("generator", "agents"):
            raise SceneSimError(f"--mode must be generator or agents, got '{self.mode}'")
        if self.top_k < 0:
            raise SceneSimError(f"--top-k must be 0 or more, got {self.top_k}")
        bad = [t for t in self.types if t not in TYPES]
        if bad or not self.types:
            raise SceneSimError(f"--types must be a list of {', '.join(TYPES)}, got '{','.join(self.types)}'")
        if self.executor not in EXECUTORS:
            raise SceneSimError(f"--executor must be one of {', '.join(EXECUTORS)}, got '{self.executor}'")
        if self.workers is not None and self.executor != "ray":
            raise SceneSimError("--workers needs --executor ray")
        if self.workers is not None and self.workers < 1:
            raise SceneSimError(f"--workers must be at least 1, got {self.workers}")


@dataclass(frozen=True)
class Item:
    """One planned dialogue."""

    norm: Norm
    scenario_index: int
    kind: str

    @property
    def scenario_id(self) -> str:
        """The scenario this item's types share."""
        return f"{self.norm.id}-s{self.scenario_index + 1}"

    @property
    def id(self) -> str:
        """The item's id (the record's ``id``)."""
        return f"{self.scenario_id}-{self.kind}"


def plan_items(bank: Bank, cfg: GenerateConfig) -> list[Item]:
    """Every planned item, in a stable order.

    Raises:
        SceneSimError: an unknown language or category, or too few norms for ``--norms-per-category``.

    """
    for lang in cfg.langs:
        if lang not in bank.norms:
            raise SceneSimError(f"--langs: no norms for '{lang}' (have {', '.join(bank.langs)})")
    categories = cfg.categories or bank.categories
    for cat in categories:
        if cat not in bank.categories:
            raise SceneSimError(f"--categories: unknown category '{cat}' (have {', '.join(bank.categories)})")
    items = []
    for lang in cfg.langs:
        for cat in categories:
            norms = bank.norms_for(lang, cat)
            if len(norms) < cfg.norms_per_category:
                raise SceneSimError(
                    f"--norms-per-category {cfg.norms_per_category}: '{lang}' has {len(norms)} norms in '{cat}'"
                )
            for norm in norms[: cfg.norms_per_category]:
                for s in range(cfg.scenarios_per_norm):
                    items.extend(Item(norm, s, kind) for kind in cfg.types)
    return items


@dataclass(frozen=True)
class Scenario:
    """A refined scenario-situation pair with its exemplars and RQ trace."""

    id: str
    first: Situation
    final: Situation
    exemplar_ids: list[str]
    refinement: Refinement


def _scenario_from_doc(rec: Mapping[str, Any]) -> Scenario:
    """A scenario from its ``scenarios.jsonl`` line."""
    return Scenario(
        rec["id"], Situation(**rec["first"]), Situation(**rec["final"]), list(rec["exemplar_ids"]),
        Refinement(**rec["refinement"]),
    )  # fmt: skip


@dataclass(frozen=True)
class Outcome:
    """One item made, nothing written yet: an accepted record or a rejection, and the files it comes with.

    Plain data, so that it travels from a Ray worker to the driver, which writes it
    (:meth:`RunFiles.store`).

    Attributes:
        record: the accepted dialogue record as JSON data (None: rejected).
        stage: the stage that rejected the item (None: accepted).
        reason: why that stage rejected it.
        scenario: the item's scenario as its ``scenarios.jsonl`` line, when it was made in this run
            (None: rejected before it was made, or already on disk).
        episode: ``--mode agents``: the played episode's event log, as its file's bytes.

    """

    record: dict[str, Any] | None = None
    stage: str | None = None
    reason: str | None = None
    scenario: dict[str, Any] | None = None
    episode: bytes | None = None


@dataclass
class _Partial:
    """What an item's stages made so far: kept for its outcome when a later stage rejects it."""

    scenario: dict[str, Any] | None = None
    episode: bytes | None = None

    def accepted(self, record: DialogueRecord) -> Outcome:
        """The outcome of an item that passed every stage."""
        return Outcome(record=record.model_dump(mode="json"), scenario=self.scenario, episode=self.episode)

    def rejected(self, stage: str, reason: str) -> Outcome:
        """The outcome of an item that ``stage`` rejected."""
        return Outcome(stage=stage, reason=reason, scenario=self.scenario, episode=self.episode)


class _SplitRoles:
    """Writing from one set of roles, scoring and annotating from another."""

    def __init__(self, writer: Roles, judge: Roles) -> None:
        self.writer, self.judge = writer, judge
        self.situation, self.refine, self.dialogue = writer.situation, writer.refine, writer.dialogue
        self.score, self.annotate = judge.score, judge.annotate


def make_roles(cfg: GenerateConfig, context: Any) -> Roles:
    """The roles for ``cfg.model`` (writer) and ``cfg.judge`` (scorer, annotator)."""
    judge = cfg.judge or cfg.model

    def one(model: str) -> Roles:
        if is_scripted(model):
            return ScriptedRoles(cfg.seed, _latency_s(model))
        return LLMRoles(context, model, model, cfg.seed)

    if judge == cfg.model:
        return one(cfg.model) if is_scripted(cfg.model) else LLMRoles(context, cfg.model, judge, cfg.seed)
    return _SplitRoles(one(cfg.model), one(judge))  # type: ignore[return-value]


class RunFiles:
    """A ``generate`` run directory's record files, and their one writer (the driver, whichever the executor)."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.dialogues = RecordFile(out / "dialogues.jsonl")
        self.rejected = RecordFile(out / "rejected.jsonl")
        self.scenarios_file = RecordFile(out / "scenarios.jsonl")
        #: the scenarios on disk, by id, as their lines
        self.scenarios: dict[str, dict[str, Any]] = {rec["id"]: rec for rec in self.scenarios_file}
        #: items stored by this process
        self.stored = 0

    def done_ids(self) -> set[str]:
        """The items that already have their one record (a re-run skips them)."""
        return self.dialogues.ids() | self.rejected.ids()

    async def store(self, item: Item, outcome: Outcome) -> None:
        """Write one item's outcome: its scenario (the first time it comes), its episode log, then its record.

        The scenario goes first so that a kill between the lines leaves no record whose
        scenario a resumed run would make again.
        """
        scenario = outcome.scenario
        if scenario is not None and scenario["id"] not in self.scenarios:
            self.scenarios_file.append(scenario)
            self.scenarios[scenario["id"]] = scenario
        if outcome.episode is not None:
            atomic_write_bytes(self.out / "episodes" / f"{item.id}.jsonl", outcome.episode)
        if outcome.record is not None:
            self.dialogues.append(outcome.record)
        else:
            rec = RejectedRecord(
                id=item.id, lang=item.norm.lang, category=item.norm.category, norm_id=item.norm.id, type=item.kind,
                stage=outcome.stage or "internal", reason=outcome.reason or "",
            )  # fmt: skip
            self.rejected.append(rec.model_dump(mode="json"))
        self.stored += 1


class Pipeline:
    """Makes items and writes nothing: the roles, the index and the scenarios shared by an item's types.

    Args:
        cfg: the options.
        bank: the norms and exemplars.
        roles: who writes, scores and annotates.
        index: the exemplar index.
        context: the backends (agents mode plays episodes on them).
        scenarios: the scenarios already on disk, by id, as their ``scenarios.jsonl`` lines.

    """

    def __init__(
        self,
        cfg: GenerateConfig,
        bank: Bank,
        roles: Roles,
        index: Any,
        context: Any,
        scenarios: Mapping[str, Mapping[str, Any]],
    ) -> None:
        self.cfg = cfg
        self.bank = bank
        self.roles = roles
        self.index = index
        self.context = context
        self._scenarios: dict[str, asyncio.Future[Scenario]] = {}
        self._stored: dict[str, Scenario] = {sid: _scenario_from_doc(rec) for sid, rec in scenarios.items()}

    # -- scenario stage (shared by the types of one scenario) -------------------------------
    async def scenario(self, item: Item) -> Scenario:
        """The refined scenario of ``item`` (made once per scenario id)."""
        sid = item.scenario_id
        if sid in self._stored:
            return self._stored[sid]
        future = self._scenarios.get(sid)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            self._scenarios[sid] = future
            try:
                made = await self._make_scenario(item)
            except asyncio.CancelledError:
                future.cancel()
                del self._scenarios[sid]  # nothing was made: a later item makes it afresh
                raise
            except Exception as exc:
                future.set_exception(exc)
                future.exception()  # retrieved here; each waiting item re-raises it
            else:
                future.set_result(made)
        return await asyncio.shield(future)

    async def _make_scenario(self, item: Item) -> Scenario:
        norm, sid, cfg = item.norm, item.scenario_id, self.cfg
        first = await self.roles.situation(norm, item.scenario_index, sid)
        problem = check_situation(first, lang=norm.lang, norm=norm.norm)
        if problem:
            raise Reject("situation", problem)
        query = f"{norm.norm} {first.scenario} {first.situation}"
        hits = await asyncio.to_thread(self.index.search, query, lang=norm.lang, category=norm.category, k=cfg.top_k)
        ids = [h[0] for h in hits]
        exemplars = [self.index.get(i) for i in ids]
        scores: list[RQScores] = [await self.roles.score(norm, first, first, 0, sid)]
        current, rounds = first, 0
        while not scores[-1].passes(cfg.threshold) and rounds < cfg.max_rounds:
            rounds += 1
            current = await self.roles.refine(norm, current, exemplars, rounds)
            problem = check_situation(current, lang=norm.lang, norm=norm.norm)
            if problem:
                raise Reject("refine", f"round {rounds}: {problem}")
            scores.append(await self.roles.score(norm, first, current, rounds, sid))
        if not scores[-1].passes(cfg.threshold):
            last = scores[-1]
            raise Reject(
                "refine",
                f"RQ below {cfg.threshold} after {rounds} round(s) (norm_alignment {last.norm_alignment}, "
                f"linguistic_quality {last.linguistic_quality}, semantic_fidelity {last.semantic_fidelity})",
            )
        return Scenario(sid, first, current, ids, Refinement(rounds=rounds, scores=scores))

    # -- dialogue stage ----------------------------------------------------------------------
    async def _draft(self, item: Item, scen: Scenario, made: _Partial) -> list[DraftTurn]:
        exemplars = [self.index.get(i) for i in scen.exemplar_ids]
        if self.cfg.mode == "generator":
            return await self.roles.dialogue(item.norm, scen.final, item.kind, exemplars, item.id)
        from scene_sim.studies.normgenesis.play import NormPlay

        play = NormPlay(
            item.norm, scen.final, item.kind, item_id=item.id, speaker_models=(self.cfg.model, self.cfg.model),
            seed=self.cfg.seed, context=self.context,
        )  # fmt: skip
        result = await play.arun()
        draft, error = play.draft(), play.error
        play.dispose()
        made.episode = dumps_lines(list(result.events))  # stored with the item's record, rejected or not
        if result.end_reason != "max_turns":
            raise Reject("dialogue", f"the played episode ended with '{result.end_reason}': {error or ''}".strip())
        return draft

    async def compute(self, item: Item) -> Outcome:
        """Make one item, writing nothing; whatever happens, the outcome is one record or one rejection."""
        made = _Partial()
        try:
            record = await self._make(item, made)
        except Reject as rej:
            return made.rejected(rej.stage, rej.reason)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug or an unforeseen answer rejects this item, never the run
            return made.rejected("internal", f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}")
        return made.accepted(record)

    async def _make(self, item: Item, made: _Partial) -> DialogueRecord:
        scen = await self.scenario(item)
        if item.scenario_id not in self._stored:  # made in this run: it goes to scenarios.jsonl with the item
            made.scenario = _scenario_doc(scen)
        draft = await self._draft(item, scen, made)
        problem = check_turn_lines([(t.speaker, t.text) for t in draft], lang=item.norm.lang)
        if problem:
            raise Reject("dialogue", problem)
        turns, dq = await self.roles.annotate(item.norm, scen.final, item.kind, draft, item.id)
        problem = _type_problem(item.kind, turns)
        if problem:
            raise Reject("annotate", problem)
        return _record(item, scen, turns, dq, self.cfg)


def _type_problem(kind: str, turns: list[Turn]) -> str | None:
    violates = sum(t.adherence == "violates" for t in turns)
    if kind == "adherence" and violates:
        return f"an adherence dialogue has {violates} violating turn(s)"
    if kind in ("violation", "v2r") and not violates:
        return f"a {kind} dialogue has no violating turn"
    return None


def _record(item: Item, scen: Scenario, turns: list[Turn], dq: DQScores, cfg: GenerateConfig) -> DialogueRecord:
    return DialogueRecord(
        id=item.id, lang=item.norm.lang, category=item.norm.category, norm=item.norm.norm, norm_id=item.norm.id,
        type=item.kind,  # type: ignore[arg-type]
        scenario=scen.final.scenario, situation=scen.final.situation, exemplar_ids=scen.exemplar_ids,
        refinement=scen.refinement, turns=turns, dq=dq, mode=cfg.mode,  # type: ignore[arg-type]
        seed=cfg.seed,
    )  # fmt: skip


def _scenario_doc(s: Scenario) -> dict[str, Any]:
    return {
        "id": s.id,
        "first": s.first.model_dump(),
        "final": s.final.model_dump(),
        "exemplar_ids": s.exemplar_ids,
        "refinement": s.refinement.model_dump(),
    }


@dataclass
class GenerateResult:
    """What a ``generate`` run did."""

    planned: int
    skipped: int
    summary: JobsSummary
    dialogues: int = 0
    rejected: int = 0
    index_built: bool = False
    accounting: dict[str, Any] = field(default_factory=dict)


def _index_cache(cfg: GenerateConfig) -> Path:
    if cfg.index_cache is not None:
        return cfg.index_cache
    from scene_sim.backends._cache import default_cache_dir

    return default_cache_dir() / "normgenesis"


async def generate(cfg: GenerateConfig, *, context: RunContext | None = None) -> GenerateResult:
    """Run (or resume) ``generate`` into ``cfg.out``.

    Args:
        cfg: the options.
        context: a :class:`scene_sim.context.RunContext` to use (default: one made here from ``cfg.cache``);
            ``--executor local`` only.

    Raises:
        SceneSimError: bad options, or a context of your own with ``executor="ray"`` (it cannot travel
            to the workers, which build their own backends).

    """
    from scene_sim.studies.normgenesis.retrieval import ExemplarIndex, make_encoder

    cfg.check()
    if cfg.executor == "ray" and context is not None:
        raise SceneSimError(
            "--executor ray builds each worker's backends itself: a context of your own runs only with --executor local"
        )
    bank = load_bank(cfg.worlds)
    items = plan_items(bank, cfg)
    own = context is None
    context = context or RunContext(cache_mode=cfg.cache)
    if cfg.budget_usd is not None:
        if context.budget is None:
            context.set_budget(cfg.budget_usd)
        models = [m for m in (cfg.model, cfg.judge) if m and not is_scripted(m)]
        for warning in context.check_priced(models):
            print(f"scene-sim: warning: {warning}")
    cfg.out.mkdir(parents=True, exist_ok=True)
    # built (or loaded from its cache file) here, before any Ray worker starts: the workers then load
    # that file instead of each embedding the bank and writing the same file at once
    index = ExemplarIndex(bank.exemplars, make_encoder(cfg.encoder), _index_cache(cfg))
    files = RunFiles(cfg.out)
    done = files.done_ids()
    todo = [it for it in items if it.id not in done]
    _write_run_json(cfg, len(items), context.accounting())
    scripted = is_scripted(cfg.model) and is_scripted(cfg.judge or cfg.model)
    jobs_args: dict[str, Any] = {
        "context": context,
        "budget_usd": cfg.budget_usd,
        "quiet": cfg.quiet,
        "counts": lambda _item: not scripted,  # offline items cost nothing: the budget projection leaves them out
    }
    accounting: dict[str, Any] | None = None
    try:
        if cfg.executor == "ray" and todo:  # a run with nothing left to do starts no cluster
            summary, accounting = await _run_on_ray(cfg, items, todo, files, index, jobs_args)
        else:
            pipe = Pipeline(cfg, bank, make_roles(cfg, context), index, context, files.scenarios)
            summary = await _run_here(pipe, files, todo, len(items) - len(todo), jobs_args)
    finally:
        if accounting is None:
            accounting = context.accounting()
        _write_run_json(cfg, len(items), accounting)
        if own:
            await context.aclose()
    return GenerateResult(
        planned=len(items), skipped=len(items) - len(todo), summary=summary, dialogues=len(files.dialogues.ids()),
        rejected=len(files.rejected.ids()), index_built=index.built, accounting=accounting,
    )  # fmt: skip


async def _run_here(
    pipe: Pipeline, files: RunFiles, todo: Sequence[Item], already_done: int, jobs_args: dict[str, Any]
) -> JobsSummary:
    """``--executor local``: every item made and stored in this event loop."""

    async def work(item: Item) -> None:
        await files.store(item, await pipe.compute(item))

    return await run_jobs(
        todo, work, concurrency=pipe.cfg.concurrency, label="dialogues", already_done=already_done,
        name=lambda it: it.id, **jobs_args,
    )  # fmt: skip


async def _run_on_ray(
    cfg: GenerateConfig,
    items: Sequence[Item],
    todo: Sequence[Item],
    files: RunFiles,
    index: ExemplarIndex,
    jobs_args: dict[str, Any],
) -> tuple[JobsSummary, dict[str, Any]]:
    """``--executor ray``: each scenario's items made on one Ray worker, stored here.

    Returns:
        The summary counted in dialogues (as ``local`` counts), and the accounting of the driver and
        every worker.

    """
    groups = _by_scenario(todo)
    worker = WorkerSpec(
        "scene_sim.studies.normgenesis.pipeline:make_worker",
        {
            "config": _worker_config(cfg),
            # the scenarios on disk that the work needs, as data: a worker may not see this run directory
            "scenarios": [files.scenarios[sid] for sid in (g[0].scenario_id for g in groups) if sid in files.scenarios],
            "index_file": str(index.path.resolve()) if index.path is not None else None,
        },
        cache_mode=cfg.cache,
    )

    async def store(group: tuple[Item, ...], outcomes: list[Outcome]) -> None:
        for item, outcome in zip(group, outcomes, strict=True):
            await files.store(item, outcome)

    stored_before = files.stored
    scenarios = len({it.scenario_id for it in items})
    jobs, accounting = await run_on_ray(
        groups, store, worker, workers=cfg.workers, concurrency=_group_concurrency(cfg), label="scenarios",
        already_done=scenarios - len(groups), name=_group_name, **jobs_args,
    )  # fmt: skip
    return _in_dialogues(jobs, groups, files.stored - stored_before, len(items) - len(todo)), accounting


def _by_scenario(items: Sequence[Item]) -> list[tuple[Item, ...]]:
    """The items grouped by scenario, in plan order.

    A group is one Ray item, so one worker makes its scenario, once: items of one scenario on two
    workers would each make it (paying its calls twice, and with a sampling model, two different
    scenarios for types that must share one).
    """
    groups: dict[str, list[Item]] = {}
    for item in items:
        groups.setdefault(item.scenario_id, []).append(item)
    return [tuple(group) for group in groups.values()]


def _group_concurrency(cfg: GenerateConfig) -> int:
    """Scenario groups in flight on one worker: about ``--concurrency`` dialogues."""
    return max(1, -(-cfg.concurrency // len(cfg.types)))


def _group_name(group: tuple[Item, ...]) -> str:
    """A group's name in failure lines."""
    return f"{group[0].scenario_id} ({', '.join(it.kind for it in group)})"


def _in_dialogues(jobs: JobsSummary, groups: Sequence[tuple[Item, ...]], stored: int, already_done: int) -> JobsSummary:
    """run_jobs' summary over scenario groups, counted in dialogues as ``--executor local`` counts them."""
    todo = sum(len(group) for group in groups)
    # a budget stop leaves the last groups unstarted (every group counts toward the budget, or none does)
    unstarted = groups[len(groups) - jobs.not_started :] if jobs.not_started else []
    not_started = sum(len(group) for group in unstarted)
    return JobsSummary(
        planned=already_done + todo, done=stored, failed=todo - stored - not_started,
        budget_stopped=jobs.budget_stopped, not_started=not_started, wall_time_s=jobs.wall_time_s,
        failures=jobs.failures,
    )  # fmt: skip


def make_worker(
    context: RunContext, *, config: dict[str, Any], scenarios: list[dict[str, Any]], index_file: str | None
) -> Callable[[tuple[Item, ...]], Awaitable[list[Outcome]]]:
    """A Ray worker's part of ``generate`` (the :class:`~scene_sim.executors.WorkerSpec` factory).

    The work function makes the items of one scenario (a group of :func:`_by_scenario`) and
    writes nothing; the driver stores the outcomes.

    Args:
        context: the worker's own backends (with the shared budget).
        config: the :class:`GenerateConfig` as a dict (``dataclasses.asdict``).
        scenarios: the scenarios already on disk that the work needs, as their ``scenarios.jsonl`` lines.
        index_file: the exemplar index file the driver built or loaded (None: it has none).

    """
    cfg = GenerateConfig(**config)
    bank = load_bank(cfg.worlds)
    index = _worker_index(bank, cfg.encoder, index_file)
    pipe = Pipeline(cfg, bank, make_roles(cfg, context), index, context, {rec["id"]: rec for rec in scenarios})

    async def work(group: tuple[Item, ...]) -> list[Outcome]:
        return list(await asyncio.gather(*(pipe.compute(item) for item in group)))

    return work


def _worker_config(cfg: GenerateConfig) -> dict[str, Any]:
    """``cfg`` as the dict :func:`make_worker` takes, its bank folder absolute (a worker's cwd is not the driver's)."""
    return asdict(replace(cfg, worlds=cfg.worlds.resolve() if cfg.worlds is not None else None))


def _worker_index(bank: Bank, encoder: str, index_file: str | None) -> ExemplarIndex:
    """A worker's exemplar index: the driver's file where this machine has it, else embedded in memory.

    A worker never writes the cache file: the workers of one machine would all write it at once.
    """
    from scene_sim.studies.normgenesis.retrieval import ExemplarIndex, make_encoder

    path = Path(index_file) if index_file else None
    cache_dir = path.parent if path is not None and path.exists() else None
    return ExemplarIndex(bank.exemplars, make_encoder(encoder), cache_dir)


def _write_run_json(cfg: GenerateConfig, planned: int, accounting: dict[str, Any]) -> None:
    spec = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}
    doc = {"study": "normgenesis", "command": "generate", "spec": spec, "planned": planned,
           "versions": package_versions(), "accounting": accounting}  # fmt: skip
    atomic_write_text(cfg.out / "run.json", json.dumps(doc, ensure_ascii=False, indent=2, default=str) + "\n")
