"""``normgenesis generate --executor ray``: the same run directory as ``local``, kill -9 safe, one-line errors.

The cluster (``cluster`` in tests/conftest.py) runs in this test process: in-process runs find Ray
initialized, command-line runs join it through ``RAY_ADDRESS``, the way a driver joins a real cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from scene_sim.cli import main
from scene_sim.context import RunContext
from scene_sim.errors import SceneSimError
from scene_sim.jobs import JobsSummary
from scene_sim.studies.normgenesis.norms import load_bank
from scene_sim.studies.normgenesis.pipeline import _by_scenario, _in_dialogues, generate, plan_items

from .test_pipeline import assert_exactly_once, cfg

ROOT = Path(__file__).resolve().parents[3]

#: 12 scenarios, 36 dialogues: a few seconds of work even when slowed down
SMALL: dict[str, Any] = {"langs": ("en", "ko", "zh"), "categories": ("apology", "thanks", "respect", "leave")}


def _outputs(out: Path) -> dict[str, Any]:
    """Every file of a run directory but run.json: a JSONL file as its sorted lines, any other as its bytes.

    The executors store the same lines in another order (items finish in another order), so the
    lines are compared as a multiset; one file per item (the episode logs) byte for byte.
    """
    files: dict[str, Any] = {}
    for path in sorted(p for p in out.rglob("*") if p.is_file() and p.name != "run.json"):
        name = str(path.relative_to(out))
        files[name] = sorted(path.read_bytes().splitlines()) if path.parent == out else path.read_bytes()
    return files


def _run_json(out: Path) -> dict[str, Any]:
    """run.json without what names the run directory and the executor."""
    doc = json.loads((out / "run.json").read_text(encoding="utf-8"))
    for key in ("out", "executor", "workers"):
        doc["spec"].pop(key)
    return doc


def test_what_ray_cannot_run_is_refused_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for kw, message in [
        ({"executor": "dask"}, "--executor must be one of local, ray, got 'dask'"),
        ({"workers": 2}, "--workers needs --executor ray"),
        ({"executor": "ray", "workers": 0}, "--workers must be at least 1, got 0"),
    ]:
        with pytest.raises(SceneSimError) as err:
            cfg(tmp_path / "run", **kw).check()
        assert message in str(err.value) and "\n" not in str(err.value), kw
    # a context of your own holds backends that cannot travel to the workers; nothing is written
    with pytest.raises(SceneSimError, match="context of your own runs only with --executor local") as err:
        asyncio.run(generate(cfg(tmp_path / "run", executor="ray"), context=RunContext(cache_mode="off")))
    assert "\n" not in str(err.value) and not (tmp_path / "run").exists()
    for argv, message in [
        (["--executor", "dask"], "invalid choice: 'dask'"),
        (["--workers", "2"], "--workers needs --executor ray"),
        (["--executor", "ray", "--workers", "0"], "--workers must be at least 1"),
    ]:
        code = main(["normgenesis", "generate", "--encoder", "hash", "--out", str(tmp_path / "o"), *argv])
        err_text = capsys.readouterr().err
        assert code == 2 and message in err_text and "Traceback" not in err_text, (argv, err_text)
    assert not (tmp_path / "o").exists()


def test_a_ray_summary_over_scenarios_counts_dialogues_as_local_does(tmp_path: Path) -> None:
    items = plan_items(load_bank(), cfg(tmp_path, langs=("ko",), categories=("apology", "thanks", "respect")))
    groups = _by_scenario(items[1:])  # the first item done before: its scenario's group holds two
    assert [len(g) for g in groups] == [2, 3, 3] and all(len({it.scenario_id for it in g}) == 1 for g in groups)
    # a budget stop: the first group stored, the second lost with a worker, the last never started
    jobs = JobsSummary(planned=3, done=1, failed=1, budget_stopped=True, not_started=1, failures=["x: gone"])
    summary = _in_dialogues(jobs, groups, stored=2, already_done=1)
    assert (summary.planned, summary.done, summary.failed, summary.not_started) == (9, 2, 3, 3)
    assert summary.budget_stopped and summary.failures == ["x: gone"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "kw",
    [{"max_rounds": 1}, {"mode": "agents"}],
    ids=["generator-with-rejections", "agents-with-episode-logs"],
)
def test_ray_writes_the_same_run_directory_as_local(tmp_path: Path, cluster: str, kw: dict[str, Any]) -> None:
    local, remote = tmp_path / "local", tmp_path / "ray"
    here = asyncio.run(generate(cfg(local, **SMALL, **kw)))
    there = asyncio.run(generate(cfg(remote, **SMALL, **kw, executor="ray", workers=2)))
    assert (there.planned, there.dialogues, there.rejected) == (here.planned, here.dialogues, here.rejected)
    assert there.summary.done == here.summary.done == 36 and there.summary.failed == 0
    made, rejected = assert_exactly_once(remote, cfg(remote, **SMALL, **kw))
    assert made and (rejected or kw.get("mode") == "agents")
    assert _outputs(remote) == _outputs(local)
    assert _run_json(remote) == _run_json(local)  # the spec, the plan and the (merged) accounting


def _lines(out: Path) -> int:
    """Whole record lines written so far (a line torn by the kill is cut and redone on resume)."""
    return sum(p.read_bytes().count(b"\n") for p in (out / "dialogues.jsonl", out / "rejected.jsonl") if p.exists())


def _scenario_ids(out: Path) -> Counter[str]:
    """How often each scenario is in scenarios.jsonl (the ones the refinement passed)."""
    return Counter(json.loads(line)["id"] for line in (out / "scenarios.jsonl").read_text().splitlines())


@pytest.mark.slow
def test_killed_ray_driver_resumes_to_every_dialogue_once(tmp_path: Path, cluster: str) -> None:
    local = tmp_path / "local"
    asyncio.run(generate(cfg(local, **SMALL, max_rounds=1)))

    out = tmp_path / "ray"
    # 300 ms a scripted call, one scenario in flight per worker: about 3 s of work to kill in the middle of
    cmd = [sys.executable, "-m", "scene_sim.cli", "normgenesis", "generate", "--model", "scripted?latency_ms=300",
           "--langs", ",".join(SMALL["langs"]), "--categories", ",".join(SMALL["categories"]), "--max-rounds", "1",
           "--encoder", "hash", "--concurrency", "3",
           "--executor", "ray", "--workers", "2", "--quiet", "--out", str(out)]  # fmt: skip
    env = {**os.environ, "RAY_ADDRESS": cluster}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 90
        while _lines(out) < 6 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before the kill; make it slower"
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    kept = _lines(out)
    assert 6 <= kept < 36

    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr[-2000:]
    done = re.search(r"36 planned: (\d+) dialogues, (\d+) rejected \((\d+) already done, (\d+) made now", res.stdout)
    assert done is not None, res.stdout[-2000:]
    # the resumed run made exactly the items the killed one had not stored
    assert int(done[3]) == kept and int(done[4]) == 36 - kept
    assert_exactly_once(out, cfg(out, **SMALL))
    assert _scenario_ids(out) == _scenario_ids(local) and set(_scenario_ids(out).values()) == {1}
    assert _outputs(out) == _outputs(local)
