"""The backend interface: one async ``generate`` plus a few hooks.

A provider (Anthropic, Gemini, an OpenAI-compatible server, a local
transformers model) implements :meth:`Backend.generate` for a single attempt
and the hooks below. Everything cross-cutting (connection limits, request
throttling, retries with jitter, the response cache and token / cost
accounting) is layered on top by :class:`scene_sim.backends.ManagedBackend`,
in one place, never per provider.
"""

from __future__ import annotations

import abc
import email.utils
import importlib
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, ClassVar, Literal

from scene_sim.errors import SceneSimError

__all__ = [
    "Backend",
    "BackendError",
    "Capabilities",
    "ErrorKind",
    "GenerateRequest",
    "GenerateResponse",
    "Usage",
    "is_transport_error",
    "parse_retry_after",
    "redact",
    "register_secret_env",
    "require_sdk",
]

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True, slots=True)
class GenerateRequest:
    """One model request.

    Attributes:
        messages: the conversation as ``{"role": "user"|"assistant", "content": str}``
            dicts, oldest first. Prompts put the stable part first and the
            growing transcript last so provider prefix caches hit.
        system: system text (the stable role + scenario part).
        schema: JSON Schema the output must follow (structured output); the
            response's ``parsed`` then holds the decoded object.
        schema_name: a short name for the schema (used by providers' tools).
        choices: a closed set of answers; the response ``text`` is exactly
            one of them. Local backends score them; API backends get an enum
            schema. Mutually exclusive with ``schema``.
        temperature: sampling temperature (None: provider default).
        max_tokens: output token limit.
        seed: sampling seed, where the provider supports one.
        stop: stop sequences.
        replicate: repetition index; part of the cache key so repetitions differ.
        role: the calling role (persona, subject, judge, ...), for accounting only.

    """

    messages: tuple[dict[str, str], ...]
    system: str | None = None
    schema: dict[str, Any] | None = None
    schema_name: str = "output"
    choices: tuple[str, ...] | None = None
    temperature: float | None = None
    max_tokens: int = 512
    seed: int | None = None
    stop: tuple[str, ...] = ()
    replicate: int = 0
    role: str = "agent"

    def __post_init__(self) -> None:
        if self.schema is not None and self.choices is not None:
            raise ValueError("a request takes a schema or choices, not both")
        if self.choices is not None and not self.choices:
            raise ValueError("choices must not be empty")


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts of one call (``cached_tokens`` are input tokens read from a prefix cache)."""

    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0


@dataclass(frozen=True, slots=True)
class GenerateResponse:
    """What a backend returns.

    Attributes:
        text: the raw output text (for ``choices``: the chosen choice).
        parsed: the decoded object when the request had a schema and the
            output parsed; None otherwise.
        usage: token counts.
        model: the model string that answered.
        latency_s: wall time of the successful attempt.
        attempts: attempts made (filled in by the retry wrapper).
        cache_hit: served from the response cache.
        retries: one record per failed attempt: ``{"attempt", "error", "wait_s"}``.
        finish_reason: provider's stop reason, if any.

    """

    text: str
    parsed: Any = None
    usage: Usage = field(default_factory=Usage)
    model: str = ""
    latency_s: float = 0.0
    attempts: int = 1
    cache_hit: bool = False
    retries: tuple[dict[str, Any], ...] = ()
    finish_reason: str | None = None


ErrorKind = Literal["retry", "fatal"]


class BackendError(Exception):
    """A provider call failed.

    Attributes:
        kind: ``retry`` (rate limit, overload, 5xx, timeout, connection) or
            ``fatal`` (bad request, auth, permission, missing model).
        status: HTTP status when known.
        retry_after: seconds the provider asked us to wait, when given.

    """

    def __init__(
        self, message: str, *, kind: ErrorKind = "retry", status: int | None = None, retry_after: float | None = None
    ):
        super().__init__(message)
        self.kind = kind
        self.status = status
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a provider can do natively.

    Attributes:
        structured_output: honours ``schema`` natively (tool use, response
            schema, json_schema).
        scores_choices: answers ``choices`` by scoring each option (local
            models); otherwise the managed wrapper turns choices into an enum schema.
        seed: honours ``seed``.

    """

    structured_output: bool = True
    scores_choices: bool = False
    seed: bool = False


class Backend(abc.ABC):
    """A model provider. Subclasses implement :meth:`generate` for one attempt.

    Args:
        model: the model name within the provider (``claude-...``, a hub id, ...).
        base_url: endpoint override (None: the SDK's own default / env variable).
        options: provider-specific options from the model string or spec.

    """

    provider: ClassVar[str] = ""
    capabilities: ClassVar[Capabilities] = Capabilities()
    #: Default connection limit for this provider (the managed wrapper's semaphore).
    default_max_connections: ClassVar[int] = 16
    #: Option keys this provider accepts after ``?`` in a model string, besides
    #: ``base_url`` and the managed wrapper's own (``max_connections``, ``rpm``,
    #: ``tpm``, ``timeout_s``, ``max_attempts``). None: options are not checked.
    valid_options: ClassVar[frozenset[str] | None] = None

    def __init__(self, model: str, *, base_url: str | None = None, **options: Any) -> None:
        self.model = model
        self.base_url = base_url
        self.options = options

    @property
    def model_string(self) -> str:
        """``provider/model`` as users write it."""
        return f"{self.provider}/{self.model}" if self.model else self.provider

    @abc.abstractmethod
    async def generate(self, request: GenerateRequest) -> GenerateResponse:
        """Run one attempt of ``request``.

        Raises:
            BackendError: for provider failures, classified for the retry wrapper.

        """

    def classify(self, exc: BaseException) -> BackendError:
        """Map a provider SDK exception to a :class:`BackendError` (hook)."""
        if isinstance(exc, BackendError):
            return exc
        if isinstance(exc, TimeoutError):
            return BackendError(f"timeout: {exc}", kind="retry")
        return BackendError(f"{type(exc).__name__}: {exc}", kind="fatal")

    def cache_identity(self) -> dict[str, Any]:
        """Return what identifies this backend in the response cache key (hook)."""
        return {"provider": self.provider, "model": self.model, "base_url": self.base_url}

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release clients, threads or GPU memory (hook)."""


# --------------------------------------------------------------------------
# Helpers for provider implementations.
# --------------------------------------------------------------------------

#: Environment variables whose values are secrets; :func:`redact` removes their values.
_SECRET_ENV_VARS: set[str] = {
    "ANTHROPIC_API_KEY",
    "ANTHROPIC_AUTH_TOKEN",
    "GOOGLE_API_KEY",
    "GEMINI_API_KEY",
    "OPENAI_API_KEY",
    "OPENROUTER_API_KEY",
    "TOGETHER_API_KEY",
    "HF_TOKEN",
}
#: Shapes of well-known key formats, redacted even when not read from the environment.
_SECRET_PATTERNS = re.compile(
    r"(sk-ant-[A-Za-z0-9_\-]{8,}|sk-[A-Za-z0-9_\-]{16,}|AIza[0-9A-Za-z_\-]{20,}|hf_[A-Za-z0-9]{20,})"
)
REDACTED = "[REDACTED]"


def register_secret_env(name: str) -> None:
    """Mark the environment variable ``name`` as holding a secret (for :func:`redact`)."""
    _SECRET_ENV_VARS.add(name)


def redact(text: str) -> str:
    """Return ``text`` with every known secret value replaced by ``[REDACTED]``.

    Secrets are the current values of the registered key variables (see
    :func:`register_secret_env`) and anything shaped like a common API key.
    """
    if not text:
        return text
    for name in _SECRET_ENV_VARS:
        value = os.environ.get(name)
        if value and len(value) >= 6 and value in text:
            text = text.replace(value, REDACTED)
    return _SECRET_PATTERNS.sub(REDACTED, text)


def require_sdk(module: str, extra: str, what: str | None = None) -> ModuleType:
    """Import ``module`` or raise a :class:`SceneSimError` naming the extra to install.

    Args:
        module: the import name (``anthropic``, ``google.genai``, ...).
        extra: the scene-sim extra that provides it (``anthropic``, ``google``, ...).
        what: what needs it, for the message (default: the module name).

    Raises:
        SceneSimError: when the module cannot be imported.

    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise SceneSimError(
            f"{what or module} needs the '{module}' package, which is not installed: "
            f"pip install 'scene-sim[{extra}]' ({exc})"
        ) from None


#: HTTP statuses worth retrying besides 5xx: request timeout, conflict, rate limit.
RETRY_STATUSES = frozenset({408, 409, 429})


def status_error(message: str, status: int, *, retry_after: float | None = None) -> BackendError:
    """Classify a provider's HTTP error: 408/409/429 and 5xx retry; 400, 401, 403, 404 ... are fatal."""
    if status in RETRY_STATUSES or status >= 500:
        return BackendError(message, kind="retry", status=status, retry_after=retry_after)
    return BackendError(message, kind="fatal", status=status)


def parse_retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` / ``retry-after`` headers (None when absent).

    ``retry-after`` may be seconds (integer or float) or an HTTP date.
    """
    if not headers:
        return None
    try:
        ms = headers.get("retry-after-ms")
        if ms is not None:
            return max(0.0, float(ms) / 1000.0)
    except (TypeError, ValueError):
        pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except (TypeError, ValueError):
        pass
    try:
        when = email.utils.parsedate_to_datetime(str(value))
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


_TRANSPORT_NAMES = frozenset(
    {
        "TimeoutException",
        "TransportError",
        "NetworkError",
        "ConnectError",
        "ReadError",
        "WriteError",
        "RemoteProtocolError",
        "ProtocolError",
        "PoolTimeout",
        "ClientConnectionError",
        "ServerDisconnectedError",
    }
)


_TRANSPORT_MODULES = frozenset({"httpx", "httpx2", "httpcore", "httpcore2", "aiohttp", "anyio"})


def is_transport_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a timeout or connection failure of the HTTP layer (retryable)."""
    if isinstance(exc, TimeoutError | ConnectionError):
        return True
    for cls in type(exc).__mro__:
        root = cls.__module__.split(".", 1)[0]
        if root in _TRANSPORT_MODULES and cls.__name__ in _TRANSPORT_NAMES:
            return True
    return False
