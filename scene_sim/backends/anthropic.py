"""Anthropic Messages API backend (``anthropic/<model>``).

One attempt per :meth:`AnthropicBackend.generate` through
``AsyncAnthropic().messages.create`` (the SDK's own retries are off; the
managed wrapper retries). The system text is sent as a text block marked
``cache_control: ephemeral`` so Anthropic's prompt cache serves the stable
prefix; structured output uses a forced tool whose input is the answer.

Sampling: anthropic SDK 1.x dropped ``temperature`` from ``messages.create``'s
signature (current Claude models ignore or reject it), so it travels in
``extra_body``, which works with every SDK version. When the API rejects it
(HTTP 400 naming ``temperature``), the backend stops sending it and the call
is retried; ``?sampling=false`` never sends it.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from typing import Any, ClassVar

from scene_sim.backends.base import (
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
    status_error,
)
from scene_sim.errors import SceneSimError

__all__ = ["AnthropicBackend"]

KEY_ENV = "ANTHROPIC_API_KEY"
BASE_URL_ENV = "ANTHROPIC_BASE_URL"
_FATAL_429_CODES = frozenset({"enforced_spend_limit_reached"})


def _tool_name(name: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9_-]", "_", name or "output")[:64]
    return cleaned or "output"


def _error_message(exc: Any) -> str:
    """Return the provider's own error text (``error.message`` of the body) when there is one."""
    message = getattr(exc, "api_message", None)
    body = getattr(exc, "body", None)
    if not message and isinstance(body, dict):
        err = body.get("error")
        message = err.get("message") if isinstance(err, dict) else None
    return str(message or getattr(exc, "message", None) or exc)


def _body_error_code(body: Any) -> str | None:
    """Return ``error.details.error_code`` of an error body (older SDKs do not extract it)."""
    err = body.get("error") if isinstance(body, dict) else None
    details = err.get("details") if isinstance(err, dict) else None
    code = details.get("error_code") if isinstance(details, dict) else None
    return code if isinstance(code, str) else None


class AnthropicBackend(Backend):
    """Claude through the Anthropic Messages API.

    Args:
        model: the Claude model id (``claude-sonnet-4-5``, ...).
        base_url: endpoint override (default: ``$ANTHROPIC_BASE_URL``, else the SDK default).
        cache_prompt: mark the system prefix for prompt caching (default true).
        sampling: send ``temperature`` (default true; dropped automatically when the model rejects it).
        timeout_s: the SDK's own HTTP timeout (the managed wrapper's per-attempt
            timeout is the one that counts).

    Raises:
        SceneSimError: when the ``anthropic`` package is missing or ``ANTHROPIC_API_KEY`` is unset.

    """

    provider: ClassVar[str] = "anthropic"
    capabilities: ClassVar[Capabilities] = Capabilities(structured_output=True, scores_choices=False, seed=False)
    default_max_connections: ClassVar[int] = 16
    valid_options: ClassVar[frozenset[str] | None] = frozenset({"cache_prompt", "sampling"})

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        cache_prompt: bool = True,
        sampling: bool = True,
        timeout_s: float | None = None,
        **options: Any,
    ) -> None:
        base_url = base_url or os.environ.get(BASE_URL_ENV) or None
        super().__init__(model, base_url=base_url, cache_prompt=cache_prompt, sampling=sampling, **options)
        self._sdk = require_sdk("anthropic", "anthropic", "the anthropic/ backend")
        if not os.environ.get(KEY_ENV):
            raise SceneSimError(
                f"model '{self.model_string}' needs an Anthropic API key: set the {KEY_ENV} environment variable"
            )
        self.cache_prompt = bool(cache_prompt)
        self.sampling = bool(sampling)
        self.timeout_s = timeout_s
        self._client: Any = None
        self._client_loop: asyncio.AbstractEventLoop | None = None

    def _get_client(self) -> Any:
        loop = asyncio.get_running_loop()
        if self._client is None or self._client_loop is not loop:
            kwargs: dict[str, Any] = {"api_key": os.environ.get(KEY_ENV), "max_retries": 0}
            if self.base_url:
                kwargs["base_url"] = self.base_url
            if self.timeout_s is not None:
                kwargs["timeout"] = self.timeout_s
            self._client = self._sdk.AsyncAnthropic(**kwargs)
            self._client_loop = loop
        return self._client

    def build_params(self, request: GenerateRequest) -> dict[str, Any]:
        """Return the keyword arguments of ``messages.create`` for ``request``."""
        system_parts = [request.system] if request.system else []
        messages: list[dict[str, Any]] = []
        for message in request.messages:
            role = message.get("role", "user")
            if role == "system":
                system_parts.append(message.get("content", ""))
                continue
            role = "assistant" if role == "assistant" else "user"
            messages.append({"role": role, "content": message.get("content", "")})
        params: dict[str, Any] = {"model": self.model, "max_tokens": request.max_tokens, "messages": messages}
        if system_parts:
            block: dict[str, Any] = {"type": "text", "text": "\n\n".join(system_parts)}
            if self.cache_prompt:
                block["cache_control"] = {"type": "ephemeral"}
            params["system"] = [block]
        if request.temperature is not None and self.sampling:
            params["extra_body"] = {"temperature": request.temperature}
        if request.stop:
            params["stop_sequences"] = list(request.stop)
        if request.schema is not None:
            name = _tool_name(request.schema_name)
            params["tools"] = [
                {
                    "name": name,
                    "description": f"Give your answer as {name}, following the input schema exactly.",
                    "input_schema": self._object_schema(request.schema),
                }
            ]
            params["tool_choice"] = {"type": "tool", "name": name}
        return params

    @staticmethod
    def _object_schema(schema: dict[str, Any]) -> dict[str, Any]:
        """Tool input must be an object: wrap any other schema as ``{"value": ...}``."""
        if schema.get("type") == "object":
            return schema
        return {"type": "object", "properties": {"value": schema}, "required": ["value"]}

    async def generate(self, request: GenerateRequest) -> GenerateResponse:
        """One ``messages.create`` call."""
        params = self.build_params(request)
        message = await self._get_client().messages.create(**params)
        try:
            texts: list[str] = []
            parsed: Any = None
            for block in message.content or []:
                kind = getattr(block, "type", None)
                if kind == "text":
                    texts.append(block.text)
                elif kind == "tool_use" and request.schema is not None and parsed is None:
                    parsed = block.input
                    if request.schema.get("type") != "object" and isinstance(parsed, dict) and "value" in parsed:
                        parsed = parsed["value"]
            text = json.dumps(parsed, ensure_ascii=False) if parsed is not None else "".join(texts)
            usage = message.usage
            cache_read = int(getattr(usage, "cache_read_input_tokens", 0) or 0)
            cache_write = int(getattr(usage, "cache_creation_input_tokens", 0) or 0)
            tokens = Usage(
                input_tokens=int(usage.input_tokens or 0) + cache_read + cache_write,
                output_tokens=int(usage.output_tokens or 0),
                cached_tokens=cache_read,
            )
        except (AttributeError, TypeError, ValueError) as exc:
            raise BackendError(f"malformed response from Anthropic: {type(exc).__name__}: {exc}", kind="retry") from exc
        return GenerateResponse(
            text=text,
            parsed=parsed,
            usage=tokens,
            model=self.model_string,
            finish_reason=getattr(message, "stop_reason", None),
        )

    def classify(self, exc: BaseException) -> BackendError:
        """429 / 408 / 409 / 5xx / 529 / timeouts / connection errors retry; other 4xx are fatal."""
        if isinstance(exc, BackendError):
            return exc
        sdk = self._sdk
        if isinstance(exc, sdk.APITimeoutError):
            return BackendError("Anthropic request timed out", kind="retry")
        if isinstance(exc, sdk.APIConnectionError):
            return BackendError(redact(f"Anthropic connection error: {exc}"), kind="retry")
        if isinstance(exc, sdk.APIStatusError):
            status = int(exc.status_code)
            message = redact(f"Anthropic {status}: {_error_message(exc)}")
            headers = getattr(getattr(exc, "response", None), "headers", None)
            retry_after = parse_retry_after(headers)
            error_code = getattr(exc, "error_code", None) or _body_error_code(getattr(exc, "body", None))
            if status == 429 and error_code in _FATAL_429_CODES:
                return BackendError(message, kind="fatal", status=status)
            if status == 400 and self.sampling and "temperature" in message.lower():
                self.sampling = False  # this model takes no sampling parameters: stop sending them
                return BackendError(f"{message} (retrying without temperature)", kind="retry", status=status)
            return status_error(message, status, retry_after=retry_after)
        if isinstance(exc, (getattr(sdk, "APIResponseValidationError", ()), json.JSONDecodeError)):
            return BackendError(redact(f"malformed response from Anthropic: {exc}"), kind="retry")
        if is_transport_error(exc):
            return BackendError(redact(f"Anthropic transport error: {type(exc).__name__}: {exc}"), kind="retry")
        return super().classify(exc)

    async def aclose(self) -> None:
        """Close the HTTP client."""
        client, self._client = self._client, None
        if client is not None and self._client_loop is asyncio.get_running_loop():
            await client.close()
