"""``clca pipeline`` offline: every record as contracted, train.jsonl loads as a chat dataset, resume after kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from scene_sim.cli import main

ROOT = Path(__file__).resolve().parents[3]
SMOKE = ROOT / "experiments" / "clca" / "offline_smoke.toml"
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("clca") / "run"
    assert main(["clca", "pipeline", str(SMOKE), "--out", str(out), "--quiet"]) == 0
    return out


def test_records_as_contracted(run: Path) -> None:
    scenarios = _lines(run / "scenarios.jsonl")
    dialogues = _lines(run / "dialogues.jsonl")
    judgements = _lines(run / "judgements.jsonl")
    intents = _lines(run / "intents.jsonl")
    assert len(scenarios) == 5 * 6 and len(dialogues) == 2 * len(scenarios)
    for s in scenarios:
        assert {"id", "culture", "source_id", "setting", "participants"} <= s.keys()
        assert len(s["participants"]) == 2
        for p in s["participants"]:
            assert {"name", "age", "gender", "occupation", "goal", "secret"} <= p.keys()
    ids = {s["id"] for s in scenarios}
    for d in dialogues:
        assert {"id", "scenario_id", "culture", "rep", "turns", "end_reason"} <= d.keys()
        assert d["scenario_id"] in ids and all(set(t) == {"speaker", "text"} for t in d["turns"])
        events = _lines(run / "episodes" / f"{d['id']}.jsonl")
        assert [e["seq"] for e in events] == list(range(len(events)))
        assert events[0]["kind"] == "episode_start" and events[0]["scenario_id"] == d["scenario_id"]
        assert events[-1]["kind"] == "episode_end" and events[-1]["reason"] == d["end_reason"]
        prompts = [e for e in events if e["kind"] == "prompt"]
        assert prompts and all(e["actor"] and e["messages"][0]["role"] == "system" for e in prompts)
        spoken = [e["content"] for e in events if e["kind"] == "action" and e["action"] == "message"]
        assert spoken == [t["text"] for t in d["turns"]]
    assert Counter(j["dialogue_id"] for j in judgements) == Counter(d["id"] for d in dialogues)
    for j in judgements:
        assert set(j["culture_alignment"]) >= {"choice", "confidence"} and set(j["quality"]) >= {"choice", "confidence"}
        assert set(j["meta"]) >= {"label", "confidence", "critic"} and isinstance(j["kept"], bool)
        assert all(j["raw"][k] for k in ("culture_alignment", "quality", "meta")) and j["parse_failures"] == 0
    kept = {j["dialogue_id"]: j for j in judgements if j["kept"]}
    dropped = {j["dialogue_id"] for j in judgements if not j["kept"]}
    assert kept and dropped  # the scripted loops are caught
    for j in judgements:
        bad = (j["quality"]["choice"] == "bad" and j["quality"]["confidence"] == "very confident") or (
            j["meta"]["label"] == "bad" and j["meta"]["confidence"] == "very confident"
        )
        assert j["kept"] is not bad
    turns = {d["id"]: d["turns"] for d in dialogues}
    assert sorted((i["dialogue_id"], i["turn"]) for i in intents) == sorted(
        (d, k) for d in kept for k in range(len(turns[d]))
    )
    for i in intents:
        assert i["speaker"] == turns[i["dialogue_id"]][i["turn"]]["speaker"] and i["intent"]
    reasons = [i["cultural_reason"] for i in intents]
    assert None in reasons and any(reasons)
    t9 = json.loads((run / "table9.json").read_text())
    assert t9["total"]["scenarios"] == 30 and t9["total"]["kept"] == len(kept)
    assert t9["total"]["retention"] == round(len(kept) / len(judgements), 4)
    share = 100 * sum(r is not None for r in reasons) / len(reasons)
    assert t9["total"]["cultural_intents_pct"] == round(share, 2)
    assert json.loads((run / "run.json").read_text())["spec"]["name"] == "clca-offline-smoke"


def test_train_jsonl_as_contracted(run: Path) -> None:
    rows = _lines(run / "train.jsonl")
    dialogues = {d["id"]: d for d in _lines(run / "dialogues.jsonl")}
    scenarios = {s["id"]: s for s in _lines(run / "scenarios.jsonl")}
    kept = {j["dialogue_id"] for j in _lines(run / "judgements.jsonl") if j["kept"]}
    assert {r["dialogue_id"] for r in rows} == kept
    for did in kept:
        d = dialogues[did]
        conv = [r for r in rows if r["dialogue_id"] == did and r["task"] == "conversation"]
        assert sorted(r["perspective"] for r in conv) == sorted({t["speaker"] for t in d["turns"]})
        for r in conv:
            me = r["perspective"]
            other = next(p for p in scenarios[d["scenario_id"]]["participants"] if p["name"] != me)
            mine = next(p for p in scenarios[d["scenario_id"]]["participants"] if p["name"] == me)
            assert r["messages"][0]["role"] == "system"
            assert mine["goal"] in r["messages"][0]["content"]
            assert other["secret"] not in r["messages"][0]["content"]
            assert [m["content"] for m in r["messages"] if m["role"] == "assistant"] == [
                t["text"] for t in d["turns"] if t["speaker"] == me
            ]
            assert [m["content"] for m in r["messages"] if m["role"] == "user"] == [
                t["text"] for t in d["turns"] if t["speaker"] != me
            ]
        intents = [r for r in rows if r["dialogue_id"] == did and r["task"] == "intent"]
        assert len(intents) == len(d["turns"])
        assert all([m["role"] for m in r["messages"]] == ["system", "user", "assistant"] for r in intents)


def test_train_jsonl_loads_with_datasets_and_a_chat_template(run: Path) -> None:
    datasets = pytest.importorskip("datasets")
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    ds = datasets.load_dataset("json", data_files=str(run / "train.jsonl"), split="train")
    assert set(ds.unique("task")) == {"conversation", "intent"}
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizers.Tokenizer(tokenizers.models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    )
    row = ds[0]
    text = tok.apply_chat_template(row["messages"], chat_template=CHAT_TEMPLATE, tokenize=False)
    assert text.startswith("<|system|>") and row["messages"][-1]["content"] in text


def test_rerun_skips_what_is_done(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = {p.name: p.read_bytes() for p in run.glob("*.jsonl")}
    assert main(["clca", "pipeline", str(SMOKE), "--out", str(run), "--quiet"]) == 0
    after = {p.name: p.read_bytes() for p in run.glob("*.jsonl")}
    assert before == after
    assert main(["clca", "pipeline", str(SMOKE), "--out", str(run), "--seed", "5", "--quiet"]) == 2
    assert "different spec" in capsys.readouterr().err


def _snapshot(out: Path) -> dict[str, object]:
    snap: dict[str, object] = {}
    for name in ("scenarios", "dialogues", "judgements", "intents", "train"):
        rows = _lines(out / f"{name}.jsonl")
        snap[name] = sorted(json.dumps(r, sort_keys=True) for r in rows)
    snap["episodes"] = {p.name: p.read_text() for p in sorted((out / "episodes").glob("*.jsonl"))}
    return snap


@pytest.mark.slow
def test_kill_9_then_resume_gives_the_same_result(tmp_path: Path) -> None:
    spec = tmp_path / "spec.toml"
    spec.write_text(SMOKE.read_text().replace("limit = 6", "limit = 30"))
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    cmd = [sys.executable, "-m", "scene_sim.cli", "clca", "pipeline", str(spec), "--quiet", "--out"]
    env = {**os.environ, "SCENE_SIM_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.Popen([*cmd, str(killed)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    dialogues = killed / "dialogues.jsonl"
    while time.monotonic() < deadline and proc.poll() is None:
        if dialogues.exists() and dialogues.read_bytes().count(b"\n") >= 20:
            break
        time.sleep(0.005)
    assert proc.poll() is None, "the pipeline finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "table9.json").exists()
    assert subprocess.run([*cmd, str(killed)], env=env, capture_output=True).returncode == 0
    assert subprocess.run([*cmd, str(clean)], env=env, capture_output=True).returncode == 0
    assert _snapshot(killed) == _snapshot(clean)
