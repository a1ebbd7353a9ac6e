"""Token, retry and cost accounting shared by all backends of a run.

One :class:`Accountant` collects, per calling role and model string: calls,
attempts, retries, errors, cache hits, input / output / cached tokens, the
summed latency and the cost in USD from a price table
(``experiments/prices.toml``, or the file ``$SCENE_SIM_PRICES`` names).
Models missing from the table cost ``null``, never 0. Cache hits count as
calls and cache hits but spend no tokens and no money.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scene_sim.backends.base import Usage
from scene_sim.errors import SceneSimError

__all__ = ["Accountant", "Price", "PriceTable", "default_prices_path"]

log = logging.getLogger(__name__)


def default_prices_path() -> Path | None:
    """``$SCENE_SIM_PRICES`` if set, else the shipped ``experiments/prices.toml`` (None if absent)."""
    env = os.environ.get("SCENE_SIM_PRICES")
    if env:
        return Path(env).expanduser()
    from scene_sim._resources import content_dir

    try:
        path = content_dir("experiments") / "prices.toml"
    except FileNotFoundError:
        return None
    return path if path.is_file() else None


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million tokens.

    Attributes:
        input: uncached input tokens.
        output: output tokens (thinking tokens included).
        cached_input: input tokens read from the provider's prefix cache.

    """

    input: float
    output: float
    cached_input: float

    def cost(self, usage: Usage) -> float:
        """USD for ``usage`` (``usage.input_tokens`` includes the cached tokens)."""
        cached = min(usage.cached_tokens, usage.input_tokens) if usage.input_tokens else usage.cached_tokens
        fresh = max(usage.input_tokens - cached, 0)
        return (fresh * self.input + cached * self.cached_input + usage.output_tokens * self.output) / 1_000_000


def _model_key(model: str) -> str:
    return model.split("?", 1)[0].strip()


class PriceTable:
    """Prices per model string, looked up exactly, then by prefix.

    A key matches a model when equal to it, when it ends in ``*`` and prefixes
    it (``hf/*``), or when the model is the key followed by a ``-`` suffix (a
    dated version: ``anthropic/claude-sonnet-4-5-20250929`` uses
    ``anthropic/claude-sonnet-4-5``); the longest match wins.

    Args:
        prices: model string -> :class:`Price`.
        source: where the table came from (for the summary).

    """

    def __init__(self, prices: Mapping[str, Price] | None = None, source: str | None = None) -> None:
        self.prices: dict[str, Price] = dict(prices or {})
        self.source = source
        self._memo: dict[str, Price | None] = {}  # every call is priced: scan the table once per model

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None) -> PriceTable:
        """Read a TOML price table: ``["provider/model"]`` tables with ``input``, ``output``, ``cached_input``.

        Args:
            path: the file (default: :func:`default_prices_path`; none found gives an empty table).

        Raises:
            SceneSimError: when the file is missing, not TOML, or an entry lacks prices.

        """
        resolved = Path(path).expanduser() if path is not None else default_prices_path()
        if resolved is None:
            return cls({}, None)
        try:
            data = tomllib.loads(resolved.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise SceneSimError(f"price table not found: {resolved} (set SCENE_SIM_PRICES to a TOML file)") from None
        except tomllib.TOMLDecodeError as exc:
            raise SceneSimError(f"price table {resolved} is not valid TOML: {exc}") from None
        prices: dict[str, Price] = {}
        for model, entry in data.items():
            if not isinstance(entry, dict):
                continue
            try:
                inp = float(entry["input"])
                out = float(entry["output"])
                cached = float(entry.get("cached_input", inp))
            except (KeyError, TypeError, ValueError):
                raise SceneSimError(
                    f"price table {resolved}: entry '{model}' needs numeric 'input' and 'output' "
                    "(USD per million tokens; 'cached_input' optional)"
                ) from None
            prices[model.strip()] = Price(inp, out, cached)
        return cls(prices, str(resolved))

    def lookup(self, model: str) -> Price | None:
        """Return the price of ``model`` (options after ``?`` ignored), or None when unknown.

        A model priced only through a family key (``anthropic/claude-opus-4`` for
        ``anthropic/claude-opus-4-7``) is logged as a warning once: a newer
        model of a family often has a different price.
        """
        if model not in self._memo:
            hit = self.match(model)
            self._memo[model] = hit[1] if hit else None
            if hit and self.is_family_match(model, hit[0]):
                log.warning(
                    "price of '%s' taken from the family entry '%s' of %s; add its own entry if it differs",
                    _model_key(model),
                    hit[0],
                    self.source or "the price table",
                )
        return self._memo[model]

    def match(self, model: str) -> tuple[str, Price] | None:
        """The table key that prices ``model`` and its price (None when unknown)."""
        key = _model_key(model)
        if key in self.prices:
            return key, self.prices[key]
        best: tuple[int, str, Price] | None = None
        for name, price in self.prices.items():
            if name.endswith("*"):
                hit = key.startswith(name[:-1])
                length = len(name) - 1
            else:
                hit = key.startswith(name + "-")
                length = len(name)
            if hit and (best is None or length > best[0]):
                best = (length, name, price)
        return (best[1], best[2]) if best else None

    @staticmethod
    def is_family_match(model: str, key: str) -> bool:
        """Whether ``key`` prices ``model`` as a family member, not as the model or a dated version of it.

        Exact keys, wildcard keys (``hf/*``: free by design) and date suffixes
        (``-20250929``, ``-2025-04-14``, ``-latest``, ``-preview``) are not family matches.
        """
        name = _model_key(model)
        if key == name or key.endswith("*"):
            return False
        suffix = name[len(key) + 1 :]
        return re.fullmatch(r"(\d{8}|\d{4}-\d{2}-\d{2}|latest|preview(-\d{2}-\d{2})?)", suffix) is None

    def cost(self, model: str, usage: Usage) -> float | None:
        """USD for ``usage`` on ``model``, None when the model has no price."""
        price = self.lookup(model)
        return None if price is None else price.cost(usage)

    def family_matched(self, models: list[str] | tuple[str, ...]) -> dict[str, str]:
        """Of ``models``, those priced only through a family key: model -> key."""
        out: dict[str, str] = {}
        for model in models:
            hit = self.match(model)
            if hit and self.is_family_match(model, hit[0]):
                out[_model_key(model)] = hit[0]
        return out


@dataclass(slots=True)
class _Bucket:
    calls: int = 0
    attempts: int = 0
    retries: int = 0
    errors: int = 0
    cache_hits: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    latency_s: float = 0.0
    cost_usd: float | None = None
    priced: bool = field(default=True)

    def add(self, other: _Bucket) -> None:
        for name in (
            "calls",
            "attempts",
            "retries",
            "errors",
            "cache_hits",
            "input_tokens",
            "output_tokens",
            "cached_tokens",
            "latency_s",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        if other.cost_usd is not None:
            self.cost_usd = (self.cost_usd or 0.0) + other.cost_usd

    def as_dict(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "attempts": self.attempts,
            "retries": self.retries,
            "errors": self.errors,
            "cache_hits": self.cache_hits,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cached_tokens": self.cached_tokens,
            "latency_s": round(self.latency_s, 6),
            "cost_usd": None if self.cost_usd is None else round(self.cost_usd, 8),
        }


class Accountant:
    """Collects calls, tokens, retries and cost per role and model for one run.

    Safe to share between backends, event loops and threads.

    Args:
        prices: a :class:`PriceTable`, a path to a TOML price table, or None
            for the default table (:func:`default_prices_path`).

    """

    def __init__(self, prices: PriceTable | str | os.PathLike[str] | None = None) -> None:
        self.prices = prices if isinstance(prices, PriceTable) else PriceTable.load(prices)
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self._lock = threading.Lock()
        self._started = time.monotonic()

    def record(
        self,
        *,
        role: str,
        model: str,
        usage: Usage | None = None,
        attempts: int = 1,
        retries: int = 0,
        latency_s: float = 0.0,
        cache_hit: bool = False,
        error: bool = False,
    ) -> float | None:
        """Add one call.

        Args:
            role: the calling role (``persona``, ``subject``, ``judge``, ...).
            model: the model string.
            usage: its token counts (ignored for cache hits: no tokens were spent).
            attempts: provider attempts made (0 for a cache hit).
            retries: failed attempts that were retried.
            latency_s: the call's latency.
            cache_hit: served from the response cache.
            error: the call failed in the end.

        Returns:
            The call's cost in USD (0.0 for a cache hit of a priced model), None when unpriced.

        """
        model = _model_key(model)
        price = self.prices.lookup(model)
        spent = Usage() if cache_hit or usage is None else usage
        cost = None if price is None else price.cost(spent)
        with self._lock:
            bucket = self._buckets.setdefault((role, model), _Bucket(priced=price is not None))
            bucket.calls += 1
            bucket.attempts += attempts
            bucket.retries += retries
            bucket.errors += int(error)
            bucket.cache_hits += int(cache_hit)
            bucket.input_tokens += spent.input_tokens
            bucket.output_tokens += spent.output_tokens
            bucket.cached_tokens += spent.cached_tokens
            bucket.latency_s += max(latency_s, 0.0)
            if cost is not None:
                bucket.cost_usd = (bucket.cost_usd or 0.0) + cost
        return cost

    def summary(self) -> dict[str, Any]:
        """Return a JSON-able summary for ``run.json``.

        Returns:
            ``{"by_role": {role: {model: stats}}, "by_model": {model: stats},
            "total": stats, "unpriced_models": [...], "prices": path, "wall_s": s}``
            where stats holds calls, attempts, retries, errors, cache_hits,
            input_tokens, output_tokens, cached_tokens, latency_s and cost_usd
            (null when no model in it has a price; the total sums the priced ones).

        """
        with self._lock:
            items = sorted(self._buckets.items())
        by_role: dict[str, dict[str, Any]] = {}
        by_model: dict[str, _Bucket] = {}
        total = _Bucket()
        unpriced: set[str] = set()
        for (role, model), bucket in items:
            by_role.setdefault(role, {})[model] = bucket.as_dict()
            merged = by_model.setdefault(model, _Bucket(priced=bucket.priced))
            merged.add(bucket)
            total.add(bucket)
            if not bucket.priced:
                unpriced.add(model)
        if not items or len(unpriced) == len(by_model):
            total.cost_usd = None if items else 0.0
        return {
            "by_role": by_role,
            "by_model": {model: b.as_dict() for model, b in by_model.items()},
            "total": total.as_dict(),
            "unpriced_models": sorted(unpriced),
            "prices": self.prices.source,
            "wall_s": round(time.monotonic() - self._started, 3),
        }

    def total_cost(self) -> float | None:
        """USD spent so far over the priced models (None when none is priced)."""
        return self.summary()["total"]["cost_usd"]
