"""The role-play model: alternating turns, seeded first speaker, leave, max turns; privacy from the logged prompts."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from scene_sim.cli import main
from scene_sim.events import iter_event_dicts
from scene_sim.studies.clca.adapt import check_adapted
from scene_sim.studies.clca.cultures import load_cultures
from scene_sim.studies.clca.policies import scripted_adapt
from scene_sim.studies.clca.records import Scenario
from scene_sim.studies.clca.roleplay import RoleplayModel, RoleplaySettings
from scene_sim.studies.clca.tasks import load_tasks


def _scenario(index: int = 0, culture: str = "Mexico") -> Scenario:
    task = load_tasks()[index]
    c = load_cultures()[culture]
    scenario, problem = check_adapted(task, c, json.loads(scripted_adapt(task, c, seed=index)))
    assert problem is None and scenario is not None
    return scenario


def _play(scenario: Scenario, seed: int, **settings: int) -> RoleplayModel:
    model = RoleplayModel(
        scenario,
        load_cultures()[scenario.culture],
        "scripted",
        settings=RoleplaySettings(**settings),
        episode_id=f"{scenario.id}-r0",
        seed=seed,
    )
    model.run_model()
    return model


def test_turns_alternate_and_end_by_leave() -> None:
    model = _play(_scenario(), seed=3)
    d = model.dialogue()
    assert d.end_reason == "leave"
    speakers = [t.speaker for t in d.turns]
    assert len(speakers) >= 2
    assert all(a != b for a, b in itertools.pairwise(speakers))
    assert speakers[0] == model.order[0].name
    events = model.result().events
    assert events[0]["kind"] == "episode_start" and events[0]["scenario_id"] == d.scenario_id
    assert events[0]["first_speaker"] == speakers[0]
    assert events[-1]["kind"] == "episode_end" and events[-1]["reason"] == "leave"
    leave = [e for e in events if e["kind"] == "action" and e["meta"].get("leave")]
    assert len(leave) == 1 and leave[0]["action"] == "no-op"


def test_max_turns_stops_the_dialogue() -> None:
    d = _play(_scenario(), seed=3, max_turns=3).dialogue()
    assert d.end_reason == "max_turns" and len(d.turns) == 3


def test_first_speaker_is_a_seeded_choice() -> None:
    scenario = _scenario()
    firsts = {seed: _play(scenario, seed).order[0].name for seed in range(12)}
    assert len(set(firsts.values())) == 2  # both participants open some dialogues
    assert all(_play(scenario, seed).order[0].name == name for seed, name in list(firsts.items())[:3])


def test_leave_not_offered_before_min_turns() -> None:
    model = _play(_scenario(), seed=3)
    prompts = [e for e in model.result().events if e["kind"] == "prompt"]
    assert 'available action types are "speak".' in prompts[0]["messages"][1]["content"]
    assert '"speak" and "leave"' in prompts[2]["messages"][1]["content"]


def test_a_role_player_never_sees_the_others_goal_or_secret(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert (
        main(
            [
                "clca",
                "adapt",
                "--cultures",
                "China,UK",
                "--limit",
                "6",
                "--model",
                "scripted",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    assert main(["clca", "roleplay", str(out), "--model", "scripted", "--reps", "1", "--quiet"]) == 0
    scenarios = {s["id"]: Scenario.model_validate(s) for s in map(json.loads, (out / "scenarios.jsonl").open())}
    checked = 0
    for path in sorted((out / "episodes").glob("*.jsonl")):
        events = list(iter_event_dicts(path))
        scenario = scenarios[events[0]["scenario_id"]]
        by_name = {p.name: p for p in scenario.participants}
        said = {n: [e["content"] for e in events if e["kind"] == "action" and e["actor"] == n] for n in by_name}
        for e in events:
            if e["kind"] != "prompt":
                continue
            me = by_name[e["actor"]]
            other = next(p for n, p in by_name.items() if n != me.name)
            text = "\n".join(m["content"] for m in e["messages"])
            assert me.goal in text and me.secret in text  # the prompt does carry the private part: its own
            for line in said[other.name]:  # what the other said aloud is shared; nothing else of theirs is
                text = text.replace(line, "")
            assert other.goal not in text, (path.name, e["seq"])
            assert other.secret not in text, (path.name, e["seq"])
            assert f"{other.name}'s goal: Unknown" in text
            checked += 1
    assert checked > 40


@pytest.mark.slow
def test_local_model_roleplays(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    out = tmp_path / "run"
    assert (
        main(
            [
                "clca",
                "adapt",
                "--cultures",
                "Japan",
                "--limit",
                "1",
                "--model",
                "scripted",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    code = main(
        [
            "clca",
            "roleplay",
            str(out),
            "--model",
            "local",
            "--reps",
            "1",
            "--max-turns",
            "2",
            "--quiet",
            "--cache",
            "off",
        ]
    )
    assert code == 0
    (dialogue,) = [json.loads(line) for line in (out / "dialogues.jsonl").open()]
    assert dialogue["end_reason"] in ("max_turns", "leave", "parse_failure")
    assert 1 <= len(dialogue["turns"]) <= 2
    events = list(iter_event_dicts(out / "episodes" / f"{dialogue['id']}.jsonl"))
    calls = [e for e in events if e["kind"] == "model_call"]
    assert calls and all(c["error"] is None for c in calls)
