"""``clca intents``: the intent of every turn of each kept dialogue (seed 004 Table 22).

The prompt shows the conversation up to and including the turn and asks
for ``INTENT: ...``, with a short cultural reason only when the model is
very certain. Parsing: the text after ``INTENT:`` up to the line's end is
the intent; a ``Reason:`` label on that line, or any further non-empty
lines, are the cultural reason. No reason, or a reason that only says the
model is unsure, gives ``cultural_reason: null``.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from scene_sim.context import RunContext
from scene_sim.errors import SceneSimError
from scene_sim.jobs import JobsSummary
from scene_sim.prompts import load_template
from scene_sim.records import RecordFile
from scene_sim.studies.clca.calls import ask, is_scripted, item_seed
from scene_sim.studies.clca.cultures import Culture
from scene_sim.studies.clca.policies import scripted_intent
from scene_sim.studies.clca.records import Dialogue, Scenario
from scene_sim.studies.clca.steps import Output, Runner

__all__ = ["intent_prompt", "make_worker", "parse_intent", "run_intents"]

_INTENT = re.compile(r"\**\s*intent\s*\**\s*[:：]\s*(.*)", re.IGNORECASE | re.DOTALL)
_REASON = re.compile(r"\b(?:cultural\s+)?(?:reason(?:ing)?|explanation|because)\s*[:：]\s*", re.IGNORECASE)
_UNSURE = re.compile(r"^\W*(none|n/?a|unsure|not sure|i am not sure|i'm not sure|no reason|-)\W*$", re.IGNORECASE)


def parse_intent(text: str) -> tuple[dict[str, Any] | None, str | None]:
    """``({"intent", "cultural_reason"}, None)`` or ``(None, problem)``."""
    m = _INTENT.search(text)
    if not m:
        return None, "no 'INTENT: ...' line"
    body = m.group(1).strip()
    first, _, rest = body.partition("\n")
    split = _REASON.search(first)
    if split:
        intent, reason = first[: split.start()].strip(), first[split.end() :].strip() + "\n" + rest
    else:
        intent, reason = first.strip(), rest
    intent = intent.strip().strip("*").strip()
    reason = _REASON.sub("", reason.strip(), count=1).strip() if reason.strip() else ""
    if not intent or intent == "{intent}":
        return None, "the intent is empty"
    if not reason or _UNSURE.match(reason):
        reason = None
    return {"intent": intent, "cultural_reason": reason}, None


def intent_prompt(scenario: Scenario, dialogue: Dialogue, index: int) -> tuple[str, str]:
    """The Table 22 prompt for turn ``index``."""
    a, b = scenario.participants
    conversation = "\n".join(f"{t.speaker}: {t.text}" for t in dialogue.turns[: index + 1])
    return load_template("clca/intent").render(
        setting=scenario.setting,
        name=a.name,
        background=a.background(),
        occupation=a.occupation,
        name2=b.name,
        background2=b.background(),
        occupation2=b.occupation,
        culture=dialogue.culture,
        conversation=conversation,
        speaker=dialogue.turns[index].speaker,
    )


def kept_dialogues(out: Path) -> list[Dialogue]:
    """The dialogues the filter kept, in ``dialogues.jsonl`` order."""
    kept = {r["dialogue_id"] for r in RecordFile(out / "judgements.jsonl") if r.get("kept")}
    return [d for d in (Dialogue.model_validate(r) for r in RecordFile(out / "dialogues.jsonl")) if d.id in kept]


def make_worker(
    context: RunContext | None, *, model: str, seed: int
) -> Callable[[tuple[Dialogue, int, Scenario | None, Culture | None]], Awaitable[Output]]:
    """The work of one turn of a kept dialogue: its intent record, written by the driver."""

    async def compute(item: tuple[Dialogue, int, Scenario | None, Culture | None]) -> Output:
        dialogue, index, scenario, culture = item
        if scenario is None or culture is None:
            raise SceneSimError(f"dialogue {dialogue.id}: its scenario or culture is unknown")
        system, user = intent_prompt(scenario, dialogue, index)
        s = item_seed(seed, "intent", dialogue.id, index)
        asked = await ask(
            model,
            context,
            system,
            user,
            lambda r: parse_intent(str(r.text or "")),
            seed=s,
            role="intent",
            scripted=lambda: scripted_intent(dialogue.turns, index, culture, seed=s),
            temperature=0.0,
            max_tokens=200,
        )
        value = asked.value or {"intent": "", "cultural_reason": None}
        record = {
            "id": f"{dialogue.id}:{index}",
            "dialogue_id": dialogue.id,
            "turn": index,
            "speaker": dialogue.turns[index].speaker,
            "intent": value["intent"],
            "cultural_reason": value["cultural_reason"],
            "culture": dialogue.culture,
            "raw": list(asked.raw),
            "parse_failure": asked.value is None,
            "parse_failures": asked.parse_failures,
        }
        return Output(records=(("intents.jsonl", record),))

    return compute


async def run_intents(
    out: Path,
    model: str,
    cultures: dict[str, Culture],
    *,
    seed: int,
    context: RunContext | None,
    concurrency: int = 16,
    quiet: bool = False,
    budget_usd: float | None = None,
    runner: Runner | None = None,
) -> JobsSummary:
    """Write the intent of every turn of each kept dialogue not yet in ``intents.jsonl``."""
    scenarios = {r["id"]: Scenario.model_validate(r) for r in RecordFile(out / "scenarios.jsonl")}
    done = RecordFile(out / "intents.jsonl").ids("id")
    todo = [
        (d, i, scenarios.get(d.scenario_id), cultures.get(d.culture))
        for d in kept_dialogues(out)
        for i in range(len(d.turns))
        if f"{d.id}:{i}" not in done
    ]
    return await (runner or Runner()).run(
        out,
        todo,
        "scene_sim.studies.clca.intents:make_worker",
        {"model": model, "seed": seed},
        context=context,
        concurrency=concurrency,
        budget_usd=budget_usd,
        label="intents",
        already_done=len(done),
        quiet=quiet,
        name=lambda it: f"{it[0].id}:{it[1]}",
        counts=lambda _it: not is_scripted(model),
    )
