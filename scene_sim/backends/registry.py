"""Model string -> managed backend.

:func:`create_backend` parses ``provider/model?opt=val``, imports the
provider's module lazily (so a missing SDK only matters when it is used),
checks the options and wraps the backend in a :class:`ManagedBackend`.

Options every provider accepts in a model string: ``base_url`` and the
managed wrapper's ``max_connections``, ``rpm``, ``tpm``, ``timeout_s``,
``max_attempts`` (these override the keyword arguments of
:func:`create_backend`). The rest are the provider's own
(:attr:`Backend.valid_options`).
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any, Final

from scene_sim.backends._accounting import Accountant
from scene_sim.backends._cache import CacheMode, ResponseCache
from scene_sim.backends._managed import DEFAULT_MAX_ATTEMPTS, DEFAULT_TIMEOUT_S, ManagedBackend
from scene_sim.backends.base import Backend
from scene_sim.budget import Budget
from scene_sim.errors import SceneSimError, suggest
from scene_sim.modelspec import PROVIDER_ALIASES, ModelSpec

__all__ = ["BACKENDS", "MANAGED_OPTIONS", "backend_class", "create_backend"]

#: provider -> ``module:Class`` of its backend, imported on first use.
BACKENDS: Final[dict[str, str]] = {
    "anthropic": "scene_sim.backends.anthropic:AnthropicBackend",
    "google": "scene_sim.backends.google:GoogleBackend",
    "openai": "scene_sim.backends.openai:OpenAIBackend",
    "hf": "scene_sim.backends.hf:HFBackend",
    "local": "scene_sim.backends.local:LocalBackend",
    "fake": "scene_sim.backends.fake:FakeBackend",
}
#: The extra that installs each provider's dependencies.
_EXTRAS: Final[dict[str, str]] = {
    "anthropic": "anthropic",
    "google": "google",
    "openai": "openai",
    "hf": "local",
    "local": "local",
}
#: Option names that would carry a credential; refused so keys never sit in model strings (and logs).
_SECRET_WORDS: Final = ("key", "token", "secret", "password")
#: Model-string options handled by the managed wrapper, with their types.
MANAGED_OPTIONS: Final[dict[str, type]] = {
    "max_connections": int,
    "rpm": float,
    "tpm": float,
    "timeout_s": float,
    "max_attempts": int,
}


def backend_class(provider: str) -> type[Backend]:
    """Import and return the backend class of ``provider``.

    Raises:
        SceneSimError: for ``scripted`` / ``human`` (not backends), an unknown
            provider, or a provider whose module or dependencies are missing.

    """
    if provider == "scripted":
        raise SceneSimError(
            "'scripted' models are offline policies, not model backends: the study's agents run them directly "
            "(use scripted/<policy> as a --subject, --personas, --orchestrator or --judge model)"
        )
    if provider == "human":
        raise SceneSimError("'human' is a person at the terminal (scene-sim play), not a model backend")
    target = BACKENDS.get(provider)
    if target is None:
        raise SceneSimError(
            f"unknown model provider '{provider}'{suggest(provider, BACKENDS, aliases=PROVIDER_ALIASES)}; "
            f"valid providers: {', '.join(BACKENDS)}"
        )
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            raise SceneSimError(f"the '{provider}' backend is not available in this installation") from None
        raise SceneSimError(
            f"the '{provider}' backend needs the '{exc.name}' package: "
            f"pip install 'scene-sim[{_EXTRAS.get(provider, provider)}]'"
        ) from None
    cls = getattr(module, class_name, None)
    if cls is None:
        raise SceneSimError(f"the '{provider}' backend is not available in this installation ({target} missing)")
    return cls


def _accepts(cls: type, name: str) -> bool:
    try:
        return name in inspect.signature(cls).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins without signatures
        return False


def create_backend(
    model: str | ModelSpec,
    *,
    cache_mode: CacheMode | str = "read-write",
    cache: ResponseCache | None = None,
    accountant: Accountant | None = None,
    max_connections: int | None = None,
    rpm: float | None = None,
    tpm: float | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    budget: Budget | None = None,
) -> ManagedBackend:
    """Build the managed backend for a model string.

    Args:
        model: ``provider/model?opt=val`` or a parsed :class:`ModelSpec`.
        cache_mode: ``read-write`` (default), ``read-only`` or ``off``; ignored when ``cache`` is given.
        cache: the response cache (default: the process-wide one for ``cache_mode``
            in ``$SCENE_SIM_CACHE_DIR``, see :meth:`ResponseCache.shared`).
        accountant: the run's accountant (default: a private one).
        max_connections: concurrent requests per provider and base URL.
        rpm: requests per minute (None: unlimited).
        tpm: tokens per minute (None: unlimited).
        timeout_s: per-attempt timeout in seconds.
        max_attempts: attempts per call, the first included.
        budget: the run's hard spending cap (None: none).

    Returns:
        The :class:`ManagedBackend`.

    Raises:
        SceneSimError: for a bad model string, ``scripted`` models, unknown
            options, a missing SDK or a missing API key.

    """
    spec = model if isinstance(model, ModelSpec) else ModelSpec.parse(model)
    if cache is None:
        cache = ResponseCache.shared(cache_mode)
    cls = backend_class(spec.provider)
    options: dict[str, Any] = dict(spec.options)
    managed: dict[str, Any] = {
        "max_connections": max_connections,
        "rpm": rpm,
        "tpm": tpm,
        "timeout_s": timeout_s,
        "max_attempts": max_attempts,
    }
    for name, kind in MANAGED_OPTIONS.items():
        if name in options:
            value = options.pop(name)
            try:
                managed[name] = kind(value)
            except (TypeError, ValueError):
                raise SceneSimError(
                    f"model '{spec.provider}/{spec.name}': option {name}={value!r} must be a number"
                ) from None
    secrets = sorted(k for k in options if k != "api_key_env" and any(w in k.lower() for w in _SECRET_WORDS))
    if secrets:
        raise SceneSimError(
            f"model '{spec.provider}/{spec.name}': option {secrets[0]} looks like a credential; keys are read from "
            "environment variables only (e.g. OPENAI_API_KEY, or api_key_env=NAME for OpenAI-compatible servers)"
        )
    base_url = options.pop("base_url", None)
    if base_url is not None:
        base_url = str(base_url).strip() or None
    allowed = cls.valid_options
    if allowed is not None:
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            valid = sorted({"base_url", *MANAGED_OPTIONS, *allowed})
            plural = "s" if len(unknown) > 1 else ""
            raise SceneSimError(
                f"model '{spec.provider}/{spec.name}': unknown option{plural} {', '.join(unknown)}"
                f"{suggest(unknown[0], valid)}; valid options for {spec.provider}: {', '.join(valid)}"
            )
    if _accepts(cls, "timeout_s") and "timeout_s" not in options:
        options["timeout_s"] = managed["timeout_s"]
    backend = cls(spec.name, base_url=base_url, **options)
    return ManagedBackend(
        backend,
        cache=cache,
        accountant=accountant,
        budget=budget,
        **managed,
    )
