"""Online event labelling: what each turn is, as the episode unfolds.

:class:`TurnLabeler` labels every chat turn with one of the judge's labels
(DEMONSTRATION, BREACH, SANCTION, FACE_SAVE_REPAIR, NONE). It reads what
scripted actors intended (``ChatTurn.meta``) when they say, and falls back
to the taxonomy's observable cues otherwise. The runtime uses it for the
orchestrator's post-sanction rule and the DataCollector's event streams;
offline personas use it to notice breaches; the ``scripted`` judge is this
labeller run over a finished transcript (an oracle for tests).
"""

from __future__ import annotations

from dataclasses import dataclass

from scene_sim.studies.scene.heuristics import CueReader
from scene_sim.studies.scene.taxonomy import Taxonomy
from scene_sim.world import ChatTurn

__all__ = ["LABELS", "TurnLabel", "TurnLabeler"]

LABELS = ("DEMONSTRATION", "BREACH", "SANCTION", "FACE_SAVE_REPAIR", "NONE")

#: How many chat turns after a breach a sanction may still land.
SANCTION_REACH = 8


@dataclass(frozen=True)
class TurnLabel:
    """A label for one chat turn.

    Attributes:
        turn_id: chat turn id.
        actor: who posted it.
        label: one of :data:`LABELS`.
        source: ``intent`` (a scripted actor said so) or ``cue`` (observable cues).
        target_turn_id: for a SANCTION, the breach it answers; for a repair, the sanction.
        modality: for a SANCTION, the sanction modality it used.

    """

    turn_id: int
    actor: str
    label: str
    source: str = "cue"
    target_turn_id: int | None = None
    modality: str | None = None


class TurnLabeler:
    """Labels turns one by one, in order.

    Args:
        taxonomy: the taxonomy (cues).
        norm: the active norm id.
        sanction: the assigned sanction modality id.
        subject: the subject's actor name.

    """

    def __init__(self, taxonomy: Taxonomy, norm: str, sanction: str, subject: str) -> None:
        self.cues = CueReader(taxonomy)
        self.taxonomy = taxonomy
        self.norm = norm
        self.partner = taxonomy.partner(norm).id
        self.sanction = sanction
        self.subject = subject
        self.labels: dict[int, TurnLabel] = {}
        self._history: list[ChatTurn] = []
        self._open: list[ChatTurn] = []  # breaches that may still be sanctioned
        self._sanctioned: dict[str, int] = {}  # actor -> last sanction turn id on their breach

    def label(self, turn: ChatTurn) -> TurnLabel:
        """Label ``turn`` (which must be the next turn of the chat)."""
        self._history.append(turn)
        result = self._decide(turn)
        self.labels[turn.turn_id] = result
        if result.label == "BREACH":
            self._open.append(turn)
        elif result.label == "SANCTION" and result.target_turn_id is not None:
            offender = next((t.actor for t in self._history if t.turn_id == result.target_turn_id), None)
            if offender is not None:
                self._sanctioned[offender] = turn.turn_id
            # One sanction closes a breach, except where several personas sanction together.
            modality = self.taxonomy.sanctions.get(result.modality or "")
            if modality is None or modality.actors == "one" or modality.form == "ignore":
                self._open = [b for b in self._open if b.turn_id != result.target_turn_id]
        self._open = [b for b in self._open if turn.turn_id - b.turn_id < SANCTION_REACH]
        return result

    def breach_of(self, turn: ChatTurn) -> bool:
        """Whether ``turn`` was labelled a breach."""
        lab = self.labels.get(turn.turn_id)
        return lab is not None and lab.label == "BREACH"

    def sanctions_on(self, turn_id: int) -> list[TurnLabel]:
        """Sanction labels answering the breach ``turn_id``."""
        return [lab for lab in self.labels.values() if lab.label == "SANCTION" and lab.target_turn_id == turn_id]

    # -------------------------------------------------------------------
    def _decide(self, turn: ChatTurn) -> TurnLabel:
        meta = turn.meta
        intent = meta.get("intent")
        base = {"turn_id": turn.turn_id, "actor": turn.actor}
        if intent in ("scaffold", "none"):
            return TurnLabel(**base, label="NONE", source="intent")
        if intent in ("sanction", "precedent_sanction") and not meta.get("claimed"):
            target = meta.get("target_turn_id")
            return TurnLabel(**base, label="SANCTION", source="intent", target_turn_id=target, modality=self.sanction)
        if intent == "precedent_breach":
            return TurnLabel(**base, label="BREACH", source="intent")
        if intent == "demonstration":
            # A demonstration must be observable (B.6): an in-register line that
            # shows no sign of the norm is NONE, unless the norm leaves no
            # observable trace at all (deadpan jokes), where the intent decides.
            cues = self.taxonomy.norm(self.norm).cues
            stance = self.cues.stance(self.norm, turn)
            if stance == "breach":
                return TurnLabel(**base, label="BREACH", source="intent")
            if stance == "comply" or not cues.comply:
                return TurnLabel(**base, label="DEMONSTRATION", source="intent")
            return TurnLabel(**base, label="NONE", source="intent")

        # Sanction by cue: the turn answers an open breach by someone else.
        for offence in reversed(self._open):
            if offence.actor == turn.actor:
                continue
            modality = self.cues.sanction_modality(turn, offence, self._history, expected=self.sanction)
            claimed = meta.get("intent") == "sanction"
            if modality is not None and (modality != "silent_ignore" or turn.actor != self.subject):
                return TurnLabel(**base, label="SANCTION", target_turn_id=offence.turn_id, modality=modality)
            if claimed:
                return TurnLabel(**base, label="SANCTION", target_turn_id=offence.turn_id, modality=None)

        pole = meta.get("pole")
        if meta.get("repair") and turn.actor in self._sanctioned:
            return TurnLabel(
                **base, label="FACE_SAVE_REPAIR", source="intent", target_turn_id=self._sanctioned[turn.actor]
            )
        if pole is not None:
            label = "DEMONSTRATION" if pole == self.norm else "BREACH" if pole == self.partner else "NONE"
            return TurnLabel(**base, label=label, source="intent")
        if turn.actor in self._sanctioned and self.cues.is_repair(turn):
            return TurnLabel(**base, label="FACE_SAVE_REPAIR", target_turn_id=self._sanctioned[turn.actor])
        stance = self.cues.stance(self.norm, turn)
        if stance == "comply":
            return TurnLabel(**base, label="DEMONSTRATION")
        if stance == "breach":
            return TurnLabel(**base, label="BREACH")
        return TurnLabel(**base, label="NONE")
