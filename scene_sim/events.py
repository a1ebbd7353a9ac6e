"""The episode event log: one JSON object per line (the contract in DESIGN.md).

Every line has ``seq`` (0, 1, 2, ... in file order), ``turn`` (orchestrator
tick, 0 before the first) and ``kind``. Writers use :class:`EventLog`;
readers use :func:`read_events` / :func:`parse_event`, which return typed
records and keep unknown extra keys. Every field the contract lists for a
kind is required (no defaults), so :func:`parse_event` is the contract check:
a writer that drops one fails it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from scene_sim._json import JSONDecodeError, loads
from scene_sim.errors import SceneSimError

__all__ = [
    "END_REASONS",
    "ActionEvent",
    "EpisodeEnd",
    "EpisodeStart",
    "Event",
    "EventHandler",
    "EventLog",
    "ModelCall",
    "Prompt",
    "Route",
    "TurnStart",
    "iter_event_dicts",
    "parse_event",
    "read_events",
]

#: ``episode_end.reason`` values: SCENE's protocol ends, a backend failure (``error``) and a
#: model call refused by the run's budget (``budget``: the episode is re-simulated on resume).
END_REASONS = ("max_turns", "subject_silent", "post_sanction", "fidelity_fail", "error", "budget")
EndReason = Literal["max_turns", "subject_silent", "post_sanction", "fidelity_fail", "error", "budget"]


class _Event(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    seq: int = Field(ge=0)
    turn: int = Field(ge=0)


class EpisodeStart(_Event):
    """First line: the scenario, tuple, subject, models and seed."""

    kind: Literal["episode_start"]
    episode_id: str
    scenario_id: str
    tuple: dict[str, Any]
    subject: str
    models: dict[str, str | None]
    seed: int | None  # required: null only for an unseeded episode


class TurnStart(_Event):
    """An orchestrator tick begins."""

    kind: Literal["turn_start"]


class Prompt(_Event):
    """A prompt as sent to an actor."""

    kind: Literal["prompt"]
    actor: str
    role: str
    reason: str
    messages: list[dict[str, Any]]


class ModelCall(_Event):
    """One model call (all its attempts)."""

    kind: Literal["model_call"]
    actor: str
    model: str
    input_tokens: int = Field(ge=0)
    output_tokens: int = Field(ge=0)
    cached_tokens: int = Field(ge=0)
    latency_s: float = Field(ge=0)
    attempts: int = Field(ge=0)  # 0: served from the cache, or refused by the budget
    cache_hit: bool
    error: str | None


class ActionEvent(_Event):
    """An actor's action and the chat turn id it got."""

    kind: Literal["action"]
    actor: str
    action: Literal["message", "react", "no-op"]
    content: str
    target_turn_id: int | None
    turn_id: int | None
    parse_failure: bool


class Route(_Event):
    """The orchestrator's routing for a tick (an addition to the contract's kinds)."""

    kind: Literal["route"]
    actor: str
    order: list[str]
    terminate: bool = False
    parse_failure: bool = False


class EpisodeEnd(_Event):
    """Last line: why the episode ended."""

    kind: Literal["episode_end"]
    reason: EndReason


Event = Annotated[
    EpisodeStart | TurnStart | Prompt | ModelCall | ActionEvent | Route | EpisodeEnd,
    Field(discriminator="kind"),
]
_ADAPTER: TypeAdapter[Any] = TypeAdapter(Event)


def parse_event(data: dict[str, Any]) -> Any:
    """Validate one event dict into its typed record."""
    return _ADAPTER.validate_python(data)


def iter_event_dicts(path: str | Path, *, skip: Callable[[str], bool] | None = None) -> Iterator[dict[str, Any]]:
    """Yield the raw event dicts of an episode file.

    Args:
        path: the episode's event log.
        skip: called with each raw line; the lines it returns True for are not
            parsed (logs are dominated by full prompts, which many readers never need).

    Raises:
        SceneSimError: on a line that is not JSON (file and line named).

    """
    p = Path(path)
    with p.open(encoding="utf-8") as fh:
        for no, line in enumerate(fh, start=1):
            if not line.strip() or (skip is not None and skip(line)):
                continue
            try:
                yield loads(line)
            except JSONDecodeError as exc:
                raise SceneSimError(f"{p}:{no}: invalid JSON: {exc.msg}") from None


def read_events(path: str | Path) -> list[Any]:
    """Read and validate an episode event log."""
    return [parse_event(d) for d in iter_event_dicts(path)]


class EventHandler:
    """Base of an ``on_event`` callback that renders or reduces events, one method per kind.

    ``handler(event)`` calls ``on_<kind>(event)`` (``on_episode_start``,
    ``on_turn_start``, ``on_action``, ``on_episode_end``, ...) when the
    subclass defines it and ignores the other kinds, so every reader of an
    event log dispatches the same way.
    """

    def __call__(self, event: dict[str, Any]) -> None:
        """Dispatch ``event`` to ``on_<kind>``."""
        method = getattr(self, f"on_{event.get('kind')}", None)
        if method is not None:
            method(event)


class EventLog:
    """Collects the events of one episode in order.

    Args:
        on_event: optional callback for each event as it is emitted
            (progress displays, streaming).

    """

    def __init__(self, on_event: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.events: list[dict[str, Any]] = []
        self._on_event = on_event

    def emit(self, kind: str, turn: int, **fields: Any) -> dict[str, Any]:
        """Append an event; ``seq`` is assigned here."""
        event = {"seq": len(self.events), "turn": turn, "kind": kind, **fields}
        self.events.append(event)
        if self._on_event is not None:
            self._on_event(event)
        return event

    def to_jsonl(self) -> str:
        """The log as JSON lines."""
        return "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in self.events)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.events)
