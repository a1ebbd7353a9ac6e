"""OpenAI Chat Completions backend (``openai/<model>``), also for compatible servers.

One attempt per :meth:`OpenAIBackend.generate` through
``AsyncOpenAI(...).chat.completions.create`` with the SDK's retries off.
With ``base_url`` (model option or ``$OPENAI_BASE_URL``) it talks to any
OpenAI-compatible server: vLLM, Ollama, OpenRouter, Together. A local server
may need no key; then a placeholder is sent. ``api_key_env`` names another
variable to read the key from (``OPENROUTER_API_KEY``, ...).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from typing import Any, ClassVar
from urllib.parse import urlparse

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
    register_secret_env,
    require_sdk,
    status_error,
)
from scene_sim.errors import SceneSimError

__all__ = ["OpenAIBackend"]

KEY_ENV = "OPENAI_API_KEY"
BASE_URL_ENV = "OPENAI_BASE_URL"
#: Sent as the key to servers behind a base URL that need none (vLLM, Ollama).
PLACEHOLDER_KEY = "not-needed"
_FATAL_CODES = frozenset({"insufficient_quota", "invalid_api_key"})
_STRUCTURED_MODES = ("json_schema", "json_object", "none")


def _is_strict_compatible(schema: Any) -> bool:
    """Whether OpenAI's strict mode accepts ``schema`` (closed objects, every property required)."""
    if isinstance(schema, list):
        return all(_is_strict_compatible(item) for item in schema)
    if not isinstance(schema, dict):
        return True
    if schema.get("type") == "object" or "properties" in schema:
        props = schema.get("properties") or {}
        if schema.get("additionalProperties") is not False or set(schema.get("required") or []) != set(props):
            return False
    children: list[Any] = []
    for key in ("properties", "$defs", "definitions"):
        if isinstance(schema.get(key), dict):
            children += list(schema[key].values())
    children += [schema[key] for key in ("items", "prefixItems", "anyOf", "allOf", "oneOf") if key in schema]
    return all(_is_strict_compatible(child) for child in children)


def _error_message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        if isinstance(err, str):
            return err
    return str(getattr(exc, "message", None) or exc)


def _error_code(exc: Any) -> str | None:
    code = getattr(exc, "code", None)
    if code:
        return str(code)
    body = getattr(exc, "body", None)
    err = body.get("error", body) if isinstance(body, dict) else None
    return str(err.get("code")) if isinstance(err, dict) and err.get("code") else None


def _schema_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", name or "output")[:64] or "output"


class OpenAIBackend(Backend):
    """OpenAI models, or any OpenAI-compatible chat completions server.

    Args:
        model: the model id (``gpt-4o-mini``; for vLLM/Ollama the served model name).
        base_url: endpoint (default: ``$OPENAI_BASE_URL``, else api.openai.com).
        api_key_env: the environment variable holding the key (default ``OPENAI_API_KEY``).
        structured: how schemas are requested: ``json_schema`` (default; strict
            when the schema allows it), ``json_object`` or ``none`` (schema in
            the prompt only; for servers without response_format).
        sampling: send ``temperature`` (default true; dropped automatically when the model rejects it).
        timeout_s: the SDK's own HTTP timeout.

    Raises:
        SceneSimError: when ``openai`` is missing, or no key is set and no base URL is given.

    """

    provider: ClassVar[str] = "openai"
    capabilities: ClassVar[Capabilities] = Capabilities(structured_output=True, scores_choices=False, seed=True)
    default_max_connections: ClassVar[int] = 16
    valid_options: ClassVar[frozenset[str] | None] = frozenset({"api_key_env", "structured", "sampling"})

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key_env: str | None = None,
        structured: str = "json_schema",
        sampling: bool = True,
        timeout_s: float | None = None,
        **options: Any,
    ) -> None:
        base_url = base_url or os.environ.get(BASE_URL_ENV) or None
        super().__init__(
            model, base_url=base_url, api_key_env=api_key_env, structured=structured, sampling=sampling, **options
        )
        self._sdk = require_sdk("openai", "openai", "the openai/ backend")
        if structured not in _STRUCTURED_MODES:
            raise SceneSimError(
                f"model '{self.model_string}': option structured={structured!r} is not one of "
                f"{', '.join(_STRUCTURED_MODES)}"
            )
        self.structured = structured
        self.sampling = bool(sampling)
        self.key_env = str(api_key_env or KEY_ENV)
        register_secret_env(self.key_env)
        if not os.environ.get(self.key_env) and not self.base_url:
            raise SceneSimError(
                f"model '{self.model_string}' needs an OpenAI API key: set the {self.key_env} environment variable "
                "(or give a base_url for a local OpenAI-compatible server)"
            )
        self.timeout_s = timeout_s
        self._client: Any = None
        self._client_loop: asyncio.AbstractEventLoop | None = None

    @property
    def is_openai_platform(self) -> bool:
        """Whether requests go to api.openai.com (not a compatible server)."""
        return not self.base_url or (urlparse(self.base_url).hostname or "").endswith("api.openai.com")

    def _get_client(self) -> Any:
        loop = asyncio.get_running_loop()
        if self._client is None or self._client_loop is not loop:
            kwargs: dict[str, Any] = {
                "api_key": os.environ.get(self.key_env) or PLACEHOLDER_KEY,
                "max_retries": 0,
            }
            if self.base_url:
                kwargs["base_url"] = self.base_url
            if self.timeout_s is not None:
                kwargs["timeout"] = self.timeout_s
            self._client = self._sdk.AsyncOpenAI(**kwargs)
            self._client_loop = loop
        return self._client

    def build_params(self, request: GenerateRequest) -> dict[str, Any]:
        """Return the keyword arguments of ``chat.completions.create`` for ``request``."""
        messages: list[dict[str, Any]] = []
        system = request.system or ""
        if request.schema is not None and self.structured != "json_schema":
            system = (system + "\n\n" if system else "") + (
                "Answer with one JSON object that follows this JSON Schema, and nothing else:\n"
                + json.dumps(request.schema, ensure_ascii=False)
            )
        if system:
            messages.append({"role": "system", "content": system})
        messages += [{"role": m.get("role", "user"), "content": m.get("content", "")} for m in request.messages]
        params: dict[str, Any] = {"model": self.model, "messages": messages}
        # api.openai.com wants max_completion_tokens (reasoning models reject max_tokens);
        # compatible servers (vLLM, Ollama, ...) universally take max_tokens.
        params["max_completion_tokens" if self.is_openai_platform else "max_tokens"] = request.max_tokens
        if request.temperature is not None and self.sampling:
            params["temperature"] = request.temperature
        if request.seed is not None:
            params["seed"] = request.seed
        if request.stop:
            params["stop"] = list(request.stop)
        if request.schema is not None:
            if self.structured == "json_schema":
                params["response_format"] = {
                    "type": "json_schema",
                    "json_schema": {
                        "name": _schema_name(request.schema_name),
                        "schema": request.schema,
                        "strict": _is_strict_compatible(request.schema),
                    },
                }
            elif self.structured == "json_object":
                params["response_format"] = {"type": "json_object"}
        return params

    async def generate(self, request: GenerateRequest) -> GenerateResponse:
        """One ``chat.completions.create`` call."""
        completion = await self._get_client().chat.completions.create(**self.build_params(request))
        try:
            choices = getattr(completion, "choices", None)
            if not choices:
                extra = getattr(completion, "model_extra", None) or {}
                error = getattr(completion, "error", None) or extra.get("error")
                detail = error.get("message", error) if isinstance(error, dict) else error
                raise BackendError(
                    f"malformed response from {self.model_string}: no choices" + (f" ({detail})" if detail else ""),
                    kind="retry",
                )
            choice = choices[0]
            message = choice.message
            text = message.content or ""
            usage = completion.usage
            details = getattr(usage, "prompt_tokens_details", None) if usage is not None else None
            tokens = Usage(
                input_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
                output_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
                cached_tokens=int(getattr(details, "cached_tokens", 0) or 0),
            )
            finish = getattr(choice, "finish_reason", None)
            if not text and getattr(message, "refusal", None):
                finish = "refusal"
        except BackendError:
            raise
        except (AttributeError, TypeError, ValueError) as exc:
            raise BackendError(
                f"malformed response from {self.model_string}: {type(exc).__name__}: {exc}", kind="retry"
            ) from exc
        return GenerateResponse(text=text, usage=tokens, model=self.model_string, finish_reason=finish)

    def classify(self, exc: BaseException) -> BackendError:
        """429 / 408 / 409 / 5xx / timeouts / connection errors retry; other 4xx are fatal."""
        if isinstance(exc, BackendError):
            return exc
        sdk = self._sdk
        where = "OpenAI" if self.is_openai_platform else f"OpenAI-compatible server {self.base_url}"
        if isinstance(exc, sdk.APITimeoutError):
            return BackendError(f"{where}: request timed out", kind="retry")
        if isinstance(exc, sdk.APIConnectionError):
            return BackendError(redact(f"{where}: connection error: {exc}"), kind="retry")
        if isinstance(exc, sdk.APIStatusError):
            status = int(exc.status_code)
            message = redact(f"{where} {status}: {_error_message(exc)}")
            code = _error_code(exc)
            if code in _FATAL_CODES:
                return BackendError(message, kind="fatal", status=status)
            if status == 400 and self.sampling and "temperature" in message.lower():
                self.sampling = False  # e.g. reasoning models: only the default temperature is supported
                return BackendError(f"{message} (retrying without temperature)", kind="retry", status=status)
            headers = getattr(getattr(exc, "response", None), "headers", None)
            return status_error(message, status, retry_after=parse_retry_after(headers))
        if isinstance(exc, (getattr(sdk, "APIResponseValidationError", ()), json.JSONDecodeError)):
            return BackendError(redact(f"malformed response from {where}: {exc}"), kind="retry")
        if is_transport_error(exc):
            return BackendError(redact(f"{where}: transport error: {type(exc).__name__}: {exc}"), kind="retry")
        return super().classify(exc)

    async def aclose(self) -> None:
        """Close the HTTP client."""
        client, self._client = self._client, None
        if client is not None and self._client_loop is asyncio.get_running_loop():
            await client.close()
