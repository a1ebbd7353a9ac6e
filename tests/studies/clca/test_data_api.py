"""adapt + filter against an OpenAI-compatible loopback server with injected faults: no crash, records as contracted."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest

from scene_sim.context import RunContext
from scene_sim.studies.clca.adapt import run_adapt
from scene_sim.studies.clca.cultures import load_cultures
from scene_sim.studies.clca.judge import run_filter
from scene_sim.studies.clca.roleplay import RoleplaySettings, run_roleplay
from scene_sim.studies.clca.tasks import load_tasks
from tests.backends.fakeserver import FakeServer, Recorded, Reply

pytest.importorskip("openai")


def _chat(text: str) -> Reply:
    return Reply(
        200,
        {
            "id": "c1",
            "object": "chat.completion",
            "created": 0,
            "model": "teacher",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 50, "completion_tokens": 20, "total_tokens": 70},
        },
    )


def _answer(rec: Recorded) -> Reply:
    body = rec.json
    prompt = body["messages"][-1]["content"]
    everything = "\n".join(m["content"] for m in body["messages"])
    if "generic social interaction" in everything:
        task = json.loads(re.search(r"Input: (\{.*\})\s*\n\nOutput:", everything, re.DOTALL).group(1))
        if "stairwell" in task["setting"]:  # this task is never adapted properly: names kept -> rejection
            return _chat(json.dumps(task))
        if len(body["messages"]) == 1 and "mentor" in task["setting"]:  # first answer malformed, then fine
            return _chat("Sure! Here you go: {oops")
        for i, p in enumerate(task["participants"]):
            p["name"] = ["Kenji Ito", "Yuki Sato"][i]
        return _chat("```json\n" + json.dumps(task) + "\n```")
    if "mall security guard" in everything:  # task03's judge answers never parse
        return _chat("I cannot judge this.")
    if "Culture alignment choices" in prompt:
        return _chat("Culture alignment: 1\nConfidence: 1")
    if "Quality choices" in prompt:
        return _chat("Quality: 2\nConfidence: 1" if "team lead" in everything else "Quality: 1\nConfidence: 2")
    if "Meta label choices" in prompt:
        return _chat("Meta label: 1\nConfidence: 2\nCritic: The judgements are sound.")
    return _chat("?")


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("SCENE_SIM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-key")
    for name in ("OPENAI_BASE_URL", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    srv = FakeServer()
    srv.default = _answer
    try:
        yield srv
    finally:
        srv.close()


async def _steps(out: Path, model: str) -> tuple:
    cultures = load_cultures()
    context = RunContext(cache_mode="off")
    context.backend(model).backoff_base_s = 0.01  # fast retries; the faults are what is tested
    try:
        adapt = await run_adapt(
            out, load_tasks(limit=4), [cultures["Japan"]], model, seed=0, context=context, quiet=True
        )
        await run_roleplay(
            out, "scripted", cultures, settings=RoleplaySettings(reps=1), seed=0, context=None, quiet=True
        )
        judged = await run_filter(out, model, seed=0, context=context, quiet=True)
        return adapt, judged, context.accounting()
    finally:
        await context.aclose()


def test_adapt_and_filter_survive_faults(server: FakeServer, tmp_path: Path) -> None:
    server.queue(
        Reply(429, {"error": {"message": "slow down"}}, headers={"retry-after": "0"}),
        Reply(500, {"error": {"message": "boom"}}),
        Reply(200, "this is not JSON at all", content_type="application/json"),
    )
    model = f"openai/teacher?base_url={server.url}/v1"
    out = tmp_path / "run"
    adapt, judged, accounting = asyncio.run(_steps(out, model))
    assert adapt.failed == 0 and judged.failed == 0
    scenarios = [json.loads(line) for line in (out / "scenarios.jsonl").open()]
    rejected = [json.loads(line) for line in (out / "rejected.jsonl").open()]
    assert sorted(s["source_id"] for s in scenarios) == ["task02", "task03", "task04"]
    assert [r["source_id"] for r in rejected] == ["task01"]
    assert "names must be changed" in rejected[0]["reason"] and len(rejected[0]["raw"]) == 3
    mentor = next(s for s in scenarios if s["source_id"] == "task02")
    assert mentor["attempts"] == 2 and [p["name"] for p in mentor["participants"]] == ["Kenji Ito", "Yuki Sato"]
    for s in scenarios:
        assert len(s["participants"]) == 2 and all(p["goal"] and p["secret"] for p in s["participants"])
    judgements = {j["dialogue_id"]: j for j in map(json.loads, (out / "judgements.jsonl").open())}
    assert len(judgements) == len(scenarios)
    unparsed = judgements["japan-task03-r0"]
    assert unparsed["parse_failures"] == 6 and unparsed["unparsed"] == ["culture_alignment", "quality"]
    assert unparsed["quality"] == {"choice": None, "confidence": None} and unparsed["kept"] is True
    assert unparsed["raw"]["quality"] == ["I cannot judge this."] * 3  # first ask + two re-queries, all kept
    metas = [r.json["messages"][-1]["content"] for r in server.posts if b"Meta label choices" in r.body]
    assert any("Culture alignment: unknown" in m for m in metas)  # the meta-judge is told step 1 failed
    good = judgements["japan-task02-r0"]
    assert good["parse_failures"] == 0 and good["culture_alignment"] == {
        "choice": "aligned",
        "confidence": "very confident",
    }
    assert good["meta"]["critic"] == "The judgements are sound." and good["kept"] is True
    dropped = judgements["japan-task04-r0"]  # high-confidence bad quality
    assert dropped["quality"] == {"choice": "bad", "confidence": "very confident"} and dropped["kept"] is False
    statuses = [r.path for r in server.posts]
    assert len(statuses) >= 3 + 4  # the three faults were answered and retried
    assert accounting["total"]["calls"] > 0
