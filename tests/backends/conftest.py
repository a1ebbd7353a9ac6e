"""Fixtures for the backend tests: an isolated environment, a loopback provider, provider kits.

The provider SDKs run unmodified against :class:`FakeServer` on 127.0.0.1, so
their real request building, HTTP and error handling code is exercised.
Nothing touches the network: every base URL points at the loopback server.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fakeserver import FakeServer, Recorded, Reply

#: A distinctive fake key; it must never show up in caches, errors, logs or reports.
SECRET = "sk-test-DO-NOT-LEAK-123"

_ENV_TO_CLEAR = (
    "ANTHROPIC_API_KEY",
    "ANTHROPIC_AUTH_TOKEN",
    "ANTHROPIC_BASE_URL",
    "ANTHROPIC_PROFILE",
    "ANTHROPIC_CONFIG_DIR",
    "ANTHROPIC_CUSTOM_HEADERS",
    "GOOGLE_API_KEY",
    "GEMINI_API_KEY",
    "GOOGLE_GEMINI_BASE_URL",
    "GOOGLE_GENAI_USE_VERTEXAI",
    "GOOGLE_GENAI_USE_ENTERPRISE",
    "GOOGLE_CLOUD_PROJECT",
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "OPENAI_ORG_ID",
    "OPENAI_PROJECT_ID",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "SCENE_SIM_PRICES",
)


@pytest.fixture(autouse=True)
def _isolated_env(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Private cache dir; no real keys, base URLs or proxies (except for opt-in real-API tests)."""
    monkeypatch.setenv("SCENE_SIM_CACHE_DIR", str(tmp_path / "cache"))
    if request.node.get_closest_marker("real_api"):
        return
    for name in _ENV_TO_CLEAR:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


@pytest.fixture
def server() -> Iterator[FakeServer]:
    srv = FakeServer()
    try:
        yield srv
    finally:
        srv.close()


@dataclass(frozen=True)
class Kit:
    """How one provider looks on the wire: its model string, key variable and bodies."""

    provider: str
    key_env: str
    model_name: str

    def model(self, server: FakeServer, **options: Any) -> str:
        base = server.url + ("/v1" if self.provider == "openai" else "")
        query = "&".join(f"{k}={v}" for k, v in {"base_url": base, **options}.items())
        return f"{self.provider}/{self.model_name}?{query}"

    # -- success bodies -------------------------------------------------------------

    def text(self, text: str = "hello", *, input_tokens: int = 10, output_tokens: int = 5, cached: int = 0) -> Reply:
        if self.provider == "anthropic":
            body: dict[str, Any] = {
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "model": self.model_name,
                "content": [{"type": "text", "text": text}],
                "stop_reason": "end_turn",
                "stop_sequence": None,
                # Anthropic's input_tokens exclude cache reads; scene-sim adds them back.
                "usage": {
                    "input_tokens": input_tokens - cached,
                    "output_tokens": output_tokens,
                    "cache_read_input_tokens": cached,
                    "cache_creation_input_tokens": 0,
                },
            }
        elif self.provider == "openai":
            body = {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "created": 0,
                "model": self.model_name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {
                    "prompt_tokens": input_tokens,
                    "completion_tokens": output_tokens,
                    "total_tokens": input_tokens + output_tokens,
                    "prompt_tokens_details": {"cached_tokens": cached},
                },
            }
        else:
            body = {
                "candidates": [
                    {"content": {"role": "model", "parts": [{"text": text}]}, "finishReason": "STOP", "index": 0}
                ],
                "usageMetadata": {
                    "promptTokenCount": input_tokens,
                    "candidatesTokenCount": output_tokens,
                    "cachedContentTokenCount": cached,
                    "totalTokenCount": input_tokens + output_tokens,
                },
                "modelVersion": self.model_name,
            }
        return Reply(200, body)

    def structured(self, obj: Any, **usage: int) -> Reply:
        """The provider's structured answer: a forced tool call (Anthropic) or JSON text."""
        if self.provider != "anthropic":
            return self.text(json.dumps(obj), **usage)
        reply = self.text("", **usage)
        reply.body["content"] = [{"type": "tool_use", "id": "toolu_1", "name": "output", "input": obj}]
        reply.body["stop_reason"] = "tool_use"
        return reply

    # -- errors ---------------------------------------------------------------------

    def error(self, status: int, message: str, headers: dict[str, str] | None = None, **extra: Any) -> Reply:
        if self.provider == "anthropic":
            kinds = {
                400: "invalid_request_error",
                401: "authentication_error",
                403: "permission_error",
                404: "not_found_error",
                429: "rate_limit_error",
                529: "overloaded_error",
            }
            body: dict[str, Any] = {
                "type": "error",
                "error": {"type": kinds.get(status, "api_error"), "message": message, **extra},
            }
        elif self.provider == "openai":
            body = {"error": {"message": message, "type": "invalid_request_error", "code": None, **extra}}
        else:
            statuses = {
                400: "INVALID_ARGUMENT",
                401: "UNAUTHENTICATED",
                403: "PERMISSION_DENIED",
                404: "NOT_FOUND",
                429: "RESOURCE_EXHAUSTED",
                500: "INTERNAL",
                503: "UNAVAILABLE",
            }
            body = {"error": {"code": status, "message": message, "status": statuses.get(status, "UNKNOWN"), **extra}}
        return Reply(status, body, headers=headers or {})

    def sent_system(self, rec: Recorded) -> Any:
        body = rec.json
        if self.provider == "anthropic":
            return body["system"]
        if self.provider == "openai":
            return body["messages"][0]
        return body["systemInstruction"]


KITS = {
    "anthropic": Kit("anthropic", "ANTHROPIC_API_KEY", "claude-test"),
    "google": Kit("google", "GOOGLE_API_KEY", "gemini-test"),
    "openai": Kit("openai", "OPENAI_API_KEY", "gpt-test"),
}


@pytest.fixture(params=sorted(KITS))
def kit(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Kit:
    """Each API provider in turn, with the distinctive fake key set."""
    chosen = KITS[request.param]
    pytest.importorskip({"anthropic": "anthropic", "google": "google.genai", "openai": "openai"}[chosen.provider])
    monkeypatch.setenv(chosen.key_env, SECRET)
    return chosen
