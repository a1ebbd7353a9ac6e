"""``clca export``: multi-task training data ``train.jsonl`` in the conversational format of ``datasets`` / TRL.

Each kept dialogue appears twice as ``task: "conversation"``, once from
each participant's perspective: the system message holds the setting,
both participants' public profiles and that participant's own goal (never
a secret); that participant's turns are the ``assistant`` messages, the
other's the ``user`` messages, in order. Each turn with a parsed intent
appears once as ``task: "intent"``: the Table 22 prompt (setting, both
profiles, the conversation up to the turn) as system and user messages,
the ``INTENT: ...`` answer (plus the cultural reason, when there is one)
as the assistant message. Dropped dialogues appear nowhere.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from scene_sim._json import dumps_lines
from scene_sim.records import RecordFile
from scene_sim.rundir import atomic_write_text
from scene_sim.studies.clca.intents import intent_prompt, kept_dialogues
from scene_sim.studies.clca.records import Dialogue, Scenario

__all__ = ["conversation_example", "export_train"]


def conversation_example(scenario: Scenario, dialogue: Dialogue, perspective: str) -> dict[str, Any]:
    """The ``conversation`` example of ``dialogue`` from ``perspective``'s side."""
    me = next(p for p in scenario.participants if p.name == perspective)
    other = next(p for p in scenario.participants if p.name != perspective)
    system = (
        f"Scenario: {scenario.setting}\n"
        f"Participants: {me.public()}; {other.public()}\n"
        f"You are {me.name} ({me.background()}, {me.occupation}), from the {dialogue.culture} culture.\n"
        f"Your goal: {me.goal}"
    )
    messages = [{"role": "system", "content": system}]
    messages += [
        {"role": "assistant" if t.speaker == perspective else "user", "content": t.text} for t in dialogue.turns
    ]
    return {
        "messages": messages,
        "task": "conversation",
        "dialogue_id": dialogue.id,
        "perspective": perspective,
        "culture": dialogue.culture,
    }


def export_train(out: Path) -> dict[str, int]:
    """Write ``out/train.jsonl``; returns counts (dialogues, conversation and intent examples, missing intents)."""
    scenarios = {r["id"]: Scenario.model_validate(r) for r in RecordFile(out / "scenarios.jsonl")}
    intents: dict[str, dict[int, dict[str, Any]]] = defaultdict(dict)
    for r in RecordFile(out / "intents.jsonl"):
        if not r.get("parse_failure") and r.get("intent"):
            intents[str(r["dialogue_id"])][int(r["turn"])] = r
    rows: list[dict[str, Any]] = []
    missing = 0
    dialogues = kept_dialogues(out)
    for d in dialogues:
        scenario = scenarios[d.scenario_id]
        for p in scenario.participants:
            rows.append(conversation_example(scenario, d, p.name))
        for i, turn in enumerate(d.turns):
            record = intents[d.id].get(i)
            if record is None:
                missing += 1
                continue
            system, user = intent_prompt(scenario, d, i)
            answer = f"INTENT: {record['intent']}"
            if record.get("cultural_reason"):
                answer += f"\n{record['cultural_reason']}"
            rows.append(
                {
                    "messages": [
                        {"role": "system", "content": system},
                        {"role": "user", "content": user},
                        {"role": "assistant", "content": answer},
                    ],
                    "task": "intent",
                    "dialogue_id": d.id,
                    "perspective": turn.speaker,
                    "culture": d.culture,
                    "turn": i,
                }
            )
    atomic_write_text(out / "train.jsonl", dumps_lines(rows).decode("utf-8") if rows else "")
    conv = sum(1 for r in rows if r["task"] == "conversation")
    return {"dialogues": len(dialogues), "conversation": conv, "intent": len(rows) - conv, "missing_intents": missing}
