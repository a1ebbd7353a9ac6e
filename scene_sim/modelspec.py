"""Model strings: ``provider/model[?option=value&...]``, as in inspect_ai.

``anthropic/claude-...``, ``google/gemini-...``, ``openai/gpt-...`` (any
OpenAI-compatible server through ``base_url``), ``hf/<hub-id-or-path>``,
``local`` (the embedded SmolLM2), ``scripted/<policy>`` (offline
policies) and ``fake/<name>`` (a schema-valid stand-in with configurable
latency, for tests and benchmarks) and ``human`` (a person at the terminal,
``scene-sim play``) and ``custom/<name>`` (a backend of your own, added with
:meth:`scene_sim.context.RunContext.add`). Options after ``?`` are passed to the provider, e.g.
``openai/llama3?base_url=http://localhost:8000/v1`` or
``hf/Qwen/Qwen2.5-0.5B-Instruct?adapter=./lora``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from scene_sim.errors import SceneSimError, suggest

__all__ = ["PROVIDERS", "PROVIDER_ALIASES", "ModelSpec"]

#: Every provider prefix a model string may use.
PROVIDERS = ("anthropic", "google", "openai", "hf", "local", "scripted", "fake", "human", "custom")

#: What people write instead of a provider: model families, hosts and servers, mapped to the provider
#: prefix that serves them (OpenAI-compatible servers and hosts are ``openai/...?base_url=...``).
PROVIDER_ALIASES = {
    "gemini": "google",
    "gemma": "google",
    "vertex": "google",
    "vertexai": "google",
    "googleai": "google",
    "claude": "anthropic",
    "gpt": "openai",
    "chatgpt": "openai",
    "o1": "openai",
    "o3": "openai",
    "o4": "openai",
    "azure": "openai",
    "openrouter": "openai",
    "together": "openai",
    "vllm": "openai",
    "ollama": "openai",
    "llama": "openai",
    "mistral": "openai",
    "qwen": "openai",
    "deepseek": "openai",
    "huggingface": "hf",
    "hugging_face": "hf",
    "transformers": "hf",
    "smollm": "local",
    "script": "scripted",
}


def _coerce(value: str) -> Any:
    low = value.lower()
    if low in ("true", "false"):
        return low == "true"
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model string."""

    provider: str
    name: str = ""
    options: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    raw: str = ""

    @classmethod
    def parse(cls, text: str) -> ModelSpec:
        """Parse ``text``; unknown providers raise with the list of valid ones.

        Raises:
            SceneSimError: for an empty string, an unknown provider or a
                provider that needs a model name but got none.

        """
        raw = (text or "").strip()
        if not raw:
            raise SceneSimError(f"empty model string; use provider/model with provider one of: {', '.join(PROVIDERS)}")
        body, _, query = raw.partition("?")
        provider, _, name = body.partition("/")
        provider = provider.strip().lower()
        if provider not in PROVIDERS:
            hint = suggest(provider, PROVIDERS, aliases=PROVIDER_ALIASES)
            raise SceneSimError(
                f"unknown model provider '{provider}' in '{raw}'{hint}; "
                f"valid providers: {', '.join(PROVIDERS)} (e.g. anthropic/claude-sonnet-4-5, scripted/learner, local)"
            )
        if provider in ("anthropic", "google", "openai", "hf") and not name:
            raise SceneSimError(f"model string '{raw}' needs a model name: {provider}/<model>")
        options = {k: _coerce(v) for k, v in parse_qsl(query, keep_blank_values=True)}
        return cls(provider=provider, name=name.strip(), options=options, raw=raw)

    def __str__(self) -> str:
        return self.raw or (f"{self.provider}/{self.name}" if self.name else self.provider)
