"""Gemini API backend (``google/<model>``) through the google-genai SDK.

One attempt per :meth:`GoogleBackend.generate` through
``genai.Client(...).aio.models.generate_content`` with the SDK's own retries
off. Structured output uses ``response_mime_type="application/json"`` with
``response_json_schema`` (``response_schema`` on SDKs that lack it).
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any, ClassVar

from scene_sim.backends.base import (
    RETRY_STATUSES,
    Backend,
    BackendError,
    Capabilities,
    GenerateRequest,
    GenerateResponse,
    Usage,
    is_transport_error,
    parse_retry_after,
    redact,
    require_sdk,
)
from scene_sim.errors import SceneSimError

__all__ = ["GoogleBackend"]

KEY_ENVS = ("GOOGLE_API_KEY", "GEMINI_API_KEY")
BASE_URL_ENV = "GOOGLE_GEMINI_BASE_URL"


def _retry_delay(details: Any) -> float | None:
    """``RetryInfo.retryDelay`` ("12s", "1.5s") from a Google error body, if any."""
    err = details.get("error", details) if isinstance(details, dict) else None
    items = err.get("details") if isinstance(err, dict) else None
    for item in items or []:
        if isinstance(item, dict) and str(item.get("@type", "")).endswith("RetryInfo"):
            delay = str(item.get("retryDelay", "")).strip()
            if delay.endswith("s"):
                try:
                    return max(0.0, float(delay[:-1]))
                except ValueError:
                    return None
    return None


def _usage(metadata: Any) -> Usage:
    if metadata is None:
        return Usage()
    prompt = int(getattr(metadata, "prompt_token_count", 0) or 0)
    output = int(getattr(metadata, "candidates_token_count", 0) or 0)
    thoughts = int(getattr(metadata, "thoughts_token_count", 0) or 0)
    cached = int(getattr(metadata, "cached_content_token_count", 0) or 0)
    return Usage(input_tokens=prompt, output_tokens=output + thoughts, cached_tokens=cached)


class GoogleBackend(Backend):
    """Gemini through the Gemini Developer API.

    Args:
        model: the Gemini model id (``gemini-2.5-flash``, ...).
        base_url: endpoint override (default: ``$GOOGLE_GEMINI_BASE_URL``, else the SDK default).
        thinking_budget: thinking tokens allowed (0 turns thinking off where the model allows).
        timeout_s: the SDK's own HTTP timeout.

    Raises:
        SceneSimError: when ``google-genai`` is missing or neither
            ``GOOGLE_API_KEY`` nor ``GEMINI_API_KEY`` is set.

    """

    provider: ClassVar[str] = "google"
    capabilities: ClassVar[Capabilities] = Capabilities(structured_output=True, scores_choices=False, seed=True)
    default_max_connections: ClassVar[int] = 16
    valid_options: ClassVar[frozenset[str] | None] = frozenset({"thinking_budget"})

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        thinking_budget: int | None = None,
        timeout_s: float | None = None,
        **options: Any,
    ) -> None:
        base_url = base_url or os.environ.get(BASE_URL_ENV) or None
        super().__init__(model, base_url=base_url, thinking_budget=thinking_budget, **options)
        self._genai = require_sdk("google.genai", "google", "the google/ backend")
        self._types = require_sdk("google.genai.types", "google", "the google/ backend")
        self._errors = require_sdk("google.genai.errors", "google", "the google/ backend")
        if not any(os.environ.get(name) for name in KEY_ENVS):
            raise SceneSimError(
                f"model '{self.model_string}' needs a Gemini API key: set the GOOGLE_API_KEY "
                "or GEMINI_API_KEY environment variable"
            )
        self.thinking_budget = None if thinking_budget is None else int(thinking_budget)
        self.timeout_s = timeout_s
        self._client: Any = None
        self._client_loop: asyncio.AbstractEventLoop | None = None

    @staticmethod
    def _api_key() -> str | None:
        return next((os.environ[name] for name in KEY_ENVS if os.environ.get(name)), None)

    def _get_client(self) -> Any:
        loop = asyncio.get_running_loop()
        if self._client is None or self._client_loop is not loop:
            types = self._types
            http: dict[str, Any] = {}
            if self.base_url:
                http["base_url"] = self.base_url
            if self.timeout_s is not None:
                http["timeout"] = int(self.timeout_s * 1000)  # milliseconds
            if "retry_options" in types.HttpOptions.model_fields:
                http["retry_options"] = types.HttpRetryOptions(attempts=1)
            self._client = self._genai.Client(
                api_key=self._api_key(), vertexai=False, http_options=types.HttpOptions(**http)
            )
            self._client_loop = loop
        return self._client

    def build_config(self, request: GenerateRequest) -> Any:
        """Build the ``GenerateContentConfig`` for ``request``."""
        types = self._types
        fields = types.GenerateContentConfig.model_fields
        config: dict[str, Any] = {"max_output_tokens": request.max_tokens}
        if request.system:
            config["system_instruction"] = request.system
        if request.temperature is not None:
            config["temperature"] = request.temperature
        if request.seed is not None:
            config["seed"] = request.seed
        if request.stop:
            config["stop_sequences"] = list(request.stop)
        if request.schema is not None:
            config["response_mime_type"] = "application/json"
            if "response_json_schema" in fields:
                config["response_json_schema"] = request.schema
            else:  # pragma: no cover - google-genai before response_json_schema
                config["response_schema"] = request.schema
        if self.thinking_budget is not None:
            config["thinking_config"] = types.ThinkingConfig(thinking_budget=self.thinking_budget)
        return types.GenerateContentConfig(**config)

    @staticmethod
    def build_contents(request: GenerateRequest) -> list[dict[str, Any]]:
        """Return the conversation as Gemini ``contents`` (assistant turns have role ``model``)."""
        contents = []
        for message in request.messages:
            role = "model" if message.get("role") == "assistant" else "user"
            contents.append({"role": role, "parts": [{"text": message.get("content", "")}]})
        return contents

    async def generate(self, request: GenerateRequest) -> GenerateResponse:
        """One ``generate_content`` call."""
        config = self.build_config(request)
        response = await self._get_client().aio.models.generate_content(
            model=self.model, contents=self.build_contents(request), config=config
        )
        try:
            candidates = response.candidates or []
            finish: str | None = None
            texts: list[str] = []
            if candidates:
                candidate = candidates[0]
                reason = getattr(candidate, "finish_reason", None)
                finish = getattr(reason, "value", reason)
                content = getattr(candidate, "content", None)
                for part in getattr(content, "parts", None) or []:
                    if getattr(part, "text", None) and not getattr(part, "thought", False):
                        texts.append(part.text)
            else:
                feedback = getattr(response, "prompt_feedback", None)
                reason = getattr(feedback, "block_reason", None)
                if reason is None:
                    raise BackendError("malformed response from Gemini: no candidates", kind="retry")
                finish = str(getattr(reason, "value", reason))  # a blocked prompt: empty text
            parsed = getattr(response, "parsed", None)
            if not isinstance(parsed, dict | list):
                parsed = None
            tokens = _usage(getattr(response, "usage_metadata", None))
        except BackendError:
            raise
        except (AttributeError, TypeError, ValueError) as exc:
            raise BackendError(f"malformed response from Gemini: {type(exc).__name__}: {exc}", kind="retry") from exc
        return GenerateResponse(
            text="".join(texts), parsed=parsed, usage=tokens, model=self.model_string, finish_reason=finish
        )

    def classify(self, exc: BaseException) -> BackendError:
        """429 / 408 / 5xx / timeouts / connection errors retry; other 4xx are fatal."""
        if isinstance(exc, BackendError):
            return exc
        errors = self._errors
        if isinstance(exc, errors.APIError):
            status = int(getattr(exc, "code", 0) or 0)
            text = getattr(exc, "message", None) or str(exc)
            state = getattr(exc, "status", None)
            message = redact(f"Gemini {status}{' ' + str(state) if state else ''}: {text}")
            if status in RETRY_STATUSES or status >= 500 or status == 0:  # 0: no status, a transport fault
                headers = getattr(getattr(exc, "response", None), "headers", None)
                retry_after = parse_retry_after(headers)
                if retry_after is None:
                    retry_after = _retry_delay(getattr(exc, "details", None))
                return BackendError(message, kind="retry", status=status or None, retry_after=retry_after)
            return BackendError(message, kind="fatal", status=status)
        if is_transport_error(exc):
            return BackendError(redact(f"Gemini transport error: {type(exc).__name__}: {exc}"), kind="retry")
        if isinstance(exc, json.JSONDecodeError) or type(exc).__name__ == "ValidationError":
            return BackendError(redact(f"malformed response from Gemini: {type(exc).__name__}: {exc}"), kind="retry")
        return super().classify(exc)

    async def aclose(self) -> None:
        """Close the HTTP client."""
        client, self._client = self._client, None
        if client is not None and self._client_loop is asyncio.get_running_loop():
            closer = getattr(client.aio, "aclose", None)
            if closer is not None:
                await closer()
