"""A hard spending cap shared by every backend of a run.

The managed backend asks :meth:`Budget.try_reserve` for the projected cost of
each attempt before it starts (the request's prompt tokens and ``max_tokens``
at the model's price) and :meth:`Budget.settle` with the actual cost when it
ends. A reservation is refused once the money spent plus the reservations of
the calls in flight plus the new estimate would pass the limit, so no call
starts that could take the run over budget, and calls already in flight
finish. A refused call raises :class:`BudgetExceeded`; an episode then ends
with reason ``budget``.

The interface (``try_reserve``, ``settle``, ``spent_usd``, ``limit_usd``) is
small on purpose: a distributed executor can proxy it to one shared instance.
"""

from __future__ import annotations

import threading

from scene_sim.errors import SceneSimError

__all__ = ["Budget", "BudgetExceeded"]


class BudgetExceeded(SceneSimError):
    """A model call was refused because it could take the run over its budget."""


class Budget:
    """Money spent and reserved against a limit (thread-safe).

    Args:
        limit_usd: the cap in USD (0 or more).

    Raises:
        SceneSimError: for a negative or non-finite limit.

    """

    def __init__(self, limit_usd: float) -> None:
        limit = float(limit_usd)
        if not limit >= 0 or limit == float("inf"):
            raise SceneSimError(f"budget must be a finite amount of 0 or more USD, got {limit_usd}")
        self._limit = limit
        self._spent = 0.0
        self._reserved = 0.0
        self._refused = 0
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Budget(limit_usd={self._limit!r}, spent_usd={self.spent_usd!r})"

    @property
    def limit_usd(self) -> float:
        """The cap."""
        return self._limit

    @property
    def spent_usd(self) -> float:
        """Money spent by settled calls."""
        with self._lock:
            return self._spent

    @property
    def reserved_usd(self) -> float:
        """Money reserved by the calls in flight."""
        with self._lock:
            return self._reserved

    @property
    def refused(self) -> int:
        """How many reservations were refused (0: the budget never bound)."""
        with self._lock:
            return self._refused

    def try_reserve(self, usd_estimate: float) -> bool:
        """Reserve ``usd_estimate`` for a call about to start.

        Returns:
            True when spend plus the reservations in flight plus the estimate
            stay within the limit (the amount is then reserved); False otherwise.

        """
        estimate = max(float(usd_estimate), 0.0)
        with self._lock:
            if self._spent + self._reserved + estimate > self._limit:
                self._refused += 1
                return False
            self._reserved += estimate
            return True

    def settle(self, reserved: float, actual: float) -> None:
        """Release a reservation of ``reserved`` and add the call's ``actual`` cost."""
        with self._lock:
            # float sums drift: never let the reserve go below zero
            self._reserved = max(self._reserved - max(float(reserved), 0.0), 0.0)
            self._spent += max(float(actual), 0.0)
