"""Offline ``scripted`` policies for every CLCA role: adapter, role-players, judge, intent writer.

They follow the task and are deterministic per seed, so ``clca pipeline``
runs end to end without a model. Each policy writes the raw text a model
would (JSON for the adapter, the Table 24 / 23 / 22 schemas for the judge
and intent writer), which the step then parses with its real parser.

The role-players see only their own view (own goal and secret, the other's
public profile) and never voice their secret. One dialogue in five (by
seed) degenerates into repeating its last lines, the failure the quality
judgement is for; the scripted judge detects repetition from the text, so
the offline filter drops those and retention is below 100 %.
"""

from __future__ import annotations

import json
import random
from typing import Any

from scene_sim.studies.clca.cultures import Culture
from scene_sim.studies.clca.records import Participant, Task, Turn

__all__ = [
    "repeats_near_end",
    "scripted_adapt",
    "scripted_intent",
    "scripted_judge",
    "scripted_roleplay",
]


def _aim(goal: str) -> str:
    text = goal.strip().rstrip(".")
    return text[:1].lower() + text[1:]


def scripted_adapt(task: Task, culture: Culture, seed: int) -> str:
    """The adapted task as JSON text: culture names by gender, a place in the culture, names replaced throughout."""
    rng = random.Random(seed)
    used: set[str] = set()
    mapping: dict[str, str] = {}
    for p in task.participants:
        pool = list(culture.names.get(p.gender.lower(), ())) or [n for ns in culture.names.values() for n in ns]
        pool = [n for n in pool if n not in used and n != p.name] or [f"{culture.adjective or culture.name} {p.name}"]
        new = rng.choice(pool)
        used.add(new)
        mapping[p.name] = new
        mapping[p.name.split()[0]] = new.split()[0]

    def swap(text: str) -> str:
        for old in sorted(mapping, key=len, reverse=True):
            text = text.replace(old, mapping[old])
        return text

    place = rng.choice(culture.places) if culture.places else culture.name
    setting = f"{swap(task.setting).rstrip('.')}, in {place}."
    parts = [
        {**p.model_dump(), "name": mapping[p.name], "goal": swap(p.goal), "secret": swap(p.secret)}
        for p in task.participants
    ]
    return json.dumps({"setting": setting, "participants": parts}, ensure_ascii=False)


def scripted_roleplay(
    me: Participant,
    other_name: str,
    transcript: list[tuple[str, str]],
    *,
    can_leave: bool,
    seed: int,
) -> tuple[str, str]:
    """The next move of a scripted role-player: ``("speak", text)`` or ``("leave", "")``.

    The dialogue's length (4 to 8 turns) and whether it degenerates come from
    ``seed``, which both role-players share (the episode's seed).
    """
    rng = random.Random(seed)
    length = rng.randint(4, 8)
    degenerate = rng.random() < 0.2
    n = len(transcript)
    mine = [text for speaker, text in transcript if speaker == me.name]
    other = other_name.split()[0]
    if can_leave and n >= length:
        return "leave", ""
    if degenerate and n >= 3 and mine:
        return "speak", mine[-1]  # the loop the quality judgement catches
    aim = _aim(me.goal)
    if n == 0:
        return "speak", f"Hello {other}, do you have a moment? There is something I would like to talk about."
    if n == 1:
        return "speak", f"Of course, {other}. What is on your mind? Honestly, I was hoping to {aim}."
    if n + 1 >= length:
        return "speak", f"Thank you for talking this through with me, {other}. Let us leave it there for today."
    lines = [
        f"I see what you mean, {other}. Still, I would really like to {aim}.",
        "Could we find a way that works for both of us?",
        f"As a {me.occupation}, I have to think about this carefully.",
        "That sounds fair. What would you suggest we do next?",
        f"I appreciate your patience, {other}. Let me be clear about what matters to me: I want to {aim}.",
    ]
    return "speak", lines[(n + rng.randrange(len(lines))) % len(lines)]


def repeats_near_end(turns: list[Turn], window: int = 3) -> bool:
    """Whether one of the last ``window`` turns repeats an earlier turn word for word."""
    texts = [t.text.strip() for t in turns]
    return any(texts[i] and texts[i] in texts[:i] for i in range(max(1, len(texts) - window), len(texts)))


def scripted_judge(kind: str, turns: list[Turn], *, seed: int, step1: dict[str, Any] | None = None) -> str:
    """The judge's raw answer for ``kind`` (``culture``, ``quality`` or ``meta``), in the prompt's schema.

    An oracle of the text: quality is bad (very confident) when the dialogue
    repeats itself near the end or has fewer than two turns; the meta label
    follows the quality judgement.
    """
    rng = random.Random(seed)
    bad = len(turns) < 2 or repeats_near_end(turns)
    if kind == "culture":
        return f"Culture alignment: 1\nConfidence: {rng.choice((1, 2))}"
    if kind == "quality":
        return "Quality: 2\nConfidence: 1" if bad else f"Quality: 1\nConfidence: {rng.choice((1, 2))}"
    quality_bad = bool(step1 and step1.get("quality", {}).get("choice") == "bad")
    if bad or quality_bad:
        return "Meta label: 2\nConfidence: 1\nCritic: The dialogue repeats itself towards the end."
    return "Meta label: 1\nConfidence: 2\nCritic: The judgements are consistent with the dialogue."


def scripted_intent(turns: list[Turn], index: int, culture: Culture, *, seed: int) -> str:
    """The intent writer's raw answer for turn ``index`` in Table 22's schema; a cultural reason for some turns."""
    rng = random.Random(seed)
    turn = turns[index]
    others = [t.speaker for t in turns if t.speaker != turn.speaker]
    other = others[0].split()[0] if others else "the other participant"
    if index == 0:
        intent = f"Greeting {other} and opening the conversation."
    elif index == len(turns) - 1:
        intent = "Signalling the end of the conversation politely."
    elif turn.text.endswith("?"):
        intent = f"Inviting {other} to propose a solution."
    else:
        intent = f"Pursuing {turn.speaker.split()[0]}'s own goal while keeping the relationship."
    if rng.random() < 0.4:
        trait = culture.hofstede.split(",")[0].strip()
        reason = (
            f"In {culture.adjective or culture.name} culture, which is {trait}, politeness towards {other} matters."
        )
        return f"INTENT: {intent}\n{reason}"
    return f"INTENT: {intent}"
