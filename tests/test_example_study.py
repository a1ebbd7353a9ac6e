"""The example study of docs/design.md runs on the core without touching it."""

from __future__ import annotations

import asyncio
import itertools
import sys
from pathlib import Path

import pytest

from scene_sim.cli import main
from scene_sim.events import iter_event_dicts

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "minimal_study"


@pytest.fixture(scope="module")
def example():
    sys.path.insert(0, str(EXAMPLE))
    try:
        import minimal_study

        yield minimal_study
    finally:
        sys.path.remove(str(EXAMPLE))


def test_example_study_is_small(example):
    assert len(Path(example.__file__).read_text().splitlines()) < 80


def test_two_agents_alternate_with_a_full_event_log(example):
    model = example.TakeTurns(seed=3)
    result = asyncio.run(model.arun())
    kinds = [e["kind"] for e in result.events]
    assert kinds[0] == "episode_start" and kinds[-1] == "episode_end"
    assert [e["seq"] for e in result.events] == list(range(len(result.events)))
    start = result.events[0]
    assert start["first"] in ("Ada", "Bo") and start["seed"] == 3 and start["models"] == {"speakers": "scripted"}
    actions = [e for e in result.events if e["kind"] == "action"]
    prompts = [e for e in result.events if e["kind"] == "prompt"]
    assert len(prompts) == len(actions) and all(p["messages"][0]["role"] == "system" for p in prompts)
    speakers = [a["actor"] for a in actions]
    assert speakers[0] == start["first"]
    assert all(a != b for a, b in itertools.pairwise(speakers))  # strictly alternating
    assert [a["action"] for a in actions].count("message") == 6  # three lines each, then two silent turns
    assert result.end_reason == "silent" and result.ticks == 8
    # the seed decides who opens, and nothing else varies
    firsts = {asyncio.run(example.TakeTurns(seed=s).arun()).events[0]["first"] for s in range(8)}
    assert firsts == {"Ada", "Bo"}


def test_a_model_driven_speaker_goes_through_the_managed_backend(example):
    model = example.TakeTurns(model="fake/echo", seed=1)
    result = asyncio.run(model.arun())
    calls = [e for e in result.events if e["kind"] == "model_call"]
    assert calls and all(c["model"] == "fake/echo" and c["error"] is None for c in calls)
    assert model.context is not None and model.context.accounting()["total"]["calls"] == len(calls)
    asyncio.run(model.context.aclose())


def test_the_study_adds_its_commands_without_editing_the_core(example, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["take-turns", "run", "--seed", "2", "--out", str(out)], studies=[example.study]) == 0
    files = list((out / "episodes").glob("*.jsonl"))
    assert len(files) == 1
    events = list(iter_event_dicts(files[0]))
    assert events[-1]["kind"] == "episode_end"
    assert "take-turns-s2: silent after 8 turns" in capsys.readouterr().out
    assert main(["take-turns"], studies=[example.study]) == 2  # a group alone prints its help
