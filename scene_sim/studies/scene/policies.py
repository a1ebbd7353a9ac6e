"""Offline policies behind the ``scripted/...`` model strings.

They let a whole episode run with no model at all, deterministically for a
seed, and they are the worked examples of subclassing an agent: each one
overrides :meth:`~scene_sim.studies.scene.agents.ChatAgent.decide` and nothing else (plus
its own state). Register your own with :func:`register_policy` and use it as
``scripted/<name>``.

Subjects: ``always-message``, ``always-react``, ``silent``, ``random`` and
``learner`` (a Bayesian learner of which pole of the norm pair the group
follows: the reference agent whose adaptation is known). Personas, the
orchestrator: ``scripted``.

The subject policies are handed the two poles of the norm pair (the
hypothesis space, in file order) but never which pole is active: they learn
that, if at all, from the chat.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from types import MappingProxyType
from typing import Any, TypeVar

from scene_sim.actions import Message, NoOp, React
from scene_sim.errors import SceneSimError, suggest
from scene_sim.studies.scene.agents import (
    REACTION_EMOJI,
    Decision,
    Orchestrator,
    OrchestratorView,
    PersonaView,
    RoutingDecision,
    ScriptedPersona,
    Subject,
    SubjectView,
)
from scene_sim.studies.scene.heuristics import CueReader
from scene_sim.studies.scene.oracle import SANCTION_REACH
from scene_sim.studies.scene.scenario import parse_line
from scene_sim.studies.scene.taxonomy import Norm
from scene_sim.world import ChatTurn

__all__ = [
    "AlwaysMessageSubject",
    "AlwaysReactSubject",
    "LearnerSubject",
    "OfflinePersona",
    "RandomSubject",
    "SeededOrderOrchestrator",
    "SilentSubject",
    "TemplateSubject",
    "policy_class",
    "policy_names",
    "register_policy",
]

T = TypeVar("T", bound=type)
_REGISTRY: dict[tuple[str, str], type] = {}


def register_policy(role: str, name: str) -> Callable[[T], T]:
    """Class decorator: make ``cls`` available as ``scripted/<name>`` for ``role``."""

    def wrap(cls: T) -> T:
        _REGISTRY[(role, name)] = cls
        return cls

    return wrap


def policy_names(role: str) -> list[str]:
    """Registered offline policy names for ``role``."""
    return sorted(n for r, n in _REGISTRY if r == role)


def policy_class(role: str, name: str) -> type:
    """The policy class for ``scripted/<name>`` in ``role``.

    Raises:
        SceneSimError: unknown name, with the valid ones.

    """
    try:
        return _REGISTRY[(role, name)]
    except KeyError:
        valid = policy_names(role)
        hint = suggest(name, valid)
        shown = ", ".join(f"scripted/{n}" if n != "scripted" else "scripted" for n in valid)
        raise SceneSimError(f"unknown {role} policy 'scripted/{name}'{hint}; valid: {shown}") from None


# -- personas and orchestrator -------------------------------------------------


@register_policy("persona", "scripted")
class OfflinePersona(ScriptedPersona):
    """Plays a persona from its hidden script, no model needed.

    When the subject has breached (as the episode's labeller reads it) and
    this persona has sanction lines, it delivers the next one; otherwise it
    says its next in-register line with probability ``speak_prob`` and stays
    silent the rest of the time.
    """

    speak_prob = 0.6

    def __init__(self, model: Any, name: str, **kwargs: Any) -> None:
        super().__init__(model, name, **kwargs)
        self._next_line = 0
        self._next_sanction = 0
        self._answered: set[int] = set()

    async def decide(self, view: PersonaView, system: str, messages: list[dict[str, str]]) -> Decision:
        """Sanction a fresh breach if it is this persona's job, else talk in register or pass."""
        offence = self._fresh_breach(view)
        lines = view.hidden.sanction_lines
        if offence is not None and lines:
            self._answered.add(offence.turn_id)
            line = parse_line(lines[self._next_sanction % len(lines)], view.subject, offence.content)
            self._next_sanction += 1
            meta = MappingProxyType({"intent": "sanction", "target_turn_id": offence.turn_id})
            if line.action == "react":
                return Decision(React(content=line.content, target_turn_id=offence.turn_id), meta)
            return Decision(Message(content=line.content), meta)
        in_register = view.hidden.in_register_lines
        if self._next_line < len(in_register) and self.model.random.random() < self.speak_prob:
            line = parse_line(in_register[self._next_line], view.subject)
            self._next_line += 1
            meta = MappingProxyType({"intent": "demonstration"})
            if line.action == "react":
                target = _latest_message(view.turns, exclude=self.name)
                if target is None:
                    return Decision(NoOp())
                return Decision(React(content=line.content, target_turn_id=target.turn_id), meta)
            return Decision(Message(content=line.content), meta)
        return Decision(NoOp())

    def _fresh_breach(self, view: PersonaView) -> ChatTurn | None:
        labeler = self.model.labeler
        last_id = view.turns[-1].turn_id if view.turns else 0
        for turn in reversed(view.turns):
            if last_id - turn.turn_id >= SANCTION_REACH:
                break
            if turn.actor != view.subject or turn.turn_id in self._answered or not labeler.breach_of(turn):
                continue
            # A single-actor modality needs one sanction, from whoever gets there first.
            if view.sanction.actors == "one" and labeler.sanctions_on(turn.turn_id):
                continue
            return turn
        return None


@register_policy("orchestrator", "scripted")
class SeededOrderOrchestrator(Orchestrator):
    """Orders the personas by a fresh shuffle each tick, from the model's seeded rng."""

    async def decide(self, view: OrchestratorView, system: str, messages: list[dict[str, str]]) -> RoutingDecision:
        """A seeded shuffle of the roster; never asks to terminate."""
        order = list(view.roster)
        self.model.random.shuffle(order)
        return RoutingDecision(tuple(order))


# -- subjects -------------------------------------------------------------------


def _latest_message(turns: tuple[ChatTurn, ...], *, exclude: str) -> ChatTurn | None:
    for t in reversed(turns):
        if t.kind == "message" and t.actor != exclude:
            return t
    return None


class TemplateSubject(Subject):
    """Base for offline subjects: acts in a pole's register using the taxonomy's templates.

    Args:
        model: the episode.
        name: the subject's actor name.
        pair: the two poles of the norm pair, in file order (not revealing
            which one the group follows).

    """

    def __init__(self, model: Any, name: str, *, pair: tuple[Norm, Norm], **kwargs: Any) -> None:
        super().__init__(model, name, **kwargs)
        self.pair = pair

    def act_in(self, pole: Norm, view: SubjectView, *, repair: bool = False, kind: str | None = None) -> Decision:
        """An action in ``pole``'s register (a repair line when ``repair``).

        ``kind`` restricts the template to ``message`` or ``react``; when the
        pole has no template of that kind, the other pole's is used, and the
        decision records that pole.
        """
        rng = self.model.random
        if repair:
            return Decision(Message(content=rng.choice(pole.scripted.repair)), {"pole": pole.id, "repair": True})
        options = [t for t in pole.scripted.comply if kind is None or t.action == kind]
        if not view.reactions:
            options = [t for t in options if t.action == "message"]
        if not options:
            other = self.pair[1] if pole.id == self.pair[0].id else self.pair[0]
            if other.id == pole.id:
                return Decision(NoOp())
            return self.act_in(other, view, kind=kind or "message")
        template = rng.choice(options)
        meta = {"pole": pole.id}
        if template.action == "react":
            target = _latest_message(view.turns, exclude=self.name)
            if target is None:
                return Decision(NoOp())
            return Decision(React(content=template.content, target_turn_id=target.turn_id), meta)
        return Decision(Message(content=template.content), meta)

    def react_pole(self) -> str | None:
        """The pole whose register is a bare reaction, if the pair has one."""
        for pole in self.pair:
            if pole.scripted.comply and all(t.action == "react" for t in pole.scripted.comply):
                return pole.id
        return None


@register_policy("subject", "always-message")
class AlwaysMessageSubject(TemplateSubject):
    """Sends a message every time, in one register fixed for the episode: it never adapts.

    The register (one pole of the pair) is drawn once, like a model's default
    style; where that pole is reaction-only, its messages are necessarily in
    the other pole's register. Whatever the group demonstrates or sanctions,
    it carries on, so after a first breach every action is a breach.
    """

    def __init__(self, model: Any, name: str, **kwargs: Any) -> None:
        super().__init__(model, name, **kwargs)
        self.register = self.model.random.choice(self.pair)

    async def decide(self, view: SubjectView, system: str, messages: list[dict[str, str]]) -> Decision:
        """A message in the episode's fixed register."""
        return self.act_in(self.register, view, kind="message")


@register_policy("subject", "always-react")
class AlwaysReactSubject(TemplateSubject):
    """Reacts with a thumbs-up to the latest message every time (passes where reactions do not exist)."""

    async def decide(self, view: SubjectView, system: str, messages: list[dict[str, str]]) -> Decision:
        """A 👍 on the latest message by someone else."""
        target = _latest_message(view.turns, exclude=self.name)
        if not view.reactions or target is None:
            return Decision(NoOp())
        pole = self.react_pole()
        return Decision(React(content="👍", target_turn_id=target.turn_id), {"pole": pole} if pole else {})


@register_policy("subject", "silent")
class SilentSubject(TemplateSubject):
    """Never acts."""

    async def decide(self, view: SubjectView, system: str, messages: list[dict[str, str]]) -> Decision:
        """Always a no-op."""
        return Decision(NoOp())


@register_policy("subject", "random")
class RandomSubject(TemplateSubject):
    """Picks message, reaction or no-op uniformly; messages in a random pole's register."""

    async def decide(self, view: SubjectView, system: str, messages: list[dict[str, str]]) -> Decision:
        """A uniformly random action."""
        rng = self.model.random
        kinds = ["message", "react", "no-op"] if view.reactions else ["message", "no-op"]
        kind = rng.choice(kinds)
        if kind == "no-op":
            return Decision(NoOp())
        if kind == "message":
            return self.act_in(rng.choice(self.pair), view, kind="message")
        target = _latest_message(view.turns, exclude=self.name)
        if target is None:
            return Decision(NoOp())
        pole = self.react_pole()
        return Decision(
            React(content=rng.choice(REACTION_EMOJI[:6]), target_turn_id=target.turn_id), {"pole": pole} if pole else {}
        )


@register_policy("subject", "learner")
class LearnerSubject(TemplateSubject):
    """A Bayesian learner of which pole of the norm pair the group follows.

    It holds log-odds ``b`` that the first pole (``pair[0]``) is in force,
    starting at 0 (undecided). It reads the chat with the taxonomy's cues:

    * a persona turn in one pole's register adds ``w_demo`` towards that pole;
    * a sanction of a turn (a corrective reaction, a callout, mocking, an
      ironic remark, a topic shift) moves ``w_sanction`` away from that
      turn's pole; its own turn left without uptake while others' messages
      get reactions counts as a weaker sanction (``w_ignore``);
    * an approving reaction on its own turn adds ``w_accept`` towards its pole.

    When it acts, it picks a pole with probability ``sigmoid(b)``
    (probability matching) and acts in that register; if it was just
    sanctioned and now switches pole, it says a repair line first. Whether
    it acts at all depends on being addressed (``p_addressed``), the floor
    being open (``p_floor``) or neither (``p_act``).

    With more demonstrations before its first breach its belief is firmer,
    so it breaches less afterwards: Spearman rho(x, y) < 0 by construction.
    """

    w_demo = 0.8
    w_sanction = 0.8
    w_ignore = 1.2
    w_accept = 0.4
    w_absence = 0.25
    beta = 1.0
    p_addressed = 0.95
    p_floor = 0.6
    p_act = 0.45

    def __init__(self, model: Any, name: str, **kwargs: Any) -> None:
        super().__init__(model, name, **kwargs)
        self.log_odds = 0.0
        self._seen = 0
        self._my_poles: dict[int, int] = {}  # my turn id -> +1 (pair[0]) / -1 (pair[1])
        self._sanction_seen: set[int] = set()  # turns whose sanction was already counted
        self._silence_checked: set[int] = set()  # own turns already checked for uptake
        self._sanctioned = False
        self._last_sign = 0
        self.cues = CueReader(model.taxonomy)
        # A pole whose register leaves no observable trace (deadpan jokes look
        # like any sentence) can only be inferred from the absence of the
        # other pole's signature: plain messages then count, weakly, for it.
        visible = [bool(p.cues.comply or other.cues.breach) for p, other in (self.pair, self.pair[::-1])]
        self._silent_pole = 0 if all(visible) else (1 if not visible[0] else -1)

    @property
    def belief(self) -> float:
        """Probability that ``pair[0]`` is the group's norm."""
        return 1.0 / (1.0 + math.exp(-self.beta * self.log_odds))

    def _sign(self, turn: ChatTurn) -> int:
        if turn.turn_id in self._my_poles:
            return self._my_poles[turn.turn_id]
        a, b = (self.cues.stance(p.id, turn) for p in self.pair)
        score = (a == "comply") - (a == "breach") - (b == "comply") + (b == "breach")
        return (score > 0) - (score < 0)

    def observe_chat(self, turns: tuple[ChatTurn, ...]) -> None:
        """Update the belief from the turns it has not read yet."""
        for turn in turns:
            if turn.turn_id <= self._seen:
                continue
            self._seen = turn.turn_id
            if turn.actor == self.name:
                continue
            history = [t for t in turns if t.turn_id <= turn.turn_id]
            if self._read_sanction(turn, history):
                continue
            if (
                turn.kind == "react"
                and turn.target_turn_id in self._my_poles
                and turn.content in ("👍", "❤️", "🔥", "😂", "🙏")
            ):
                self.log_odds += self.w_accept * self._my_poles[turn.target_turn_id]
                continue
            sign = self._sign(turn)
            if sign == 0 and turn.kind == "message":
                self.log_odds += self.w_absence * self._silent_pole
            else:
                self.log_odds += self.w_demo * sign
        self._read_silence(turns)

    def _read_sanction(self, turn: ChatTurn, history: list[ChatTurn]) -> bool:
        # A sanction says the turn it answers was out of line: move away from
        # that turn's pole, once per sanctioned turn.
        for offence in reversed(history[-8:-1]):
            if offence.actor == turn.actor or (offence.kind != "message" and offence.turn_id not in self._my_poles):
                continue
            sign = self._sign(offence)
            if sign == 0 or self.cues.sanction_modality(turn, offence, history) is None:
                continue
            if offence.turn_id not in self._sanction_seen:
                self._sanction_seen.add(offence.turn_id)
                self.log_odds -= self.w_sanction * sign
                if offence.actor == self.name:
                    self._sanctioned = True
            return True
        return False

    def _read_silence(self, turns: tuple[ChatTurn, ...]) -> None:
        # Its own turn passed over while the chat moves on reads as a mild
        # sanction, but only by contrast: someone else's message in the same
        # stretch got uptake (a reaction or a reply naming them). Silence in a
        # group that answers nobody says nothing.
        for my_id, sign in self._my_poles.items():
            if my_id in self._silence_checked or my_id in self._sanction_seen:
                continue
            later = [t for t in turns if t.turn_id > my_id]
            if any(t.target_turn_id == my_id or self.name.lower() in t.content.lower() for t in later):
                self._silence_checked.add(my_id)
                continue
            others = [t for t in later if t.kind == "message" and t.actor != self.name]
            if len(others) < 2:
                continue
            self._silence_checked.add(my_id)
            by_id = {t.turn_id: t for t in turns}
            answered = any(
                (t.kind == "react" and t.target_turn_id in by_id and by_id[t.target_turn_id].actor != self.name)
                for t in later
            )
            if answered:
                self.log_odds -= self.w_ignore * sign
                self._sanctioned = True

    async def decide(self, view: SubjectView, system: str, messages: list[dict[str, str]]) -> Decision:
        """Update the belief, decide whether to act, then act in the sampled pole."""
        self.observe_chat(view.turns)
        rng = self.model.random
        last = view.turns[-1] if view.turns else None
        addressed = last is not None and last.kind == "message" and self.name.lower() in last.content.lower()
        p = self.p_addressed if addressed else self.p_floor if view.reason == "floor_open" else self.p_act
        if rng.random() >= p:
            return Decision(NoOp())
        sign = 1 if rng.random() < self.belief else -1
        pole = self.pair[0] if sign == 1 else self.pair[1]
        repair = self._sanctioned and sign != self._last_sign
        self._sanctioned = False
        decision = self.act_in(pole, view, repair=repair)
        chosen = decision.meta.get("pole")
        if chosen is not None:
            self._last_sign = 1 if chosen == self.pair[0].id else -1
        return decision

    def on_posted(self, turn: ChatTurn | None, decision: Decision) -> None:
        """Record the pole of its own posted turn."""
        pole = decision.meta.get("pole")
        if turn is not None and pole is not None:
            self._my_poles[turn.turn_id] = 1 if pole == self.pair[0].id else -1
