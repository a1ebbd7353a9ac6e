"""Each API provider's real SDK code path against a loopback HTTP server."""

from __future__ import annotations

import pytest
from conftest import SECRET, Kit
from fakeserver import FakeServer, Reply

from scene_sim.backends import CallFailed, FatalBackendError, GenerateRequest, ManagedBackend, create_backend
from scene_sim.errors import SceneSimError

SYSTEM = "You are Dana in a group chat."
SCHEMA = {
    "type": "object",
    "properties": {"action": {"type": "string", "enum": ["message", "react", "no-op"]}, "content": {"type": "string"}},
    "required": ["action", "content"],
    "additionalProperties": False,
}


def request(**kw) -> GenerateRequest:
    kw.setdefault(
        "messages",
        (
            {"role": "user", "content": "Hi all"},
            {"role": "assistant", "content": "Hey"},
            {"role": "user", "content": "What now?"},
        ),
    )
    kw.setdefault("system", SYSTEM)
    return GenerateRequest(**kw)


def managed(kit: Kit, server: FakeServer, **kw) -> ManagedBackend:
    kw.setdefault("cache_mode", "off")
    kw.setdefault("timeout_s", 5.0)
    backend = create_backend(kit.model(server), **kw)
    backend.backoff_base_s = 0.01  # keep jittered backoff short; retry-after waits stay real
    return backend


async def test_plain_text(kit: Kit, server: FakeServer) -> None:
    server.queue(kit.text("Hello there", input_tokens=120, output_tokens=7, cached=100))
    async with managed(kit, server) as backend:
        resp = await backend.generate(request(temperature=0.5, max_tokens=64, stop=("\n\n",)))
    assert resp.text == "Hello there"
    assert resp.parsed is None
    assert (resp.usage.input_tokens, resp.usage.output_tokens, resp.usage.cached_tokens) == (120, 7, 100)
    assert resp.attempts == 1 and resp.retries == () and not resp.cache_hit
    assert resp.model == f"{kit.provider}/{kit.model_name}"
    assert resp.latency_s > 0
    (rec,) = server.posts
    body = rec.json
    if kit.provider == "anthropic":
        assert rec.path == "/v1/messages"
        assert body["system"] == [{"type": "text", "text": SYSTEM, "cache_control": {"type": "ephemeral"}}]
        assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
        assert body["max_tokens"] == 64 and body["temperature"] == 0.5 and body["stop_sequences"] == ["\n\n"]
        assert "cache_read_input_tokens" not in body
    elif kit.provider == "openai":
        assert rec.path == "/v1/chat/completions"
        assert body["messages"][0] == {"role": "system", "content": SYSTEM}
        assert [m["role"] for m in body["messages"]] == ["system", "user", "assistant", "user"]
        assert body["max_tokens"] == 64 and body["temperature"] == 0.5 and body["stop"] == ["\n\n"]
        assert "response_format" not in body
    else:
        assert rec.path.endswith(f"/models/{kit.model_name}:generateContent")
        assert body["systemInstruction"]["parts"] == [{"text": SYSTEM}]
        assert [c["role"] for c in body["contents"]] == ["user", "model", "user"]
        config = body["generationConfig"]
        assert config["maxOutputTokens"] == 64 and config["temperature"] == 0.5 and config["stopSequences"] == ["\n\n"]


async def test_structured_output(kit: Kit, server: FakeServer) -> None:
    answer = {"action": "message", "content": "sounds good"}
    server.queue(kit.structured(answer))
    async with managed(kit, server) as backend:
        resp = await backend.generate(request(schema=SCHEMA, schema_name="action", seed=7))
    assert resp.parsed == answer
    body = server.posts[0].json
    if kit.provider == "anthropic":
        assert body["tools"][0]["name"] == "action"
        assert body["tools"][0]["input_schema"] == SCHEMA
        assert body["tool_choice"] == {"type": "tool", "name": "action"}
    elif kit.provider == "openai":
        fmt = body["response_format"]
        assert fmt["type"] == "json_schema"
        assert fmt["json_schema"] == {"name": "action", "schema": SCHEMA, "strict": True}
        assert body["seed"] == 7
    else:
        config = body["generationConfig"]
        assert config["responseMimeType"] == "application/json"
        assert config["responseJsonSchema"] == SCHEMA
        assert config["seed"] == 7


async def test_structured_output_in_code_fence(kit: Kit, server: FakeServer) -> None:
    """A JSON answer wrapped in chatter and a code fence is still decoded (for Anthropic: no tool call)."""
    server.queue(kit.text('Sure:\n```json\n{"action": "react", "content": ""}\n```'))
    async with managed(kit, server) as backend:
        resp = await backend.generate(request(schema=SCHEMA))
    assert resp.parsed == {"action": "react", "content": ""}


async def test_unparseable_output_gives_parsed_none(kit: Kit, server: FakeServer) -> None:
    server.queue(kit.text("I would rather not answer in JSON."))
    async with managed(kit, server) as backend:
        resp = await backend.generate(request(schema=SCHEMA))
    assert resp.parsed is None
    assert resp.attempts == 1  # bad model output is the caller's to re-query, never an error


async def test_429_honours_retry_after(kit: Kit, server: FakeServer) -> None:
    headers = {"retry-after-ms": "400"} if kit.provider == "openai" else {"retry-after": "0.4"}
    server.queue(kit.error(429, "rate limited, slow down", headers), kit.text("after wait"))
    async with managed(kit, server) as backend:
        resp = await backend.generate(request())
    assert resp.text == "after wait"
    assert resp.attempts == 2
    (retry,) = resp.retries
    assert retry["attempt"] == 1 and retry["status"] == 429
    assert "slow down" in retry["error"]
    assert retry["wait_s"] >= 0.4
    first, second = server.posts
    assert second.started - first.started >= 0.39  # the wait really happened


async def test_500_then_success(kit: Kit, server: FakeServer) -> None:
    server.queue(kit.error(500, "internal error"), kit.error(503, "unavailable"), kit.text("ok now"))
    async with managed(kit, server) as backend:
        resp = await backend.generate(request())
    assert resp.text == "ok now"
    assert resp.attempts == 3
    assert [r["status"] for r in resp.retries] == [500, 503]
    assert [r["attempt"] for r in resp.retries] == [1, 2]


async def test_retries_are_bounded(kit: Kit, server: FakeServer) -> None:
    server.default = kit.error(503, "still down")
    async with managed(kit, server, max_attempts=3) as backend:
        with pytest.raises(CallFailed) as info:
            await backend.generate(request())
    err = info.value
    assert not isinstance(err, SceneSimError)
    assert err.kind == "retry" and err.attempts == 3 and len(err.retries) == 2
    assert "still down" in str(err)
    assert len(server.posts) == 3


async def test_timeout_is_retried(kit: Kit, server: FakeServer) -> None:
    server.queue(Reply(200, {}, delay_s=3.0), kit.text("in time"))
    async with managed(kit, server, timeout_s=0.4) as backend:
        resp = await backend.generate(request())
    # the stalled attempt was abandoned, not waited out (its speed target: benchmarks/timings.py timeout_retry)
    assert resp.text == "in time"
    # on a loaded machine a second attempt may also miss 0.4 s; every failed one was a timeout
    assert resp.attempts >= 2 and len(resp.retries) == resp.attempts - 1
    assert all("timeout" in r["error"].lower() and "0.4s" in r["error"] for r in resp.retries)


async def test_malformed_body_is_retried(kit: Kit, server: FakeServer) -> None:
    server.queue(Reply(200, "this is not json {"), kit.text("fine"))
    async with managed(kit, server) as backend:
        resp = await backend.generate(request())
    assert resp.text == "fine" and resp.attempts == 2
    assert "malformed" in resp.retries[0]["error"]


async def test_connection_error_is_retried(kit: Kit, server: FakeServer) -> None:
    dead = FakeServer()
    url = dead.url
    dead.close()  # nothing listens there any more
    model = kit.model(server).replace(server.url, url)
    backend = create_backend(model, cache_mode="off", max_attempts=2, timeout_s=5)
    backend.backoff_base_s = 0.01
    with pytest.raises(CallFailed) as info:
        await backend.generate(request())
    await backend.aclose()
    assert info.value.kind == "retry" and info.value.attempts == 2


@pytest.mark.parametrize("status", [400, 401, 403, 404])
async def test_fatal_errors_fail_at_once(kit: Kit, server: FakeServer, status: int) -> None:
    server.default = kit.error(status, f"provider says no ({status})")
    async with managed(kit, server) as backend:
        with pytest.raises(FatalBackendError) as info:
            await backend.generate(request())
    err = info.value
    assert isinstance(err, SceneSimError)  # the CLI prints it as a one-line user error
    assert err.kind == "fatal" and err.status == status and err.attempts == 1 and err.retries == ()
    assert f"provider says no ({status})" in str(err)
    assert "\n" not in str(err)
    assert len(server.posts) == 1


async def test_anthropic_529_overloaded(server: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import KITS

    kit = KITS["anthropic"]
    monkeypatch.setenv(kit.key_env, SECRET)
    server.queue(kit.error(529, "Overloaded"), kit.text("back"))
    async with managed(kit, server) as backend:
        resp = await backend.generate(request())
    assert resp.text == "back" and resp.attempts == 2
    assert resp.retries[0]["status"] == 529 and "Overloaded" in resp.retries[0]["error"]


async def test_anthropic_spend_limit_429_is_fatal(server: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import KITS

    kit = KITS["anthropic"]
    monkeypatch.setenv(kit.key_env, SECRET)
    server.default = kit.error(429, "spend limit reached", details={"error_code": "enforced_spend_limit_reached"})
    async with managed(kit, server) as backend:
        with pytest.raises(FatalBackendError):
            await backend.generate(request())
    assert len(server.posts) == 1


async def test_google_retry_info_in_body(server: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import KITS

    kit = KITS["google"]
    monkeypatch.setenv(kit.key_env, SECRET)
    retry_info = [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "0.3s"}]
    server.queue(kit.error(429, "quota", details=retry_info), kit.text("ok"))
    async with managed(kit, server) as backend:
        resp = await backend.generate(request())
    assert resp.attempts == 2 and resp.retries[0]["wait_s"] >= 0.3


async def test_openai_insufficient_quota_is_fatal(server: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import KITS

    kit = KITS["openai"]
    monkeypatch.setenv(kit.key_env, SECRET)
    server.default = Reply(
        429,
        {
            "error": {
                "message": "You exceeded your current quota",
                "type": "insufficient_quota",
                "code": "insufficient_quota",
            }
        },
    )
    async with managed(kit, server) as backend:
        with pytest.raises(FatalBackendError, match="exceeded your current quota"):
            await backend.generate(request())
    assert len(server.posts) == 1


async def test_openai_platform_uses_max_completion_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    backend = create_backend("openai/gpt-test", cache_mode="off")
    params = backend.backend.build_params(
        request(max_tokens=33, schema={"type": "object", "properties": {"x": {"type": "string"}}})
    )
    assert params["max_completion_tokens"] == 33 and "max_tokens" not in params
    assert params["response_format"]["json_schema"]["strict"] is False  # open schema: strict mode would reject it


async def test_base_url_from_sdk_env_variable(kit: Kit, server: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"anthropic": "ANTHROPIC_BASE_URL", "google": "GOOGLE_GEMINI_BASE_URL", "openai": "OPENAI_BASE_URL"}
    monkeypatch.setenv(env[kit.provider], server.url + ("/v1" if kit.provider == "openai" else ""))
    server.queue(kit.text("via env"))
    backend = create_backend(f"{kit.provider}/{kit.model_name}", cache_mode="off")
    assert backend.backend.base_url and backend.backend.base_url.startswith(server.url)
    resp = await backend.generate(request())
    await backend.aclose()
    assert resp.text == "via env" and len(server.posts) == 1


async def test_sdk_retries_are_off(kit: Kit, server: FakeServer) -> None:
    """One managed attempt is one HTTP request: the SDK must not retry on its own."""
    server.default = kit.error(500, "boom")
    async with managed(kit, server, max_attempts=1) as backend:
        with pytest.raises(CallFailed):
            await backend.generate(request())
    assert len(server.posts) == 1


async def test_choices_become_an_enum_schema(kit: Kit, server: FakeServer) -> None:
    choices = ("message", "react", "no-op")
    server.queue(kit.structured({"choice": "dance"}), kit.structured({"choice": "React"}))
    async with managed(kit, server) as backend:
        resp = await backend.generate(request(choices=choices))
    assert resp.text == "react"  # case-insensitive match, after one re-query for an answer outside the set
    assert resp.attempts == 2 and "matches none" in resp.retries[0]["error"]
    body = server.posts[0].json
    expected = {"type": "string", "enum": list(choices)}
    if kit.provider == "anthropic":
        assert body["tools"][0]["input_schema"]["properties"]["choice"] == expected
    elif kit.provider == "openai":
        assert body["response_format"]["json_schema"]["schema"]["properties"]["choice"] == expected
        assert body["response_format"]["json_schema"]["strict"] is True
    else:
        assert body["generationConfig"]["responseJsonSchema"]["properties"]["choice"] == expected


async def test_openai_compatible_server_needs_no_key(server: FakeServer) -> None:
    from conftest import KITS

    kit = KITS["openai"]
    server.queue(kit.text("local llama"))
    backend = create_backend(f"openai/llama3?base_url={server.url}/v1", cache_mode="off")
    resp = await backend.generate(request())
    await backend.aclose()
    assert resp.text == "local llama"
    assert server.posts[0].headers["authorization"] == "Bearer not-needed"
    assert "max_tokens" in server.posts[0].json


async def test_openai_api_key_env_option(server: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import KITS

    monkeypatch.setenv("MY_ROUTER_KEY", "router-secret-value-42")
    server.queue(KITS["openai"].text("routed"))
    backend = create_backend(f"openai/some/model?base_url={server.url}/v1&api_key_env=MY_ROUTER_KEY", cache_mode="off")
    await backend.generate(request())
    await backend.aclose()
    assert server.posts[0].headers["authorization"] == "Bearer router-secret-value-42"


async def test_anthropic_drops_temperature_when_rejected(server: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import KITS

    kit = KITS["anthropic"]
    monkeypatch.setenv(kit.key_env, SECRET)
    server.queue(kit.error(400, "temperature is deprecated for this model"), kit.text("fine"), kit.text("again"))
    async with managed(kit, server) as backend:
        resp = await backend.generate(request(temperature=0.7))
        assert resp.text == "fine" and resp.attempts == 2
        await backend.generate(request(temperature=0.2))
    assert server.posts[0].json["temperature"] == 0.7
    assert "temperature" not in server.posts[1].json and "temperature" not in server.posts[2].json


async def test_anthropic_sampling_option_off(server: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import KITS

    kit = KITS["anthropic"]
    monkeypatch.setenv(kit.key_env, SECRET)
    server.queue(kit.text("x"))
    backend = create_backend(kit.model(server, sampling="false", cache_prompt="false"), cache_mode="off")
    await backend.generate(request(temperature=0.7))
    await backend.aclose()
    body = server.posts[0].json
    assert "temperature" not in body
    assert "cache_control" not in body["system"][0]
