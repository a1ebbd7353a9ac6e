"""Observable cues: does a turn comply with a norm, breach it, sanction or repair it.

The cue data lives in the taxonomy (``norms.json``, ``sanctions.json``,
``patterns.json``). This module evaluates it against chat turns. It serves
three users: scripted personas (to notice a breach they should sanction),
the offline learner subject (to read demonstrations and sanctions off the
chat), and the heuristic judge (free, deterministic labels for norms whose
breach is a matter of form).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Literal

from scene_sim.studies.scene.taxonomy import Cue, Taxonomy
from scene_sim.world import ChatTurn

__all__ = ["CueReader", "Stance", "content_words", "word_count"]

Stance = Literal["comply", "breach"]

_WORD = re.compile(r"[\w'’]+", re.UNICODE)
_STOP = frozenset(
    [
        "the",
        "a",
        "an",
        "and",
        "or",
        "but",
        "to",
        "of",
        "in",
        "on",
        "at",
        "for",
        "with",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "it",
        "this",
        "that",
        "i",
        "you",
        "we",
        "they",
        "he",
        "she",
        "my",
        "your",
        "our",
        "their",
        "me",
        "us",
        "so",
        "just",
        "not",
        "no",
        "yes",
        "do",
        "does",
        "did",
        "have",
        "has",
        "had",
        "will",
        "would",
        "can",
        "could",
        "should",
        "what",
        "how",
        "when",
        "where",
        "who",
        "why",
        "there",
        "here",
        "then",
        "than",
        "too",
        "very",
        "really",
        "about",
        "from",
        "into",
        "out",
        "up",
    ]
)


def word_count(text: str) -> int:
    """Number of words in ``text``."""
    return len(_WORD.findall(text))


def content_words(text: str) -> set[str]:
    """Lower-cased content words (no stop words) of ``text``."""
    return {w for w in (m.lower() for m in _WORD.findall(text)) if w not in _STOP and len(w) >= 3}


def _mentions(text: str, name: str) -> bool:
    return re.search(r"(?<!\w)@?" + re.escape(name) + r"(?!\w)", text, re.IGNORECASE) is not None


def _echoes(text: str, source: str) -> bool:
    mine, theirs = content_words(text), content_words(source)
    shared = mine & theirs
    return len(shared) >= 3 or (len(mine) >= 2 and len(shared) >= max(2, (len(mine) + 1) // 2))


class CueReader:
    """Evaluates taxonomy cues against chat turns.

    Args:
        taxonomy: the loaded taxonomy (cue patterns come from it).

    """

    def __init__(self, taxonomy: Taxonomy) -> None:
        self.taxonomy = taxonomy
        self._patterns = taxonomy.patterns

    # -- single cues -------------------------------------------------------
    def matches(
        self,
        cue: Cue,
        turn: ChatTurn,
        *,
        offence: ChatTurn | None = None,
        history: Sequence[ChatTurn] = (),
    ) -> bool:
        """Whether ``turn`` meets every condition of ``cue``.

        Args:
            cue: the cue.
            turn: the turn to test.
            offence: the breach turn that context conditions refer to.
            history: turns up to and including ``turn`` (for ``ignores_offender``).

        """
        if cue.action is not None and turn.kind != cue.action:
            return False
        text = turn.content
        if cue.match and not any(self._patterns[p].search(text) for p in cue.match):
            return False
        if cue.not_match and any(self._patterns[p].search(text) for p in cue.not_match):
            return False
        if cue.min_words is not None or cue.max_words is not None:
            if turn.kind != "message":
                return False
            n = word_count(text)
            if cue.min_words is not None and n < cue.min_words:
                return False
            if cue.max_words is not None and n > cue.max_words:
                return False
        if cue.emoji and not any(e in text for e in cue.emoji):
            return False
        needs_offence = cue.targets_offender or cue.mentions_offender or cue.echoes_offender or cue.ignores_offender
        if needs_offence:
            if offence is None or turn.actor == offence.actor or turn.turn_id <= offence.turn_id:
                return False
            if cue.targets_offender and turn.target_turn_id != offence.turn_id:
                return False
            if cue.mentions_offender and not _mentions(text, offence.actor):
                return False
            if cue.echoes_offender and not _echoes(text, offence.content):
                return False
            if cue.ignores_offender and not self._ignores(turn, offence, history):
                return False
        return True

    def any_match(self, cues: Iterable[Cue], turn: ChatTurn, **ctx: object) -> bool:
        """Whether any of ``cues`` matches (see :meth:`matches`)."""
        return any(self.matches(c, turn, **ctx) for c in cues)  # type: ignore[arg-type]

    def _ignores(self, turn: ChatTurn, offence: ChatTurn, history: Sequence[ChatTurn]) -> bool:
        # Ignoring = carrying on without any uptake of the breach turn: nobody
        # else reacted to it, and this message neither names nor echoes it.
        if _mentions(turn.content, offence.actor) or _echoes(turn.content, offence.content):
            return False
        for t in history:
            if t.turn_id > turn.turn_id:
                break
            if t.kind == "react" and t.target_turn_id == offence.turn_id and t.actor != offence.actor:
                return False
        return True

    # -- norms -------------------------------------------------------------
    def stance(self, norm_id: str, turn: ChatTurn) -> Stance | None:
        """``comply`` / ``breach`` if the turn's form shows it, else None."""
        cues = self.taxonomy.norm(norm_id).cues
        comply = self.any_match(cues.comply, turn)
        breach = self.any_match(cues.breach, turn)
        if comply and not breach:
            return "comply"
        if breach and not comply:
            return "breach"
        return None

    def is_repair(self, turn: ChatTurn) -> bool:
        """Whether the turn reads as a face-saving repair (apology, retraction)."""
        return self.any_match(self.taxonomy.repair_cues, turn)

    # -- sanctions ---------------------------------------------------------
    def sanction_modality(
        self,
        turn: ChatTurn,
        offence: ChatTurn,
        history: Sequence[ChatTurn],
        *,
        expected: str | None = None,
    ) -> str | None:
        """Which sanction modality ``turn`` performs against ``offence``, if any.

        The ``expected`` modality is tried first. Ignoring is only recognised
        when it is the expected modality, because any unrelated message would
        otherwise count as a sanction.
        """
        if turn.actor == offence.actor or turn.turn_id <= offence.turn_id:
            return None
        order = list(self.taxonomy.sanctions)
        if expected is not None:
            order.remove(expected)
            order.insert(0, expected)
        for sid in order:
            sanction = self.taxonomy.sanctions[sid]
            if sanction.form == "ignore" and sid != expected:
                continue
            if self.any_match(sanction.cues, turn, offence=offence, history=history):
                return sid
        return None
