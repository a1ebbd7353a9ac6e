"""The hard budget: reservations, the managed backend's check, episodes cut short, sweeps and resume."""

from __future__ import annotations

import asyncio
import csv
import json
import threading
from pathlib import Path

import pytest

from scene_sim.backends import GenerateRequest, ManagedBackend
from scene_sim.backends._accounting import Accountant, Price, PriceTable
from scene_sim.backends._managed import projected_usage
from scene_sim.backends.base import Usage
from scene_sim.backends.fake import FakeBackend
from scene_sim.budget import Budget, BudgetExceeded
from scene_sim.context import RunContext
from scene_sim.errors import SceneSimError
from scene_sim.events import iter_event_dicts, parse_event
from scene_sim.jobs import run_jobs
from scene_sim.studies.scene.model import SceneModel
from scene_sim.studies.scene.spec import SweepSpec
from scene_sim.studies.scene.sweep import run_sweep

SCENARIO = "bug_report__concise_answer_norm__address_explicit__silent_ignore__p1"
#: USD per million tokens of the priced fake model: a call costs a few cents.
PRICE = 100.0


@pytest.fixture
def prices(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "prices.toml"
    path.write_text(f'["fake/priced"]\ninput = {PRICE}\noutput = {PRICE}\n')
    monkeypatch.setenv("SCENE_SIM_PRICES", str(path))
    monkeypatch.setenv("SCENE_SIM_CACHE_DIR", str(tmp_path / "cache"))
    return path


# -- the Budget object -------------------------------------------------------------------


def test_reservations_count_against_the_limit_until_settled() -> None:
    budget = Budget(1.0)
    assert budget.try_reserve(0.4) and budget.try_reserve(0.4)
    assert budget.reserved_usd == pytest.approx(0.8) and budget.spent_usd == 0.0
    # spend 0 + in flight 0.8 + 0.4 would pass 1.0: refused although nothing is spent yet
    assert not budget.try_reserve(0.4)
    assert budget.refused == 1
    assert budget.try_reserve(0.2)  # exactly at the limit is allowed
    budget.settle(0.4, 0.1)  # a call in flight finishes, cheaper than projected
    assert budget.spent_usd == pytest.approx(0.1) and budget.reserved_usd == pytest.approx(0.6)
    assert budget.try_reserve(0.3)
    assert not budget.try_reserve(0.01)


def test_budget_is_thread_safe_and_never_over_reserves() -> None:
    budget = Budget(10.0)
    granted: list[bool] = []

    def grab() -> None:
        for _ in range(200):
            granted.append(budget.try_reserve(0.01))

    threads = [threading.Thread(target=grab) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(granted) == 1000 and budget.reserved_usd == pytest.approx(10.0)


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_a_nonsense_limit_is_refused(bad: float) -> None:
    with pytest.raises(SceneSimError, match="budget must be"):
        Budget(bad)


# -- the projection and the managed backend's check ----------------------------------------


def test_projection_is_the_prompt_and_max_tokens() -> None:
    request = GenerateRequest(messages=({"role": "user", "content": "x" * 400},), system="s" * 100, max_tokens=77)
    assert projected_usage(request) == Usage(input_tokens=125, output_tokens=77)
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    with_schema = GenerateRequest(messages=request.messages, system=request.system, max_tokens=77, schema=schema)
    assert projected_usage(with_schema).input_tokens == 125 + -(-len(json.dumps(schema)) // 4)


def _priced_backend(budget: Budget, latency_ms: float = 0) -> ManagedBackend:
    table = PriceTable({"fake/priced": Price(PRICE, PRICE, PRICE)})
    return ManagedBackend(FakeBackend("priced", latency_ms=latency_ms), accountant=Accountant(table), budget=budget)


async def test_a_call_whose_projection_passes_the_budget_is_not_sent() -> None:
    request = GenerateRequest(messages=({"role": "user", "content": "x" * 4000},), max_tokens=1000)
    projected = (1000 + 1000) * PRICE / 1e6  # 0.2 USD
    backend = _priced_backend(Budget(projected - 1e-9))
    sent = []
    inner = backend.backend.generate

    async def spy(req):
        sent.append(req)
        return await inner(req)

    backend.backend.generate = spy
    with pytest.raises(BudgetExceeded, match="budget of"):
        await backend.generate(request)
    assert sent == []  # refused before any request
    ok = _priced_backend(Budget(projected))
    resp = await ok.generate(request)
    assert resp.text and ok.budget is not None
    assert ok.budget.spent_usd == pytest.approx(ok.accountant.total_cost()) and ok.budget.reserved_usd == 0


async def test_calls_in_flight_finish_and_no_new_call_starts() -> None:
    request = GenerateRequest(messages=({"role": "user", "content": "x" * 400},), max_tokens=100)
    per_call = (100 + 100) * PRICE / 1e6
    budget = Budget(per_call * 5.5)  # room for 5 projected calls in flight
    backend = _priced_backend(budget, latency_ms=30)
    results = await asyncio.gather(*(backend.generate(request) for _ in range(20)), return_exceptions=True)
    done = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BudgetExceeded)]
    assert len(done) == 5 and len(refused) == 15  # the five in flight finished, nothing else started
    assert budget.spent_usd <= budget.limit_usd


# -- an episode cut short ------------------------------------------------------------------


async def test_an_episode_refused_by_the_budget_ends_with_reason_budget(prices: Path) -> None:
    context = RunContext(cache_mode="off", budget=0.0)
    model = SceneModel(scenario=SCENARIO, subject="fake/priced", seed=1, context=context)
    result = await model.arun()
    await context.aclose()
    assert result.end_reason == "budget"
    end = result.events[-1]
    assert end["kind"] == "episode_end" and end["reason"] == "budget" and "budget" in end["error"]
    call = [e for e in result.events if e["kind"] == "model_call"][-1]
    assert call["attempts"] == 0 and "budget" in call["error"]
    for event in result.events:
        parse_event(event)  # "budget" is a contract end reason
    assert context.accounting().get("total", {}).get("calls", 0) == 0


# -- sweeps --------------------------------------------------------------------------------


def _spec(usd: float | None, *, reps: int = 2, subject: str = "fake/priced?latency_ms=20") -> SweepSpec:
    return SweepSpec.model_validate(
        {
            "name": "budgeted",
            "subjects": [subject],
            "judge": "scripted",
            "run": {"reps": reps, "max_turns": 4, "concurrency": 32, "cache": "off"},
            "budget": {"usd": usd},
        }
    )


def _end_reasons(out: Path) -> dict[str, str]:
    reasons = {}
    for path in (out / "episodes").glob("*.jsonl"):
        *_, last = iter_event_dicts(path)
        reasons[path.stem] = last["reason"]
    return reasons


async def test_a_sweep_never_spends_more_than_its_budget_and_resume_completes_it(prices: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    limit = 0.5
    context = RunContext(cache_mode="off")
    summary = await run_sweep(_spec(limit), out, quiet=True, context=context)
    budget = context.budget
    assert budget is not None and budget.refused > 0  # the budget bound
    # every call in flight when the budget was reached had its projected cost reserved, so the
    # bound is the budget itself: not one cent over (the accountant agrees with the budget)
    assert 0 < budget.spent_usd <= limit
    assert context.accounting()["total"]["cost_usd"] <= limit
    assert budget.reserved_usd == pytest.approx(0.0, abs=1e-12)
    await context.aclose()

    cut = [eid for eid, reason in _end_reasons(out).items() if reason == "budget"]
    assert cut and summary.cut_by_budget == len(cut) and summary.budget_stopped
    rows = {r["episode_id"]: r for r in csv.DictReader((out / "episodes.csv").open())}
    assert {rows[eid]["end_reason"] for eid in cut} == {"budget"}
    assert {rows[eid]["validity"] for eid in cut} == {"INVALID"}  # left out of the statistics
    metrics = json.loads((out / "metrics.json").read_text())
    model_metrics = next(iter(metrics["models"].values()))
    assert model_metrics["valid"] + model_metrics["partial"] <= len(rows) - len(cut)
    assert json.loads((out / "run.json").read_text())["status"] == "incomplete"

    # --resume with a higher budget re-simulates the episodes the budget cut short
    context = RunContext(cache_mode="off")
    resumed = await run_sweep(_spec(1000.0), out, resume=True, quiet=True, context=context)
    assert context.budget is not None and context.budget.spent_usd >= budget.spent_usd  # earlier spend counts
    await context.aclose()
    reasons = _end_reasons(out)
    assert len(reasons) == resumed.planned and "budget" not in reasons.values()
    assert resumed.simulated >= len(cut)
    assert json.loads((out / "run.json").read_text())["status"] == "complete"


async def test_a_budget_over_unpriced_models_refuses_to_start(prices: Path, tmp_path: Path) -> None:
    spec = _spec(1.0, reps=1, subject="fake/unpriced")
    with pytest.raises(SceneSimError, match="unpriced models: fake/unpriced") as info:
        await run_sweep(spec, tmp_path / "a", quiet=True)
    assert "--allow-unpriced" in str(info.value)
    assert not (tmp_path / "a" / "episodes").exists()
    summary = await run_sweep(spec, tmp_path / "b", quiet=True, allow_unpriced=True, analyze=False)
    assert summary.simulated == summary.planned
    assert any("fake/unpriced" in w for w in summary.warnings)


async def test_sweep_without_budget_needs_no_prices(prices: Path, tmp_path: Path) -> None:
    summary = await run_sweep(_spec(None, reps=1, subject="fake/unpriced"), tmp_path / "r", quiet=True, analyze=False)
    assert summary.simulated == summary.planned and summary.warnings == []


# -- the item-level projection of run_jobs ---------------------------------------------------


async def test_run_jobs_stops_starting_items_on_the_projection(prices: Path) -> None:
    context = RunContext(cache_mode="off")
    per_item = 100 * PRICE / 1e6  # 0.01 USD: 100 input tokens

    async def work(_item: int) -> None:
        context.accountant.record(role="subject", model="fake/priced", usage=Usage(input_tokens=100))

    summary = await run_jobs(
        list(range(10)), work, concurrency=1, context=context, budget_usd=2.5 * per_item, quiet=True
    )
    # after two items: spent 0.02 + one more projected item 0.01 = 0.03 > 0.025, so the third never starts
    assert summary.done == 2 and summary.not_started == 8 and summary.budget_stopped


# -- prices -------------------------------------------------------------------------------


def test_shipped_prices_cover_the_paper_spec_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    from scene_sim.studies.scene.spec import load_spec
    from scene_sim.studies.scene.sweep import sweep_models

    monkeypatch.delenv("SCENE_SIM_PRICES", raising=False)
    table = PriceTable.load()
    models = sweep_models(load_spec(Path(__file__).resolve().parents[1] / "experiments" / "scene_paper.toml"))
    for model in {*models, "google/gemini-3-flash-preview", "google/gemini-3.1-pro-preview"}:
        hit = table.match(model)
        assert hit is not None and hit[0] == model.split("?")[0], model  # its own entry, no family guess
    opus = table.lookup("anthropic/claude-opus-4-7")
    assert opus is not None and (opus.input, opus.output) != (15.0, 75.0)
    assert "checked" in Path(table.source or "").read_text().lower()
    assert RunContext(budget=1000.0).check_priced(models) == []


def test_a_family_price_gets_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    table = PriceTable({"anthropic/claude-opus-4": Price(15, 75, 1.5), "hf/*": Price(0, 0, 0)}, "t.toml")
    assert table.family_matched(["anthropic/claude-opus-4-9", "anthropic/claude-opus-4-20250514", "hf/x"]) == {
        "anthropic/claude-opus-4-9": "anthropic/claude-opus-4"
    }
    with caplog.at_level("WARNING"):
        assert table.lookup("anthropic/claude-opus-4-9") is not None
    assert "family entry 'anthropic/claude-opus-4'" in caplog.text
