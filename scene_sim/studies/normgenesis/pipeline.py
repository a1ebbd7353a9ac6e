"""``normgenesis generate``: norm -> situation -> exemplars -> RQ refinement -> dialogue -> annotation.

One planned item is one (language, category, norm, scenario, type). The
scenario-situation pair, its exemplars and its refinement are shared by the
types of one scenario (made once, kept in ``scenarios.jsonl``). Every item ends
as exactly one line of ``dialogues.jsonl`` or ``rejected.jsonl`` (with the
stage and reason); a re-run skips the items in either file, so a killed run
resumes. Items run on :func:`scene_sim.jobs.run_jobs` (concurrency, budget,
progress) and every output file is a :class:`scene_sim.records.RecordFile`.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from scene_sim.errors import SceneSimError
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

__all__ = ["GenerateConfig", "Item", "generate", "is_scripted", "plan_items"]


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


class Pipeline:
    """One ``generate`` run's state: the roles, the index, the output files and the shared scenarios."""

    def __init__(self, cfg: GenerateConfig, bank: Bank, roles: Roles, index: Any, context: Any) -> None:
        self.cfg = cfg
        self.bank = bank
        self.roles = roles
        self.index = index
        self.context = context
        self.dialogues = RecordFile(cfg.out / "dialogues.jsonl")
        self.rejected = RecordFile(cfg.out / "rejected.jsonl")
        self.scenarios_file = RecordFile(cfg.out / "scenarios.jsonl")
        self._scenarios: dict[str, asyncio.Future[Scenario]] = {}
        self._stored: dict[str, Scenario] = {}
        for rec in self.scenarios_file:
            self._stored[rec["id"]] = Scenario(
                rec["id"], Situation(**rec["first"]), Situation(**rec["final"]), list(rec["exemplar_ids"]),
                Refinement(**rec["refinement"]),
            )  # fmt: skip

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
                self.scenarios_file.append(_scenario_doc(made))
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
    async def _draft(self, item: Item, scen: Scenario) -> list[DraftTurn]:
        exemplars = [self.index.get(i) for i in scen.exemplar_ids]
        if self.cfg.mode == "generator":
            return await self.roles.dialogue(item.norm, scen.final, item.kind, exemplars, item.id)
        from scene_sim.studies.normgenesis.play import NormPlay

        play = NormPlay(
            item.norm, scen.final, item.kind, item_id=item.id, speaker_models=(self.cfg.model, self.cfg.model),
            seed=self.cfg.seed, context=self.context,
        )  # fmt: skip
        from scene_sim._json import dumps_lines

        result = await play.arun()
        draft, error = play.draft(), play.error
        play.dispose()
        atomic_write_bytes(self.cfg.out / "episodes" / f"{item.id}.jsonl", dumps_lines(list(result.events)))
        if result.end_reason != "max_turns":
            raise Reject("dialogue", f"the played episode ended with '{result.end_reason}': {error or ''}".strip())
        return draft

    async def work(self, item: Item) -> None:
        """Make one item; whatever happens, it ends as exactly one record."""
        try:
            record = await self._make(item)
        except Reject as rej:
            self._reject(item, rej.stage, rej.reason)
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug or an unforeseen answer rejects this item, never the run
            self._reject(item, "internal", f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}")
            return
        self.dialogues.append(record.model_dump(mode="json"))

    def _reject(self, item: Item, stage: str, reason: str) -> None:
        rec = RejectedRecord(
            id=item.id, lang=item.norm.lang, category=item.norm.category, norm_id=item.norm.id, type=item.kind,
            stage=stage, reason=reason,
        )  # fmt: skip
        self.rejected.append(rec.model_dump(mode="json"))

    async def _make(self, item: Item) -> DialogueRecord:
        scen = await self.scenario(item)
        draft = await self._draft(item, scen)
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


async def generate(cfg: GenerateConfig, *, context: Any = None) -> GenerateResult:
    """Run (or resume) ``generate`` into ``cfg.out``.

    Args:
        cfg: the options.
        context: a :class:`scene_sim.context.RunContext` to use (default: one made here from ``cfg.cache``).

    """
    from scene_sim.context import RunContext
    from scene_sim.studies.normgenesis.retrieval import ExemplarIndex, make_encoder

    cfg.check()
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
    pipeline_index = ExemplarIndex(bank.exemplars, make_encoder(cfg.encoder), _index_cache(cfg))
    pipe = Pipeline(cfg, bank, make_roles(cfg, context), pipeline_index, context)
    done = pipe.dialogues.ids() | pipe.rejected.ids()
    todo = [it for it in items if it.id not in done]
    _write_run_json(cfg, len(items), context)
    try:
        summary = await run_jobs(
            todo, pipe.work, concurrency=cfg.concurrency, context=context, budget_usd=cfg.budget_usd,
            label="dialogues", already_done=len(items) - len(todo), quiet=cfg.quiet, name=lambda it: it.id,
            counts=lambda _it: not (is_scripted(cfg.model) and is_scripted(cfg.judge or cfg.model)),
        )  # fmt: skip
    finally:
        _write_run_json(cfg, len(items), context)
        if own:
            await context.aclose()
    return GenerateResult(
        planned=len(items), skipped=len(items) - len(todo), summary=summary, dialogues=len(pipe.dialogues.ids()),
        rejected=len(pipe.rejected.ids()), index_built=pipeline_index.built, accounting=context.accounting(),
    )  # fmt: skip


def _write_run_json(cfg: GenerateConfig, planned: int, context: Any) -> None:
    spec = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}
    doc = {"study": "normgenesis", "command": "generate", "spec": spec, "planned": planned,
           "versions": package_versions(), "accounting": context.accounting()}  # fmt: skip
    atomic_write_text(cfg.out / "run.json", json.dumps(doc, ensure_ascii=False, indent=2, default=str) + "\n")
