"""The D / B / S / R event streams, defined once for the live episode and for the collectors.

* **D** persona DEMONSTRATION turns (the scaffold's opening and elicitor
  lines and the precedent sub-script are excluded: they are scripted set-up,
  not the group's behaviour);
* **B** subject BREACH turns;
* **S** persona SANCTION turns answering a subject breach (after the
  subject's first breach, not part of the scripted set-up, and, when the
  label names the turn it answers, aimed at a subject turn);
* **R** subject FACE_SAVE_REPAIR turns after a sanction.

:class:`StreamBuilder` takes labelled chat turns one at a time, in chat
order. :class:`~scene_sim.studies.scene.model.SceneModel` feeds it as the
episode runs (its ``DataCollector`` tables) and
:func:`~scene_sim.studies.scene.collect.collect_streams` feeds it from a
finished episode's log and labels, so the two agree by construction.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from scene_sim.studies.scene.oracle import TurnLabel
from scene_sim.world import ChatTurn

__all__ = [
    "SCRIPTED_LINES",
    "STREAMS",
    "STREAM_TABLES",
    "EpisodeStreams",
    "StreamBuilder",
    "StreamEvent",
    "is_scripted",
]

#: Stream letter -> DataCollector table name.
STREAMS = {"D": "demonstrations", "B": "breaches", "S": "sanctions", "R": "repairs"}

#: DataCollector tables holding the event streams (one row per event).
STREAM_TABLES = {
    "demonstrations": ["tick", "turn_id", "actor"],
    "breaches": ["tick", "turn_id", "actor"],
    "sanctions": ["tick", "turn_id", "actor", "target_turn_id", "modality"],
    "repairs": ["tick", "turn_id", "actor", "target_turn_id"],
}

#: ``meta.script`` values of the runtime's scripted set-up lines.
SCRIPTED_LINES = frozenset({"opening", "elicitor", "precedent"})


def is_scripted(turn: ChatTurn) -> bool:
    """Whether ``turn`` is a scaffold or precedent line rather than live behaviour.

    The runtime tags them (``meta.script``); everything posted at tick 0 is
    scaffold or precedent by the runtime's rules as well.
    """
    return turn.tick == 0 or turn.meta.get("script") in SCRIPTED_LINES


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """One event of a stream.

    Attributes:
        tick: orchestrator tick of the turn.
        turn_id: chat turn id.
        actor: who posted it.
        target_turn_id: for a sanction the breach it answers, for a repair the sanction (when known).
        modality: for a sanction, the modality it used (when known).

    """

    tick: int
    turn_id: int
    actor: str
    target_turn_id: int | None = None
    modality: str | None = None

    def row(self, table: str) -> dict[str, Any]:
        """The row for ``table`` in the DataCollector layout."""
        row: dict[str, Any] = {"tick": self.tick, "turn_id": self.turn_id, "actor": self.actor}
        if table == "sanctions":
            row["target_turn_id"] = self.target_turn_id
            row["modality"] = self.modality
        elif table == "repairs":
            row["target_turn_id"] = self.target_turn_id
        return row


@dataclass(frozen=True, slots=True)
class EpisodeStreams:
    """The four streams of one episode plus the subject's labelled actions.

    Attributes:
        episode_id: the episode.
        demonstrations: D.
        breaches: B.
        sanctions: S.
        repairs: R.
        subject_actions: the subject's messages and reactions as
            ``(tick, turn_id, label)`` in chat order (``label`` None when the
            judge left the turn unlabelled); no-ops are not actions here.
        persona_breaches: persona BREACH turns outside the scaffold and the
            precedent sub-script (a fidelity signal).

    """

    episode_id: str
    demonstrations: tuple[StreamEvent, ...]
    breaches: tuple[StreamEvent, ...]
    sanctions: tuple[StreamEvent, ...]
    repairs: tuple[StreamEvent, ...]
    subject_actions: tuple[tuple[int, int, str | None], ...]
    persona_breaches: tuple[StreamEvent, ...] = ()

    def stream(self, name: str) -> tuple[StreamEvent, ...]:
        """A stream by letter (``D``/``B``/``S``/``R``) or table name."""
        table = STREAMS.get(name, name)
        return getattr(self, table)  # type: ignore[no-any-return]

    @property
    def x_e(self) -> int | None:
        """Persona demonstrations before the subject's first breach (None without a breach)."""
        if not self.breaches:
            return None
        first = self.breaches[0].turn_id
        return sum(1 for d in self.demonstrations if d.turn_id < first)

    @property
    def y_counts(self) -> tuple[int, int] | None:
        """``(breaches, actions)`` among the subject's actions after its first breach (None without a breach)."""
        if not self.breaches:
            return None
        first = self.breaches[0].turn_id
        later = [lab for _, tid, lab in self.subject_actions if tid > first]
        return sum(1 for lab in later if lab == "BREACH"), len(later)

    @property
    def y_e(self) -> float | None:
        """Share of the subject's later actions that are breaches (None when undefined)."""
        counts = self.y_counts
        if counts is None or counts[1] == 0:
            return None
        return counts[0] / counts[1]


class StreamBuilder:
    """Builds an episode's streams from its labelled chat turns, one at a time, in chat order.

    Args:
        subject: the subject's actor name.
        turn_of: looks a chat turn up by id (to see whom a sanction was aimed at).

    """

    def __init__(self, subject: str, turn_of: Callable[[int], ChatTurn | None]) -> None:
        self.subject = subject
        self._turn_of = turn_of
        self.tables: dict[str, list[StreamEvent]] = {name: [] for name in STREAM_TABLES}
        self.persona_breaches: list[StreamEvent] = []
        self.subject_actions: list[tuple[int, int, str | None]] = []

    def add(self, turn: ChatTurn, label: TurnLabel | None) -> tuple[str, StreamEvent] | None:
        """Add ``turn`` under ``label`` (None: unlabelled); returns ``(table, event)`` when it joined a stream."""
        name = label.label if label is not None else None
        t = self.tables
        if turn.actor == self.subject:
            self.subject_actions.append((turn.tick, turn.turn_id, name))
            if name == "BREACH":
                return self._put("breaches", StreamEvent(turn.tick, turn.turn_id, turn.actor))
            if name == "FACE_SAVE_REPAIR" and t["sanctions"]:
                assert label is not None
                target = label.target_turn_id if label.target_turn_id is not None else t["sanctions"][-1].turn_id
                return self._put("repairs", StreamEvent(turn.tick, turn.turn_id, turn.actor, target_turn_id=target))
            return None
        if label is None or is_scripted(turn):
            return None
        if name == "DEMONSTRATION":
            return self._put("demonstrations", StreamEvent(turn.tick, turn.turn_id, turn.actor))
        if name == "BREACH":
            self.persona_breaches.append(StreamEvent(turn.tick, turn.turn_id, turn.actor))
        elif name == "SANCTION" and t["breaches"]:
            target = label.target_turn_id
            if target is not None:
                aimed = self._turn_of(target)
                if aimed is not None and aimed.actor != self.subject:
                    return None
            event = StreamEvent(
                turn.tick,
                turn.turn_id,
                turn.actor,
                target_turn_id=target if target is not None else t["breaches"][-1].turn_id,
                modality=label.modality,
            )
            return self._put("sanctions", event)
        return None

    def _put(self, table: str, event: StreamEvent) -> tuple[str, StreamEvent]:
        self.tables[table].append(event)
        return table, event

    def result(self, episode_id: str) -> EpisodeStreams:
        """The streams built so far."""
        t = self.tables
        return EpisodeStreams(
            episode_id,
            tuple(t["demonstrations"]),
            tuple(t["breaches"]),
            tuple(t["sanctions"]),
            tuple(t["repairs"]),
            tuple(self.subject_actions),
            tuple(self.persona_breaches),
        )
