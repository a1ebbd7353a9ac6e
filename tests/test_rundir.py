"""The run directory's episode files: whatever an episode holds, its log is written whole and reads back."""

from __future__ import annotations

import asyncio
import json

import numpy as np

from scene_sim.events import iter_event_dicts
from scene_sim.rundir import RunDir


def _events() -> list[dict]:
    return [
        {"seq": 0, "turn": 0, "kind": "episode_start", "episode_id": "e1"},
        # a model answer decoded from JSON may hold a lone surrogate, which is not UTF-8
        {"seq": 1, "turn": 1, "kind": "action", "actor": "A", "content": "half an emoji \ud83d here"},
        {"seq": 2, "turn": 1, "kind": "action", "actor": "B", "content": "ünïcödé ✓ 🎉", "meta": {3: "int key"}},
        {"seq": 3, "turn": 1, "kind": "model_call", "latency_s": np.float64(0.25), "input_tokens": np.int64(12)},
        {"seq": 4, "turn": 1, "kind": "episode_end", "reason": "max_turns"},
    ]


def test_episode_log_round_trips_odd_content(tmp_path) -> None:
    run = RunDir(tmp_path)
    events = _events()
    path = run.write_episode("e1", events)
    back = list(iter_event_dicts(path))
    assert [e["seq"] for e in back] == [0, 1, 2, 3, 4]
    assert back[1]["content"] == events[1]["content"]
    assert back[2]["content"] == "ünïcödé ✓ 🎉" and back[2]["meta"] == {"3": "int key"}
    assert back[3]["latency_s"] == 0.25 and back[3]["input_tokens"] == 12
    assert all(json.loads(line) for line in path.read_text(encoding="utf-8").splitlines())  # standard JSON lines
    assert [p.name for p in run.episodes_dir.iterdir()] == ["e1.jsonl"]  # no temporary file left


def test_async_writer_writes_the_same_bytes(tmp_path) -> None:
    a, b = RunDir(tmp_path / "a"), RunDir(tmp_path / "b")
    a.write_episode("e1", _events())
    asyncio.run(b.awrite_episode("e1", _events()))
    assert a.episode_path("e1").read_bytes() == b.episode_path("e1").read_bytes()
    a.write_labels("e1", {"turn_labels": [{"turn_id": 1, "label": "breach"}]})
    asyncio.run(b.awrite_labels("e1", {"turn_labels": [{"turn_id": 1, "label": "breach"}]}))
    assert a.labels_by_turn("e1") == b.labels_by_turn("e1") == {1: "breach"}


def test_files_follow_the_umask(tmp_path) -> None:
    """Written atomically, yet readable by colleagues: 0644 under umask 022, 0600 under 077."""
    import os
    import stat

    from scene_sim.rundir import atomic_write_text

    old = os.umask(0o022)
    try:
        run = RunDir(tmp_path / "run")
        paths = [run.write_episode("e1", _events()), run.write_labels("e1", {"turn_labels": []})]
        run.write_run({"x": 1})
        paths.append(run.run_json)
        atomic_write_text(tmp_path / "run" / "metrics.json", "{}\n")
        paths.append(tmp_path / "run" / "metrics.json")
        assert {stat.S_IMODE(p.stat().st_mode) for p in paths} == {0o644}
        os.umask(0o077)
        atomic_write_text(tmp_path / "private.txt", "x")
        assert stat.S_IMODE((tmp_path / "private.txt").stat().st_mode) == 0o600
    finally:
        os.umask(old)
