"""Opt-in smoke tests against the real provider APIs (``pytest --real-api``, key variable set).

Each makes two tiny calls (a few dozen tokens) with the response cache off.
Override the model with SCENE_SIM_SMOKE_<PROVIDER>_MODEL.
"""

from __future__ import annotations

import os

import pytest

from scene_sim.backends import Accountant, GenerateRequest, create_backend

pytestmark = pytest.mark.real_api

MODELS = {
    "anthropic": ("claude-haiku-4-5", ("ANTHROPIC_API_KEY",)),
    "google": ("gemini-2.5-flash-lite", ("GOOGLE_API_KEY", "GEMINI_API_KEY")),
    "openai": ("gpt-4o-mini", ("OPENAI_API_KEY",)),
}
SCHEMA = {
    "type": "object",
    "properties": {"action": {"type": "string", "enum": ["message", "react", "no-op"]}, "content": {"type": "string"}},
    "required": ["action", "content"],
    "additionalProperties": False,
}


@pytest.mark.parametrize("provider", sorted(MODELS))
async def test_real_api_smoke(provider: str) -> None:
    model, keys = MODELS[provider]
    if not any(os.environ.get(k) for k in keys):
        pytest.skip(f"set {' or '.join(keys)} to run the {provider} smoke test")
    model = os.environ.get(f"SCENE_SIM_SMOKE_{provider.upper()}_MODEL", model)
    acc = Accountant()
    backend = create_backend(f"{provider}/{model}", cache_mode="off", accountant=acc, max_attempts=3, timeout_s=60)
    try:
        plain = await backend.generate(
            GenerateRequest(
                messages=({"role": "user", "content": "Reply with the single word: pong"},), max_tokens=16, role="smoke"
            )
        )
        assert "pong" in plain.text.lower()
        assert plain.usage.input_tokens > 0 and plain.usage.output_tokens > 0
        structured = await backend.generate(
            GenerateRequest(
                system="You are a member of a friendly group chat.",
                messages=({"role": "user", "content": "Someone says hi. Choose an action and short content."},),
                schema=SCHEMA,
                schema_name="action",
                max_tokens=200,
                role="smoke",
            )
        )
        assert isinstance(structured.parsed, dict) and structured.parsed.get("action") in ("message", "react", "no-op")
    finally:
        await backend.aclose()
    summary = acc.summary()["by_role"]["smoke"]
    assert next(iter(summary.values()))["calls"] == 2
