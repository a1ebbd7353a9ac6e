"""Shared resources of a run: backends, cache mode, accounting and the budget.

One :class:`RunContext` serves every episode of a run or sweep, so the
episodes share connection limits, throttles, the response cache, the
accountant and the hard budget (:class:`~scene_sim.budget.Budget`). Offline
(``scripted``) runs never touch it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from scene_sim.budget import Budget
from scene_sim.errors import SceneSimError
from scene_sim.modelspec import ModelSpec

__all__ = ["CACHE_MODES", "RunContext"]

CACHE_MODES = ("read-write", "read-only", "off")
#: Providers whose model strings are not model calls, so cost nothing and need no price.
_NO_CALLS = ("scripted", "human", "custom")


class RunContext:
    """Backends by model string, created on first use and shared.

    Args:
        cache_mode: ``read-write`` (default), ``read-only`` or ``off``.
        limits: per model string (or provider) overrides such as
            ``{"anthropic": {"max_connections": 8, "rpm": 50}}``.
        budget: the hard spending cap every backend checks before each
            attempt: a :class:`~scene_sim.budget.Budget` (or any object with its
            interface), a USD amount, or None for none.

    """

    def __init__(
        self,
        cache_mode: str = "read-write",
        limits: dict[str, dict[str, Any]] | None = None,
        *,
        budget: Budget | float | None = None,
    ) -> None:
        if cache_mode not in CACHE_MODES:
            raise SceneSimError(f"--cache must be one of {', '.join(CACHE_MODES)}, got '{cache_mode}'")
        self.cache_mode = cache_mode
        self.limits = limits or {}
        self.budget: Any = Budget(budget) if isinstance(budget, int | float) else budget
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
            backend,
            cache=ResponseCache.shared(self.cache_mode),
            accountant=self.accountant,
            budget=self.budget,
            **limits,
        )
        self._backends[model] = managed
        return managed

    def set_budget(self, budget: Budget | float | None) -> None:
        """Install the run's hard budget, on the backends made so far as on those to come."""
        self.budget = Budget(budget) if isinstance(budget, int | float) else budget
        for managed in self._backends.values():
            if hasattr(managed, "budget"):
                managed.budget = self.budget

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
                spec, cache_mode=self.cache_mode, accountant=self.accountant, budget=self.budget, **limits
            )
        return self._backends[model]

    def check_priced(
        self, models: list[str | None] | tuple[str | None, ...], *, allow_unpriced: bool = False
    ) -> list[str]:
        """Check that a budget can bind the calls of ``models``.

        Args:
            models: the run's model strings (``scripted``, ``human`` and None skipped).
            allow_unpriced: run anyway when some have no price (their calls are not limited).

        Returns:
            Warnings, one line each: models priced only through a family entry,
            and (with ``allow_unpriced``) the unpriced ones.

        Raises:
            SceneSimError: a budget is set and some models have no price, naming them.

        """
        if self.budget is None:
            return []
        keys: list[str] = []
        for model in models:
            if not model:
                continue
            provider = ModelSpec.parse(model).provider
            key = model.split("?", 1)[0].strip()
            if provider not in _NO_CALLS and key not in keys:
                keys.append(key)
        prices = self.accountant.prices
        unpriced = [m for m in keys if prices.match(m) is None]
        where = prices.source or "no price table"
        warnings = [
            f"price of '{m}' taken from the family entry '{k}' ({where}); add its own entry if it differs"
            for m, k in prices.family_matched(keys).items()
        ]
        if unpriced and not allow_unpriced:
            raise SceneSimError(
                f"the budget cannot bind calls to unpriced models: {', '.join(unpriced)}; add them to {where} "
                "(or set SCENE_SIM_PRICES), or pass --allow-unpriced to run with their calls unlimited"
            )
        if unpriced:
            warnings.append(f"budget does not limit calls to the unpriced models {', '.join(unpriced)}")
        return warnings

    def accounting(self) -> dict[str, Any]:
        """The accountant's summary, or an empty one for offline runs."""
        return self._accountant.summary() if self._accountant is not None else {}

    async def aclose(self) -> None:
        """Close every backend."""
        backends, self._backends = list(self._backends.values()), {}
        await asyncio.gather(*(b.aclose() for b in backends), return_exceptions=True)
