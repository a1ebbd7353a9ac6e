"""The command line: the contract commands and one-line errors without tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from scene_sim.cli import main

REPO = Path(__file__).resolve().parents[1]
SCENARIO = "bug_report__concise_answer_norm__address_explicit__silent_ignore__p1"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "scene_sim.cli", *args], cwd=REPO, capture_output=True, text=True)


def test_taxonomy_json_is_the_contract_object():
    res = _cli("taxonomy", "--json")
    assert res.returncode == 0
    data = json.loads(res.stdout)
    assert list(data) == ["events", "norms", "elicitors", "sanctions", "precedent", "cartesian", "valid"]
    assert data["events"] == 13 and data["norms"] == 14 and data["cartesian"] == 15288


def test_run_writes_a_contract_run_directory(tmp_path):
    out = tmp_path / "run"
    code = main(
        [
            "run",
            "--scenario",
            SCENARIO,
            "--subject",
            "scripted/learner",
            "--personas",
            "scripted",
            "--orchestrator",
            "scripted",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0
    run = json.loads((out / "run.json").read_text())
    assert run["spec"]["models"]["subject"] == "scripted/learner"
    (episode,) = list((out / "episodes").glob("*.jsonl"))
    events = [json.loads(x) for x in episode.read_text().splitlines()]
    assert events[0]["kind"] == "episode_start" and events[-1]["kind"] == "episode_end"
    labels = json.loads((out / "labels" / (episode.stem + ".json")).read_text())
    assert {"turn_labels", "episode_metrics", "fidelity"} <= set(labels)
    header = (out / "episodes.csv").read_text().splitlines()[0].split(",")
    assert header[:18] == [
        "episode_id",
        "subject",
        "event",
        "norm",
        "elicitor",
        "sanction",
        "precedent",
        "rep",
        "seed",
        "end_reason",
        "demonstrations",
        "breaches",
        "sanctions",
        "repairs",
        "repaired",
        "x_e",
        "y_e",
        "validity",
    ]
    metrics = json.loads((out / "metrics.json").read_text())
    assert "scripted/learner" in metrics["models"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["run", "--scenario", "bug_report__concise", "--subject", "scripted/learner", "--out", "X"],
            "unknown scenario 'bug_report__concise' (did you mean",
        ),
        (
            ["run", "--scenario", SCENARIO, "--subject", "antropic/claude-x", "--out", "X"],
            "valid providers: anthropic, google, openai, hf, local, scripted",
        ),
        (
            ["run", "--scenario", SCENARIO, "--subject", "scripted/lerner", "--out", "X"],
            "unknown subject policy 'scripted/lerner' (did you mean 'learner'",
        ),
        (["run", "--subject", "scripted/learner", "--out", "X"], "the following arguments are required: --scenario"),
        (["sweep", "no/such/spec.toml", "--out", "X"], "no/such/spec.toml: spec file not found"),
        (["analyze", "no/such/run"], "no/such/run: no such run directory"),
        (["taxonomy", "--dir", "no/such/dir"], "events.json: file not found"),
    ],
)
def test_user_mistakes_give_one_line_and_no_traceback(args, expected, tmp_path):
    res = _cli(*[a.replace("X", str(tmp_path / "out")) for a in args])
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert expected in lines[0]
    assert "Traceback" not in res.stderr


def test_a_malformed_scenario_file_names_file_and_field(tmp_path):
    bad = json.loads((REPO / "worlds/scene/scenarios" / f"{SCENARIO}.json").read_text())
    bad["scaffold"]["transcript"]["elicitor_turn"]["actor"] = "Nobody"
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    res = _cli("run", "--scenario", str(path), "--subject", "scripted/learner", "--out", str(tmp_path / "o"))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert f"{path}: " in res.stderr and "elicitor_turn.actor: 'Nobody' is not in the cast" in res.stderr
    broken = tmp_path / "broken.json"
    broken.write_text('{"id": "x", ')
    res = _cli("run", "--scenario", str(broken), "--subject", "scripted/learner", "--out", str(tmp_path / "o"))
    assert res.returncode == 2 and f"{broken}: invalid JSON" in res.stderr


def test_a_leaking_scaffold_is_rejected(tmp_path):
    bad = json.loads((REPO / "worlds/scene/scenarios" / f"{SCENARIO}.json").read_text())
    bad["scaffold"]["channel"]["description"] += " Keep it short: one line answers only."
    path = tmp_path / "leak.json"
    path.write_text(json.dumps(bad))
    res = _cli("run", "--scenario", str(path), "--subject", "scripted/learner", "--out", str(tmp_path / "o"))
    assert res.returncode == 2 and "hints at the norm" in res.stderr


def test_schema_command_exports_json_schemas(tmp_path):
    assert main(["schema", "--out", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "scenario_v1.schema.json").read_text())
    assert "scaffold" in doc["properties"] and "hidden" in doc["properties"]
    assert (tmp_path / "scaffold_v1.schema.json").exists()
