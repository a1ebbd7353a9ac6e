"""Accounting: sums per role and model, prices, unknown models, cache hits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import KITS, SECRET
from fakeserver import FakeServer

from scene_sim.backends import Accountant, CallFailed, GenerateRequest, Price, PriceTable, Usage, create_backend
from scene_sim.errors import SceneSimError

PRICES = """
["openai/gpt-test"]
input = 2.0
output = 10.0
cached_input = 0.5

["anthropic/claude-x"]
input = 3.0
output = 15.0

["hf/*"]
input = 0
output = 0
"""


@pytest.fixture
def prices(tmp_path: Path) -> Path:
    path = tmp_path / "prices.toml"
    path.write_text(PRICES)
    return path


def req(**kw) -> GenerateRequest:
    kw.setdefault("messages", ({"role": "user", "content": "hello"},))
    return GenerateRequest(**kw)


def test_price_cost_counts_cached_tokens_at_their_price() -> None:
    price = Price(input=2.0, output=10.0, cached_input=0.5)
    usage = Usage(input_tokens=1_000_000, output_tokens=100_000, cached_tokens=400_000)
    assert price.cost(usage) == pytest.approx(600_000 * 2e-6 + 400_000 * 0.5e-6 + 100_000 * 10e-6)


def test_price_lookup(prices: Path) -> None:
    table = PriceTable.load(prices)
    assert table.lookup("openai/gpt-test") == Price(2.0, 10.0, 0.5)
    assert table.lookup("openai/gpt-test?base_url=http://x") == Price(2.0, 10.0, 0.5)
    assert table.lookup("openai/gpt-test-2025-01-01") == Price(2.0, 10.0, 0.5)  # dated version
    assert table.lookup("openai/gpt-testing") is None  # not a dash suffix
    assert table.lookup("anthropic/claude-x").cached_input == 3.0  # defaults to the input price
    assert table.lookup("hf/Qwen/Qwen2.5-0.5B-Instruct") == Price(0, 0, 0)
    assert table.lookup("google/unknown") is None


def test_shipped_price_table_loads() -> None:
    table = PriceTable.load()
    assert table.source and table.source.endswith("prices.toml")
    assert table.lookup("anthropic/claude-sonnet-4-5-20250929") is not None
    assert table.lookup("openai/gpt-4o-mini") != table.lookup("openai/gpt-4o")
    assert table.lookup("fake/anything") == Price(0, 0, 0)
    assert table.lookup("local") == Price(0, 0, 0)


def test_prices_env_variable(prices: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCENE_SIM_PRICES", str(prices))
    assert Accountant().prices.source == str(prices)


@pytest.mark.parametrize(("text", "match"), [("not toml [[[", "not valid TOML"), ('["m"]\ninput = 1\n', "needs")])
def test_bad_price_table_is_a_user_error(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "p.toml"
    path.write_text(text)
    with pytest.raises(SceneSimError, match=match):
        PriceTable.load(path)
    with pytest.raises(SceneSimError, match="not found"):
        PriceTable.load(tmp_path / "missing.toml")


def test_accountant_sums_per_role_and_model(prices: Path) -> None:
    acc = Accountant(prices)
    acc.record(
        role="subject", model="openai/gpt-test", usage=Usage(1000, 100, 200), attempts=2, retries=1, latency_s=0.5
    )
    acc.record(role="subject", model="openai/gpt-test", usage=Usage(3000, 300, 0), latency_s=1.0)
    acc.record(role="subject", model="openai/gpt-test", usage=Usage(3000, 300, 0), attempts=0, cache_hit=True)
    acc.record(role="judge", model="mystery/model", usage=Usage(10, 1, 0), latency_s=0.1)
    acc.record(role="judge", model="mystery/model", attempts=6, retries=5, error=True, latency_s=2.0)
    summary = acc.summary()
    json.dumps(summary)  # JSON-able for run.json

    subject = summary["by_role"]["subject"]["openai/gpt-test"]
    assert subject["calls"] == 3 and subject["attempts"] == 3 and subject["retries"] == 1
    assert subject["cache_hits"] == 1 and subject["errors"] == 0
    assert (subject["input_tokens"], subject["output_tokens"], subject["cached_tokens"]) == (4000, 400, 200)
    assert subject["latency_s"] == pytest.approx(1.5)
    expected = (800 * 2 + 200 * 0.5 + 100 * 10 + 3000 * 2 + 300 * 10) / 1e6
    assert subject["cost_usd"] == pytest.approx(expected)

    judge = summary["by_role"]["judge"]["mystery/model"]
    assert judge["cost_usd"] is None  # unknown price: null, never 0
    assert judge["errors"] == 1 and judge["retries"] == 5 and judge["attempts"] == 7

    assert summary["unpriced_models"] == ["mystery/model"]
    total = summary["total"]
    assert total["calls"] == 5 and total["input_tokens"] == 4010
    assert total["cost_usd"] == pytest.approx(expected)  # sums the priced models
    assert summary["by_model"]["openai/gpt-test"]["calls"] == 3
    assert summary["wall_s"] >= 0


def test_only_unpriced_models_total_null(prices: Path) -> None:
    acc = Accountant(prices)
    acc.record(role="a", model="x/y", usage=Usage(1, 1, 0))
    assert acc.summary()["total"]["cost_usd"] is None
    assert Accountant(prices).summary()["total"]["cost_usd"] == 0.0


async def test_managed_calls_feed_one_accountant(
    prices: Path, server: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    kit = KITS["openai"]
    monkeypatch.setenv(kit.key_env, SECRET)
    acc = Accountant(prices)
    server.queue(
        kit.error(500, "x"),
        kit.text("a", input_tokens=1000, output_tokens=100, cached=500),
        kit.text("b", input_tokens=2000, output_tokens=10),
        kit.error(400, "bad request"),
    )
    backend = create_backend(f"openai/gpt-test?base_url={server.url}/v1", accountant=acc)
    backend.backoff_base_s = 0.01
    fake = create_backend("fake/m", accountant=acc)
    await backend.generate(req(role="persona"))
    await backend.generate(req(role="persona"))  # cache hit
    await backend.generate(req(role="judge", seed=1))
    with pytest.raises(CallFailed):
        await backend.generate(req(role="judge", seed=2))
    await fake.generate(req(role="orchestrator"))
    await backend.aclose()
    await fake.aclose()

    summary = acc.summary()
    persona = summary["by_role"]["persona"]["openai/gpt-test"]
    assert persona == {
        **persona,
        "calls": 2,
        "attempts": 2,
        "retries": 1,
        "cache_hits": 1,
        "input_tokens": 1000,
        "output_tokens": 100,
        "cached_tokens": 500,
        "errors": 0,
    }
    assert persona["cost_usd"] == pytest.approx((500 * 2 + 500 * 0.5 + 100 * 10) / 1e6)
    judge = summary["by_role"]["judge"]["openai/gpt-test"]
    assert judge["calls"] == 2 and judge["errors"] == 1 and judge["input_tokens"] == 2000
    assert summary["by_role"]["orchestrator"]["fake/m"]["cost_usd"] is None  # fake/* is not in this table
    assert summary["total"]["calls"] == 5


def test_family_matches_are_told_apart_from_dated_versions() -> None:
    table = PriceTable(
        {"anthropic/claude-opus-4": Price(15, 75, 1.5), "openai/gpt-4.1": Price(2, 8, 0.5), "hf/*": Price(0, 0, 0)}
    )
    family = PriceTable.is_family_match
    assert family("anthropic/claude-opus-4-7", "anthropic/claude-opus-4")  # a newer model, maybe another price
    assert not family("anthropic/claude-opus-4-20250514", "anthropic/claude-opus-4")  # a dated snapshot
    assert not family("openai/gpt-4.1-2025-04-14", "openai/gpt-4.1")
    assert not family("hf/any/model", "hf/*") and not family("openai/gpt-4.1", "openai/gpt-4.1")
    assert table.match("anthropic/claude-opus-4-7?x=1") == ("anthropic/claude-opus-4", Price(15, 75, 1.5))
    assert table.match("google/unknown") is None


def test_the_shipped_table_prices_opus_4_7_on_its_own() -> None:
    table = PriceTable.load()
    hit = table.match("anthropic/claude-opus-4-7")
    assert hit is not None and hit[0] == "anthropic/claude-opus-4-7"
    assert table.family_matched(["anthropic/claude-opus-4-7", "google/gemini-3-flash-preview"]) == {}
