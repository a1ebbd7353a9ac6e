"""The defensive parsers of the judge, the intent writer and the adaptation checks; the discard rule."""

from __future__ import annotations

import json

import pytest

from scene_sim.studies.clca.adapt import check_adapted
from scene_sim.studies.clca.cultures import load_cultures
from scene_sim.studies.clca.intents import parse_intent
from scene_sim.studies.clca.judge import keep, parse_judgement
from scene_sim.studies.clca.policies import scripted_adapt
from scene_sim.studies.clca.records import Choice, MetaJudgement
from scene_sim.studies.clca.tasks import load_tasks


@pytest.mark.parametrize(
    ("kind", "text", "expected"),
    [
        ("culture", "Culture alignment: 2\nConfidence: 1", {"choice": "not aligned", "confidence": "very confident"}),
        (
            "culture",
            "**Culture alignment:** aligned to the culture\nConfidence: confident",
            {"choice": "aligned", "confidence": "confident"},
        ),
        ("quality", "Quality: 1\n\nConfidence: 3", {"choice": "good", "confidence": "not sure"}),
        ("quality", "quality: <2>\nconfidence: 2.", {"choice": "bad", "confidence": "confident"}),
    ],
)
def test_parse_step1(kind: str, text: str, expected: dict[str, str]) -> None:
    assert parse_judgement(kind, text) == (expected, None)


@pytest.mark.parametrize("text", ["", "Quality: 7\nConfidence: 1", "good, very confident", "Quality: 1"])
def test_parse_step1_refuses(text: str) -> None:
    value, problem = parse_judgement("quality", text)
    assert value is None and problem


def test_parse_meta_with_critic() -> None:
    value, _ = parse_judgement("meta", "Meta label: 2\nConfidence: 1\nCritic: It loops.\nIt ends badly.")
    assert value == {"label": "bad", "confidence": "very confident", "critic": "It loops.\nIt ends badly."}
    assert parse_judgement("meta", "Meta label: 1\nConfidence: 2")[0]["critic"] is None


@pytest.mark.parametrize(
    ("quality", "meta", "high", "kept"),
    [
        (("bad", "very confident"), ("good", "confident"), ("very confident",), False),
        (("bad", "confident"), ("good", "confident"), ("very confident",), True),
        (("bad", "confident"), ("good", "confident"), ("very confident", "confident"), False),
        (("good", "very confident"), ("bad", "very confident"), ("very confident",), False),
        (("good", "not sure"), ("bad", "not sure"), ("very confident", "confident"), True),
        ((None, None), (None, None), ("very confident",), True),
    ],
)
def test_discard_rule(quality: tuple, meta: tuple, high: tuple, kept: bool) -> None:
    q = Choice(choice=quality[0], confidence=quality[1])
    m = MetaJudgement(label=meta[0], confidence=meta[1], critic=None)
    assert keep(q, m, high) is kept


@pytest.mark.parametrize(
    ("text", "intent", "reason"),
    [
        ("INTENT: Offering help.", "Offering help.", None),
        (
            "INTENT: Offering help.\nIn China, helping elders is expected.",
            "Offering help.",
            "In China, helping elders is expected.",
        ),
        ("Intent: Thanking him. Reason: gratitude is customary.", "Thanking him.", "gratitude is customary."),
        ("INTENT: Greeting.\nReason: not sure", "Greeting.", None),
        ("Sure!\n**INTENT:** Closing the talk.\nN/A", "Closing the talk.", None),
    ],
)
def test_parse_intent(text: str, intent: str, reason: str | None) -> None:
    assert parse_intent(text) == ({"intent": intent, "cultural_reason": reason}, None)


@pytest.mark.parametrize("text", ["", "The speaker greets.", "INTENT: {intent}", "INTENT:   "])
def test_parse_intent_refuses(text: str) -> None:
    value, problem = parse_intent(text)
    assert value is None and problem


def test_adaptation_checks() -> None:
    task = load_tasks()[0]
    culture = load_cultures()["Japan"]
    good = json.loads(scripted_adapt(task, culture, seed=1))
    scenario, problem = check_adapted(task, culture, good)
    assert problem is None and scenario is not None
    assert scenario.id == "japan-task01" and scenario.source_id == "task01"
    assert {p.name for p in scenario.participants}.isdisjoint({p.name for p in task.participants})
    same = {**good, "participants": [p.model_dump() for p in task.participants]}
    assert "names must be changed" in check_adapted(task, culture, same)[1]
    one = {**good, "participants": good["participants"][:1]}
    assert "exactly two" in check_adapted(task, culture, one)[1]
    nosecret = {**good, "participants": [good["participants"][0], {**good["participants"][1], "secret": ""}]}
    assert "secret" in check_adapted(task, culture, nosecret)[1]
    assert check_adapted(task, culture, ["not", "an", "object"])[1] == "expected a JSON object"
