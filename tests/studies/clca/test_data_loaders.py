"""Cultures and tasks as data: the shipped files, the Sotopia loader, and one clear line for a bad file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scene_sim.cli import main
from scene_sim.errors import SceneSimError
from scene_sim.studies.clca.cultures import load_cultures, resolve_cultures
from scene_sim.studies.clca.tasks import load_tasks

# Seed 004 Tables 17 and 18, copied from the paper's text (the "British" row is our "UK").
TABLE17 = {
    "China": "highly hierarchical, moderately collective, moderate motivation for achievement and success, "
    "moderately risk-taking, highly pragmatic, highly restrained",
    "Mexico": "highly hierarchical, moderately collective, moderate motivation for achievement and success, "
    "high uncertainty avoidance, highly normative, highly indulgent",
    "Japan": "moderately hierarchical, moderately individualistic, high motivation for achievement and success, "
    "high uncertainty avoidance, highly pragmatic, moderately restrained",
    "Germany": "moderately equal, highly individualistic, moderate motivation for achievement and success, "
    "moderately uncertainty avoidance, moderately pragmatic, moderately restrained",
    "UK": "moderately equal, highly individualistic, moderate motivation for achievement and success, "
    "moderately risk-taking, moderately pragmatic, moderately indulgent",
}
TABLE18 = {
    "China": "little survival values, moderately secular",
    "Mexico": "little self-expression values, moderately traditional",
    "Japan": "moderate self-expression values, uttermost secular",
    "Germany": "uttermost self-expression values, moderately secular",
    "UK": "uttermost self-expression values, moderately secular",
}


def test_five_cultures_verbatim() -> None:
    cultures = load_cultures()
    assert set(cultures) == set(TABLE17)
    for name, c in cultures.items():
        assert c.hofstede == TABLE17[name]
        assert c.inglehart_welzel == TABLE18[name]
    assert [c.name for c in resolve_cultures("british,JPN", cultures)] == ["UK", "Japan"]
    with pytest.raises(SceneSimError, match="unknown culture 'Atlantis'"):
        resolve_cultures("Atlantis", cultures)


def test_builtin_bank_has_40_complete_two_person_tasks() -> None:
    tasks = load_tasks("builtin")
    assert len(tasks) >= 40
    assert len({t.id for t in tasks}) == len(tasks)
    for t in tasks:
        assert len(t.participants) == 2
        a, b = t.participants
        assert a.name != b.name
        assert all(p.goal and p.secret and p.occupation and p.gender for p in t.participants)
    assert len(load_tasks("builtin", limit=3)) == 3


def test_sotopia_profiles_load(tmp_path: Path) -> None:
    data = {
        "environments": [
            {
                "pk": "env1",
                "codename": "borrow",
                "scenario": "Two friends talk about a loan.",
                "agent_goals": ["Get the money back <extra_info>politely</extra_info>", "Delay repaying"],
            }
        ],
        "agents": [
            {
                "first_name": "Anthony",
                "last_name": "Smith",
                "age": 40,
                "gender": "Man",
                "occupation": "chef",
                "secret": "He is broke",
            },
            {
                "first_name": "Mia",
                "last_name": "Ng",
                "age": 33,
                "gender": "Woman",
                "occupation": "pilot",
                "secret": "She lost her job",
            },
        ],
    }
    path = tmp_path / "sotopia.json"
    path.write_text(json.dumps(data))
    (task,) = load_tasks(path)
    assert task.id == "env1"
    assert [p.name for p in task.participants] == ["Anthony Smith", "Mia Ng"]
    assert task.participants[0].goal == "Get the money back politely"
    assert task.participants[1].secret == "She lost her job"


@pytest.mark.parametrize(
    ("kind", "content", "expected"),
    [
        ("tasks", {"tasks": [{"id": "t", "setting": "x", "participants": [{"name": "A"}]}]}, "tasks[0].participants"),
        (
            "tasks",
            {
                "tasks": [
                    {
                        "id": "t",
                        "setting": "x",
                        "participants": [
                            {"name": "A", "age": 3, "gender": "f", "occupation": "o", "goal": "g", "secret": "s"},
                            {"name": "B", "age": 3, "gender": "f", "occupation": "o", "goal": "g"},
                        ],
                    }
                ]
            },
            "tasks[0].participants[1].secret",
        ),
        ("tasks", "{not json", "not valid JSON"),
        ("cultures", {"cultures": [{"name": "X", "hofstede": "h"}]}, "cultures[0].inglehart_welzel"),
        ("cultures", {"cultures": []}, "cultures: expected a non-empty list"),
    ],
)
def test_bad_file_gets_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str, content: object, expected: str
) -> None:
    bad = tmp_path / f"bad_{kind}.json"
    bad.write_text(content if isinstance(content, str) else json.dumps(content))
    flag = "--tasks" if kind == "tasks" else "--cultures-file"
    code = main(["clca", "adapt", flag, str(bad), "--model", "scripted", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert str(bad) in err and expected in err
    assert "Traceback" not in err
