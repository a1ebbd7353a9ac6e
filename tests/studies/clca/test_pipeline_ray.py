"""``clca pipeline --executor ray``: the same folder as ``local``, every record once after a kill -9."""

from __future__ import annotations

import contextlib
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
from scene_sim.errors import SceneSimError
from scene_sim.studies.clca.pipeline import run_pipeline
from scene_sim.studies.clca.steps import Runner

ROOT = Path(__file__).resolve().parents[3]
SMOKE = ROOT / "experiments" / "clca" / "offline_smoke.toml"
FILES = ("scenarios", "rejected", "dialogues", "judgements", "intents", "train")


def _snapshot(out: Path) -> dict[str, object]:
    """Every record file as its sorted lines (Ray stores in finishing order), every episode log as bytes."""
    snap: dict[str, object] = {}
    for name in FILES:
        path = out / f"{name}.jsonl"
        snap[name] = sorted(path.read_text().splitlines()) if path.exists() else None
    snap["episodes"] = {p.name: p.read_bytes() for p in sorted((out / "episodes").glob("*.jsonl"))}
    snap["table9"] = (out / "table9.json").read_text()
    return snap


def test_unknown_executor_and_bad_workers_are_one_line_errors(tmp_path: Path, capsys) -> None:
    with pytest.raises(SceneSimError, match="--executor must be one of local, ray, got 'dask'"):
        Runner("dask")
    with pytest.raises(SceneSimError, match="--workers must be at least 1"):
        run_pipeline(SMOKE, tmp_path / "run", executor="ray", workers=0)
    assert not (tmp_path / "run").exists()  # refused before anything is written
    assert main(["clca", "pipeline", str(SMOKE), "--out", str(tmp_path / "x"), "--workers", "0"]) == 2
    assert "--workers must be at least 1" in capsys.readouterr().err


@pytest.mark.slow
def test_ray_pipeline_writes_the_folder_local_writes(tmp_path: Path, cluster: str) -> None:
    local, ray = tmp_path / "local", tmp_path / "ray"
    assert main(["clca", "pipeline", str(SMOKE), "--out", str(local), "--quiet"]) == 0
    on_ray = ["--executor", "ray", "--workers", "2"]
    assert main(["clca", "pipeline", str(SMOKE), "--out", str(ray), "--quiet", *on_ray]) == 0
    assert _snapshot(ray) == _snapshot(local)
    run = json.loads((ray / "run.json").read_text())
    assert set(run["pipeline"]) >= {"adapt", "roleplay", "filter", "intents", "export"}
    assert all(run["pipeline"][s]["failed"] == 0 for s in ("adapt", "roleplay", "filter", "intents"))


@pytest.mark.slow
def test_killed_ray_driver_resumes_to_every_record_once(tmp_path: Path, cluster: str) -> None:
    spec = tmp_path / "spec.toml"
    spec.write_text(SMOKE.read_text().replace("limit = 6", "limit = 24"))
    local, out = tmp_path / "local", tmp_path / "ray"
    assert main(["clca", "pipeline", str(spec), "--out", str(local), "--quiet"]) == 0
    cmd = [sys.executable, "-m", "scene_sim.cli", "clca", "pipeline", str(spec), "--out", str(out), "--quiet"]
    cmd += ["--executor", "ray", "--workers", "2"]
    env = {**os.environ, "RAY_ADDRESS": cluster}
    dialogues = out / "dialogues.jsonl"
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if dialogues.exists() and dialogues.read_bytes().count(b"\n") >= 30:
                break
            time.sleep(0.01)
        assert proc.poll() is None, "the pipeline ended before the kill; make it bigger"
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    assert not (out / "table9.json").exists()
    kept = dialogues.read_bytes().count(b"\n")
    assert 30 <= kept < 2 * 5 * 24

    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-2000:]
    for name, key in (("scenarios", "id"), ("dialogues", "id"), ("judgements", "dialogue_id"), ("intents", "id")):
        ids = Counter(json.loads(line)[key] for line in (out / f"{name}.jsonl").read_text().splitlines())
        assert ids and max(ids.values()) == 1, f"{name}: an item stored twice"
    assert list(out.rglob(".tmp-*")) == []
    assert _snapshot(out) == _snapshot(local)
