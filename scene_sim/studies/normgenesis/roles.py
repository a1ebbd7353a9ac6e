"""The pipeline's roles behind one interface: scripted offline policies, or language models.

:class:`Roles` is what the pipeline asks: write a scenario-situation pair, score
it (RQ), refine it, write a dialogue, annotate it. :class:`ScriptedRoles` answers
offline from :mod:`policies`; :class:`LLMRoles` asks a generator model and a judge
model through the prompt templates in ``agents/normgenesis/``, with structured
output and the core's bounded re-query loop. A role that cannot produce a valid
answer raises :class:`Reject`, which the pipeline writes to ``rejected.jsonl``.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import ValidationError

from scene_sim.actions import extract_json
from scene_sim.backends.base import GenerateRequest
from scene_sim.prompts import load_template
from scene_sim.requery import requery
from scene_sim.studies.normgenesis import policies
from scene_sim.studies.normgenesis.checks import check_situation, check_turn_lines
from scene_sim.studies.normgenesis.norms import Exemplar, Norm
from scene_sim.studies.normgenesis.records import (
    ADHERENCE,
    DQ_CRITERIA,
    REACTIONS,
    RQ_CRITERIA,
    DQScores,
    RQScores,
    Situation,
    Turn,
)

__all__ = ["DraftTurn", "LLMRoles", "Reject", "Roles", "ScriptedRoles", "render_exemplars"]


class Reject(Exception):
    """An item that cannot be made valid: the stage and the reason."""

    def __init__(self, stage: str, reason: str) -> None:
        super().__init__(f"{stage}: {reason}")
        self.stage = stage
        self.reason = reason


@dataclass(frozen=True)
class DraftTurn:
    """A dialogue turn before annotation; ``plan`` holds a scripted speaker's intended labels."""

    speaker: str
    text: str
    plan: policies.PlannedTurn | None = field(default=None, compare=False)


class Roles(Protocol):
    """What the pipeline asks of its roles."""

    async def situation(self, norm: Norm, index: int, item: str) -> Situation:
        """Write scenario ``index`` for ``norm``."""
        ...

    async def score(self, norm: Norm, first: Situation, current: Situation, round_: int, item: str) -> RQScores:
        """RQ-score ``current`` (against the first draft ``first``)."""
        ...

    async def refine(self, norm: Norm, current: Situation, exemplars: list[Exemplar], round_: int) -> Situation:
        """Revise ``current`` guided by ``exemplars``."""
        ...

    async def dialogue(
        self, norm: Norm, sit: Situation, kind: str, exemplars: list[Exemplar], item: str
    ) -> list[DraftTurn]:
        """Write the whole dialogue of type ``kind``."""
        ...

    async def annotate(
        self, norm: Norm, sit: Situation, kind: str, turns: list[DraftTurn], item: str
    ) -> tuple[list[Turn], DQScores]:
        """Label every turn and score the dialogue."""
        ...


def render_exemplars(exemplars: list[Exemplar]) -> str:
    """Exemplars as prompt text."""
    blocks = []
    for ex in exemplars:
        blocks.append(f"[{ex.id}] Scenario: {ex.scenario}\nSituation: {ex.situation}\n" + "\n".join(ex.dialogue))
    return "\n\n".join(blocks) or "(none)"


class ScriptedRoles:
    """Every role's offline policy.

    Args:
        seed: the run's seed.
        latency_s: a sleep per call (``scripted?latency_ms=N``), to make a run slow enough to interrupt.

    """

    def __init__(self, seed: int = 0, latency_s: float = 0.0) -> None:
        self.seed = seed
        self.latency_s = latency_s

    async def _tick(self) -> None:
        await asyncio.sleep(self.latency_s)

    async def situation(self, norm: Norm, index: int, item: str) -> Situation:
        """The scripted first draft."""
        await self._tick()
        return policies.situation_for(norm, index)

    async def score(self, norm: Norm, first: Situation, current: Situation, round_: int, item: str) -> RQScores:
        """Seeded scripted RQ scores."""
        return policies.rq_scores(self.seed, item, round_)

    async def refine(self, norm: Norm, current: Situation, exemplars: list[Exemplar], round_: int) -> Situation:
        """The scripted refinement."""
        return policies.refine_situation(norm, current)

    async def dialogue(
        self, norm: Norm, sit: Situation, kind: str, exemplars: list[Exemplar], item: str
    ) -> list[DraftTurn]:
        """The scripted dialogue."""
        await self._tick()
        names = policies.speakers(norm.lang)
        plan = policies.plan_dialogue(norm, kind, seed=self.seed, item_id=item)
        return [DraftTurn(names[p.speaker], p.text, p) for p in plan]

    async def annotate(
        self, norm: Norm, sit: Situation, kind: str, turns: list[DraftTurn], item: str
    ) -> tuple[list[Turn], DQScores]:
        """The oracle: each turn's intended labels (turns without a plan are not relevant)."""
        out = []
        for t in turns:
            if t.plan is None:
                out.append(
                    Turn(
                        speaker=t.speaker,
                        text=t.text,
                        adherence="not_relevant",
                        reaction="NR",
                        justification="No scripted intent recorded.",
                    )
                )
            else:
                p = t.plan
                out.append(
                    Turn(
                        speaker=t.speaker,
                        text=t.text,
                        adherence=p.adherence,
                        reaction=p.reaction,  # type: ignore[arg-type]
                        justification=p.justification,
                    )
                )
        return out, policies.scripted_dq(self.seed, item)


def _score_schema(names: tuple[str, ...]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {n: {"type": "integer", "minimum": 1, "maximum": 5} for n in names},
        "required": list(names),
        "additionalProperties": False,
    }


SITUATION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"scenario": {"type": "string"}, "situation": {"type": "string"}},
    "required": ["scenario", "situation"],
    "additionalProperties": False,
}
DIALOGUE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "turns": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"speaker": {"type": "string"}, "text": {"type": "string"}},
                "required": ["speaker", "text"],
                "additionalProperties": False,
            },
        }
    },
    "required": ["turns"],
    "additionalProperties": False,
}
ANNOTATION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "turns": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "adherence": {"type": "string", "enum": list(ADHERENCE)},
                    "reaction": {"type": "string", "enum": list(REACTIONS)},
                    "justification": {"type": "string"},
                },
                "required": ["adherence", "reaction", "justification"],
                "additionalProperties": False,
            },
        },
        "dq": _score_schema(DQ_CRITERIA),
    },
    "required": ["turns", "dq"],
    "additionalProperties": False,
}

_TEMPERATURE = {"situation": 0.7, "refine": 0.8, "dialogue": 0.9, "rq": 0.0, "annotate": 0.0}


def _data(response: Any) -> dict[str, Any] | None:
    value = response.parsed if isinstance(getattr(response, "parsed", None), dict) else None
    if value is None:
        try:
            value = extract_json(str(getattr(response, "text", "") or ""))
        except ValueError:
            return None
    return value if isinstance(value, dict) else None


class LLMRoles:
    """Roles played by language models: ``model`` writes, ``judge`` scores and annotates.

    Args:
        context: the run's :class:`scene_sim.context.RunContext`.
        model: the generator's model string.
        judge: the judge's model string.
        seed: the run's seed (each call's sampling seed derives from it and the item).

    """

    def __init__(self, context: Any, model: str, judge: str, seed: int = 0) -> None:
        self.context = context
        self.model = model
        self.judge = judge
        self.seed = seed

    async def _ask(
        self,
        stage: str,
        template: str,
        values: dict[str, Any],
        read: Callable[[dict[str, Any]], tuple[Any, str | None]],
        *,
        schema: dict[str, Any],
        judge: bool = False,
        item: str = "",
        max_tokens: int = 1500,
        system_override: str | None = None,
    ) -> Any:
        model = self.judge if judge else self.model
        backend = self.context.backend(model)
        system, user = load_template(f"normgenesis/{template}").render(**values)
        if system_override is not None:
            system = system_override
        seed = zlib.crc32(f"{self.seed}|{item}|{stage}".encode()) % (2**31 - 1)

        async def send(convo: tuple[dict[str, str], ...], attempt: int) -> Any:
            request = GenerateRequest(
                messages=convo,
                system=system,
                schema=schema,
                schema_name=f"normgenesis_{template}",
                temperature=_TEMPERATURE.get(template, 0.7),
                max_tokens=max_tokens,
                seed=seed + attempt,
                role="judge" if judge else "generator",
            )
            try:
                return await backend.generate(request)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a provider fault rejects this item, never the run
                first = (str(exc).splitlines() or [type(exc).__name__])[0]
                raise Reject(stage, f"{model}: {first}") from None

        def check(response: Any) -> tuple[Any, str | None]:
            data = _data(response)
            if data is None:
                return None, "no JSON object"
            try:
                return read(data)
            except (ValidationError, TypeError, ValueError, KeyError) as exc:
                return None, (str(exc).splitlines() or ["invalid"])[0]

        outcome = await requery(send, [{"role": "user", "content": user}], check)
        if outcome.value is None:
            raise Reject(stage, f"no valid answer after {outcome.attempts} attempts ({outcome.problem})")
        return outcome.value

    async def situation(self, norm: Norm, index: int, item: str) -> Situation:
        """Ask the generator for a scenario-situation pair."""

        def read(data: dict[str, Any]) -> tuple[Any, str | None]:
            sit = Situation(scenario=str(data["scenario"]), situation=str(data["situation"]))
            problem = check_situation(sit, lang=norm.lang, norm=norm.norm)
            return (None, problem) if problem else (sit, None)

        values = {
            "lang": norm.lang,
            "category": norm.category,
            "norm": norm.norm,
            "setting": norm.setting,
            "index": index + 1,
        }
        return await self._ask("situation", "situation", values, read, schema=SITUATION_SCHEMA, item=item)

    async def score(self, norm: Norm, first: Situation, current: Situation, round_: int, item: str) -> RQScores:
        """Ask the judge for the three RQ scores."""

        def read(data: dict[str, Any]) -> tuple[Any, str | None]:
            return RQScores(round=round_, **{k: int(data[k]) for k in RQ_CRITERIA}), None

        values = {
            "lang": norm.lang,
            "category": norm.category,
            "norm": norm.norm,
            "first_scenario": first.scenario,
            "first_situation": first.situation,
            "scenario": current.scenario,
            "situation": current.situation,
        }
        return await self._ask(
            "rq", "rq", values, read, schema=_score_schema(RQ_CRITERIA), judge=True, item=f"{item}|{round_}"
        )

    async def refine(self, norm: Norm, current: Situation, exemplars: list[Exemplar], round_: int) -> Situation:
        """Ask the generator to revise the pair, the exemplars as the system message (as in the release)."""

        def read(data: dict[str, Any]) -> tuple[Any, str | None]:
            sit = Situation(scenario=str(data["scenario"]), situation=str(data["situation"]))
            problem = check_situation(sit, lang=norm.lang, norm=norm.norm)
            return (None, problem) if problem else (sit, None)

        values = {
            "lang": norm.lang,
            "category": norm.category,
            "norm": norm.norm,
            "scenario": current.scenario,
            "situation": current.situation,
            "exemplars": render_exemplars(exemplars),
        }
        return await self._ask("refine", "refine", values, read, schema=SITUATION_SCHEMA, item=f"{norm.id}|{round_}")

    async def dialogue(
        self, norm: Norm, sit: Situation, kind: str, exemplars: list[Exemplar], item: str
    ) -> list[DraftTurn]:
        """Ask the generator for the whole dialogue."""

        def read(data: dict[str, Any]) -> tuple[Any, str | None]:
            pairs = [(str(t["speaker"]).strip(), str(t["text"]).strip()) for t in data["turns"]]
            problem = check_turn_lines(pairs, lang=norm.lang)
            return (None, problem) if problem else ([DraftTurn(s, t) for s, t in pairs], None)

        values = {
            "lang": norm.lang,
            "category": norm.category,
            "norm": norm.norm,
            "scenario": sit.scenario,
            "situation": sit.situation,
            "type": kind,
            "exemplars": render_exemplars(exemplars),
        }
        return await self._ask("dialogue", "dialogue", values, read, schema=DIALOGUE_SCHEMA, item=item)

    async def annotate(
        self, norm: Norm, sit: Situation, kind: str, turns: list[DraftTurn], item: str
    ) -> tuple[list[Turn], DQScores]:
        """Ask the judge for per-turn labels and the six DQ scores."""

        def read(data: dict[str, Any]) -> tuple[Any, str | None]:
            labels = data["turns"]
            if not isinstance(labels, list) or len(labels) != len(turns):
                got = len(labels) if isinstance(labels, list) else 0
                return None, f"needs exactly {len(turns)} turn labels, got {got}"
            out = [
                Turn(
                    speaker=t.speaker,
                    text=t.text,
                    adherence=lab["adherence"],
                    reaction=lab["reaction"],
                    justification=str(lab.get("justification", "")),
                )
                for t, lab in zip(turns, labels, strict=True)
            ]
            return (out, DQScores(**{k: int(data["dq"][k]) for k in DQ_CRITERIA})), None

        transcript = "\n".join(f"{i + 1}. {t.speaker}: {t.text}" for i, t in enumerate(turns))
        values = {
            "lang": norm.lang,
            "category": norm.category,
            "norm": norm.norm,
            "scenario": sit.scenario,
            "situation": sit.situation,
            "type": kind,
            "transcript": transcript,
            "n": len(turns),
        }
        return await self._ask(
            "annotate", "annotate", values, read, schema=ANNOTATION_SCHEMA, judge=True, item=item, max_tokens=2500
        )
