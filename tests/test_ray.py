"""``sweep --executor ray`` on a local 2-worker cluster: the same run directory as ``local``, kill -9 safe.

The cluster (``cluster`` in conftest) is started once per test process (loopback only, no dashboard);
the command-line runs join it through ``RAY_ADDRESS``, the way a driver
joins a real cluster.
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
from pathlib import Path

import pytest

from scene_sim.budget import Budget
from scene_sim.errors import SceneSimError
from scene_sim.executors import WorkerSpec, merge_accounting, shared_budget, split_limits
from scene_sim.rundir import RunDir
from scene_sim.studies.scene.spec import load_spec
from scene_sim.studies.scene.sweep import plan_episodes, run_sweep

REPO = Path(__file__).resolve().parents[1]

SPEC = """
name = "ray_test"
subjects = ["scripted/learner", "scripted/always-message", "scripted/always-react", "scripted/silent",
            "scripted/random"]
[run]
reps = {reps}
max_turns = 8
concurrency = 16
cache = "off"
"""


def test_rates_are_split_over_workers_and_connections_are_not():
    limits = {"openai": {"max_connections": 32, "rpm": 600, "tpm": 90_000}, "anthropic/x": {"rpm": 50}}
    assert split_limits(limits, 4) == {
        "openai": {"max_connections": 32, "rpm": 150.0, "tpm": 22_500.0},
        "anthropic/x": {"rpm": 12.5},
    }


def test_accounting_of_workers_adds_up():
    def part(calls: int, cost: float | None) -> dict:
        stats = {"calls": calls, "input_tokens": 10 * calls, "latency_s": 0.5, "cost_usd": cost}
        return {"by_role": {"subject": {"m": stats}}, "by_model": {"m": stats}, "total": stats, "wall_s": calls}

    merged = merge_accounting([{}, part(2, 0.25), part(3, None)])
    assert merged["total"]["calls"] == 5 and merged["total"]["input_tokens"] == 50
    assert merged["by_role"]["subject"]["m"]["cost_usd"] == 0.25 and merged["wall_s"] == 3
    assert merge_accounting([{}, {}]) == {}


def test_worker_factory_must_be_importable():
    with pytest.raises(SceneSimError, match=r"package\.module:function"):
        WorkerSpec("no_colon").load()
    with pytest.raises(SceneSimError, match="cannot be loaded"):
        WorkerSpec("scene_sim.nowhere:make").load()


def test_ray_sweep_refuses_what_cannot_travel(tmp_path):
    spec = load_spec(_spec(tmp_path, 1))
    with pytest.raises(SceneSimError, match="only with --executor local"):
        asyncio.run(run_sweep(spec, tmp_path / "run", executor="ray", labeler=lambda *a: None))
    with pytest.raises(SceneSimError, match="--executor must be one of local, ray"):
        asyncio.run(run_sweep(spec, tmp_path / "run", executor="dask"))


# -- on a cluster ---------------------------------------------------------------------


def _spec(tmp_path: Path, reps: int) -> Path:
    path = tmp_path / f"spec{reps}.toml"
    path.write_text(SPEC.format(reps=reps))
    return path


def _csv(out: Path) -> str:
    return (out / "episodes.csv").read_text()


def _check_once(out: Path, planned: set[str]) -> None:
    """Every planned episode's log and labels, once, whole; no temporary file; no extra row."""
    run = RunDir(out)
    assert set(run.episode_ids()) == planned and set(run.labelled_ids()) == planned
    assert list(out.rglob(".tmp-*")) == []
    for eid in planned:
        events = [json.loads(line) for line in run.episode_path(eid).read_text().splitlines()]
        assert [e["kind"] for e in events].count("episode_start") == 1 and events[-1]["kind"] == "episode_end"
    ids = [row.split(",", 1)[0] for row in _csv(out).splitlines()[1:]]
    assert sorted(ids) == sorted(planned)


@pytest.mark.slow
def test_ray_sweep_writes_the_same_run_directory_as_local(tmp_path, cluster, bank):
    spec = load_spec(_spec(tmp_path, 1))
    local, remote = tmp_path / "local", tmp_path / "ray"
    asyncio.run(run_sweep(spec, local, quiet=True))
    summary = asyncio.run(run_sweep(spec, remote, quiet=True, executor="ray", workers=2))
    planned = {p.episode_id for p in plan_episodes(spec, bank)}
    assert summary.simulated == summary.judged == len(planned) and summary.errors == 0
    _check_once(remote, planned)
    assert _csv(remote) == _csv(local)
    for eid in planned:  # the event logs and labels themselves, byte for byte
        for sub, ext in (("episodes", "jsonl"), ("labels", "json")):
            assert (remote / sub / f"{eid}.{ext}").read_bytes() == (local / sub / f"{eid}.{ext}").read_bytes()
    assert json.loads((remote / "run.json").read_text())["status"] == "complete"


def _reserve_elsewhere(budget, usd: float, actual: float | None = None) -> bool:
    """In another process, as a worker does: reserve at the shared budget (and settle when it is granted)."""
    ok = budget.try_reserve(usd)
    if ok and actual is not None:
        budget.settle(usd, actual)
    return ok


@pytest.mark.slow
def test_ray_budget_is_one_budget_over_every_worker(cluster):
    import ray

    budget = Budget(1.0)
    budget.settle(0.0, 0.25)  # spent by an earlier session: carried into the shared budget
    here = shared_budget(budget)
    elsewhere = ray.remote(num_cpus=0)(_reserve_elsewhere)
    assert here.try_reserve(0.5)
    # 0.25 spent + 0.5 reserved here + 0.5 would pass 1.0: refused in the other process
    assert not ray.get(elsewhere.remote(here, 0.5))
    here.settle(0.5, 0.125)
    here.refresh()  # the settlement has reached the actor
    assert here.spent_usd == pytest.approx(0.375)
    assert ray.get(elsewhere.remote(here, 0.5, 0.5))
    time.sleep(0.6)  # past the proxy's refresh interval: its figures are read again
    assert here.spent_usd == pytest.approx(0.875) and here.refused == 1 and here.limit_usd == 1.0


def _episode_files(out: Path) -> int:
    folder = out / "episodes"
    return sum(1 for p in folder.glob("*.jsonl") if not p.name.startswith(".tmp-")) if folder.is_dir() else 0


@pytest.mark.slow
def test_killed_ray_driver_resumes_to_every_episode_once(tmp_path, cluster, bank):
    spec_path = _spec(tmp_path, 2)
    spec = load_spec(spec_path)
    planned = {p.episode_id for p in plan_episodes(spec, bank)}
    local = tmp_path / "local"
    asyncio.run(run_sweep(spec, local, quiet=True))

    out = tmp_path / "ray"
    cmd = [sys.executable, "-m", "scene_sim.cli", "sweep", str(spec_path), "--out", str(out), "--quiet"]
    cmd += ["--executor", "ray", "--workers", "2"]
    env = {**os.environ, "RAY_ADDRESS": cluster}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 90
        while _episode_files(out) < 40 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert proc.poll() is None, "the sweep ended before the kill; make it bigger"
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    kept = _episode_files(out)
    assert 40 <= kept < len(planned)

    res = subprocess.run([*cmd, "--resume"], cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr[-2000:]
    done = re.search(r"(\d+)/(\d+) episodes done \((\d+) simulated now, (\d+) judged", " ".join(res.stderr.split()))
    assert done is not None, res.stderr[-2000:]
    already, planned_now, simulated, judged = int(done[1]) - int(done[3]), int(done[2]), int(done[3]), int(done[4])
    # the resumed run played exactly the episodes the killed one had not written, and judged
    # those plus any written in the instant between an episode's log and its labels
    assert planned_now == len(planned) and simulated == len(planned) - kept and already + judged == len(planned)
    _check_once(out, planned)
    assert _csv(out) == _csv(local)
    sessions = json.loads((out / "run.json").read_text())["sessions"]
    assert len(sessions) == 1 and sessions[0]["simulated"] == len(planned) - kept  # the killed one left none


def make_doubler(context, *, die_on: int):
    """A worker factory for the executor's own tests: doubles numbers; its process dies on ``die_on``."""

    async def work(item: int) -> int:
        if item == die_on:
            os._exit(1)  # a worker lost mid-run (OOM, node gone)
        await asyncio.sleep(0.01)
        return 2 * item

    return work


@pytest.mark.slow
def test_items_of_a_dead_worker_fail_and_the_others_go_on(cluster):
    from scene_sim.executors import RayExecutor
    from scene_sim.jobs import run_jobs

    stored: dict[int, int] = {}

    async def store(item: int, result: int) -> None:
        stored[item] = result

    async def main():
        worker = WorkerSpec("tests.test_ray:make_doubler", {"die_on": 10})
        async with RayExecutor(worker, workers=2, concurrency=2, chunk=1, gather_s=0.0) as ex:
            return await run_jobs(list(range(60)), store, executor=ex, quiet=True, concurrency=2)

    summary = asyncio.run(main())
    assert summary.done + summary.failed == 60 and 1 <= summary.failed <= 4  # what the dead worker held
    assert all(stored[i] == 2 * i for i in stored) and len(stored) == summary.done
    assert all(i in stored for i in range(20, 60))  # once it was gone, the other worker took every item
    assert any("worker" in line and "failed" in line for line in summary.failures)
