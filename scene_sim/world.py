"""The chat itself: turns, reactions and what a participant can see.

``ChatWorld`` is the shared state of an episode. Every message and every
reaction gets the next chat turn id; reactions point at an earlier message.
Hidden bookkeeping (why a scripted actor did something) lives in
``ChatTurn.meta`` and is never rendered for anyone.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from scene_sim.actions import Action, NoOp, React

__all__ = ["ChatTurn", "ChatWorld", "render_transcript"]

_EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class ChatTurn:
    """One visible chat event: a message or a reaction.

    Attributes:
        turn_id: chat turn id, 1-based, in posting order.
        actor: who posted it.
        kind: ``message`` or ``react``.
        content: the text, or the emoji of a reaction.
        target_turn_id: the message a reaction is on.
        tick: orchestrator tick it was posted in (0 for the scaffold).
        meta: hidden bookkeeping, never shown to any participant.

    """

    turn_id: int
    actor: str
    kind: Literal["message", "react"]
    content: str
    target_turn_id: int | None = None
    tick: int = 0
    meta: Mapping[str, Any] = field(default_factory=lambda: _EMPTY, compare=False, repr=False)


class ChatWorld:
    """The chat state of one episode.

    Args:
        participants: every name in the chat (personas and subject).
        reactions: whether the chat supports emoji reactions.

    """

    def __init__(self, participants: list[str], *, reactions: bool = True) -> None:
        self.participants = list(participants)
        self.reactions_enabled = reactions
        self._turns: list[ChatTurn] = []

    # -- reading -----------------------------------------------------------
    @property
    def turns(self) -> tuple[ChatTurn, ...]:
        """All turns so far, in order."""
        return tuple(self._turns)

    def __len__(self) -> int:
        return len(self._turns)

    def __iter__(self) -> Iterator[ChatTurn]:
        return iter(self._turns)

    def get(self, turn_id: int) -> ChatTurn | None:
        """The turn with ``turn_id``, or None."""
        if 1 <= turn_id <= len(self._turns):
            return self._turns[turn_id - 1]
        return None

    def last_message(self, *, exclude: str | None = None) -> ChatTurn | None:
        """The latest message, optionally not by ``exclude``."""
        for t in reversed(self._turns):
            if t.kind == "message" and t.actor != exclude:
                return t
        return None

    def since(self, turn_id: int) -> list[ChatTurn]:
        """Turns posted after ``turn_id``."""
        return self._turns[turn_id:]

    # -- writing -----------------------------------------------------------
    def validate(self, actor: str, action: Action) -> str | None:
        """Why ``action`` by ``actor`` cannot be posted, or None if it can."""
        if actor not in self.participants:
            return f"unknown participant '{actor}'"
        if isinstance(action, React):
            if not self.reactions_enabled:
                return "this chat has no reactions"
            target = self.get(action.target_turn_id)
            if target is None:
                return f"target_turn_id {action.target_turn_id} does not exist"
            if target.kind != "message":
                return f"turn {action.target_turn_id} is a reaction; react to a message"
        return None

    def post(self, actor: str, action: Action, *, tick: int, meta: Mapping[str, Any] | None = None) -> ChatTurn | None:
        """Post ``action``; returns the new turn, or None for a no-op.

        Raises:
            ValueError: if :meth:`validate` rejects the action.

        """
        if isinstance(action, NoOp):
            return None
        problem = self.validate(actor, action)
        if problem:
            raise ValueError(problem)
        turn = ChatTurn(
            turn_id=len(self._turns) + 1,
            actor=actor,
            kind="react" if isinstance(action, React) else "message",
            content=action.content,
            target_turn_id=action.target_turn_id if isinstance(action, React) else None,
            tick=tick,
            meta=MappingProxyType(dict(meta)) if meta else _EMPTY,
        )
        self._turns.append(turn)
        return turn

    def render(self, *, me: str | None = None, style: Literal["chronological", "threaded"] = "chronological") -> str:
        """The transcript as participants see it (see :func:`render_transcript`)."""
        return render_transcript(self._turns, me=me, style=style)


def render_transcript(
    turns: list[ChatTurn] | tuple[ChatTurn, ...],
    *,
    me: str | None = None,
    style: Literal["chronological", "threaded"] = "chronological",
) -> str:
    """Render turns as text; no hidden field is ever rendered.

    ``chronological`` (used in prompts) lists every turn in posting order,
    reactions as ``[t9] Kenji reacted 👍 to [t6]``; it only ever grows at the
    end, so provider prefix caches keep hitting. ``threaded`` (used for
    reading) lists reactions on one indented line under their message.
    ``me`` marks the reader's own turns with ``(you)``.
    """

    def who(name: str) -> str:
        return f"{name} (you)" if me is not None and name == me else name

    lines = []
    if style == "chronological":
        for t in turns:
            if t.kind == "message":
                lines.append(f"[t{t.turn_id}] {who(t.actor)}: {t.content}")
            else:
                lines.append(f"[t{t.turn_id}] {who(t.actor)} reacted {t.content} to [t{t.target_turn_id}]")
        return "\n".join(lines) if lines else "(no messages yet)"
    by_target: dict[int, list[ChatTurn]] = {}
    for t in turns:
        if t.kind == "react" and t.target_turn_id is not None:
            by_target.setdefault(t.target_turn_id, []).append(t)
    for t in turns:
        if t.kind != "message":
            continue
        lines.append(f"[t{t.turn_id}] {who(t.actor)}: {t.content}")
        reacts = by_target.get(t.turn_id)
        if reacts:
            lines.append("    reactions: " + ", ".join(f"{r.content} {who(r.actor)} [t{r.turn_id}]" for r in reacts))
    return "\n".join(lines) if lines else "(no messages yet)"
