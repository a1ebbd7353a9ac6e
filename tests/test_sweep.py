"""Sweeps: specs, the smoke spec end to end, crash-safe resume, the budget stop."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scene_sim.backends import Backend, GenerateRequest, GenerateResponse, Usage
from scene_sim.context import RunContext
from scene_sim.errors import SceneSimError
from scene_sim.rundir import RunDir
from scene_sim.studies.scene.spec import SweepSpec, load_spec
from scene_sim.studies.scene.sweep import plan_episodes, run_sweep

REPO = Path(__file__).resolve().parents[1]


def _spec_file(tmp_path: Path, text: str, name: str = "spec.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('subjects = ["antropic/claude"]', "spec.toml: subjects.0: unknown model provider 'antropic'"),
        ('subjects = ["scripted/learner"]\n[run]\nrepz = 2', "spec.toml: run.repz: Extra inputs are not permitted"),
        (
            'subjects = ["scripted/learner"]\n[run]\nreps = 0',
            "spec.toml: run.reps: Input should be greater than or equal to 1",
        ),
        ("subjects = [", "spec.toml: invalid TOML"),
        ("subjects = []", "spec.toml: subjects: Tuple should have at least 1 item"),
        (
            'subjects = ["scripted/learner"]\n[scenarios]\nsource = "generate"\ntuples = 3',
            "spec.toml: scenarios: source 'generate' needs 'generator'",
        ),
        (
            'subjects = ["scripted/learner"]\n[scenarios]\nsource = "generate"\ngenerator = "fake/g"\n'
            '[scenarios.grid]\nnorms = ["x"]',
            "unknown axis ['norms']",
        ),
        ('subjects = ["scripted/learner"]\n[limits.anthropic]\nrpn = 3', "limits.anthropic: unknown option(s) ['rpn']"),
    ],
)
def test_spec_errors_are_one_line_naming_file_and_field(tmp_path, text, message):
    with pytest.raises(SceneSimError) as err:
        load_spec(_spec_file(tmp_path, text))
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_shipped_specs_validate():
    for path in (REPO / "experiments").glob("*.toml"):
        if path.name == "prices.toml":
            continue
        spec = load_spec(path)
        assert spec.subjects


def test_plan_is_deterministic_and_pairs_subjects(bank):
    spec = SweepSpec.model_validate({"subjects": ["scripted/learner", "scripted/silent"], "run": {"reps": 2}})
    a, b = plan_episodes(spec, bank), plan_episodes(spec, bank)
    assert a == b and len(a) == 2 * 2 * len(bank)
    assert len({p.episode_id for p in a}) == len(a)
    by_key = {}
    for p in a:
        by_key.setdefault((p.scenario_id, p.rep), set()).add(p.seed)
    assert all(len(seeds) == 1 for seeds in by_key.values())  # both subjects meet the same seed


@pytest.mark.slow
def test_offline_smoke_spec_end_to_end(tmp_path, bank):
    out = tmp_path / "smoke"
    spec = load_spec(REPO / "experiments" / "offline_smoke.toml")
    summary = asyncio.run(run_sweep(spec, out, quiet=True))
    planned = len(plan_episodes(spec, bank))
    assert summary.simulated == summary.judged == planned and summary.errors == 0
    run = RunDir(out)
    assert len(run.episode_ids()) == len(run.labelled_ids()) == planned
    meta = json.loads((out / "run.json").read_text())
    assert meta["status"] == "complete" and meta["fingerprint"] == spec.fingerprint()
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["models"]) == set(spec.subjects)
    rows = (out / "episodes.csv").read_text().splitlines()
    assert len(rows) == planned + 1
    for name in ("report.md", "report.html"):
        assert (out / name).stat().st_size > 0


def _small_spec(tmp_path: Path, reps: int = 1) -> Path:
    return _spec_file(
        tmp_path,
        f'subjects = ["scripted/learner", "scripted/random"]\n[run]\nreps = {reps}\nconcurrency = 8\ncache = "off"\n',
        name=f"spec{reps}.toml",
    )


def test_resume_refuses_changed_spec_and_existing_run(tmp_path):
    spec_path = _small_spec(tmp_path)
    out = tmp_path / "run"
    threshold = gc.get_threshold()
    asyncio.run(run_sweep(load_spec(spec_path), out, quiet=True, analyze=False))
    # a sweep tunes the garbage collector for its batch and gives the settings back
    assert gc.get_threshold() == threshold and gc.get_freeze_count() == 0
    with pytest.raises(SceneSimError, match="already holds a run; pass --resume"):
        asyncio.run(run_sweep(load_spec(spec_path), out, quiet=True))
    changed = _small_spec(tmp_path, reps=2)
    with pytest.raises(SceneSimError, match="the spec changed since this run started"):
        asyncio.run(run_sweep(load_spec(changed), out, resume=True, quiet=True))
    again = asyncio.run(run_sweep(load_spec(spec_path), out, resume=True, quiet=True, analyze=False))
    assert again.simulated == 0 and again.already_done == again.planned


def _check_complete(out: Path, spec: SweepSpec, bank) -> None:
    run = RunDir(out)
    planned = {p.episode_id for p in plan_episodes(spec, bank)}
    assert set(run.episode_ids()) == planned
    assert set(run.labelled_ids()) == planned
    leftovers = [p for p in out.rglob(".tmp-*")]
    assert leftovers == []
    for eid in planned:
        lines = run.episode_path(eid).read_text().splitlines()
        events = [json.loads(x) for x in lines]  # every line whole
        assert events[0]["kind"] == "episode_start" and events[-1]["kind"] == "episode_end"
        assert sum(e["kind"] == "episode_start" for e in events) == 1
        json.loads(run.label_path(eid).read_text())


@pytest.mark.slow
@pytest.mark.parametrize("kill_after_s", [1.5, 3.0, 4.5])
def test_kill_9_then_resume_gives_every_episode_once(tmp_path, bank, kill_after_s):
    spec_path = _small_spec(tmp_path, reps=5)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "scene_sim.cli", "sweep", str(spec_path), "--out", str(out), "--quiet"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(kill_after_s)
    assert proc.poll() is None, "the sweep finished before the kill; make it bigger"
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    res = subprocess.run([*cmd, "--resume"], cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    _check_complete(out, load_spec(spec_path), bank)


def test_resume_judges_episodes_that_were_simulated_but_not_labelled(tmp_path, bank):
    spec_path = _small_spec(tmp_path)
    spec = load_spec(spec_path)
    out = tmp_path / "run"
    asyncio.run(run_sweep(spec, out, quiet=True, analyze=False))
    run = RunDir(out)
    victims = run.labelled_ids()[:5]
    for eid in victims:
        run.label_path(eid).unlink()
    (run.episodes_dir / ".tmp-torn.jsonl.x").write_text('{"seq": 0, "tur')  # a torn temp file from a crash
    summary = asyncio.run(run_sweep(spec, out, resume=True, quiet=True, analyze=False))
    assert summary.simulated == 0 and summary.judged == 5
    _check_complete(out, spec, bank)


class PricedModel(Backend):
    """Answers every request with a long message; priced in the test's price table."""

    provider = "custom"

    async def generate(self, request: GenerateRequest) -> GenerateResponse:
        await asyncio.sleep(0.001)
        if request.schema_name == "routing":
            order = request.schema["properties"]["order"]["items"]["enum"]
            return GenerateResponse(json.dumps({"order": order, "terminate": False}), usage=Usage(1000, 10))
        text = json.dumps({"action": "message", "content": "hello there", "target_turn_id": None, "sanction": False})
        return GenerateResponse(text, usage=Usage(1000, 100))


def test_budget_stops_new_episodes_and_lets_running_ones_finish(tmp_path, monkeypatch, bank):
    prices = tmp_path / "prices.toml"
    prices.write_text('["custom/priced"]\ninput = 1000.0\noutput = 1000.0\n')  # $1 per 1000 tokens
    monkeypatch.setenv("SCENE_SIM_PRICES", str(prices))
    budget = 40.0
    spec = SweepSpec.model_validate(
        {
            "subjects": ["custom/priced"],
            "judge": "scripted",
            "run": {"reps": 1, "max_turns": 2, "concurrency": 2, "cache": "off"},
            "budget": {"usd": budget},
        }
    )
    ctx = RunContext(cache_mode="off")
    ctx.add("custom/priced", PricedModel("priced"))
    out = tmp_path / "run"
    summary = asyncio.run(run_sweep(spec, out, quiet=True, context=ctx))
    spent = ctx.accountant.total_cost()
    assert summary.budget_stopped and summary.not_started > 0
    assert 0 < summary.simulated < summary.planned
    # a hard cap: the calls in flight when it was reached were reserved up front, so not a cent over
    assert 0 < spent <= budget
    assert ctx.budget is not None and ctx.budget.spent_usd == pytest.approx(spent)
    meta = json.loads((out / "run.json").read_text())
    assert meta["status"] == "incomplete" and meta["sessions"][-1]["budget_stopped"]
    assert len(RunDir(out).episode_ids()) == summary.simulated


def test_a_failed_episode_write_does_not_stop_the_sweep_and_resume_redoes_it(tmp_path, monkeypatch):
    spec_path = _small_spec(tmp_path)
    spec = load_spec(spec_path)
    out = tmp_path / "run"
    real = RunDir.awrite_episode
    failed: list[str] = []

    async def flaky(self, episode_id, events):
        if not failed:  # the first episode to finish hits a full disk
            failed.append(episode_id)
            raise OSError(28, "No space left on device")
        return await real(self, episode_id, events)

    monkeypatch.setattr(RunDir, "awrite_episode", flaky)
    summary = asyncio.run(run_sweep(spec, out, quiet=True, analyze=False))
    assert summary.errors == 1 and summary.simulated == summary.planned - 1
    run = RunDir(out)
    assert failed[0] not in run.episode_ids() and len(run.episode_ids()) == summary.planned - 1
    assert json.loads((out / "run.json").read_text())["status"] == "incomplete"
    monkeypatch.setattr(RunDir, "awrite_episode", real)
    again = asyncio.run(run_sweep(spec, out, resume=True, quiet=True, analyze=False))
    assert again.simulated == 1 and again.errors == 0
    assert failed[0] in run.episode_ids()


@pytest.mark.parametrize("width", [60, 80, 100, 160])
def test_the_progress_bar_fits_the_terminal(width):
    import io
    import re

    from rich.console import Console

    from scene_sim.progress import ProgressDisplay, fit_stats

    stats = "calls 12,345  tokens 1,234,567  cost $12.34  errors 3"
    buf = io.StringIO()
    console = Console(file=buf, width=width, force_terminal=True, color_system=None)
    with ProgressDisplay(1200, 0, label="episodes", quiet=False, console=console) as bar:
        bar.update(2, stats)
        bar.update(1200, stats)
    text = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", buf.getvalue())
    lines = [ln for ln in re.split(r"[\r\n]", text) if ln.strip()]
    last = lines[-1]
    assert len(last) <= width
    assert "1200/1200" in last and re.search(r"eta \d:\d\d:\d\d", last), last  # counts and eta never cut
    assert "…" not in last and "..." not in last
    if width >= 80:
        assert "cost $12.34" in last and "errors 3" in last  # what matters most survives at 80 columns
    assert fit_stats(stats, 30) == "cost $12.34  errors 3"  # whole fields, tokens and calls dropped first


def test_episodes_cut_by_a_budget_are_not_done(tmp_path):
    from scene_sim.studies.scene.sweep import ended_by_budget

    done, cut, torn = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "c.jsonl"
    done.write_text('{"seq": 0, "kind": "episode_start"}\n{"seq": 1, "kind": "episode_end", "reason": "max_turns"}\n')
    cut.write_text('{"seq": 0, "kind": "episode_start"}\n{"seq": 1, "kind": "episode_end", "reason": "budget"}\n')
    torn.write_text('{"seq": 0, "kind": "episode_start"}\n{"seq": 1, "kind": "epis')
    assert not ended_by_budget(done) and ended_by_budget(cut) and not ended_by_budget(torn)
    assert not ended_by_budget(tmp_path / "missing.jsonl")
