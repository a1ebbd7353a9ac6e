"""``generate`` against an OpenAI-compatible loopback server with 429s, 500s and malformed bodies."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from scene_sim.context import RunContext
from scene_sim.studies.normgenesis.pipeline import generate
from tests.backends.fakeserver import FakeServer, Recorded, Reply

from .answers import answer
from .test_pipeline import assert_exactly_once, cfg

KEY = "sk-test-normgenesis-DO-NOT-LEAK"


def _completion(content: str) -> Reply:
    return Reply(200, {
        "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "gpt-test",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 50, "completion_tokens": 20, "total_tokens": 70},
    })  # fmt: skip


class Provider:
    """Valid answers by schema name, with a fixed pattern of faults by request index."""

    def __init__(self) -> None:
        self.n = 0
        self.faults = {"429": 0, "500": 0, "bad_body": 0, "not_json": 0}

    def __call__(self, rec: Recorded) -> Reply:
        self.n += 1
        if self.n % 7 == 2:
            self.faults["429"] += 1
            return Reply(
                429, {"error": {"message": "rate limited", "type": "rate_limit"}}, headers={"retry-after": "0"}
            )
        if self.n % 7 == 4:
            self.faults["500"] += 1
            return Reply(500, {"error": {"message": "internal error", "type": "server"}})
        if self.n % 7 == 6:
            self.faults["bad_body"] += 1
            return Reply(200, '{"id": "truncated')
        if self.n % 11 == 0:
            self.faults["not_json"] += 1
            return _completion("Here you go: a scenario about manners.")
        body = rec.json
        name = body.get("response_format", {}).get("json_schema", {}).get("name", "")
        msgs = body["messages"]
        system = msgs[0]["content"] if msgs and msgs[0]["role"] == "system" else ""
        return _completion(json.dumps(answer(name, system, msgs[-1]["content"] if name else msgs[1]["content"]),
                                      ensure_ascii=False))  # fmt: skip


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    from scene_sim.backends import _managed

    monkeypatch.setattr(_managed.ManagedBackend, "_backoff", lambda self, attempt, retry_after: 0.0)
    srv = FakeServer()
    yield srv
    srv.close()


@pytest.mark.parametrize("mode", ["generator", "agents"])
async def test_generate_over_http_with_faults(server: FakeServer, tmp_path: Path, mode: str) -> None:
    provider = Provider()
    server.default = provider
    model = f"openai/gpt-test?base_url={server.url}/v1&max_attempts=4"
    out = tmp_path / "run"
    c = cfg(out, langs=("ko", "zh"), categories=("apology", "thanks"), model=model, mode=mode, concurrency=3,
            cache="off")  # fmt: skip
    context = RunContext(cache_mode="off")
    try:
        result = await generate(c, context=context)
    finally:
        await context.aclose()
    made, rejected = assert_exactly_once(out, c)
    assert result.summary.failed == 0
    assert all(v > 0 for v in provider.faults.values()), provider.faults  # it really met every kind of fault
    assert len(made) >= 6, [r["reason"] for r in rejected]
    for r in made:
        assert r["mode"] == mode and r["dq"] is not None and r["exemplar_ids"]
    names = {r.json.get("response_format", {}).get("json_schema", {}).get("name") for r in server.posts}
    assert {"normgenesis_situation", "normgenesis_rq", "normgenesis_annotate"} <= names
    assert ("normgenesis_dialogue" in names) == (mode == "generator")
    if mode == "agents":  # the slip instruction is private to the speaker who slips
        slipped = [r for r in server.posts if "slip: break the norm" in json.dumps(r.json, ensure_ascii=False)]
        assert slipped
        for r in slipped:
            system = r.json["messages"][0]["content"]
            assert system.startswith(("You are 지은,", "You are 王芳,")), system[:40]
    for path in out.rglob("*"):
        if path.is_file():
            assert KEY not in path.read_text(encoding="utf-8", errors="replace")
    accounting = json.loads((out / "run.json").read_text(encoding="utf-8"))["accounting"]
    assert accounting["total"]["calls"] >= len(made)
