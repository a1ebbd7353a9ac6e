"""Shared resources of a run: backends, cache mode and accounting.

One :class:`RunContext` serves every episode of a run or sweep, so the
episodes share connection limits, throttles, the response cache and the
accountant. Offline (``scripted``) runs never touch it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from scene_sim.errors import SceneSimError
from scene_sim.modelspec import ModelSpec

__all__ = ["CACHE_MODES", "RunContext"]

CACHE_MODES = ("read-write", "read-only", "off")


class RunContext:
    """Backends by model string, created on first use and shared.

    Args:
        cache_mode: ``read-write`` (default), ``read-only`` or ``off``.
        limits: per model string (or provider) overrides such as
            ``{"anthropic": {"max_connections": 8, "rpm": 50}}``.

    """

    def __init__(self, cache_mode: str = "read-write", limits: dict[str, dict[str, Any]] | None = None) -> None:
        if cache_mode not in CACHE_MODES:
            raise SceneSimError(f"--cache must be one of {', '.join(CACHE_MODES)}, got '{cache_mode}'")
        self.cache_mode = cache_mode
        self.limits = limits or {}
        self._backends: dict[str, Any] = {}
        self._accountant: Any = None

    @property
    def accountant(self) -> Any:
        """The run's accountant (created on first use)."""
        if self._accountant is None:
            from scene_sim.backends._accounting import Accountant

            self._accountant = Accountant()
        return self._accountant

    def add(self, model: str, backend: Any, **limits: Any) -> Any:
        """Serve ``model`` with your own :class:`~scene_sim.backends.Backend` instance.

        It is wrapped in the same managed layer (cache, limits, retries,
        accounting) as the built-in providers. Returns the managed backend.
        """
        from scene_sim.backends import ManagedBackend, ResponseCache

        managed = ManagedBackend(
            backend, cache=ResponseCache.shared(self.cache_mode), accountant=self.accountant, **limits
        )
        self._backends[model] = managed
        return managed

    def has(self, model: str) -> bool:
        """Whether a backend for ``model`` exists already (built-in or added)."""
        return model in self._backends

    def backend(self, model: str) -> Any:
        """The managed backend for ``model`` (a non-scripted model string)."""
        if model not in self._backends:
            from scene_sim.backends.registry import create_backend

            spec = ModelSpec.parse(model)
            if spec.provider == "custom":
                raise SceneSimError(
                    f"'{model}' names a backend of your own: add it first with RunContext.add('{model}', backend)"
                )
            limits = {**self.limits.get(spec.provider, {}), **self.limits.get(model, {})}
            self._backends[model] = create_backend(
                spec, cache_mode=self.cache_mode, accountant=self.accountant, **limits
            )
        return self._backends[model]

    def accounting(self) -> dict[str, Any]:
        """The accountant's summary, or an empty one for offline runs."""
        return self._accountant.summary() if self._accountant is not None else {}

    async def aclose(self) -> None:
        """Close every backend."""
        backends, self._backends = list(self._backends.values()), {}
        await asyncio.gather(*(b.aclose() for b in backends), return_exceptions=True)
